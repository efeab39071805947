//! `lazarus gc`: removes what no live run needs, and says what it kept and why.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde_json::Value;

use super::Context;

/// Arguments of `lazarus gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// List what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `lazarus gc`.
pub async fn gc(ctx: &Context, args: GcArgs) -> Result<ExitCode> {
    let dry_run = args.dry_run;
    let (answer, session) = ctx
        .query(|c| Box::pin(async move { c.gc(dry_run).await }))
        .await?;
    session.finish().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print!("{}", render(&answer));
    }
    Ok(ExitCode::SUCCESS)
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The answer as lines for people.
fn render(answer: &Value) -> String {
    let dry = answer["dry_run"].as_bool().unwrap_or(false);
    let verb = if dry { "would remove" } else { "removed" };
    let mut out = String::new();
    let mut anything = false;
    for run in answer["runs"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "run {} ({}):\n",
            run["run"].as_str().unwrap_or("?"),
            run["status"].as_str().unwrap_or("?")
        ));
        for step in run["steps"].as_array().into_iter().flatten() {
            let id = step["step"].as_str().unwrap_or("?");
            for item in strings(&step["removed"]) {
                anything = true;
                out.push_str(&format!("  {id}: {verb} {item}\n"));
            }
            for item in strings(&step["kept"]) {
                out.push_str(&format!("  {id}: kept {item}\n"));
            }
            if let Some(e) = step["error"].as_str() {
                out.push_str(&format!("  {id}: could not clean up: {e}\n"));
            }
        }
    }
    let files = strings(&answer["work_files_removed"]);
    if !files.is_empty() {
        anything = true;
        out.push_str(&format!(
            "work files of finished runs: {verb} {}\n",
            files.join(", ")
        ));
    }
    for item in strings(&answer["work_files_kept"]) {
        out.push_str(&format!("kept {item}\n"));
    }
    let unknown = strings(&answer["work_files_unknown"]);
    if !unknown.is_empty() {
        out.push_str(&format!(
            "in the work directory but made by no run this state directory knows (left alone; remove by hand if unneeded): {}\n",
            unknown.join(", ")
        ));
    }
    let databases = strings(&answer["databases_unknown"]);
    if !databases.is_empty() {
        out.push_str(&format!(
            "restored databases made by no run this state directory knows (left alone; DROP DATABASE by hand if unneeded): {}\n",
            databases.join(", ")
        ));
    }
    if let Some(e) = answer["databases_error"].as_str() {
        out.push_str(&format!("restored databases not checked: {e}\n"));
    }
    for run in answer["live_runs"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "run {} is {}: its files and database are still needed (resume, roll back or cancel it first)\n",
            run["run"].as_str().unwrap_or("?"),
            run["status"].as_str().unwrap_or("?")
        ));
    }
    if !anything {
        out.push_str(if dry {
            "nothing to remove\n"
        } else {
            "nothing removed\n"
        });
    }
    out
}
