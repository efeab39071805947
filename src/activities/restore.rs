//! `restore`: `pg_restore --jobs N` into a new database beside the live one (never over it,
//! unless `in_place` is set and confirmed); and `drop_database` for scratch databases.

use std::io::Read;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::dump::pg_failure;
use super::files::boot_id;
use super::inputs::{self, lenient_bool, lenient_opt_u64};
use super::services::Services;
use super::streamed::{self, FeedError, Streams};
use super::supervise::Supervised;
use crate::engine::{
    Activity, ActivityContext, ActivityError, ActivitySpec, Discarded, InputSpec, Leftovers,
    Progress,
};
use crate::parallel::available_threads;
use crate::pg::sql::{Sql, ident, literal};
use crate::pg::tail_lines;

static RESTORE: ActivitySpec = ActivitySpec {
    name: "restore",
    summary: "pg_restore --jobs N a dump into a new database beside the live one",
    inputs: &[
        InputSpec {
            name: "file",
            required: true,
            help: "pg_dump archive: a custom-format file, or a directory archive (decrypt's streamed output, whose table data is decoded from the backup as pg_restore reads it)",
        },
        InputSpec {
            name: "database",
            required: false,
            help: "database to restore into (created; default LIVE_restored_XXXXXX, unique to the run)",
        },
        InputSpec {
            name: "live_database",
            required: false,
            help: "the live database, which this step must not touch",
        },
        InputSpec {
            name: "jobs",
            required: false,
            help: "parallel jobs (default: two per core)",
        },
        InputSpec {
            name: "no_owner",
            required: false,
            help: "skip ownership (default false)",
        },
        InputSpec {
            name: "in_place",
            required: false,
            help: "restore over the live database (destructive; needs confirm)",
        },
        InputSpec {
            name: "confirm",
            required: false,
            help: "with in_place: the live database's name, typed again",
        },
        InputSpec {
            name: "unflushed_in_boot",
            required: false,
            help: "the boot the file was written in without a flush (decrypt's output): flushed here while pg_restore runs, refused after a restart",
        },
    ],
    outputs: &[
        "database",
        "jobs",
        "seconds",
        "pg_restore_seconds",
        "tables",
        "in_place",
        "results",
    ],
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreInputs {
    file: PathBuf,
    database: Option<String>,
    live_database: Option<String>,
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    jobs: Option<u64>,
    #[serde(default, deserialize_with = "lenient_bool")]
    no_owner: bool,
    #[serde(default, deserialize_with = "lenient_bool")]
    in_place: bool,
    confirm: Option<String>,
    unflushed_in_boot: Option<String>,
}

/// How long pg_restore runs before the unflushed archive is flushed beside it. A restore
/// shorter than this never pays for writing the archive to disk (the cleanup deletes it from
/// the page cache); a power loss in this window costs the download and decrypt again (the
/// restore itself starts over after a restart in any case). The kernel would write it back
/// after 30 s on its own.
const FLUSH_AFTER: Duration = Duration::from_secs(30);

/// Journaled once the archive has reached disk: from then on a machine restart cannot have
/// damaged it.
#[derive(Debug, Serialize, Deserialize)]
struct ArchiveFlushed {
    /// The boot the flushed archive was written in (a later decrypt's file is another).
    boot: String,
}

/// The `restore` activity.
pub struct Restore {
    services: Arc<Services>,
}

impl Restore {
    /// The activity over these services.
    pub fn new(services: Arc<Services>) -> Self {
        Self { services }
    }
}

#[async_trait]
impl Activity for Restore {
    fn spec(&self) -> &'static ActivitySpec {
        &RESTORE
    }

    fn input_files(&self) -> &'static [&'static str] {
        &["file"]
    }

    async fn run(&self, ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: RestoreInputs = inputs::parse("restore", inputs)?;
        let started = Instant::now();
        let live = inputs.live_database.clone().filter(|s| !s.is_empty());
        let target = match (inputs.database.clone().filter(|s| !s.is_empty()), &live) {
            _ if inputs.in_place => live.clone().ok_or_else(|| {
                ActivityError::permanent("an in-place restore needs live_database")
            })?,
            (Some(name), _) => name,
            (None, Some(live)) => restored_name(live, &ctx.run_id),
            (None, None) => {
                return Err(ActivityError::permanent(
                    "give the database to restore into, or the live_database to restore beside",
                ));
            }
        };
        if target.len() > 63 {
            return Err(ActivityError::permanent(format!(
                "database name {target} is longer than PostgreSQL's 63 bytes"
            )));
        }
        let over_live = live.as_deref() == Some(target.as_str());
        if over_live && !inputs.in_place {
            return Err(ActivityError::permanent(format!(
                "refusing to restore over the live database {target}: restore beside it and cut over, or set in_place = true with confirm = \"{target}\""
            )));
        }
        if inputs.in_place && inputs.confirm.as_deref() != Some(target.as_str()) {
            return Err(ActivityError::permanent(format!(
                "an in-place restore destroys {target}; confirm it by passing confirm = \"{target}\""
            )));
        }
        if !inputs.file.exists() {
            return Err(ActivityError::permanent(format!(
                "{} does not exist",
                inputs.file.display()
            )));
        }
        let plan = streamed::read_plan(&inputs.file).map_err(ActivityError::permanent)?;
        let keys = match &plan {
            Some(_) => Some(self.services.keys().map_err(|e| {
                ActivityError::permanent(format!(
                    "the streamed restore cannot read the backup: {e}"
                ))
            })?),
            None => None,
        };
        // An archive left unflushed by the step before is flushed beside pg_restore once it
        // has run FLUSH_AFTER; after a machine restart it is trusted only if that flush was
        // journaled.
        let flushed = ctx.last_checkpoint::<ArchiveFlushed>().map(|c| c.boot);
        let unflushed = inputs
            .unflushed_in_boot
            .as_deref()
            .filter(|b| !b.is_empty() && flushed.as_deref() != Some(*b));
        if let Some(then) = unflushed
            && boot_id().as_deref() != Some(then)
        {
            return Err(ActivityError::permanent(format!(
                "{} was written just before this machine restarted and had not reached disk: it cannot be trusted, and nothing was restored from it. Start a new recovery (the backup is downloaded and decrypted again)",
                inputs.file.display()
            )));
        }
        let flush_file = unflushed.map(|boot| (inputs.file.clone(), boot.to_string()));
        let server = &self.services.pg_server;
        // pg_restore of the server's major version, or of the archive's when that is newer.
        let tools = tokio::task::block_in_place(|| {
            let server_tools = self.services.pg_tools.for_server(server, "postgres")?;
            let server_major = server_tools.major.as_ref().map_or(0, |(m, _)| *m);
            let (major, why) = crate::pg::versions::restore_major(server_major, &inputs.file);
            Ok::<_, crate::pg::PgError>(self.services.pg_tools.for_major(major, why))
        })
        .map_err(pg_failure)?;
        let tools = &tools;
        let sql = Sql::new(tools, server);
        let jobs = match inputs.jobs {
            // Two per core: each pg_restore worker waits on the server's I/O about as long as
            // it computes, so one per core leaves the machine half idle (measured in
            // benches/recovery.rs: -j4 beats -j2 on two cores).
            None | Some(0) => (available_threads() * 2).min(16),
            Some(j) => j.min(64) as usize,
        };
        let pg_restore = tools.path("pg_restore").map_err(pg_failure)?;
        let outcome = tokio::task::block_in_place(|| -> Result<(usize, f64), ActivityError> {
            let mut flush_file = flush_file;
            // Over the live database, nothing is dropped before the archive is on disk.
            if inputs.in_place
                && let Some((file, boot)) = flush_file.take()
            {
                flush_with_its_name(&file).map_err(|e| {
                    ActivityError::retryable(format!("cannot flush {}: {e}", file.display()))
                })?;
                let runtime = tokio::runtime::Handle::current();
                runtime
                    .block_on(ctx.checkpoint(&ArchiveFlushed { boot }))
                    .map_err(|e| ActivityError::retryable(e.message))?;
            }
            if inputs.in_place
                && let (Some(plan), Some(keys)) = (&plan, &keys)
            {
                // Over the live database, every byte is authenticated before anything is
                // dropped: a damaged backup must not be found half-way through.
                streamed::authenticate(
                    plan,
                    keys,
                    &|| ctx.cancellation().is_cancelled(),
                    &mut |done, total| {
                        ctx.progress(Progress {
                            done,
                            total: Some(total),
                            unit: "bytes".into(),
                            message: Some(
                                "authenticating the whole backup before the live database is touched"
                                    .into(),
                            ),
                        })
                    },
                )
                .map_err(|e| {
                    if ctx.cancellation().is_cancelled() {
                        ActivityError::cancelled("the restore was stopped")
                    } else {
                        ActivityError::permanent(e)
                    }
                })?;
            }
            if !inputs.in_place {
                // A previous attempt may have left a partial restore: start clean. This is
                // a database of our own, never the live one (checked above).
                recreate_database(&sql, &target)?;
            }
            let mut args: Vec<String> = vec![
                format!("--jobs={jobs}"),
                "--exit-on-error".into(),
                format!("--dbname={}", crate::pg::conninfo::dbname_only(&target)),
            ];
            if inputs.no_owner {
                args.push("--no-owner".into());
            }
            if inputs.in_place {
                args.push("--clean".into());
                args.push("--if-exists".into());
            }
            args.push(inputs.file.display().to_string());
            let restore_started = Instant::now();
            // Streamed dumps lack data offsets; with them pg_restore's workers seek straight
            // to their tables instead of scanning the archive.
            if plan.is_none() && inputs.file.is_file() {
                match crate::pg::dump_toc::fill_data_offsets(&inputs.file) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(entries = n, "filled the archive's data offsets"),
                    Err(e) => {
                        tracing::warn!(error = %e, "pg_restore will scan the archive instead")
                    }
                }
            }
            let streams = match (&plan, keys) {
                (Some(plan), Some(keys)) => Some(
                    Streams::start(&inputs.file, plan, keys).map_err(ActivityError::permanent)?,
                ),
                _ => None,
            };
            let mut child = Supervised::spawn(&pg_restore, &args, |cmd| {
                server.apply(cmd);
                cmd.stdout(Stdio::null()).stderr(Stdio::piped());
            })
            .map_err(|e| ActivityError::retryable(format!("cannot start pg_restore: {e}")))?;
            let mut flush: Option<std::thread::JoinHandle<std::io::Result<String>>> = None;
            let mut stderr = child.child.stderr.take();
            let errors = std::thread::spawn(move || {
                let mut text = Vec::new();
                if let Some(s) = stderr.as_mut() {
                    let _ = s.read_to_end(&mut text);
                }
                text
            });
            let runtime = tokio::runtime::Handle::current();
            let mut last_progress: Option<Instant> = None;
            let status = loop {
                if restore_started.elapsed() >= FLUSH_AFTER
                    && let Some((file, boot)) = flush_file.take()
                {
                    flush = Some(std::thread::spawn(move || {
                        flush_with_its_name(&file).map(|()| boot)
                    }));
                }
                if flush.as_ref().is_some_and(|f| f.is_finished())
                    && let Some(done) = flush.take()
                {
                    match done.join() {
                        Ok(Ok(boot)) => {
                            // Only a later resume after a restart needs this: failing to
                            // journal it must not stop a healthy pg_restore.
                            if let Err(e) =
                                runtime.block_on(ctx.checkpoint(&ArchiveFlushed { boot }))
                            {
                                tracing::warn!(error = %e.message, "cannot journal the archive flush");
                            }
                        }
                        Ok(Err(e)) => {
                            // After a failed flush the kernel may have dropped the pages it
                            // could not write: what pg_restore reads next cannot be trusted.
                            child.stop(Duration::from_secs(5));
                            return Err(ActivityError::permanent(format!(
                                "cannot flush {} to disk ({e}): the archive may no longer read back as written; check the disk, then start a new recovery",
                                inputs.file.display()
                            )));
                        }
                        Err(_) => tracing::warn!("the archive flush panicked"),
                    }
                }
                if ctx.cancellation().is_cancelled() {
                    child.stop(Duration::from_secs(5));
                    return Err(ActivityError::cancelled("pg_restore stopped"));
                }
                match child.child.try_wait() {
                    Ok(Some(status)) => break status,
                    Ok(None) if streams.as_ref().and_then(Streams::failure).is_some() => {
                        // pg_restore goes first: the table it reads must not see the end
                        // of its rows (the feeders hold their pipes until it is gone).
                        child.stop(Duration::from_secs(5));
                        break child.wait().map_err(|e| {
                            ActivityError::retryable(format!("waiting for pg_restore: {e}"))
                        })?;
                    }
                    Ok(None) => {
                        if last_progress.is_none_or(|at| at.elapsed() >= Duration::from_millis(500))
                        {
                            let streamed = streams.as_ref().map(Streams::progress).map_or_else(
                                String::new,
                                |(fed, total)| {
                                    format!(", {} of {} MiB streamed", fed >> 20, total >> 20)
                                },
                            );
                            ctx.progress(Progress {
                                done: started.elapsed().as_secs(),
                                total: None,
                                unit: "seconds".into(),
                                message: Some(format!(
                                    "pg_restore --jobs {jobs} into {target}{streamed}"
                                )),
                            });
                            last_progress = Some(Instant::now());
                        }
                        // Short: the run waits this long, on average half, after pg_restore.
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => {
                        child.stop(Duration::from_secs(5));
                        return Err(ActivityError::retryable(format!(
                            "waiting for pg_restore: {e}"
                        )));
                    }
                }
            };
            let stderr = errors.join().unwrap_or_default();
            match streams.map(Streams::finish) {
                Some(Err(FeedError::Failed(failure))) => {
                    let next = if inputs.in_place {
                        format!(
                            "{target} is incomplete: restore it again from an intact backup (lazarus recover --backup ID)"
                        )
                    } else {
                        format!(
                            "{target} (not the live database) is incomplete; the next attempt drops and restores it afresh. Start a new recovery to download the backup again, or restore another backup (lazarus recover --backup ID)"
                        )
                    };
                    return Err(ActivityError::permanent(format!(
                        "{failure}. pg_restore was stopped before that table was committed; {next}"
                    )));
                }
                Some(Err(incomplete)) if status.success() => {
                    return Err(ActivityError::permanent(format!(
                        "restoring into {target} from the backup failed: {incomplete}"
                    )));
                }
                Some(Err(incomplete)) => {
                    return Err(ActivityError::retryable(format!(
                        "pg_restore into {target} failed ({status}): {} (streaming the backup: {incomplete})",
                        tail_lines(&stderr, 4)
                    )));
                }
                _ => {}
            }
            if !status.success() {
                return Err(ActivityError::retryable(format!(
                    "pg_restore into {target} failed ({status}): {}",
                    tail_lines(&stderr, 4)
                )));
            }
            let pg_restore_seconds = restore_started.elapsed().as_secs_f64();
            let tables = super::dump::tables(&sql, &target).map_err(pg_failure)?;
            Ok((tables.len(), pg_restore_seconds))
        })?;
        Ok(json!({
            "database": target,
            "jobs": jobs,
            "seconds": started.elapsed().as_secs_f64(),
            "tables": outcome.0,
            "pg_restore_seconds": outcome.1,
            "in_place": inputs.in_place,
            "results": { "restored_database": target },
        }))
    }

    async fn discard(
        &self,
        ctx: &ActivityContext,
        leftovers: Leftovers,
    ) -> Result<Discarded, ActivityError> {
        let inputs: RestoreInputs = inputs::parse("restore", leftovers.inputs)?;
        let mut done = Discarded::default();
        let live = inputs.live_database.clone().filter(|s| !s.is_empty());
        let target = match (inputs.database.clone().filter(|s| !s.is_empty()), &live) {
            _ if inputs.in_place => {
                if let Some(live) = live {
                    done.kept.push(format!(
                        "database {live}: it was restored in place, and dropping it would lose the live database"
                    ));
                }
                return Ok(done);
            }
            (Some(name), _) => name,
            (None, Some(live)) => restored_name(live, &ctx.run_id),
            (None, None) => return Ok(done),
        };
        if live.as_deref() == Some(target.as_str()) {
            return Ok(done);
        }
        let sql = Sql::new(&self.services.pg_tools, &self.services.pg_server);
        let size = tokio::task::block_in_place(|| {
            sql.scalar(
                "postgres",
                &format!(
                    "SELECT pg_database_size(oid) FROM pg_database WHERE datname = {}",
                    literal(&target)
                ),
            )
        })
        .map_err(|e| ActivityError::retryable(format!("cannot look for database {target}: {e}")))?;
        let Some(size) = size else {
            return Ok(done);
        };
        let size = crate::size::human_size(size.trim().parse().unwrap_or(0));
        if leftovers.used {
            done.kept.push(format!(
                "database {target} ({size}): traffic was cut over to it, so it may hold writes made since; drop it by hand once they are safe (DROP DATABASE {})",
                ident(&target)
            ));
            return Ok(done);
        }
        if !leftovers.dry_run {
            tokio::task::block_in_place(|| {
                sql.execute(
                    "postgres",
                    &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(&target)),
                )
            })
            .map_err(|e| ActivityError::retryable(format!("cannot drop database {target}: {e}")))?;
        }
        done.removed.push(format!("database {target} ({size})"));
        Ok(done)
    }
}

