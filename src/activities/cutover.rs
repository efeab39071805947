//! `cutover`: point the application's traffic at the restored database through the adapter
//! the runbook names — `pgbouncer` (repoint its entry) or `kubernetes` (a Service's selector
//! or externalName, a ConfigMap or Secret key, then optionally restart the workload that
//! reads it) — and, as its compensation, point it back the same way.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::inputs::{self, opt_duration};
use super::pgbouncer::Pgbouncer;
use super::restart::k8s_failure;
use super::services::Services;
use crate::engine::clock::{now_us, rfc3339};
use crate::engine::{Activity, ActivityContext, ActivityError, ActivitySpec, InputSpec};
use crate::k8s::cutover::{self as k8s_cutover, Applied, NewValue, Place};
use crate::k8s::{self, K8sError, Workload, rollout};

/// The inputs the kubernetes adapter reads; the rest belong to pgbouncer.
const KUBERNETES_INPUTS: &[&str] = &[
    "object",
    "key",
    "namespace",
    "value",
    "dbname",
    "external",
    "restart",
    "timeout",
];

static SPEC: ActivitySpec = ActivitySpec {
    name: "cutover",
    summary: "point traffic at the restored database: adapter \"pgbouncer\" (its inputs as the pgbouncer activity's) or \"kubernetes\"; undo points it back",
    inputs: &[
        InputSpec {
            name: "adapter",
            required: true,
            help: "\"pgbouncer\" or \"kubernetes\"",
        },
        InputSpec {
            name: "object",
            required: false,
            help: "kubernetes: service/NAME, configmap/NAME or secret/NAME that holds where the database is",
        },
        InputSpec {
            name: "key",
            required: false,
            help: "kubernetes: the ConfigMap or Secret key (e.g. DATABASE_URL)",
        },
        InputSpec {
            name: "namespace",
            required: false,
            help: "kubernetes: the namespace (default: the kubeconfig's or the pod's)",
        },
        InputSpec {
            name: "value",
            required: false,
            help: "kubernetes: the new value (a selector k=v,k2=v2; a DNS name; a key's whole text)",
        },
        InputSpec {
            name: "dbname",
            required: false,
            help: "the restored database: pgbouncer's entry points to it; in a ConfigMap/Secret key, the connection string's database is replaced by it (every other byte kept)",
        },
        InputSpec {
            name: "external",
            required: false,
            help: "kubernetes service: change its externalName instead of its selector",
        },
        InputSpec {
            name: "restart",
            required: false,
            help: "kubernetes: a workload to restart after the change (and after the undo), e.g. deployment/web",
        },
        InputSpec {
            name: "timeout",
            required: false,
            help: "kubernetes: how long that restart may take (default 5m)",
        },
        InputSpec {
            name: "ini",
            required: false,
            help: "pgbouncer: pgbouncer.ini to edit",
        },
        InputSpec {
            name: "database",
            required: false,
            help: "pgbouncer: the entry in [databases] that clients use",
        },
        InputSpec {
            name: "admin_port",
            required: false,
            help: "pgbouncer: its port (default 6432)",
        },
        InputSpec {
            name: "admin_user",
            required: false,
            help: "pgbouncer: an admin_users user",
        },
        InputSpec {
            name: "verify",
            required: false,
            help: "pgbouncer: connect through it afterwards to check",
        },
        InputSpec {
            name: "verify_user",
            required: false,
            help: "pgbouncer: user for that check",
        },
        InputSpec {
            name: "host",
            required: false,
            help: "pgbouncer: server host for the entry (default: keep)",
        },
        InputSpec {
            name: "port",
            required: false,
            help: "pgbouncer: server port for the entry (default: keep)",
        },
        InputSpec {
            name: "admin_host",
            required: false,
            help: "pgbouncer: its admin console host (default 127.0.0.1)",
        },
        InputSpec {
            name: "pause_timeout",
            required: false,
            help: "pgbouncer: how long PAUSE may wait for transactions",
        },
    ],
    outputs: &[
        "adapter", "object", "previous", "current", "revision", "database",
    ],
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KubernetesInputs {
    object: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    dbname: String,
    #[serde(default, deserialize_with = "inputs::lenient_bool")]
    external: bool,
    #[serde(default)]
    restart: String,
    #[serde(default, deserialize_with = "opt_duration")]
    timeout: Option<Duration>,
}

/// The `cutover` activity.
pub struct Cutover {
    pgbouncer: Pgbouncer,
}

impl Cutover {
    /// The activity over the shared services (pgbouncer's adapter needs them).
    pub fn new(services: Arc<Services>) -> Self {
        Self {
            pgbouncer: Pgbouncer::new(services),
        }
    }
}

fn adapter(inputs: &Value) -> Result<&str, ActivityError> {
    match inputs.get("adapter").and_then(Value::as_str) {
        Some(a @ ("pgbouncer" | "kubernetes")) => Ok(a),
        Some(other) => Err(ActivityError::refused(format!(
            "cut-over adapter \"{other}\" is not known; use pgbouncer, kubernetes, or none to skip the cut-over"
        ))),
        None => Err(ActivityError::refused(
            "the cutover activity needs adapter = \"pgbouncer\" or \"kubernetes\"",
        )),
    }
}

/// The inputs one adapter reads, out of all the step was given.
fn only(inputs: &Value, keep: impl Fn(&str) -> bool) -> Value {
    let map: Map<String, Value> = inputs
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.as_str() != "adapter" && keep(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    Value::Object(map)
}

fn pgbouncer_inputs(inputs: &Value) -> Value {
    only(inputs, |k| !KUBERNETES_INPUTS.contains(&k) || k == "dbname")
}

fn kubernetes_inputs(inputs: &Value) -> Result<KubernetesInputs, ActivityError> {
    inputs::parse("cutover", only(inputs, |k| KUBERNETES_INPUTS.contains(&k)))
}

impl KubernetesInputs {
    fn place(&self) -> Result<Place, ActivityError> {
        Place::parse(&self.object, &self.key, self.external).map_err(k8s_failure)
    }

    fn new_value(&self) -> Result<NewValue, ActivityError> {
        match (self.value.trim(), self.dbname.trim()) {
            ("", "") => Err(ActivityError::refused(
                "the kubernetes cut-over needs value (the new text) or dbname (the restored database)",
            )),
            (value, _) if !value.is_empty() => Ok(NewValue::Whole(value.to_string())),
            (_, dbname) => Ok(NewValue::Dbname(dbname.to_string())),
        }
    }

    /// Restarts the workload that reads the changed value, if one is named.
    async fn restart(&self, client: &kube::Client, namespace: &str) -> Result<Value, K8sError> {
        if self.restart.trim().is_empty() {
            return Ok(Value::Null);
        }
        let workload = Workload::parse(&self.restart)?;
        let limit = self.timeout.unwrap_or(Duration::from_secs(300));
        let done =
            rollout::restart(client, namespace, &workload, &rfc3339(now_us()), limit).await?;
        Ok(json!({"workload": done.workload, "revision": done.revision, "ready": done.ready}))
    }
}

#[async_trait]
impl Activity for Cutover {
    fn spec(&self) -> &'static ActivitySpec {
        &SPEC
    }

    fn check_inputs(&self, inputs: &Value) -> Result<(), String> {
        match inputs.get("adapter").and_then(Value::as_str) {
            Some(a) if a.contains("${") => Ok(()),
            Some("kubernetes") if inputs.get("object").is_none() => Err(
                "the kubernetes cut-over needs object = \"configmap/NAME\" (or service/NAME, secret/NAME)"
                    .into(),
            ),
            Some("pgbouncer") if inputs.get("ini").is_none() || inputs.get("database").is_none() => {
                Err("the pgbouncer cut-over needs ini and database".into())
            }
            Some("pgbouncer" | "kubernetes") => Ok(()),
            Some(other) => Err(format!(
                "cut-over adapter \"{other}\" is not known; use pgbouncer or kubernetes"
            )),
            None => Err("the cutover activity needs adapter".into()),
        }
    }

    async fn run(&self, ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        if adapter(&inputs)? == "pgbouncer" {
            let mut output = self.pgbouncer.run(ctx, pgbouncer_inputs(&inputs)).await?;
            output["adapter"] = json!("pgbouncer");
            return Ok(output);
        }
        let k = kubernetes_inputs(&inputs)?;
        let place = k.place()?;
        let value = k.new_value()?;
        let (client, namespace) = k8s::connect(&k.namespace).await.map_err(k8s_failure)?;
        let remembered: Option<String> = ctx.last_checkpoint();
        let applied = k8s_cutover::apply(
            &client,
            &namespace,
            &place,
            &value,
            &ctx.run_id,
            remembered,
            |previous| async move {
                ctx.checkpoint(&previous)
                    .await
                    .map_err(|e| K8sError::Transport {
                        what: "journal the Service's previous value".into(),
                        message: e.message,
                    })
            },
        )
        .await
        .map_err(k8s_failure)?;
        let restarted = k.restart(&client, &namespace).await.map_err(k8s_failure)?;
        Ok(json!({
            "adapter": "kubernetes",
            "object": place.to_string(),
            "namespace": namespace,
            "previous": applied.shown_previous,
            "current": applied.shown_current,
            "applied": applied,
            "restarted": restarted,
        }))
    }

    fn compensates_itself(&self, _inputs: &Value) -> bool {
        true
    }

    async fn compensate(
        &self,
        ctx: &ActivityContext,
        inputs: Value,
        output: Value,
    ) -> Result<Value, ActivityError> {
        if adapter(&inputs)? == "pgbouncer" {
            return self
                .pgbouncer
                .compensate(ctx, pgbouncer_inputs(&inputs), output)
                .await;
        }
        let k = kubernetes_inputs(&inputs)?;
        let applied: Applied = serde_json::from_value(output["applied"].clone()).map_err(|e| {
            ActivityError::permanent(format!(
                "the cut-over's output does not say what it changed ({e}); put the old value back by hand"
            ))
        })?;
        let (client, _) = k8s::connect(&applied.namespace)
            .await
            .map_err(k8s_failure)?;
        k8s_cutover::undo(&client, &applied)
            .await
            .map_err(|e| match e {
                // Someone else's change is not ours to overwrite: a human decides.
                K8sError::Conflict(m) => ActivityError::permanent(m),
                other => k8s_failure(other),
            })?;
        let restarted = k
            .restart(&client, &applied.namespace)
            .await
            .map_err(k8s_failure)?;
        Ok(json!({
            "adapter": "kubernetes",
            "object": applied.place.to_string(),
            "restored": applied.shown_previous,
            "restarted": restarted,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_adapter_gets_only_its_inputs() {
        let all = json!({
            "adapter": "kubernetes", "object": "configmap/app", "key": "URL", "dbname": "x",
            "ini": "/etc/pgbouncer.ini", "database": "shop", "timeout": "1m"
        });
        let k = kubernetes_inputs(&all).unwrap();
        assert_eq!(
            (k.object.as_str(), k.key.as_str()),
            ("configmap/app", "URL")
        );
        let p = pgbouncer_inputs(&all);
        assert_eq!(p["dbname"], "x");
        assert!(p.get("object").is_none() && p.get("adapter").is_none());
        assert!(
            Cutover::new(Arc::default())
                .check_inputs(&json!({"adapter": "haproxy"}))
                .is_err()
        );
    }
}
