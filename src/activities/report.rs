//! `recovery_report`: the recovery's outcome against its targets — RTO (start to healthy)
//! and RPO (the age of the data restored) — as JSON and as a readable summary.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::inputs::{self, duration};
use crate::engine::duration::format_duration;
use crate::engine::{Activity, ActivityContext, ActivityError, ActivitySpec, InputSpec};

static SPEC: ActivitySpec = ActivitySpec {
    name: "recovery_report",
    summary: "RTO and RPO achieved against their targets, and a readable summary",
    inputs: &[
        InputSpec {
            name: "healthy_after",
            required: true,
            help: "id of the step whose success means healthy",
        },
        InputSpec {
            name: "backup_id",
            required: true,
            help: "the backup restored",
        },
        InputSpec {
            name: "backup_created_at",
            required: true,
            help: "when its data was taken (RFC 3339)",
        },
        InputSpec {
            name: "restored_database",
            required: false,
            help: "where the data now is",
        },
        InputSpec {
            name: "served_by",
            required: false,
            help: "the store the backup came from",
        },
        InputSpec {
            name: "cutover",
            required: false,
            help: "what took the traffic (e.g. pgbouncer, none)",
        },
        InputSpec {
            name: "target_time",
            required: false,
            help: "point-in-time recovery: the target (RPO is then target − last replayed commit)",
        },
        InputSpec {
            name: "reached_time",
            required: false,
            help: "point-in-time recovery: the last replayed commit",
        },
        InputSpec {
            name: "data_directory",
            required: false,
            help: "point-in-time recovery: the restored server's data directory",
        },
        InputSpec {
            name: "port",
            required: false,
            help: "point-in-time recovery: the restored server's port",
        },
        InputSpec {
            name: "rto_target",
            required: false,
            help: "default \"1h\"",
        },
        InputSpec {
            name: "rpo_target",
            required: false,
            help: "default \"15m\"",
        },
    ],
    outputs: &[
        "rto_seconds",
        "rto_target_seconds",
        "rto_met",
        "rpo_seconds",
        "rpo_target_seconds",
        "rpo_met",
        "restored_database",
        "data_directory",
        "port",
        "target_time",
        "reached_time",
        "backup_id",
        "served_by",
        "cutover",
        "summary",
    ],
};

