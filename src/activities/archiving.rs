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
        .map_err(super::dump::pg_failure)?
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
    /// in every store it can reach (a later rollback or `wal sync` on another host reads the
    /// records of every store). Best-effort throughout: nothing here may stop the rollback
    /// from moving the traffic back (the cut-over's own undo runs after this); what could
    /// not be done is reported.
    async fn hold_again(
        &self,
        ctx: &ActivityContext,
        inputs: Inputs,
    ) -> Result<Value, ActivityError> {
        let data = inputs.data_dir;
        let mut problems = Vec::new();
        let archiving = if !data.join("postgresql.auto.conf").exists() {
            "nothing to hold here: the data directory is not on this host, or gone".to_string()
        } else {
            match crate::pg::archiving::hold(&data) {
                Ok(true) => match self.reload(&data) {
                    Ok(()) => "held again: the old primary owns the archive".to_string(),
                    Err(e) => {
                        problems.push(format!(
                            "the hold is written but the server was not reloaded: {}",
                            e.message
                        ));
                        "held from the server's next reload".to_string()
                    }
                },
                Ok(false) => "held already".to_string(),
                Err(e) => {
                    problems.push(format!("archiving could not be held: {e}; stop the server on {} or set archive_command = '' in its postgresql.auto.conf", data.display()));
                    "not held".to_string()
                }
            }
        };
        let timeline = inputs
            .timeline
            .as_deref()
            .and_then(|t| t.parse::<u32>().ok())
            .filter(|&t| t > 1);
        let abandoned = match (inputs.archive.filter(|a| !a.is_empty()), timeline) {
            (Some(archive), Some(timeline)) => {
                match self.abandon(ctx, &data, &archive, timeline).await {
                    Ok(Some(missed)) => {
                        problems.extend(missed.into_iter().map(|m| format!("the abandoned timeline is not recorded in store {m} yet (a later `wal sync` there does it)")));
                        Some(timeline)
                    }
                    Ok(None) => None,
                    Err(e) => {
                        problems.push(format!("timeline {timeline} could not be recorded as abandoned: {e}; until it is, `--timeline N` names the live primary's timeline"));
                        None
                    }
                }
            }
            _ => None,
        };
        for problem in &problems {
            tracing::warn!(%problem, "rolling back the cut-over");
        }
        let mut results = serde_json::Map::new();
        if let Some(timeline) = abandoned {
            results.insert(
                "abandoned_timeline".into(),
                json!(format!("timeline {timeline} is abandoned: plans and `wal status` follow the live primary's timeline")),
            );
        }
        if !problems.is_empty() {
            results.insert("archiving_problems".into(), json!(problems.join("; ")));
        }
        Ok(json!({
            "archiving": archiving,
            "abandoned_timeline": abandoned,
            "problems": problems,
            "results": results,
        }))
    }

    /// Records `timeline` of `archive` as abandoned: its history from the server's own
    /// `pg_wal` when that server archived it, else from the index (the rollback may run on
    /// another host); `None` when it never reached the archive, else the stores that missed
    /// the record.
    async fn abandon(
        &self,
        ctx: &ActivityContext,
        data: &std::path::Path,
        archive: &str,
        timeline: u32,
    ) -> Result<Option<Vec<String>>, String> {
        let catalog = self.services.wal_catalog().map_err(|e| e.message)?;
        // What the stores hold now (bounded: a hung store must not stop the rollback).
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            catalog.sync(&self.services.stores, archive),
        )
        .await;
        let indexed = catalog
            .history(archive, timeline)
            .map_err(|e| e.to_string())?;
        let reason = format!(
            "run {} rolled back the cut-over to the server on {}",
            ctx.run_id,
            data.display()
        );
        let record = match crate::wal::abandoned::from_data_dir(
            data,
            timeline,
            &reason,
            indexed.is_some(),
        ) {
            Ok(Some(record)) => Some(record),
            Ok(None) => None,
            Err(_) => indexed.map(|history| crate::wal::abandoned::Abandoned {
                timeline,
                at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                reason: reason.clone(),
                history,
            }),
        };
        let Some(record) = record else {
            return Ok(None);
        };
        catalog
            .mark_abandoned(archive, &record)
            .map_err(|e| e.to_string())?;
        Ok(Some(
            crate::wal::abandoned::record_in_stores(&self.services.stores, archive, &record).await,
        ))
    }
}
