//! Asynchronous archiving, as pgBackRest's `archive-async`: PostgreSQL's archiver hands over
//! one segment at a time and waits for each, so `wal push --async` also starts a background
//! pusher that archives the segments already waiting in `pg_wal/archive_status` (`.ready`)
//! several at once and leaves an acknowledgement for each. The archiver's next calls find
//! their acknowledgement and return at once.
//!
//! An acknowledgement names the file's size and modification time when it was archived; a
//! file that differs (recycled, rewritten) is archived again in the foreground, as is any file
//! the pusher failed on — so the foreground still reports every error itself.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use futures::StreamExt;

use super::archive::{self, ArchiveError, FileKind, PushOptions};
use crate::crypto::keys::Key;
use crate::storage::StoreSet;

/// The lock a running pusher holds.
const LOCK: &str = ".push.lock";
/// Suffix of an acknowledgement.
const ACK: &str = ".ok";
/// Suffix of the marker of a file being archived right now.
const PUSHING: &str = ".pushing";

/// What identifies the file that was archived: its size and modification time.
fn identity(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let modified = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    Some(format!("{} {}", meta.len(), modified.as_nanos()))
}

/// Whether the background pusher archived `path` as it is now. The acknowledgement is
/// consumed: PostgreSQL asks once per file after success.
pub fn acknowledged(spool: &Path, path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let ack = spool.join(format!("{name}{ACK}"));
    let Ok(recorded) = std::fs::read_to_string(&ack) else {
        return false;
    };
    let _ = std::fs::remove_file(&ack);
    identity(path).is_some_and(|now| now == recorded.trim())
}

/// Whether a pusher is working in `spool` right now.
pub fn pusher_running(spool: &Path) -> bool {
    archive::spool::lock_held(spool, LOCK)
}

/// The live process, other than this one, archiving `file` right now (its claim).
fn claimed_by_other(spool: &Path, file: &str) -> Option<i32> {
    let marker = spool.join(format!("{file}{PUSHING}"));
    let pid: i32 = std::fs::read_to_string(marker).ok()?.trim().parse().ok()?;
    // EPERM: alive, but another user's.
    let alive = pid > 0
        && !matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        );
    (alive && pid != std::process::id() as i32).then_some(pid)
}

/// Claims `file` for this process to archive: the foreground and the pusher never archive
/// the same file at once. False when another live process holds the claim; a claim left by
/// a process that died is taken over.
pub fn claim(spool: &Path, file: &str) -> bool {
    use std::io::Write;
    let _ = std::fs::create_dir_all(spool);
    let marker = spool.join(format!("{file}{PUSHING}"));
    let me = std::process::id().to_string();
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
    {
        Ok(mut created) => {
            let _ = created.write_all(me.as_bytes());
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // A claim is written right after it is created: give an empty one a moment.
            for _ in 0..20 {
                if std::fs::read_to_string(&marker).is_ok_and(|t| !t.trim().is_empty()) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            if claimed_by_other(spool, file).is_some() {
                return false;
            }
            let _ = std::fs::write(&marker, me.as_bytes());
            true
        }
        // No marker can be made: archive anyway (at worst the file is archived twice).
        Err(_) => true,
    }
}

/// Gives up this process's claim on `file`.
pub fn release(spool: &Path, file: &str) {
    let marker = spool.join(format!("{file}{PUSHING}"));
    if std::fs::read_to_string(&marker).is_ok_and(|t| t.trim() == std::process::id().to_string()) {
        let _ = std::fs::remove_file(marker);
    }
}

/// Waits (bounded) while another live process archives `file`.
pub fn wait_while_claimed(spool: &Path, file: &str, limit: Duration) {
    let started = Instant::now();
    while claimed_by_other(spool, file).is_some() && started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The segments waiting to be archived after `file`: `.ready` in `archive_status` beside
/// it, in order, at most `count`.
pub fn waiting(pg_wal: &Path, file: &str, count: usize) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(pg_wal.join("archive_status")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.strip_suffix(".ready")?.to_string();
            (archive::classify(&name).ok() == Some(FileKind::Segment) && name.as_str() > file)
                .then_some(name)
        })
        .collect();
    names.sort();
    names.truncate(count);
    names
}

/// What the background pusher needs besides the files.
pub struct Pusher<'a> {
    /// Where acknowledgements live.
    pub spool: &'a Path,
    /// PostgreSQL's `pg_wal` (the directory of the file it handed over).
    pub pg_wal: &'a Path,
    /// Stores to archive to.
    pub stores: &'a StoreSet,
    /// The encryption key.
    pub key: &'a Key,
    /// The push options of the foreground call.
    pub options: &'a PushOptions,
    /// Segments archived at once.
    pub parallel: usize,
    /// Segments looked at per pass.
    pub batch: usize,
}

