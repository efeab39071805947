//! `wal_check`: whether a WAL archive is whole (see [`crate::wal::check`]), as a step a
//! schedule can run every day. Problems do not fail the step: the run succeeds with
//! `ok = false` and the problems in its results, which raises `wal_check_failed`.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::inputs::{self, lenient_bool};
use super::services::Services;
use crate::engine::{Activity, ActivityContext, ActivityError, ActivitySpec, InputSpec};
use crate::wal::check::{check, check_stores};

static SPEC: ActivitySpec = ActivitySpec {
    name: "wal_check",
    summary: "check a WAL archive for gaps, and that every indexed segment is in a store",
    inputs: &[
        InputSpec {
            name: "archive",
            required: true,
            help: "the WAL archive",
        },
        InputSpec {
            name: "local",
            required: false,
            help: "true: check the local index only, not the stores",
        },
    ],
    outputs: &["ok", "problems", "timelines", "results"],
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inputs {
    archive: String,
    #[serde(default, deserialize_with = "lenient_bool")]
    local: bool,
}

/// The `wal_check` activity.
pub struct WalCheck {
    services: Arc<Services>,
}

impl WalCheck {
    /// The activity over these services.
    pub fn new(services: Arc<Services>) -> Self {
        Self { services }
    }
}

#[async_trait]
impl Activity for WalCheck {
    fn spec(&self) -> &'static ActivitySpec {
        &SPEC
    }

    async fn run(&self, _ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: Inputs = inputs::parse("wal_check", inputs)?;
        let stores = self.services.stores.clone();
        let catalog = self.services.wal_catalog()?;
        catalog
            .sync(&stores, &inputs.archive)
            .await
            .map_err(|e| ActivityError::retryable(format!("cannot read the archive: {e}")))?;
        let mut report =
            check(catalog, &inputs.archive).map_err(|e| ActivityError::retryable(e.to_string()))?;
        if !inputs.local {
            check_stores(&stores, catalog, &inputs.archive, &mut report)
                .await
                .map_err(|e| ActivityError::retryable(e.to_string()))?;
        }
        let ok = report["ok"].as_bool().unwrap_or(false);
        report["results"] = json!({
            "archive": inputs.archive,
            "ok": ok,
            "problems": report["problems"].clone(),
        });
        Ok(report)
    }
}
