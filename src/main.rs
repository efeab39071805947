//! The `lazarus` binary: parse the command line, call the library.

use std::process::ExitCode;

use clap::Parser;
use lazarus::activities::supervise::supervise;
use lazarus::cli::{Cli, run};
use tracing_subscriber::EnvFilter;

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
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
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
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
