//! Following a run live: step lines and a progress bar, until nobody drives the run.
//! Ctrl-C (or SIGTERM) halts the followed run at once — it can be resumed — when the
//! follower started it; a mere watcher just stops watching.

use anyhow::{Result, anyhow};
use tokio::signal::unix::{SignalKind, signal};

use super::render::Renderer;
use crate::engine::RunReport;
use crate::owner::control::Control;
use crate::owner::protocol::FollowItem;

/// Follows `run` and returns its last report.
pub async fn follow(
    control: &dyn Control,
    run: &str,
    operator: &str,
    interrupt_halts: bool,
) -> Result<RunReport> {
    let mut items = control.follow(run).await?;
    let mut renderer = Renderer::new();
    let mut last: Option<RunReport> = None;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupts = 0u32;
    let mut end_error: Option<String> = None;
    loop {
        let interrupted = tokio::select! {
            item = items.recv() => {
                match item {
                    Some(FollowItem::Report { report }) => {
                        renderer.report(&report);
                        last = Some(*report);
                    }
                    Some(FollowItem::Progress { step, progress }) => renderer.progress(&step, &progress),
                    Some(FollowItem::End { error }) => { end_error = error; break; }
                    None => break,
                }
                false
            }
            _ = tokio::signal::ctrl_c() => true,
            _ = terminate.recv() => true,
        };
        if interrupted {
            interrupts += 1;
            if !interrupt_halts {
                renderer.finish();
                eprintln!("stopped watching; the run goes on (lazarus status {run})");
                break;
            }
            if interrupts > 1 {
                renderer.finish();
                eprintln!(
                    "exiting at once; the journal is consistent: `lazarus resume {run}` continues"
                );
                std::process::exit(130);
            }
            renderer.line(&format!(
                "interrupt: halting run {run} now (the running step stops and runs again on resume); interrupt again to exit at once"
            ));
            if let Err(e) = control
                .halt(run, &format!("{operator} (interrupt)"), true)
                .await
            {
                renderer.line(&format!("could not halt: {e}"));
            }
        }
    }
    renderer.finish();
    if let Some(error) = end_error {
        eprintln!("error: {error}");
    }
    match last {
        Some(report) if interrupt_halts => {
            // The follow stream ends when the owner stops driving the run; fetch the final word.
            Ok(control.report(Some(run)).await.unwrap_or(report))
        }
        Some(report) => Ok(report),
        None => Err(anyhow!("no report received for run {run}")),
    }
}
