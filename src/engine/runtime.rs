//! The [`Engine`]: submits runs, drives them, and applies control requests (halt, approve,
//! rollback, cancel, resume) — durably first, then to the live run if this process drives it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use super::activity::{Progress, Registry};
use super::clock::{now_us, rfc3339};
use super::commit::GroupCommit;
use super::fence::{Fence, claim_name};
use super::folded::{FoldCache, Loaded};
use super::journal::{Journal, JournalError};
use super::mirror::Mirror;
use super::records::{Event, EventRecord, HaltReason, RunRecord};
use super::report::{RunReport, RunSummary};
use super::state::{RunState, RunStatus};
use super::template::Scope;
use super::trace::{RunTracer, TraceIds};
use super::workflow::{Workflow, WorkflowError};

/// A control request that could not be carried out, with what to do instead.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The workflow (or the run's pinned copy of it) is invalid.
    #[error(transparent)]
    Workflow(#[from] WorkflowError),
    /// No run has this id.
    #[error("no run \"{0}\"; `lazarus runs` lists the runs in this state directory")]
    UnknownRun(String),
    /// The request does not fit the run's state.
    #[error("{0}")]
    Refused(String),
    /// The request's own input is wrong (a parameter, the reason, the run id, a step name):
    /// the caller must correct it.
    #[error("{0}")]
    Invalid(String),
    /// This process is letting go of the store; ask the next owner.
    #[error("this lazarus process is shutting down")]
    ShuttingDown,
}

/// What a run submission carries.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The validated workflow; its text is pinned into the run.
    pub workflow: Workflow,
    /// `--param` values as given.
    pub params: BTreeMap<String, String>,
    /// Why this run is being started.
    pub reason: String,
    /// Who starts it.
    pub operator: String,
    /// Steps to halt before.
    pub halt_before: Vec<String>,
    /// Steps to halt after.
    pub halt_after: Vec<String>,
    /// A chosen run id; one is generated when absent.
    pub id: Option<String>,
}

/// A change worth telling followers about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Update {
    /// The run's journal grew; fetch a fresh report.
    Changed { run: String },
    /// Live progress of a running step.
    Progress {
        run: String,
        step: String,
        progress: Progress,
    },
    /// This process stopped driving the run (finished, halted, or could not continue).
    Stopped { run: String, error: Option<String> },
}

/// A request for the task driving a run.
#[derive(Debug, Clone)]
pub(crate) enum Request {
    Cancel { by: String },
    Rollback { by: String, reason: String },
}

/// The live side of a run this process drives.
pub(crate) struct RunHandle {
    /// Cancelled to interrupt the running attempt (halt --now, cancel, rollback, shutdown).
    pub(crate) interrupt: Mutex<CancellationToken>,
    /// Cancel or rollback waiting to be taken by the driver.
    pub(crate) request: Mutex<Option<Request>>,
    /// Woken when the journal changed under the run (approval, halt).
    pub(crate) wake: Notify,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RunHandle {
    pub(crate) fn new() -> Self {
        Self {
            interrupt: Mutex::new(CancellationToken::new()),
            request: Mutex::new(None),
            wake: Notify::new(),
        }
    }

    pub(crate) fn interrupt(&self) {
        lock(&self.interrupt).cancel();
        self.wake.notify_waiters();
    }

    pub(crate) fn take_request(&self) -> Option<Request> {
        lock(&self.request).take()
    }
}

/// The runs this process drives, and whether it still takes new ones.
#[derive(Default)]
struct Active {
    runs: HashMap<String, Arc<RunHandle>>,
    /// Submissions between their closed-check and their start.
    launching: usize,
    closed: bool,
}

impl Active {
    fn idle(&self) -> bool {
        self.runs.is_empty() && self.launching == 0
    }
}

/// A run as `lazarus gc` sees it: id, status, parameters.
pub type KnownRun = (String, RunStatus, BTreeMap<String, String>);

/// Drives runs against a journal with a registry of activities.
pub struct Engine {
    pub(crate) journal: Arc<dyn Journal>,
    /// The journal's flusher: durable appends of all runs share its flushes.
    pub(crate) commit: GroupCommit,
    pub(crate) registry: Arc<Registry>,
    active: Mutex<Active>,
    workflows: Mutex<HashMap<String, Arc<Workflow>>>,
    /// Runs' folded states, brought up to date by new events only.
    folds: FoldCache,
    /// The cross-host claim on targets, when one is configured (a Kubernetes Lease).
    fence: std::sync::OnceLock<Arc<dyn Fence>>,
    /// Where runs' spans are exported, when telemetry is configured.
    pub(crate) tracer: std::sync::OnceLock<Arc<dyn RunTracer>>,
    /// Where runs' journals are copied off this host, when configured.
    pub(crate) mirror: std::sync::OnceLock<Arc<dyn Mirror>>,
    /// Each run's copy in flight: the next step waits for it, never for its own.
    mirroring: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// Time runs have spent waiting for copies to land, µs, since this engine started.
    mirror_waited_us: std::sync::atomic::AtomicU64,
    /// Runs with a copy queued behind the one in flight (see [`Engine::mirror_soon`]).
    mirror_queued: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Serialises control operations, so two operators' requests cannot interleave their
    /// check-then-journal steps (a resume racing a cancel).
    control: Mutex<()>,
    updates: broadcast::Sender<Update>,
    idle: Notify,
    /// The state directory, absolute: parameter defaults may name it as `${lazarus.state}`
    /// (work files belong there, not in whatever directory a command was run from).
    state_dir: std::sync::OnceLock<String>,
}

/// Copies what the run journaled that the stores lack; a store it fails is logged (the
/// next copy tries again).
async fn publish_copy(mirror: &dyn Mirror, record: &RunRecord, journal: &dyn Journal) {
    for lag in mirror.publish(record, journal).await {
        if let Some(error) = &lag.error {
            tracing::warn!(run = %record.id, store = %lag.store, behind = lag.behind, %error, "the run's journal could not be mirrored to a store; retried at the next step");
        }
    }
}

/// The placeholder a parameter default uses for the state directory.
pub const STATE_PLACEHOLDER: &str = "${lazarus.state}";

/// How a run that refused its input is described when asked to act on it again.
const REFUSED_END: &str =
    "ended: a step refused its input (see its error); start a new run with the input corrected";

/// Whether the events end a run for good, read without the workflow.
fn terminal_status(events: &[EventRecord]) -> Option<&'static str> {
    super::records::ending(events).map(|event| match event {
        Event::Succeeded => "succeeded",
        Event::RolledBack => "been rolled back",
        Event::Cancelled { .. } => "been cancelled",
        _ => REFUSED_END,
    })
}

