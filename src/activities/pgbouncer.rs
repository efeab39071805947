//! `pgbouncer`: cut traffic over to the restored database by repointing pgbouncer's entry
//! for the database — PAUSE, rewrite `[databases]`, RELOAD, check, RESUME — and, as its
//! compensation, point it back the same way.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::inputs::{self, duration, lenient_u64};
use super::services::Services;
use crate::engine::{Activity, ActivityContext, ActivityError, ActivitySpec, InputSpec};
use crate::pg::bouncer_ini::{entry, field, replace_entry, with_fields};
use crate::pg::tail_lines;
use crate::userfile::{self, Ownership};

static SPEC: ActivitySpec = ActivitySpec {
    name: "pgbouncer",
    summary: "repoint a pgbouncer database entry (PAUSE, edit, RELOAD, RESUME); undo points it back",
    inputs: &[
        InputSpec {
            name: "ini",
            required: true,
            help: "pgbouncer.ini to edit",
        },
        InputSpec {
            name: "database",
            required: true,
            help: "the entry in [databases] that clients use",
        },
        InputSpec {
            name: "dbname",
            required: true,
            help: "the database the entry should point to",
        },
        InputSpec {
            name: "host",
            required: false,
            help: "server host for the entry (default: keep)",
        },
        InputSpec {
            name: "port",
            required: false,
            help: "server port for the entry (default: keep)",
        },
        InputSpec {
            name: "admin_host",
            required: false,
            help: "pgbouncer admin console host (default 127.0.0.1)",
        },
        InputSpec {
            name: "admin_port",
            required: false,
            help: "pgbouncer port (default 6432)",
        },
        InputSpec {
            name: "admin_user",
            required: false,
            help: "an admin_users user (default pgbouncer)",
        },
        InputSpec {
            name: "pause_timeout",
            required: false,
            help: "how long PAUSE may wait for transactions (default 30s)",
        },
        InputSpec {
            name: "verify",
            required: false,
            help: "connect through pgbouncer afterwards and check the database served (default true)",
        },
        InputSpec {
            name: "verify_user",
            required: false,
            help: "user for that check (default: admin_user)",
        },
    ],
    outputs: &["database", "previous", "current", "ini"],
};

fn default_admin_host() -> String {
    "127.0.0.1".into()
}
fn default_admin_port() -> u64 {
    6432
}
fn default_admin_user() -> String {
    "pgbouncer".into()
}
fn default_pause() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inputs {
    ini: PathBuf,
    database: String,
    dbname: String,
    host: Option<String>,
    #[serde(default, deserialize_with = "inputs::lenient_opt_u64")]
    port: Option<u64>,
    #[serde(default = "default_admin_host")]
    admin_host: String,
    #[serde(default = "default_admin_port", deserialize_with = "lenient_u64")]
    admin_port: u64,
    #[serde(default = "default_admin_user")]
    admin_user: String,
    #[serde(default = "default_pause", deserialize_with = "duration")]
    pause_timeout: Duration,
    #[serde(default = "default_verify", deserialize_with = "inputs::lenient_bool")]
    verify: bool,
    verify_user: Option<String>,
}

fn default_verify() -> bool {
    true
}

/// How long the check through pgbouncer may take: pgbouncer waits `server_login_retry`
/// (15 s by default) after failed logins, as when the old database is gone.
const VERIFY_WITHIN: Duration = Duration::from_secs(40);

/// The `pgbouncer` activity.
pub struct Pgbouncer {
    services: Arc<Services>,
}

impl Pgbouncer {
    /// The activity over these services (for psql).
    pub fn new(services: Arc<Services>) -> Self {
        Self { services }
    }

    /// Runs a command on pgbouncer's admin console, with a time limit.
    fn admin(&self, inputs: &Inputs, command: &str, limit: Duration) -> Result<String, String> {
        admin_command(
            &self.services,
            &Console {
                host: &inputs.admin_host,
                port: inputs.admin_port,
                user: &inputs.admin_user,
            },
            command,
            limit,
        )
    }

