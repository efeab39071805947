//! Backups from the command line: `backup` (and `backup import`), `backups`, `catalog sync`,
//! `drill` and `recover` — the last three are shortcuts for running the project's runbooks.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::Context;
use super::execute::{self, RunArgs};
use crate::catalog::Manifest;

/// Arguments of `lazarus backup`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackupArgs {
    /// Import a backup made by the old system.
    #[command(subcommand)]
    pub command: Option<BackupCommand>,
    /// Database to back up.
    #[arg(long)]
    pub database: Option<String>,
    /// Why (recorded; default "backup of DATABASE").
    #[arg(long)]
    pub reason: Option<String>,
    /// Extra workflow parameters, NAME=VALUE.
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// Hand the run to a background owner and print its id alone.
    #[arg(long)]
    pub detach: bool,
}

/// `lazarus backup ...`.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Upload and register a seed *.dump.gz.enc backup (it then restores like any other).
    Import {
        /// The *.dump.gz.enc file.
        file: String,
        /// The database it is a dump of.
        #[arg(long)]
        database: String,
        /// Backup id (default DATABASE-TIMESTAMP).
        #[arg(long)]
        id: Option<String>,
    },
}

/// Arguments of `lazarus backups`.
#[derive(Debug, Args)]
pub struct BackupsArgs {
    /// Only this database's backups.
    #[arg(long)]
    pub database: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `lazarus catalog ...`.
#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Rebuild the catalog from the manifests in one store (the first that answers).
    Sync {
        /// The store to read.
        #[arg(long)]
        store: Option<String>,
    },
}

/// Arguments of `lazarus expire`.
#[derive(Debug, Args)]
pub struct ExpireArgs {
    /// List what would be removed and the window that would be left; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only this database or WAL archive.
    #[arg(long)]
    pub only: Option<String>,
    /// Why (recorded; default "retention").
    #[arg(long)]
    pub reason: Option<String>,
}

/// Arguments of `lazarus drill`.
#[derive(Debug, Args)]
pub struct DrillArgs {
    /// Database whose backup to drill.
    #[arg(long)]
    pub database: String,
    /// The backup (default: the latest not yet FAILED).
    #[arg(long)]
    pub backup: Option<String>,
    /// Why (recorded; default "verification drill").
    #[arg(long)]
    pub reason: Option<String>,
    /// Extra workflow parameters, NAME=VALUE.
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
}

/// Arguments of `lazarus recover`.
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// Database to recover (for a point in time: the database checked and cut over).
    #[arg(long, required_unless_present = "target")]
    pub database: Option<String>,
    /// Point-in-time recovery (the pitr runbook instead): where to stop.
    #[command(flatten)]
    pub target: super::wal::TargetArgs,
    /// The backup to restore (default: the latest VERIFIED).
    #[arg(long)]
    pub backup: Option<String>,
    /// Why this recovery is needed (recorded; required).
    #[arg(long)]
    pub reason: String,
    /// Extra workflow parameters, NAME=VALUE (cutover=none, health_url=..., ...).
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// Halt before this step (repeatable).
    #[arg(long = "halt-before", value_name = "STEP")]
    pub halt_before: Vec<String>,
    /// Halt after this step (repeatable).
    #[arg(long = "halt-after", value_name = "STEP")]
    pub halt_after: Vec<String>,
    /// Choose the run id.
    #[arg(long)]
    pub id: Option<String>,
    /// Hand the run to a background owner and print its id alone.
    #[arg(long)]
    pub detach: bool,
    /// Print the final report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn params(base: Vec<(String, String)>, extra: &[String]) -> Result<Vec<(String, String)>> {
    let mut all = base;
    for p in extra {
        match p.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => all.push((k.trim().to_string(), v.to_string())),
            _ => anyhow::bail!("expected NAME=VALUE, got \"{p}\""),
        }
    }
    Ok(all)
}

fn run_args(workflow: &str, params: Vec<(String, String)>, reason: String) -> RunArgs {
    RunArgs {
        workflow: workflow.to_string(),
        params,
        reason,
        halt_before: Vec::new(),
        halt_after: Vec::new(),
        detach: false,
        id: None,
        json: false,
    }
}

