//! The one set of operations every transport calls — the control socket, the command line in
//! the owning process, the HTTP API and the web page. Each operation checks the actor's role
//! and writes the audit entry, accepted or refused, here and nowhere else.

pub mod actor;
pub mod alerts;
pub mod audit;
pub mod events;
pub mod gc;
pub mod metrics;
pub mod runs;
pub mod schedule;
pub mod tokens;
pub mod wal;
pub mod watch;
pub mod workflows;

use std::sync::Arc;

use crate::activities::Services;
use crate::catalog::Manifest;
use crate::engine::adopt::Adoption;
use crate::engine::params::ParamKind;
use crate::engine::{Engine, EngineError, RunReport, RunSummary, Submission, Workflow};
use actor::{Actor, Role};
use alerts::{AlertState, Alerts};
use audit::{AuditEntry, AuditLog, AuditRecord, Outcome, Verification};

/// A submitted run: the workflow travels as text, so the owner runs exactly what the client
/// read.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SubmitRequest {
    /// The workflow file's text.
    pub workflow_text: String,
    /// Where it was read from (a path or `builtin:NAME`).
    pub workflow_source: String,
    /// `--param` values.
    pub params: std::collections::BTreeMap<String, String>,
    /// `--reason`.
    pub reason: String,
    /// Who submits.
    pub operator: String,
    /// `--halt-before` steps.
    pub halt_before: Vec<String>,
    /// `--halt-after` steps.
    pub halt_after: Vec<String>,
    /// `--id`, if given.
    pub id: Option<String>,
}

/// Replaces a small state file beside the journal (when schedules fired, the watch's last
/// round) with `value` as JSON: readers see the old file or the whole new one.
pub(crate) fn replace_json<T: serde::Serialize>(
    path: &std::path::Path,
    value: &T,
) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Text for the audit trail: credentials as `***`, control characters escaped, at most
/// `max` bytes (cut at a character boundary, marked with `…`).
fn audit_text(text: &str, max: usize) -> String {
    let shown =
        crate::engine::params::escape_controls(&crate::engine::params::redact_credentials(text));
    if shown.len() <= max {
        return shown;
    }
    let mut end = max;
    while !shown.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &shown[..end], text.len())
}

/// An operation that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The engine (or a check before it) refused, with a message for the operator.
    #[error("{0}")]
    Refused(String),
    /// The actor's role does not allow the operation.
    #[error("{0}")]
    Forbidden(String),
    /// No such run (or other named thing).
    #[error("{0}")]
    NotFound(String),
    /// The workflow itself is wrong (it does not parse).
    #[error("{0}")]
    Invalid(String),
    /// The request's input is wrong (a parameter, a run id, the reason): correct it.
    #[error("{0}")]
    BadRequest(String),
    /// The owner could not be reached or went away.
    #[error("{0}")]
    Unavailable(String),
    /// The owner is shutting down; connect again.
    #[error("the owner process is shutting down")]
    Retry,
}

impl From<EngineError> for ControlError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::ShuttingDown => ControlError::Retry,
            EngineError::UnknownRun(_) => ControlError::NotFound(e.to_string()),
            EngineError::Workflow(_) => ControlError::Invalid(e.to_string()),
            EngineError::Invalid(message) => ControlError::BadRequest(message),
            other => ControlError::Refused(other.to_string()),
        }
    }
}

/// Built-in runbooks an operator may start; every other workflow (recoveries, PITR, custom
/// runbooks that run arbitrary commands) needs an admin.
const OPERATOR_RUNBOOKS: &[&str] = &["backup", "base-backup", "drill"];

/// Parameters that make a run write over a live database: admin only, whatever the runbook.
const IN_PLACE_PARAMS: &[&str] = &["in_place"];

/// The role a submission needs.
pub fn role_to_start(
    workflow: &Workflow,
    params: &std::collections::BTreeMap<String, String>,
) -> Role {
    let in_place = IN_PLACE_PARAMS.iter().any(|p| {
        params
            .get(*p)
            .is_some_and(|v| !matches!(v.as_str(), "" | "false" | "0" | "no"))
    });
    let builtin_unchanged = OPERATOR_RUNBOOKS.contains(&workflow.name.as_str())
        && crate::runbooks::builtin(&workflow.name) == Some(workflow.text.as_str());
    if builtin_unchanged && !in_place {
        Role::Operator
    } else {
        Role::Admin
    }
}

