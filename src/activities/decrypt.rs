//! `decrypt`: an encrypted backup file to its compressed (or, with `decompress = true`, its
//! plain) contents — chunked files in parallel and resumable at a chunk, the seed's
//! single-token files in one streaming pass. Output appears under its final name only once
//! it has fully authenticated.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::files::{
    PieceWriter, WRITE_PIECE, WriteBehind, boot_id, commit, commit_unflushed, discard,
    is_write_failure, part_path, prepare_dir, remove_output,
};
use super::inputs::{self, lenient_bool, lenient_opt_u64};
use super::services::Services;
use super::streamed::{StreamPlan, write_archive};
use crate::codec::{self, Compression};
use crate::crypto::chunked::{self, Opened};
use crate::crypto::{CryptoError, Keyring, legacy};
use crate::engine::{
    Activity, ActivityContext, ActivityError, ActivitySpec, Discarded, InputSpec, Leftovers,
    Progress,
};
use crate::parallel::available_threads;
use crate::pg::archive_layout::{self, ArchiveLayout, LayoutError};
use crate::pg::dir_archive;
use crate::pg::dump_blocks::{DataBlock, all_within, worth_streaming};
use crate::pg::dump_format::HEAD_LIMIT;
use crate::storage::verify::Format;

/// Chunks between durable checkpoints.
const CHECKPOINT_CHUNKS: u64 = 64;

