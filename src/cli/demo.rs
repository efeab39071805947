//! `lazarus demo`: the example runbook on a throwaway state directory — a run, a kill -9 of
//! the runner in the middle of a step, and a resume that finishes the job exactly once.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use super::Context;
use super::follow::follow;
use super::status::print_report;
use crate::owner::find_owner;

/// Arguments of `lazarus demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demo's directory (state and work) instead of removing it.
    #[arg(long)]
    pub keep: bool,
}

fn chunks(work: &Path) -> usize {
    std::fs::read_dir(work.join("incoming"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with("chunk-") && !name.ends_with(".tmp")
                })
                .count()
        })
        .unwrap_or(0)
}

/// `lazarus demo`.
pub async fn demo(ctx: &Context, args: DemoArgs) -> Result<ExitCode> {
    let root: PathBuf = std::env::temp_dir().join(format!("lazarus-demo-{}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let state = root.join("state");
    let work = root.join("work");
    let run = format!("demo-{}", std::process::id());
    println!("== Lazarus demo: the example runbook, a kill -9, a resume ==");
    println!("   state {}   work {}", state.display(), work.display());

    let exe = std::env::current_exe().context("cannot find the lazarus executable")?;
    let mut runner = std::process::Command::new(&exe)
        .arg("--state")
        .arg(&state)
        .arg("--operator")
        .arg(&ctx.operator)
        .args([
            "run",
            "example",
            "--id",
            &run,
            "--reason",
            "demo: show a kill -9 and a resume",
        ])
        .arg("--param")
        .arg(format!("workdir={}", work.display()))
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start the runner")?;
    let pid = runner.id();
    println!("== started runner pid {pid} ==");

    // Wait until the long step is well under way.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if chunks(&work) >= 6 {
            break;
        }
        if let Ok(Some(status)) = runner.try_wait() {
            bail!("the runner exited ({status}) before the demo could kill it");
        }
        if Instant::now() > deadline {
            let _ = runner.kill();
            bail!("the example runbook made no progress within 60s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .context("cannot kill the runner")?;
    let _ = runner.wait();
    let at_kill = chunks(&work);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = chunks(&work);
    println!();
    println!(
        "== kill -9 sent to runner pid {pid} in the middle of step \"generate\": {at_kill} of 20 chunks written =="
    );
    println!(
        "   half a second later: {after} chunks — the step's processes died with their runner"
    );

    let demo_ctx = Context {
        state: state.clone(),
        operator: ctx.operator.clone(),
        config: ctx.config.clone(),
    };
    if find_owner(&state).await.is_some() {
        bail!("an owner is still alive after the kill; this should not happen");
    }
    let session = demo_ctx.session().await?;
    println!("== the journal after the kill ==");
    print_report(&session.control().report(Some(&run)).await?);
    println!("== lazarus resume {run} ==");
    let message = session.control().resume(&run, &ctx.operator).await?;
    eprintln!("{message}");
    let report = follow(session.control(), &run, &ctx.operator, true).await?;
    session.finish().await;
    print_report(&report);
    let generate_attempts = report
        .steps
        .iter()
        .find(|s| s.id == "generate")
        .map_or(0, |s| s.attempts);
    println!(
        "== {}: step \"generate\" ran {generate_attempts} times, kept the {at_kill} chunks written before the kill, and every chunk verified ==",
        if report.success {
            "recovered"
        } else {
            "NOT recovered"
        }
    );
    if args.keep {
        println!("   kept {}", root.display());
    } else {
        let _ = std::fs::remove_dir_all(&root);
    }
    Ok(if report.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