impl Pusher<'_> {
    /// Archives the segments waiting after `file` until none are left, leaving an
    /// acknowledgement for each; returns how many. Only one pusher works per spool.
    pub async fn run(&self, file: &str) -> Result<usize, ArchiveError> {
        let spool = self.spool;
        let Some(_held) = archive::spool::take_lock(spool, LOCK)? else {
            return Ok(0);
        };
        self.forget_before(file);
        let mut pushed = 0;
        let mut failed: Vec<String> = Vec::new();
        loop {
            let todo: Vec<String> = waiting(self.pg_wal, file, self.batch)
                .into_iter()
                .filter(|n| !spool.join(format!("{n}{ACK}")).exists() && !failed.contains(n))
                .collect();
            if todo.is_empty() {
                return Ok(pushed);
            }
            let mut options = self.options.clone();
            options.threads = 1;
            let options = &options;
            let mut results = futures::stream::iter(todo)
                .map(|name| async move {
                    let ok = self.push_one(&name, options).await;
                    (name, ok)
                })
                .buffered(self.parallel.max(1));
            while let Some((name, ok)) = results.next().await {
                if ok {
                    pushed += 1;
                } else {
                    failed.push(name);
                }
            }
        }
    }

    /// Archives one segment and acknowledges it; a failure, or a segment the foreground is
    /// archiving itself, leaves no acknowledgement (the foreground archives it and reports
    /// any error).
    async fn push_one(&self, name: &str, options: &PushOptions) -> bool {
        let path = self.pg_wal.join(name);
        if !claim(self.spool, name) {
            // The archiver is archiving it itself.
            return false;
        }
        let before = identity(&path);
        let pushed = archive::push(&path, self.stores, self.key, options).await;
        let ok = match (pushed, before) {
            (Ok(_), Some(before)) if identity(&path).as_ref() == Some(&before) => {
                write_ack(&self.spool.join(format!("{name}{ACK}")), &before).is_ok()
            }
            (Ok(_), _) => false,
            (Err(e), _) => {
                tracing::warn!(file = name, error = %e, "background archiving failed; the archiver will retry it");
                false
            }
        };
        release(self.spool, name);
        ok
    }

    /// Drops acknowledgements and markers of files PostgreSQL has gone past.
    fn forget_before(&self, file: &str) {
        let Ok(entries) = std::fs::read_dir(self.spool) else {
            return;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().to_string();
            let stem = name
                .strip_suffix(ACK)
                .or_else(|| name.strip_suffix(PUSHING));
            if stem.is_some_and(|s| s <= file) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Writes an acknowledgement atomically: a half-written one must never match.
fn write_ack(path: &Path, identity: &str) -> std::io::Result<()> {
    let mut part: PathBuf = path.to_path_buf();
    part.set_extension("ok-part");
    std::fs::write(&part, identity)?;
    std::fs::rename(&part, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(n: u32) -> String {
        format!("0000000100000000{n:08X}")
    }

    #[test]
    fn waiting_lists_later_ready_segments_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("archive_status");
        std::fs::create_dir_all(&status).unwrap();
        for (name, suffix) in [
            (segment(3), "ready"),
            (segment(1), "ready"),
            (segment(5), "ready"),
            (segment(4), "done"),
            ("00000002.history".to_string(), "ready"),
        ] {
            std::fs::write(status.join(format!("{name}.{suffix}")), b"").unwrap();
        }
        assert_eq!(
            waiting(dir.path(), &segment(1), 10),
            vec![segment(3), segment(5)]
        );
        assert_eq!(waiting(dir.path(), &segment(1), 1), vec![segment(3)]);
    }

    #[test]
    fn a_claim_excludes_other_live_processes_and_outlives_no_dead_one() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path();
        let file = segment(9);
        let marker = spool.join(format!("{file}{PUSHING}"));
        assert!(claim(spool, &file));
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap(),
            std::process::id().to_string()
        );
        release(spool, &file);
        assert!(!marker.exists());
        // Held by another live process (init): not ours to take.
        std::fs::write(&marker, "1").unwrap();
        assert!(!claim(spool, &file));
        release(spool, &file);
        assert!(marker.exists(), "released someone else's claim");
        // Left by a process that has exited: taken over.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        std::fs::write(&marker, dead.to_string()).unwrap();
        assert!(claim(spool, &file));
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap(),
            std::process::id().to_string()
        );
    }

    #[test]
    fn an_acknowledgement_matches_only_the_file_it_was_written_for() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        std::fs::create_dir_all(&spool).unwrap();
        let file = dir.path().join(segment(7));
        std::fs::write(&file, b"wal").unwrap();
        let ack = spool.join(format!("{}{ACK}", segment(7)));
        write_ack(&ack, &identity(&file).unwrap()).unwrap();
        assert!(acknowledged(&spool, &file));
        // Consumed: a second call archives in the foreground.
        assert!(!acknowledged(&spool, &file));
        // A file rewritten after it was acknowledged does not match.
        write_ack(&ack, &identity(&file).unwrap()).unwrap();
        std::fs::write(&file, b"other wal").unwrap();
        assert!(!acknowledged(&spool, &file));
    }
}
