//! `upload`: the same bytes to every store, concurrently; says where each copy landed and
//! fails unless enough copies did.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::inputs::{self, lenient_bool, lenient_opt_u64};
use super::services::Services;
use crate::engine::{Activity, ActivityContext, ActivityError, ActivitySpec, InputSpec};
use crate::storage::Body;

static SPEC: ActivitySpec = ActivitySpec {
    name: "upload",
    summary: "upload a file to every store; report where each copy landed",
    inputs: &[
        InputSpec {
            name: "src",
            required: true,
            help: "file to upload",
        },
        InputSpec {
            name: "key",
            required: true,
            help: "object key in the stores",
        },
        InputSpec {
            name: "stores",
            required: false,
            help: "store names (default: all)",
        },
        InputSpec {
            name: "min_copies",
            required: false,
            help: "copies that must land (default: every store)",
        },
        InputSpec {
            name: "finished",
            required: false,
            help: "the file is an earlier step's finished output that nothing changes any more: a local store on the same filesystem links it instead of copying (default false)",
        },
    ],
    outputs: &["key", "size", "copies", "landed", "seconds"],
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inputs {
    src: PathBuf,
    key: String,
    stores: Option<Vec<String>>,
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    min_copies: Option<u64>,
    #[serde(default, deserialize_with = "lenient_bool")]
    finished: bool,
}

/// The `upload` activity.
pub struct Upload {
    services: Arc<Services>,
}

impl Upload {
    /// The activity over these stores.
    pub fn new(services: Arc<Services>) -> Self {
        Self { services }
    }
}

#[async_trait]
impl Activity for Upload {
    fn spec(&self) -> &'static ActivitySpec {
        &SPEC
    }

    fn input_files(&self) -> &'static [&'static str] {
        &["src"]
    }

    async fn run(&self, ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: Inputs = inputs::parse("upload", inputs)?;
        let started = Instant::now();
        let stores = match &inputs.stores {
            Some(names) => self
                .services
                .stores
                .only(names)
                .map_err(ActivityError::permanent)?,
            None => self.services.stores.clone(),
        };
        let size = std::fs::metadata(&inputs.src)
            .map_err(|e| {
                ActivityError::permanent(format!("cannot read {}: {e}", inputs.src.display()))
            })?
            .len();
        let wanted = inputs
            .min_copies
            .map_or(stores.stores().len(), |n| n as usize)
            .min(stores.stores().len());
        let copies = tokio::select! {
            copies = stores.put_all(&inputs.key, if inputs.finished {
                Body::Finished(inputs.src.clone())
            } else {
                Body::File(inputs.src.clone())
            }) => copies,
            _ = ctx.cancellation().cancelled() => return Err(ActivityError::cancelled("upload stopped")),
        };
        let landed = copies.iter().filter(|c| c.bytes == Some(size)).count();
        if landed < wanted {
            let failed: Vec<String> = copies
                .iter()
                .filter_map(|c| c.error.as_ref().map(|e| format!("{}: {e}", c.store)))
                .collect();
            return Err(ActivityError::retryable(format!(
                "{} landed in {landed} of {} stores, {wanted} needed ({})",
                inputs.key,
                copies.len(),
                failed.join("; ")
            )));
        }
        Ok(json!({
            "key": inputs.key,
            "size": size,
            "copies": copies,
            "landed": landed,
            "seconds": started.elapsed().as_secs_f64(),
        }))
    }
}
