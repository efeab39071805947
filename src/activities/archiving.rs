//! `release_archiving`: the step after a cut-over that lets the restored server archive (see
//! [`crate::pg::archiving`]): until traffic is cut over to it, it is not the primary and
//! writes nothing into the archive the live primary uses.

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
    inputs: &[InputSpec {
        name: "data_dir",
        required: true,
        help: "the restored server's data directory",
    }],
    outputs: &["archiving", "results"],
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inputs {
    data_dir: std::path::PathBuf,
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

    async fn run(&self, _ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: Inputs = inputs::parse("release_archiving", inputs)?;
        let data = inputs.data_dir;
        let released = crate::pg::archiving::release(&data).map_err(ActivityError::retryable)?;
        if !released {
            return Ok(json!({ "archiving": "not held (archive_mode off, or released before)" }));
        }
        // A reload makes the backed-up archive_command current; the held segments follow.
        let out = tokio::task::block_in_place(|| {
            Cluster::server_command(&self.services.pg_tools, "pg_ctl").map(|mut cmd| {
                cmd.arg("-D")
                    .arg(&data)
                    .arg("reload")
                    .stdin(std::process::Stdio::null())
                    .output()
            })
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
        Ok(json!({
            "archiving": "released: the server now archives as the primary",
            "results": { "archiving": "the restored server archives (it is the primary now)" },
        }))
    }
}
