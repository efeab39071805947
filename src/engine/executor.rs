//! Drives one run: skip what the journal says is done, run the rest with retry, backoff and
//! timeout, halt where asked, and roll back through compensations newest first.
//!
//! The driver re-folds the journal at every decision point; everything it decides is
//! journaled before it acts on it, so a kill at any instant resumes correctly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing::field::Empty;

use super::activity::{ActivityContext, ActivityError, Discarded, FailureKind, Leftovers};
use super::duration::format_duration;
use super::host::AttemptHost;
use super::records::{Event, HaltReason, RunRecord};
use super::rerun::lost_output;
use super::runtime::{Engine, EngineError, Request, RunHandle, lock};
use super::state::{RunState, RunStatus, StepState, StepStatus};
use super::template::Scope;
use super::trace::{TRACE_TARGET, TraceIds};
use super::workflow::{OnFailure, RetryPolicy, Workflow, evaluate_condition};

/// How long a cancelled attempt gets to clean up before it is dropped.
const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// How one step (all its attempts) ended.
enum StepOutcome {
    Completed,
    /// Interrupted by halt --now, cancel, rollback or shutdown.
    Interrupted,
    /// Halted while waiting to retry.
    HaltedInBackoff,
    /// Failed for good, with the message for the operator and why (the run's own input
    /// refused, the machine lacking something, or the step itself).
    Failed(String, FailureKind),
}

/// How one attempt ended.
enum AttemptOutcome {
    Done(Value),
    /// Stopped by an interruption after it started.
    Interrupted,
    /// Never started: the run was interrupted before it could.
    NotStarted,
    Failed(ActivityError),
}

/// What to run for an attempt: a step's activity, or its compensation.
#[derive(Clone, Copy)]
enum Work {
    Step,
    Compensation,
}

/// How long a host that ended a run keeps its claim while the stores do not take the end.
const END_COPY_PATIENCE: Duration = Duration::from_secs(600);

