//! `halt`, `approve` and `cancel`: control requests that take effect and return.

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;

use super::Context;

/// Arguments of `lazarus halt`.
#[derive(Debug, Args)]
pub struct HaltArgs {
    /// The run.
    pub run: String,
    /// Interrupt the running step now instead of waiting for it to finish.
    #[arg(long)]
    pub now: bool,
}

/// Arguments of `lazarus approve`.
#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The run.
    pub run: String,
    /// Who approves (recorded).
    #[arg(long)]
    pub by: String,
    /// A comment (recorded).
    #[arg(long)]
    pub comment: Option<String>,
}

/// Arguments of `lazarus cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The run.
    pub run: String,
}

/// `lazarus halt`.
pub async fn halt(ctx: &Context, args: HaltArgs) -> Result<ExitCode> {
    let by = ctx.operator.clone();
    let (message, session) = ctx
        .query(|c| {
            let (run, by) = (args.run.clone(), by.clone());
            Box::pin(async move { c.halt(&run, &by, args.now).await })
        })
        .await?;
    session.finish().await;
    println!("{message}");
    Ok(ExitCode::SUCCESS)
}

/// `lazarus approve`.
pub async fn approve(ctx: &Context, args: ApproveArgs) -> Result<ExitCode> {
    if args.by.trim().is_empty() {
        bail!("say who approves: --by NAME");
    }
    let (message, session) = ctx
        .query(|c| {
            let (run, by, comment) = (args.run.clone(), args.by.clone(), args.comment.clone());
            Box::pin(async move { c.approve(&run, &by, comment).await })
        })
        .await?;
    session.finish().await;
    println!("{message}");
    Ok(ExitCode::SUCCESS)
}

/// `lazarus cancel`.
pub async fn cancel(ctx: &Context, args: CancelArgs) -> Result<ExitCode> {
    let by = ctx.operator.clone();
    // `call`, not `query`: the cancel starts a cleanup of what the run made, which this
    // command waits for and shows.
    let (message, session) = ctx
        .call(|c| {
            let (run, by) = (args.run.clone(), by.clone());
            Box::pin(async move { c.cancel(&run, &by).await })
        })
        .await?;
    println!("{message}");
    let cleaned = super::follow::follow(session.control(), &args.run, &ctx.operator, false).await;
    session.finish().await;
    if let Ok(report) = cleaned {
        let lines: Vec<String> = report
            .steps
            .iter()
            .filter_map(|s| s.discarded.as_ref().map(|d| (s, d)))
            .filter(|(_, d)| !d.is_empty())
            .map(|(s, d)| super::render::cleanup_line(&s.id, d))
            .collect();
        if lines.is_empty() {
            println!("nothing to clean up");
        } else {
            println!("cleaned up:\n{}", lines.join("\n"));
        }
    }
    Ok(ExitCode::SUCCESS)
}
