//! Schedules of `serve`: `[[schedules]]` with a cron expression start ordinary runs of a
//! built-in runbook (`backup`, `base-backup`, `drill`, `expire`), visible in `runs`, the
//! report and the audit trail like any other; and `wal-check`.
//!
//! When each schedule last fired is kept in `STATE/schedules.json`, so a schedule missed
//! while `serve` was down fires once when it comes back (not once per missed time). A
//! schedule whose previous run still holds its target is skipped with a warning: the
//! target lock means runs never overlap. A run's id names its schedule and time, so
//! several `serve`s sharing stores start each time once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::actor::Actor;
use super::{Operations, SubmitRequest};

/// Runbooks a schedule may start.
pub const SCHEDULABLE: &[&str] = &["backup", "base-backup", "drill", "expire", "wal-check"];

/// One `[[schedules]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Its name (default: the runbook and the index).
    pub name: Option<String>,
    /// When: a cron expression, `sec min hour day-of-month month day-of-week` (a five-field
    /// expression gets second 0).
    pub cron: String,
    /// The built-in runbook it starts.
    pub runbook: String,
    /// The runbook's parameters (`database = "shop"`).
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

/// A schedule ready to fire.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Its name.
    pub name: String,
    /// When it fires.
    pub cron: cron::Schedule,
    /// The runbook.
    pub runbook: String,
    /// Its parameters.
    pub params: BTreeMap<String, String>,
}

/// Checks the configured schedules; the message names the entry and what is wrong.
pub fn parse(entries: &[ScheduleConfig]) -> Result<Vec<Schedule>, String> {
    let mut out: Vec<Schedule> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let name = entry
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-{}", entry.runbook, i + 1));
        if !SCHEDULABLE.contains(&entry.runbook.as_str()) {
            return Err(format!(
                "[[schedules]] {name}: runbook \"{}\" cannot be scheduled; use one of {}",
                entry.runbook,
                SCHEDULABLE.join(", ")
            ));
        }
        let text = if entry.cron.split_whitespace().count() == 5 {
            format!("0 {}", entry.cron)
        } else {
            entry.cron.clone()
        };
        let cron = cron::Schedule::from_str(&text).map_err(|e| {
            format!(
                "[[schedules]] {name}: cron \"{}\" does not parse ({e}); write \"sec min hour day month weekday\", e.g. \"0 30 2 * * *\" for 02:30 every day",
                entry.cron
            )
        })?;
        if out.iter().any(|s| s.name == name) {
            return Err(format!("[[schedules]]: two schedules are named \"{name}\""));
        }
        out.push(Schedule {
            name,
            cron,
            runbook: entry.runbook.clone(),
            params: entry.params.clone(),
        });
    }
    Ok(out)
}

/// When each schedule last fired, kept beside the journal.
struct Fired {
    path: PathBuf,
    at: BTreeMap<String, DateTime<Utc>>,
}

impl Fired {
    fn load(state: &Path) -> Fired {
        let path = state.join("schedules.json");
        let at = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Fired { path, at }
    }

    fn save(&self) {
        if let Err(e) = super::replace_json(&self.path, &self.at) {
            tracing::warn!(file = %self.path.display(), error = %e, "cannot record when schedules fired; a restart may fire them again");
        }
    }
}

/// The id of a schedule's run for one time: the same on every host, so of several
/// `serve`s sharing stores and schedules only one starts it (the run's lease is taken once;
/// a host that finds the run in the stores leaves it).
pub fn run_id(schedule: &str, due: DateTime<Utc>) -> String {
    let name: String = schedule
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(44)
        .collect();
    format!("{name}-{}", due.format("%Y%m%dT%H%M%SZ"))
}

/// Starts one schedule's run now; the reason says which schedule and which time. A time
/// another host already fired (its run is in the stores) is left to it.
async fn fire(ops: &Operations, schedule: &Schedule, due: DateTime<Utc>) {
    let Some(text) = crate::runbooks::builtin(&schedule.runbook) else {
        tracing::error!(schedule = %schedule.name, runbook = %schedule.runbook, "no such built-in runbook");
        return;
    };
    let id = run_id(&schedule.name, due);
    if let Some(store) = ops.engine().in_stores(&id).await {
        tracing::info!(schedule = %schedule.name, run = %id, %store, "this time was fired by another host (its run is in the stores)");
        return;
    }
    let request = SubmitRequest {
        workflow_text: text.to_string(),
        workflow_source: format!("builtin:{}", schedule.runbook),
        params: schedule.params.clone(),
        reason: format!(
            "schedule {} ({})",
            schedule.name,
            due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        operator: format!("schedule:{}", schedule.name),
        halt_before: Vec::new(),
        halt_after: Vec::new(),
        id: Some(id),
    };
    let actor = Actor::this_process(&format!("schedule:{}", schedule.name));
    match ops.submit(&actor, request) {
        Ok(run) => tracing::info!(schedule = %schedule.name, run = %run, "scheduled run started"),
        Err(e) => {
            tracing::warn!(schedule = %schedule.name, error = %e, "scheduled run not started (skipped until its next time)")
        }
    }
}

/// Fires schedules as they come due until the task is dropped. A schedule whose time
/// passed while `serve` was down fires once at start.
pub async fn run(ops: Arc<Operations>, state: PathBuf, schedules: Vec<Schedule>) {
    if schedules.is_empty() {
        return;
    }
    let mut fired = Fired::load(&state);
    let started = Utc::now();
    loop {
        let now = Utc::now();
        let mut next_wake: Option<DateTime<Utc>> = None;
        let mut changed = false;
        for schedule in &schedules {
            // A schedule never seen before counts from now: it does not fire for the past.
            let last = *fired.at.entry(schedule.name.clone()).or_insert_with(|| {
                changed = true;
                started
            });
            let Some(due) = schedule.cron.after(&last).next() else {
                continue;
            };
            if due <= now {
                if due < started {
                    tracing::warn!(schedule = %schedule.name, missed = %due, "a scheduled time passed while serve was down; running it once now");
                }
                fire(&ops, schedule, due).await;
                fired.at.insert(schedule.name.clone(), now);
                changed = true;
                if let Some(after) = schedule.cron.after(&now).next() {
                    next_wake = Some(next_wake.map_or(after, |w| w.min(after)));
                }
            } else {
                next_wake = Some(next_wake.map_or(due, |w| w.min(due)));
            }
        }
        if changed {
            fired.save();
        }
        let wait = next_wake
            .map(|w| (w - Utc::now()).to_std().unwrap_or_default())
            .unwrap_or(std::time::Duration::from_secs(3600))
            .min(std::time::Duration::from_secs(60));
        tokio::time::sleep(wait.max(std::time::Duration::from_millis(20))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scheduled_run_id_names_its_schedule_and_time_and_is_a_valid_id() {
        let due = DateTime::parse_from_rfc3339("2026-12-03T02:30:00Z")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(
            run_id("nightly-backup", due),
            "nightly-backup-20261203T023000Z"
        );
        let odd = run_id(&"a b/c".repeat(20), due);
        assert!(odd.len() <= 64, "{odd}");
        assert!(
            odd.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{odd}"
        );
    }
}