/// `lazarus backup`.
pub async fn backup(ctx: &Context, args: BackupArgs) -> Result<ExitCode> {
    match args.command {
        Some(BackupCommand::Import { file, database, id }) => {
            let path = std::fs::canonicalize(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {file}: {e}"))?;
            let mut base = vec![
                ("file".to_string(), path.display().to_string()),
                ("database".to_string(), database.clone()),
            ];
            if let Some(id) = id {
                base.push(("id".into(), id));
            }
            let reason = format!("import of {file} as a backup of {database}");
            execute::run(ctx, run_args("import", base, reason)).await
        }
        None => {
            let Some(database) = args.database else {
                anyhow::bail!("say which database: lazarus backup --database NAME");
            };
            let reason = args
                .reason
                .unwrap_or_else(|| format!("backup of {database}"));
            let mut run = run_args(
                "backup",
                params(vec![("database".into(), database)], &args.params)?,
                reason,
            );
            run.detach = args.detach;
            execute::run(ctx, run).await
        }
    }
}

pub use crate::size::human_size;

/// An RFC 3339 time to the second, for a table column (the JSON keeps milliseconds).
fn to_the_second(time: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(time)
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
        .unwrap_or_else(|_| time.to_string())
}

fn print_backups(backups: &[Manifest], note: &str) {
    if backups.is_empty() {
        println!("no backups in the catalog (try `lazarus catalog sync`)\n  looked with {note}");
        return;
    }
    println!(
        "{:<32} {:<12} {:<21} {:>10}  {:<14} {:<11} STORES",
        "BACKUP", "DATABASE", "TAKEN", "SIZE", "FORMAT", "STATUS"
    );
    for b in backups {
        println!(
            "{:<32} {:<12} {:<21} {:>10}  {:<14} {:<11} {}",
            b.id,
            b.database,
            to_the_second(&b.created_at),
            human_size(b.size),
            b.format,
            b.status,
            if b.missing_copies.is_empty() {
                b.copies.join(",")
            } else {
                format!(
                    "{}  ⚠ NOT IN {}",
                    b.copies.join(","),
                    b.missing_copies
                        .iter()
                        .map(|m| m.split(' ').next().unwrap_or(m))
                        .collect::<Vec<_>>()
                        .join(",")
                )
            }
        );
    }
}

/// `lazarus backups`.
pub async fn backups(ctx: &Context, args: BackupsArgs) -> Result<ExitCode> {
    let database = args.database.clone();
    let (list, session) = ctx
        .query(|c| {
            let database = database.clone();
            Box::pin(async move { c.backups(database.as_deref()).await })
        })
        .await?;
    session.finish().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print_backups(&list, &ctx.configuration_note());
    }
    Ok(ExitCode::SUCCESS)
}

/// `lazarus catalog`.
pub async fn catalog(ctx: &Context, command: CatalogCommand) -> Result<ExitCode> {
    let CatalogCommand::Sync { store } = command;
    let ((from, count), session) = ctx
        .query(|c| {
            let store = store.clone();
            Box::pin(async move { c.catalog_sync(store.as_deref()).await })
        })
        .await?;
    session.finish().await;
    println!("catalog rebuilt from store {from}: {count} backups");
    Ok(ExitCode::SUCCESS)
}

/// `lazarus expire`: the retention policy as a journaled run.
pub async fn expire(ctx: &Context, args: ExpireArgs) -> Result<ExitCode> {
    let mut base = vec![("dry_run".to_string(), args.dry_run.to_string())];
    if let Some(only) = args.only {
        base.push(("only".into(), only));
    }
    let reason = args.reason.unwrap_or_else(|| {
        if args.dry_run {
            "retention (dry run)".to_string()
        } else {
            "retention".to_string()
        }
    });
    execute::run(ctx, run_args("expire", base, reason)).await
}

/// `lazarus drill`.
pub async fn drill(ctx: &Context, args: DrillArgs) -> Result<ExitCode> {
    let mut base = vec![("database".to_string(), args.database.clone())];
    if let Some(id) = args.backup {
        base.push(("backup_id".into(), id));
    }
    let reason = args
        .reason
        .unwrap_or_else(|| format!("verification drill of {}", args.database));
    execute::run(ctx, run_args("drill", params(base, &args.params)?, reason)).await
}

/// `lazarus recover`.
pub async fn recover(ctx: &Context, args: RecoverArgs) -> Result<ExitCode> {
    let mut base = Vec::new();
    if let Some(database) = args.database.clone() {
        base.push(("database".to_string(), database));
    }
    let workflow = match args.target.spec() {
        Some(to) => {
            if args.backup.is_some() {
                anyhow::bail!(
                    "--backup picks a logical backup; with a point in time the plan picks the base backup"
                );
            }
            base.push(("to".into(), to));
            "pitr"
        }
        None => {
            if let Some(id) = args.backup {
                base.push(("backup_id".into(), id));
            }
            "disaster-recovery"
        }
    };
    let mut run = run_args(workflow, params(base, &args.params)?, args.reason);
    run.halt_before = args.halt_before;
    run.halt_after = args.halt_after;
    run.id = args.id;
    run.detach = args.detach;
    run.json = args.json;
    execute::run(ctx, run).await
}
