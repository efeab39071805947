//! Restoring a backup without writing its pg_dump archive out. The decrypt step writes a
//! directory-format archive holding only `toc.dat` and a plan (`stream.json`: which block
//! of the encrypted backup each table's rows are in); the restore step makes every data file
//! a named pipe and, as `pg_restore --jobs N` opens each one, decodes that table's chunks
//! straight into it. Decoding runs beside pg_restore instead of before it, and the archive's
//! plaintext never touches the disk (measured in benches/RESULTS.md).
//!
//! Every chunk is authenticated as it is decoded. A damaged chunk stops the restore with
//! pg_restore killed *before* its pipe is closed, so a table is never loaded short: the
//! reader sees the end of its file only after the last row of an intact block.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::crypto::chunked::{self, Opened};
use crate::crypto::keys::Keyring;
use crate::pg::dir_archive::DirArchive;
use crate::pg::dump_blocks::{BlockRows, DataBlock};

/// The plan's file name inside the archive directory.
pub const PLAN: &str = "stream.json";
/// The table of contents' file name (pg_dump's).
pub const TOC: &str = "toc.dat";
/// Bytes a pipe to pg_restore holds (the kernel's default is 64 KiB).
const PIPE_BYTES: i32 = 1 << 20;
/// How often pipes not yet opened by pg_restore are looked at.
const POLL: Duration = Duration::from_millis(2);
/// Pipes looked at on every poll, in the order pg_restore opens them; all are looked at
/// every [`SWEEP_EVERY`] polls.
const POLL_AHEAD: usize = 8;
const SWEEP_EVERY: u32 = 50;

/// Which block of which encrypted backup each data file is read from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamPlan {
    /// The encrypted backup (a chunked file).
    pub source: PathBuf,
    /// Its file id, hex: a plan is never used with another file.
    pub file_id: String,
    /// Bytes per integer in the pg_dump archive.
    pub int_size: usize,
    /// The data files, in the order pg_restore opens them.
    pub files: Vec<PlannedFile>,
}

/// One data file and its block of the archive's plaintext.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedFile {
    /// Name in the archive directory.
    pub name: String,
    /// Where its rows are.
    pub block: DataBlock,
}

impl StreamPlan {
    /// The plan for a rewritten archive whose rows are in `source`.
    pub fn new(dir: &DirArchive, source: &Path, opened: &Opened) -> Self {
        Self {
            source: std::path::absolute(source).unwrap_or_else(|_| source.to_path_buf()),
            file_id: hex::encode(opened.header.file_id),
            int_size: dir.int_size,
            files: dir
                .files
                .iter()
                .map(|f| PlannedFile {
                    name: f.name.clone(),
                    block: f.block,
                })
                .collect(),
        }
    }

    /// Plaintext bytes of all the data blocks.
    pub fn data_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.block.length).sum()
    }
}

/// Writes `toc.dat` and the plan as the directory `dest`, durably and atomically (built
/// beside it, then renamed into place).
pub fn write_archive(dest: &Path, toc: &[u8], plan: &StreamPlan) -> std::io::Result<()> {
    let part = super::files::part_path(dest);
    let _ = std::fs::remove_dir_all(&part);
    std::fs::create_dir_all(&part)?;
    let write = |name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let mut file = File::create(part.join(name))?;
        file.write_all(bytes)?;
        file.sync_all()
    };
    write(TOC, toc)?;
    write(
        PLAN,
        &serde_json::to_vec_pretty(plan).map_err(std::io::Error::other)?,
    )?;
    File::open(&part)?.sync_all()?;
    if dest.is_dir() {
        std::fs::remove_dir_all(dest)?;
    } else if dest.exists() {
        std::fs::remove_file(dest)?;
    }
    std::fs::rename(&part, dest)?;
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// The plan in an archive directory; `None` when `dir` is not a streamed archive.
pub fn read_plan(dir: &Path) -> Result<Option<StreamPlan>, String> {
    let path = dir.join(PLAN);
    if !dir.is_dir() || !path.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| format!("{} is damaged ({e}); start a new recovery", path.display()))
}

/// Decodes every chunk of the plan's backup without keeping anything: proof that the whole
/// backup is intact, for restores that destroy something before they load.
pub fn authenticate(plan: &StreamPlan, keys: &Keyring) -> Result<(), String> {
    let source = File::open(&plan.source)
        .map_err(|e| format!("cannot read the backup {}: {e}", plan.source.display()))?;
    let opened = chunked::open(&source, keys)
        .map_err(|e| format!("the backup {}: {e}", plan.source.display()))?;
    chunked::decode(
        &source,
        &opened,
        keys,
        0,
        true,
        crate::parallel::available_threads(),
        std::io::sink(),
        &mut |_, _| Ok(()),
    )
    .map(drop)
    .map_err(|e| format!("the backup {} is damaged: {e}", plan.source.display()))
}

