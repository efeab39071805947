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
use crate::pg::dir_archive::{DataFile, DirArchive};
use crate::pg::dump_blocks::{BlockRows, DataBlock, RowsError, all_within};

/// The plan's file name inside the archive directory.
const PLAN: &str = "stream.json";
/// The table of contents' file name (pg_dump's).
const TOC: &str = "toc.dat";
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
    pub files: Vec<DataFile>,
}

impl StreamPlan {
    /// The plan for a rewritten archive whose rows are in `source`.
    pub fn new(dir: &DirArchive, source: &Path, opened: &Opened) -> Self {
        Self {
            source: std::path::absolute(source).unwrap_or_else(|_| source.to_path_buf()),
            file_id: hex::encode(opened.header.file_id),
            int_size: dir.int_size,
            files: dir.files.clone(),
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

/// Opens the plan's backup and checks that every planned block lies inside its plaintext.
fn open_source(plan: &StreamPlan, keys: &Keyring) -> Result<(File, Opened), String> {
    let source = File::open(&plan.source).map_err(|e| {
        format!(
            "cannot read the backup {} the restore streams from: {e}; start a new recovery (it downloads the backup again)",
            plan.source.display()
        )
    })?;
    let opened = chunked::open(&source, keys)
        .map_err(|e| format!("the backup {}: {e}", plan.source.display()))?;
    if hex::encode(opened.header.file_id) != plan.file_id {
        return Err(format!(
            "{} is not the backup this restore was planned for; start a new recovery",
            plan.source.display()
        ));
    }
    let size = opened.index.plaintext_size;
    let blocks: Vec<DataBlock> = plan.files.iter().map(|f| f.block).collect();
    if !all_within(&blocks, size) {
        return Err(format!(
            "the restore plan for {} addresses bytes outside the backup's {size} (a damaged stream.json); start a new recovery",
            plan.source.display()
        ));
    }
    Ok((source, opened))
}

/// Decodes the whole backup without keeping anything, checking every planned block's
/// framing too: proof that it restores, for restores that destroy something before they
/// load. `stopped` is asked between chunks; `progress` hears the plaintext bytes done.
pub fn authenticate(
    plan: &StreamPlan,
    keys: &Keyring,
    stopped: &dyn Fn() -> bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), String> {
    let (source, opened) = open_source(plan, keys)?;
    let mut blocks: Vec<DataBlock> = plan.files.iter().map(|f| f.block).collect();
    blocks.sort_by_key(|b| b.offset);
    let total = opened.index.plaintext_size;
    let mut check = CheckBlocks {
        blocks,
        next: 0,
        current: None,
        pos: 0,
        int_size: plan.int_size,
    };
    chunked::decode(
        &source,
        &opened,
        keys,
        0,
        true,
        crate::parallel::available_threads(),
        &mut check,
        &mut |_, plain| {
            if stopped() {
                return Err(crate::crypto::CryptoError::Io(
                    "the restore was stopped".into(),
                ));
            }
            progress(plain, total);
            Ok(())
        },
    )
    .map_err(|e| format!("the backup {} is damaged: {e}", plan.source.display()))?;
    check
        .finish()
        .map_err(|e| format!("the backup {} is damaged: {e}", plan.source.display()))
}

/// Walks the plaintext of a whole backup, checking each planned block's framing.
struct CheckBlocks {
    /// In plaintext order.
    blocks: Vec<DataBlock>,
    next: usize,
    current: Option<BlockRows<std::io::Sink>>,
    pos: u64,
    int_size: usize,
}

impl CheckBlocks {
    fn finish(mut self) -> Result<(), RowsError> {
        if let Some(rows) = self.current.take() {
            rows.finish()?;
        }
        match self.blocks.get(self.next) {
            Some(missing) => Err(RowsError::Damaged {
                id: missing.id,
                detail: "the backup ends before this block".into(),
            }),
            None => Ok(()),
        }
    }
}

impl Write for CheckBlocks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let end = self.pos + buf.len() as u64;
        let mut at = self.pos;
        while at < end {
            if self.current.is_none() {
                match self.blocks.get(self.next) {
                    Some(block) if block.offset < end => {
                        at = at.max(block.offset);
                        self.current = Some(BlockRows::new(std::io::sink(), *block, self.int_size));
                        self.next += 1;
                    }
                    _ => break,
                }
            }
            let Some(rows) = self.current.as_mut() else {
                break;
            };
            let block_end = rows.block().end().unwrap_or(u64::MAX);
            let upto = end.min(block_end);
            let slice = &buf[(at - self.pos) as usize..(upto - self.pos) as usize];
            rows.feed(slice)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            at = upto;
            if upto == block_end
                && let Some(done) = self.current.take()
            {
                done.finish()
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
            }
        }
        self.pos = end;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// State shared by the feeders and the restore step.
#[derive(Default)]
struct Shared {
    /// Set when the feeders must stop (pg_restore is gone or being stopped).
    stop: AtomicBool,
    /// The first failure that must stop pg_restore (a damaged chunk, a pipe that cannot be
    /// opened), if any.
    failure: Mutex<Option<String>>,
    failed: AtomicBool,
    /// The first pipe pg_restore stopped reading (it failed or was stopped): context for its
    /// own error, not a failure of the backup.
    lost_reader: Mutex<Option<String>>,
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

    fn lose_reader(&self, message: String) {
        if let Ok(mut slot) = self.lost_reader.lock()
            && slot.is_none()
        {
            *slot = Some(message);
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// How a streamed restore's feeding went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    /// A failure that stops the restore: a damaged chunk, a pipe that could not be fed.
    #[error("{0}")]
    Failed(String),
    /// pg_restore did not read every data file whole (it failed or was stopped).
    #[error("{0}; the restore is incomplete")]
    Incomplete(String),
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
        let (source, opened) = open_source(plan, &keys)?;
        // Only this user reads the pipes: another reader would take rows pg_restore never sees.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot restrict {}: {e}", dir.display()))?;
        for file in &plan.files {
            let path = dir.join(&file.name);
            let _ = std::fs::remove_file(&path);
            nix::unistd::mkfifo(
                &path,
                nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
            )
            .map_err(|e| {
                format!(
                    "cannot create the pipe {}: {e}; restore from a written-out archive instead (--param stream=false)",
                    path.display()
                )
            })?;
        }
        let shared = Arc::new(Shared::default());
        let job = Job {
            source: Arc::new(source),
            opened: Arc::new(opened),
            keys: Arc::new(keys),
            int_size: plan.int_size,
            shared: shared.clone(),
        };
        let pending: VecDeque<Pending> = plan
            .files
            .iter()
            .map(|f| Pending {
                path: dir.join(&f.name),
                table: f.table.clone(),
                block: f.block,
            })
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

    /// The first failure that must stop the restore (a damaged chunk, a pipe that cannot be
    /// opened), once there is one: the caller stops pg_restore, then calls
    /// [`Streams::finish`].
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
    pub fn finish(mut self) -> Result<u64, FeedError> {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(dispatcher) = self.dispatcher.take() {
            for feeder in dispatcher.join().unwrap_or_default() {
                let _ = feeder.join();
            }
        }
        if let Some(failure) = self.failure() {
            return Err(FeedError::Failed(failure));
        }
        let done = self.shared.done.load(Ordering::SeqCst);
        if done != self.files {
            let lost = self
                .shared
                .lost_reader
                .lock()
                .ok()
                .and_then(|l| l.clone())
                .map(|l| format!(" ({l})"))
                .unwrap_or_default();
            return Err(FeedError::Incomplete(format!(
                "pg_restore read {done} of the {} table data files{lost}",
                self.files
            )));
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

/// A data file pg_restore has not opened yet.
struct Pending {
    path: PathBuf,
    table: String,
    block: DataBlock,
}

/// Opens each pipe for writing as soon as pg_restore has opened it for reading, and hands
/// it to a feeder of its own. Returns the feeders still running, to be joined.
///
/// pg_restore opens its data files biggest first (the plan's order) with `--jobs` above 1,
/// in table-of-contents order with one job: each poll looks at the head of the list and at
/// the files after the last one opened, and now and then at all of them.
fn dispatch(mut pending: VecDeque<Pending>, job: Job) -> Vec<std::thread::JoinHandle<()>> {
    let mut feeders: Vec<std::thread::JoinHandle<()>> = Vec::new();
    let mut polls = 0u64;
    let mut cursor = 0usize;
    while !pending.is_empty() && !job.shared.stopped() {
        // Finished feeders are let go (an exited thread keeps its stack until joined).
        feeders.retain(|f| !f.is_finished());
        let sweep_every = (SWEEP_EVERY as usize).max(pending.len() / 20) as u64;
        let mut candidates: Vec<usize> = if polls.is_multiple_of(sweep_every) {
            (0..pending.len()).collect()
        } else {
            let head = 0..POLL_AHEAD.min(pending.len());
            let after = cursor.min(pending.len())..(cursor + POLL_AHEAD).min(pending.len());
            head.chain(after).collect()
        };
        candidates.sort_unstable();
        candidates.dedup();
        let mut opened = Vec::new();
        for index in candidates {
            match open_for_writing(&pending[index].path) {
                Ok(Some(pipe)) => opened.push((index, pipe)),
                Ok(None) => {}
                Err(e) => {
                    job.shared.fail(format!(
                        "cannot open the pipe {}: {e}",
                        pending[index].path.display()
                    ));
                    return hold_all(opened, feeders);
                }
            }
        }
        // Taken highest index first, so the lower indices stay valid while removing.
        opened.sort_by_key(|(index, _)| *index);
        while let Some((index, pipe)) = opened.pop() {
            let Some(file) = pending.remove(index) else {
                continue;
            };
            cursor = index;
            // A descriptor of our own while the feeder starts: if it cannot start, the
            // pipe must not close under pg_restore.
            let held = match pipe.try_clone() {
                Ok(held) => held,
                Err(e) => {
                    job.shared
                        .fail(format!("cannot hold the pipe {}: {e}", file.path.display()));
                    hold_until_unread(pipe);
                    return hold_all(opened, feeders);
                }
            };
            let mine = job.clone();
            let spawned = std::thread::Builder::new()
                .name("stream-feed".into())
                .spawn(move || feed(pipe, &file, &mine));
            match spawned {
                Ok(handle) => {
                    drop(held);
                    feeders.push(handle);
                }
                Err(e) => {
                    job.shared.fail(format!("cannot start a feeder: {e}"));
                    hold_until_unread(held);
                    return hold_all(opened, feeders);
                }
            }
        }
        polls += 1;
        std::thread::sleep(POLL);
    }
    feeders
}

/// After a failure that stops the restore: keeps the pipes opened but not yet fed until
/// pg_restore is gone, then hands back the feeders.
fn hold_all(
    opened: Vec<(usize, File)>,
    feeders: Vec<std::thread::JoinHandle<()>>,
) -> Vec<std::thread::JoinHandle<()>> {
    for (_, pipe) in opened {
        hold_until_unread(pipe);
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

/// Keeps a pipe's write end open until nobody reads it any more. Closing it while
/// pg_restore still reads would end that table's rows early and let its COPY commit short;
/// so a table not fed whole is closed only once pg_restore has been stopped.
fn hold_until_unread(pipe: File) {
    use std::os::fd::AsRawFd;
    loop {
        let mut poll = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one pollfd on the stack for one call; the descriptor is owned by `pipe`
        // and open throughout.
        let ready = unsafe { libc::poll(&mut poll, 1, 100) };
        if ready > 0 && poll.revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
            return;
        }
        if ready != 0 {
            // Writable (a reader is there) or interrupted: look again shortly.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Skips the bytes of the first chunk before the block, then hands the rest to the block's
/// reader; stops when the restore stops.
struct Skipping<'a, W: Write> {
    skip: u64,
    rows: &'a mut BlockRows<W>,
    shared: &'a Shared,
    /// Set when writing to the pipe failed (its reader went away), as opposed to the
    /// backup's bytes being wrong.
    pipe_failed: &'a AtomicBool,
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
        self.rows.feed(rest).map_err(|e| {
            if matches!(e, RowsError::Io(_)) {
                self.pipe_failed.store(true, Ordering::SeqCst);
            }
            std::io::Error::other(e.to_string())
        })?;
        self.shared
            .fed
            .fetch_add(self.rows.written() - before, Ordering::Relaxed);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How feeding one data file ended, when it did not end whole.
enum Unfed {
    /// pg_restore stopped reading it (it failed, or was stopped).
    ReaderGone(String),
    /// The restore was stopped.
    Stopped,
    /// The backup's bytes are not what the plan says: the restore must stop.
    Damaged(String),
}

/// Feeds one data file. Whatever happens — an error, a panic — the write end stays open
/// until pg_restore no longer reads it, unless the block was fed whole.
fn feed(pipe: File, file: &Pending, job: &Job) {
    let name = if file.table.is_empty() {
        file.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        format!("the rows of {}", file.table)
    };
    let keep = match pipe.try_clone() {
        Ok(keep) => keep,
        Err(e) => {
            job.shared
                .fail(format!("cannot hold the pipe of {name}: {e}"));
            hold_until_unread(pipe);
            return;
        }
    };
    let fed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        feed_rows(pipe, file.block, job)
    }));
    match fed {
        Ok(Ok(())) => {
            drop(keep);
            job.shared.done.fetch_add(1, Ordering::SeqCst);
        }
        Ok(Err(Unfed::ReaderGone(e))) => {
            job.shared
                .lose_reader(format!("pg_restore stopped reading {name}: {e}"));
            hold_until_unread(keep);
        }
        Ok(Err(Unfed::Stopped)) => hold_until_unread(keep),
        Ok(Err(Unfed::Damaged(e))) => {
            job.shared
                .fail(format!("the backup is damaged: {name}: {e}"));
            hold_until_unread(keep);
        }
        Err(_) => {
            job.shared
                .fail(format!("feeding {name} failed unexpectedly (a bug)"));
            hold_until_unread(keep);
        }
    }
}

/// Decodes one block's chunks into its pipe and checks the block ended where it should.
fn feed_rows(pipe: File, block: DataBlock, job: &Job) -> Result<(), Unfed> {
    let mut rows = BlockRows::new(BufWriter::with_capacity(1 << 20, pipe), block, job.int_size);
    let (chunks, first_at) =
        chunked::chunks_covering(&job.opened, block.offset, block.end().unwrap_or(u64::MAX));
    let pipe_failed = AtomicBool::new(false);
    let decoded = chunked::decode_range(
        job.source.as_ref(),
        &job.opened,
        &job.keys,
        chunks,
        true,
        1,
        Skipping {
            skip: block.offset.saturating_sub(first_at),
            rows: &mut rows,
            shared: &job.shared,
            pipe_failed: &pipe_failed,
        },
        &mut |_, _| Ok(()),
    );
    let classify = |message: String| {
        if pipe_failed.load(Ordering::SeqCst) {
            Unfed::ReaderGone(message)
        } else if job.shared.stopped() {
            Unfed::Stopped
        } else {
            Unfed::Damaged(message)
        }
    };
    decoded.map_err(|e| classify(e.to_string()))?;
    rows.finish().map(drop).map_err(|e| match e {
        RowsError::Io(e) => Unfed::ReaderGone(e.to_string()),
        damaged => Unfed::Damaged(damaged.to_string()),
    })
}
