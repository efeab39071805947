//! `restart_app`: restart the application so it reconnects, or stop it for the restore and
//! start it after — through a command of the operator's choosing, Docker Compose, or a
//! Kubernetes Deployment/StatefulSet (rollout restart, scale to zero and back).

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::command::run_program;
use super::inputs::{self, opt_duration};
use crate::compose::{self, Action, ComposeError};
use crate::engine::clock::{now_us, rfc3339};
use crate::engine::{Activity, ActivityContext, ActivityError, ActivitySpec, InputSpec};
use crate::k8s::{self, K8sError, Workload, rollout};

static SPEC: ActivitySpec = ActivitySpec {
    name: "restart_app",
    summary: "restart (or stop / start) the application: adapter \"command\", \"compose\", \"kubernetes\", or \"auto\" (whichever is given)",
    inputs: &[
        InputSpec {
            name: "adapter",
            required: true,
            help: "\"command\", \"compose\", \"kubernetes\", or \"auto\": the one whose inputs are given",
        },
        InputSpec {
            name: "action",
            required: false,
            help: "restart (default), stop (compose stop; scale to zero), or start (compose up -d; scale back)",
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
            help: "compose adapter: services to act on (default: all)",
        },
        InputSpec {
            name: "workload",
            required: false,
            help: "kubernetes adapter: deployment/NAME or statefulset/NAME",
        },
        InputSpec {
            name: "namespace",
            required: false,
            help: "kubernetes adapter: its namespace (default: the kubeconfig's or the pod's)",
        },
        InputSpec {
            name: "replicas",
            required: false,
            help: "kubernetes start: replicas to scale back to (default: what the stop remembered)",
        },
        InputSpec {
            name: "timeout",
            required: false,
            help: "limit, e.g. \"2m\" (kubernetes and compose: for the rollout or health; default 5m)",
        },
    ],
    outputs: &[
        "adapter",
        "action",
        "exit_code",
        "stdout",
        "stderr",
        "duration_seconds",
        "workload",
        "revision",
        "replicas",
        "previous_replicas",
        "services",
    ],
};

/// How long a rollout or the services' health may take when no timeout is given.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inputs {
    /// Read by [`choose`] before parsing; kept here so it is not an unknown field.
    #[allow(dead_code)]
    adapter: String,
    #[serde(default)]
    action: String,
    argv: Option<Vec<String>>,
    shell: Option<String>,
    file: Option<PathBuf>,
    #[serde(default, deserialize_with = "list")]
    services: Vec<String>,
    workload: Option<String>,
    namespace: Option<String>,
    #[serde(default, deserialize_with = "inputs::lenient_opt_u64")]
    replicas: Option<u64>,
    #[serde(default, deserialize_with = "opt_duration")]
    timeout: Option<Duration>,
}

/// A list given as an array or as text separated by commas or spaces.
fn list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Many(Vec<String>),
        Text(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::Many(v) => v,
        Either::Text(t) => t
            .split([',', ' '])
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    })
}

/// The adapters whose inputs are present (empty strings count as absent).
fn given(inputs: &Value) -> Vec<&'static str> {
    let present = |key: &str| match inputs.get(key) {
        Some(Value::String(s)) => !s.trim().is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Null) | None => false,
        Some(_) => true,
    };
    let mut found = Vec::new();
    if present("argv") || present("shell") {
        found.push("command");
    }
    if present("file") {
        found.push("compose");
    }
    if present("workload") {
        found.push("kubernetes");
    }
    found
}

/// The adapter to use: the one named, or for `auto` the one whose inputs are given.
fn choose(adapter: &str, inputs: &Value) -> Result<&'static str, String> {
    match adapter {
        "command" => Ok("command"),
        "compose" => Ok("compose"),
        "kubernetes" | "k8s" => Ok("kubernetes"),
        "auto" => match given(inputs).as_slice() {
            [one] => Ok(one),
            [] => Err("no application is configured to restart or stop: give a command (app_restart), a compose file (compose_file) or a Kubernetes workload (k8s_workload)".into()),
            many => Err(format!(
                "more than one way to restart the application is given ({}); give one",
                many.join(", ")
            )),
        },
        other => Err(format!(
            "adapter \"{other}\" is not known; use \"command\", \"compose\", \"kubernetes\" or \"auto\""
        )),
    }
}

