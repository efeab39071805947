//! `lazarus token create`: a new API token, shown once; the configuration keeps its hash.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};

use super::Context;
use crate::ops::actor::Role;
use crate::ops::tokens::{new_token, token_hash};

/// `lazarus token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token for the HTTP API and the web page; it is printed once.
    #[command(
        after_help = "Example:\n  lazarus token create --name alice --role admin\n\nThe token goes to stdout, once. With a configuration file in use its hash is appended\nthere as a [[tokens]] entry (owner, mode and every other byte of the file kept); with the\nembedded default, the entry to add to lazarus.toml is printed instead."
    )]
    Create(CreateArgs),
}

/// Arguments of `lazarus token create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The identity the token acts as (kept with every action in the audit trail).
    #[arg(long)]
    pub name: String,
    /// viewer (read), operator (backups, drills, halt, resume, approve) or admin
    /// (recoveries, PITR, rollback, cancel, in-place restores).
    #[arg(long)]
    pub role: String,
}

/// The `[[tokens]]` entry for a token's hash.
fn entry(name: &str, role: Role, hash: &str) -> String {
    format!(
        "[[tokens]]\nname = {}\nrole = \"{role}\"\nsha256 = \"{hash}\"\n",
        toml_string(name)
    )
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// `lazarus token …`.
pub fn token(ctx: &Context, command: TokenCommand) -> Result<ExitCode> {
    let TokenCommand::Create(args) = command;
    let Some(role) = Role::parse(&args.role) else {
        bail!(
            "role \"{}\" is not known; use viewer, operator or admin",
            args.role
        );
    };
    let name = args.name.trim();
    if name.is_empty() {
        bail!("--name must not be empty: it is who the token acts as");
    }
    let loaded = ctx.loaded_config()?;
    if loaded.config.tokens.iter().any(|t| t.name == name) {
        bail!(
            "{} already has a token named \"{name}\"; pick another name, or remove that [[tokens]] entry first",
            loaded.source
        );
    }
    let token = new_token();
    let text = entry(name, role, &token_hash(&token));
    match &loaded.file {
        Some(file) => {
            let existing =
                std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            let mut out = std::fs::OpenOptions::new()
                .append(true)
                .open(file)
                .with_context(|| format!("cannot append to {}", file.display()))?;
            let separator = if existing.is_empty() || existing.ends_with(b"\n\n") {
                ""
            } else if existing.ends_with(b"\n") {
                "\n"
            } else {
                "\n\n"
            };
            out.write_all(format!("{separator}{text}").as_bytes())
                .and_then(|_| out.sync_all())
                .with_context(|| format!("cannot append to {}", file.display()))?;
            eprintln!(
                "token for {name} ({role}) added to {} (only its SHA-256 is kept); a running `lazarus serve` picks it up without a restart. It is shown once:",
                file.display()
            );
        }
        None => {
            eprintln!(
                "no configuration file is in use (the embedded default): add this to lazarus.toml, then start `lazarus serve --config lazarus.toml`:\n\n{text}\nThe token, shown once:"
            );
        }
    }
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_is_valid_configuration_and_holds_no_token() {
        let token = new_token();
        let text = entry("o'brien \"ops\"", Role::Admin, &token_hash(&token));
        assert!(!text.contains(&token));
        let parsed: crate::config::Config = toml::from_str(&text).unwrap();
        assert_eq!(parsed.tokens[0].name, "o'brien \"ops\"");
        assert_eq!(parsed.tokens[0].role, Role::Admin);
    }
}