static SPEC: ActivitySpec = ActivitySpec {
    name: "decrypt",
    summary: "decrypt a backup file (chunked or the seed's single token), optionally decompressing",
    inputs: &[
        InputSpec {
            name: "src",
            required: true,
            help: "encrypted file",
        },
        InputSpec {
            name: "dest",
            required: true,
            help: "output file",
        },
        InputSpec {
            name: "decompress",
            required: false,
            help: "also decompress, in the same pass (default false)",
        },
        InputSpec {
            name: "parallel_restore",
            required: false,
            help: "with decompress: lay a pg_dump -Fc archive out for pg_restore --jobs — data offsets filled in, big tables cut into parts that load in parallel (default false)",
        },
        InputSpec {
            name: "stream",
            required: false,
            help: "with decompress and data_blocks: write only the table of contents, as a directory archive whose table data the restore step streams from the backup (default false)",
        },
        InputSpec {
            name: "data_blocks",
            required: false,
            help: "where each table's data sits in the archive (the backup manifest's data_blocks)",
        },
        InputSpec {
            name: "part_size",
            required: false,
            help: "with parallel_restore: bytes per table part (default: 64 MiB, more for archives over 64 GiB)",
        },
        InputSpec {
            name: "threads",
            required: false,
            help: "worker threads (default: all cores)",
        },
    ],
    outputs: &[
        "path",
        "size",
        "format",
        "compression",
        "key_id",
        "plaintext_sha256",
        "seconds",
        "reused",
        "split_tables",
        "table_parts",
        "unflushed_in_boot",
        "streamed",
        "streamed_tables",
        "results",
    ],
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inputs {
    src: PathBuf,
    dest: PathBuf,
    #[serde(default, deserialize_with = "lenient_bool")]
    decompress: bool,
    #[serde(default, deserialize_with = "lenient_bool")]
    parallel_restore: bool,
    #[serde(default, deserialize_with = "lenient_bool")]
    stream: bool,
    #[serde(default)]
    data_blocks: Option<Vec<DataBlock>>,
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    part_size: Option<u64>,
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    threads: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Checkpoint {
    src_size: u64,
    decompress: bool,
    chunks: u64,
    written: u64,
}

/// The `decrypt` activity.
pub struct Decrypt {
    services: Arc<Services>,
}

impl Decrypt {
    /// The activity with these keys.
    pub fn new(services: Arc<Services>) -> Self {
        Self { services }
    }
}

fn crypto_error(e: CryptoError) -> ActivityError {
    match e {
        CryptoError::Io(m) => ActivityError::retryable(m),
        other => ActivityError::permanent(other.to_string()),
    }
}

/// Reports decoding progress; stops the decode once the step is cancelled.
fn report_progress(
    ctx: &ActivityContext,
    chunks: u64,
    plain: u64,
    total_plain: u64,
    total_chunks: u64,
) -> Result<(), CryptoError> {
    if ctx.cancellation().is_cancelled() {
        return Err(CryptoError::Io("decryption stopped".into()));
    }
    ctx.progress(Progress {
        done: plain,
        total: Some(total_plain),
        unit: "bytes".into(),
        message: Some(format!("chunk {chunks}/{total_chunks}")),
    });
    Ok(())
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(hex::encode(hash.finalize()))
}

/// Decodes a chunked file, checkpointing every few chunks.
#[allow(clippy::too_many_arguments)]
fn decode_chunked(
    file: &File,
    opened: &Opened,
    keys: &Keyring,
    part: &Path,
    from_chunk: u64,
    written_before: u64,
    decompress: bool,
    threads: usize,
    mut on_progress: impl FnMut(u64, u64, u64) -> Result<(), CryptoError>,
    mut on_chunk: impl FnMut(&WriterRef<'_>, u64, u64) -> Result<(), CryptoError>,
) -> Result<u64, CryptoError> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(part)
        .map_err(|e| CryptoError::Io(format!("cannot open {}: {e}", part.display())))?;
    out.set_len(written_before)
        .map_err(|e| CryptoError::Io(format!("cannot truncate {}: {e}", part.display())))?;
    let mut out = out;
    std::io::Seek::seek(&mut out, std::io::SeekFrom::Start(written_before))
        .map_err(|e| CryptoError::Io(format!("cannot seek in {}: {e}", part.display())))?;
    let counter = CountingWriter {
        inner: BufWriter::with_capacity(WRITE_PIECE, WriteBehind::new(out, part, written_before)),
        written: written_before,
    };
    let shared = std::sync::Mutex::new(counter);
    let summary = chunked::decode(
        file,
        opened,
        keys,
        from_chunk,
        decompress,
        threads,
        WriterRef(&shared),
        &mut |chunks, plain| {
            let written = shared.lock().map(|c| c.written).unwrap_or_default();
            on_progress(chunks, plain, written)?;
            on_chunk(&WriterRef(&shared), chunks, written)
        },
    )?;
    let _ = summary;
    let counter = shared
        .into_inner()
        .map_err(|_| CryptoError::Io("output writer poisoned".into()))?;
    let written = counter.written;
    let mut inner = counter.inner;
    inner
        .flush()
        .map_err(|e| CryptoError::Io(format!("cannot write {}: {e}", part.display())))?;
    Ok(written)
}

/// Writes the directory archive a streamed restore reads: the archive's header and table
/// of contents (decoded from the first chunks) rewritten as `toc.dat`, and the plan of
/// where each table's rows are in `src`. `Ok(None)` when this archive cannot be streamed
/// (the caller then writes the whole archive out, as for older backups).
fn plan_streamed(
    file: &File,
    opened: &Opened,
    keys: &Keyring,
    blocks: &[DataBlock],
    src: &Path,
    dest: &Path,
) -> Result<Option<usize>, ActivityError> {
    let head_end = blocks
        .iter()
        .map(|b| b.offset)
        .min()
        .unwrap_or(opened.index.plaintext_size);
    if head_end > HEAD_LIMIT as u64 || !all_within(blocks, opened.index.plaintext_size) {
        tracing::info!(
            "the backup's data blocks do not fit its archive: written out whole instead"
        );
        return Ok(None);
    }
    if !worth_streaming(blocks, u64::from(opened.header.chunk_size)) {
        tracing::info!(
            tables = blocks.len(),
            "too many small tables share chunks: the archive is written out instead of streamed"
        );
        return Ok(None);
    }
    let (chunks, _) = chunked::chunks_covering(opened, 0, head_end);
    let mut head = Vec::new();
    chunked::decode_range(
        file,
        opened,
        keys,
        chunks,
        true,
        1,
        &mut head,
        &mut |_, _| Ok(()),
    )
    .map_err(crypto_error)?;
    head.truncate(head_end as usize);
    let dir = match dir_archive::rewrite(&head, blocks) {
        Ok(dir) => dir,
        Err(refusal) => {
            tracing::info!(reason = %refusal, "the archive is written out whole instead of streamed");
            return Ok(None);
        }
    };
    let plan = StreamPlan::new(&dir, src, opened);
    write_archive(dest, &dir.toc, &plan)
        .map_err(|e| ActivityError::retryable(format!("cannot write {}: {e}", dest.display())))?;
    Ok(Some(dir.files.len()))
}

/// Decodes a chunked file into a pg_dump archive laid out for `pg_restore --jobs`
/// ([`ArchiveLayout`]). Not resumable part-way: the layout's state lives in memory, so a
/// killed decode starts over (it runs at the speed of decompression). Nor is it flushed:
/// pg_restore reads it from the page cache right away, and the restore step flushes it once
/// pg_restore has run 30 s (a machine restart before that is detected by the boot id).
/// Returns the output's size, and how many tables were cut into how many parts.
#[allow(clippy::too_many_arguments)]
fn decode_for_restore(
    file: &File,
    opened: &Opened,
    keys: &Keyring,
    part: &Path,
    part_bytes: u64,
    threads: usize,
    mut on_progress: impl FnMut(u64, u64) -> Result<(), CryptoError>,
) -> Result<(u64, usize, usize), ActivityError> {
    let io = |what: &str, e: std::io::Error| {
        ActivityError::retryable(format!("cannot {what} {}: {e}", part.display()))
    };
    let out = File::create(part).map_err(|e| io("create", e))?;
    let writer = BufWriter::with_capacity(
        WRITE_PIECE,
        PieceWriter::new(out.try_clone().map_err(|e| io("open", e))?, part),
    );
    let mut layout = ArchiveLayout::new(writer, part_bytes);
    let decoded = chunked::decode(
        file,
        opened,
        keys,
        0,
        true,
        threads,
        &mut layout,
        &mut |chunks, plain| on_progress(chunks, plain),
    );
    if let Some(damage) = layout.damage() {
        return Err(ActivityError::permanent(damage));
    }
    decoded.map_err(crypto_error)?;
    let (mut writer, finished) = layout.finish().map_err(|e| match e {
        LayoutError::Io(e) => io("write", e),
        damaged => ActivityError::permanent(damaged.to_string()),
    })?;
    writer.flush().map_err(|e| io("write", e))?;
    drop(writer);
    if finished.toc.is_none() {
        tracing::info!(
            "the archive is not an uncompressed pg_dump -Fc of a version this build lays out: written as it is"
        );
    }
    if let Some(toc) = &finished.toc {
        use std::os::unix::fs::FileExt;
        out.write_all_at(toc, 0).map_err(|e| io("write", e))?;
    }
    let size = out.metadata().map_err(|e| io("stat", e))?.len();
    Ok((size, finished.split_tables, finished.parts_added))
}

struct CountingWriter<W: Write> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl CountingWriter<BufWriter<WriteBehind>> {
    fn sync(&mut self) -> std::io::Result<()> {
        self.inner.flush()?;
        self.inner.get_ref().get_ref().sync_data()
    }
}

/// Lets the decode sink write through a mutex the progress callback can also look into.
struct WriterRef<'a>(&'a std::sync::Mutex<CountingWriter<BufWriter<WriteBehind>>>);

impl Write for WriterRef<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("writer poisoned"))?
            .write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("writer poisoned"))?
            .flush()
    }
}