/// The operations over one engine, its services and its audit trail.
pub struct Operations {
    engine: Arc<Engine>,
    services: Arc<Services>,
    audit: Arc<AuditLog>,
    alerts: Arc<Alerts>,
}

impl Operations {
    /// Operations over an engine in this process.
    pub fn new(
        engine: Arc<Engine>,
        services: Arc<Services>,
        audit: Arc<AuditLog>,
        alerts: Arc<Alerts>,
    ) -> Self {
        Self {
            engine,
            services,
            audit,
            alerts,
        }
    }

    /// The alert queue.
    pub fn alerts(&self) -> &Arc<Alerts> {
        &self.alerts
    }

    /// How alert delivery stands (undelivered events, failures, broken alerts).
    pub fn alert_state(&self) -> AlertState {
        self.alerts.state()
    }

    /// The Prometheus exposition.
    pub async fn metrics(&self) -> String {
        metrics::render(self, self.alerts.failures()).await
    }

    /// Records an alert delivery's failure or late success in the audit trail.
    pub fn audit_alert(&self, what: &str, failed: bool, message: &str) {
        let actor = Actor {
            identity: "lazarus".into(),
            role: Role::Admin,
            via: actor::Via::Internal,
        };
        let outcome = if failed {
            Err(ControlError::Unavailable(message.to_string()))
        } else {
            Ok(message.to_string())
        };
        self.record(
            &actor,
            &format!("alert {what}"),
            None,
            None,
            outcome.as_deref(),
        );
    }

