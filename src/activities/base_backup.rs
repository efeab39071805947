//! `base_backup`: `pg_basebackup` (tar, to stdout) streamed straight into the chunked format,
//! with a manifest that places it in the WAL: start/stop LSN, timeline, start/stop time,
//! server version and system identifier. WAL is not copied into it: the archive (`lazarus
//! wal push`) holds it, and pg_basebackup waits until the segments the backup needs are
//! archived before it reports success.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::dump::{pg_failure, stream_to_chunked};
use super::files::{commit, discard, part_path, prepare_dir};
use super::inputs;
use super::services::Services;
use crate::catalog::{MANIFEST_VERSION, Manifest, PhysicalInfo, backup_key, new_backup_id, status};
use crate::engine::{Activity, ActivityContext, ActivityError, ActivitySpec, InputSpec};
use crate::pg::PgError;
use crate::pg::archiver::{ArchiverStats, ArchiverWatch};
use crate::pg::sql::Sql;
use crate::pg::untar::TarTail;

static SPEC: ActivitySpec = ActivitySpec {
    name: "base_backup",
    summary: "pg_basebackup into an encrypted, zstd-compressed tar, placed in the WAL archive's timeline",
    inputs: &[
        InputSpec {
            name: "archive",
            required: true,
            help: "the WAL archive of this cluster (as in `lazarus wal push --archive`)",
        },
        InputSpec {
            name: "dest",
            required: true,
            help: "local backup file to write",
        },
        InputSpec {
            name: "id",
            required: false,
            help: "backup id (default ARCHIVE-base-YYYYMMDDTHHMMSSZ)",
        },
        InputSpec {
            name: "archive_wait",
            required: false,
            help: "how long the server's archiver may keep failing, archiving nothing, before the backup gives up (default 2m)",
        },
    ],
    outputs: &["id", "path", "key", "size", "sha256", "manifest", "seconds"],
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inputs {
    archive: String,
    dest: PathBuf,
    id: Option<String>,
    archive_wait: Option<String>,
}

/// The `base_backup` activity.
pub struct BaseBackup {
    services: Arc<Services>,
}

impl BaseBackup {
    /// The activity over these services.
    pub fn new(services: Arc<Services>) -> Self {
        Self { services }
    }
}

/// The timeline and start/end LSNs of a base backup, from the `WAL-Ranges` at the end of
/// the `backup_manifest` pg_basebackup puts in its tar stream.
fn wal_range(manifest_tail: &[u8]) -> Option<(String, u32, String)> {
    let text = String::from_utf8_lossy(manifest_tail);
    let ranges = text.split("\"WAL-Ranges\"").nth(1)?;
    let open = ranges.find('[')?;
    let close = ranges.find(']')?;
    let list: Vec<Value> = serde_json::from_str(ranges.get(open..=close)?).ok()?;
    let first = list.first()?;
    let last = list.last()?;
    Some((
        first["Start-LSN"].as_str()?.to_string(),
        u32::try_from(last["Timeline"].as_u64()?).ok()?,
        last["End-LSN"].as_str()?.to_string(),
    ))
}

#[async_trait]
impl Activity for BaseBackup {
    fn spec(&self) -> &'static ActivitySpec {
        &SPEC
    }

    async fn discard(
        &self,
        _ctx: &ActivityContext,
        leftovers: crate::engine::Leftovers,
    ) -> Result<crate::engine::Discarded, ActivityError> {
        let inputs: Inputs = inputs::parse("base_backup", leftovers.inputs)?;
        Ok(crate::engine::Discarded {
            removed: super::files::remove_output(&inputs.dest, leftovers.dry_run)?,
            ..Default::default()
        })
    }

    async fn run(&self, ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: Inputs = inputs::parse("base_backup", inputs)?;
        let started = Instant::now();
        let keys = self
            .services
            .keys()
            .map_err(|e| ActivityError::permanent(e.to_string()))?;
        let key = keys
            .primary()
            .map_err(|e| ActivityError::permanent(e.to_string()))?
            .clone();
        let tools = &self.services.pg_tools;
        let server = &self.services.pg_server;
        let sql = Sql::new(tools, server);
        let created = chrono::Utc::now();
        let facts = tokio::task::block_in_place(|| {
            let one = |q: &str| -> Result<String, PgError> {
                Ok(sql.scalar("postgres", q)?.unwrap_or_default())
            };
            Ok::<_, PgError>((
                one("SHOW server_version")?,
                one("SELECT system_identifier FROM pg_control_system()")?,
                one("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")?,
                one("SHOW archive_mode")?,
            ))
        })
        .map_err(pg_failure)?;
        let (version, system_id, segment_size, archive_mode) = facts;
        if archive_mode == "off" {
            return Err(ActivityError::permanent(
                "archive_mode is off on this server: a base backup is only useful with its WAL archived \
                 (set archive_mode = on and archive_command = 'lazarus wal push %p', then restart)",
            ));
        }
        // Run as root, with the server as postgres: the WAL folders of local stores must be
        // the server's to write, or its `wal push` fails and pg_basebackup waits.
        let unreachable = if crate::pg::running_as_root() {
            let (uid, gid) = crate::pg::cluster::postgres_ids().map_err(pg_failure)?;
            let prepared = crate::wal::archive::prepare_local_folders(
                &self.services.stores,
                &inputs.archive,
                uid.as_raw(),
                gid.as_raw(),
            )
            .map_err(ActivityError::retryable)?;
            prepared.unreachable
        } else {
            Vec::new()
        };
        let segment_size: u64 = segment_size
            .parse()
            .unwrap_or(crate::wal::names::DEFAULT_SEGMENT_SIZE);
        let id = inputs
            .id
            .clone()
            .unwrap_or_else(|| new_backup_id(&format!("{}-base", inputs.archive), created));
        prepare_dir(&inputs.dest)?;
        let part = part_path(&inputs.dest);
        // pg_basebackup of the server's major version (a newer one works too).
        let pg_basebackup = match crate::pg::versions::major_of_server_version(&version) {
            Some(major) => tools.for_major(major, format!("the server is PostgreSQL {major}")),
            None => tools.clone(),
        }
        .path("pg_basebackup")
        .map_err(pg_failure)?;
        let label = format!("lazarus {id}");
        let patience = match inputs.archive_wait.as_deref().filter(|w| !w.is_empty()) {
            Some(text) => crate::engine::duration::parse_duration(text)
                .map_err(|e| ActivityError::refused(format!("archive_wait: {e}")))?,
            None => Duration::from_secs(120),
        };
        let mut archiver = ArchiverWatch::new(patience);
        let mut last_look = Instant::now();
        let mut watch = || {
            if last_look.elapsed() < Duration::from_secs(2) {
                return None;
            }
            last_look = Instant::now();
            let stats = ArchiverStats::read(&sql).ok()?;
            let why = archiver.observe(stats, Instant::now())?;
            // What this host can see of the cause.
            Some(
                std::iter::once(why)
                    .chain(unreachable.iter().cloned())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        };
        let outcome = tokio::task::block_in_place(|| {
            // The WAL range is at the end of the backup_manifest in the stream itself.
            let mut tar = TarTail::new(&["backup_manifest"], 64 << 10);
            let (summary, stderr) = stream_to_chunked(
                ctx,
                &pg_basebackup,
                &[
                    "-D",
                    "-",
                    "-Ft",
                    "-X",
                    "none",
                    "-c",
                    "fast",
                    "-v",
                    "-l",
                    label.as_str(),
                ],
                server,
                &part,
                &key,
                "pg_basebackup → zstd → encrypted",
                &mut |bytes| tar.feed(bytes),
                &mut watch,
            )?;
            Ok::<_, String>((
                summary,
                wal_range(tar.tail("backup_manifest")),
                String::from_utf8_lossy(&stderr).to_string(),
            ))
        });
        let (summary, range, report) = match outcome {
            Ok(done) => done,
            Err(message) => {
                discard(&part);
                return Err(if ctx.cancellation().is_cancelled() {
                    ActivityError::cancelled(message)
                } else {
                    ActivityError::retryable(message)
                });
            }
        };
        let finished = chrono::Utc::now();
        let Some((start_lsn, timeline, stop_lsn)) = range else {
            discard(&part);
            return Err(ActivityError::retryable(format!(
                "pg_basebackup's stream held no backup_manifest with WAL-Ranges (is the server older than PostgreSQL 13?): {}",
                report.trim()
            )));
        };
        commit(&part, &inputs.dest)?;
        let object_key = backup_key(&inputs.archive, &id, ".tar.lzr");
        let at = |t: chrono::DateTime<chrono::Utc>| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        };
        let manifest = Manifest {
            manifest_version: MANIFEST_VERSION,
            id: id.clone(),
            kind: "physical".into(),
            database: inputs.archive.clone(),
            server_version: version,
            created_at: at(created),
            finished_at: at(finished),
            key: object_key.clone(),
            size: summary.encoded_size,
            sha256: summary.encoded_sha256.clone(),
            plaintext_size: Some(summary.plaintext_size),
            plaintext_sha256: Some(summary.plaintext_sha256.clone()),
            format: "chunked".into(),
            compression: "zstd".into(),
            key_id: Some(summary.key_id.clone()),
            tables: Vec::new(),
            // A physical backup is checked by replaying it (a PITR drill); until then it is
            // as good as pg_basebackup's exit status.
            status: status::UNVERIFIED.into(),
            verification: None,
            copies: Vec::new(),
            missing_copies: Vec::new(),
            physical: Some(PhysicalInfo {
                archive: inputs.archive.clone(),
                timeline,
                start_lsn,
                stop_lsn,
                start_time: at(created),
                stop_time: at(finished),
                system_id,
                segment_size,
            }),
            data_blocks: None,
        };
        Ok(json!({
            "id": id,
            "path": inputs.dest,
            "key": object_key,
            "size": summary.encoded_size,
            "sha256": summary.encoded_sha256,
            "manifest": manifest,
            "seconds": started.elapsed().as_secs_f64(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_wal_range_from_the_backup_manifest() {
        let tail = br#"{ "Path": "global/pg_control", "Size": 8192 }
],
"WAL-Ranges": [
{ "Timeline": 1, "Start-LSN": "2/CB000028", "End-LSN": "2/CB000100" }
],
"Manifest-Checksum": "85fa"}"#;
        assert_eq!(
            wal_range(tail),
            Some(("2/CB000028".into(), 1, "2/CB000100".into()))
        );
        assert_eq!(wal_range(b"{}"), None);
    }
}