impl WriterRef<'_> {
    fn sync(&self) -> std::io::Result<()> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("writer poisoned"))?
            .sync()
    }
}

/// Decrypts a legacy single-token file; with `decompress`, a second thread decompresses
/// what the first decrypts, through a pipe, so memory stays bounded.
fn decrypt_legacy(
    src: &Path,
    part: &Path,
    keys: &Keyring,
    decompress: bool,
) -> Result<(u64, String, Compression), CryptoError> {
    let open = || {
        File::open(src).map_err(|e| CryptoError::Io(format!("cannot read {}: {e}", src.display())))
    };
    let key = if keys.keys().len() == 1 {
        keys.primary()?.clone()
    } else {
        legacy::identify_key(std::io::BufReader::new(open()?), keys)?.clone()
    };
    let out = File::create(part)
        .map_err(|e| CryptoError::Io(format!("cannot create {}: {e}", part.display())))?;
    let mut out = CountingWriter {
        inner: BufWriter::with_capacity(WRITE_PIECE, PieceWriter::new(out, part)),
        written: 0,
    };
    let write_err =
        |e: std::io::Error| CryptoError::Io(format!("cannot write {}: {e}", part.display()));
    let input = std::io::BufReader::with_capacity(1 << 20, open()?);
    let compression = if decompress {
        let (reader, writer) = std::io::pipe().map_err(write_err)?;
        std::thread::scope(|scope| {
            let key = &key;
            let decrypting = scope.spawn(move || {
                let mut writer = BufWriter::with_capacity(1 << 20, writer);
                let result = legacy::decrypt(input, key, &mut writer);
                drop(writer);
                result
            });
            let copied = codec::auto_decoder(reader).and_then(|(format, mut decoder)| {
                std::io::copy(&mut decoder, &mut out).map(|_| format)
            });
            // Dropping the decoder (and with it the pipe) unblocks the decrypting thread
            // if decompression stopped early.
            let decrypted = decrypting
                .join()
                .map_err(|_| CryptoError::Io("the decrypting thread panicked".into()))?;
            decrypted?;
            copied.map_err(|e| {
                if is_write_failure(&e) {
                    CryptoError::Io(e.to_string())
                } else {
                    CryptoError::Malformed(format!("the decrypted data does not decompress: {e}"))
                }
            })
        })?
    } else {
        let mut head = HeadRecorder {
            head: Vec::new(),
            inner: &mut out,
        };
        legacy::decrypt(input, &key, &mut head)?;
        Compression::detect(&head.head)
    };
    out.flush().map_err(write_err)?;
    Ok((out.written, key.id().to_string(), compression))
}