fn generate_id(workflow: &str) -> String {
    use rand::Rng;
    let suffix: u32 = rand::rng().random_range(0..0x100_0000);
    format!("{workflow}-{suffix:06x}")
}

fn valid_id(id: &str) -> bool {
    id.len() <= 64 && super::params::check_identifier(id).is_ok()
}

/// The longest reason (or approval comment) a run keeps: a paragraph, not a document.
pub const MAX_REASON: usize = 2000;

/// Refuses a reason that would forge terminal output or bloat every answer that lists runs.
pub fn check_reason(reason: &str) -> Result<(), EngineError> {
    super::params::check_text(reason, MAX_REASON)
        .map_err(|e| EngineError::Invalid(format!("the reason: {e}")))
}

impl Engine {
    /// An engine over a journal and a registry.
    pub fn new(journal: Arc<dyn Journal>, registry: Arc<Registry>) -> Arc<Self> {
        let (updates, _) = broadcast::channel(1024);
        Arc::new(Self {
            commit: GroupCommit::start(Arc::clone(&journal)),
            journal,
            registry,
            active: Mutex::new(Active::default()),
            workflows: Mutex::new(HashMap::new()),
            folds: FoldCache::default(),
            fence: std::sync::OnceLock::new(),
            tracer: std::sync::OnceLock::new(),
            mirror: std::sync::OnceLock::new(),
            mirroring: Mutex::new(HashMap::new()),
            mirror_waited_us: std::sync::atomic::AtomicU64::new(0),
            mirror_queued: Arc::default(),
            control: Mutex::new(()),
            updates,
            idle: Notify::new(),
            state_dir: std::sync::OnceLock::new(),
        })
    }

    /// Tells the engine where its state directory is, for `${lazarus.state}` in parameter
    /// defaults (set once, by the owner).
    pub fn set_state_dir(&self, dir: &std::path::Path) {
        let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let _ = self.state_dir.set(absolute.display().to_string());
    }

    /// Makes every run claim its target through `fence` too (set once, by the owner).
    pub fn set_fence(&self, fence: Arc<dyn Fence>) {
        let _ = self.fence.set(fence);
    }

    /// Copies every run's journal through `mirror` (set once, by the owner).
    pub fn set_mirror(&self, mirror: Arc<dyn Mirror>) {
        let _ = self.mirror.set(mirror);
    }

    /// Waits for the run's copy in flight (what was journaled before the previous step),
    /// then starts copying what the run journaled since, in the background: a step waits
    /// for the copy of the events before the step it follows, never for its own. Nothing is
    /// copied once this process has lost the run's claim (another host drives it now: its
    /// copy is the one that counts).
    pub(crate) async fn mirror_up(&self, record: &RunRecord) {
        let Some(mirror) = self.mirror.get().cloned() else {
            return;
        };
        self.mirror_settled(&record.id).await;
        if let Some(lost) = self.claim_lost(record.target.as_deref(), &record.id) {
            tracing::debug!(run = %record.id, %lost, "not mirroring a run this process no longer holds");
            return;
        }
        let copying = self.spawn_copy(mirror, record.clone());
        lock(&self.mirroring).insert(record.id.clone(), copying);
    }

