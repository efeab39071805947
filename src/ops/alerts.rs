//! Alerts: webhooks told when a run fails, halts, waits for approval or succeeds, and when a
//! drill fails. Events are queued durably in the journal and delivered in the background,
//! retried with backoff: a run never waits for a webhook, and a webhook that is down gets
//! every event, once, when it comes back. The URL (it often holds a token) is read from an
//! environment variable or a file and never reaches a log, an error or the audit trail.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::config::AlertConfig;
use crate::engine::{Engine, RunReport};

/// Every event an alert can ask for.
pub const EVENTS: &[&str] = &[
    "run_failed",
    "run_halted",
    "waiting_approval",
    "run_succeeded",
    "drill_failed",
    "wal_check_failed",
    "rpo_exceeded",
    "backup_too_old",
];

/// What an alert gets when it names no events: everything that needs a person.
const DEFAULT_EVENTS: &[&str] = &[
    "run_failed",
    "run_halted",
    "waiting_approval",
    "drill_failed",
    "wal_check_failed",
];

/// The longest wait between two attempts at one delivery.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// An alert that cannot be set up, naming what to change.
#[derive(Debug, thiserror::Error)]
#[error("alert \"{name}\": {message}")]
pub struct AlertError {
    /// The alert's name.
    pub name: String,
    /// What is wrong.
    pub message: String,
}

/// One configured webhook, ready to use.
#[derive(Clone)]
pub struct Webhook {
    /// Its name (reports and the audit trail use this, never the URL).
    pub name: String,
    url: String,
    events: Vec<String>,
    /// `rpo_exceeded` when the WAL archive lag is over this.
    pub rpo: Option<Duration>,
    /// `backup_too_old` when a database's newest backup is older than this.
    pub backup_max_age: Option<Duration>,
}

impl Webhook {
    /// Whether it asked for `event`.
    pub fn wants(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == event)
    }

    /// Resolves a configured alert: its URL from the environment or a file, its events.
    pub fn from_config(config: &AlertConfig) -> Result<Webhook, AlertError> {
        let fail = |message: String| AlertError {
            name: config.name.clone(),
            message,
        };
        let url = match (&config.url_env, &config.url_file) {
            (Some(var), None) => std::env::var(var).map_err(|_| {
                fail(format!(
                    "the environment variable {var} that should hold its URL is not set in this process"
                ))
            })?,
            (None, Some(file)) => std::fs::read_to_string(file)
                .map_err(|e| fail(format!("cannot read its URL from {}: {e}", file.display())))?,
            _ => {
                return Err(fail(
                    "give exactly one of url_env (an environment variable) or url_file (a file) holding the webhook URL".into(),
                ));
            }
        };
        let url = url.trim().to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(fail("its URL must start with http:// or https://".into()));
        }
        let events = match &config.events {
            Some(events) => {
                for e in events {
                    if !EVENTS.contains(&e.as_str()) {
                        return Err(fail(format!(
                            "event \"{e}\" is not known; use {}",
                            EVENTS.join(", ")
                        )));
                    }
                }
                events.clone()
            }
            None => DEFAULT_EVENTS.iter().map(|e| e.to_string()).collect(),
        };
        let limit = |field: &str, value: &Option<String>| {
            value
                .as_deref()
                .map(|v| {
                    crate::engine::duration::parse_duration(v)
                        .map_err(|e| fail(format!("{field}: {e}")))
                })
                .transpose()
        };
        let rpo = limit("rpo", &config.rpo)?;
        let backup_max_age = limit("backup_max_age", &config.backup_max_age)?;
        let mut events = events;
        if config.events.is_none() {
            if rpo.is_some() {
                events.push("rpo_exceeded".into());
            }
            if backup_max_age.is_some() {
                events.push("backup_too_old".into());
            }
        }
        Ok(Webhook {
            name: config.name.clone(),
            url,
            events,
            rpo,
            backup_max_age,
        })
    }
}

/// Told of a delivery's first failure and of its success after failures:
/// `(what was delivered, failed, message)` — the owner writes these to the audit trail.
pub type OnOutcome = Arc<dyn Fn(&str, bool, &str) + Send + Sync>;

/// A queued delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Delivery {
    alert: String,
    event: String,
    /// What it is about: "run RUN", "database DB", "archive NAME".
    subject: String,
    body: Value,
    attempts: u32,
    /// Not before this time (ms since the epoch).
    due_ms: i64,
    last_error: Option<String>,
}