fn hour() -> Duration {
    Duration::from_secs(3600)
}
fn quarter() -> Duration {
    Duration::from_secs(900)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inputs {
    healthy_after: String,
    backup_id: String,
    backup_created_at: String,
    restored_database: Option<String>,
    served_by: Option<String>,
    cutover: Option<String>,
    #[serde(default)]
    target_time: Option<String>,
    #[serde(default)]
    reached_time: Option<String>,
    #[serde(default)]
    data_directory: Option<String>,
    #[serde(default)]
    port: Option<Value>,
    #[serde(default = "hour", deserialize_with = "duration")]
    rto_target: Duration,
    #[serde(default = "quarter", deserialize_with = "duration")]
    rpo_target: Duration,
}

fn time(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// The `recovery_report` activity.
pub struct RecoveryReport;

#[async_trait]
impl Activity for RecoveryReport {
    fn spec(&self) -> &'static ActivitySpec {
        &SPEC
    }

    async fn run(&self, ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: Inputs = inputs::parse("recovery_report", inputs)?;
        let run = ctx.run_summary();
        let started = run["started_at"]
            .as_str()
            .and_then(time)
            .ok_or_else(|| ActivityError::permanent("the run report has no start time"))?;
        let healthy = run["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["id"] == inputs.healthy_after.as_str())
            .and_then(|s| s["ended_at"].as_str())
            .and_then(time)
            .ok_or_else(|| {
                ActivityError::permanent(format!(
                    "step \"{}\" has not completed, so there is no time-to-healthy to report",
                    inputs.healthy_after
                ))
            })?;
        let taken = time(&inputs.backup_created_at).ok_or_else(|| {
            ActivityError::permanent(format!(
                "backup_created_at {} is not RFC 3339",
                inputs.backup_created_at
            ))
        })?;
        let rto = (healthy - started).to_std().unwrap_or_default();
        let target = inputs.target_time.as_deref().filter(|t| !t.is_empty());
        let pitr = match target {
            Some(text) => Some(time(text).ok_or_else(|| {
                ActivityError::permanent(format!("target_time {text} is not RFC 3339"))
            })?),
            None => None,
        };
        let reached = inputs
            .reached_time
            .as_deref()
            .filter(|t| !t.is_empty())
            .and_then(time);
        let rpo = match pitr {
            // Point in time: what the target asked for but the replay did not reach. Without
            // a replayed commit, everything since the backup is what is missing.
            Some(target) => (target - reached.unwrap_or(taken))
                .to_std()
                .unwrap_or_default(),
            None => (started - taken).to_std().unwrap_or_default(),
        };
        let rto_met = rto <= inputs.rto_target;
        let rpo_met = rpo <= inputs.rpo_target;
        let cutover = inputs.cutover.clone().unwrap_or_else(|| "none".into());
        let mut summary = vec![
            format!(
                "RTO {} (start to healthy) against a target of {}: {}",
                format_duration(rto),
                format_duration(inputs.rto_target),
                if rto_met { "met" } else { "MISSED" }
            ),
            match &pitr {
                Some(_) => format!(
                    "RPO {} (target {} vs last replayed commit {}) against a target of {}: {}",
                    format_duration(rpo),
                    inputs.target_time.as_deref().unwrap_or(""),
                    inputs
                        .reached_time
                        .as_deref()
                        .filter(|t| !t.is_empty())
                        .unwrap_or("none"),
                    format_duration(inputs.rpo_target),
                    if rpo_met { "met" } else { "MISSED" }
                ),
                None => format!(
                    "RPO {} (age of the restored data at the start of recovery) against a target of {}: {}",
                    format_duration(rpo),
                    format_duration(inputs.rpo_target),
                    if rpo_met { "met" } else { "MISSED" }
                ),
            },
            format!(
                "backup {} taken {}{}",
                inputs.backup_id,
                inputs.backup_created_at,
                inputs
                    .served_by
                    .as_ref()
                    .map(|s| format!(", served by store {s}"))
                    .unwrap_or_default()
            ),
        ];
        if let Some(db) = inputs.restored_database.as_ref().filter(|d| !d.is_empty()) {
            summary.push(format!("restored into database {db}"));
        }
        let port = inputs.port.as_ref().map(|p| match p {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        if let Some(dir) = inputs.data_directory.as_ref().filter(|d| !d.is_empty()) {
            summary.push(format!(
                "restored server: data directory {dir}, port {}",
                port.clone().unwrap_or_default()
            ));
        }
        summary.push(if cutover == "none" {
            if pitr.is_some() {
                "traffic NOT cut over (cutover = none): the restored server keeps running for inspection".into()
            } else {
                "traffic NOT cut over (cutover = none): the restored database waits for inspection"
                    .into()
            }
        } else {
            format!("traffic cut over with {cutover}")
        });
        Ok(json!({
            "rto_seconds": rto.as_secs_f64(),
            "rto_target_seconds": inputs.rto_target.as_secs_f64(),
            "rto_met": rto_met,
            "rpo_seconds": rpo.as_secs_f64(),
            "rpo_target_seconds": inputs.rpo_target.as_secs_f64(),
            "rpo_met": rpo_met,
            "restored_database": inputs.restored_database,
            "data_directory": inputs.data_directory,
            // A number, as everywhere else a port or a count appears in JSON.
            "port": port.as_deref().map(|p| p.parse::<u64>().map_or_else(|_| json!(p), |n| json!(n))),
            "target_time": inputs.target_time,
            "reached_time": inputs.reached_time,
            "backup_id": inputs.backup_id,
            "served_by": inputs.served_by,
            "cutover": cutover,
            "summary": summary.join("\n"),
        }))
    }
}