    /// Copies what the run journaled so far, in the background, after the copy in flight
    /// if there is one, without waiting: for events journaled inside a step (a
    /// checkpoint, an approval asked for), so the stores follow a step that runs for
    /// hours. At most one such copy waits behind the one in flight; it takes everything
    /// journaled by the time it starts.
    pub(crate) fn mirror_soon(&self, run_id: &str) {
        let Some(mirror) = self.mirror.get().cloned() else {
            return;
        };
        let Ok(Some(record)) = self.journal.run(run_id) else {
            return;
        };
        if self.claim_lost(record.target.as_deref(), run_id).is_some() {
            return;
        }
        let mut mirroring = lock(&self.mirroring);
        let queued = Arc::clone(&self.mirror_queued);
        if !lock(&queued).insert(run_id.to_string()) {
            return;
        }
        let before = mirroring.remove(run_id);
        let run = run_id.to_string();
        let journal = Arc::clone(&self.journal);
        let copying = tokio::spawn(async move {
            if let Some(before) = before {
                let _ = before.await;
            }
            lock(&queued).remove(&run);
            publish_copy(mirror.as_ref(), &record, journal.as_ref()).await;
        });
        mirroring.insert(run_id.to_string(), copying);
    }

    /// Copies what the run journaled that the stores lack, in the background.
    fn spawn_copy(
        &self,
        mirror: Arc<dyn Mirror>,
        record: RunRecord,
    ) -> tokio::task::JoinHandle<()> {
        let journal = Arc::clone(&self.journal);
        tokio::spawn(async move { publish_copy(mirror.as_ref(), &record, journal.as_ref()).await })
    }

