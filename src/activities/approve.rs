//! `approve`: wait, durably, for a human to run `lazarus approve RUN --by NAME`.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::inputs;
use crate::engine::{Activity, ActivityContext, ActivityError, ActivitySpec, InputSpec};

static SPEC: ActivitySpec = ActivitySpec {
    name: "approve",
    summary: "wait for a human's approval (lazarus approve RUN --by NAME)",
    inputs: &[InputSpec {
        name: "prompt",
        required: false,
        help: "what the approver is asked",
    }],
    outputs: &["approved_by", "comment", "approved_at"],
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inputs {
    prompt: Option<String>,
}

/// The `approve` activity.
pub struct Approve;

#[async_trait]
impl Activity for Approve {
    fn spec(&self) -> &'static ActivitySpec {
        &SPEC
    }

    async fn run(&self, ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: Inputs = inputs::parse("approve", inputs)?;
        let prompt = inputs
            .prompt
            .unwrap_or_else(|| format!("approve step \"{}\" to continue", ctx.step_id));
        let approval = ctx.wait_for_approval(&prompt).await?;
        Ok(json!({
            "approved_by": approval.by,
            "comment": approval.comment,
            "approved_at": approval.at,
        }))
    }
}