impl Engine {
    /// Copies a run's end to the stores, keeping (renewing) the run's claim until some store
    /// holds it: a host that lets the claim go first would let another host drive the run's
    /// last steps again. Gives up when another runner holds the claim, or after
    /// [`END_COPY_PATIENCE`]; whether the end landed.
    async fn end_reaches_a_store(&self, record: &RunRecord) -> bool {
        if self.mirror_all(record).await {
            return true;
        }
        let run_id = record.id.as_str();
        let target = record.target.as_deref();
        // Said at error level: the person waiting for the command must see why it waits.
        tracing::error!(run = %run_id, "the run has ended here, but its end has not reached any store: keeping its lease and trying again every 2 s for up to {} min, so no other host drives it again (Ctrl-C leaves the lease to lapse)", END_COPY_PATIENCE.as_secs() / 60);
        let until = Instant::now() + END_COPY_PATIENCE;
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_secs(2)).await;
            match tokio::task::block_in_place(|| self.renew_claim(target, run_id)) {
                Err(e @ super::fence::FenceError::Held(_)) => {
                    tracing::warn!(run = %run_id, error = %e, "another runner took the run's lease before its end reached the stores");
                    return false;
                }
                // Unreachable: the stores may be back at the next try.
                Err(_) => continue,
                Ok(()) => {}
            }
            if self.mirror_all(record).await {
                tracing::info!(run = %run_id, "the run's end reached the stores");
                return true;
            }
        }
        false
    }

    /// Drives a run until it finishes, halts, or is cancelled.
    pub(crate) async fn drive(
        self: &Arc<Self>,
        run_id: &str,
        handle: &Arc<RunHandle>,
    ) -> Result<(), EngineError> {
        self.ensure_trace_ids(run_id)?;
        loop {
            let (record, workflow, state) = self.load(run_id)?;
            match state.status {
                RunStatus::Succeeded
                | RunStatus::RolledBack
                | RunStatus::Cancelled
                | RunStatus::Refused => {
                    self.release_target(&record, run_id).await?;
                    if state.status != RunStatus::Succeeded {
                        self.discard_leftovers(run_id, false, true).await?;
                    }
                    // The end is copied before the claim goes: a host that takes the run
                    // next finds it ended.
                    if self.end_reaches_a_store(&record).await {
                        self.unclaim(record.target.as_deref(), run_id);
                    } else {
                        tracing::warn!(run = %run_id, "the run's end reached no store; its lease is left to lapse rather than let go");
                        self.abandon_claim(record.target.as_deref(), run_id);
                    }
                    if let (Some(tracer), Some(ids)) = (self.tracer.get(), state.trace) {
                        tracer.run_ended(&ids, &record, &state);
                    }
                    return Ok(());
                }
                RunStatus::Halted | RunStatus::Failed => return Ok(()),
                RunStatus::RollingBack => {
                    self.roll_back(run_id, handle).await?;
                    continue;
                }
                RunStatus::Running | RunStatus::WaitingApproval => {}
            }
            if let Some(request) = handle.take_request() {
                self.take(run_id, request).await?;
                continue;
            }
            let Some(next) = state.next_step() else {
                self.append_durable(run_id, Event::Succeeded).await?;
                tracing::info!(run = %run_id, "run succeeded");
                continue;
            };
            if state.pending_halt.is_some() {
                self.halt_at(run_id, next.id.clone(), HaltReason::Requested)
                    .await?;
                return Ok(());
            }
            if let Some(lost) = self.claim_lost(record.target.as_deref(), run_id) {
                tracing::warn!(run = %run_id, %lost, "the target's claim was lost; halting");
                self.halt_at(run_id, next.id.clone(), HaltReason::Fenced(lost))
                    .await?;
                return Ok(());
            }
            // Whoever continues this run elsewhere starts at most one step back: the copy of
            // the previous step's events lands while this one runs.
            self.mirror_up(&record).await;
            // Waiting for that copy takes time a lease can run out in: look again.
            if let Some(lost) = self.claim_lost(record.target.as_deref(), run_id) {
                tracing::warn!(run = %run_id, %lost, "the target's claim was lost; halting");
                self.halt_at(run_id, next.id.clone(), HaltReason::Fenced(lost))
                    .await?;
                return Ok(());
            }
            let step_id = next.id.clone();
            if let Some(condition) = workflow.step(&step_id).and_then(|s| s.when.clone()) {
                let outputs = state.outputs();
                let scope = Scope {
                    params: &record.params,
                    outputs: &outputs,
                    run_id,
                };
                let verdict = scope
                    .render_text(&condition)
                    .and_then(|rendered| evaluate_condition(&rendered).map(|v| (v, rendered)));
                match verdict {
                    Ok((false, rendered)) => {
                        tracing::info!(run = %run_id, step = %step_id, condition = %rendered, "step skipped");
                        self.append_durable(
                            run_id,
                            Event::StepSkipped {
                                step: step_id.clone(),
                                condition: condition.clone(),
                                evaluated: rendered,
                            },
                        )
                        .await?;
                        continue;
                    }
                    Ok((true, _)) => {}
                    Err(e) => {
                        let error = format!("step \"{step_id}\": when: {e}");
                        self.halt_at(run_id, step_id, HaltReason::StepFailed(error))
                            .await?;
                        return Ok(());
                    }
                }
            }
            if record.halt_before.contains(&step_id) && !state.honoured(&step_id, false) {
                self.halt_at(run_id, step_id, HaltReason::HaltBefore)
                    .await?;
                return Ok(());
            }
            if let Some(lost) = lost_output(
                &self.registry,
                &workflow,
                &state,
                &record.params,
                run_id,
                &step_id,
            ) {
                tracing::warn!(run = %run_id, step = %lost.producer, reason = %lost.reason, "a completed step's output is gone; it runs again");
                self.append_durable(
                    run_id,
                    Event::OutputLost {
                        step: lost.producer,
                        reason: lost.reason,
                    },
                )
                .await?;
                continue;
            }
            match self
                .run_step(run_id, &workflow, &state, &step_id, handle)
                .await?
            {
                StepOutcome::Completed => {
                    if record.halt_after.contains(&step_id) && !state.honoured(&step_id, true) {
                        self.halt_at(run_id, step_id, HaltReason::HaltAfter).await?;
                        return Ok(());
                    }
                }
                StepOutcome::Interrupted => {
                    if let Some(request) = handle.take_request() {
                        self.take(run_id, request).await?;
                        continue;
                    }
                    self.halt_at(run_id, step_id, HaltReason::Interrupted)
                        .await?;
                    return Ok(());
                }
                StepOutcome::HaltedInBackoff => {
                    self.halt_at(run_id, step_id, HaltReason::Requested).await?;
                    return Ok(());
                }
                StepOutcome::Failed(error, FailureKind::Refused)
                    if !self.has_undo(&workflow, &state) =>
                {
                    tracing::warn!(run = %run_id, step = %step_id, %error, "input refused; the run ends");
                    self.append_durable(
                        run_id,
                        Event::Refused {
                            step: step_id,
                            error,
                        },
                    )
                    .await?;
                }
                // The machine lacks what the step needs (a tool of the server's version):
                // nothing is wrong with the run or its backup, so nothing is rolled back or
                // marked; installing it and `resume` finishes the run.
                StepOutcome::Failed(error, FailureKind::Environment) => {
                    tracing::warn!(run = %run_id, step = %step_id, %error, "this machine lacks what the step needs; halting");
                    self.halt_at(run_id, step_id, HaltReason::StepFailed(error))
                        .await?;
                    return Ok(());
                }
                StepOutcome::Failed(error, _) => match workflow.on_failure {
                    OnFailure::Halt => {
                        tracing::warn!(run = %run_id, step = %step_id, %error, "step failed; halting");
                        self.halt_at(run_id, step_id, HaltReason::StepFailed(error))
                            .await?;
                        return Ok(());
                    }
                    OnFailure::Rollback => {
                        tracing::warn!(run = %run_id, step = %step_id, %error, "step failed; rolling back");
                        self.append_durable(
                            run_id,
                            Event::RollbackStarted {
                                by: "lazarus".to_string(),
                                reason: format!("step \"{step_id}\" failed: {error}"),
                            },
                        )
                        .await?;
                    }
                },
            }
        }
    }

    /// Cleans up after a run that ended without success: asks each step that started,
    /// newest first, to remove what it made that nothing needs (see
    /// [`crate::engine::Activity::discard`]), and journals what each removed and kept.
    /// `only_new` skips steps already cleaned up (the driver); `lazarus gc` looks again. A
    /// step that cannot clean up is reported, never fatal: `lazarus gc` tries again later.
    pub async fn discard_leftovers(
        self: &Arc<Self>,
        run_id: &str,
        dry_run: bool,
        only_new: bool,
    ) -> Result<Vec<(String, Discarded)>, EngineError> {
        let (record, workflow, state) = self.load(run_id)?;
        let outputs = state.outputs();
        let scope = Scope {
            params: &record.params,
            outputs: &outputs,
            run_id,
        };
        let mut done = Vec::new();
        for (index, step) in state.steps.iter().enumerate().rev() {
            if step.attempts.is_empty() || (only_new && step.discarded.is_some()) {
                continue;
            }
            let Some(def) = workflow.step(&step.id) else {
                continue;
            };
            let Some(activity) = self.registry.get(&def.activity).cloned() else {
                continue;
            };
            let Ok(inputs) = scope.render(&def.with) else {
                continue;
            };
            // Something outside the run (traffic) may have used this step's product.
            let used = state.steps[index + 1..]
                .iter()
                .any(|later| later.completed_us.is_some() && self.has_effect(&workflow, later));
            let handle = Arc::new(RunHandle::new());
            let host = Arc::new(AttemptHost::new(
                Arc::clone(self),
                run_id.to_string(),
                step.id.clone(),
                0,
                handle,
            ));
            let ctx = ActivityContext::new(
                run_id.to_string(),
                step.id.clone(),
                0,
                CancellationToken::new(),
                step.checkpoint.clone(),
                host,
            );
            let leftovers = Leftovers {
                inputs,
                output: step.output.clone(),
                used,
                dry_run,
            };
            let discarded = activity
                .discard(&ctx, leftovers)
                .await
                .unwrap_or_else(|e| Discarded {
                    failed: Some(e.message),
                    ..Discarded::default()
                });
            if discarded.is_empty() {
                continue;
            }
            if !dry_run && step.discarded.as_ref() != Some(&discarded) {
                let output = serde_json::to_vec(&discarded).unwrap_or_default();
                self.append_durable(
                    run_id,
                    Event::Discarded {
                        step: step.id.clone(),
                        output,
                    },
                )
                .await?;
            }
            match &discarded.failed {
                Some(e) => {
                    tracing::warn!(run = %run_id, step = %step.id, error = %e, "could not clean up; `lazarus gc` tries again");
                }
                None => {
                    tracing::info!(run = %run_id, step = %step.id, removed = ?discarded.removed, kept = ?discarded.kept, "cleaned up");
                }
            }
            done.push((step.id.clone(), discarded));
        }
        Ok(done)
    }

    /// A completed step that changed something outside the run, which a rollback undoes.
    fn has_effect(&self, workflow: &Workflow, step: &StepState) -> bool {
        step.status != StepStatus::Skipped
            && workflow.step(&step.id).is_some_and(|def| {
                def.compensate.is_some()
                    || self
                        .registry
                        .get(&def.activity)
                        .is_some_and(|a| a.compensates_itself(&def.with))
            })
    }

    /// A completed step whose effect a rollback would undo (its compensation has not run).
    /// A skipped step did nothing, so there is nothing to undo (its output is the skip).
    fn needs_undo(&self, workflow: &Workflow, step: &StepState) -> bool {
        step.output.is_some()
            && step
                .compensation
                .as_ref()
                .and_then(|c| c.completed_us)
                .is_none()
            && self.has_effect(workflow, step)
    }

    /// Some completed step has an effect to undo: a refusal then halts (or rolls back) as
    /// any failure does, instead of ending the run over what it already changed.
    fn has_undo(&self, workflow: &Workflow, state: &RunState) -> bool {
        state.steps.iter().any(|s| self.needs_undo(workflow, s))
    }

    async fn halt_at(
        self: &Arc<Self>,
        run_id: &str,
        step: String,
        reason: HaltReason,
    ) -> Result<(), EngineError> {
        tracing::info!(run = %run_id, step = %step, ?reason, "run halted");
        self.append_durable(run_id, Event::Halted { step, reason })
            .await?;
        Ok(())
    }

    /// Carries out a cancel or rollback request taken from the run's handle.
    async fn take(self: &Arc<Self>, run_id: &str, request: Request) -> Result<(), EngineError> {
        match request {
            Request::Cancel { by } => {
                tracing::info!(run = %run_id, by = %by, "cancelled");
                self.append_durable(run_id, Event::Cancelled { by }).await?;
            }
            Request::Rollback { by, reason } => {
                tracing::info!(run = %run_id, by = %by, reason = %reason, "rollback started");
                self.append_durable(run_id, Event::RollbackStarted { by, reason })
                    .await?;
            }
        }
        Ok(())
    }

    /// Runs a step (every attempt it takes) inside its trace span.
    async fn run_step(
        self: &Arc<Self>,
        run_id: &str,
        workflow: &Workflow,
        state: &RunState,
        step_id: &str,
        handle: &Arc<RunHandle>,
    ) -> Result<StepOutcome, EngineError> {
        let activity = workflow
            .step(step_id)
            .map(|s| s.activity.as_str())
            .unwrap_or_default();
        let span = tracing::info_span!(
            target: TRACE_TARGET,
            "step",
            otel.name = %format!("step {step_id}"),
            lazarus.run = %run_id,
            lazarus.workflow = %workflow.name,
            lazarus.step = %step_id,
            lazarus.activity = %activity,
            lazarus.outcome = Empty,
            otel.status_code = Empty,
            otel.status_message = Empty,
        );
        if let (Some(tracer), Some(ids)) = (self.tracer.get(), state.trace) {
            tracer.adopt(&span, &ids);
        }
        let outcome = self
            .run_step_attempts(run_id, workflow, state, step_id, handle)
            .instrument(span.clone())
            .await?;
        let (name, error) = match &outcome {
            StepOutcome::Completed => ("completed", None),
            StepOutcome::Interrupted => ("interrupted", None),
            StepOutcome::HaltedInBackoff => ("halted", None),
            StepOutcome::Failed(message, _) => ("failed", Some(message.as_str())),
        };
        span.record("lazarus.outcome", name);
        if let Some(message) = error {
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_message", message);
        }
        Ok(outcome)
    }

    /// Journals trace ids for a run that has none (created before traces, or lost them
    /// in a crash right after creation), when a tracer is configured.
    fn ensure_trace_ids(&self, run_id: &str) -> Result<(), EngineError> {
        if self.tracer.get().is_none() {
            return Ok(());
        }
        let (_, _, state) = self.load(run_id)?;
        if state.trace.is_none() {
            self.append(run_id, TraceIds::random().event())?;
        }
        Ok(())
    }

    /// Runs a step's attempts under its retry policy.
    async fn run_step_attempts(
        self: &Arc<Self>,
        run_id: &str,
        workflow: &Workflow,
        state: &RunState,
        step_id: &str,
        handle: &Arc<RunHandle>,
    ) -> Result<StepOutcome, EngineError> {
        let Some(step) = workflow.step(step_id) else {
            return Ok(StepOutcome::Failed(
                format!("unknown step {step_id}"),
                FailureKind::Permanent,
            ));
        };
        let Some(step_state) = state.step(step_id) else {
            return Ok(StepOutcome::Failed(
                format!("unknown step {step_id}"),
                FailureKind::Permanent,
            ));
        };
        let mut failures = step_state.failures_since_resume;
        let mut attempt = u32::try_from(step_state.attempts.len()).unwrap_or(u32::MAX);
        let mut checkpoint = step_state.checkpoint.clone();
        let (record, _, _) = self.load(run_id)?;
        let outputs = state.outputs();
        let scope = Scope {
            params: &record.params,
            outputs: &outputs,
            run_id,
        };
        loop {
            attempt += 1;
            let inputs = match scope.render(&step.with) {
                Ok(inputs) => inputs,
                Err(e) => {
                    return Ok(StepOutcome::Failed(
                        format!("cannot render inputs of step \"{step_id}\": {e}"),
                        FailureKind::Permanent,
                    ));
                }
            };
            let outcome = self
                .attempt(
                    run_id,
                    step_id,
                    &step.activity,
                    Work::Step,
                    inputs,
                    Value::Null,
                    attempt,
                    step.timeout,
                    checkpoint.clone(),
                    handle,
                )
                .await?;
            match outcome {
                AttemptOutcome::Done(output) => {
                    let bytes = serde_json::to_vec(&output).unwrap_or_else(|_| b"null".to_vec());
                    self.append_durable(
                        run_id,
                        Event::StepCompleted {
                            step: step_id.to_string(),
                            attempt,
                            output: bytes,
                        },
                    )
                    .await?;
                    tracing::info!(run = %run_id, step = %step_id, attempt, "step completed");
                    return Ok(StepOutcome::Completed);
                }
                AttemptOutcome::NotStarted => return Ok(StepOutcome::Interrupted),
                AttemptOutcome::Interrupted => {
                    self.append_durable(
                        run_id,
                        Event::StepFailed {
                            step: step_id.to_string(),
                            attempt,
                            kind: FailureKind::Cancelled,
                            error: "interrupted".to_string(),
                        },
                    )
                    .await?;
                    return Ok(StepOutcome::Interrupted);
                }
                AttemptOutcome::Failed(error) => {
                    failures += 1;
                    self.append_durable(
                        run_id,
                        Event::StepFailed {
                            step: step_id.to_string(),
                            attempt,
                            kind: error.kind,
                            error: error.message.clone(),
                        },
                    )
                    .await?;
                    tracing::warn!(run = %run_id, step = %step_id, attempt, error = %error.message, "attempt failed");
                    if let Some(outcome) = self
                        .after_failure(run_id, &step.retry, failures, &error, handle)
                        .await?
                    {
                        return Ok(outcome);
                    }
                    // A retry may continue from what the failed attempt checkpointed.
                    let (_, _, fresh) = self.load(run_id)?;
                    checkpoint = fresh.step(step_id).and_then(|s| s.checkpoint.clone());
                }
            }
        }
    }

    /// Decides what follows a failed attempt: `None` to retry (after the backoff), or the
    /// step's outcome.
    async fn after_failure(
        self: &Arc<Self>,
        run_id: &str,
        policy: &RetryPolicy,
        failures: u32,
        error: &ActivityError,
        handle: &Arc<RunHandle>,
    ) -> Result<Option<StepOutcome>, EngineError> {
        let retryable = error.kind == FailureKind::Retryable;
        if !retryable || failures >= policy.attempts {
            let why = if retryable {
                format!(
                    "{} (after {failures} attempt{})",
                    error.message,
                    if failures == 1 { "" } else { "s" }
                )
            } else {
                error.message.clone()
            };
            return Ok(Some(StepOutcome::Failed(why, error.kind)));
        }
        let delay = policy.delay_after(failures);
        tracing::info!(run = %run_id, delay = %format_duration(delay), "retrying after backoff");
        let token = lock(&handle.interrupt).clone();
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            // Register for wake-ups first, then look: a halt asked for during the failed
            // attempt, or during this wait, stops the retries.
            let notified = handle.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (_, _, state) = self.load(run_id)?;
            if state.pending_halt.is_some() {
                return Ok(Some(StepOutcome::HaltedInBackoff));
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
                _ = token.cancelled() => return Ok(Some(StepOutcome::Interrupted)),
                _ = &mut notified => {}
            }
        }
    }

    /// Runs one attempt of a step or compensation inside its trace span: what it moved,
    /// how it ended, and its error as an event.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        self: &Arc<Self>,
        run_id: &str,
        step_id: &str,
        activity_name: &str,
        work: Work,
        inputs: Value,
        output: Value,
        attempt: u32,
        timeout: Option<Duration>,
        checkpoint: Option<Vec<u8>>,
        handle: &Arc<RunHandle>,
    ) -> Result<AttemptOutcome, EngineError> {
        let kind = match work {
            Work::Step => "attempt",
            Work::Compensation => "compensate",
        };
        let span = tracing::info_span!(
            target: TRACE_TARGET,
            "attempt",
            otel.name = %format!("{kind} {step_id} #{attempt}"),
            lazarus.run = %run_id,
            lazarus.step = %step_id,
            lazarus.activity = %activity_name,
            lazarus.attempt = attempt,
            lazarus.outcome = Empty,
            lazarus.bytes = Empty,
            otel.status_code = Empty,
            otel.status_message = Empty,
        );
        if matches!(work, Work::Compensation) && !span.is_disabled() {
            // A rollback's attempts have no step span around them: they join the run's.
            if let (Some(tracer), Ok((_, _, state))) = (self.tracer.get(), self.load(run_id))
                && let Some(ids) = state.trace
            {
                tracer.adopt(&span, &ids);
            }
        }
        let host = Arc::new(AttemptHost::new(
            Arc::clone(self),
            run_id.to_string(),
            step_id.to_string(),
            attempt,
            Arc::clone(handle),
        ));
        // Everything the attempt does runs inside its span.
        let outcome: AttemptOutcome = async {
            let host = Arc::clone(&host);
            let interrupt = lock(&handle.interrupt).clone();
            if interrupt.is_cancelled() {
                return Ok::<_, EngineError>(AttemptOutcome::NotStarted);
            }
            let Some(activity) = self.registry.get(activity_name).cloned() else {
                return Ok(AttemptOutcome::Failed(ActivityError::permanent(format!(
                    "activity \"{activity_name}\" is not known to this lazarus build"
                ))));
            };
            let started = match work {
                Work::Step => Event::StepStarted {
                    step: step_id.to_string(),
                    attempt,
                },
                Work::Compensation => Event::CompensationStarted {
                    step: step_id.to_string(),
                    attempt,
                },
            };
            // Flushed in the background while the attempt runs: the step does not wait for the
            // disk, yet a crash a moment later still leaves the attempt on record. (Correctness
            // does not depend on it: an attempt whose start was lost is simply run again.)
            self.append(run_id, started)?;
            self.commit.soon();
            tracing::info!(run = %run_id, step = %step_id, activity = %activity_name, attempt, "attempt started");

            let token: CancellationToken = interrupt.child_token();
            let ctx = ActivityContext::new(
                run_id.to_string(),
                step_id.to_string(),
                attempt,
                token.clone(),
                checkpoint,
                host,
            );
            let future = async {
                match work {
                    Work::Step => activity.run(&ctx, inputs).await,
                    Work::Compensation => {
                        if activity.compensates_itself(&inputs) {
                            activity.compensate(&ctx, inputs, output).await
                        } else {
                            activity.run(&ctx, inputs).await
                        }
                    }
                }
            };
            tokio::pin!(future);
            let mut timed_out = false;
            let limit = async {
                match timeout {
                    Some(t) => tokio::time::sleep(t).await,
                    None => std::future::pending().await,
                }
            };
            let result = tokio::select! {
                result = &mut future => Some(result),
                _ = limit => { timed_out = true; None }
                _ = token.cancelled() => None,
            };
            let result = match result {
                Some(result) => Some(result),
                None => {
                    token.cancel();
                    tokio::time::timeout(CANCEL_GRACE, &mut future).await.ok()
                }
            };
            if interrupt.is_cancelled() {
                // Keep a result that made it in before the interruption took effect.
                return Ok(match result {
                    Some(Ok(value)) if !timed_out => AttemptOutcome::Done(value),
                    _ => AttemptOutcome::Interrupted,
                });
            }
            Ok(match (result, timed_out) {
                (_, true) => AttemptOutcome::Failed(ActivityError::retryable(format!(
                    "timed out after {}",
                    format_duration(timeout.unwrap_or_default())
                ))),
                (Some(Ok(value)), false) => AttemptOutcome::Done(value),
                // The activity stopped itself on a halt it noticed (an approval wait).
                (Some(Err(e)), false) if e.kind == FailureKind::Cancelled => {
                    AttemptOutcome::Interrupted
                }
                (Some(Err(e)), false) => AttemptOutcome::Failed(e),
                (None, false) => AttemptOutcome::Interrupted,
            })
        }
        .instrument(span.clone())
        .await?;
        if !span.is_disabled() {
            if let Some(bytes) = host.bytes() {
                span.record("lazarus.bytes", bytes);
            }
            let name = match &outcome {
                AttemptOutcome::Done(_) => "completed",
                AttemptOutcome::Interrupted | AttemptOutcome::NotStarted => "interrupted",
                AttemptOutcome::Failed(_) => "failed",
            };
            span.record("lazarus.outcome", name);
            if let AttemptOutcome::Failed(error) = &outcome {
                span.record("otel.status_code", "ERROR");
                span.record("otel.status_message", error.message.as_str());
                tracing::error!(target: TRACE_TARGET, parent: &span, error = %error.message, kind = ?error.kind, "attempt failed");
            }
        }
        Ok(outcome)
    }

    /// Runs the compensations of completed steps, newest first, each journaled; resumable.
    async fn roll_back(
        self: &Arc<Self>,
        run_id: &str,
        handle: &Arc<RunHandle>,
    ) -> Result<(), EngineError> {
        // A rollback request that interrupted a step has done its job.
        *lock(&handle.interrupt) = CancellationToken::new();
        loop {
            let (record, workflow, state) = self.load(run_id)?;
            if let Some(Request::Cancel { by }) = handle.take_request() {
                self.append_durable(run_id, Event::Cancelled { by }).await?;
                self.release_target(&record, run_id).await?;
                return Ok(());
            }
            let lost = self.claim_lost(record.target.as_deref(), run_id);
            if state.pending_halt.is_some() || lost.is_some() {
                let step = state
                    .steps
                    .iter()
                    .rev()
                    .find(|s| s.output.is_some())
                    .map(|s| s.id.clone())
                    .unwrap_or_default();
                let reason = match lost {
                    // Another runner may be recovering the target: undo nothing of it.
                    Some(lost) => HaltReason::Fenced(lost),
                    None => HaltReason::Requested,
                };
                self.halt_at(run_id, step, reason).await?;
                return Ok(());
            }
            // Newest completed step whose compensation has not completed.
            let next = state
                .steps
                .iter()
                .rev()
                .find(|s| self.needs_undo(&workflow, s));
            let Some(next) = next else {
                self.append_durable(run_id, Event::RolledBack).await?;
                self.release_target(&record, run_id).await?;
                tracing::info!(run = %run_id, "run rolled back");
                return Ok(());
            };
            let Some(def) = workflow.step(&next.id) else {
                return Ok(());
            };
            let outputs = state.outputs();
            let scope = Scope {
                params: &record.params,
                outputs: &outputs,
                run_id,
            };
            let (activity, with) = match &def.compensate {
                Some(c) => (c.activity.clone(), c.with.clone()),
                None => (def.activity.clone(), def.with.clone()),
            };
            let comp = next.compensation.clone().unwrap_or_default();
            let failures = comp.failures_since_resume;
            let outcome = match scope.render(&with) {
                Err(e) => AttemptOutcome::Failed(ActivityError::permanent(format!(
                    "cannot render compensation inputs: {e}"
                ))),
                Ok(inputs) => {
                    self.attempt(
                        run_id,
                        &next.id,
                        &activity,
                        Work::Compensation,
                        inputs,
                        next.output.clone().unwrap_or(Value::Null),
                        comp.attempts + 1,
                        def.timeout,
                        None,
                        handle,
                    )
                    .await?
                }
            };
            match outcome {
                AttemptOutcome::Done(output) => {
                    self.append_durable(
                        run_id,
                        Event::CompensationCompleted {
                            step: next.id.clone(),
                            output: serde_json::to_vec(&output)
                                .unwrap_or_else(|_| b"null".to_vec()),
                        },
                    )
                    .await?;
                    tracing::info!(run = %run_id, step = %next.id, "step compensated");
                }
                AttemptOutcome::NotStarted | AttemptOutcome::Interrupted => {
                    if matches!(outcome, AttemptOutcome::Interrupted) {
                        self.append_durable(
                            run_id,
                            Event::CompensationFailed {
                                step: next.id.clone(),
                                attempt: comp.attempts + 1,
                                error: "interrupted".to_string(),
                            },
                        )
                        .await?;
                    }
                    // A cancel request is taken at the top of the loop; anything else
                    // that interrupts a compensation is a halt.
                    let cancelling = matches!(*lock(&handle.request), Some(Request::Cancel { .. }));
                    if !cancelling {
                        self.halt_at(run_id, next.id.clone(), HaltReason::Interrupted)
                            .await?;
                        return Ok(());
                    }
                }
                AttemptOutcome::Failed(error) => {
                    self.append_durable(
                        run_id,
                        Event::CompensationFailed {
                            step: next.id.clone(),
                            attempt: comp.attempts + 1,
                            error: error.message.clone(),
                        },
                    )
                    .await?;
                    match self
                        .after_failure(run_id, &def.retry, failures + 1, &error, handle)
                        .await?
                    {
                        None => {}
                        Some(StepOutcome::Failed(why, _)) => {
                            tracing::error!(run = %run_id, step = %next.id, error = %why, "rollback failed");
                            self.append_durable(
                                run_id,
                                Event::RollbackFailed {
                                    step: next.id.clone(),
                                    error: why,
                                },
                            )
                            .await?;
                            return Ok(());
                        }
                        Some(_)
                            if !matches!(*lock(&handle.request), Some(Request::Cancel { .. })) =>
                        {
                            self.halt_at(run_id, next.id.clone(), HaltReason::Requested)
                                .await?;
                            return Ok(());
                        }
                        Some(_) => {}
                    }
                }
            }
        }
    }
}
