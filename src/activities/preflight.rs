//! `check_recovery`: what a recovery needs besides its backup, checked before anything is
//! downloaded — the server it restores into answers, and the cut-over it will end with can
//! happen (pgbouncer.ini has the entry and can be rewritten, the admin console answers).
//! Finding these after an hour of download and restore is how a recovery misses its RTO.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::inputs::{self, lenient_u64};
use super::pgbouncer::{Console, admin_command};
use super::services::Services;
use crate::engine::{Activity, ActivityContext, ActivityError, ActivitySpec, InputSpec};
use crate::pg::bouncer_ini::{entries, entry};
use crate::pg::sql::{Sql, literal};
use crate::userfile;

static SPEC: ActivitySpec = ActivitySpec {
    name: "check_recovery",
    summary: "check, before anything is downloaded, that the server answers and the cut-over can happen",
    inputs: &[
        InputSpec {
            name: "database",
            required: true,
            help: "the database being recovered (its pgbouncer entry)",
        },
        InputSpec {
            name: "cutover",
            required: false,
            help: "pgbouncer (check its ini and admin console) or none (default none)",
        },
        InputSpec {
            name: "pgbouncer_ini",
            required: false,
            help: "pgbouncer.ini the cut-over will edit",
        },
        InputSpec {
            name: "pgbouncer_port",
            required: false,
            help: "pgbouncer's port (default 6432)",
        },
        InputSpec {
            name: "pgbouncer_admin",
            required: false,
            help: "an admin_users user (default pgbouncer)",
        },
        InputSpec {
            name: "pgbouncer_host",
            required: false,
            help: "where pgbouncer's admin console listens (default 127.0.0.1)",
        },
        InputSpec {
            name: "k8s_object",
            required: false,
            help: "cutover=kubernetes: the service/, configmap/ or secret/ the cut-over will change",
        },
        InputSpec {
            name: "k8s_key",
            required: false,
            help: "cutover=kubernetes: its key",
        },
        InputSpec {
            name: "k8s_namespace",
            required: false,
            help: "the namespace of the Kubernetes objects (default: the kubeconfig's or the pod's)",
        },
        InputSpec {
            name: "k8s_external",
            required: false,
            help: "cutover=kubernetes: the Service's externalName is what changes",
        },
    ],
    outputs: &["checks", "server_version", "live_database_exists"],
};

fn default_port() -> u64 {
    6432
}

fn default_host() -> String {
    "127.0.0.1".into()
}

