//! The command line: one file per subcommand family, human output by default and `--json`
//! for machines. This is the edge of the program, so errors are `anyhow`.

mod audit;
mod backups;
mod demo;
mod execute;
mod follow;
mod gc;
mod manage;
mod render;
mod serve;
mod setup;
mod status;
mod storage;
mod token;
mod wal;
mod workflows;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use std::sync::Arc;

use crate::activities::Services;
use crate::config::Loaded;
use crate::owner::control::{Control, ControlError};
use crate::owner::{Session, connect_or_own};

/// Lazarus: a durable runbook engine that recovers PostgreSQL from disaster.
#[derive(Debug, Parser)]
#[command(name = "lazarus", version, about, long_about = None)]
pub struct Cli {
    /// Directory of the journal and control socket.
    #[arg(long, global = true, env = "LAZARUS_STATE", default_value = "state")]
    pub state: PathBuf,
    /// Configuration file (default: $LAZARUS_CONFIG, else ./lazarus.toml, else built-in).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Who is acting (recorded with every run and control request).
    #[arg(long, global = true, env = "LAZARUS_OPERATOR")]
    pub operator: Option<String>,
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a run of a workflow (a file, ./workflows/NAME.toml, or a built-in runbook).
    #[command(
        after_help = "Examples:\n  lazarus run example --reason \"trying lazarus\"\n  lazarus run base-backup --reason nightly\n  lazarus run my-runbook.toml --reason \"...\" -p database=shop --halt-before cutover"
    )]
    Run(execute::RunArgs),
    /// Continue a halted, failed or interrupted run from its journal.
    #[command(
        after_help = "Examples:\n  lazarus resume disaster-recovery-3f2a1c\n  lazarus resume RUN --detach"
    )]
    Resume(execute::ResumeArgs),
    /// Halt a run at the next step boundary (or at once with --now).
    Halt(manage::HaltArgs),
    /// Approve the step a run waits at.
    Approve(manage::ApproveArgs),
    /// Undo a run: compensations of its completed steps, newest first.
    #[command(
        after_help = "Example:\n  lazarus rollback RUN --reason \"wrong backup: traffic back to the old database\""
    )]
    Rollback(execute::RollbackArgs),
    /// Stop a run for good, without compensation; what it made is cleaned up.
    Cancel(manage::CancelArgs),
    /// Remove what no live run needs: leftovers of cancelled, rolled-back and refused runs.
    #[command(after_help = "Examples:\n  lazarus gc --dry-run\n  lazarus gc")]
    Gc(gc::GcArgs),
    /// Show a run's report (the latest run by default).
    Status(status::StatusArgs),
    /// List runs.
    Runs(status::RunsArgs),
    /// List the workflows visible from here.
    Workflows(workflows::ListArgs),
    /// Check workflow files.
    Validate(workflows::ValidateArgs),
    /// List the activities steps can use, with their inputs.
    Activities,
    /// Back up a database (pg_dump, zstd, encrypt, every store), or import an old backup.
    #[command(
        after_help = "Examples:\n  lazarus backup --database shop\n  lazarus backup import old.dump.gz.enc --database shop\n\nExit status 6: the backup landed in fewer stores than are configured."
    )]
    Backup(backups::BackupArgs),
    /// List backups (from the catalog; rebuilt from the stores when empty).
    Backups(backups::BackupsArgs),
    /// The backup catalog.
    #[command(subcommand)]
    Catalog(backups::CatalogCommand),
    /// Remove backups and WAL outside the retention window ([retention] in lazarus.toml).
    #[command(
        after_help = "Examples:\n  lazarus expire --dry-run\n  lazarus expire\n  lazarus expire --only shop\n\nKeeps every backup inside the recovery window, the newest min_backups, the newest VERIFIED backup, and for an archive the newest base backup before the window and all the WAL it needs; prints the point-in-time window that is left."
    )]
    Expire(backups::ExpireArgs),
    /// Restore a backup into a scratch database, check it, mark it VERIFIED or FAILED.
    #[command(
        after_help = "Examples:\n  lazarus drill --database shop\n  lazarus drill --database shop --backup shop-20261124T213500Z"
    )]
    Drill(backups::DrillArgs),
    /// Recover a database: the disaster-recovery runbook (restore beside, check, cut over).
    #[command(
        after_help = "Examples:\n  lazarus recover --database shop --reason \"primary lost its disk\"\n  lazarus recover --database shop --backup shop-20261124T213500Z --reason \"...\" -p cutover=none\n  lazarus recover --database shop --reason \"...\" --halt-before cutover\n  lazarus recover --to 2026-11-24T02:14:00Z --database shop --reason \"bad migration at 02:15\"\n\n`lazarus workflows` lists every -p parameter of the runbooks and their step ids."
    )]
    Recover(backups::RecoverArgs),
    /// Write a commented example lazarus.toml.
    Init(setup::InitArgs),
    /// Encryption keys.
    #[command(subcommand)]
    Key(setup::KeyCommand),
    /// Check and list the configured stores.
    #[command(subcommand)]
    Storage(storage::StorageCommand),
    /// Own the state directory: drive runs, serve the control socket and the HTTP API.
    #[command(
        after_help = "Examples:\n  lazarus serve                       # API on 127.0.0.1:7345\n  lazarus serve --listen 0.0.0.0:7345\n\nMake a token first: lazarus token create --name alice --role admin"
    )]
    Serve(serve::ServeArgs),
    /// API tokens for `serve` (stored as hashes in the configuration).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// The audit trail of every control action; `audit verify` checks its hash chain.
    #[command(after_help = "Examples:\n  lazarus audit\n  lazarus audit verify")]
    Audit(audit::AuditArgs),
    /// Show a run, a kill -9 and a resume, on a throwaway state directory.
    Demo(demo::DemoArgs),
    /// The WAL archive: push/fetch (archive_command, restore_command), list, check, status.
    #[command(subcommand)]
    Wal(wal::WalCommand),
    /// Point-in-time recovery planning.
    #[command(subcommand)]
    Pitr(wal::PitrCommand),
}

