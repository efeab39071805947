//! Output files of data-path activities: written under a temporary name, made durable, then
//! renamed into place, so a final name never holds partial or unverified data.

use std::path::{Path, PathBuf};

use crate::engine::ActivityError;

/// The temporary name an output is written under.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".part");
    dest.with_file_name(name)
}

/// Makes sure the destination's directory exists.
pub fn prepare_dir(dest: &Path) -> Result<(), ActivityError> {
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            ActivityError::permanent(format!("cannot create directory {}: {e}", dir.display()))
        })?;
    }
    Ok(())
}

/// Flushes `part` to disk and renames it to `dest`, durably.
pub fn commit(part: &Path, dest: &Path) -> Result<(), ActivityError> {
    let fail = |what: &str, e: std::io::Error| {
        ActivityError::retryable(format!("cannot {what} {}: {e}", dest.display()))
    };
    std::fs::File::open(part)
        .and_then(|f| f.sync_all())
        .map_err(|e| fail("flush", e))?;
    std::fs::rename(part, dest).map_err(|e| fail("rename into", e))?;
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| fail("flush the directory of", e))?;
    }
    Ok(())
}

/// Removes a temporary output, ignoring absence.
pub fn discard(part: &Path) {
    let _ = std::fs::remove_file(part);
}
