//! `restart_app`: restart the application so it reconnects — through a command of the
//! operator's choosing, or `docker compose restart`.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

use super::command::run_program;
use super::inputs::{self, opt_duration};
use crate::engine::{Activity, ActivityContext, ActivityError, ActivitySpec, InputSpec};

static SPEC: ActivitySpec = ActivitySpec {
    name: "restart_app",
    summary: "restart the application: adapter \"command\" (argv or shell) or \"compose\"",
    inputs: &[
        InputSpec {
            name: "adapter",
            required: true,
            help: "\"command\" or \"compose\"",
        },
        InputSpec {
            name: "argv",
            required: false,
            help: "command adapter: program and arguments",
        },
        InputSpec {
            name: "shell",
            required: false,
            help: "command adapter: a shell line",
        },
        InputSpec {
            name: "file",
            required: false,
            help: "compose adapter: the compose file",
        },
        InputSpec {
            name: "services",
            required: false,
            help: "compose adapter: services to restart (default: all)",
        },
        InputSpec {
            name: "timeout",
            required: false,
            help: "limit, e.g. \"2m\"",
        },
    ],
    outputs: &["exit_code", "stdout", "stderr", "duration_seconds"],
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inputs {
    adapter: String,
    argv: Option<Vec<String>>,
    shell: Option<String>,
    file: Option<PathBuf>,
    #[serde(default)]
    services: Vec<String>,
    #[serde(default, deserialize_with = "opt_duration")]
    timeout: Option<Duration>,
}

/// The `restart_app` activity.
pub struct RestartApp;

#[async_trait]
impl Activity for RestartApp {
    fn spec(&self) -> &'static ActivitySpec {
        &SPEC
    }

    fn check_inputs(&self, inputs: &Value) -> Result<(), String> {
        match inputs.get("adapter").and_then(Value::as_str) {
            Some("command") if inputs.get("argv").is_none() && inputs.get("shell").is_none() => {
                Err("the command adapter needs argv or shell".into())
            }
            Some("compose") if inputs.get("file").is_none() => {
                Err("the compose adapter needs file = \"docker-compose.yml\"".into())
            }
            Some("command" | "compose") | None => Ok(()),
            Some(a) if a.contains("${") => Ok(()),
            Some(other) => Err(format!(
                "adapter \"{other}\" is not known; use \"command\" or \"compose\""
            )),
        }
    }

    async fn run(&self, ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: Inputs = inputs::parse("restart_app", inputs)?;
        match inputs.adapter.as_str() {
            "command" => {
                run_program(
                    ctx,
                    inputs.argv.unwrap_or_default(),
                    inputs.shell,
                    inputs.timeout,
                )
                .await
            }
            "compose" => {
                let file = inputs
                    .file
                    .ok_or_else(|| ActivityError::permanent("the compose adapter needs file"))?;
                let mut argv = vec![
                    "docker".to_string(),
                    "compose".into(),
                    "-f".into(),
                    file.display().to_string(),
                    "restart".into(),
                ];
                argv.extend(inputs.services);
                run_program(ctx, argv, None, inputs.timeout).await
            }
            other => Err(ActivityError::permanent(format!(
                "adapter \"{other}\" is not known; use \"command\" or \"compose\""
            ))),
        }
    }
}