/// The future a control operation returns.
pub type ControlFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, ControlError>> + Send + 'a>>;

/// Shared settings of one invocation.
pub(crate) struct Context {
    pub state: PathBuf,
    pub operator: String,
    pub config: Option<PathBuf>,
}

impl Context {
    fn new(cli: &Cli) -> Self {
        let operator = cli
            .operator
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .or_else(|| std::env::var("LOGNAME").ok())
            .or_else(|| {
                nix::unistd::User::from_uid(nix::unistd::getuid())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .filter(|o| !o.trim().is_empty())
            .unwrap_or_else(|| format!("uid-{}", nix::unistd::getuid()));
        Self {
            state: cli.state.clone(),
            operator,
            config: cli.config.clone(),
        }
    }

    /// The configuration in force.
    pub fn loaded_config(&self) -> Result<Loaded> {
        Ok(Loaded::load(self.config.as_deref())?)
    }

    /// Which configuration and stores a command used, for an empty listing: a command run
    /// where there is no `lazarus.toml` silently uses the embedded default.
    pub fn configuration_note(&self) -> String {
        let Ok(loaded) = self.loaded_config() else {
            return String::new();
        };
        let stores = loaded
            .stores(&self.state)
            .map(|set| {
                set.stores()
                    .iter()
                    .map(|s| format!("{} ({})", s.name(), s.describe()))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        match &loaded.file {
            Some(file) => format!("configuration {}; stores: {stores}", file.display()),
            None => format!(
                "the embedded default configuration (no lazarus.toml here, no --config); stores: {stores}"
            ),
        }
    }

    /// Stores and keys as configured.
    pub fn services(&self) -> Result<Arc<Services>> {
        let loaded = self.loaded_config()?;
        let stores = loaded.stores(&self.state)?;
        let (tools, server) = loaded.postgres()?;
        Ok(Arc::new(
            Services::new(stores, loaded.keys_file())
                .with_postgres(tools, server)
                .with_config_file(loaded.file.clone())
                .with_retention(loaded.config.retention.clone()),
        ))
    }

    /// Reaches the owner of the state directory, or becomes it (with this configuration).
    pub async fn session(&self) -> Result<Session> {
        Ok(connect_or_own(&self.state, self.services()?).await?)
    }

    /// Runs an operation that may start a run (run, resume, rollback), reconnecting if the
    /// owner it reached was going away.
    pub async fn call<T>(
        &self,
        op: impl for<'a> FnMut(&'a dyn Control) -> ControlFuture<'a, T>,
    ) -> Result<(T, Session)> {
        self.call_as(true, op).await
    }

    /// Runs an operation that only looks or asks (status, halt, approve, cancel). If this
    /// process ends up owning the store, it takes no runs from others, so a quick `status`
    /// never ends up executing somebody's recovery.
    pub async fn query<T>(
        &self,
        op: impl for<'a> FnMut(&'a dyn Control) -> ControlFuture<'a, T>,
    ) -> Result<(T, Session)> {
        self.call_as(false, op).await
    }

    async fn call_as<T>(
        &self,
        takes_runs: bool,
        mut op: impl for<'a> FnMut(&'a dyn Control) -> ControlFuture<'a, T>,
    ) -> Result<(T, Session)> {
        // An owner that is closing (a `status` that held the store for a moment) answers
        // "connect again". Someone polling `status` in a loop starts such owners one after
        // another: retry soon and at varied moments, so the gap between two of them is found,
        // for up to 30 s.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let session = self.session().await?;
            if let (false, Some(engine)) = (takes_runs, session.engine()) {
                engine.close_if_idle();
            }
            let result = op(session.control()).await;
            match result {
                Err(ControlError::Retry) if std::time::Instant::now() < deadline => {
                    session.finish().await;
                    let pause = 5 + rand::random::<u64>() % 25;
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                }
                Err(e) => {
                    session.finish().await;
                    return Err(e.into());
                }
                Ok(value) => return Ok((value, session)),
            }
        }
    }
}