    /// Points the entry at `value`: PAUSE, rewrite, RELOAD, check, RESUME. Returns the value
    /// it replaced. On any failure after PAUSE, the old file is put back and traffic resumed.
    fn repoint(
        &self,
        inputs: &Inputs,
        value: impl Fn(&str) -> String,
    ) -> Result<(String, String), ActivityError> {
        let text = std::fs::read_to_string(&inputs.ini).map_err(|e| {
            ActivityError::permanent(format!("cannot read {}: {e}", inputs.ini.display()))
        })?;
        let previous = entry(&text, &inputs.database).ok_or_else(|| {
            ActivityError::permanent(format!(
                "{} has no entry \"{}\" in [databases]",
                inputs.ini.display(),
                inputs.database
            ))
        })?;
        let current = value(&previous);
        let Some(replaced) = replace_entry(&text, &inputs.database, &current) else {
            return Err(ActivityError::permanent(format!(
                "{} has no entry \"{}\" in [databases]",
                inputs.ini.display(),
                inputs.database
            )));
        };
        // Writable before anything changes: a file that cannot be rewritten changes nothing.
        let owner = userfile::check_rewritable(&inputs.ini)
            .map_err(|e| ActivityError::permanent(format!("{e}; nothing was changed")))?;
        // Reachable before anything changes: an unreachable pgbouncer changes nothing.
        self.admin(inputs, "SHOW VERSION", Duration::from_secs(10))
            .map_err(|e| ActivityError::retryable(format!("{e}; nothing was changed")))?;
        self.admin(
            inputs,
            &format!("PAUSE {}", inputs.database),
            inputs.pause_timeout,
        )
        .map_err(|e| {
            let _ = self.admin(
                inputs,
                &format!("RESUME {}", inputs.database),
                Duration::from_secs(10),
            );
            ActivityError::retryable(format!("{e}; nothing was changed"))
        })?;
        let switched = (|| {
            write_ini(&inputs.ini, &replaced)?;
            self.admin(inputs, "RELOAD", Duration::from_secs(10))?;
            let shown = self.admin(inputs, "SHOW DATABASES", Duration::from_secs(10))?;
            let wanted = field(&current, "dbname");
            let live = shown
                .lines()
                .map(|l| l.split('|').collect::<Vec<_>>())
                .find(|cols| cols.first() == Some(&inputs.database.as_str()))
                .and_then(|cols| cols.get(3).map(|s| (*s).to_string()));
            if live.as_deref() != wanted.as_deref() {
                return Err(not_reloaded(inputs, live, wanted, &owner));
            }
            Ok(())
        })();
        let resumed = self.admin(
            inputs,
            &format!("RESUME {}", inputs.database),
            Duration::from_secs(10),
        );
        if let Err(e) = switched {
            let _ = write_ini(&inputs.ini, &text);
            let _ = self.admin(inputs, "RELOAD", Duration::from_secs(10));
            let _ = self.admin(
                inputs,
                &format!("RESUME {}", inputs.database),
                Duration::from_secs(10),
            );
            return Err(ActivityError::retryable(format!(
                "cut-over of {} failed and was put back: {e}",
                inputs.database
            )));
        }
        resumed
            .map_err(|e| ActivityError::retryable(format!("switched, but RESUME failed: {e}")))?;
        if inputs.verify {
            let wanted = field(&current, "dbname").unwrap_or_default();
            if let Err(e) = self.verify(inputs, &wanted) {
                let _ = self.admin(
                    inputs,
                    &format!("PAUSE {}", inputs.database),
                    inputs.pause_timeout,
                );
                let _ = write_ini(&inputs.ini, &text);
                let _ = self.admin(inputs, "RELOAD", Duration::from_secs(10));
                let _ = self.admin(
                    inputs,
                    &format!("RESUME {}", inputs.database),
                    Duration::from_secs(10),
                );
                return Err(ActivityError::retryable(format!(
                    "after the cut-over, connections through pgbouncer did not reach {wanted} ({e}); the entry was put back"
                )));
            }
        }
        Ok((previous, current))
    }

