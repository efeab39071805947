//! `dump`: `pg_dump -Fc -Z0` of a database streamed straight into the chunked format
//! (zstd does the compressing, and a dump without pg_dump's own zlib also restores faster),
//! with the draft manifest: server version, tables with row estimates, sizes, checksums.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::files::{commit, discard, part_path, prepare_dir};
use super::inputs;
use super::services::Services;
use super::supervise::Supervised;
use crate::catalog::{MANIFEST_VERSION, Manifest, TableInfo, backup_key, new_backup_id, status};
use crate::codec::Compression;
use crate::crypto::chunked::{self, EncodeOptions};
use crate::engine::{Activity, ActivityContext, ActivityError, ActivitySpec, InputSpec, Progress};
use crate::pg::conninfo::dbname_only;
use crate::pg::dump_blocks::BlockScanner;
use crate::pg::sql::Sql;
use crate::pg::{PgError, tail_lines};

static SPEC: ActivitySpec = ActivitySpec {
    name: "dump",
    summary: "pg_dump -Fc -Z0 a database into an encrypted, zstd-compressed backup file",
    inputs: &[
        InputSpec {
            name: "database",
            required: true,
            help: "database to dump",
        },
        InputSpec {
            name: "dest",
            required: true,
            help: "local backup file to write",
        },
        InputSpec {
            name: "id",
            required: false,
            help: "backup id (default DATABASE-YYYYMMDDTHHMMSSZ)",
        },
    ],
    outputs: &[
        "id",
        "path",
        "key",
        "size",
        "sha256",
        "plaintext_size",
        "manifest",
        "seconds",
        "results",
    ],
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inputs {
    database: String,
    dest: PathBuf,
    id: Option<String>,
}

/// The `dump` activity.
pub struct Dump {
    services: Arc<Services>,
}

impl Dump {
    /// The activity over these services.
    pub fn new(services: Arc<Services>) -> Self {
        Self { services }
    }
}

/// Maps a PostgreSQL tool failure to an activity error.
pub fn pg_failure(e: PgError) -> ActivityError {
    if e.is_missing_tool() {
        // The machine lacks the tool: the run halts, nothing is marked, `resume` finishes it.
        return ActivityError::environment(e.to_string());
    }
    ActivityError::retryable(e.to_string())
}

const TABLES: &str = "SELECT n.nspname, c.relname, c.reltuples::bigint FROM pg_class c \
    JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') \
    AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' \
    ORDER BY 1, 2";

/// Tables of a database with the planner's row estimates.
pub fn tables(sql: &Sql, database: &str) -> Result<Vec<TableInfo>, PgError> {
    Ok(sql
        .query(database, TABLES)?
        .into_iter()
        .filter(|row| row.len() == 3)
        .map(|row| TableInfo {
            schema: row[0].clone(),
            name: row[1].clone(),
            rows: row[2].parse().unwrap_or(-1),
        })
        .collect())
}

/// Counts bytes read, shows each byte to `tap`, and stops when the attempt is cancelled.
struct Watched<'a, R: Read> {
    inner: R,
    read: u64,
    reported: u64,
    ctx: &'a ActivityContext,
    message: &'a str,
    tap: &'a mut (dyn FnMut(&[u8]) + Send),
}

impl<R: Read> Read for Watched<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.ctx.cancellation().is_cancelled() {
            return Err(std::io::Error::other("stopped"));
        }
        let n = self.inner.read(buf)?;
        (self.tap)(&buf[..n]);
        self.read += n as u64;
        if self.read >= self.reported + (16 << 20) {
            self.reported = self.read;
            self.ctx.progress(Progress {
                done: self.read,
                total: None,
                unit: "bytes".into(),
                message: Some(self.message.to_string()),
            });
        }
        Ok(n)
    }
}

/// Runs a PostgreSQL tool that writes a backup to stdout (pg_dump, pg_basebackup) under the
/// supervisor and streams its output straight into the chunked format at `part`, showing
/// every byte to `tap` on the way. Returns the encoding summary and the tool's stderr.
/// A tool that waits without writing (pg_basebackup waiting for its WAL to be archived) is
/// still stopped within a second of the attempt's cancellation, or when `watch` (asked
/// every 250 ms) gives a reason.
#[allow(clippy::too_many_arguments)]
pub(crate) fn stream_to_chunked(
    ctx: &ActivityContext,
    program: &std::path::Path,
    args: &[&str],
    server: &crate::pg::Server,
    part: &std::path::Path,
    key: &crate::crypto::Key,
    message: &str,
    tap: &mut (dyn FnMut(&[u8]) + Send),
    watch: &mut (dyn FnMut() -> Option<String> + Send),
) -> Result<(chunked::EncodeSummary, Vec<u8>), String> {
    let tool = program
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut child = Supervised::spawn(program, args, |cmd| {
        server.apply(cmd);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    })
    .map_err(|e| format!("cannot start {tool}: {e}"))?;
    let stdout = child
        .child
        .stdout
        .take()
        .ok_or_else(|| format!("{tool} has no stdout"))?;
    let mut stderr = child
        .child
        .stderr
        .take()
        .ok_or_else(|| format!("{tool} has no stderr"))?;
    let errors = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });
    let out = File::create(part).map_err(|e| format!("cannot create {}: {e}", part.display()))?;
    let mut writer = BufWriter::with_capacity(4 << 20, out);
    let reader = Watched {
        inner: stdout,
        read: 0,
        reported: 0,
        ctx,
        message,
        tap,
    };
    let done = std::sync::atomic::AtomicBool::new(false);
    let stopped_for = std::sync::Mutex::new(None::<String>);
    let stopper = child.stopper();
    let (encoded, status) = std::thread::scope(|scope| {
        if let Some(mut stopper) = stopper {
            let (done, stopped_for) = (&done, &stopped_for);
            scope.spawn(move || {
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    let why = if ctx.cancellation().is_cancelled() {
                        Some("stopped".to_string())
                    } else {
                        watch()
                    };
                    if let Some(why) = why {
                        if let Ok(mut slot) = stopped_for.lock() {
                            *slot = Some(why);
                        }
                        stopper.stop();
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            });
        }
        let encoded = chunked::encode(reader, &mut writer, key, EncodeOptions::default());
        if encoded.is_err() {
            child.stop(Duration::from_secs(5));
        }
        let status = child.wait();
        done.store(true, std::sync::atomic::Ordering::Release);
        (encoded, status)
    });
    let status = status.map_err(|e| format!("waiting for {tool}: {e}"))?;
    let stderr = errors.join().unwrap_or_default();
    if let Some(why) = stopped_for.lock().ok().and_then(|mut s| s.take()) {
        return Err(format!("{tool} was stopped: {why}"));
    }
    if !status.success() {
        return Err(format!(
            "{tool} failed ({status}): {}",
            tail_lines(&stderr, 4)
        ));
    }
    let summary = encoded.map_err(|e| e.to_string())?;
    writer
        .flush()
        .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
    Ok((summary, stderr))
}