/// The database a run restores beside `live`: `LIVE_restored_XXXXXX` (6 hex digits from the
/// run id), within PostgreSQL's 63 bytes.
pub fn restored_name(live: &str, run_id: &str) -> String {
    let suffix = format!("_restored_{}", restored_tag(run_id));
    let mut base = live.to_string();
    while base.len() + suffix.len() > 63 {
        base.pop();
    }
    format!("{base}{suffix}")
}

/// The 6 hex digits that tie a restored database's name to the run that made it.
pub fn restored_tag(run_id: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(run_id.as_bytes()))[..6].to_string()
}

static DROP: ActivitySpec = ActivitySpec {
    name: "drop_database",
    summary: "drop a scratch database (refuses the live one)",
    inputs: &[
        InputSpec {
            name: "database",
            required: true,
            help: "database to drop",
        },
        InputSpec {
            name: "live_database",
            required: false,
            help: "the live database, which is never dropped",
        },
    ],
    outputs: &["database", "dropped"],
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DropInputs {
    database: String,
    live_database: Option<String>,
}

/// The `drop_database` activity.
pub struct DropDatabase {
    services: Arc<Services>,
}

impl DropDatabase {
    /// The activity over these services.
    pub fn new(services: Arc<Services>) -> Self {
        Self { services }
    }
}

#[async_trait]
impl Activity for DropDatabase {
    fn spec(&self) -> &'static ActivitySpec {
        &DROP
    }

    async fn run(&self, _ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: DropInputs = inputs::parse("drop_database", inputs)?;
        if inputs.live_database.as_deref() == Some(inputs.database.as_str()) {
            return Err(ActivityError::permanent(format!(
                "refusing to drop the live database {}",
                inputs.database
            )));
        }
        let sql = Sql::new(&self.services.pg_tools, &self.services.pg_server);
        let existed = tokio::task::block_in_place(|| {
            let existed = sql.database_exists(&inputs.database)?;
            sql.execute(
                "postgres",
                &format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    ident(&inputs.database)
                ),
            )?;
            Ok::<_, crate::pg::PgError>(existed)
        })
        .map_err(pg_failure)?;
        Ok(json!({ "database": inputs.database, "dropped": existed }))
    }
}

/// Flushes a file and the directory entry that names it.
fn flush_with_its_name(file: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(file)?.sync_data()?;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Drops and creates `target` afresh. A killed earlier attempt may have left its own
/// `CREATE DATABASE` running (psql outlives its parent): when the name reappears between our
/// drop and our create, wait for it and drop again.
fn recreate_database(sql: &Sql, target: &str) -> Result<(), ActivityError> {
    let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(target));
    let create = format!("CREATE DATABASE {} TEMPLATE template0", ident(target));
    let mut tries = 0;
    loop {
        tries += 1;
        sql.execute("postgres", &drop).map_err(pg_failure)?;
        match sql.execute("postgres", &create) {
            Ok(()) => return Ok(()),
            Err(e)
                if tries < 20 && {
                    let text = e.to_string();
                    text.contains("already exists") || text.contains("pg_database_datname_index")
                } =>
            {
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => return Err(pg_failure(e)),
        }
    }
}
