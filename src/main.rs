//! The `lazarus` binary: parse the command line, call the library.

use std::process::ExitCode;

use clap::Parser;
use lazarus::activities::supervise::supervise;
use lazarus::cli::{Cli, Command, run};
use lazarus::telemetry::Telemetry;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // The command supervisor starts for every command step: keep it free of everything else.
    if args.get(1).map(String::as_str) == Some("__supervise") {
        let argv = match args.iter().position(|a| a == "--") {
            Some(i) => &args[i + 1..],
            None => &args[2..],
        };
        let code = supervise(argv);
        return ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1));
    }
    quiet_on_closed_stdout();
    lazarus::allocator::reuse_large_buffers();
    // One TLS provider for every client (S3, webhooks, Kubernetes): kube-rs cannot pick one
    // on its own when more than one is linked.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let default_level = match cli.verbose {
        0 => "error",
        1 => "info",
        _ => "debug",
    };
    // Traces only where runs are driven: `wal push`/`fetch` are short processes PostgreSQL
    // starts per segment and must stay fast.
    let telemetry = if matches!(cli.command, Command::Wal(_)) {
        None
    } else {
        start_telemetry(&cli)
    };
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .with_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        );
    tracing_subscriber::registry()
        .with(logs)
        .with(telemetry.as_ref().map(|t| t.layer()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    drop(runtime);
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    code
}

/// The OpenTelemetry exporter, when the configuration or the `OTEL_*` environment names an
/// endpoint; a broken setting is said once and the command goes on without traces.
fn start_telemetry(cli: &Cli) -> Option<std::sync::Arc<Telemetry>> {
    let configured = lazarus::config::Loaded::load(cli.config.as_deref())
        .ok()
        .and_then(|l| l.config.telemetry.otlp_endpoint);
    match Telemetry::from_config(configured.as_deref()) {
        Ok(telemetry) => telemetry.map(Telemetry::install),
        Err(e) => {
            eprintln!("warning: {e}; continuing without traces");
            None
        }
    }
}

/// `lazarus … | head -1`: when the reader of stdout goes away, printing more is pointless,
/// not a bug. `println!` panics on the closed pipe; end quietly (exit 0) instead, like other
/// command-line tools, and leave every other panic as it was.
fn quiet_on_closed_stdout() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        previous(info);
    }));
}