/// What `status` and the API show of alert delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertState {
    /// Configured webhooks by name.
    pub alerts: Vec<String>,
    /// Events waiting to be delivered.
    pub waiting: u64,
    /// Attempts that failed since this process started.
    pub failures: u64,
    /// The newest failure, per alert.
    pub last_errors: BTreeMap<String, String>,
    /// Alerts that could not be set up.
    pub broken: Vec<String>,
}

/// The alert queue of a state directory and the webhooks it delivers to.
pub struct Alerts {
    queue: sled::Tree,
    seen: sled::Tree,
    hooks: Vec<Webhook>,
    broken: Vec<String>,
    failures: AtomicU64,
    wake: Notify,
    http: reqwest::Client,
    enqueue_lock: std::sync::Mutex<()>,
}

/// The event a run's new status raises, if any.
pub fn event_for(report: &RunReport) -> Option<&'static str> {
    let drill = report.workflow == "drill";
    let verdict_failed = report
        .results
        .get("verdict")
        .and_then(Value::as_str)
        .is_some_and(|v| v == crate::catalog::status::FAILED);
    let archive_broken = report.workflow == "wal-check"
        && report.results.get("ok").and_then(Value::as_bool) == Some(false);
    // A step failed and the workflow rolled itself back (`on_failure = "rollback"`, as a
    // drill does): that is a failure, whoever reads the status.
    let failed_and_undone = report.status == "rolled_back"
        && report
            .rollback
            .as_ref()
            .and_then(|r| r.get("by"))
            .is_some_and(|by| by == "lazarus");
    match report.status.as_str() {
        "succeeded" if archive_broken => Some("wal_check_failed"),
        "rolled_back" if failed_and_undone && drill => Some("drill_failed"),
        "rolled_back" if failed_and_undone => Some("run_failed"),
        "failed" if drill => Some("drill_failed"),
        "failed" => Some("run_failed"),
        "halted" => Some("run_halted"),
        "waiting_approval" => Some("waiting_approval"),
        "succeeded" if verdict_failed => Some("drill_failed"),
        "succeeded" => Some("run_succeeded"),
        _ => None,
    }
}

