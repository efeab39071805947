//! `notify`: POST a JSON summary of the run to a webhook. A failed delivery is logged and
//! reported in the step's output; it fails the step only with `fatal = true`.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::inputs::{self, duration, lenient_bool};
use super::web::{client, describe, redact_url};
use crate::engine::{Activity, ActivityContext, ActivityError, ActivitySpec, InputSpec};

static SPEC: ActivitySpec = ActivitySpec {
    name: "notify",
    summary: "POST a JSON summary of the run to a webhook",
    inputs: &[
        InputSpec {
            name: "url",
            required: true,
            help: "webhook URL",
        },
        InputSpec {
            name: "message",
            required: false,
            help: "text to include",
        },
        InputSpec {
            name: "fatal",
            required: false,
            help: "fail the step when delivery fails (default false)",
        },
        InputSpec {
            name: "timeout",
            required: false,
            help: "limit for the request (default \"10s\")",
        },
    ],
    outputs: &["delivered", "status", "error"],
};

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inputs {
    url: String,
    message: Option<String>,
    #[serde(default, deserialize_with = "lenient_bool")]
    fatal: bool,
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    timeout: Duration,
}

/// The `notify` activity.
pub struct Notify;

#[async_trait]
impl Activity for Notify {
    fn spec(&self) -> &'static ActivitySpec {
        &SPEC
    }

    async fn run(&self, ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: Inputs = inputs::parse("notify", inputs)?;
        let report = ctx.run_summary();
        // A summary, not the whole report: step outputs (command output tails) stay home.
        let steps: Vec<Value> = report["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                json!({
                    "id": s["id"], "status": s["status"], "attempts": s["attempts"],
                    "duration_seconds": s["duration_seconds"], "error": s["error"],
                })
            })
            .collect();
        let payload = json!({
            "run": ctx.run_id,
            "workflow": report["workflow"],
            "status": report["status"],
            "message": inputs.message,
            "reason": report["reason"],
            "operator": report["operator"],
            "params": report["params"],
            "started_at": report["started_at"],
            "duration_seconds": report["duration_seconds"],
            "steps": steps,
        });
        let shown = redact_url(&inputs.url);
        let client = client(inputs.timeout)?;
        let sent = tokio::select! {
            r = client.post(&inputs.url).json(&payload).send() => r,
            _ = ctx.cancellation().cancelled() => {
                return Err(ActivityError::cancelled("notification interrupted"));
            }
        };
        let failure = match sent {
            Ok(response) if response.status().is_success() => {
                return Ok(json!({
                    "delivered": true,
                    "status": response.status().as_u16(),
                    "error": null,
                }));
            }
            Ok(response) => (
                Some(response.status().as_u16()),
                format!(
                    "webhook {shown} answered HTTP {}",
                    response.status().as_u16()
                ),
            ),
            Err(e) => (
                None,
                format!("webhook {shown} unreachable: {}", describe(e)),
            ),
        };
        if inputs.fatal {
            return Err(ActivityError::retryable(failure.1));
        }
        tracing::warn!(run = %ctx.run_id, step = %ctx.step_id, error = %failure.1, "notification not delivered (not fatal)");
        Ok(json!({
            "delivered": false,
            "status": failure.0,
            "error": failure.1,
        }))
    }
}
