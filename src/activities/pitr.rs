//! Point-in-time recovery's activities: `pitr_plan` (the plan, proven before anything
//! moves), `unpack_base_backup` (decrypt → decompress → untar straight into a new data
//! directory, pg_control last) and `start_recovery` (recovery settings, start on a new port,
//! wait for the target and promotion).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::dump::pg_failure;
use super::files::remove_leftover;
use super::inputs::{self, lenient_bool, lenient_u64};
use super::services::Services;
use crate::crypto::chunked;
use crate::engine::{
    Activity, ActivityContext, ActivityError, ActivitySpec, Discarded, InputSpec, Leftovers,
    Progress,
};
use crate::pg::cluster::{Cluster, postgres_ids};
use crate::pg::untar::Untar;
use crate::pg::{Server, tail_lines};
use crate::pg::{reach, running_as_root};
use crate::wal::plan::{self, TimelineChoice};
use crate::wal::presence;
use crate::wal::restore_config::{RestoreConfig, check_fetch};
use crate::wal::targets::{Target, plan_target};

// ---------------------------------------------------------------------------------------
// pitr_plan

static PLAN_SPEC: ActivitySpec = ActivitySpec {
    name: "pitr_plan",
    summary: "the base backup and gap-free WAL chain for a target time, before anything is downloaded",
    inputs: &[
        InputSpec {
            name: "archive",
            required: true,
            help: "the WAL archive",
        },
        InputSpec {
            name: "to",
            required: true,
            help: "target time: RFC 3339 or PostgreSQL's timestamptz text",
        },
        InputSpec {
            name: "timeline",
            required: false,
            help: "\"latest\" (default) or a timeline number",
        },
    ],
    outputs: &[
        "plan",
        "pg_major",
        "backup_id",
        "key",
        "size",
        "sha256",
        "backup_finished_at",
        "target",
        "target_kind",
        "target_time",
        "timeline",
        "segments",
        "stop_lsn",
        "first_segment",
        "segments_in_stores",
        "thin_copies",
    ],
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanInputs {
    archive: String,
    to: String,
    #[serde(default)]
    timeline: Option<String>,
}

/// The `pitr_plan` activity.
pub struct PitrPlan {
    services: Arc<Services>,
}

impl PitrPlan {
    /// The activity over these services.
    pub fn new(services: Arc<Services>) -> Self {
        Self { services }
    }
}

#[async_trait]
impl Activity for PitrPlan {
    fn spec(&self) -> &'static ActivitySpec {
        &PLAN_SPEC
    }

    async fn run(&self, _ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: PlanInputs = inputs::parse("pitr_plan", inputs)?;
        let target = Target::parse(&inputs.to).map_err(ActivityError::refused)?;
        let choice = match inputs.timeline.as_deref().map(str::trim) {
            None | Some("") | Some("latest") => TimelineChoice::Latest,
            Some(n) => TimelineChoice::Exactly(n.parse().map_err(|_| {
                ActivityError::permanent(format!("timeline {n:?} is not \"latest\" or a number"))
            })?),
        };
        let catalog = self.services.wal_catalog()?;
        if let Err(e) = catalog.sync(&self.services.stores, &inputs.archive).await {
            tracing::warn!(error = %e, "could not refresh the WAL catalog; planning from it as it is");
        }
        let manifests = self
            .services
            .catalog()?
            .list_or_sync(&self.services.stores, None)
            .await
            .map_err(|e| ActivityError::retryable(e.to_string()))?;
        let backups = plan::base_backups(&manifests, &inputs.archive);
        let plan =
            plan_target(catalog, &inputs.archive, &target, choice, &backups).map_err(|e| {
                match e {
                    plan::PlanError::Catalog(_) => ActivityError::retryable(e.to_string()),
                    // A target the archive cannot reach is the run's own input.
                    _ => ActivityError::refused(e.to_string()),
                }
            })?;
        // The plan is a promise made before anything is downloaded: prove its segments are
        // in the stores, not only in the index.
        let parts: Vec<(u32, u64, u64)> = plan
            .chain
            .iter()
            .map(|c| (c.timeline, c.first_segno, c.last_segno))
            .collect();
        let presence = presence::check(
            &self.services.stores,
            &inputs.archive,
            &parts,
            plan.backup.segment_size,
        )
        .await;
        if !presence.missing.is_empty() {
            let message = format!(
                "the plan needs WAL segments that no store holds: {} (in the index, but gone from the stores); `lazarus wal check` shows what the stores hold — pick an earlier target or a newer base backup{}",
                presence.describe_missing(),
                if presence.unreadable.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; some stores could not be listed ({}), and may hold them once they can: `lazarus resume` tries again",
                        presence.unreadable.join("; ")
                    )
                }
            );
            return Err(if presence.unreadable.is_empty() {
                ActivityError::refused(message)
            } else {
                ActivityError::retryable(message)
            });
        }
        let manifest = manifests
            .iter()
            .find(|m| m.id == plan.backup.id)
            .ok_or_else(|| {
                ActivityError::permanent("the planned backup vanished from the catalog")
            })?;
        // The restored server runs the base backup's major version: without its pg_ctl
        // here, nothing is downloaded (the run halts until it is installed).
        let major = crate::pg::versions::major_of_server_version(&manifest.server_version);
        if let Some(major) = major {
            let tools = self.services.pg_tools.clone();
            tokio::task::block_in_place(|| {
                tools.for_major(
                    major,
                    format!(
                        "the base backup {} is of PostgreSQL {major}, and so is the server restored from it",
                        manifest.id
                    ),
                )
                .path("pg_ctl")
            })
            .map_err(|e| ActivityError::environment(e.to_string()))?;
        }
        Ok(json!({
            "pg_major": major,
            "plan": plan,
            "backup_id": manifest.id,
            "key": manifest.key,
            "size": manifest.size,
            "sha256": manifest.sha256,
            "backup_finished_at": manifest.finished_at,
            "target": plan.target,
            "target_kind": plan.target_kind,
            "target_time": plan.target_time,
            "timeline": plan.timeline,
            "segments": plan.segments,
            "stop_lsn": plan.stop_lsn.clone().unwrap_or_default(),
            "first_segment": plan.chain.first().map(|c| c.first_file.clone()).unwrap_or_default(),
            "segments_in_stores": presence.checked,
            "thin_copies": presence.thin.iter().map(|(store, n)| format!("{store} lacks {n} of them")).collect::<Vec<_>>(),
        }))
    }
}