fn text(event: &str, report: &RunReport) -> String {
    let what = match event {
        "run_failed" => "failed",
        "run_halted" => "halted",
        "waiting_approval" => "waits for approval",
        "run_succeeded" => "succeeded",
        "drill_failed" => "drill FAILED",
        "wal_check_failed" => "found the WAL archive broken",
        other => other,
    };
    let mut line = format!("Lazarus: run {} ({}) {what}", report.id, report.workflow);
    if let Some(target) = &report.target {
        line.push_str(&format!(" on {target}"));
    }
    if let Some(error) = &report.error {
        line.push_str(&format!(": {error}"));
    }
    if event == "wal_check_failed"
        && let Some(problems) = report.results.get("problems").and_then(Value::as_array)
    {
        let problems: Vec<&str> = problems.iter().filter_map(Value::as_str).collect();
        line.push_str(&format!(": {}", problems.join("; ")));
    }
    if let Some(next) = &report.next_action {
        line.push_str(&format!(". Next: {next}"));
    }
    line
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Alerts {
    /// The queue kept in `queue`, which runs alerted at which status in `seen`, and the
    /// configured alerts (one that cannot be set up is reported, not fatal).
    pub fn new(queue: sled::Tree, seen: sled::Tree, configs: &[AlertConfig]) -> Self {
        let mut hooks = Vec::new();
        let mut broken = Vec::new();
        for config in configs {
            match Webhook::from_config(config) {
                Ok(hook) => hooks.push(hook),
                Err(e) => {
                    tracing::warn!(error = %e, "alert not set up");
                    broken.push(e.to_string());
                }
            }
        }
        Self {
            queue,
            seen,
            hooks,
            broken,
            failures: AtomicU64::new(0),
            wake: Notify::new(),
            http: reqwest::Client::new(),
            enqueue_lock: std::sync::Mutex::new(()),
        }
    }

    /// Attempts that failed since this process started.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The delivery state.
    pub fn state(&self) -> AlertState {
        let mut last_errors = BTreeMap::new();
        let mut waiting = 0;
        for (_, bytes) in self.queue.iter().flatten() {
            waiting += 1;
            if let Ok(d) = serde_json::from_slice::<Delivery>(&bytes)
                && let Some(e) = d.last_error
            {
                last_errors.insert(d.alert, e);
            }
        }
        AlertState {
            alerts: self.hooks.iter().map(|h| h.name.clone()).collect(),
            waiting,
            failures: self.failures(),
            last_errors,
            broken: self.broken.clone(),
        }
    }

    /// Looks at a run that changed and queues the event its new status raises, once per
    /// status reached.
    pub fn observe(&self, report: &RunReport) {
        let marker = format!(
            "{}:{}",
            report.status,
            report
                .results
                .get("verdict")
                .map(Value::to_string)
                .unwrap_or_default()
        );
        if !self.moved(&report.id, &marker) {
            return;
        }
        let Some(event) = event_for(report) else {
            return;
        };
        let body = json!({
            "event": event,
            "run": report.id,
            "workflow": report.workflow,
            "status": report.status,
            "target": report.target,
            "error": report.error,
            "next_action": report.next_action,
            "results": report.results,
            "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "text": text(event, report),
        });
        let subject = format!("run {}", report.id);
        for hook in self.hooks.iter().filter(|h| h.wants(event)) {
            self.enqueue(&hook.name, event, &subject, &body);
        }
    }

    /// The webhooks that watch a threshold (RPO, backup age).
    pub fn hooks(&self) -> &[Webhook] {
        &self.hooks
    }

    /// A watched measure of `hook` (`key`) is over its limit or not; raises `event` when it
    /// goes over, once until it has been back under.
    pub fn watched(
        &self,
        hook: &Webhook,
        key: &str,
        over: bool,
        event: &str,
        subject: &str,
        body: Value,
    ) {
        let state = if over { "over" } else { "ok" };
        if self.moved(&format!("watch:{}:{key}", hook.name), state) && over && hook.wants(event) {
            self.enqueue(&hook.name, event, subject, &body);
        }
    }

    /// Records that `key` is now in `state`; whether that is news.
    fn moved(&self, key: &str, state: &str) -> bool {
        let previous = self.seen.get(key.as_bytes()).ok().flatten();
        if previous.as_deref() == Some(state.as_bytes()) {
            return false;
        }
        let _ = self.seen.insert(key.as_bytes(), state.as_bytes());
        true
    }

    fn enqueue(&self, alert: &str, event: &str, subject: &str, body: &Value) {
        let Ok(_guard) = self.enqueue_lock.lock() else {
            return;
        };
        let delivery = Delivery {
            alert: alert.to_string(),
            event: event.to_string(),
            subject: subject.to_string(),
            body: body.clone(),
            attempts: 0,
            due_ms: 0,
            last_error: None,
        };
        let id = self
            .queue
            .last()
            .ok()
            .flatten()
            .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok())
            .map_or(1, |k| u64::from_be_bytes(k) + 1);
        if let Ok(bytes) = serde_json::to_vec(&delivery) {
            let _ = self.queue.insert(id.to_be_bytes(), bytes);
        }
        let _ = self.queue.flush();
        self.wake.notify_one();
    }

    /// Delivers what is due; returns the time until the next delivery is due, if any waits.
    /// `on_outcome(delivery description, failed, message)` lets the caller audit.
    pub async fn deliver_due(
        &self,
        on_outcome: &(dyn Fn(&str, bool, &str) + Send + Sync),
    ) -> Option<Duration> {
        let mut next: Option<i64> = None;
        for (key, bytes) in self.queue.iter().flatten() {
            let Ok(mut d) = serde_json::from_slice::<Delivery>(&bytes) else {
                let _ = self.queue.remove(&key);
                continue;
            };
            if d.due_ms > now_ms() {
                next = Some(next.map_or(d.due_ms, |n| n.min(d.due_ms)));
                continue;
            }
            let Some(hook) = self.hooks.iter().find(|h| h.name == d.alert) else {
                // The alert was removed from the configuration: nobody to tell.
                let _ = self.queue.remove(&key);
                continue;
            };
            let what = format!("{} of {} to alert {}", d.event, d.subject, d.alert);
            let result = self
                .http
                .post(&hook.url)
                .timeout(ATTEMPT_TIMEOUT)
                .json(&d.body)
                .send()
                .await;
            let failure = match result {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!("the webhook answered HTTP {}", r.status().as_u16())),
                Err(e) => Some(format!(
                    "the webhook could not be reached: {}",
                    e.without_url()
                )),
            };
            match failure {
                None => {
                    let _ = self.queue.remove(&key);
                    if d.attempts > 0 {
                        on_outcome(
                            &what,
                            false,
                            &format!("delivered after {} failed attempts", d.attempts),
                        );
                    }
                }
                Some(error) => {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    if d.attempts == 0 {
                        on_outcome(&what, true, &format!("{error}; retrying with backoff"));
                    }
                    d.attempts += 1;
                    let backoff = Duration::from_secs(1 << d.attempts.min(9)).min(MAX_BACKOFF);
                    d.due_ms = now_ms() + backoff.as_millis() as i64;
                    d.last_error = Some(error);
                    next = Some(next.map_or(d.due_ms, |n| n.min(d.due_ms)));
                    if let Ok(bytes) = serde_json::to_vec(&d) {
                        let _ = self.queue.insert(&key, bytes);
                    }
                }
            }
        }
        let _ = self.queue.flush_async().await;
        next.map(|due| Duration::from_millis((due - now_ms()).max(0) as u64))
    }

    /// Watches the engine's runs and delivers in the background for as long as the process
    /// runs.
    pub fn spawn(
        self: &Arc<Self>,
        engine: Arc<Engine>,
        on_outcome: OnOutcome,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let watcher = {
            let alerts = Arc::clone(self);
            let mut updates = engine.subscribe();
            let engine = Arc::clone(&engine);
            tokio::spawn(async move {
                loop {
                    let run = match updates.recv().await {
                        Ok(crate::engine::Update::Changed { run })
                        | Ok(crate::engine::Update::Stopped { run, .. }) => run,
                        Ok(_) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            for run in engine.active_runs() {
                                if let Ok(report) = engine.report(&run) {
                                    alerts.observe(&report);
                                }
                            }
                            continue;
                        }
                        Err(_) => return,
                    };
                    if let Ok(report) = engine.report(&run) {
                        alerts.observe(&report);
                    }
                }
            })
        };
        let deliverer = {
            let alerts = Arc::clone(self);
            tokio::spawn(async move {
                loop {
                    let wait = alerts.deliver_due(on_outcome.as_ref()).await;
                    match wait {
                        Some(wait) => {
                            tokio::select! {
                                _ = alerts.wake.notified() => {}
                                _ = tokio::time::sleep(wait) => {}
                            }
                        }
                        None => alerts.wake.notified().await,
                    }
                }
            })
        };
        vec![watcher, deliverer]
    }

    /// Whether an event waits that has not been tried yet (a departing owner gives those
    /// a moment; ones already failing wait for the next owner, not for the user).
    pub fn has_untried(&self) -> bool {
        self.queue.iter().flatten().any(|(_, bytes)| {
            serde_json::from_slice::<Delivery>(&bytes).is_ok_and(|d| d.attempts == 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, url_env: Option<&str>, events: Option<Vec<&str>>) -> AlertConfig {
        AlertConfig {
            name: name.into(),
            url_env: url_env.map(String::from),
            url_file: None,
            events: events.map(|e| e.into_iter().map(String::from).collect()),
            rpo: None,
            backup_max_age: None,
        }
    }

    #[test]
    fn a_webhook_names_what_is_wrong_and_never_its_url() {
        let missing =
            Webhook::from_config(&config("oncall", Some("LAZARUS_TEST_NO_SUCH_VAR"), None))
                .err()
                .unwrap()
                .to_string();
        assert!(
            missing.contains("oncall") && missing.contains("LAZARUS_TEST_NO_SUCH_VAR"),
            "{missing}"
        );
        let none = Webhook::from_config(&config("x", None, None))
            .err()
            .unwrap()
            .to_string();
        assert!(
            none.contains("url_env") && none.contains("url_file"),
            "{none}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("url");
        std::fs::write(&file, "https://hooks.example/T0KEN\n").unwrap();
        let mut c = config("f", None, Some(vec!["run_failed", "run_faild"]));
        c.url_file = Some(file);
        let bad = Webhook::from_config(&c).err().unwrap().to_string();
        assert!(bad.contains("run_faild") && !bad.contains("T0KEN"), "{bad}");
    }
}
