//! `serve`: a standing owner of the state directory; and the background owner that
//! `--detach` starts.

use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

use super::Context;
use crate::api;
use crate::owner::control::RemoteControl;
use crate::owner::{Session, find_owner};

/// Arguments of `lazarus serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Exit once no run has been executing for a few seconds (used by --detach; serves no
    /// HTTP).
    #[arg(long)]
    pub exit_when_idle: bool,
    /// Where the HTTP API answers (default: `[api] listen`, else 127.0.0.1:7345; port 0
    /// picks a free one).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Serve the control socket only, no HTTP.
    #[arg(long, conflicts_with = "listen")]
    pub no_http: bool,
}

/// How long an idle background owner lingers.
const IDLE_EXIT: Duration = Duration::from_secs(5);

/// `lazarus serve`.
pub async fn serve(ctx: &Context, args: ServeArgs) -> Result<ExitCode> {
    let session = ctx.session().await?;
    let owned = match &session {
        Session::Owned(owned) => owned,
        Session::Remote(remote) => bail!(
            "process {} already owns {}; it serves the control socket",
            remote.owner_pid(),
            ctx.state.display()
        ),
    };
    let engine = std::sync::Arc::clone(owned.engine());
    tracing::info!(pid = std::process::id(), state = %ctx.state.display(), "serving");
    let http = if args.exit_when_idle || args.no_http {
        None
    } else {
        Some(start_http(ctx, owned, args.listen.as_deref()).await?)
    };
    let watch = (!args.exit_when_idle)
        .then(|| start_watch(ctx, owned))
        .transpose()?;
    let schedules = (!args.exit_when_idle)
        .then(|| start_schedules(ctx, owned))
        .transpose()?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut idle_since = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                if !engine.active_runs().is_empty() {
                    idle_since = Instant::now();
                } else if args.exit_when_idle && idle_since.elapsed() >= IDLE_EXIT {
                    break;
                }
            }
        }
    }
    if let Some(http) = http {
        http.abort();
    }
    if let Some(watch) = watch {
        watch.abort();
    }
    if let Some(schedules) = schedules {
        schedules.abort();
    }
    engine.interrupt_all(&format!(
        "lazarus serve (pid {}) stopping",
        std::process::id()
    ));
    session.finish().await;
    Ok(ExitCode::SUCCESS)
}

/// The `[[schedules]]`: runs started on a timetable.
fn start_schedules(
    ctx: &Context,
    owned: &crate::owner::Owned,
) -> Result<tokio::task::JoinHandle<()>> {
    let loaded = ctx.loaded_config()?;
    let schedules = crate::ops::schedule::parse(&loaded.config.schedules)
        .map_err(|e| anyhow!("{}: {e}", loaded.source))?;
    for s in &schedules {
        tracing::info!(schedule = %s.name, runbook = %s.runbook, next = ?s.cron.upcoming(chrono::Utc).next(), "scheduled");
    }
    let ops = std::sync::Arc::clone(owned.ops());
    let state = ctx.state.clone();
    Ok(tokio::spawn(crate::ops::schedule::run(
        ops, state, schedules,
    )))
}

/// The RPO and backup-age watch, every `[watch] every`.
fn start_watch(ctx: &Context, owned: &crate::owner::Owned) -> Result<tokio::task::JoinHandle<()>> {
    let loaded = ctx.loaded_config()?;
    let every = match &loaded.config.watch.every {
        Some(text) => crate::engine::duration::parse_duration(text)
            .map_err(|e| anyhow!("{}: [watch] every: {e}", loaded.source))?,
        None => crate::ops::watch::DEFAULT_EVERY,
    };
    let parse = |name: &str, text: &Option<String>| -> Result<Option<Duration>> {
        text.as_deref()
            .map(crate::engine::duration::parse_duration)
            .transpose()
            .map_err(|e| anyhow!("{}: [watch] {name}: {e}", loaded.source))
    };
    let targets = crate::ops::watch::Targets {
        rpo: parse("rpo", &loaded.config.watch.rpo)?,
        backup_max_age: parse("backup_max_age", &loaded.config.watch.backup_max_age)?,
    };
    let ops = std::sync::Arc::clone(owned.ops());
    let state = ctx.state.clone();
    Ok(tokio::spawn(async move {
        let mut seen = std::collections::HashMap::new();
        loop {
            crate::ops::watch::round(&ops, &targets, &state, &mut seen).await;
            tokio::time::sleep(every).await;
        }
    }))
}

/// Binds the HTTP API and serves it in the background.
async fn start_http(
    ctx: &Context,
    owned: &crate::owner::Owned,
    listen: Option<&str>,
) -> Result<tokio::task::JoinHandle<()>> {
    let loaded = ctx.loaded_config()?;
    let addr = listen
        .map(String::from)
        .or_else(|| loaded.config.api.listen.clone())
        .unwrap_or_else(|| api::DEFAULT_LISTEN.to_string());
    let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| {
        format!(
            "cannot listen on {addr} for the HTTP API; pass --listen ADDR (port 0 picks a free one), or --no-http"
        )
    })?;
    let bound = listener.local_addr()?;
    let resolve = |p: &std::path::Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            loaded.base.join(p)
        }
    };
    let tls = match (&loaded.config.api.tls_cert, &loaded.config.api.tls_key) {
        (Some(cert), Some(key)) => Some(api::tls::acceptor(&resolve(cert), &resolve(key))?),
        (None, None) => None,
        _ => bail!(
            "{}: [api] needs both tls_cert and tls_key for HTTPS, or neither",
            loaded.source
        ),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let tokens = std::sync::Arc::new(crate::ops::tokens::Tokens::new(&loaded));
    let note = if tokens.is_empty() {
        "no API token is configured yet: make one with `lazarus token create --name NAME --role admin`"
    } else {
        "callers need a token (`lazarus token create`)"
    };
    eprintln!(
        "lazarus serve: HTTP API on {scheme}://{bound}/api, web page on {scheme}://{bound}/ ({note})"
    );
    let state = api::ApiState {
        ops: std::sync::Arc::clone(owned.ops()),
        tokens,
        throttle: std::sync::Arc::new(api::Throttle::default()),
    };
    Ok(tokio::spawn(async move {
        match tls {
            Some(acceptor) => api::tls::serve(listener, acceptor, api::router(state)).await,
            None => {
                if let Err(e) = api::serve(listener, state).await {
                    tracing::error!(error = %e, "the HTTP API stopped");
                }
            }
        }
    }))
}

/// The background owner to hand a run to: the current owner, or a new
/// `lazarus serve --exit-when-idle` started for the purpose.
pub async fn ensure_daemon(ctx: &Context) -> Result<RemoteControl> {
    let session = ctx.session().await?;
    match session {
        Session::Remote(remote) => return Ok(remote),
        owned @ Session::Owned(_) => {
            if let Some(engine) = owned.engine() {
                engine.close_if_idle();
            }
            owned.finish().await
        }
    }
    let log_path = ctx.state.join("owner.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the lazarus executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--state")
        .arg(&ctx.state)
        .arg("--operator")
        .arg(&ctx.operator)
        .args(["-v", "serve", "--exit-when-idle"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // A session of its own: the background owner survives the terminal that started it.
    unsafe_setsid(&mut cmd);
    cmd.spawn()
        .context("cannot start a background lazarus owner")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(remote) = find_owner(&ctx.state).await {
            return Ok(remote);
        }
        if Instant::now() > deadline {
            return Err(anyhow!(
                "the background owner did not start; see {}",
                log_path.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn unsafe_setsid(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}