// ---------------------------------------------------------------------------------------
// unpack_base_backup

static UNPACK_SPEC: ActivitySpec = ActivitySpec {
    name: "unpack_base_backup",
    summary: "decrypt, decompress and untar a base backup into a new data directory (pg_control last)",
    inputs: &[
        InputSpec {
            name: "src",
            required: true,
            help: "the downloaded backup (chunked format)",
        },
        InputSpec {
            name: "data_dir",
            required: true,
            help: "new data directory (must not hold a cluster Lazarus did not unpack); empty: default_dir",
        },
        InputSpec {
            name: "default_dir",
            required: false,
            help: "the data directory when data_dir is empty",
        },
        InputSpec {
            name: "workdir",
            required: false,
            help: "the run's work directory: when the default data directory lies in it, the server's user is let through it (and through the state directory holding it) with traverse-only permission",
        },
    ],
    outputs: &[
        "data_directory",
        "files",
        "bytes",
        "seconds",
        "granted_traverse",
    ],
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnpackInputs {
    src: PathBuf,
    data_dir: PathBuf,
    #[serde(default)]
    default_dir: Option<PathBuf>,
    #[serde(default)]
    workdir: Option<PathBuf>,
}

/// Marks a directory as Lazarus's unpack in progress (safe to wipe on a retry).
const UNPACK_MARKER: &str = ".lazarus-unpacking";

/// The `unpack_base_backup` activity.
pub struct UnpackBaseBackup {
    services: Arc<Services>,
}

impl UnpackBaseBackup {
    /// The activity over these services.
    pub fn new(services: Arc<Services>) -> Self {
        Self { services }
    }
}

#[async_trait]
impl Activity for UnpackBaseBackup {
    fn spec(&self) -> &'static ActivitySpec {
        &UNPACK_SPEC
    }

    async fn discard(
        &self,
        _ctx: &ActivityContext,
        leftovers: Leftovers,
    ) -> Result<Discarded, ActivityError> {
        let inputs: UnpackInputs = inputs::parse("unpack_base_backup", leftovers.inputs)?;
        let chosen = match (&inputs.data_dir, &inputs.default_dir) {
            (d, Some(default)) if d.as_os_str().is_empty() => default.clone(),
            (d, _) => d.clone(),
        };
        let mut done = Discarded::default();
        if chosen.as_os_str().is_empty() || !chosen.exists() {
            return Ok(done);
        }
        let dir = std::path::absolute(&chosen).unwrap_or(chosen);
        if leftovers.used {
            done.kept.push(format!(
                "data directory {}: traffic was cut over to the server on it, so it may hold writes made since",
                dir.display()
            ));
        } else if server_running(&self.services, &dir) {
            done.kept.push(format!(
                "data directory {}: a server still runs on it (stop it with pg_ctl -D {} stop, then run lazarus gc)",
                dir.display(),
                dir.display()
            ));
        } else {
            done.removed
                .extend(remove_leftover(&dir, leftovers.dry_run)?);
            done.removed.extend(remove_leftover(
                &dir.with_extension("log"),
                leftovers.dry_run,
            )?);
        }
        Ok(done)
    }

    fn input_files(&self) -> &'static [&'static str] {
        &["src"]
    }

    async fn run(&self, ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: UnpackInputs = inputs::parse("unpack_base_backup", inputs)?;
        let started = Instant::now();
        let chosen = match (&inputs.data_dir, &inputs.default_dir) {
            (d, Some(default)) if d.as_os_str().is_empty() => default.clone(),
            (d, _) => d.clone(),
        };
        if chosen.as_os_str().is_empty() {
            return Err(ActivityError::permanent(
                "no data directory given (data_dir)",
            ));
        }
        let dir = std::path::absolute(&chosen)
            .map_err(|e| ActivityError::permanent(format!("{}: {e}", chosen.display())))?;
        if dir.exists() {
            let empty = std::fs::read_dir(&dir)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
            if !empty && !dir.join(UNPACK_MARKER).exists() {
                return Err(ActivityError::permanent(format!(
                    "{} is not empty and was not unpacked by Lazarus: refusing to touch it; pick a new data_dir",
                    dir.display()
                )));
            }
            // A previous attempt stopped half-way: start again from nothing.
            std::fs::remove_dir_all(&dir).map_err(|e| {
                ActivityError::retryable(format!("cannot clear {}: {e}", dir.display()))
            })?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| {
            ActivityError::permanent(format!("cannot create {}: {e}", dir.display()))
        })?;
        std::fs::write(dir.join(UNPACK_MARKER), b"").map_err(|e| {
            ActivityError::permanent(format!("cannot write in {}: {e}", dir.display()))
        })?;
        let owner = if running_as_root() {
            Some(postgres_ids().map_err(pg_failure)?)
        } else {
            None
        };
        let granted = match (owner, &inputs.workdir) {
            (Some((uid, gid)), Some(work)) if inputs.data_dir.as_os_str().is_empty() => {
                let work = std::path::absolute(work).unwrap_or_else(|_| work.clone());
                // The state directory that holds the default work directory is Lazarus's.
                let within = match work.parent() {
                    Some(state) if state.join("owner.pid").exists() => state.to_path_buf(),
                    _ => work.clone(),
                };
                reach::grant_traverse(&dir, &within, uid.as_raw(), gid.as_raw())
                    .map_err(ActivityError::permanent)?
            }
            (Some((uid, gid)), _) => {
                let blocked = reach::blocked_ancestors(&dir, uid.as_raw(), gid.as_raw());
                if let Some(first) = blocked.first() {
                    return Err(ActivityError::permanent(format!(
                        "the server's user cannot reach {}: {} blocks it; pick a data_dir that user can reach (e.g. under /var/lib/postgresql)",
                        dir.display(),
                        first.display()
                    )));
                }
                Vec::new()
            }
            _ => Vec::new(),
        };
        let keys = self
            .services
            .keys()
            .map_err(|e| ActivityError::permanent(e.to_string()))?;
        let summary = tokio::task::block_in_place(|| -> Result<_, String> {
            let file = std::fs::File::open(&inputs.src)
                .map_err(|e| format!("cannot open {}: {e}", inputs.src.display()))?;
            let opened = chunked::open(&file, &keys).map_err(|e| e.to_string())?;
            let total = opened.index.plaintext_size;
            // The tar's size is the data directory's: refuse before writing a byte.
            let free = crate::size::free_bytes(&dir)
                .map_err(|e| format!("cannot check free space in {}: {e}", dir.display()))?;
            if free < total + (64 << 20) {
                return Err(format!(
                    "{NO_SPACE}: the base backup unpacks to {} and the filesystem holding the data directory {} has {} free; free space there and `lazarus resume`, or start again with -p data_dir=DIR on a larger disk",
                    crate::size::human_size(total),
                    dir.display(),
                    crate::size::human_size(free)
                ));
            }
            let untar = Untar::new(&dir)
                .map_err(|e| format!("cannot unpack into {}: {e}", dir.display()))?
                .with_owner(owner);
            let mut untar = untar;
            let mut last = Instant::now();
            chunked::decode(
                &file,
                &opened,
                &keys,
                0,
                true,
                crate::parallel::available_threads(),
                &mut untar,
                &mut |_, plain| {
                    if ctx.cancellation().is_cancelled() {
                        return Err(crate::crypto::CryptoError::Io("unpack stopped".into()));
                    }
                    if last.elapsed() > Duration::from_millis(500) {
                        last = Instant::now();
                        ctx.progress(Progress {
                            done: plain,
                            total: Some(total),
                            unit: "bytes".into(),
                            message: Some(format!("unpacking into {}", dir.display())),
                        });
                    }
                    Ok(())
                },
            )
            .map_err(|e| e.to_string())?;
            untar.finish().map_err(|e| e.to_string())
        });
        let summary = summary.map_err(|message| {
            if ctx.cancellation().is_cancelled() {
                return ActivityError::cancelled(message);
            }
            // A half-written data directory is of no use and holds the space that ran out:
            // it goes (it is Lazarus's own, marked), and the message says so.
            let cleared = std::fs::remove_dir_all(&dir).is_ok();
            let left = if cleared {
                format!("the partial data directory {} was removed", dir.display())
            } else {
                format!(
                    "the partial data directory {} is left; remove it",
                    dir.display()
                )
            };
            if message.starts_with(NO_SPACE) {
                ActivityError::retryable(format!("{message} ({left})"))
            } else {
                ActivityError::retryable(format!(
                    "unpacking {} into the data directory {} failed: {message} ({left})",
                    inputs.src.display(),
                    dir.display()
                ))
            }
        })?;
        let _ = std::fs::remove_file(dir.join(UNPACK_MARKER));
        Ok(json!({
            "data_directory": dir,
            "granted_traverse": granted,
            "files": summary.files,
            "bytes": summary.bytes,
            "seconds": started.elapsed().as_secs_f64(),
        }))
    }
}