/// The `restart_app` activity.
pub struct RestartApp;

#[async_trait]
impl Activity for RestartApp {
    fn spec(&self) -> &'static ActivitySpec {
        &SPEC
    }

    fn check_inputs(&self, inputs: &Value) -> Result<(), String> {
        let Some(adapter) = inputs.get("adapter").and_then(Value::as_str) else {
            return Ok(());
        };
        if adapter.contains("${") {
            return Ok(());
        }
        let templated = |key: &str| {
            inputs
                .get(key)
                .is_some_and(|v| v.to_string().contains("${"))
        };
        match choose(adapter, inputs) {
            Ok("command") if inputs.get("argv").is_none() && inputs.get("shell").is_none() => {
                Err("the command adapter needs argv or shell".into())
            }
            Ok("compose") if inputs.get("file").is_none() => {
                Err("the compose adapter needs file = \"docker-compose.yml\"".into())
            }
            Ok("kubernetes") if inputs.get("workload").is_none() => {
                Err("the kubernetes adapter needs workload = \"deployment/NAME\"".into())
            }
            Ok(_) => Ok(()),
            Err(_)
                if ["argv", "shell", "file", "workload"]
                    .iter()
                    .any(|k| templated(k)) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn run(&self, ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let adapter = choose(
            inputs.get("adapter").and_then(Value::as_str).unwrap_or(""),
            &inputs,
        )
        .map_err(ActivityError::refused)?;
        let inputs: Inputs = inputs::parse("restart_app", inputs)?;
        let action =
            Action::parse(&inputs.action).map_err(|e| ActivityError::refused(e.to_string()))?;
        if action == Action::Stop && adapter == "command" {
            return Err(ActivityError::refused(
                "stopping the application needs a compose file (compose_file) or a Kubernetes workload (k8s_workload); a command can only restart it",
            ));
        }
        let mut output = match adapter {
            "command" => {
                run_program(
                    ctx,
                    inputs.argv.clone().unwrap_or_default(),
                    inputs.shell.clone().filter(|s| !s.trim().is_empty()),
                    inputs.timeout,
                )
                .await?
            }
            "compose" => compose_action(ctx, &inputs, action).await?,
            _ => kubernetes_action(ctx, &inputs, action).await?,
        };
        if let Value::Object(map) = &mut output {
            map.insert("adapter".into(), json!(adapter));
            map.insert(
                "action".into(),
                json!(match action {
                    Action::Restart => "restart",
                    Action::Stop => "stop",
                    Action::Start => "start",
                }),
            );
        }
        Ok(output)
    }

    /// A stop is undone by a start: a rolled-back recovery leaves the application running.
    fn compensates_itself(&self, inputs: &Value) -> bool {
        inputs.get("action").and_then(Value::as_str) == Some("stop")
    }

    async fn compensate(
        &self,
        ctx: &ActivityContext,
        mut inputs: Value,
        output: Value,
    ) -> Result<Value, ActivityError> {
        inputs["action"] = json!("start");
        // The count the stop replaced: a later step may have started the workload already
        // (and dropped the remembered count), and starting it again must still work.
        if let Some(previous) = output.get("previous_replicas").filter(|v| v.is_number()) {
            inputs["replicas"] = previous.clone();
        }
        self.run(ctx, inputs).await
    }
}

async fn compose_action(
    ctx: &ActivityContext,
    inputs: &Inputs,
    action: Action,
) -> Result<Value, ActivityError> {
    let file = inputs
        .file
        .clone()
        .ok_or_else(|| ActivityError::refused("the compose adapter needs file"))?;
    let argv = compose::command(&file, action, &inputs.services);
    let mut output = run_program(ctx, argv, None, inputs.timeout).await?;
    if action != Action::Stop {
        let limit = inputs.timeout.unwrap_or(DEFAULT_WAIT);
        let up = compose::wait_healthy(&file, &inputs.services, Duration::from_secs(2), limit)
            .await
            .map_err(|e| match e {
                ComposeError::Input(m) => ActivityError::refused(m),
                ComposeError::Query(m) => ActivityError::retryable(m),
                ComposeError::Unhealthy(m) | ComposeError::Timeout(m) => {
                    ActivityError::permanent(m)
                }
            })?;
        if let Value::Object(map) = &mut output {
            map.insert(
                "services".into(),
                json!(
                    up.iter()
                        .map(
                            |c| json!({"service": c.service, "state": c.state, "health": c.health})
                        )
                        .collect::<Vec<_>>()
                ),
            );
        }
    }
    Ok(output)
}

/// Maps a Kubernetes failure to how the run should take it.
pub(crate) fn k8s_failure(error: K8sError) -> ActivityError {
    match error {
        K8sError::NotFound(_) | K8sError::Invalid(_) => ActivityError::refused(error.to_string()),
        e if e.is_transient() => ActivityError::retryable(e.to_string()),
        e => ActivityError::permanent(e.to_string()),
    }
}

async fn kubernetes_action(
    ctx: &ActivityContext,
    inputs: &Inputs,
    action: Action,
) -> Result<Value, ActivityError> {
    let workload =
        Workload::parse(inputs.workload.as_deref().unwrap_or_default()).map_err(k8s_failure)?;
    let (client, namespace) = k8s::connect(inputs.namespace.as_deref().unwrap_or_default())
        .await
        .map_err(k8s_failure)?;
    let limit = inputs.timeout.unwrap_or(DEFAULT_WAIT);
    let started = std::time::Instant::now();
    let (rollout, previous) = match action {
        Action::Restart => {
            // The same restartedAt on a retry: a restart whose patch landed is not redone.
            let at = match ctx.last_checkpoint::<String>() {
                Some(at) => at,
                None => {
                    let at = rfc3339(now_us());
                    ctx.checkpoint(&at).await?;
                    at
                }
            };
            let r = rollout::restart(&client, &namespace, &workload, &at, limit).await;
            (r.map_err(k8s_failure)?, None)
        }
        Action::Stop => {
            let stopped = rollout::stop(&client, &namespace, &workload, limit)
                .await
                .map_err(k8s_failure)?;
            (stopped.rollout, Some(stopped.previous_replicas))
        }
        Action::Start => {
            let replicas = inputs
                .replicas
                .map(|r| i32::try_from(r).unwrap_or(i32::MAX));
            let r = rollout::start(&client, &namespace, &workload, replicas, limit).await;
            (r.map_err(k8s_failure)?, None)
        }
    };
    Ok(json!({
        "workload": rollout.workload,
        "namespace": rollout.namespace,
        "revision": rollout.revision,
        "replicas": rollout.replicas,
        "ready": rollout.ready,
        "previous_replicas": previous,
        "duration_seconds": started.elapsed().as_secs_f64(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_the_one_adapter_given() {
        let only_k8s =
            json!({"adapter": "auto", "shell": "", "file": "", "workload": "deployment/web"});
        assert_eq!(choose("auto", &only_k8s), Ok("kubernetes"));
        let none = json!({"adapter": "auto", "shell": "", "file": "", "workload": ""});
        assert!(
            choose("auto", &none)
                .unwrap_err()
                .contains("no application")
        );
        let two = json!({"adapter": "auto", "shell": "systemctl restart app", "file": "c.yaml"});
        assert!(
            choose("auto", &two)
                .unwrap_err()
                .contains("command, compose")
        );
        assert!(
            RestartApp
                .check_inputs(&json!({"adapter": "kubernetes"}))
                .is_err()
        );
        assert!(
            RestartApp
                .check_inputs(&json!({"adapter": "swarm"}))
                .is_err()
        );
    }
}
