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

/// Renames `part` to `dest` without flushing either: for scratch outputs whose loss in a
/// machine restart is detected (see [`boot_id`]) rather than prevented, because flushing
/// them costs the recovery time and they are cheap to make again.
pub fn commit_unflushed(part: &Path, dest: &Path) -> Result<(), ActivityError> {
    std::fs::rename(part, dest).map_err(|e| {
        ActivityError::retryable(format!("cannot rename into {}: {e}", dest.display()))
    })
}

/// This boot of the machine (Linux's random boot id): a file written without a flush in
/// the same boot is intact; one written in an earlier boot may not be.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Removes a temporary output, ignoring absence.
pub fn discard(part: &Path) {
    let _ = std::fs::remove_file(part);
}

/// A file writer that asks the kernel to start writing each few MiB to disk as soon as they
/// are written, without waiting for it. A step that writes faster than the kernel's lazy
/// writeback (30 s, or 10% of memory dirty) would otherwise leave its whole output dirty,
/// and the final flush — or worse, the next step (pg_restore) — would pay for it; this way
/// the disk works while the CPU decrypts.
pub struct WriteBehind {
    file: std::fs::File,
    path: PathBuf,
    offset: u64,
    started: u64,
}

/// The most one `write` call hands the kernel. This kernel (6.18) sizes ext4's page-cache
/// folios by the write that creates them, and allocating them for 4 MiB writes cost the
/// decrypt step two to three times its system time: 718 MiB laid out in 0.79–1.22 s with
/// 4 MiB writes, 0.43–0.52 s with 256 KiB, 0.53–0.63 s with 64 KiB (alternating runs).
pub const WRITE_PIECE: usize = 256 << 10;

/// A file written at most [`WRITE_PIECE`] bytes per call; its errors name the file.
pub struct PieceWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl PieceWriter {
    /// Writes to `file`, which is `path`.
    pub fn new(file: std::fs::File, path: &Path) -> Self {
        Self {
            file,
            path: path.to_path_buf(),
        }
    }
}

impl std::io::Write for PieceWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file
            .write(&buf[..buf.len().min(WRITE_PIECE)])
            .map_err(|e| write_error(&self.path, e))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush().map_err(|e| write_error(&self.path, e))
    }
}

/// A write error that names the file, and for a full disk what to do, whatever layer
/// (decoder, layout, copy) reports it in the end.
pub fn write_error(path: &Path, e: std::io::Error) -> std::io::Error {
    let advice = if e.raw_os_error() == Some(libc::ENOSPC) {
        let dir = path.parent().unwrap_or(path);
        format!(
            " — free space in {}, or give the run a work directory with more room (-p workdir=DIR)",
            dir.display()
        )
    } else {
        String::new()
    };
    std::io::Error::new(
        e.kind(),
        WriteFailed(format!("cannot write {}: {e}{advice}", path.display())),
    )
}

/// A failure to write an output file (not to read or decode the input), as
/// [`write_error`] wraps it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WriteFailed(String);

/// Whether `e` came from writing an output ([`write_error`]), not from the data read.
pub fn is_write_failure(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<WriteFailed>())
}

/// Bytes between write-behind kicks.
const WRITE_BEHIND_WINDOW: u64 = 8 << 20;

impl WriteBehind {
    /// Wraps `file` (which is `path`), whose position is `offset`.
    pub fn new(file: std::fs::File, path: &Path, offset: u64) -> Self {
        Self {
            file,
            path: path.to_path_buf(),
            offset,
            started: offset,
        }
    }

    /// The underlying file.
    pub fn get_ref(&self) -> &std::fs::File {
        &self.file
    }

    fn kick(&mut self) {
        use std::os::fd::AsRawFd;
        let len = self.offset - self.started;
        if len == 0 {
            return;
        }
        // SAFETY: sync_file_range only reads its integer arguments; the descriptor is owned
        // by `self.file` and open for the whole call. Failure is harmless (advisory).
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                self.started as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.started = self.offset;
    }
}

impl std::io::Write for WriteBehind {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self
            .file
            .write(&buf[..buf.len().min(WRITE_PIECE)])
            .map_err(|e| write_error(&self.path, e))?;
        self.offset += n as u64;
        if self.offset - self.started >= WRITE_BEHIND_WINDOW {
            self.kick();
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush().map_err(|e| write_error(&self.path, e))
    }
}

/// Removes a file or directory a run made and no longer needs, and says what went (its
/// path and size); `None` when there is nothing there. With `dry_run`, only says it.
/// A directory a running server uses (its `postmaster.pid` names a live process) is never
/// removed: the answer is a permanent error that names the server and how to stop it.
pub fn remove_leftover(path: &Path, dry_run: bool) -> Result<Option<String>, ActivityError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(None);
    };
    if meta.is_dir()
        && let Some(pid) = crate::pg::cluster::live_postmaster(path)
    {
        return Err(ActivityError::permanent(format!(
            "{} is the data directory of a running PostgreSQL server (pid {pid}): not removed; stop it first (pg_ctl stop -D {}) if it is no longer needed",
            path.display(),
            path.display()
        )));
    }
    let size = if meta.is_dir() {
        tree_size(path)
    } else {
        meta.len()
    };
    if !dry_run {
        let removed = if meta.is_dir() {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
        removed.map_err(|e| {
            ActivityError::retryable(format!("cannot remove {}: {e}", path.display()))
        })?;
    }
    Ok(Some(format!(
        "{} ({})",
        path.display(),
        crate::size::human_size(size)
    )))
}

/// Removes `dest` and its temporary name, for an activity's `discard`.
pub fn remove_output(dest: &Path, dry_run: bool) -> Result<Vec<String>, ActivityError> {
    let mut removed = Vec::new();
    for path in [part_path(dest), dest.to_path_buf()] {
        removed.extend(remove_leftover(&path, dry_run)?);
    }
    Ok(removed)
}

/// Bytes in the files under `dir`, not following links.
fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => pending.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::Path;

    use super::{PieceWriter, WriteBehind, is_write_failure};

    /// `/dev/full` fails every write with ENOSPC, as a full disk does.
    fn full() -> std::fs::File {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full is needed for this test")
    }

    #[test]
    fn a_full_disk_names_the_file_and_says_what_to_do() {
        let path = Path::new("/work/state/work/run.dump.part");
        let mut piece = PieceWriter::new(full(), path);
        let e = piece.write_all(&[0u8; 4096]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("/work/state/work/run.dump.part"), "{text}");
        assert!(text.contains("No space left on device"), "{text}");
        assert!(text.contains("free space in /work/state/work"), "{text}");
        assert!(text.contains("-p workdir=DIR"), "{text}");
        assert!(
            is_write_failure(&e),
            "told apart from a read or decode failure"
        );

        let mut behind = WriteBehind::new(full(), path, 0);
        let e = behind.write_all(&[0u8; 4096]).unwrap_err();
        assert!(e.to_string().contains("run.dump.part"), "{e}");
        // Passed up through a buffered writer, as the decrypt step's sinks are.
        let mut buffered = std::io::BufWriter::new(PieceWriter::new(full(), path));
        let _ = buffered.write_all(&[0u8; 100]);
        let e = buffered.flush().unwrap_err();
        assert!(
            is_write_failure(&e) && e.to_string().contains("run.dump.part"),
            "{e}"
        );
        assert!(!is_write_failure(&std::io::Error::other(
            "corrupt deflate stream"
        )));
    }
}