// ---------------------------------------------------------------------------------------
// start_recovery

/// How a refusal for want of disk space starts.
const NO_SPACE: &str = "not enough disk space";

static START_SPEC: ActivitySpec = ActivitySpec {
    name: "start_recovery",
    summary: "recovery settings, start on a new port, wait until the target is reached and the server promoted",
    inputs: &[
        InputSpec {
            name: "data_dir",
            required: true,
            help: "the unpacked data directory",
        },
        InputSpec {
            name: "port",
            required: true,
            help: "port for the restored server (0: a free one)",
        },
        InputSpec {
            name: "target",
            required: true,
            help: "recovery_target_time (RFC 3339)",
        },
        InputSpec {
            name: "archive",
            required: true,
            help: "the WAL archive restore_command fetches from",
        },
        InputSpec {
            name: "timeline",
            required: false,
            help: "recovery_target_timeline: the plan's timeline by number (default latest)",
        },
        InputSpec {
            name: "inclusive",
            required: false,
            help: "recovery_target_inclusive (default true)",
        },
        InputSpec {
            name: "first_segment",
            required: false,
            help: "the plan's first segment: fetched once as the server's user before the server starts, to prove restore_command works",
        },
        InputSpec {
            name: "stop_lsn",
            required: false,
            help: "stop right after the record at this LSN instead (the plan's stop_lsn: the target is the last archived transaction end)",
        },
        InputSpec {
            name: "config",
            required: false,
            help: "lazarus.toml for restore_command (default: the one in force)",
        },
        InputSpec {
            name: "lazarus",
            required: false,
            help: "the lazarus binary restore_command runs (default: this one)",
        },
        InputSpec {
            name: "wait",
            required: false,
            help: "longest wait for promotion, seconds (default 86400)",
        },
        InputSpec {
            name: "archive_mode",
            required: false,
            help: "preserve (default: archive as the backed-up server did) or off",
        },
    ],
    outputs: &[
        "data_directory",
        "port",
        "timeline",
        "last_replayed_commit",
        "target",
        "seconds",
        "results",
        "kept",
        "restore_config_removed",
    ],
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartInputs {
    data_dir: PathBuf,
    #[serde(deserialize_with = "lenient_u64")]
    port: u64,
    target: String,
    archive: String,
    /// The plan's timeline by number (so PostgreSQL does not follow the newest history
    /// file, which may be an abandoned timeline's), or `latest`.
    #[serde(default, deserialize_with = "super::inputs::opt_text")]
    timeline: Option<String>,
    #[serde(default = "yes", deserialize_with = "lenient_bool")]
    inclusive: bool,
    #[serde(default)]
    stop_lsn: Option<String>,
    #[serde(default)]
    first_segment: Option<String>,
    #[serde(default)]
    config: Option<String>,
    #[serde(default)]
    lazarus: Option<String>,
    #[serde(default)]
    wait: Option<String>,
    #[serde(default)]
    archive_mode: Option<String>,
}

fn yes() -> bool {
    true
}

const SETTINGS_MARK: &str = "# lazarus pitr";

/// The `start_recovery` activity.
pub struct StartRecovery {
    services: Arc<Services>,
}

impl StartRecovery {
    /// The activity over these services.
    pub fn new(services: Arc<Services>) -> Self {
        Self { services }
    }

    /// The embedded default's stores and keys, written for the server's restore_command
    /// inside its data directory; the server's user is let through to the local stores in
    /// Lazarus's state directory (traverse only).
    fn write_restore_config(&self, data: &Path) -> Result<PathBuf, ActivityError> {
        let keys = self
            .services
            .keys()
            .map_err(|e| ActivityError::permanent(e.to_string()))?;
        let owner = if running_as_root() {
            let (uid, gid) = postgres_ids().map_err(pg_failure)?;
            Some((uid.as_raw(), gid.as_raw()))
        } else {
            None
        };
        if let Some((uid, gid)) = owner {
            for store in self.services.stores.stores() {
                let Some(root) = store.local_root() else {
                    continue;
                };
                let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
                std::fs::create_dir_all(&root).map_err(|e| {
                    ActivityError::retryable(format!("cannot create {}: {e}", root.display()))
                })?;
                let within = match root.parent() {
                    Some(state) if state.join("owner.pid").exists() => state.to_path_buf(),
                    _ => root.clone(),
                };
                reach::grant_traverse(&root, &within, uid, gid)
                    .map_err(ActivityError::permanent)?;
            }
        }
        let written = RestoreConfig::write(data, &self.services.stores, &keys, owner)
            .map_err(ActivityError::permanent)?;
        Ok(written.config)
    }
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Removes restore_command's state beside a data directory (its spool of decrypted WAL),
/// stopping a prefetcher that still writes into it first so it is not made again.
fn remove_fetch_state(
    fetch_state: &std::path::Path,
    dry_run: bool,
) -> Result<Option<String>, ActivityError> {
    if !dry_run {
        crate::wal::archive::spool::stop_prefetcher(&fetch_state.join("wal-spool"));
    }
    super::files::remove_leftover(fetch_state, dry_run)
        .map_err(|e| ActivityError::retryable(e.message))
}

fn server_running(services: &Services, data: &std::path::Path) -> bool {
    // Without a pg_ctl of the data directory's version, the postmaster.pid's process says.
    let Ok(cmd) = Cluster::server_command(&services.pg_tools.for_data_dir(data), "pg_ctl") else {
        return crate::pg::cluster::live_postmaster(data).is_some();
    };
    Some(cmd)
        .map(|mut cmd| {
            cmd.arg("-D")
                .arg(data)
                .arg("status")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

fn log_tail(path: &std::path::Path) -> String {
    std::fs::read(path)
        .map(|bytes| tail_lines(&bytes, 6))
        .unwrap_or_default()
}

#[async_trait]
impl Activity for StartRecovery {
    fn spec(&self) -> &'static ActivitySpec {
        &START_SPEC
    }

    async fn discard(
        &self,
        _ctx: &ActivityContext,
        leftovers: Leftovers,
    ) -> Result<Discarded, ActivityError> {
        let inputs: StartInputs = inputs::parse("start_recovery", leftovers.inputs)?;
        let mut done = Discarded::default();
        let data = std::path::absolute(&inputs.data_dir).unwrap_or(inputs.data_dir);
        if !data.exists() {
            return Ok(done);
        }
        let keys = data.join(crate::wal::restore_config::KEYS_NAME);
        if keys.exists() {
            if !leftovers.dry_run {
                RestoreConfig::remove(&data);
            }
            done.removed.push(format!("key file {}", keys.display()));
        }
        let port = leftovers
            .output
            .as_ref()
            .and_then(|o| o["port"].as_u64())
            .unwrap_or(inputs.port);
        // An interrupted start never said its port: name the server by its data directory.
        let server = if port == 0 {
            format!("the server of {}", data.display())
        } else {
            format!("the server on port {port} ({})", data.display())
        };
        // restore_command's own state beside the data directory (its spool of decrypted
        // WAL, which can be hundreds of MiB): of no use once the run has ended.
        let fetch_state = data.with_extension("lazarus-state");
        if !server_running(&self.services, &data) {
            done.removed
                .extend(remove_fetch_state(&fetch_state, leftovers.dry_run)?);
            return Ok(done);
        }
        if leftovers.used {
            done.kept
                .push(format!("{server}: traffic was cut over to it"));
            return Ok(done);
        }
        if !leftovers.dry_run {
            let stopped = tokio::task::block_in_place(|| {
                Cluster::server_command(&self.services.pg_tools.for_data_dir(&data), "pg_ctl").map(
                    |mut cmd| {
                        cmd.arg("-D")
                            .arg(&data)
                            .args(["-m", "fast", "-w", "stop"])
                            .stdin(std::process::Stdio::null())
                            .output()
                    },
                )
            })
            .map_err(pg_failure)?
            .map_err(|e| ActivityError::retryable(format!("cannot run pg_ctl: {e}")))?;
            if !stopped.status.success() {
                return Err(ActivityError::retryable(format!(
                    "cannot stop {server}: {}",
                    tail_lines(&stopped.stderr, 3)
                )));
            }
        }
        done.removed.push(format!("{server} (stopped)"));
        done.removed
            .extend(remove_fetch_state(&fetch_state, leftovers.dry_run)?);
        Ok(done)
    }

    fn input_files(&self) -> &'static [&'static str] {
        &["data_dir"]
    }

    async fn run(&self, ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: StartInputs = inputs::parse("start_recovery", inputs)?;
        let started = Instant::now();
        let data = inputs.data_dir.clone();
        if !data.join("global/pg_control").exists() {
            return Err(ActivityError::permanent(format!(
                "{} holds no complete data directory (no global/pg_control)",
                data.display()
            )));
        }
        let settings = data.join("postgresql.auto.conf");
        let log = data.with_extension("log");
        let existing = std::fs::read_to_string(&settings).unwrap_or_default();
        // The port is chosen once and kept in the settings, so a resumed run finds it.
        let recorded_port = existing
            .lines()
            .find(|l| l.ends_with(SETTINGS_MARK) && l.starts_with("port = "))
            .and_then(|l| {
                l["port = ".len()..]
                    .split_whitespace()
                    .next()?
                    .parse::<u16>()
                    .ok()
            });
        let port = match (recorded_port, inputs.port) {
            (Some(p), _) => p,
            (None, 0) => crate::pg::cluster::free_port().map_err(pg_failure)?,
            (None, p) => u16::try_from(p)
                .map_err(|_| ActivityError::permanent(format!("port {p} is not a port")))?,
        };
        let server = Server {
            host: Some("127.0.0.1".into()),
            port: Some(port),
            user: self.services.pg_server.user.clone(),
            password: self.services.pg_server.password.clone(),
        };
        let sql = crate::pg::sql::Sql::new(&self.services.pg_tools, &server);
        let promoted = |sql: &crate::pg::sql::Sql| -> Option<bool> {
            sql.scalar("postgres", "SELECT NOT pg_is_in_recovery()")
                .ok()
                .flatten()
                .map(|v| v == "t")
        };
        let running = tokio::task::block_in_place(|| server_running(&self.services, &data));
        if !running {
            let exe = match &inputs.lazarus {
                Some(path) if !path.is_empty() => path.clone(),
                _ => std::env::current_exe()
                    .map(|p| p.display().to_string())
                    .map_err(|e| {
                        ActivityError::permanent(format!("cannot find the lazarus binary: {e}"))
                    })?,
            };
            // restore_command runs as the server's user, in the server's environment: it
            // needs a configuration file it can read (the stores and keys of the archive).
            let config_file = match &inputs.config {
                Some(c) if !c.is_empty() => Some(PathBuf::from(c)),
                _ => self.services.config_file.clone(),
            };
            // On the embedded default the store and keys are this process's alone: write
            // the server a configuration of its own, inside its data directory.
            let config_file = match config_file {
                Some(file) => file,
                None => self.write_restore_config(&data)?,
            };
            if running_as_root() {
                for (path, test) in [
                    (config_file.display().to_string(), "-r"),
                    (exe.clone(), "-x"),
                ] {
                    let usable = std::process::Command::new("runuser")
                        .args(["-u", "postgres", "--", "test", test, &path])
                        .status()
                        .map(|s| s.success())
                        .unwrap_or(false);
                    if !usable {
                        return Err(ActivityError::permanent(format!(
                            "the server runs restore_command as the postgres user, who cannot {} {path}; \
                             fix its permissions (and its directories'), or pass -p config=/-p lazarus= paths it can reach",
                            if test == "-r" { "read" } else { "run" }
                        )));
                    }
                }
            }
            let config = format!(
                " --config {}",
                shell_word(&config_file.display().to_string())
            );
            let fetch_state = data.with_extension("lazarus-state");
            let restore_command = format!(
                "{} --state {}{config} wal fetch --prefetch 8 --archive {} %f %p",
                shell_word(&exe),
                shell_word(&fetch_state.display().to_string()),
                shell_word(&inputs.archive)
            );
            // restore_command's own state directory, the server's to write.
            std::fs::create_dir_all(&fetch_state).map_err(|e| {
                ActivityError::retryable(format!("cannot create {}: {e}", fetch_state.display()))
            })?;
            if running_as_root() {
                let (uid, gid) = postgres_ids().map_err(pg_failure)?;
                nix::unistd::chown(&fetch_state, Some(uid), Some(gid)).map_err(|e| {
                    ActivityError::retryable(format!(
                        "cannot give {} to the server's user: {e}",
                        fetch_state.display()
                    ))
                })?;
            }
            if let Some(first) = inputs.first_segment.as_deref().filter(|s| !s.is_empty()) {
                tokio::task::block_in_place(|| {
                    check_fetch(
                        &exe,
                        &config_file,
                        &fetch_state,
                        &inputs.archive,
                        first,
                        &data,
                    )
                })
                .map_err(ActivityError::permanent)?;
            }
            let timeline = inputs
                .timeline
                .clone()
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "latest".into());
            // Preserved archiving is held until the cut-over: a server restored for
            // inspection never writes into the archive the live primary uses.
            let archive_lines: Vec<String> = match inputs.archive_mode.as_deref().map(str::trim) {
                None | Some("") | Some("preserve") => crate::pg::archiving::hold_lines().to_vec(),
                Some("off") => vec![format!("archive_mode = off {SETTINGS_MARK}")],
                Some(other) => {
                    return Err(ActivityError::permanent(format!(
                        "archive_mode {other:?}: use preserve or off"
                    )));
                }
            };
            let mut text: String = existing
                .lines()
                .filter(|l| {
                    !l.ends_with(SETTINGS_MARK) && !l.ends_with(crate::pg::archiving::HOLD_MARK)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            let target = Target::parse(&inputs.target).map_err(ActivityError::permanent)?;
            let (target_line, inclusive) =
                match (&target, inputs.stop_lsn.as_deref().map(str::trim)) {
                    // The last archived transaction end has no later record to stop before:
                    // stop right after it, by its position. (Exclusive, the time target stops
                    // before that very record, which exists.)
                    (Target::Time(_), Some(lsn)) if !lsn.is_empty() && inputs.inclusive => {
                        (format!("recovery_target_lsn = {}", quote(lsn)), true)
                    }
                    (Target::Time(micros), _) => {
                        let target_pg = chrono::DateTime::from_timestamp_micros(*micros)
                            .map(|t| t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string())
                            .ok_or_else(|| ActivityError::permanent("target time out of range"))?;
                        (
                            format!("recovery_target_time = {}", quote(&target_pg)),
                            inputs.inclusive,
                        )
                    }
                    (other, _) => (
                        other.recovery_settings().unwrap_or_default(),
                        inputs.inclusive,
                    ),
                };
            for line in [
                format!("port = {port}"),
                format!("restore_command = {}", quote(&restore_command)),
                target_line,
                "recovery_target_action = 'promote'".to_string(),
                format!("recovery_target_timeline = {}", quote(&timeline)),
                format!("recovery_target_inclusive = {inclusive}"),
                "listen_addresses = '127.0.0.1'".to_string(),
            ] {
                text.push_str(&format!("{line} {SETTINGS_MARK}\n"));
            }
            for line in archive_lines {
                text.push_str(&format!("{line}\n"));
            }
            let write = || -> std::io::Result<()> {
                std::fs::write(&settings, &text)?;
                if !data.join("global/pg_control").exists() {
                    return Ok(());
                }
                // Only a server that has not promoted yet gets recovery.signal.
                if promoted_before(&data) {
                    return Ok(());
                }
                std::fs::write(data.join("recovery.signal"), b"")?;
                Ok(())
            };
            write().map_err(|e| {
                ActivityError::permanent(format!(
                    "cannot write the recovery settings into {}: {e}",
                    data.display()
                ))
            })?;
            if running_as_root() {
                for path in [settings.clone(), data.join("recovery.signal")] {
                    if path.exists() {
                        crate::pg::cluster::chown_to_postgres(&path).map_err(pg_failure)?;
                    }
                }
                std::fs::create_dir_all(&fetch_state).ok();
                crate::pg::cluster::chown_to_postgres(&fetch_state).map_err(pg_failure)?;
                if !log.exists() {
                    std::fs::write(&log, b"").ok();
                }
                crate::pg::cluster::chown_to_postgres(&log).map_err(pg_failure)?;
            }
            let socket_dir = data.clone();
            let status = tokio::task::block_in_place(|| {
                Cluster::server_command(&self.services.pg_tools.for_data_dir(&data), "pg_ctl").map(
                    |mut cmd| {
                        cmd.arg("-D")
                            .arg(&data)
                            .arg("-l")
                            .arg(&log)
                            .args(["-W", "-o"])
                            .arg(format!("-k {}", socket_dir.display()))
                            .arg("start")
                            .stdin(std::process::Stdio::null())
                            .output()
                    },
                )
            })
            .map_err(pg_failure)?
            .map_err(|e| ActivityError::retryable(format!("cannot run pg_ctl: {e}")))?;
            if !status.status.success() {
                return Err(ActivityError::retryable(format!(
                    "pg_ctl start failed: {}{}",
                    tail_lines(&status.stderr, 3),
                    log_tail(&log)
                )));
            }
        }
        // Wait for the target and the promotion; a server that stops says why in its log.
        let limit = inputs
            .wait
            .as_deref()
            .and_then(|w| w.parse::<u64>().ok())
            .unwrap_or(86_400);
        let mut last_progress = Instant::now();
        let waiting_since = Instant::now();
        let mut seen_running = running;
        loop {
            if ctx.cancellation().is_cancelled() {
                return Err(ActivityError::cancelled(format!(
                    "stopped waiting; the server on port {port} keeps replaying (resume to wait again)"
                )));
            }
            let state = tokio::task::block_in_place(|| promoted(&sql));
            if state == Some(true) {
                break;
            }
            let alive = state.is_some()
                || tokio::task::block_in_place(|| server_running(&self.services, &data));
            seen_running |= alive;
            let died = || {
                std::fs::read_to_string(&log)
                    .map(|t| t.contains("FATAL:") || t.contains("PANIC:"))
                    .unwrap_or(false)
            };
            if !alive
                && (seen_running || died() || waiting_since.elapsed() > Duration::from_secs(30))
            {
                // Give a stopping server a moment to log why.
                tokio::time::sleep(Duration::from_millis(300)).await;
                return Err(ActivityError::permanent(format!(
                    "the restored server on port {port} stopped during recovery: {}",
                    log_tail(&log)
                )));
            }
            if started.elapsed() > Duration::from_secs(limit) {
                return Err(ActivityError::retryable(format!(
                    "the server on port {port} has not reached the target after {limit}s"
                )));
            }
            if last_progress.elapsed() > Duration::from_secs(1) {
                last_progress = Instant::now();
                let replayed = tokio::task::block_in_place(|| {
                    sql.scalar("postgres", "SELECT pg_last_xact_replay_timestamp()")
                        .ok()
                        .flatten()
                });
                ctx.progress(Progress {
                    done: started.elapsed().as_secs(),
                    total: None,
                    unit: "seconds".into(),
                    message: Some(format!(
                        "replaying WAL on port {port}; last replayed commit {}",
                        replayed
                            .filter(|r| !r.is_empty())
                            .unwrap_or_else(|| "none yet".into())
                    )),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let facts = tokio::task::block_in_place(|| {
            let replayed = sql.scalar(
                "postgres",
                "SELECT to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            )?;
            let timeline = sql.scalar("postgres", "SELECT timeline_id FROM pg_control_checkpoint()")?;
            let current = sql.scalar(
                "postgres",
                "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int",
            )?;
            Ok::<_, crate::pg::PgError>((replayed, timeline, current))
        })
        .map_err(pg_failure)?;
        let (replayed, _checkpoint_timeline, timeline) = facts;
        // Promoted: a restart of this server must never be asked to recover again.
        let _ = std::fs::write(data.join(PROMOTED_MARKER), b"");
        let fetch_state = data.with_extension("lazarus-state");
        crate::wal::archive::spool::stop_prefetcher(&fetch_state.join("wal-spool"));
        let _ = std::fs::remove_dir_all(&fetch_state);
        // restore_command is done: the keys written for it go.
        let generated = RestoreConfig::existing(&data).is_some();
        let keys_removed = generated && RestoreConfig::remove(&data);
        Ok(json!({
            "data_directory": data,
            "port": port,
            "timeline": timeline.and_then(|t| t.parse::<u64>().ok()),
            "last_replayed_commit": replayed.filter(|r| !r.is_empty()),
            "target": inputs.target,
            "seconds": started.elapsed().as_secs_f64(),
            "results": { "data_directory": data, "port": port },
            // The restored server is what this run leaves, for inspection or for traffic.
            "kept": [data],
            "restore_config_removed": keys_removed,
        }))
    }
}

/// A server that already promoted has no recovery.signal and a history of its own; do not
/// ask it to recover again.
fn promoted_before(data: &std::path::Path) -> bool {
    data.join(PROMOTED_MARKER).exists()
}

const PROMOTED_MARKER: &str = "lazarus.promoted";

fn shell_word(text: &str) -> String {
    if text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-=:,+@".contains(&b))
    {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("/usr/bin/lazarus"), "/usr/bin/lazarus");
        assert_eq!(shell_word("/a b/it's"), "'/a b/it'\\''s'");
    }

    #[test]
    fn settings_are_quoted_for_postgresql() {
        assert_eq!(quote("it's"), "'it''s'");
    }

    #[test]
    fn probe_finds_no_server_in_an_empty_directory() {
        let dir = tempfile::tempdir().unwrap();
        let services = Services::default();
        assert!(!server_running(&services, dir.path()));
    }
}
