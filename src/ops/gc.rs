//! `lazarus gc`: removes what no live run needs — the leftovers of runs that ended without
//! success (their steps' own cleanup, tried again), and files in the default work directory
//! that no run the journal knows made — and lists what it cannot judge (restored databases
//! of runs this journal never saw).

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Value, json};

use super::ControlError;
use crate::activities::restore::restored_tag;
use crate::activities::services::Services;
use crate::engine::{Engine, RunStatus};
use crate::pg::sql::Sql;

/// Cleans up (or, with `dry_run`, lists) and answers what was removed, kept and left.
pub async fn collect(
    engine: &Arc<Engine>,
    services: &Services,
    dry_run: bool,
) -> Result<Value, ControlError> {
    let statuses = engine.statuses()?;
    let mut runs = Vec::new();
    let mut live = Vec::new();
    for (run, status, _) in &statuses {
        match status {
            RunStatus::Cancelled | RunStatus::RolledBack | RunStatus::Refused => {
                let steps: Vec<Value> = engine
                    .discard_leftovers(run, dry_run, false)
                    .await?
                    .into_iter()
                    .map(|(step, d)| {
                        json!({ "step": step, "removed": d.removed, "kept": d.kept, "error": d.failed })
                    })
                    .collect();
                if !steps.is_empty() {
                    runs.push(json!({ "run": run, "status": status.as_str(), "steps": steps }));
                }
            }
            RunStatus::Succeeded => {}
            other => live.push(json!({ "run": run, "status": other.as_str() })),
        }
    }
    let known: Vec<&str> = statuses.iter().map(|(id, _, _)| id.as_str()).collect();
    // What runs leave by design (a restored server's data directory) is never swept.
    let kept: BTreeSet<std::path::PathBuf> = statuses
        .iter()
        .filter_map(|(id, _, _)| engine.report(id).ok())
        .flat_map(|report| report.kept)
        .map(|p| std::path::absolute(&p).unwrap_or_else(|_| p.into()))
        .collect();
    let mut kept_files = Vec::new();
    let (removed_files, unknown_files) =
        sweep_work_dir(engine, &statuses, &kept, dry_run, &mut kept_files)?;
    let databases = tokio::task::block_in_place(|| unknown_databases(services, &known));
    Ok(json!({
        "dry_run": dry_run,
        "runs": runs,
        "work_files_removed": removed_files,
        "work_files_unknown": unknown_files,
        "work_files_kept": kept_files,
        "databases_unknown": databases.as_ref().ok(),
        "databases_error": databases.as_ref().err(),
        "live_runs": live,
    }))
}

/// Runs as the journal knows them: id, status, parameters.
type Known = (
    String,
    RunStatus,
    std::collections::BTreeMap<String, String>,
);

/// In the work directories (`STATE/work`, and each run's `workdir`), entries named after a
/// finished run (`RUN.lzr`, `RUN.dump`, `RUN.data` and their `.part`s) are removed; entries
/// named after no run the journal knows are listed (in `STATE/work` only, which is
/// Lazarus's own), never touched: this journal cannot tell whether they are needed.
fn sweep_work_dir(
    engine: &Engine,
    statuses: &[Known],
    kept: &BTreeSet<std::path::PathBuf>,
    dry_run: bool,
    kept_out: &mut Vec<String>,
) -> Result<(Vec<String>, Vec<String>), ControlError> {
    let own = engine.state_dir().map(|s| s.join("work"));
    let mut dirs: BTreeSet<std::path::PathBuf> = statuses
        .iter()
        .filter_map(|(_, _, params)| params.get("workdir"))
        .filter(|w| !w.is_empty())
        .map(|w| std::path::absolute(w).unwrap_or_else(|_| w.into()))
        .collect();
    dirs.extend(own.clone());
    let (mut removed, mut unknown) = (Vec::new(), Vec::new());
    for work in dirs {
        let Ok(entries) = std::fs::read_dir(&work) else {
            continue;
        };
        let mut strangers = Vec::new();
        let mut sweep = Sweep {
            statuses,
            kept,
            dry_run,
            removed: &mut removed,
            unknown: &mut strangers,
            kept_out,
        };
        sweep.dir(entries);
        if Some(&work) == own.as_ref() {
            unknown.extend(strangers);
        }
    }
    Ok((removed, unknown))
}

/// One sweep of work directories: what it may remove and what it found.
struct Sweep<'a> {
    statuses: &'a [Known],
    kept: &'a BTreeSet<std::path::PathBuf>,
    dry_run: bool,
    removed: &'a mut Vec<String>,
    unknown: &'a mut Vec<String>,
    kept_out: &'a mut Vec<String>,
}

impl Sweep<'_> {
    fn dir(&mut self, entries: std::fs::ReadDir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let owner = self
                .statuses
                .iter()
                .filter(|(id, _, _)| name.starts_with(&format!("{id}.")))
                .max_by_key(|(id, _, _)| id.len());
            match owner {
                Some((id, _, _)) if self.kept.contains(&path) => self.kept_out.push(format!(
                    "{}: kept by run {id} (lazarus status {id}); stop its server and remove it by hand when no longer needed",
                    path.display()
                )),
                Some((_, status, _)) if finished(*status) => {
                    match crate::activities::files::remove_leftover(&path, self.dry_run) {
                        Ok(gone) => self.removed.extend(gone),
                        Err(e) => self.kept_out.push(e.message),
                    }
                }
                Some(_) => {}
                None => {
                    let size = crate::activities::files::remove_leftover(&path, true)
                        .ok()
                        .flatten()
                        .unwrap_or_else(|| path.display().to_string());
                    self.unknown.push(size);
                }
            }
        }
    }
}

/// A run that no longer needs its work files: finished, whatever the outcome.
fn finished(status: RunStatus) -> bool {
    matches!(
        status,
        RunStatus::Succeeded | RunStatus::Cancelled | RunStatus::RolledBack | RunStatus::Refused
    )
}

/// `*_restored_XXXXXX` databases on the configured server whose tag belongs to no run in
/// this journal (a wiped state directory, another host's runs).
fn unknown_databases(services: &Services, known: &[&str]) -> Result<Vec<String>, String> {
    let tags: BTreeSet<String> = known.iter().map(|id| restored_tag(id)).collect();
    let sql = Sql::new(&services.pg_tools, &services.pg_server);
    let rows = sql
        .query(
            "postgres",
            "SELECT datname FROM pg_database WHERE datname ~ '_restored_[0-9a-f]{6}$' ORDER BY 1",
        )
        .map_err(|e| format!("cannot list the server's databases: {e}"))?;
    Ok(rows
        .into_iter()
        .filter_map(|row| row.into_iter().next())
        .filter(|name| {
            let tag = &name[name.len().saturating_sub(6)..];
            !tags.contains(tag)
        })
        .collect())
}
