//! The contract between the engine and the work it drives: the [`Activity`] trait, the
//! [`ActivityContext`] an activity runs in, and the [`Registry`] of activities by name.
//!
//! The engine knows activities only through this trait, so runbook steps (downloads,
//! restores, cut-overs) live in `activities/` and the engine never imports one.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// One input an activity accepts in a step's `with` table.
#[derive(Debug, Clone, Copy)]
pub struct InputSpec {
    /// Key in the `with` table.
    pub name: &'static str,
    /// Whether a step must give it.
    pub required: bool,
    /// One line for `lazarus workflows --activities` and error messages.
    pub help: &'static str,
}

/// What an activity declares about itself, so workflow files can be checked before a run.
#[derive(Debug, Clone, Copy)]
pub struct ActivitySpec {
    /// The name steps use in `activity = "..."`.
    pub name: &'static str,
    /// One line saying what it does.
    pub summary: &'static str,
    /// Accepted inputs; anything else in `with` is refused as a likely typo.
    pub inputs: &'static [InputSpec],
    /// Top-level fields of its output, so `${steps.ID.FIELD}` can be checked at load time.
    pub outputs: &'static [&'static str],
}

/// Why an activity attempt did not produce an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Worth another attempt under the step's retry policy (timeouts, 5xx, resets).
    Retryable,
    /// Another attempt would fail the same way (bad input, HMAC failure, 403).
    Permanent,
    /// The attempt was stopped by a halt, cancel or timeout through its cancellation token.
    Cancelled,
    /// The run's own input is wrong (a backup id that does not exist, a key that decrypts
    /// nothing, a database with no backup): `resume` cannot fix what the run pinned, so the
    /// run ends and frees its target for a corrected one. Appended last: older journal
    /// records keep their encoding.
    Refused,
    /// This machine lacks what the step needs (a PostgreSQL tool of the server's major
    /// version, say): nothing is wrong with the run's input or its backup, so the run halts
    /// whatever its `on_failure` says — no rollback, no backup marked FAILED — and `resume`
    /// finishes it once the machine has it. Appended last: older journal records keep their
    /// encoding.
    Environment,
}

/// A failed activity attempt, with a message written for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ActivityError {
    /// Whether retrying can help.
    pub kind: FailureKind,
    /// What went wrong and, where possible, what to do about it.
    pub message: String,
}

impl ActivityError {
    /// A failure that another attempt may fix.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Retryable,
            message: message.into(),
        }
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Permanent,
            message: message.into(),
        }
    }

    /// The run's own input is wrong: the run ends (failed) and frees its target, because a
    /// resume would meet the same input. The message says what to run instead.
    pub fn refused(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Refused,
            message: message.into(),
        }
    }

    /// This machine lacks what the step needs: the run halts (see
    /// [`FailureKind::Environment`]). The message names what to install.
    pub fn environment(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Environment,
            message: message.into(),
        }
    }

    /// The attempt stopped because its cancellation token fired.
    pub fn cancelled(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Cancelled,
            message: message.into(),
        }
    }

    /// A step's inputs did not match what the activity accepts.
    pub fn bad_input(activity: &str, err: impl fmt::Display) -> Self {
        Self::permanent(format!("bad inputs for activity \"{activity}\": {err}"))
    }
}

/// Live progress of a long step, for the progress bar (not journaled: use checkpoints).
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Progress {
    /// Units done so far.
    pub done: u64,
    /// Units in all, when known.
    pub total: Option<u64>,
    /// What is counted: "bytes", "items", ...
    pub unit: String,
    /// A short status line (the last line a command printed, the store being read, ...).
    pub message: Option<String>,
}

/// A human's approval of an `approve` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Approval {
    /// Who approved.
    pub by: String,
    /// What they said, if anything.
    pub comment: Option<String>,
    /// When, RFC 3339.
    pub at: String,
}

/// The services the engine lends to a running step.
#[async_trait]
pub trait StepHost: Send + Sync {
    /// Journals a checkpoint durably before returning.
    async fn checkpoint(&self, data: Vec<u8>) -> Result<(), String>;
    /// Publishes live progress to whoever follows the run.
    fn progress(&self, progress: Progress);
    /// Waits, durably, until a human approves this step or the attempt is cancelled.
    async fn await_approval(
        &self,
        prompt: String,
        cancel: CancellationToken,
    ) -> Result<Approval, ActivityError>;
    /// The run so far (the run report as JSON), for activities that summarise it.
    fn run_summary(&self) -> Value;
}

/// What an activity attempt can see and use: who it is, its last checkpoint, its
/// cancellation token, and the engine's services.
pub struct ActivityContext {
    /// The run being executed.
    pub run_id: String,
    /// The step (or, during rollback, the step being compensated).
    pub step_id: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    cancel: CancellationToken,
    checkpoint: Option<Vec<u8>>,
    host: Arc<dyn StepHost>,
}

impl ActivityContext {
    /// Builds a context; used by the engine and by tests that drive an activity directly.
    pub fn new(
        run_id: String,
        step_id: String,
        attempt: u32,
        cancel: CancellationToken,
        checkpoint: Option<Vec<u8>>,
        host: Arc<dyn StepHost>,
    ) -> Self {
        Self {
            run_id,
            step_id,
            attempt,
            cancel,
            checkpoint,
            host,
        }
    }

