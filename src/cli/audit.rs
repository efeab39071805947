//! `lazarus audit`: the trail of every control action; `audit verify` recomputes its chain
//! and compares it with every store's copy.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::Context;

/// Arguments of `lazarus audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Verify instead of list.
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// Print JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `lazarus audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chain and compare it with each store's copy; names the first
    /// broken link (exit 1 when anything is wrong).
    Verify,
}

/// `lazarus audit [verify]`.
pub async fn audit(ctx: &Context, args: AuditArgs) -> Result<ExitCode> {
    if let Some(AuditCommand::Verify) = args.command {
        let (found, session) = ctx
            .query(|c| Box::pin(async move { c.audit_verify().await }))
            .await?;
        session.finish().await;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&found)?);
        } else {
            println!(
                "{} entries in the journal; newest links as {}",
                found.entries,
                &found.head[..16.min(found.head.len())]
            );
            for copy in &found.stores {
                match &copy.error {
                    Some(e) => println!("store {}: could not be checked: {e}", copy.store),
                    None => println!(
                        "store {}: {} entries (the mirror put {} there)",
                        copy.store, copy.entries, copy.mirrored
                    ),
                }
            }
            match found.problems.first() {
                None => println!("the chain is intact"),
                Some(first) => {
                    println!(
                        "BROKEN at entry {} ({}): {}",
                        first.seq, first.place, first.what
                    );
                    for p in &found.problems[1..] {
                        println!("  also entry {} ({}): {}", p.seq, p.place, p.what);
                    }
                }
            }
        }
        let unchecked = found.stores.iter().any(|c| c.error.is_some());
        return Ok(if found.problems.is_empty() && !unchecked {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let (entries, session) = ctx
        .query(|c| Box::pin(async move { c.audit().await }))
        .await?;
    session.finish().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(ExitCode::SUCCESS);
    }
    if entries.is_empty() {
        println!("no control actions recorded yet");
    }
    for e in &entries {
        let outcome = match e.outcome {
            crate::ops::audit::Outcome::Accepted => "",
            crate::ops::audit::Outcome::Refused => " REFUSED",
        };
        let line = format!(
            "{:>5} {} {} ({}, {}): {}{}{}{} — {}",
            e.seq,
            e.at,
            e.identity,
            e.role,
            e.via,
            e.action,
            e.run
                .as_deref()
                .map(|r| format!(" {r}"))
                .unwrap_or_default(),
            outcome,
            e.reason
                .as_deref()
                .map(|r| format!(" (reason: {r})"))
                .unwrap_or_default(),
            e.message
        );
        // Entries written before reasons were checked may hold escapes: never replay them.
        println!("{}", crate::engine::params::escape_controls(&line));
    }
    Ok(ExitCode::SUCCESS)
}
