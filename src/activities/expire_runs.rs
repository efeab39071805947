//! `expire_runs`: the copies of runs that ended before the retention window removed from
//! the stores (see [`crate::mirror::prune`]). Decided once and checkpointed, so a resumed
//! run removes the same copies.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::inputs::{self, lenient_bool};
use super::services::Services;
use crate::engine::duration::{format_duration, parse_duration};
use crate::engine::{Activity, ActivityContext, ActivityError, ActivitySpec, InputSpec};
use crate::mirror::prune::{EndedRun, ended_before, remove};

static SPEC: ActivitySpec = ActivitySpec {
    name: "expire_runs",
    summary: "remove from the stores the journal copies of runs that ended before the retention window",
    inputs: &[InputSpec {
        name: "dry_run",
        required: false,
        help: "true: say what would go, remove nothing",
    }],
    outputs: &[
        "window",
        "runs_removed",
        "runs",
        "objects_removed",
        "unreadable",
    ],
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inputs {
    #[serde(default, deserialize_with = "lenient_bool")]
    dry_run: bool,
}

/// The `expire_runs` activity.
pub struct ExpireRuns {
    services: Arc<Services>,
}

impl ExpireRuns {
    /// The activity over these services.
    pub fn new(services: Arc<Services>) -> Self {
        Self { services }
    }
}

#[async_trait]
impl Activity for ExpireRuns {
    fn spec(&self) -> &'static ActivitySpec {
        &SPEC
    }

    async fn run(&self, ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: Inputs = inputs::parse("expire_runs", inputs)?;
        let retention = self.services.retention.as_ref();
        let Some(text) =
            retention.and_then(|r| r.runs_window.clone().or_else(|| r.recovery_window.clone()))
        else {
            return Ok(json!({
                "dry_run": inputs.dry_run,
                "window": "",
                "runs_removed": 0,
                "runs": [],
                "objects_removed": 0,
                "unreadable": [],
                "kept_all": "no [retention] runs_window (or recovery_window): every run's copy is kept",
            }));
        };
        let window = parse_duration(&text).map_err(|e| {
            ActivityError::refused(format!(
                "[retention] runs_window: {e} (write it like \"90d\" or \"12h\")"
            ))
        })?;
        let window_us = i64::try_from(window.as_micros()).unwrap_or(i64::MAX);
        let before_us = chrono::Utc::now()
            .timestamp_micros()
            .saturating_sub(window_us);
        let stores = &self.services.stores;
        // Decided once: a resumed run removes what its first attempt decided.
        let (planned, unreadable) = match ctx.last_checkpoint::<Vec<EndedRun>>() {
            Some(planned) => (planned, Vec::new()),
            None => {
                let (planned, unreadable) = ended_before(stores, before_us).await;
                if !inputs.dry_run {
                    ctx.checkpoint(&planned).await?;
                }
                (planned, unreadable)
            }
        };
        let (mut objects, mut runs, mut reopened) = (0, Vec::new(), Vec::new());
        for ended in &planned {
            if inputs.dry_run {
                runs.push(ended.run.clone());
                continue;
            }
            match remove(stores, &ended.run)
                .await
                .map_err(|e| ActivityError::retryable(format!("{e} (resume retries it)")))?
            {
                Some(gone) => {
                    objects += gone;
                    runs.push(ended.run.clone());
                }
                None => reopened.push(ended.run.clone()),
            }
        }
        Ok(json!({
            "dry_run": inputs.dry_run,
            "window": format_duration(window),
            "runs_removed": if inputs.dry_run { 0 } else { runs.len() },
            "runs": runs,
            "objects_removed": objects,
            "unreadable": unreadable,
            "kept_reopened": reopened,
        }))
    }
}