    /// Connects through pgbouncer to the entry until it serves `wanted`.
    fn verify(&self, inputs: &Inputs, wanted: &str) -> Result<(), String> {
        let psql = self
            .services
            .pg_tools
            .path("psql")
            .map_err(|e| e.to_string())?;
        let user = inputs
            .verify_user
            .clone()
            .unwrap_or_else(|| inputs.admin_user.clone());
        let deadline = Instant::now() + VERIFY_WITHIN;
        let mut last = String::new();
        while Instant::now() < deadline {
            let out = Command::new(&psql)
                .args(["-X", "-q", "-A", "-t", "-h", &inputs.admin_host])
                .args([
                    "-p",
                    &inputs.admin_port.to_string(),
                    "-U",
                    &user,
                    "-d",
                    &crate::pg::conninfo::dbname_only(&inputs.database),
                ])
                .args(["-c", "SELECT current_database()"])
                .env("PGCONNECT_TIMEOUT", "5")
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run psql: {e}"))?;
            let served = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && served == wanted {
                return Ok(());
            }
            last = if out.status.success() {
                format!("it served {served}")
            } else {
                tail_lines(&out.stderr, 1)
            };
            std::thread::sleep(Duration::from_millis(500));
        }
        Err(last)
    }
}

/// pgbouncer still serves the old entry after RELOAD: it did not take the new file. Says
/// what it shows, what was wanted, and the likeliest causes.
fn not_reloaded(
    inputs: &Inputs,
    live: Option<String>,
    wanted: Option<String>,
    owner: &Ownership,
) -> String {
    let shown = |v: Option<String>| v.unwrap_or_else(|| "nothing (no such entry)".into());
    format!(
        "after RELOAD pgbouncer still points {} at {}, not {}: it did not take the new {} ({}); check that the user pgbouncer runs as can read it, and pgbouncer's log for the reason",
        inputs.database,
        shown(live),
        shown(wanted),
        inputs.ini.display(),
        owner.describe()
    )
}

/// Rewrites the ini keeping its owner, group, mode and every other byte.
fn write_ini(path: &Path, text: &str) -> Result<(), String> {
    userfile::rewrite(path, text.as_bytes()).map_err(|e| e.to_string())
}

/// Where pgbouncer's admin console is, and who to be there.
pub(crate) struct Console<'a> {
    /// Host.
    pub host: &'a str,
    /// Port.
    pub port: u64,
    /// An `admin_users` user.
    pub user: &'a str,
}

/// Runs a command on pgbouncer's admin console, with a time limit.
pub(crate) fn admin_command(
    services: &Services,
    console: &Console,
    command: &str,
    limit: Duration,
) -> Result<String, String> {
    let psql = services.pg_tools.path("psql").map_err(|e| e.to_string())?;
    let mut child = Command::new(psql)
        .args(["-X", "-q", "-A", "-t", "-h", console.host])
        .args([
            "-p",
            &console.port.to_string(),
            "-U",
            console.user,
            "-d",
            "pgbouncer",
            "-c",
            command,
        ])
        .env_remove("PGDATABASE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("`{command}` did not finish within {limit:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e.to_string()),
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "pgbouncer at {}:{} refused `{command}`: {}",
            console.host,
            console.port,
            tail_lines(&out.stderr, 2)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[async_trait]
impl Activity for Pgbouncer {
    fn spec(&self) -> &'static ActivitySpec {
        &SPEC
    }

    async fn run(&self, _ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: Inputs = inputs::parse("pgbouncer", inputs)?;
        let (previous, current) = tokio::task::block_in_place(|| {
            self.repoint(&inputs, |old| {
                with_fields(
                    old,
                    &[
                        ("host", inputs.host.clone()),
                        ("port", inputs.port.map(|p| p.to_string())),
                        ("dbname", Some(inputs.dbname.clone())),
                    ],
                )
            })
        })?;
        Ok(json!({
            "database": inputs.database,
            "previous": previous,
            "current": current,
            "ini": inputs.ini,
        }))
    }

    fn compensates_itself(&self, _inputs: &Value) -> bool {
        true
    }

    async fn compensate(
        &self,
        _ctx: &ActivityContext,
        inputs: Value,
        output: Value,
    ) -> Result<Value, ActivityError> {
        let inputs: Inputs = inputs::parse("pgbouncer", inputs)?;
        let previous = output["previous"]
            .as_str()
            .ok_or_else(|| {
                ActivityError::permanent("the cut-over's output lacks the previous entry")
            })?
            .to_string();
        let (was, now) =
            tokio::task::block_in_place(|| self.repoint(&inputs, |_| previous.clone()))?;
        Ok(json!({ "database": inputs.database, "previous": was, "current": now }))
    }
}
