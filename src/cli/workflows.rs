//! `workflows`, `validate` and `activities`: what can be run, and whether a file is right.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde_json::Value;

use crate::activities::builtin_registry;
use crate::engine::Workflow;

/// Arguments of `lazarus workflows`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `lazarus validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Workflow files to check.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// `lazarus workflows`.
pub fn list(args: ListArgs) -> Result<ExitCode> {
    let rows = crate::ops::workflows::describe_all(&builtin_registry());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    for row in &rows {
        if row["valid"] != true {
            println!("INVALID {}", row["error"].as_str().unwrap_or_default());
            continue;
        }
        println!(
            "{} — {}\n  from {}",
            row["name"].as_str().unwrap_or_default(),
            row["description"].as_str().unwrap_or_default(),
            row["source"].as_str().unwrap_or_default(),
        );
        let steps: Vec<&str> = row["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str())
            .collect();
        println!(
            "  steps (for --halt-before/--halt-after): {}",
            steps.join(" → ")
        );
        for p in row["params"].as_array().into_iter().flatten() {
            let name = p["name"].as_str().unwrap_or_default();
            let default = match (&p["required"], p["default"].as_str()) {
                (Value::Bool(true), _) => "required".to_string(),
                (_, Some("")) => "default empty".to_string(),
                (_, Some(d)) => format!("default {d}"),
                _ => "optional".to_string(),
            };
            println!(
                "    -p {name}=…  ({default}){}",
                p["help"]
                    .as_str()
                    .map(|h| format!("\n        {h}"))
                    .unwrap_or_default()
            );
        }
        println!();
    }
    Ok(ExitCode::SUCCESS)
}

/// `lazarus validate`.
pub fn validate(args: ValidateArgs) -> Result<ExitCode> {
    let registry = builtin_registry();
    let mut bad = false;
    for file in &args.files {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("{}: cannot read: {e}", file.display());
                bad = true;
                continue;
            }
        };
        match Workflow::parse(&file.display().to_string(), &text, &registry) {
            Ok(wf) => println!(
                "{}: ok — workflow \"{}\", {} steps, sha256 {}",
                file.display(),
                wf.name,
                wf.steps.len(),
                &wf.hash[..12]
            ),
            Err(e) => {
                eprintln!("{e}");
                bad = true;
            }
        }
    }
    Ok(if bad {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `lazarus activities`.
pub fn activities() -> Result<ExitCode> {
    let registry = builtin_registry();
    for activity in registry.all() {
        let spec = activity.spec();
        println!("{:<12} {}", spec.name, spec.summary);
        for input in spec.inputs {
            println!(
                "    {:<18} {}{}",
                input.name,
                input.help,
                if input.required { " (required)" } else { "" }
            );
        }
        if !spec.outputs.is_empty() {
            println!("    outputs: {}", spec.outputs.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}
