//! `release_archiving`: the step after a cut-over that lets the restored server archive (see
//! [`crate::pg::archiving`]): until traffic is cut over to it, it is not the primary and
//! writes nothing into the archive the live primary uses. With `hold = true` (the step's
//! compensation: the cut-over was rolled back) it holds archiving again and records the
//! server's timeline as abandoned (see [`crate::wal::abandoned`]), so "latest" is again the
//! timeline the live primary writes.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::inputs;
use super::services::Services;
use crate::engine::{Activity, ActivityContext, ActivityError, ActivitySpec, InputSpec};
use crate::pg::cluster::Cluster;
use crate::pg::tail_lines;

static SPEC: ActivitySpec = ActivitySpec {
    name: "release_archiving",
    summary: "let a restored server that now takes traffic archive its WAL (held until the cut-over)",
    inputs: &[
        InputSpec {
            name: "data_dir",
            required: true,
            help: "the restored server's data directory",
        },
        InputSpec {
            name: "hold",
            required: false,
            help: "true: hold archiving again and record the server's timeline as abandoned (a rolled-back cut-over)",
        },
        InputSpec {
            name: "archive",
            required: false,
            help: "with hold: the WAL archive the server wrote into",
        },
        InputSpec {
            name: "timeline",
            required: false,
            help: "with hold: the server's timeline (the recovery's output)",
        },
    ],
    outputs: &[
        "archiving",
        "abandoned_timeline",
        "stores_missed",
        "results",
    ],
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inputs {
    data_dir: std::path::PathBuf,
    #[serde(default, deserialize_with = "inputs::lenient_bool")]
    hold: bool,
    #[serde(default, deserialize_with = "inputs::opt_text")]
    archive: Option<String>,
    #[serde(default, deserialize_with = "inputs::opt_text")]
    timeline: Option<String>,
}

/// The `release_archiving` activity.
pub struct ReleaseArchiving {
    services: Arc<Services>,
}

impl ReleaseArchiving {
    /// The activity over these services.
    pub fn new(services: Arc<Services>) -> Self {
        Self { services }
    }
}

#[async_trait]
impl Activity for ReleaseArchiving {
    fn spec(&self) -> &'static ActivitySpec {
        &SPEC
    }

    async fn run(&self, ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: Inputs = inputs::parse("release_archiving", inputs)?;
        if inputs.hold {
            return self.hold_again(ctx, inputs).await;
        }
        let data = inputs.data_dir;
        let released = crate::pg::archiving::release(&data).map_err(ActivityError::retryable)?;
        if !released {
            return Ok(json!({ "archiving": "not held (archive_mode off, or released before)" }));
        }
        // A reload makes the backed-up archive_command current; the held segments follow.
        self.reload(&data)?;
        Ok(json!({
            "archiving": "released: the server now archives as the primary",
            "results": { "archiving": "the restored server archives (it is the primary now)" },
        }))
    }
}

impl ReleaseArchiving {
    /// `pg_ctl reload` of the server on `data` (a server that is not running reads its
    /// settings when it starts: nothing to do).
    fn reload(&self, data: &std::path::Path) -> Result<(), ActivityError> {
        if !data.join("postmaster.pid").exists() {
            return Ok(());
        }
        let out = tokio::task::block_in_place(|| {
            Cluster::server_command(&self.services.pg_tools.for_data_dir(data), "pg_ctl").map(
                |mut cmd| {
                    cmd.arg("-D")
                        .arg(data)
                        .arg("reload")
                        .stdin(std::process::Stdio::null())
                        .output()
                },
            )
        })
        .map_err(|e| ActivityError::permanent(e.to_string()))?
        .map_err(|e| ActivityError::retryable(format!("cannot run pg_ctl: {e}")))?;
        if !out.status.success() {
            return Err(ActivityError::retryable(format!(
                "pg_ctl reload of {} failed: {}",
                data.display(),
                tail_lines(&out.stderr, 3)
            )));
        }
        Ok(())
    }

    /// The rollback of a cut-over: the server holds its archiving again, and its timeline,
    /// if it reached the archive, is recorded as abandoned — in the local index first, then
    /// in every store it can reach (a store that is down never fails the rollback; a later
    /// rollback or `wal sync` on another host reads the records of every store).
    async fn hold_again(
        &self,
        ctx: &ActivityContext,
        inputs: Inputs,
    ) -> Result<Value, ActivityError> {
        let data = inputs.data_dir;
        if !data.join("postgresql.auto.conf").exists() {
            return Ok(json!({ "archiving": "nothing to hold: the data directory is gone" }));
        }
        let held = crate::pg::archiving::hold(&data).map_err(ActivityError::retryable)?;
        if held {
            self.reload(&data)?;
        }
        let timeline = inputs
            .timeline
            .as_deref()
            .and_then(|t| t.parse::<u32>().ok())
            .filter(|&t| t > 1);
        let (Some(archive), Some(timeline)) = (inputs.archive.filter(|a| !a.is_empty()), timeline)
        else {
            return Ok(json!({ "archiving": "held again", "abandoned_timeline": null }));
        };
        let catalog = self.services.wal_catalog()?;
        // What the stores hold now (bounded: a hung store must not stop the rollback).
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            catalog.sync(&self.services.stores, &archive),
        )
        .await;
        let archived = catalog
            .history(&archive, timeline)
            .map_err(|e| ActivityError::retryable(e.to_string()))?
            .is_some();
        let reason = format!(
            "run {} rolled back the cut-over to the server on {}",
            ctx.run_id,
            data.display()
        );
        let record = crate::wal::abandoned::from_data_dir(&data, timeline, &reason, archived)
            .map_err(ActivityError::retryable)?;
        let Some(record) = record else {
            return Ok(json!({
                "archiving": "held again; its timeline never reached the archive",
                "abandoned_timeline": null,
            }));
        };
        catalog
            .mark_abandoned(&archive, &record)
            .map_err(|e| ActivityError::retryable(e.to_string()))?;
        let missed =
            crate::wal::abandoned::record_in_stores(&self.services.stores, &archive, &record).await;
        for store in &missed {
            tracing::warn!(store = %store, timeline, "the abandoned timeline is not recorded in this store yet");
        }
        Ok(json!({
            "archiving": "held again: the old primary takes the traffic and owns the archive",
            "abandoned_timeline": timeline,
            "stores_missed": missed,
            "results": {
                "abandoned_timeline": format!("timeline {timeline} is abandoned: plans and `wal status` follow the live primary's timeline"),
            },
        }))
    }
}
