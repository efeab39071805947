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
    offset: u64,
    started: u64,
}

/// The most one `write` call hands the kernel. This kernel (6.18) sizes ext4's page-cache
/// folios by the write that creates them, and allocating them for 4 MiB writes cost the
/// decrypt step two to three times its system time: 718 MiB laid out in 0.79–1.22 s with
/// 4 MiB writes, 0.43–0.52 s with 256 KiB, 0.53–0.63 s with 64 KiB (alternating runs).
pub const WRITE_PIECE: usize = 256 << 10;

/// A file written at most [`WRITE_PIECE`] bytes per call.
pub struct PieceWriter(pub std::fs::File);

impl std::io::Write for PieceWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(&buf[..buf.len().min(WRITE_PIECE)])
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Bytes between write-behind kicks.
const WRITE_BEHIND_WINDOW: u64 = 8 << 20;

impl WriteBehind {
    /// Wraps `file`, whose position is `offset`.
    pub fn new(file: std::fs::File, offset: u64) -> Self {
        Self {
            file,
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
        let n = self.file.write(&buf[..buf.len().min(WRITE_PIECE)])?;
        self.offset += n as u64;
        if self.offset - self.started >= WRITE_BEHIND_WINDOW {
            self.kick();
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}