    /// Fires when the attempt must stop (halt --now, cancel, timeout). Activities stop
    /// promptly and leave no partial output under a final name.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// The most recent checkpoint journaled by any earlier attempt of this step, if it still
    /// parses as `T`. Activities must verify what it claims before trusting it.
    pub fn last_checkpoint<T: DeserializeOwned>(&self) -> Option<T> {
        self.checkpoint
            .as_deref()
            .and_then(|bytes| serde_json::from_slice(bytes).ok())
    }

    /// Journals coarse progress durably, so a resumed attempt can continue from it.
    pub async fn checkpoint<T: Serialize>(&self, value: &T) -> Result<(), ActivityError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| ActivityError::permanent(format!("checkpoint not serialisable: {e}")))?;
        self.host
            .checkpoint(bytes)
            .await
            .map_err(|e| ActivityError::retryable(format!("could not journal checkpoint: {e}")))
    }

    /// Publishes live progress for the progress bar.
    pub fn progress(&self, progress: Progress) {
        self.host.progress(progress);
    }

    /// Waits until a human approves (or the attempt is cancelled). An approval given before
    /// a restart is found in the journal and returned at once.
    pub async fn wait_for_approval(&self, prompt: &str) -> Result<Approval, ActivityError> {
        self.host
            .await_approval(prompt.to_string(), self.cancel.clone())
            .await
    }

    /// The run report so far, as JSON.
    pub fn run_summary(&self) -> Value {
        self.host.run_summary()
    }
}

/// A unit of runbook work. Implementations must be idempotent: re-running with the same
/// inputs and checkpoint gives the same result (write to a temporary name, rename
/// atomically, verify an existing output before reusing it).
#[async_trait]
pub trait Activity: Send + Sync {
    /// The activity's name, inputs and outputs.
    fn spec(&self) -> &'static ActivitySpec;

    /// Checks inputs that can be checked before the run (such as "argv or shell, not both");
    /// values may still hold `${...}` references.
    fn check_inputs(&self, _inputs: &Value) -> Result<(), String> {
        Ok(())
    }

    /// Inputs that name a file or directory this activity reads, made by an earlier step
    /// (a download, an unpacked archive). When one is missing as the step is about to run —
    /// the run moved to a host that never had it, or it was removed — the step that made it
    /// runs again first.
    fn input_files(&self) -> &'static [&'static str] {
        &[]
    }

    /// Does the work of one attempt.
    async fn run(&self, ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError>;

    /// Whether these inputs carry their own compensation (e.g. `command`'s `undo`).
    fn compensates_itself(&self, _inputs: &Value) -> bool {
        false
    }

    /// Undoes a completed step, given its inputs and output; used during rollback when the
    /// step declares no explicit `compensate`.
    async fn compensate(
        &self,
        _ctx: &ActivityContext,
        _inputs: Value,
        _output: Value,
    ) -> Result<Value, ActivityError> {
        Err(ActivityError::permanent(format!(
            "activity \"{}\" has no built-in compensation",
            self.spec().name
        )))
    }

    /// Removes what this step made that nothing needs once its run has ended without
    /// success (cancelled, rolled back, refused): a partial download, unpacked files, a
    /// restored database no traffic reached. Called for every step that started, completed
    /// or not, and again by `lazarus gc`, so it must be idempotent. The default makes
    /// nothing to remove.
    async fn discard(
        &self,
        _ctx: &ActivityContext,
        _leftovers: Leftovers,
    ) -> Result<Discarded, ActivityError> {
        Ok(Discarded::default())
    }
}

/// What the engine hands [`Activity::discard`] about one step of a run that ended without
/// success.
#[derive(Debug, Clone)]
pub struct Leftovers {
    /// The step's inputs, rendered as its attempts saw them.
    pub inputs: Value,
    /// Its output, when it completed.
    pub output: Option<Value>,
    /// A later step that changed something outside the run (a cut-over) completed after it:
    /// what this step made may hold data written since, so it is kept.
    pub used: bool,
    /// List what would go, remove nothing (`lazarus gc --dry-run`).
    pub dry_run: bool,
}

/// What [`Activity::discard`] did: one line per thing, for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Discarded {
    /// What was removed (or, in a dry run, would be), with its size where known.
    pub removed: Vec<String>,
    /// What was left in place, each with the reason.
    pub kept: Vec<String>,
    /// Why the cleanup could not finish, if it could not (`lazarus gc` tries again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

impl Discarded {
    /// Nothing removed, nothing kept, nothing failed.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.kept.is_empty() && self.failed.is_none()
    }
}

/// Activities by name. The product registry holds only real activities; benchmarks and
/// tests may build their own.
#[derive(Clone, Default)]
pub struct Registry {
    activities: BTreeMap<&'static str, Arc<dyn Activity>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an activity under its spec's name, replacing any with the same name.
    pub fn register(&mut self, activity: Arc<dyn Activity>) {
        self.activities.insert(activity.spec().name, activity);
    }

    /// The activity called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Activity>> {
        self.activities.get(name)
    }

    /// All registered names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.activities.keys().copied().collect()
    }

    /// All activities, sorted by name.
    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Activity>> {
        self.activities.values()
    }
}