fn default_admin() -> String {
    "pgbouncer".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inputs {
    database: String,
    #[serde(default)]
    cutover: String,
    #[serde(default)]
    pgbouncer_ini: Option<PathBuf>,
    #[serde(default = "default_port", deserialize_with = "lenient_u64")]
    pgbouncer_port: u64,
    #[serde(default = "default_admin")]
    pgbouncer_admin: String,
    #[serde(default = "default_host")]
    pgbouncer_host: String,
    #[serde(default)]
    k8s_object: String,
    #[serde(default)]
    k8s_key: String,
    #[serde(default)]
    k8s_namespace: String,
    #[serde(default, deserialize_with = "super::inputs::lenient_bool")]
    k8s_external: bool,
}

/// The `check_recovery` activity.
pub struct CheckRecovery {
    services: Arc<Services>,
}

impl CheckRecovery {
    /// The activity over these services (the server, psql).
    pub fn new(services: Arc<Services>) -> Self {
        Self { services }
    }

    fn check_pgbouncer(
        &self,
        inputs: &Inputs,
        checks: &mut Vec<String>,
    ) -> Result<(), ActivityError> {
        let ini = inputs
            .pgbouncer_ini
            .clone()
            .unwrap_or_else(|| "/etc/pgbouncer/pgbouncer.ini".into());
        let instead = "pass -p pgbouncer_ini=PATH for the right file, or -p cutover=none to stop after the health checks and cut over by hand";
        let text = std::fs::read_to_string(&ini).map_err(|e| {
            ActivityError::refused(format!(
                "the cut-over edits {}, which cannot be read: {e}; {instead}",
                ini.display()
            ))
        })?;
        let Some(current) = entry(&text, &inputs.database) else {
            return Err(ActivityError::refused(format!(
                "{} has no entry \"{}\" in [databases] (it has: {}), so the cut-over could not repoint it; is the database name right? If it is, add an entry, or {instead}",
                ini.display(),
                inputs.database,
                entries(&text).join(", ")
            )));
        };
        let owner = userfile::check_rewritable(&ini)
            .map_err(|e| ActivityError::refused(format!("the cut-over could not edit it: {e}")))?;
        checks.push(format!(
            "{} has \"{}\" = {current} ({}), and can be rewritten",
            ini.display(),
            inputs.database,
            owner.describe()
        ));
        let console = Console {
            host: &inputs.pgbouncer_host,
            port: inputs.pgbouncer_port,
            user: &inputs.pgbouncer_admin,
        };
        let version = admin_command(&self.services, &console, "SHOW VERSION", Duration::from_secs(10))
            .map_err(|e| {
                ActivityError::retryable(format!(
                    "pgbouncer's admin console does not answer ({e}); nothing was changed: start pgbouncer, then `lazarus resume`, or fix -p pgbouncer_port / pgbouncer_admin (or -p cutover=none) in a new run"
                ))
            })?;
        checks.push(format!(
            "pgbouncer answers on port {} as {} ({})",
            inputs.pgbouncer_port,
            inputs.pgbouncer_admin,
            version.trim()
        ));
        Ok(())
    }
}

#[async_trait]
impl Activity for CheckRecovery {
    fn spec(&self) -> &'static ActivitySpec {
        &SPEC
    }

    fn check_inputs(&self, inputs: &Value) -> Result<(), String> {
        match inputs.get("cutover").and_then(Value::as_str) {
            Some(c)
                if !c.contains("${") && !matches!(c, "" | "none" | "pgbouncer" | "kubernetes") =>
            {
                Err(format!(
                    "cutover \"{c}\" is not known; use pgbouncer, kubernetes or none"
                ))
            }
            _ => Ok(()),
        }
    }

    async fn run(&self, _ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: Inputs = inputs::parse("check_recovery", inputs)?;
        let k8s_check = if inputs.cutover == "kubernetes" {
            Some(check_kubernetes(&inputs).await?)
        } else {
            None
        };
        tokio::task::block_in_place(|| {
            let mut checks = Vec::new();
            let sql = Sql::new(&self.services.pg_tools, &self.services.pg_server);
            let version = sql
                .scalar("postgres", "SHOW server_version")
                .map_err(|e| {
                    ActivityError::retryable(format!(
                        "the PostgreSQL server the backup is restored into does not answer: {e}; start it, or fix [postgres] in lazarus.toml (or PGHOST/PGPORT), then `lazarus resume`"
                    ))
                })?
                .unwrap_or_default();
            let exists = sql
                .scalar(
                    "postgres",
                    &format!(
                        "SELECT count(*) FROM pg_database WHERE datname = {}",
                        literal(&inputs.database)
                    ),
                )
                .ok()
                .flatten()
                .is_some_and(|n| n != "0");
            checks.push(format!(
                "server {} answers (PostgreSQL {version}); database {} {}",
                self.services.pg_server.describe(),
                inputs.database,
                if exists {
                    "exists"
                } else {
                    "is gone (it is restored beside where it was)"
                }
            ));
            match (inputs.cutover.as_str(), k8s_check) {
                ("pgbouncer", _) => self.check_pgbouncer(&inputs, &mut checks)?,
                (_, Some(found)) => checks.push(found),
                _ => checks.push("no cut-over to check (cutover=none)".into()),
            }
            Ok(json!({
                "checks": checks,
                "server_version": version,
                "live_database_exists": exists,
            }))
        })
    }
}

/// The Kubernetes cut-over's object exists and holds its key: a typo is refused before
/// anything is downloaded.
async fn check_kubernetes(inputs: &Inputs) -> Result<String, ActivityError> {
    use crate::k8s;
    let place =
        k8s::cutover::Place::parse(&inputs.k8s_object, &inputs.k8s_key, inputs.k8s_external)
            .map_err(|e| {
                ActivityError::refused(format!("{e} (-p k8s_cutover_object / k8s_cutover_key)"))
            })?;
    let (client, namespace) = k8s::connect(&inputs.k8s_namespace)
        .await
        .map_err(super::restart::k8s_failure)?;
    k8s::cutover::check(&client, &namespace, &place)
        .await
        .map_err(super::restart::k8s_failure)
}
