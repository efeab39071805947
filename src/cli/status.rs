//! `status` and `runs`: where runs stand, for people and for machines.

use crate::engine::params::escape_controls;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use super::Context;
use super::follow::follow;
use crate::engine::RunReport;
use crate::engine::duration::format_duration;

/// Arguments of `lazarus status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The run (default: the latest).
    pub run: Option<String>,
    /// Print the run report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Keep watching until nobody drives the run.
    #[arg(long)]
    pub follow: bool,
}

/// Arguments of `lazarus runs`.
#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// List the runs whose journals are in the stores (from any host), not this state
    /// directory's: what a new host can resume.
    #[arg(long)]
    pub from_stores: bool,
}

fn seconds(s: f64) -> String {
    format_duration(Duration::from_secs_f64(s.max(0.0)))
}

fn mark(status: &str) -> &'static str {
    match status {
        "completed" => "✓",
        "running" | "compensating" => "▸",
        "failed" | "compensation_failed" => "✗",
        "waiting_approval" => "⏸",
        "compensated" => "↺",
        "skipped" => "⤼",
        _ => "·",
    }
}

/// Prints a report for people.
pub fn print_report(r: &RunReport) {
    let state = if r.active || r.is_finished() {
        r.status.clone()
    } else if matches!(r.status.as_str(), "running" | "rolling_back") {
        format!("{} (interrupted: no process is executing it)", r.status)
    } else {
        r.status.clone()
    };
    println!(
        "run {} — {} after {}",
        r.id,
        state,
        seconds(r.duration_seconds)
    );
    println!(
        "  workflow  {} (sha256 {}…) from {}",
        r.workflow,
        r.workflow_hash.get(..12).unwrap_or(&r.workflow_hash),
        r.workflow_source
    );
    println!(
        "  operator  {} — reason: {}",
        escape_controls(&r.operator),
        escape_controls(&r.reason)
    );
    if let Some(target) = &r.target {
        println!("  target    {target}");
    }
    for (name, value) in &r.results {
        let shown = value
            .as_str()
            .map_or_else(|| value.to_string(), String::from);
        println!("  {:<9} {shown}", name.replace('_', " "));
    }
    for path in &r.kept {
        println!("  kept      {path} (left by design: gc never removes it)");
    }
    println!(
        "  started   {}{}",
        r.started_at,
        r.ended_at
            .as_ref()
            .map(|e| format!("   ended {e}"))
            .unwrap_or_default()
    );
    let width = r.steps.iter().map(|s| s.id.len()).max().unwrap_or(4);
    for s in &r.steps {
        let mut detail = match (&s.status[..], s.duration_seconds) {
            ("completed" | "compensated", Some(d)) => seconds(d),
            _ => s.status.replace('_', " "),
        };
        if s.attempts > 1 {
            detail.push_str(&format!(" ({} attempts)", s.attempts));
        }
        if let Some(a) = &s.approval {
            detail.push_str(&format!(" — approved by {}", a.by));
        }
        if let Some(e) = &s.error {
            detail.push_str(&format!(" — {e}"));
        }
        if let Some(c) = &s.compensation {
            if c.completed {
                detail.push_str(" — undone");
            } else if let Some(e) = &c.error {
                detail.push_str(&format!(" — undo failed: {e}"));
            }
        }
        println!(
            "  {} {:width$}  {:<10} {detail}",
            mark(&s.status),
            s.id,
            s.activity
        );
        // Stores passed over (pre-flight or download), named with why: the JSON is not
        // the only place a damaged copy shows.
        let output = s.output.as_ref();
        for key in ["passed_over", "skipped"] {
            for bad in output.and_then(|o| o[key].as_array()).into_iter().flatten() {
                let why = bad["problem"].as_str().or(bad["reason"].as_str());
                if let (Some(store), Some(why)) = (bad["store"].as_str(), why) {
                    println!("  {:width$}    passed over store {store}: {why}", "");
                }
            }
        }
        if let Some(store) = output.and_then(|o| o["served_by"].as_str()) {
            println!("  {:width$}    served by store {store}", "");
        }
    }
    // A summary is written when its step runs: after a rollback, say it was, and what the
    // rollback undid, rather than leave "traffic cut over" standing.
    let undone: Vec<&str> = r
        .steps
        .iter()
        .filter(|s| s.compensation.as_ref().is_some_and(|c| c.completed))
        .map(|s| s.id.as_str())
        .collect();
    for s in &r.steps {
        if let Some(summary) = s.output.as_ref().and_then(|o| o["summary"].as_str()) {
            let when = if r.rollback.is_some() {
                "(before the rollback) "
            } else {
                ""
            };
            println!(
                "  summary   {when}{}",
                summary.replace('\n', "\n            ")
            );
        }
    }
    if let Some(rollback) = &r.rollback {
        println!(
            "  rollback  {} by {} — {}; undone: {}",
            r.status.replace('_', " "),
            rollback.get("by").map_or("?", String::as_str),
            rollback.get("reason").map_or("", String::as_str),
            if undone.is_empty() {
                "nothing".to_string()
            } else {
                undone.join(", ")
            }
        );
    }
    for s in &r.steps {
        if let Some(d) = s.discarded.as_ref().filter(|d| !d.is_empty()) {
            println!(
                "  cleanup  {}",
                super::render::cleanup_line(&s.id, d).trim_start_matches("  ⌫")
            );
        }
    }
    if let Some(error) = &r.error {
        println!("  error     {error}");
    }
    for copy in r.mirror.iter().filter(|m| m.behind > 0) {
        println!(
            "  mirror    store {} is {} events behind ({} copied){}",
            copy.store,
            copy.behind,
            copy.mirrored,
            copy.error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
    if let Some(next) = &r.next_action {
        println!("  next      {next}");
    }
}

/// `lazarus status`.
pub async fn status(ctx: &Context, args: StatusArgs) -> Result<ExitCode> {
    // Looking creates nothing: no state directory means no runs.
    if !ctx.state.is_dir() {
        let missing = format!(
            "the state directory {} does not exist (pass --state DIR or set LAZARUS_STATE to where the runs live)",
            ctx.state.display()
        );
        let message = match &args.run {
            Some(run) => format!("no run \"{run}\"; `lazarus runs` lists the runs ({missing})"),
            None => format!("no runs: {missing}"),
        };
        return Ok(no_report(args.json, &message));
    }
    let run = args.run.clone();
    let asked = ctx
        .query(|c| {
            let run = run.clone();
            Box::pin(async move { c.report(run.as_deref()).await })
        })
        .await;
    let (report, session) = match asked {
        Ok(found) => found,
        Err(e) if args.json => return Ok(no_report(true, &e.to_string())),
        Err(e) => return Err(e),
    };
    let report = if args.follow && report.active {
        follow(session.control(), &report.id, &ctx.operator, false).await?
    } else {
        report
    };
    let alerts = session.control().alerts().await.ok();
    session.finish().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
        if let Some(alerts) = alerts {
            print!("{}", alert_lines(&alerts));
        }
        if let Some(watch) = crate::ops::watch::last_verdicts(&ctx.state) {
            for f in watch.findings.iter().filter(|f| f.over) {
                println!("  ⚠ watch   {} (checked {})", f.text, watch.checked_at);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `status` says about alert delivery, when there is something to say.
fn alert_lines(state: &crate::ops::alerts::AlertState) -> String {
    let mut out = String::new();
    for broken in &state.broken {
        out.push_str(&format!("ALERT NOT SET UP: {broken}\n"));
    }
    if state.waiting > 0 {
        out.push_str(&format!(
            "alerts: {} event(s) not delivered yet; retried with backoff by the process that owns the state directory\n",
            state.waiting
        ));
        for (alert, error) in &state.last_errors {
            out.push_str(&format!("  alert {alert}: last attempt: {error}\n"));
        }
    }
    out
}

/// No report to show: the reason, as JSON (`{"error": ...}`) when asked for JSON; exit 1.
fn no_report(json: bool, message: &str) -> ExitCode {
    if json {
        println!("{}", serde_json::json!({ "error": message }));
    } else {
        eprintln!("{message}");
    }
    ExitCode::FAILURE
}

/// A run found in the stores, as `runs --from-stores` shows it.
#[derive(serde::Serialize)]
struct StoredRun {
    #[serde(flatten)]
    summary: crate::engine::RunSummary,
    /// Events in the fullest copy.
    events: usize,
    /// The store that copy is in.
    store: String,
    /// Who holds the run's lease, unless they let it go.
    driven_by: Option<String>,
    /// When that lease runs out unless renewed, RFC 3339.
    lease_until: Option<String>,
}

/// `lazarus runs --from-stores`: read from the stores alone, without this host's journal.
async fn runs_from_stores(ctx: &Context, json: bool) -> Result<ExitCode> {
    let services = ctx.services()?;
    let registry = crate::activities::registry(Arc::clone(&services));
    let (copies, failures) = crate::mirror::read::all_runs(&services.stores).await;
    let mut runs = Vec::new();
    for copy in &copies {
        let summary = match crate::engine::adopt::summarize_copy(copy, &registry) {
            Ok(summary) => summary,
            Err(e) => {
                eprintln!(
                    "warning: run {} in store {} cannot be read by this lazarus: {e}",
                    copy.record.id, copy.source
                );
                continue;
            }
        };
        let lease = crate::mirror::read::lease(&services.stores, &copy.record.id).await;
        let live = lease.filter(|(l, _)| !l.released);
        runs.push(StoredRun {
            summary,
            events: copy.events.len(),
            store: copy.source.clone(),
            driven_by: live.as_ref().map(|(l, _)| l.holder.clone()),
            lease_until: live.as_ref().and_then(|(l, _)| {
                let until = l.renewed_at_us + i64::try_from(l.duration_ms).unwrap_or(0) * 1000;
                chrono::DateTime::from_timestamp_micros(until)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            }),
        });
    }
    for failure in &failures {
        eprintln!("warning: {failure}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(ExitCode::SUCCESS);
    }
    if runs.is_empty() {
        println!(
            "no runs in the stores ({})",
            services.stores.names().join(", ")
        );
        return Ok(ExitCode::SUCCESS);
    }
    let width = runs.iter().map(|r| r.summary.id.len()).max().unwrap_or(3);
    println!(
        "{:width$}  {:<18} {:<24} {:<8} {:<10} DRIVEN BY",
        "RUN", "STATUS", "STARTED", "EVENTS", "STORE"
    );
    for r in &runs {
        let driven = match (&r.driven_by, &r.lease_until) {
            (Some(holder), Some(until)) => format!("{holder} (lease until {until})"),
            _ => "-".to_string(),
        };
        println!(
            "{:width$}  {:<18} {:<24} {:<8} {:<10} {driven}",
            r.summary.id, r.summary.status, r.summary.started_at, r.events, r.store
        );
    }
    println!("(`lazarus resume RUN` on any host continues an unfinished run from its copy)");
    Ok(ExitCode::SUCCESS)
}

/// `lazarus runs`.
pub async fn runs(ctx: &Context, args: RunsArgs) -> Result<ExitCode> {
    if args.from_stores {
        return runs_from_stores(ctx, args.json).await;
    }
    if !ctx.state.is_dir() {
        if args.json {
            println!("[]");
        } else {
            println!(
                "no runs: the state directory {} does not exist (pass --state DIR or set LAZARUS_STATE)",
                ctx.state.display()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (runs, session) = ctx
        .query(|c| Box::pin(async move { c.runs().await }))
        .await?;
    session.finish().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(ExitCode::SUCCESS);
    }
    if runs.is_empty() {
        println!("no runs yet in {}", ctx.state.display());
        return Ok(ExitCode::SUCCESS);
    }
    let width = runs.iter().map(|r| r.id.len()).max().unwrap_or(2);
    println!(
        "{:width$}  {:<18} {:<24} {:<20} REASON",
        "RUN", "STATUS", "STARTED", "OPERATOR"
    );
    for r in runs {
        let status = if r.active {
            format!("{}*", r.status)
        } else {
            r.status.clone()
        };
        println!(
            "{:width$}  {:<18} {:<24} {:<20} {}",
            r.id,
            status,
            r.started_at,
            escape_controls(&r.operator),
            escape_controls(&r.reason)
        );
    }
    println!("(* = being executed now)");
    Ok(ExitCode::SUCCESS)
}