/// Exit statuses beyond 0 (success) and 1 (error).
pub mod exit {
    /// The run halted or waits for approval.
    pub const HALTED: u8 = 3;
    /// The run failed, was cancelled, or was rolled back (when that was not the goal).
    pub const NOT_DONE: u8 = 4;
    /// Nobody drives the run any more (its owner went away).
    pub const INTERRUPTED: u8 = 5;
    /// The run succeeded, but what it stored landed in fewer stores than are configured.
    pub const FEWER_COPIES: u8 = 6;
}

/// Runs the command line.
pub async fn run(cli: Cli) -> Result<ExitCode> {
    let ctx = Context::new(&cli);
    match cli.command {
        Command::Run(args) => execute::run(&ctx, args).await,
        Command::Resume(args) => execute::resume(&ctx, args).await,
        Command::Rollback(args) => execute::rollback(&ctx, args).await,
        Command::Halt(args) => manage::halt(&ctx, args).await,
        Command::Approve(args) => manage::approve(&ctx, args).await,
        Command::Cancel(args) => manage::cancel(&ctx, args).await,
        Command::Gc(args) => gc::gc(&ctx, args).await,
        Command::Status(args) => status::status(&ctx, args).await,
        Command::Runs(args) => status::runs(&ctx, args).await,
        Command::Workflows(args) => workflows::list(args),
        Command::Validate(args) => workflows::validate(args),
        Command::Activities => workflows::activities(),
        Command::Backup(args) => backups::backup(&ctx, args).await,
        Command::Backups(args) => backups::backups(&ctx, args).await,
        Command::Catalog(command) => backups::catalog(&ctx, command).await,
        Command::Drill(args) => backups::drill(&ctx, args).await,
        Command::Expire(args) => backups::expire(&ctx, args).await,
        Command::Recover(args) => backups::recover(&ctx, args).await,
        Command::Init(args) => setup::init(args, &cli.state),
        Command::Key(command) => setup::key(command),
        Command::Storage(command) => storage::storage(&ctx, command).await,
        Command::Serve(args) => serve::serve(&ctx, args).await,
        Command::Token(command) => token::token(&ctx, command),
        Command::Audit(args) => audit::audit(&ctx, args).await,
        Command::Demo(args) => demo::demo(&ctx, args).await,
        Command::Wal(command) => wal::wal(&ctx, command).await,
        Command::Pitr(command) => wal::pitr(&ctx, command).await,
    }
}