#[async_trait]
impl Activity for Dump {
    fn spec(&self) -> &'static ActivitySpec {
        &SPEC
    }

    async fn discard(
        &self,
        _ctx: &ActivityContext,
        leftovers: crate::engine::Leftovers,
    ) -> Result<crate::engine::Discarded, ActivityError> {
        let inputs: Inputs = inputs::parse("dump", leftovers.inputs)?;
        Ok(crate::engine::Discarded {
            removed: super::files::remove_output(&inputs.dest, leftovers.dry_run)?,
            ..Default::default()
        })
    }

    async fn run(&self, ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: Inputs = inputs::parse("dump", inputs)?;
        let started = Instant::now();
        let keys = self
            .services
            .keys()
            .map_err(|e| ActivityError::permanent(e.to_string()))?;
        let key = keys
            .primary()
            .map_err(|e| ActivityError::permanent(e.to_string()))?
            .clone();
        let server = &self.services.pg_server;
        let sql = Sql::new(&self.services.pg_tools, server);
        let created = chrono::Utc::now();
        let (version, tables, tools) = tokio::task::block_in_place(|| {
            let version = sql
                .scalar(&inputs.database, "SHOW server_version")?
                .unwrap_or_default();
            // pg_dump of the server's major version (a newer one works too; an older one
            // refuses the server).
            let tools = self
                .services
                .pg_tools
                .for_server(server, &inputs.database)?;
            Ok::<_, PgError>((version, tables(&sql, &inputs.database)?, tools))
        })
        .map_err(pg_failure)?;
        let tools = &tools;
        let id = inputs
            .id
            .clone()
            .unwrap_or_else(|| new_backup_id(&inputs.database, created));
        prepare_dir(&inputs.dest)?;
        let part = part_path(&inputs.dest);
        let pg_dump = tools.path("pg_dump").map_err(pg_failure)?;
        let mut scanner = BlockScanner::new();
        let outcome = tokio::task::block_in_place(|| {
            stream_to_chunked(
                ctx,
                &pg_dump,
                &["-Fc", "-Z0", "--dbname", &dbname_only(&inputs.database)],
                server,
                &part,
                &key,
                "pg_dump → zstd → encrypted",
                &mut |bytes| scanner.feed(bytes),
                &mut || None,
            )
            .map(|(summary, _)| summary)
            .map_err(|e| format!("{e} (dump of {})", inputs.database))
        });
        let summary = match outcome {
            Ok(summary) => summary,
            Err(message) => {
                discard(&part);
                return Err(if ctx.cancellation().is_cancelled() {
                    ActivityError::cancelled(message)
                } else {
                    ActivityError::retryable(message)
                });
            }
        };
        if summary.plaintext_size == 0 {
            discard(&part);
            return Err(ActivityError::retryable(format!(
                "pg_dump of {} produced nothing",
                inputs.database
            )));
        }
        commit(&part, &inputs.dest)?;
        let object_key = backup_key(&inputs.database, &id, ".dump.lzr");
        let manifest = Manifest {
            manifest_version: MANIFEST_VERSION,
            id: id.clone(),
            kind: "logical".into(),
            database: inputs.database.clone(),
            server_version: version,
            created_at: created.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            key: object_key.clone(),
            size: summary.encoded_size,
            sha256: summary.encoded_sha256.clone(),
            plaintext_size: Some(summary.plaintext_size),
            plaintext_sha256: Some(summary.plaintext_sha256.clone()),
            format: "chunked".into(),
            compression: serde_json::to_value(Compression::Zstd)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_else(|| "zstd".into()),
            key_id: Some(summary.key_id.clone()),
            tables,
            status: status::UNVERIFIED.into(),
            verification: None,
            copies: Vec::new(),
            missing_copies: Vec::new(),
            physical: None,
            data_blocks: scanner.finish(),
        };
        // A backup that cannot be streamed at restore says so now, not only when it is
        // restored more slowly.
        let results = if manifest.data_blocks.is_none() {
            json!({ "streaming": "this backup will be restored written out, not streamed: its archive could not be indexed (large objects, or a pg_dump archive format this version of Lazarus does not read)" })
        } else {
            json!({})
        };
        Ok(json!({
            "results": results,
            "id": id,
            "path": inputs.dest,
            "key": object_key,
            "size": summary.encoded_size,
            "sha256": summary.encoded_sha256,
            "plaintext_size": summary.plaintext_size,
            "manifest": manifest,
            "seconds": started.elapsed().as_secs_f64(),
        }))
    }
}