/// Passes writes through, remembering the first bytes (to name the compression).
struct HeadRecorder<'a, W: Write> {
    head: Vec<u8>,
    inner: &'a mut W,
}

impl<W: Write> Write for HeadRecorder<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.head.len() < 8 {
            let take = (8 - self.head.len()).min(buf.len());
            self.head.extend_from_slice(&buf[..take]);
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn head_of(path: &Path) -> Result<Vec<u8>, ActivityError> {
    let mut head = vec![0u8; 16];
    let mut file = File::open(path).map_err(|e| {
        let message = format!("cannot read {}: {e}", path.display());
        if e.kind() == std::io::ErrorKind::NotFound {
            ActivityError::permanent(message)
        } else {
            ActivityError::retryable(message)
        }
    })?;
    let n = file
        .read(&mut head)
        .map_err(|e| ActivityError::retryable(format!("cannot read {}: {e}", path.display())))?;
    head.truncate(n);
    Ok(head)
}

#[async_trait]
impl Activity for Decrypt {
    fn spec(&self) -> &'static ActivitySpec {
        &SPEC
    }

    async fn discard(
        &self,
        _ctx: &ActivityContext,
        leftovers: Leftovers,
    ) -> Result<Discarded, ActivityError> {
        let inputs: Inputs = inputs::parse("decrypt", leftovers.inputs)?;
        Ok(Discarded {
            removed: remove_output(&inputs.dest, leftovers.dry_run)?,
            ..Discarded::default()
        })
    }