    /// Waits until the run's copy in flight, if any, has landed (or failed).
    pub(crate) async fn mirror_settled(&self, run: &str) {
        let copying = lock(&self.mirroring).remove(run);
        if let Some(copying) = copying {
            let started = std::time::Instant::now();
            let _ = copying.await;
            let waited = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.mirror_waited_us
                .fetch_add(waited, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// How long runs have waited for their journal's copies to land, in all, since this
    /// engine started: what mirroring costs the steps (the copy itself runs beside them).
    pub fn mirror_waited(&self) -> Duration {
        Duration::from_micros(
            self.mirror_waited_us
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Copies everything the run journaled and waits for it, trying every store: where a
    /// run stops, so the next host to take it finds where it stopped. Whether some store
    /// now holds all of it (true without a mirror).
    pub(crate) async fn mirror_all(&self, record: &RunRecord) -> bool {
        let Some(mirror) = self.mirror.get().cloned() else {
            return true;
        };
        mirror.retry_now(&record.id);
        self.mirror_up(record).await;
        self.mirror_settled(&record.id).await;
        let lags = mirror.lag(&record.id);
        lags.is_empty() || lags.iter().any(|l| l.behind == 0)
    }

    /// Sends every run's spans through `tracer` (set once, by the owner).
    pub fn set_tracer(&self, tracer: Arc<dyn RunTracer>) {
        let _ = self.tracer.set(tracer);
    }

    /// Claims the run's target across hosts, if a fence is configured.
    pub(crate) fn claim(&self, target: Option<&str>, run_id: &str) -> Result<(), EngineError> {
        match self.fence.get() {
            Some(fence) => fence
                .claim(&claim_name(target, run_id), run_id)
                .map_err(|e| EngineError::Refused(e.to_string())),
            None => Ok(()),
        }
    }

    /// Claims the run's target, from `over` by force when an operator named that holder;
    /// refused when a holder is named for a run no fence guards.
    pub(crate) fn claim_from(
        &self,
        record: &RunRecord,
        over: Option<&str>,
    ) -> Result<(), EngineError> {
        let run_id = record.id.as_str();
        let target = record.target.as_deref();
        match (over, self.fence.get()) {
            (Some(holder), Some(fence)) => fence
                .claim_over(&claim_name(target, run_id), run_id, holder)
                .map_err(|e| EngineError::Refused(e.to_string())),
            (Some(_), None) => Err(EngineError::Refused(format!(
                "--force names a holder to take run {run_id} over from, but this run is not fenced (no lease is configured): resume it without --force"
            ))),
            (None, _) => self.claim(target, run_id),
        }
    }

    /// Claims or renews the run's claim, saying whether another runner holds it
    /// ([`FenceError::Held`]) or the claim's service could not be reached.
    pub(crate) fn renew_claim(
        &self,
        target: Option<&str>,
        run_id: &str,
    ) -> Result<(), super::fence::FenceError> {
        match self.fence.get() {
            Some(fence) => fence.claim(&claim_name(target, run_id), run_id),
            None => Ok(()),
        }
    }

    /// Whether this process still holds the run's cross-host claim.
    pub(crate) fn claim_lost(&self, target: Option<&str>, run_id: &str) -> Option<String> {
        self.fence.get().and_then(|fence| {
            fence
                .check(&claim_name(target, run_id), run_id)
                .err()
                .map(|e| e.to_string())
        })
    }

    /// Lets the run's cross-host claim go (the run has ended).
    pub(crate) fn unclaim(&self, target: Option<&str>, run_id: &str) {
        if let Some(fence) = self.fence.get() {
            fence.release(&claim_name(target, run_id), run_id);
        }
    }

    /// Stops holding the run's claim without letting it go: it lapses after its duration
    /// (the run's end reached no store, so no other host should think it free sooner).
    pub(crate) fn abandon_claim(&self, target: Option<&str>, run_id: &str) {
        if let Some(fence) = self.fence.get() {
            fence.abandon(&claim_name(target, run_id), run_id);
        }
    }

    /// The state directory, once the owner has said where it is.
    pub fn state_dir(&self) -> Option<std::path::PathBuf> {
        self.state_dir.get().map(std::path::PathBuf::from)
    }

    /// Every run the journal holds with its status and parameters, for `lazarus gc`.
    pub fn statuses(&self) -> Result<Vec<KnownRun>, EngineError> {
        let mut out = Vec::new();
        for record in self.journal.runs()? {
            if let Ok((record, _, state)) = self.load(&record.id) {
                out.push((record.id.clone(), state.status, record.params.clone()));
            }
        }
        Ok(out)
    }

    /// The activity registry workflows are checked against.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Receives updates about every run.
    pub fn subscribe(&self) -> broadcast::Receiver<Update> {
        self.updates.subscribe()
    }

    pub(crate) fn publish(&self, update: Update) {
        let _ = self.updates.send(update);
    }

    /// Puts an event, stamped now, in the run's log (in memory until flushed).
    fn journal_now(&self, run: &str, event: Event) -> Result<(), JournalError> {
        let record = EventRecord {
            at_us: now_us(),
            event,
        };
        self.journal.append(run, &record)
    }

    /// Appends an event and tells followers; durable only after the next flush.
    pub(crate) fn append(&self, run: &str, event: Event) -> Result<(), JournalError> {
        self.journal_now(run, event)?;
        self.publish(Update::Changed {
            run: run.to_string(),
        });
        Ok(())
    }

    /// Appends an event and waits until it is on disk.
    pub(crate) async fn append_durable(
        self: &Arc<Self>,
        run: &str,
        event: Event,
    ) -> Result<(), JournalError> {
        self.journal_now(run, event)?;
        self.commit.durable().await?;
        self.publish(Update::Changed {
            run: run.to_string(),
        });
        Ok(())
    }

    /// Lets go of a finished run's target, durably, sharing the flush with other runs.
    pub(crate) async fn release_target(
        &self,
        record: &RunRecord,
        run_id: &str,
    ) -> Result<(), JournalError> {
        if let Some(target) = &record.target {
            self.journal.release_lock(target, run_id)?;
            self.commit.durable().await?;
        }
        Ok(())
    }

    /// Appends and flushes from synchronous control paths.
    fn append_sync_durable(&self, run: &str, event: Event) -> Result<(), JournalError> {
        self.append(run, event)?;
        self.journal.flush()
    }

    pub(crate) fn handle(&self, run: &str) -> Option<Arc<RunHandle>> {
        lock(&self.active).runs.get(run).cloned()
    }

    /// Ids of the runs this process is driving.
    pub fn active_runs(&self) -> Vec<String> {
        lock(&self.active).runs.keys().cloned().collect()
    }

    /// Waits until this process drives no run.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if lock(&self.active).idle() {
                return;
            }
            notified.await;
        }
    }

    /// Stops taking runs if none is being driven; returns whether it did. An owner calls
    /// this before letting go of the store, so no run can start in a process about to exit.
    pub fn close_if_idle(&self) -> bool {
        let mut active = lock(&self.active);
        if active.idle() {
            active.closed = true;
        }
        active.closed
    }

    /// The run's record, its pinned workflow and its folded state.
    pub(crate) fn load(&self, run_id: &str) -> Result<Loaded, EngineError> {
        let fresh = || -> Result<_, EngineError> {
            let Some(record) = self.journal.run(run_id)? else {
                return Ok(None);
            };
            let workflow = self.pinned_workflow(&record)?;
            Ok(Some((record, workflow)))
        };
        // Lock order: the fold cache, then `active` (nothing loads while holding `active`).
        let driven = |id: &str| lock(&self.active).runs.contains_key(id);
        self.folds
            .load(self.journal.as_ref(), run_id, fresh, driven)?
            .ok_or_else(|| EngineError::UnknownRun(run_id.to_string()))
    }

    /// The run's pinned workflow, parsed once per process (keyed by its hash).
    fn pinned_workflow(&self, record: &RunRecord) -> Result<Arc<Workflow>, EngineError> {
        if let Some(found) = lock(&self.workflows).get(&record.workflow_hash) {
            return Ok(Arc::clone(found));
        }
        let workflow = Arc::new(Workflow::parse(
            &format!("{} (pinned in run {})", record.workflow_source, record.id),
            &record.workflow_text,
            &self.registry,
        )?);
        lock(&self.workflows).insert(record.workflow_hash.clone(), Arc::clone(&workflow));
        Ok(workflow)
    }

    /// The run report.
    pub fn report(&self, run_id: &str) -> Result<RunReport, EngineError> {
        let (record, workflow, state) = self.load(run_id)?;
        let mut report =
            RunReport::build(&record, &workflow, &state, self.handle(run_id).is_some());
        if let Some(mirror) = self.mirror.get() {
            report.mirror = mirror.lag(run_id);
        }
        Ok(report)
    }

    /// A run's journaled events, oldest first: what a live view replays before it follows.
    pub fn events(&self, run_id: &str) -> Result<Vec<super::records::EventRecord>, EngineError> {
        if self.journal.run(run_id)?.is_none() {
            return Err(EngineError::UnknownRun(run_id.to_string()));
        }
        Ok(self.journal.events(run_id)?)
    }

    /// The most recent run's id.
    pub fn latest_run(&self) -> Result<Option<String>, EngineError> {
        Ok(self.journal.runs()?.last().map(|r| r.id.clone()))
    }

    /// One summary per run, oldest first.
    pub fn list(&self) -> Result<Vec<RunSummary>, EngineError> {
        let mut out = Vec::new();
        for record in self.journal.runs()? {
            match self.report(&record.id) {
                Ok(report) => out.push(RunSummary::from(&report)),
                Err(e) => out.push(RunSummary {
                    id: record.id.clone(),
                    workflow: record.workflow_name.clone(),
                    status: format!("unreadable: {e}"),
                    active: false,
                    target: record.target.clone(),
                    started_at: rfc3339(record.created_at_us),
                    operator: record.operator.clone(),
                    reason: record.reason.clone(),
                    ended_at: None,
                    duration_seconds: 0.0,
                    error: Some(e.to_string()),
                }),
            }
        }
        Ok(out)
    }

    fn describe_holder(&self, holder: &str) -> String {
        match self.report(holder) {
            Ok(r) => {
                let at = r
                    .halted
                    .as_ref()
                    .map(|h| format!(" at step \"{}\"", h.step))
                    .unwrap_or_default();
                format!(
                    "{} ({}{at}, started {} by {})",
                    r.id, r.status, r.started_at, r.operator
                )
            }
            Err(_) => holder.to_string(),
        }
    }

    /// Records a new run (pinning its workflow and taking its target lock) without starting it.
    pub fn submit(&self, sub: Submission) -> Result<String, EngineError> {
        let reason = sub.reason.trim();
        if reason.is_empty() {
            return Err(EngineError::Invalid(
                "a reason is required: --reason \"why this run is needed\"".into(),
            ));
        }
        check_reason(reason)?;
        for step in sub.halt_before.iter().chain(&sub.halt_after) {
            sub.workflow
                .check_step_id(step)
                .map_err(EngineError::Invalid)?;
        }
        if let Some(id) = &sub.id {
            super::params::check_identifier(id).map_err(|e| {
                EngineError::Invalid(format!(
                    "run id \"{}\": {e}",
                    super::params::escape_controls(id)
                ))
            })?;
        }
        let mut params = sub
            .workflow
            .resolve_params(&sub.params)
            .map_err(EngineError::Invalid)?;
        let state = self.state_dir.get().map_or("state", String::as_str);
        for (name, value) in params.iter_mut() {
            if !sub.params.contains_key(name) && value.contains(STATE_PLACEHOLDER) {
                *value = value.replace(STATE_PLACEHOLDER, state);
            }
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            let id = match &sub.id {
                Some(id) if valid_id(id) => id.clone(),
                Some(id) => {
                    return Err(EngineError::Invalid(format!(
                        "run id \"{}\" may hold only letters, digits, '-', '_', '.', ':' and '+', up to 64 characters, starting with a letter or digit",
                        super::params::escape_controls(id)
                    )));
                }
                None => generate_id(&sub.workflow.name),
            };
            let target = match &sub.workflow.target {
                Some(t) => {
                    let outputs = BTreeMap::new();
                    let scope = Scope {
                        params: &params,
                        outputs: &outputs,
                        run_id: &id,
                    };
                    Some(scope.render_text(t).map_err(EngineError::Refused)?)
                }
                None => None,
            };
            let record = RunRecord {
                id: id.clone(),
                workflow_name: sub.workflow.name.clone(),
                workflow_source: sub.workflow.source.clone(),
                workflow_text: sub.workflow.text.clone(),
                workflow_hash: sub.workflow.hash.clone(),
                params: params.clone(),
                target,
                reason: reason.to_string(),
                operator: sub.operator.clone(),
                created_at_us: now_us(),
                halt_before: sub.halt_before.clone(),
                halt_after: sub.halt_after.clone(),
            };
            // An id this journal holds is never claimed: the claim may be that run's, and
            // undoing a refused claim would let it go.
            if self.journal.run(&id)?.is_some() {
                if sub.id.is_none() && attempts < 5 {
                    continue;
                }
                return Err(JournalError::RunExists(id).into());
            }
            self.claim(record.target.as_deref(), &id)?;
            let created = self.journal.create_run(&record);
            if created.is_err() {
                self.unclaim(record.target.as_deref(), &id);
            }
            match created {
                Ok(()) => {
                    // Rides the run's first durable event; a run that lost it gets new ids
                    // from its first driver.
                    self.journal_now(&id, TraceIds::random().event())?;
                    tracing::info!(run = %id, workflow = %record.workflow_name, operator = %record.operator, reason = %record.reason, "run submitted");
                    self.publish(Update::Changed { run: id.clone() });
                    return Ok(id);
                }
                Err(JournalError::RunExists(_)) if sub.id.is_none() && attempts < 5 => continue,
                Err(JournalError::Locked { target, holder })
                    if self
                        .report(&holder)
                        .is_ok_and(|r| r.is_finished() && !r.active) =>
                {
                    // The holder finished but a crash kept it from letting go: free it.
                    tracing::warn!(target = %target, holder = %holder, "releasing a lock left by a finished run");
                    self.journal.release_lock(&target, &holder)?;
                    self.journal.flush()?;
                }
                Err(JournalError::Locked { target, holder }) => {
                    return Err(EngineError::Refused(format!(
                        "target \"{target}\" is locked by run {}; only one run per target at a time. Resume, roll back or cancel that run first (lazarus status {holder})",
                        self.describe_holder(&holder)
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Records a new run and starts driving it, atomically with respect to
    /// [`Engine::close_if_idle`]: a closing process refuses before anything is journaled.
    pub fn launch(self: &Arc<Self>, submission: Submission) -> Result<String, EngineError> {
        {
            let mut active = lock(&self.active);
            if active.closed {
                return Err(EngineError::ShuttingDown);
            }
            active.launching += 1;
        }
        let submitted = self.submit(submission);
        let mut active = lock(&self.active);
        active.launching -= 1;
        let run = match submitted {
            Ok(run) => run,
            Err(e) => {
                drop(active);
                self.idle.notify_waiters();
                return Err(e);
            }
        };
        let handle = Arc::new(RunHandle::new());
        active.runs.insert(run.clone(), Arc::clone(&handle));
        drop(active);
        self.spawn_driver(run.clone(), handle);
        Ok(run)
    }

    /// Starts driving a run in this process. Refused if this process already drives it.
    pub fn start(self: &Arc<Self>, run_id: &str) -> Result<(), EngineError> {
        if self.fence.get().is_some() && self.handle(run_id).is_none() {
            let (record, _, _) = self.load(run_id)?;
            self.claim(record.target.as_deref(), run_id)?;
        }
        let handle = {
            let mut active = lock(&self.active);
            if active.closed {
                return Err(EngineError::ShuttingDown);
            }
            if active.runs.contains_key(run_id) {
                return Err(EngineError::Refused(format!(
                    "run {run_id} is already being executed by this process (pid {})",
                    std::process::id()
                )));
            }
            let handle = Arc::new(RunHandle::new());
            active.runs.insert(run_id.to_string(), Arc::clone(&handle));
            handle
        };
        self.spawn_driver(run_id.to_string(), handle);
        Ok(())
    }

    fn spawn_driver(self: &Arc<Self>, run: String, handle: Arc<RunHandle>) {
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            let error = loop {
                let error = match engine.drive(&run, &handle).await {
                    Ok(()) => None,
                    Err(e) => {
                        tracing::error!(run = %run, error = %e, "run stopped with an error");
                        Some(e.to_string())
                    }
                };
                // A halt (or an error) is copied too, so another host sees where it stopped.
                if let Ok((record, _, _)) = engine.load(&run) {
                    engine.mirror_all(&record).await;
                }
                // A cancel or rollback posted while the driver was finishing is taken here,
                // under the same lock that posts them, so none is lost.
                let mut active = lock(&engine.active);
                match handle.take_request() {
                    Some(request) if error.is_none() => {
                        drop(active);
                        *lock(&handle.interrupt) = CancellationToken::new();
                        if let Err(e) = engine.apply_late_request(&run, request).await {
                            tracing::error!(run = %run, error = %e, "could not apply a request");
                        }
                    }
                    _ => {
                        active.runs.remove(&run);
                        break error;
                    }
                }
            };
            engine.publish(Update::Stopped { run, error });
            engine.idle.notify_waiters();
        });
    }

    /// Journals a cancel or rollback that reached the driver after it stopped looking.
    async fn apply_late_request(
        self: &Arc<Self>,
        run_id: &str,
        request: Request,
    ) -> Result<(), EngineError> {
        let (record, _, state) = self.load(run_id)?;
        match request {
            Request::Cancel { by } if !state.status.is_terminal() => {
                self.append_durable(run_id, Event::Cancelled { by }).await?;
            }
            Request::Rollback { by, reason }
                if !matches!(
                    state.status,
                    RunStatus::RolledBack | RunStatus::Cancelled | RunStatus::Refused
                ) =>
            {
                if let (RunStatus::Succeeded, Some(target)) = (state.status, &record.target) {
                    self.journal.acquire_lock(target, run_id)?;
                }
                if state.rollback.is_none() {
                    self.append_durable(run_id, Event::RollbackStarted { by, reason })
                        .await?;
                } else {
                    self.append_durable(run_id, Event::Resumed { by }).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Hands a cancel or rollback to the task driving the run, if there is one.
    fn post(&self, run_id: &str, request: Request) -> Result<bool, EngineError> {
        let active = lock(&self.active);
        let Some(handle) = active.runs.get(run_id) else {
            return Ok(false);
        };
        let mut slot = lock(&handle.request);
        if let Some(pending) = slot.as_ref() {
            return Err(EngineError::Refused(format!(
                "run {run_id} already has a pending {}",
                match pending {
                    Request::Cancel { .. } => "cancel",
                    Request::Rollback { .. } => "rollback",
                }
            )));
        }
        *slot = Some(request);
        drop(slot);
        handle.interrupt();
        Ok(true)
    }

    /// Refuses to journal anything that needs a driver when this process is closing.
    fn ensure_open(&self) -> Result<(), EngineError> {
        if lock(&self.active).closed {
            return Err(EngineError::ShuttingDown);
        }
        Ok(())
    }

    fn refuse_if_finished(state: &RunState, run_id: &str, action: &str) -> Result<(), EngineError> {
        if state.status.is_terminal() {
            return Err(EngineError::Refused(format!(
                "run {run_id} has already {}; there is nothing to {action}",
                match state.status {
                    RunStatus::Succeeded => "succeeded",
                    RunStatus::RolledBack => "been rolled back",
                    RunStatus::Refused => REFUSED_END,
                    _ => "been cancelled",
                }
            )));
        }
        Ok(())
    }

    /// Continues a halted, failed or interrupted run from its journal, with its pinned
    /// workflow.
    pub fn resume(self: &Arc<Self>, run_id: &str, by: &str) -> Result<String, EngineError> {
        self.resume_over(run_id, by, None)
    }

    /// [`Engine::resume`], taking the run's cross-host claim from `over` (a runner the
    /// operator has made sure is gone) even before it expires; journaled with the resume.
    pub fn resume_over(
        self: &Arc<Self>,
        run_id: &str,
        by: &str,
        over: Option<&str>,
    ) -> Result<String, EngineError> {
        let _serial = lock(&self.control);
        self.ensure_open()?;
        let (record, _, state) = self.load(run_id)?;
        Self::refuse_if_finished(&state, run_id, "resume")?;
        // A run that has just halted is still copying its journal to the stores: a resume
        // asked at that moment (a click on Resume as soon as "halted" shows) waits for its
        // driver to finish rather than being refused.
        let settled = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while matches!(state.status, RunStatus::Halted | RunStatus::Failed)
            && self.handle(run_id).is_some()
            && std::time::Instant::now() < settled
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if self.handle(run_id).is_some() {
            return Err(EngineError::Refused(format!(
                "run {run_id} is already being executed (by pid {}); `lazarus status {run_id} --follow` watches it",
                std::process::id()
            )));
        }
        self.claim_from(&record, over)?;
        let by = match over {
            Some(holder) => {
                tracing::warn!(run = %run_id, by, from = %holder, "run taken over by force");
                format!("{by} (taken over from {holder} by --force)")
            }
            None => by.to_string(),
        };
        self.append_sync_durable(run_id, Event::Resumed { by: by.clone() })?;
        tracing::info!(run = %run_id, by, "run resumed");
        self.start(run_id)?;
        Ok(format!("run {run_id} resumed by {by}"))
    }

    /// Asks a run to halt at the next step boundary, or at once (`now`: the running step is
    /// interrupted and runs again on resume).
    pub fn halt(&self, run_id: &str, by: &str, now: bool) -> Result<String, EngineError> {
        let _serial = lock(&self.control);
        let (_, _, state) = self.load(run_id)?;
        Self::refuse_if_finished(&state, run_id, "halt")?;
        if state.status == RunStatus::Halted {
            return Err(EngineError::Refused(format!(
                "run {run_id} is already halted; `lazarus resume {run_id}` continues it"
            )));
        }
        self.append_sync_durable(
            run_id,
            Event::HaltRequested {
                by: by.to_string(),
                now,
            },
        )?;
        match self.handle(run_id) {
            Some(handle) => {
                if now {
                    handle.interrupt();
                } else {
                    handle.wake.notify_waiters();
                }
                Ok(if now {
                    format!(
                        "run {run_id}: halting now (the running step is interrupted and runs again on resume)"
                    )
                } else {
                    format!("run {run_id}: will halt at the next step boundary")
                })
            }
            None => {
                // Nobody drives it: record the halt itself so the status says so.
                let step = if state.rollback.is_some() {
                    state
                        .steps
                        .iter()
                        .rev()
                        .find(|s| {
                            s.output.is_some()
                                && s.compensation
                                    .as_ref()
                                    .and_then(|c| c.completed_us)
                                    .is_none()
                        })
                        .map(|s| s.id.clone())
                } else {
                    state.next_step().map(|s| s.id.clone())
                }
                .unwrap_or_default();
                self.append_sync_durable(
                    run_id,
                    Event::Halted {
                        step,
                        reason: HaltReason::Requested,
                    },
                )?;
                Ok(format!("run {run_id} halted"))
            }
        }
    }

    /// Approves the `approve` step a run is waiting at.
    pub fn approve(
        &self,
        run_id: &str,
        by: &str,
        comment: Option<String>,
    ) -> Result<String, EngineError> {
        let _serial = lock(&self.control);
        let (_, _, state) = self.load(run_id)?;
        Self::refuse_if_finished(&state, run_id, "approve")?;
        let waiting = state
            .steps
            .iter()
            .find(|s| s.approval_prompt.is_some() && s.output.is_none());
        let Some(step) = waiting else {
            let at = state
                .next_step()
                .map(|s| format!(", next step \"{}\"", s.id))
                .unwrap_or_default();
            return Err(EngineError::Refused(format!(
                "run {run_id} is not waiting for approval (status {}{at})",
                state.status
            )));
        };
        if by.trim().is_empty() {
            return Err(EngineError::Invalid(
                "say who approves: --by NAME".to_string(),
            ));
        }
        if let Some(comment) = &comment {
            super::params::check_text(comment, MAX_REASON)
                .map_err(|e| EngineError::Invalid(format!("the comment: {e}")))?;
        }
        let step_id = step.id.clone();
        self.append_sync_durable(
            run_id,
            Event::Approved {
                step: step_id.clone(),
                by: by.to_string(),
                comment,
            },
        )?;
        tracing::info!(run = %run_id, step = %step_id, by, "approved");
        match self.handle(run_id) {
            Some(handle) => {
                handle.wake.notify_waiters();
                Ok(format!("run {run_id}: step \"{step_id}\" approved by {by}"))
            }
            None => Ok(format!(
                "run {run_id}: step \"{step_id}\" approved by {by}; no process is executing the run: `lazarus resume {run_id}` continues it"
            )),
        }
    }

    /// Undoes a run: interrupts it if it is running, then runs the completed steps'
    /// compensations newest first. Returns whether this call started driving the run.
    pub fn rollback(
        self: &Arc<Self>,
        run_id: &str,
        by: &str,
        reason: &str,
    ) -> Result<String, EngineError> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(EngineError::Invalid(
                "a reason is required: --reason \"why this run is being rolled back\"".into(),
            ));
        }
        check_reason(reason)?;
        let _serial = lock(&self.control);
        let (record, _, state) = self.load(run_id)?;
        match state.status {
            RunStatus::RolledBack | RunStatus::Cancelled | RunStatus::Refused => {
                return Self::refuse_if_finished(&state, run_id, "roll back")
                    .map(|_| String::new());
            }
            RunStatus::RollingBack if self.handle(run_id).is_some() => {
                return Err(EngineError::Refused(format!(
                    "run {run_id} is already rolling back"
                )));
            }
            _ => {}
        }
        let request = Request::Rollback {
            by: by.to_string(),
            reason: reason.to_string(),
        };
        if self.post(run_id, request)? {
            return Ok(format!("run {run_id}: rolling back"));
        }
        self.ensure_open()?;
        // Across hosts first: nothing is journaled for a target another runner holds.
        self.claim(record.target.as_deref(), run_id)?;
        if let (RunStatus::Succeeded, Some(target)) = (state.status, &record.target) {
            // The lock was released when the run succeeded; undoing it needs it again.
            self.journal
                .acquire_lock(target, run_id)
                .map_err(|e| match e {
                    JournalError::Locked { target, holder } => EngineError::Refused(format!(
                        "cannot roll back run {run_id}: target \"{target}\" is now locked by run {}",
                        self.describe_holder(&holder)
                    )),
                    other => other.into(),
                })?;
        }
        if state.rollback.is_none() {
            self.append_sync_durable(
                run_id,
                Event::RollbackStarted {
                    by: by.to_string(),
                    reason: reason.to_string(),
                },
            )?;
        } else {
            self.append_sync_durable(run_id, Event::Resumed { by: by.to_string() })?;
        }
        tracing::info!(run = %run_id, by, reason, "rollback started");
        self.start(run_id)?;
        Ok(format!("run {run_id}: rolling back"))
    }

    /// Stops a run for good, without compensation, and releases its target.
    pub fn cancel(self: &Arc<Self>, run_id: &str, by: &str) -> Result<String, EngineError> {
        let _serial = lock(&self.control);
        let record = self
            .journal
            .run(run_id)?
            .ok_or_else(|| EngineError::UnknownRun(run_id.to_string()))?;
        match self.load(run_id) {
            Ok((_, _, state)) => Self::refuse_if_finished(&state, run_id, "cancel")?,
            // A run whose pinned workflow no longer parses (an activity renamed by an
            // upgrade) can still be cancelled, so its target is not locked forever.
            Err(EngineError::Workflow(e)) => {
                tracing::warn!(run = %run_id, error = %e, "cancelling a run whose workflow no longer loads");
                if let Some(status) = terminal_status(&self.journal.events(run_id)?) {
                    return Err(EngineError::Refused(format!(
                        "run {run_id} has already {status}; there is nothing to cancel"
                    )));
                }
            }
            Err(e) => return Err(e),
        }
        if self.post(run_id, Request::Cancel { by: by.to_string() })? {
            return Ok(format!("run {run_id}: cancelling"));
        }
        self.append_sync_durable(run_id, Event::Cancelled { by: by.to_string() })?;
        if let Some(target) = &record.target {
            self.journal.release_lock(target, run_id)?;
            self.journal.flush()?;
        }
        tracing::info!(run = %run_id, by, "cancelled");
        // Clean up what it made (partial downloads, a restored database): a driver finds
        // the run finished and does only that. A closing process leaves it to `lazarus gc`.
        if let Err(e) = self.start(run_id) {
            tracing::info!(run = %run_id, error = %e, "cleanup left to lazarus gc");
            return Ok(format!(
                "run {run_id} cancelled; what it made is left for `lazarus gc`"
            ));
        }
        Ok(format!("run {run_id} cancelled"))
    }

    /// Halts every run this process drives, at once (used on SIGINT/SIGTERM), so each can be
    /// resumed later.
    pub fn interrupt_all(&self, by: &str) {
        let handles: Vec<(String, Arc<RunHandle>)> = lock(&self.active)
            .runs
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        for (run, handle) in handles {
            if let Err(e) = self.append_sync_durable(
                &run,
                Event::HaltRequested {
                    by: by.to_string(),
                    now: true,
                },
            ) {
                tracing::error!(run = %run, error = %e, "could not journal the halt request");
            }
            handle.interrupt();
        }
    }
}
