//! `run`, `resume` and `rollback`: the commands that set a run going and follow it.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::Args;

use super::follow::follow;
use super::serve::ensure_daemon;
use super::status::print_report;
use super::{Context, ControlFuture, exit};
use crate::activities::builtin_registry;
use crate::engine::{RunReport, Workflow};
use crate::owner::control::{Control, ControlError, RemoteControl};
use crate::owner::protocol::SubmitRequest;
use crate::runbooks;

fn parse_param(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected NAME=VALUE, got \"{text}\"")),
    }
}

/// Arguments of `lazarus run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Workflow: a file, ./workflows/NAME.toml, or a built-in runbook's name.
    pub workflow: String,
    /// A parameter, NAME=VALUE (repeatable).
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Why this run is needed (recorded; required).
    #[arg(long)]
    pub reason: String,
    /// Halt before this step (repeatable).
    #[arg(long = "halt-before", value_name = "STEP")]
    pub halt_before: Vec<String>,
    /// Halt after this step (repeatable).
    #[arg(long = "halt-after", value_name = "STEP")]
    pub halt_after: Vec<String>,
    /// Hand the run to a background owner and print its id alone.
    #[arg(long)]
    pub detach: bool,
    /// Choose the run id (default: WORKFLOW-xxxxxx).
    #[arg(long)]
    pub id: Option<String>,
    /// Print the final report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `lazarus resume`.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The run.
    pub run: String,
    /// Hand the run to a background owner and return at once.
    #[arg(long)]
    pub detach: bool,
    /// Print the final report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Take the run over from HOLDER (as `lazarus runs --from-stores` names it) before its
    /// lease expires: only once you are sure that host is down, or stopped. Audited.
    #[arg(long, value_name = "HOLDER")]
    pub force: Option<String>,
}

/// Arguments of `lazarus rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The run.
    pub run: String,
    /// Why it is being rolled back (recorded; required).
    #[arg(long)]
    pub reason: String,
    /// Hand the rollback to a background owner and return at once.
    #[arg(long)]
    pub detach: bool,
    /// Print the final report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Hands an operation to a background owner, waiting out an owner that is leaving or that
/// takes no runs (a passing `lazarus status`).
async fn detached<T>(
    ctx: &Context,
    mut op: impl for<'a> FnMut(&'a RemoteControl) -> ControlFuture<'a, T>,
) -> Result<T> {
    for _ in 0..200 {
        let remote = ensure_daemon(ctx).await?;
        match op(&remote).await {
            Err(ControlError::Retry) => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            other => return Ok(other?),
        }
    }
    bail!(
        "no lasting owner could be started for {}; see its owner.log",
        ctx.state.display()
    )
}

/// What the command wanted the run to end as.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Goal {
    Succeed,
    RollBack,
}

/// What a succeeded run stored but could not store everywhere: "ID is missing from STORE
/// (why)", one line per step that says so in its `missing_copies`.
pub fn fewer_copies(report: &RunReport) -> Vec<String> {
    report
        .steps
        .iter()
        .filter_map(|s| s.output.as_ref())
        .filter_map(|out| {
            let missing: Vec<&str> = out["missing_copies"]
                .as_array()?
                .iter()
                .filter_map(|m| m.as_str())
                .collect();
            if missing.is_empty() {
                return None;
            }
            let landed: Vec<&str> = out["copies"]
                .as_array()
                .map(|c| c.iter().filter_map(|s| s.as_str()).collect())
                .unwrap_or_default();
            Some(format!(
                "{} landed in {} of {} stores ({}); missing from {}",
                out["id"].as_str().unwrap_or("the backup"),
                landed.len(),
                landed.len() + missing.len(),
                landed.join(", "),
                missing.join("; ")
            ))
        })
        .collect()
}

fn exit_for(report: &RunReport, goal: Goal) -> ExitCode {
    let code = match (report.status.as_str(), goal) {
        ("succeeded", Goal::Succeed) if !fewer_copies(report).is_empty() => exit::FEWER_COPIES,
        ("succeeded", Goal::Succeed) | ("rolled_back", Goal::RollBack) => 0,
        ("halted" | "waiting_approval", _) => exit::HALTED,
        ("running" | "rolling_back", _) if !report.active => exit::INTERRUPTED,
        _ => exit::NOT_DONE,
    };
    ExitCode::from(code)
}

