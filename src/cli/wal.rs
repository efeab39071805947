//! `lazarus wal …` (archive_command / restore_command and the archive's catalog) and
//! `lazarus pitr plan`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use serde_json::Value;

use super::Context;
use crate::crypto::Keyring;
use crate::engine::duration::parse_duration;
use crate::ops::wal::WalQuery;
use crate::wal::ahead;
use crate::wal::archive::{self, ArchiveError, PushOptions};

pub use crate::wal::DEFAULT_ARCHIVE;

/// Which archive.
#[derive(Debug, Clone, Args)]
pub struct ArchiveArg {
    /// The archive (one per cluster).
    #[arg(long, env = "LAZARUS_ARCHIVE", default_value = DEFAULT_ARCHIVE)]
    pub archive: String,
}

/// How files are archived: the same for the foreground call and the background pusher.
#[derive(Debug, Clone, Args)]
pub struct PushSettings {
    #[command(flatten)]
    archive: ArchiveArg,
    /// Stores that must take each file (default: all configured).
    #[arg(long)]
    min_copies: Option<usize>,
    /// zstd level.
    #[arg(long, default_value_t = 1)]
    level: i32,
}

impl PushSettings {
    fn options(self, threads: usize) -> PushOptions {
        PushOptions {
            archive: self.archive.archive,
            min_copies: self.min_copies,
            level: self.level,
            threads,
        }
    }
}