/// State shared by the feeders and the restore step.
#[derive(Default)]
struct Shared {
    /// Set when the feeders must stop (pg_restore is gone or being stopped).
    stop: AtomicBool,
    /// The first failure, if any.
    failure: Mutex<Option<String>>,
    failed: AtomicBool,
    /// Rows written into the pipes so far.
    fed: AtomicU64,
    /// Data files completely fed.
    done: AtomicUsize,
}

impl Shared {
    fn fail(&self, message: String) {
        if let Ok(mut slot) = self.failure.lock()
            && slot.is_none()
        {
            *slot = Some(message);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// The feeders of one streamed restore, running while pg_restore reads.
pub struct Streams {
    shared: Arc<Shared>,
    dispatcher: Option<std::thread::JoinHandle<Vec<std::thread::JoinHandle<()>>>>,
    files: usize,
    total: u64,
}

impl Streams {
    /// Makes every data file of `dir` a named pipe and starts feeding each as soon as
    /// pg_restore opens it. Fails before anything is restored when the source is missing,
    /// is another file than the plan's, or does not open with `keys`.
    pub fn start(dir: &Path, plan: &StreamPlan, keys: Keyring) -> Result<Streams, String> {
        let source = File::open(&plan.source).map_err(|e| {
            format!(
                "cannot read the backup {} the restore streams from: {e}; start a new recovery (it downloads the backup again)",
                plan.source.display()
            )
        })?;
        let opened = chunked::open(&source, &keys)
            .map_err(|e| format!("the backup {}: {e}", plan.source.display()))?;
        if hex::encode(opened.header.file_id) != plan.file_id {
            return Err(format!(
                "{} is not the backup {} was planned for; start a new recovery",
                plan.source.display(),
                dir.display()
            ));
        }
        for file in &plan.files {
            let path = dir.join(&file.name);
            let _ = std::fs::remove_file(&path);
            nix::unistd::mkfifo(
                &path,
                nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
            )
            .map_err(|e| format!("cannot create the pipe {}: {e}", path.display()))?;
        }
        let shared = Arc::new(Shared::default());
        let job = Job {
            source: Arc::new(source),
            opened: Arc::new(opened),
            keys: Arc::new(keys),
            int_size: plan.int_size,
            shared: shared.clone(),
        };
        let pending: VecDeque<(PathBuf, DataBlock)> = plan
            .files
            .iter()
            .map(|f| (dir.join(&f.name), f.block))
            .collect();
        let dispatcher = std::thread::Builder::new()
            .name("stream-pipes".into())
            .spawn(move || dispatch(pending, job))
            .map_err(|e| format!("cannot start the restore's feeders: {e}"))?;
        Ok(Streams {
            shared,
            dispatcher: Some(dispatcher),
            files: plan.files.len(),
            total: plan.data_bytes(),
        })
    }

    /// The first feeder failure (a damaged chunk, a pipe error), once there is one: the
    /// caller stops pg_restore, then calls [`Streams::finish`].
    pub fn failure(&self) -> Option<String> {
        if !self.shared.failed.load(Ordering::SeqCst) {
            return None;
        }
        self.shared.failure.lock().ok().and_then(|f| f.clone())
    }

    /// Rows fed so far and the total, in bytes.
    pub fn progress(&self) -> (u64, u64) {
        (self.shared.fed.load(Ordering::Relaxed), self.total)
    }

    /// Stops the feeders (pg_restore has exited) and reports whether every data file was
    /// fed whole.
    pub fn finish(mut self) -> Result<u64, String> {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(dispatcher) = self.dispatcher.take() {
            for feeder in dispatcher.join().unwrap_or_default() {
                let _ = feeder.join();
            }
        }
        if let Some(failure) = self.failure() {
            return Err(failure);
        }
        let done = self.shared.done.load(Ordering::SeqCst);
        if done != self.files {
            return Err(format!(
                "pg_restore read {done} of the {} table data files; the restore is incomplete",
                self.files
            ));
        }
        Ok(self.shared.fed.load(Ordering::SeqCst))
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

/// What every feeder reads from.
#[derive(Clone)]
struct Job {
    source: Arc<File>,
    opened: Arc<Opened>,
    keys: Arc<Keyring>,
    int_size: usize,
    shared: Arc<Shared>,
}

/// Opens each pipe for writing as soon as pg_restore has opened it for reading, and hands
/// it to a feeder of its own. Returns the feeders, to be joined.
fn dispatch(
    mut pending: VecDeque<(PathBuf, DataBlock)>,
    job: Job,
) -> Vec<std::thread::JoinHandle<()>> {
    let mut feeders = Vec::new();
    let mut polls = 0u32;
    while !pending.is_empty() && !job.shared.stopped() {
        let look = if polls.is_multiple_of(SWEEP_EVERY) {
            pending.len()
        } else {
            POLL_AHEAD.min(pending.len())
        };
        let mut index = 0;
        let mut looked = 0;
        while looked < look && index < pending.len() {
            looked += 1;
            match open_for_writing(&pending[index].0) {
                Ok(Some(pipe)) => {
                    let Some((path, block)) = pending.remove(index) else {
                        break;
                    };
                    let mine = job.clone();
                    let spawned = std::thread::Builder::new()
                        .name("stream-feed".into())
                        .spawn(move || feed(pipe, &path, block, &mine));
                    match spawned {
                        Ok(handle) => feeders.push(handle),
                        Err(e) => {
                            job.shared.fail(format!("cannot start a feeder: {e}"));
                            return feeders;
                        }
                    }
                }
                Ok(None) => index += 1,
                Err(e) => {
                    job.shared.fail(format!(
                        "cannot open the pipe {}: {e}",
                        pending[index].0.display()
                    ));
                    return feeders;
                }
            }
        }
        polls = polls.wrapping_add(1);
        std::thread::sleep(POLL);
    }
    feeders
}

/// The write end of a pipe whose reader is there; `None` while nobody reads it.
fn open_for_writing(path: &Path) -> std::io::Result<Option<File>> {
    match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => {
            use nix::fcntl::{FcntlArg, OFlag, fcntl};
            fcntl(&file, FcntlArg::F_SETFL(OFlag::empty())).map_err(std::io::Error::from)?;
            // A bigger pipe means fewer wake-ups of pg_restore; advisory.
            let _ = fcntl(&file, FcntlArg::F_SETPIPE_SZ(PIPE_BYTES));
            Ok(Some(file))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Skips the bytes of the first chunk before the block, then hands the rest to the block's
/// reader; stops when the restore stops.
struct Skipping<'a, W: Write> {
    skip: u64,
    rows: &'a mut BlockRows<W>,
    shared: &'a Shared,
}

impl<W: Write> Write for Skipping<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.shared.stopped() {
            return Err(std::io::Error::other("the restore stopped"));
        }
        let skipped = self.skip.min(buf.len() as u64) as usize;
        self.skip -= skipped as u64;
        let rest = &buf[skipped..];
        let before = self.rows.written();
        self.rows
            .feed(rest)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.shared
            .fed
            .fetch_add(self.rows.written() - before, Ordering::Relaxed);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Decodes one block's chunks into its pipe. On failure the pipe is kept open until the
/// restore has stopped pg_restore, so the table being loaded never sees an early end.
fn feed(pipe: File, path: &Path, block: DataBlock, job: &Job) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let keep = match pipe.try_clone() {
        Ok(keep) => keep,
        Err(e) => {
            job.shared.fail(format!("cannot hold the pipe {name}: {e}"));
            return;
        }
    };
    let mut rows = BlockRows::new(BufWriter::with_capacity(1 << 20, pipe), block, job.int_size);
    let (chunks, first_at) =
        chunked::chunks_covering(&job.opened, block.offset, block.offset + block.length);
    let decoded = {
        let sink = Skipping {
            skip: block.offset.saturating_sub(first_at),
            rows: &mut rows,
            shared: &job.shared,
        };
        chunked::decode_range(
            job.source.as_ref(),
            &job.opened,
            &job.keys,
            chunks,
            true,
            1,
            sink,
            &mut |_, _| Ok(()),
        )
    };
    let outcome = decoded
        .map_err(|e| e.to_string())
        .and_then(|_| rows.finish().map(drop).map_err(|e| e.to_string()));
    match outcome {
        Ok(()) => {
            drop(keep);
            job.shared.done.fetch_add(1, Ordering::SeqCst);
        }
        Err(e) => {
            if !job.shared.stopped() {
                job.shared.fail(format!("table data {name}: {e}"));
            }
            // Hold the write end until pg_restore is gone: closing it now would end the
            // table's rows early and let its COPY commit short.
            while !job.shared.stopped() {
                std::thread::sleep(Duration::from_millis(10));
            }
            drop(keep);
        }
    }
}