async fn follow_and_report(
    ctx: &Context,
    control: &dyn Control,
    run: &str,
    json: bool,
    goal: Goal,
) -> Result<ExitCode> {
    let report = follow(control, run, &ctx.operator, true).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    for warning in fewer_copies(&report) {
        eprintln!(
            "WARNING: {warning}. One more store failure loses it: fix that store (`lazarus storage check`) and run the backup again (exit status {})",
            exit::FEWER_COPIES
        );
    }
    Ok(exit_for(&report, goal))
}

/// `lazarus run`.
pub async fn run(ctx: &Context, args: RunArgs) -> Result<ExitCode> {
    let located = runbooks::locate(&args.workflow)?;
    // Check the file here, before touching the state directory.
    let workflow = Workflow::parse(&located.source, &located.text, &builtin_registry())?;
    let params: BTreeMap<String, String> = args.params.into_iter().collect();
    workflow
        .resolve_params(&params)
        .map_err(anyhow::Error::msg)?;
    let request = SubmitRequest {
        workflow_text: located.text,
        workflow_source: located.source,
        params,
        reason: args.reason,
        operator: ctx.operator.clone(),
        halt_before: args.halt_before,
        halt_after: args.halt_after,
        id: args.id,
    };
    if args.detach {
        let run = detached(ctx, |remote| {
            let request = request.clone();
            Box::pin(async move { remote.submit(request).await })
        })
        .await?;
        println!("{run}");
        return Ok(ExitCode::SUCCESS);
    }
    let (run, session) = ctx
        .call(|c| {
            let request = request.clone();
            Box::pin(async move { c.submit(request).await })
        })
        .await?;
    let code = follow_and_report(ctx, session.control(), &run, args.json, Goal::Succeed).await;
    session.finish().await;
    code
}

/// `lazarus resume`.
pub async fn resume(ctx: &Context, args: ResumeArgs) -> Result<ExitCode> {
    let by = ctx.operator.clone();
    if args.detach {
        let message = detached(ctx, |remote| {
            let (run, by, force) = (args.run.clone(), by.clone(), args.force.clone());
            Box::pin(async move { remote.resume(&run, &by, force.as_deref()).await })
        })
        .await?;
        println!("{message}");
        return Ok(ExitCode::SUCCESS);
    }
    let run = args.run.clone();
    let (message, session) = ctx
        .call(|c| {
            let (run, by, force) = (run.clone(), by.clone(), args.force.clone());
            Box::pin(async move { c.resume(&run, &by, force.as_deref()).await })
        })
        .await?;
    eprintln!("{message}");
    // Resuming a rollback aims at rolled_back; resuming anything else aims at success.
    let goal = match session.control().report(Some(&args.run)).await {
        Ok(report) if report.rollback.is_some() => Goal::RollBack,
        _ => Goal::Succeed,
    };
    let code = follow_and_report(ctx, session.control(), &args.run, args.json, goal).await;
    session.finish().await;
    code
}

/// `lazarus rollback`.
pub async fn rollback(ctx: &Context, args: RollbackArgs) -> Result<ExitCode> {
    if args.reason.trim().is_empty() {
        bail!("a reason is required: --reason \"why this run is being rolled back\"");
    }
    let by = ctx.operator.clone();
    if args.detach {
        let message = detached(ctx, |remote| {
            let (run, by, reason) = (args.run.clone(), by.clone(), args.reason.clone());
            Box::pin(async move { remote.rollback(&run, &by, &reason).await })
        })
        .await?;
        println!("{message}");
        return Ok(ExitCode::SUCCESS);
    }
    let (run, reason) = (args.run.clone(), args.reason.clone());
    let (message, session) = ctx
        .call(|c| {
            let (run, by, reason) = (run.clone(), by.clone(), reason.clone());
            Box::pin(async move { c.rollback(&run, &by, &reason).await })
        })
        .await
        .with_context(|| format!("cannot roll back run {}", args.run))?;
    eprintln!("{message}");
    let code =
        follow_and_report(ctx, session.control(), &args.run, args.json, Goal::RollBack).await;
    session.finish().await;
    code
}