    /// Records requests that presented a token this server does not know (refused, 401).
    pub fn audit_unknown_token(&self, peer: &str, count: u32) {
        let actor = Actor {
            identity: "(unknown token)".into(),
            role: Role::Viewer,
            via: actor::Via::Http {
                peer: peer.to_string(),
            },
        };
        let refused = ControlError::Forbidden(format!(
            "{count} request(s) from {peer} with an API token this server does not know"
        ));
        self.record(&actor, "authenticate", None, None, Err(&refused));
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The services the activities use (stores, keys, catalogs).
    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// The audit trail.
    pub fn audit(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    fn record(
        &self,
        actor: &Actor,
        action: &str,
        run: Option<&str>,
        reason: Option<&str>,
        outcome: Result<&str, &ControlError>,
    ) {
        let (outcome, message) = match outcome {
            Ok(message) => (Outcome::Accepted, message.to_string()),
            Err(e) => (Outcome::Refused, e.to_string()),
        };
        // The trail is mirrored to every store and printed on terminals: what a caller sent
        // (a refused 1 MB reason, an escape sequence, a URL with a password) goes in cut,
        // escaped and without credentials.
        let message = audit_text(&message, 4 * crate::engine::runtime::MAX_REASON);
        if let Err(e) = self.audit.append(AuditRecord {
            actor,
            action: &audit_text(action, 200),
            run: run.map(|r| audit_text(r, 200)),
            reason: reason.map(|r| audit_text(r, crate::engine::runtime::MAX_REASON)),
            outcome,
            message,
        }) {
            // The action stands; the trail's own failure is logged where an operator sees it.
            tracing::error!(error = %e, action, "could not write the audit entry");
        }
    }

    /// Refuses (and records the refusal) when the actor's role is below `needed`.
    fn permit(
        &self,
        actor: &Actor,
        needed: Role,
        action: &str,
        run: Option<&str>,
        reason: Option<&str>,
    ) -> Result<(), ControlError> {
        if actor.role >= needed {
            return Ok(());
        }
        let refused = ControlError::Forbidden(format!(
            "{} has the {} role; to {action} needs the {needed} role",
            actor.identity, actor.role
        ));
        self.record(actor, action, run, reason, Err(&refused));
        Err(refused)
    }

    /// Runs a control action: role check, the action, the audit entry.
    fn act(
        &self,
        actor: &Actor,
        needed: Role,
        action: &str,
        run: &str,
        reason: Option<&str>,
        f: impl FnOnce() -> Result<String, EngineError>,
    ) -> Result<String, ControlError> {
        self.permit(actor, needed, action, Some(run), reason)?;
        let result = f().map_err(ControlError::from);
        if !matches!(result, Err(ControlError::Retry)) {
            self.record(actor, action, Some(run), reason, result.as_deref());
        }
        result
    }

    /// Parses a submitted workflow, records the run and starts driving it.
    pub fn submit(&self, actor: &Actor, request: SubmitRequest) -> Result<String, ControlError> {
        let workflow = match Workflow::parse(
            &request.workflow_source,
            &request.workflow_text,
            self.engine.registry(),
        ) {
            Ok(workflow) => workflow,
            Err(e) => {
                let refused = ControlError::Invalid(e.to_string());
                self.record(actor, "start", None, Some(&request.reason), Err(&refused));
                return Err(refused);
            }
        };
        let action = format!("start {}", workflow.name);
        self.permit(
            actor,
            role_to_start(&workflow, &request.params),
            &action,
            None,
            Some(&request.reason),
        )?;
        let typed = workflow
            .resolve_params(&request.params)
            .map_err(ControlError::BadRequest)
            .and_then(|_| self.check_param_rights(actor, &workflow, &request.params));
        if let Err(refused) = typed {
            self.record(actor, &action, None, Some(&request.reason), Err(&refused));
            return Err(refused);
        }
        let params = request
            .params
            .iter()
            .map(
                |(k, v)| match workflow.params.iter().find(|p| &p.name == k) {
                    Some(param) => format!("{k}={}", param.shown(v)),
                    None => format!("{k}={}", ParamKind::Text.shown(v)),
                },
            )
            .collect::<Vec<_>>()
            .join(" ");
        let reason = request.reason.clone();
        let result = self
            .engine
            .launch(Submission {
                workflow,
                params: request.params,
                reason: request.reason,
                operator: actor.identity.clone(),
                halt_before: request.halt_before,
                halt_after: request.halt_after,
                id: request.id,
            })
            .map_err(ControlError::from);
        if !matches!(result, Err(ControlError::Retry)) {
            let message = result
                .as_ref()
                .map(|run| format!("started {run} ({params})"));
            self.record(
                actor,
                &action,
                result.as_ref().ok().map(String::as_str),
                Some(&reason),
                message.as_deref().map_err(|e| *e),
            );
        }
        result
    }

    /// Refuses values a non-admin may not give: a path outside `STATE/work`, and any
    /// command or connection string. Admins may give any value that passes its type.
    fn check_param_rights(
        &self,
        actor: &Actor,
        workflow: &Workflow,
        given: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), ControlError> {
        if actor.role >= Role::Admin {
            return Ok(());
        }
        let work = self
            .engine
            .state_dir()
            .unwrap_or_else(|| std::path::PathBuf::from("state"))
            .join("work");
        for (name, value) in given {
            let Some(param) = workflow.params.iter().find(|p| &p.name == name) else {
                continue;
            };
            let allowed = match &param.kind {
                kind if kind.admin_only() => false,
                ParamKind::Path => {
                    value.is_empty() || crate::engine::params::confined(value, &work)
                }
                _ => true,
            };
            if !allowed {
                let what = if matches!(param.kind, ParamKind::Path) {
                    format!(
                        "a path under {} (the state directory's work/)",
                        work.display()
                    )
                } else {
                    format!("no {} value (admins only)", param.kind.name())
                };
                return Err(ControlError::Forbidden(format!(
                    "{} has the {} role, which may give parameter \"{name}\" only {what}; leave it out to use the default",
                    actor.identity, actor.role
                )));
            }
        }
        Ok(())
    }

    /// Resumes a run; with a journal mirror, first brings this host's copy of the run in
    /// line with the stores' (a run this host never saw is rebuilt from them).
    /// With `force`, the run's lease is taken from that holder even before it expires (the
    /// audit trail records it as `resume --force HOLDER`).
    pub async fn resume(
        &self,
        actor: &Actor,
        run: &str,
        force: Option<&str>,
    ) -> Result<String, ControlError> {
        let action = match force {
            Some(holder) => format!("resume --force {holder}"),
            None => "resume".to_string(),
        };
        self.permit(actor, Role::Operator, &action, Some(run), None)?;
        // Rebuild or catch up, then take the claim, then catch up again: whatever the last
        // holder copied before losing the run is here before this host goes on.
        let mut adopted = self.engine.adopt(run).await;
        if adopted.is_ok() && self.engine.handle(run).is_none() {
            match self.engine.claim_run(run, force) {
                Ok(()) => {
                    if let Err(e) = self.engine.adopt(run).await {
                        self.engine.release_run_claim(run);
                        adopted = Err(e);
                    }
                }
                Err(crate::engine::EngineError::UnknownRun(_)) => {}
                Err(e) => adopted = Err(e),
            }
        }
        self.act(actor, Role::Operator, &action, run, None, || {
            let adopted = adopted?;
            let resumed = self.engine.resume_over(run, &actor.identity, force);
            if resumed.is_err() && self.engine.handle(run).is_none() {
                self.engine.release_run_claim(run);
            }
            let resumed = match (resumed, &adopted) {
                (Ok(resumed), _) => resumed,
                (Err(e), Adoption::CaughtUp { events, source }) => {
                    return Err(crate::engine::EngineError::Refused(format!(
                        "run {run} was continued by another host: this host took the {events} events it had missed from the run's journal in store {source}, and {e}"
                    )));
                }
                (Err(e), _) => return Err(e),
            };
            Ok(match adopted {
                Adoption::Rebuilt { events, source } => {
                    format!(
                        "{resumed}; rebuilt from its journal in store {source} ({events} events)"
                    )
                }
                Adoption::CaughtUp { events, source } => {
                    format!(
                        "{resumed}; took {events} later events from its journal in store {source}"
                    )
                }
                Adoption::Local | Adoption::Current => resumed,
            })
        })
    }

    /// Halts a run at the next step boundary, or at once.
    pub fn halt(&self, actor: &Actor, run: &str, now: bool) -> Result<String, ControlError> {
        let action = if now { "halt now" } else { "halt" };
        self.act(actor, Role::Operator, action, run, None, || {
            self.engine.halt(run, &actor.identity, now)
        })
    }

    /// Approves the step a run waits at; the approver is the actor.
    pub fn approve(
        &self,
        actor: &Actor,
        run: &str,
        comment: Option<String>,
    ) -> Result<String, ControlError> {
        let reason = comment.clone();
        self.act(
            actor,
            Role::Operator,
            "approve",
            run,
            reason.as_deref(),
            || self.engine.approve(run, &actor.identity, comment),
        )
    }

    /// Rolls a run back.
    pub fn rollback(&self, actor: &Actor, run: &str, reason: &str) -> Result<String, ControlError> {
        self.act(actor, Role::Admin, "rollback", run, Some(reason), || {
            self.engine.rollback(run, &actor.identity, reason)
        })
    }

    /// Cancels a run for good.
    pub fn cancel(&self, actor: &Actor, run: &str) -> Result<String, ControlError> {
        self.act(actor, Role::Admin, "cancel", run, None, || {
            self.engine.cancel(run, &actor.identity)
        })
    }

    /// Removes (or, with `dry_run`, lists) what no live run needs.
    pub async fn gc(
        &self,
        actor: &Actor,
        dry_run: bool,
    ) -> Result<serde_json::Value, ControlError> {
        let action = if dry_run { "gc --dry-run" } else { "gc" };
        self.permit(actor, Role::Admin, action, None, None)?;
        let result = gc::collect(&self.engine, &self.services, dry_run).await;
        let summary = result.as_ref().map(|v| v.to_string());
        self.record(
            actor,
            action,
            None,
            None,
            summary.as_deref().map_err(|e| *e),
        );
        result
    }

    /// Rebuilds the backup catalog from a store (the first that answers when none is named).
    pub async fn catalog_sync(
        &self,
        actor: &Actor,
        store: Option<&str>,
    ) -> Result<(String, usize), ControlError> {
        self.permit(actor, Role::Operator, "catalog sync", None, None)?;
        let result = sync_catalog(&self.services, store).await;
        let summary = result
            .as_ref()
            .map(|(store, count)| format!("{count} manifests from {store}"));
        self.record(
            actor,
            "catalog sync",
            None,
            None,
            summary.as_deref().map_err(|e| *e),
        );
        result
    }

    /// A run's report; the latest run's when `run` is `None`.
    pub fn report(&self, run: Option<&str>) -> Result<RunReport, ControlError> {
        let run = match run {
            Some(run) => run.to_string(),
            None => self.engine.latest_run()?.ok_or_else(|| {
                ControlError::Refused("there are no runs in this state directory yet".into())
            })?,
        };
        Ok(self.engine.report(&run)?)
    }

    /// Every run.
    pub fn runs(&self) -> Result<Vec<RunSummary>, ControlError> {
        Ok(self.engine.list()?)
    }

    /// Backups in the catalog, oldest first.
    pub async fn backups(&self, database: Option<&str>) -> Result<Vec<Manifest>, ControlError> {
        list_backups(&self.services, database).await
    }

    /// Answers a question about a WAL archive; re-reading the archive needs an operator.
    pub async fn wal(
        &self,
        actor: &Actor,
        query: wal::WalQuery,
    ) -> Result<serde_json::Value, ControlError> {
        if query.changes_the_index() {
            self.permit(actor, Role::Operator, "wal sync", None, None)?;
            let result = wal::answer(&self.services, query).await;
            let summary = result.as_ref().map(|v| v.to_string());
            self.record(
                actor,
                "wal sync",
                None,
                None,
                summary.as_deref().map_err(|e| *e),
            );
            return result;
        }
        wal::answer(&self.services, query).await
    }

    /// The audit trail, oldest first (operators and admins).
    pub fn audit_entries(&self, actor: &Actor) -> Result<Vec<AuditEntry>, ControlError> {
        self.permit(actor, Role::Operator, "read the audit trail", None, None)?;
        self.audit
            .list()
            .map_err(|e| ControlError::Refused(e.to_string()))
    }

    /// Recomputes the audit chain and compares it with every store's copy (operators and
    /// admins).
    pub async fn audit_verify(&self, actor: &Actor) -> Result<Verification, ControlError> {
        self.permit(actor, Role::Operator, "verify the audit trail", None, None)?;
        self.audit
            .verify(&self.services.stores)
            .await
            .map_err(|e| ControlError::Refused(e.to_string()))
    }
}

/// The catalog's backups, syncing from the stores first when it is empty (a new host).
pub async fn list_backups(
    services: &Services,
    database: Option<&str>,
) -> Result<Vec<Manifest>, ControlError> {
    services
        .catalog()
        .map_err(|e| ControlError::Refused(e.message))?
        .list_or_sync(&services.stores, database)
        .await
        .map_err(|e| ControlError::Refused(e.to_string()))
}

/// Rebuilds the catalog from the named store, or the first that can be listed.
pub async fn sync_catalog(
    services: &Services,
    store: Option<&str>,
) -> Result<(String, usize), ControlError> {
    let catalog = services
        .catalog()
        .map_err(|e| ControlError::Refused(e.message))?;
    let result = match store {
        Some(name) => {
            let one = services
                .stores
                .only(&[name.to_string()])
                .map_err(ControlError::Refused)?;
            catalog.sync(&one).await
        }
        None => catalog.sync(&services.stores).await,
    };
    result.map_err(|e| ControlError::Refused(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn parse(name: &str, text: &str) -> Workflow {
        Workflow::parse(name, text, &crate::activities::builtin_registry()).unwrap()
    }

    #[test]
    fn operators_start_only_the_unchanged_builtin_backups_and_drills() {
        let none = BTreeMap::new();
        for name in ["backup", "base-backup", "drill"] {
            let text = crate::runbooks::builtin(name).unwrap();
            assert_eq!(
                role_to_start(&parse(name, text), &none),
                Role::Operator,
                "{name}"
            );
            let edited = format!("{text}\n# changed\n");
            assert_eq!(
                role_to_start(&parse(name, &edited), &none),
                Role::Admin,
                "{name} edited"
            );
        }
        for name in ["disaster-recovery", "pitr", "example"] {
            let text = crate::runbooks::builtin(name).unwrap();
            assert_eq!(
                role_to_start(&parse(name, text), &none),
                Role::Admin,
                "{name}"
            );
        }
        let drill = parse("drill", crate::runbooks::builtin("drill").unwrap());
        let in_place = BTreeMap::from([("in_place".to_string(), "true".to_string())]);
        assert_eq!(role_to_start(&drill, &in_place), Role::Admin);
    }
}
