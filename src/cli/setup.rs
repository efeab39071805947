//! `init` and `key`: a starting configuration, and new encryption keys.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};

use crate::config::EXAMPLE;
use crate::crypto::keys;

/// Arguments of `lazarus init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to write (default ./lazarus.toml).
    #[arg(default_value = "lazarus.toml")]
    pub path: PathBuf,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

/// `lazarus key ...`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a new Fernet key: print it, or append it to a private key file.
    Generate {
        /// Append to this key file (created with mode 600) instead of printing.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

/// `lazarus init`.
pub fn init(args: InitArgs, state: &std::path::Path) -> Result<ExitCode> {
    if args.path.exists() && !args.force {
        bail!(
            "{} already exists; use --force to overwrite it",
            args.path.display()
        );
    }
    // The local store goes where the embedded default keeps it: STATE/store, wherever
    // the state directory is ($LAZARUS_STATE, --state), not beside the configuration.
    let store = std::path::absolute(state)
        .unwrap_or_else(|_| state.to_path_buf())
        .join("store");
    let text = EXAMPLE.replace(
        "path = \"state/store\"",
        &format!("path = {}", toml_string(&store.display().to_string())),
    );
    std::fs::write(&args.path, text)
        .with_context(|| format!("cannot write {}", args.path.display()))?;
    println!(
        "wrote {}: a commented example with one local store; add R2/B2 stores and a key file, then `lazarus storage check`",
        args.path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// `lazarus key`.
pub fn key(command: KeyCommand) -> Result<ExitCode> {
    match command {
        KeyCommand::Generate { file: None } => {
            println!("{}", keys::generate());
        }
        KeyCommand::Generate { file: Some(path) } => {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let key = keys::generate();
            writeln!(file, "{key}").with_context(|| format!("cannot write {}", path.display()))?;
            let id = keys::Key::parse(&key, "new key")?.id().to_string();
            println!(
                "appended key {id} to {}; the first key in the file encrypts, every key decrypts",
                path.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