    fn input_files(&self) -> &'static [&'static str] {
        &["src"]
    }

    async fn run(&self, ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: Inputs = inputs::parse("decrypt", inputs)?;
        let started = Instant::now();
        let keys = self.services.keys().map_err(crypto_error)?;
        prepare_dir(&inputs.dest)?;
        let part = part_path(&inputs.dest);
        let threads = inputs
            .threads
            .map_or_else(available_threads, |t| t.clamp(1, 64) as usize);
        let head = head_of(&inputs.src)?;
        match Format::detect(&head) {
            Format::Chunked => {
                let file = File::open(&inputs.src).map_err(|e| {
                    ActivityError::retryable(format!("cannot read {}: {e}", inputs.src.display()))
                })?;
                let opened = chunked::open(&file, &keys).map_err(crypto_error)?;
                let plaintext_sha256 = hex::encode(opened.index.plaintext_sha256);
                let compression = if inputs.decompress {
                    Compression::None
                } else {
                    opened.header.compression
                };
                if inputs.decompress
                    && inputs.stream
                    && let Some(blocks) = inputs.data_blocks.as_deref()
                {
                    let planned = tokio::task::block_in_place(|| {
                        plan_streamed(&file, &opened, &keys, blocks, &inputs.src, &inputs.dest)
                    })?;
                    if let Some(tables) = planned {
                        return Ok(json!({
                            "path": inputs.dest, "size": opened.index.plaintext_size, "format": Format::Chunked,
                            "compression": Compression::None, "key_id": opened.trailer.key_id,
                            "plaintext_sha256": plaintext_sha256, "seconds": started.elapsed().as_secs_f64(),
                            "reused": false, "split_tables": 0, "table_parts": 0, "unflushed_in_boot": "",
                            "streamed": true, "streamed_tables": tables,
                        }));
                    }
                }
                if inputs.dest.is_dir() {
                    // A streamed archive of an earlier attempt.
                    let _ = std::fs::remove_dir_all(&inputs.dest);
                }
                if inputs.decompress && inputs.parallel_restore {
                    let total_plain = opened.index.plaintext_size;
                    let total_chunks = opened.index.entries.len() as u64;
                    let part_bytes = inputs
                        .part_size
                        .unwrap_or_else(|| archive_layout::part_size_for(total_plain));
                    let decoded = tokio::task::block_in_place(|| {
                        decode_for_restore(
                            &file,
                            &opened,
                            &keys,
                            &part,
                            part_bytes,
                            threads,
                            |chunks, plain| {
                                report_progress(ctx, chunks, plain, total_plain, total_chunks)
                            },
                        )
                    });
                    let (size, split_tables, table_parts) = match decoded {
                        Ok(done) => done,
                        Err(_) if ctx.cancellation().is_cancelled() => {
                            discard(&part);
                            return Err(ActivityError::cancelled("decryption stopped"));
                        }
                        Err(e) => {
                            discard(&part);
                            return Err(e);
                        }
                    };
                    // Without a boot id to detect a restart by, flush as every other output.
                    let boot = boot_id();
                    match boot {
                        Some(_) => commit_unflushed(&part, &inputs.dest)?,
                        None => commit(&part, &inputs.dest)?,
                    }
                    return Ok(json!({
                        "path": inputs.dest, "size": size, "format": Format::Chunked,
                        "compression": Compression::None, "key_id": opened.trailer.key_id,
                        "plaintext_sha256": plaintext_sha256, "seconds": started.elapsed().as_secs_f64(),
                        "reused": false, "split_tables": split_tables, "table_parts": table_parts,
                        "unflushed_in_boot": boot.unwrap_or_default(),
                        "streamed": false,
                        "results": not_streamed(&inputs),
                    }));
                }
                // Idempotent: plaintext already in place and matching the index is reused.
                if inputs.decompress
                    && std::fs::metadata(&inputs.dest)
                        .is_ok_and(|m| m.len() == opened.index.plaintext_size)
                    && sha256_file(&inputs.dest).is_ok_and(|h| h == plaintext_sha256)
                {
                    return Ok(json!({
                        "path": inputs.dest, "size": opened.index.plaintext_size, "format": Format::Chunked,
                        "compression": compression, "key_id": opened.trailer.key_id,
                        "plaintext_sha256": plaintext_sha256, "seconds": started.elapsed().as_secs_f64(),
                        "reused": true, "split_tables": 0, "table_parts": 0, "unflushed_in_boot": "",
                        "streamed": false,
                    }));
                }
                let src_size = opened.file_size;
                let (from_chunk, written_before) = match ctx.last_checkpoint::<Checkpoint>() {
                    Some(cp)
                        if cp.src_size == src_size
                            && cp.decompress == inputs.decompress
                            && std::fs::metadata(&part).is_ok_and(|m| m.len() >= cp.written) =>
                    {
                        tracing::info!(chunk = cp.chunks, "resuming decryption");
                        (cp.chunks, cp.written)
                    }
                    _ => (0, 0),
                };
                let total_plain = opened.index.plaintext_size;
                let total_chunks = opened.index.entries.len() as u64;
                let decompress = inputs.decompress;
                let part_ref = &part;
                let written = tokio::task::block_in_place(|| {
                    let runtime = tokio::runtime::Handle::current();
                    let mut last_checkpoint = from_chunk;
                    decode_chunked(
                        &file,
                        &opened,
                        &keys,
                        part_ref,
                        from_chunk,
                        written_before,
                        decompress,
                        threads,
                        |chunks, plain, _written| {
                            report_progress(ctx, chunks, plain, total_plain, total_chunks)
                        },
                        |writer: &WriterRef<'_>, chunks: u64, written: u64| {
                            if chunks < last_checkpoint + CHECKPOINT_CHUNKS {
                                return Ok(());
                            }
                            writer.sync().map_err(|e| {
                                CryptoError::Io(format!("cannot flush {}: {e}", part_ref.display()))
                            })?;
                            runtime
                                .block_on(ctx.checkpoint(&Checkpoint {
                                    src_size,
                                    decompress,
                                    chunks,
                                    written,
                                }))
                                .map_err(|e| CryptoError::Io(e.message))?;
                            last_checkpoint = chunks;
                            Ok(())
                        },
                    )
                });
                let written = match written {
                    Ok(w) => w,
                    Err(_) if ctx.cancellation().is_cancelled() => {
                        return Err(ActivityError::cancelled("decryption stopped"));
                    }
                    Err(e) => {
                        if !matches!(e, CryptoError::Io(_)) {
                            discard(&part);
                        }
                        return Err(crypto_error(e));
                    }
                };
                commit(&part, &inputs.dest)?;
                Ok(json!({
                    "path": inputs.dest, "size": written, "format": Format::Chunked,
                    "compression": compression, "key_id": opened.trailer.key_id,
                    "plaintext_sha256": plaintext_sha256, "seconds": started.elapsed().as_secs_f64(),
                    "reused": false, "split_tables": 0, "table_parts": 0, "unflushed_in_boot": "",
                    "streamed": false,
                }))
            }
            Format::LegacyFernet => {
                let (src, dest_part, decompress) =
                    (inputs.src.clone(), part.clone(), inputs.decompress);
                let result = tokio::task::spawn_blocking(move || {
                    decrypt_legacy(&src, &dest_part, &keys, decompress)
                })
                .await
                .map_err(|e| ActivityError::retryable(format!("decryption task failed: {e}")))?;
                let (written, key_id, compression) = match result {
                    Ok(done) => done,
                    Err(e) => {
                        discard(&part);
                        return Err(crypto_error(e));
                    }
                };
                commit(&part, &inputs.dest)?;
                Ok(json!({
                    "path": inputs.dest, "size": written, "format": Format::LegacyFernet,
                    "compression": if decompress { Compression::None } else { compression },
                    "key_id": key_id, "plaintext_sha256": null,
                    "seconds": started.elapsed().as_secs_f64(), "reused": false, "split_tables": 0, "table_parts": 0, "unflushed_in_boot": "",
                    "streamed": false,
                }))
            }
            Format::Raw => Err(ActivityError::permanent(format!(
                "{} is neither a Lazarus chunked file nor a Fernet token; is it already decrypted?",
                inputs.src.display()
            ))),
        }
    }
}

/// Why a restore that asked to stream writes the archive out instead (reported, never
/// silent); empty when it did not ask.
fn not_streamed(inputs: &Inputs) -> Value {
    if inputs.decompress && inputs.stream && inputs.data_blocks.is_none() {
        json!({ "streaming": "not streamed: the backup's manifest has no data blocks (large objects, or a pg_dump archive format the Lazarus that took it could not index), so the archive was written out whole first" })
    } else {
        json!({})
    }
}