/// WAL subcommands.
#[derive(Debug, Subcommand)]
pub enum WalCommand {
    /// Archive one file (`archive_command = 'lazarus wal push %p'`).
    Push {
        /// The file PostgreSQL hands over (%p).
        path: PathBuf,
        #[command(flatten)]
        settings: PushSettings,
        /// Also archive the segments already waiting in pg_wal (`.ready`) in the background,
        /// several at once, so PostgreSQL's next calls return at once (pgBackRest's
        /// archive-async). Acknowledgements live in STATE/wal-push.
        #[arg(long = "async")]
        asynchronous: bool,
    },
    /// Archive the segments waiting after PATH (started by `wal push --async`).
    #[command(hide = true)]
    PushAhead {
        /// The file the foreground call archived.
        path: PathBuf,
        #[command(flatten)]
        settings: PushSettings,
    },
    /// Restore one file (`restore_command = 'lazarus wal fetch %f %p'`): exit 1 when the
    /// archive does not have it, 255 (PostgreSQL stops recovery) when it cannot be read.
    Fetch {
        /// The file PostgreSQL asks for (%f).
        file: String,
        /// Where to put it (%p).
        dest: PathBuf,
        #[command(flatten)]
        archive: ArchiveArg,
        /// Segments to fetch ahead in the background, into STATE/wal-spool (0: none).
        #[arg(long, default_value_t = 0)]
        prefetch: u64,
    },
    /// Fetch the segments after FILE into STATE/wal-spool (started by `wal fetch --prefetch`).
    #[command(hide = true)]
    Prefetch {
        /// The segment just handed to PostgreSQL.
        file: String,
        #[command(flatten)]
        archive: ArchiveArg,
        /// Segments to fetch ahead.
        #[arg(long, default_value_t = 8)]
        count: u64,
        /// Segment size in bytes.
        #[arg(long, default_value_t = crate::wal::names::DEFAULT_SEGMENT_SIZE)]
        segment_size: u64,
    },
    /// List archived files.
    List {
        #[command(flatten)]
        archive: ArchiveArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Check the archive: gaps per timeline, timeline-history consistency, and that every
    /// indexed segment is in a store (exit 1 on problems).
    Check {
        #[command(flatten)]
        archive: ArchiveArg,
        /// Check the local index alone (fast; does not list the stores).
        #[arg(long)]
        local: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// The named restore points in the archive (pg_create_restore_point), for --to-name.
    RestorePoints {
        #[command(flatten)]
        archive: ArchiveArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Archive lag (now − last archived commit) against the RPO target; exit 1 when exceeded.
    Status {
        #[command(flatten)]
        archive: ArchiveArg,
        /// The RPO target.
        #[arg(long, default_value = "15m")]
        rpo: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Re-read the archive into the catalog (`--full` forgets the index first).
    Sync {
        #[command(flatten)]
        archive: ArchiveArg,
        /// Read from this store only.
        #[arg(long)]
        store: Option<String>,
        /// Rebuild from scratch.
        #[arg(long)]
        full: bool,
    },
}

/// PITR subcommands.
#[derive(Debug, Subcommand)]
pub enum PitrCommand {
    /// The base backup and WAL chain for a moment, proven gap-free, before anything moves.
    Plan {
        #[command(flatten)]
        target: TargetArgs,
        /// Recover along this timeline (default: the newest that is not abandoned: the live primary's).
        #[arg(long)]
        timeline: Option<u32>,
        #[command(flatten)]
        archive: ArchiveArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// Where a point-in-time recovery stops: exactly one of these.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "target", multiple = false)]
pub struct TargetArgs {
    /// A moment: RFC 3339 or PostgreSQL's timestamptz text (a time without a zone is UTC).
    #[arg(long)]
    pub to: Option<String>,
    /// A WAL position, as PostgreSQL prints it (pg_current_wal_lsn()): 0/3000060.
    #[arg(long)]
    pub to_lsn: Option<String>,
    /// The end of a transaction (txid_current() modulo 2^32).
    #[arg(long)]
    pub to_xid: Option<String>,
    /// A restore point made with pg_create_restore_point('NAME') (`lazarus wal
    /// restore-points` lists them).
    #[arg(long)]
    pub to_name: Option<String>,
    /// The base backup's consistent point: the earliest state the archive can give.
    #[arg(long)]
    pub immediate: bool,
}

impl TargetArgs {
    /// The target as the pitr runbook's `to` carries it; `None` when none is given.
    pub fn spec(&self) -> Option<String> {
        if self.immediate {
            return Some("immediate".into());
        }
        self.to
            .clone()
            .or_else(|| self.to_lsn.as_ref().map(|l| format!("lsn:{l}")))
            .or_else(|| self.to_xid.as_ref().map(|x| format!("xid:{x}")))
            .or_else(|| self.to_name.as_ref().map(|n| format!("name:{n}")))
    }
}

/// Exit status for a file the archive cannot serve right now: above 125, so PostgreSQL
/// stops recovery instead of taking it for the end of the archive.
pub const FETCH_UNAVAILABLE: u8 = 255;

/// `lazarus wal …`.
pub async fn wal(ctx: &Context, command: WalCommand) -> Result<ExitCode> {
    match command {
        WalCommand::Push {
            path,
            settings,
            asynchronous,
        } => {
            let options = settings.options(crate::parallel::available_threads());
            push(ctx, path, options, asynchronous).await
        }
        WalCommand::PushAhead { path, settings } => {
            let (stores, keys) = stores_and_keys(ctx)?;
            let options = settings.options(1);
            let file = file_name(&path)?;
            let pg_wal = path.parent().unwrap_or(std::path::Path::new("."));
            let pusher = ahead::Pusher {
                spool: &ctx.state.join(PUSH_SPOOL),
                pg_wal,
                stores: &stores,
                key: primary_key(&keys)?,
                options: &options,
                parallel: crate::parallel::available_threads(),
                batch: 64,
            };
            let pushed = pusher.run(&file).await?;
            tracing::info!(pushed, "archived ahead");
            Ok(ExitCode::SUCCESS)
        }
        WalCommand::Fetch {
            file,
            dest,
            archive,
            prefetch,
        } => fetch(ctx, &file, &dest, &archive.archive, prefetch).await,
        WalCommand::Prefetch {
            file,
            archive,
            count,
            segment_size,
        } => {
            let (stores, keys) = stores_and_keys(ctx)?;
            let spool = ctx.state.join("wal-spool");
            archive::spool::prefetch(
                &spool,
                &file,
                segment_size,
                count,
                &stores,
                &keys,
                &archive.archive,
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        WalCommand::List { archive, json } => {
            let answer = ask(
                ctx,
                WalQuery::List {
                    archive: archive.archive,
                },
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                print_list(&answer, &ctx.configuration_note());
            }
            Ok(ExitCode::SUCCESS)
        }
        WalCommand::Check {
            archive,
            local,
            json,
        } => {
            let answer = ask(
                ctx,
                WalQuery::Check {
                    archive: archive.archive,
                    local,
                },
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                print_check(&answer);
            }
            Ok(status_code(answer["ok"].as_bool() == Some(true)))
        }
        WalCommand::RestorePoints { archive, json } => {
            let answer = ask(
                ctx,
                WalQuery::RestorePoints {
                    archive: archive.archive,
                },
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
                return Ok(ExitCode::SUCCESS);
            }
            let points = answer["restore_points"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if points.is_empty() {
                println!(
                    "archive {}: no restore points archived (make one with SELECT pg_create_restore_point('NAME'), then pg_switch_wal() or wait for the segment to be archived)\n  looked with {}",
                    text(&answer["archive"]),
                    ctx.configuration_note()
                );
            } else {
                println!(
                    "{:<32} {:<27} {:<14} {:>8}  SEGMENT",
                    "NAME", "TIME", "LSN", "TIMELINE"
                );
                for p in &points {
                    println!(
                        "{:<32} {:<27} {:<14} {:>8}  {}",
                        text(&p["name"]),
                        text(&p["time"]),
                        text(&p["lsn"]),
                        p["timeline"],
                        text(&p["segment"])
                    );
                }
                println!("recover to one: lazarus recover --to-name NAME --reason \"...\"");
            }
            if let Some(w) = answer["warning"].as_str() {
                eprintln!("warning: {w}");
            }
            Ok(ExitCode::SUCCESS)
        }
        WalCommand::Status { archive, rpo, json } => {
            let rpo = parse_duration(&rpo).map_err(anyhow::Error::msg)?;
            let answer = ask(
                ctx,
                WalQuery::Status {
                    archive: archive.archive,
                    rpo_seconds: rpo.as_secs_f64(),
                },
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                print_status(&answer);
            }
            Ok(status_code(answer["ok"].as_bool() == Some(true)))
        }
        WalCommand::Sync {
            archive,
            store,
            full,
        } => {
            let answer = ask(
                ctx,
                WalQuery::Sync {
                    archive: archive.archive,
                    store,
                    full,
                },
            )
            .await?;
            println!(
                "archive {}: {} manifests added from store {}",
                answer["archive"].as_str().unwrap_or(""),
                answer["added"],
                answer["store"].as_str().unwrap_or("")
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `lazarus pitr …`.
pub async fn pitr(ctx: &Context, command: PitrCommand) -> Result<ExitCode> {
    let PitrCommand::Plan {
        target,
        timeline,
        archive,
        json,
    } = command;
    let to = target.spec().ok_or_else(|| {
        anyhow::anyhow!("say where to stop: --to TIME, --to-lsn LSN, --to-xid XID, --to-name NAME or --immediate")
    })?;
    let answer = ask(
        ctx,
        WalQuery::Plan {
            archive: archive.archive,
            to,
            timeline,
        },
    )
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print_plan(&answer);
    }
    Ok(ExitCode::SUCCESS)
}

fn status_code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn ask(ctx: &Context, query: WalQuery) -> Result<Value> {
    let (answer, session) = ctx
        .query(|c| {
            let query = query.clone();
            Box::pin(async move { c.wal(query).await })
        })
        .await?;
    session.finish().await;
    if let Some(warning) = answer["warning"].as_str() {
        eprintln!("warning: {warning}");
    }
    Ok(answer)
}

/// The configured stores and keys.
fn stores_and_keys(ctx: &Context) -> Result<(crate::storage::StoreSet, Keyring)> {
    let loaded = ctx.loaded_config()?;
    let stores = loaded.stores(&ctx.state)?;
    let keys = Keyring::load(loaded.keys_file().as_deref())?;
    Ok((stores, keys))
}

/// The key archived files are encrypted with.
fn primary_key(keys: &Keyring) -> Result<&crate::crypto::keys::Key> {
    keys.primary()
        .context("wal push encrypts with the first configured key; configure one under [keys]")
}

/// Where `wal push --async` keeps its acknowledgements, under the state directory.
const PUSH_SPOOL: &str = "wal-push";

fn file_name(path: &std::path::Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .with_context(|| format!("{} has no file name", path.display()))
}

async fn push(
    ctx: &Context,
    path: PathBuf,
    options: PushOptions,
    asynchronous: bool,
) -> Result<ExitCode> {
    let spool = ctx.state.join(PUSH_SPOOL);
    let mut claimed = None;
    if asynchronous {
        let file = file_name(&path)?;
        let limit = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            // The pusher may be archiving this very file: wait for it, then take its word.
            ahead::wait_while_claimed(&spool, &file, std::time::Duration::from_secs(60));
            if ahead::acknowledged(&spool, &path) {
                tracing::info!(file, "archived ahead");
                start_pusher(ctx, &path, &options);
                return Ok(ExitCode::SUCCESS);
            }
            if ahead::claim(&spool, &file) || std::time::Instant::now() > limit {
                break;
            }
        }
        claimed = Some(file);
    }
    let pushed = push_now(ctx, &path, &options).await;
    if let Some(file) = &claimed {
        ahead::release(&spool, file);
    }
    pushed?;
    if asynchronous {
        start_pusher(ctx, &path, &options);
    }
    Ok(ExitCode::SUCCESS)
}

/// Archives `path` in the foreground.
async fn push_now(ctx: &Context, path: &std::path::Path, options: &PushOptions) -> Result<()> {
    let (stores, keys) = stores_and_keys(ctx)?;
    let outcome = archive::push(path, &stores, primary_key(&keys)?, options)
        .await
        .map_err(|e| {
            let message = e.to_string();
            if message.contains("Permission denied") {
                let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
                    .ok()
                    .flatten()
                    .map_or_else(|| nix::unistd::geteuid().to_string(), |u| u.name);
                anyhow::anyhow!(
                    "{message}\nwal push runs as {user} (the server's user): the store's WAL folders must be writable by {user}. `lazarus run base-backup` (as root) prepares them; or give them to that user: chown -R {user} STORE/wal"
                )
            } else {
                anyhow::Error::from(e)
            }
        })?;
    tracing::info!(
        file = %outcome.manifest.file,
        already = outcome.already_archived,
        copies = %outcome.copies.join(","),
        "archived"
    );
    Ok(())
}

/// Starts the background pusher for the segments waiting after `path`, detached from
/// PostgreSQL's archiver, unless one is running.
fn start_pusher(ctx: &Context, path: &std::path::Path, options: &PushOptions) {
    if ahead::pusher_running(&ctx.state.join(PUSH_SPOOL)) {
        return;
    }
    let mut args: Vec<std::ffi::OsString> = vec!["wal".into(), "push-ahead".into(), path.into()];
    args.push(format!("--archive={}", options.archive).into());
    args.push(format!("--level={}", options.level).into());
    if let Some(n) = options.min_copies {
        args.push(format!("--min-copies={n}").into());
    }
    spawn_detached(ctx, &args);
}

/// Runs this binary with the same configuration and state directory in the background, in
/// its own process group (PostgreSQL's stop does not reach it) and with no output.
fn spawn_detached(ctx: &Context, args: &[std::ffi::OsString]) {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut cmd = std::process::Command::new(exe);
    if let Some(config) = &ctx.config {
        cmd.arg("--config").arg(config);
    }
    let _ = cmd
        .arg("--state")
        .arg(&ctx.state)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn();
}

async fn fetch(
    ctx: &Context,
    file: &str,
    dest: &std::path::Path,
    archive_name: &str,
    prefetch: u64,
) -> Result<ExitCode> {
    let spool = ctx.state.join("wal-spool");
    // The server that runs this restore_command: once it has gone (stopped while this
    // fetched), nothing is prefetched for it.
    let parent = nix::unistd::getppid();
    if prefetch > 0 {
        // Already prefetched (or being prefetched right now): hand it over at once.
        let waiting = archive::spool::wait_for(&spool, file, std::time::Duration::from_secs(60));
        if let Some(ready) = waiting.or_else(|| archive::spool::ready(&spool, file)) {
            match archive::spool::hand_over(&ready, dest) {
                Ok(bytes) => {
                    if nix::unistd::getppid() == parent {
                        start_prefetcher(ctx, file, archive_name, prefetch, bytes);
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                Err(e) => tracing::warn!(error = %e, "prefetched copy unusable; fetching"),
            }
        }
    }
    let (stores, keys) = match stores_and_keys(ctx) {
        Ok(ready) => ready,
        Err(e) => {
            eprintln!("lazarus wal fetch {file}: {e:#}");
            return Ok(ExitCode::from(FETCH_UNAVAILABLE));
        }
    };
    let threads = crate::parallel::available_threads();
    match archive::fetch(file, dest, &stores, &keys, archive_name, threads).await {
        Ok(outcome) => {
            tracing::info!(file, store = %outcome.store, bytes = outcome.bytes, "fetched");
            if prefetch > 0 && nix::unistd::getppid() == parent {
                start_prefetcher(ctx, file, archive_name, prefetch, outcome.bytes);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(ArchiveError::NotFound { .. }) => Ok(ExitCode::from(1)),
        Err(e) => {
            eprintln!("lazarus wal fetch {file}: {e}");
            Ok(ExitCode::from(FETCH_UNAVAILABLE))
        }
    }
}

/// Starts a background prefetcher for the segments after `file` (segments only), detached
/// from PostgreSQL's restore_command so the handed-over segment replays meanwhile.
fn start_prefetcher(ctx: &Context, file: &str, archive_name: &str, count: u64, segment_size: u64) {
    if archive::classify(file).ok() != Some(archive::FileKind::Segment)
        || !segment_size.is_power_of_two()
        || archive::spool::prefetcher_running(&ctx.state.join("wal-spool"))
    {
        return;
    }
    let args: Vec<std::ffi::OsString> = [
        "wal".to_string(),
        "prefetch".into(),
        file.into(),
        format!("--archive={archive_name}"),
        format!("--count={count}"),
        format!("--segment-size={segment_size}"),
    ]
    .into_iter()
    .map(Into::into)
    .collect();
    spawn_detached(ctx, &args);
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

fn print_list(answer: &Value, note: &str) {
    let empty = Vec::new();
    let files = answer["files"].as_array().unwrap_or(&empty);
    if files.is_empty() {
        println!(
            "archive {}: nothing archived\n  looked with {note}",
            text(&answer["archive"])
        );
        return;
    }
    // Times are transaction ends: commits and aborts alike, as recovery targets stop at
    // either. Backup and timeline history files are listed apart from the WAL itself.
    let (wal, other): (Vec<&Value>, Vec<&Value>) = files
        .iter()
        .partition(|f| matches!(f["kind"].as_str(), Some("segment" | "partial")));
    if !wal.is_empty() {
        println!(
            "{:<34} {:>3} {:>12} {:>12} {:<27} {:<27} {:>8}",
            "SEGMENT",
            "TLI",
            "START",
            "END",
            "FIRST XACT END (C/A)",
            "LAST XACT END (C/A)",
            "STORED"
        );
    }
    for f in &wal {
        println!(
            "{:<34} {:>3} {:>12} {:>12} {:<27} {:<27} {:>7}K",
            text(&f["file"]),
            f["timeline"],
            text(&f["start_lsn"]),
            text(&f["end_lsn"]),
            text(&f["first_xact_time"]),
            text(&f["last_xact_time"]),
            f["stored_size"].as_u64().unwrap_or(0) / 1024
        );
    }
    if !wal.is_empty() {
        println!("(XACT END: the time of a commit or an abort; a recovery target stops at either)");
    }
    if !other.is_empty() {
        println!();
        println!(
            "{:<40} {:>3} {:<14} {:>8}",
            "HISTORY FILE", "TLI", "KIND", "STORED"
        );
        for f in &other {
            let kind = match f["kind"].as_str() {
                Some("backup_label") => "backup label",
                Some("history") => "timeline",
                other => other.unwrap_or("-"),
            };
            println!(
                "{:<40} {:>3} {:<14} {:>7}K",
                text(&f["file"]),
                f["timeline"],
                kind,
                f["stored_size"].as_u64().unwrap_or(0) / 1024
            );
        }
    }
}

fn print_check(answer: &Value) {
    let empty = Vec::new();
    println!("archive {}", text(&answer["archive"]));
    for t in answer["timelines"].as_array().unwrap_or(&empty) {
        println!(
            "  timeline {}: {} segments, {} to {}, {} gap(s)",
            t["timeline"],
            t["segments"],
            text(&t["first"]),
            text(&t["last"]),
            t["gaps"].as_array().map_or(0, Vec::len)
        );
    }
    for note in answer["notes"].as_array().unwrap_or(&empty) {
        println!("  note: {}", text(note));
    }
    let problems = answer["problems"].as_array().unwrap_or(&empty);
    let scope = if answer["stores_checked"].as_bool() == Some(true) {
        "every indexed segment is in a store"
    } else {
        "checked in the local index only (without --local, the stores are listed too)"
    };
    if problems.is_empty() {
        println!("OK: no gaps, timeline histories consistent; {scope}");
    } else {
        for p in problems {
            println!("PROBLEM: {}", text(p));
        }
    }
}

fn print_status(answer: &Value) {
    let lag = answer["lag_seconds"].as_f64();
    let rpo = answer["rpo_seconds"].as_f64().unwrap_or(0.0);
    match lag {
        None => println!(
            "archive {}: no archived commits — RPO target {rpo:.0}s cannot be met",
            text(&answer["archive"])
        ),
        Some(lag) => println!(
            "archive {}: last archived commit {} on timeline {} (segment {}); lag {lag:.0}s against an RPO target of {rpo:.0}s — {}",
            text(&answer["archive"]),
            text(&answer["last_commit"]),
            answer["timeline"],
            text(&answer["last_segment"]),
            if lag <= rpo { "OK" } else { "EXCEEDED" }
        ),
    }
    for a in answer["abandoned_timelines"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!(
            "  timeline {} is abandoned (passed over as latest) since {}: {}",
            a["timeline"],
            text(&a["at"]),
            text(&a["reason"])
        );
    }
}

fn print_plan(plan: &Value) {
    let empty = Vec::new();
    println!(
        "point-in-time recovery of archive {} to {}",
        text(&plan["archive"]),
        text(&plan["target"])
    );
    println!("  timeline        {}", plan["timeline"]);
    if plan["target_kind"].as_str().is_some_and(|k| k != "time") {
        println!(
            "  stops           {} (recovery_target_{}); around {}",
            text(&plan["target"]),
            match text(&plan["target_kind"]) {
                "immediate" => "immediate: the base backup's consistent point",
                other => other,
            },
            text(&plan["target_time"])
        );
    }
    let b = &plan["backup"];
    println!(
        "  base backup     {} (timeline {}, start {}, consistent at {})",
        text(&b["id"]),
        b["timeline"],
        b["start_lsn"]
            .as_u64()
            .map(|l| crate::wal::Lsn(l).to_string())
            .unwrap_or_default(),
        b["stop_time"]
            .as_i64()
            .map(archive::micros_to_rfc3339)
            .unwrap_or_default()
    );
    for part in plan["chain"].as_array().unwrap_or(&empty) {
        println!(
            "  WAL             timeline {}: {} .. {} ({} segments, no gap)",
            part["timeline"],
            text(&part["first_file"]),
            text(&part["last_file"]),
            part["last_segno"].as_u64().unwrap_or(0) + 1
                - part["first_segno"].as_u64().unwrap_or(0)
        );
    }
    println!(
        "  target segment  {} (its commits reach {})",
        text(&plan["target_segment"]),
        text(&plan["target_segment_last_commit"])
    );
    println!(
        "  covered window  {} to {}",
        text(&plan["window"]["from"]),
        text(&plan["window"]["to"])
    );
    println!(
        "  left out        {:.0}s of archived history after the target",
        plan["newer_history_seconds"].as_f64().unwrap_or(0.0)
    );
    if let Some(lsn) = plan["stop_lsn"].as_str() {
        println!("  stops at        {lsn} (the last archived transaction end)");
    }
    if plan["stores_checked"].as_bool() != Some(true) {
        println!(
            "  planned from the local index: the stores were not consulted (`lazarus wal check` lists them; `recover --to` proves every planned segment is in a store before restoring)"
        );
    }
}
