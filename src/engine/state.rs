//! A run's state, derived by folding its journaled events over its pinned workflow.
//!
//! Nothing here is stored: the events are the truth, and this is what they add up to. The
//! executor re-folds at every decision point, so control requests written by other
//! processes (halt, approve) are seen without any other channel.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use serde_json::Value;

use super::activity::{Approval, FailureKind};
use super::records::{Event, EventRecord, HaltReason, RunRecord};
use super::workflow::Workflow;

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Executing, or interrupted by a crash and waiting for `resume`.
    Running,
    /// Stopped at a step boundary (or a step was interrupted); `resume` or `rollback`.
    Halted,
    /// An `approve` step waits for `lazarus approve`.
    WaitingApproval,
    /// Every step completed.
    Succeeded,
    /// A rollback could not complete; `resume` retries it.
    Failed,
    /// A step refused the run's own input; the run ended and released its target (shown
    /// as `failed`: a new run with the input corrected is the way on).
    Refused,
    /// Compensations are running.
    RollingBack,
    /// Every completed step was compensated.
    RolledBack,
    /// Stopped for good without compensation.
    Cancelled,
}

impl RunStatus {
    /// The run can never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded
                | RunStatus::RolledBack
                | RunStatus::Cancelled
                | RunStatus::Refused
        )
    }

    /// The name used in reports and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Halted => "halted",
            RunStatus::WaitingApproval => "waiting_approval",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed | RunStatus::Refused => "failed",
            RunStatus::RollingBack => "rolling_back",
            RunStatus::RolledBack => "rolled_back",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not started.
    Pending,
    /// An attempt started and has not ended.
    Running,
    /// Waiting for a human's approval.
    WaitingApproval,
    /// The last attempt failed; it may be retried.
    Failed,
    /// Done; its output is final.
    Completed,
    /// Its compensation is running.
    Compensating,
    /// Undone by its compensation.
    Compensated,
    /// Its compensation failed.
    CompensationFailed,
    /// Its `when` condition was false.
    Skipped,
}

/// One attempt of a step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptState {
    /// 1-based attempt number.
    pub attempt: u32,
    /// When it started, µs since the epoch.
    pub started_us: i64,
    /// When it ended, if it did.
    pub ended_us: Option<i64>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// How it failed, if it did.
    pub failure: Option<FailureKind>,
}

/// The compensation of one step during rollback.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct CompensationState {
    /// Attempts started.
    pub attempts: u32,
    /// Attempts failed since the rollback was last (re)started.
    pub failures_since_resume: u32,
    /// When the first attempt started.
    pub started_us: Option<i64>,
    /// When it completed.
    pub completed_us: Option<i64>,
    /// Output of the compensation.
    pub output: Option<Value>,
    /// Last error.
    pub error: Option<String>,
}

/// Everything the journal says about one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepState {
    /// The step id.
    pub id: String,
    /// Its activity.
    pub activity: String,
    /// Where it stands.
    pub status: StepStatus,
    /// Every attempt, oldest first.
    pub attempts: Vec<AttemptState>,
    /// Failed attempts since the run was last resumed: the retry budget already used.
    pub failures_since_resume: u32,
    /// The final output, once completed.
    pub output: Option<Value>,
    /// When it completed.
    pub completed_us: Option<i64>,
    /// The most recent checkpoint (JSON bytes).
    pub checkpoint: Option<Vec<u8>>,
    /// The approval given, for `approve` steps.
    pub approval: Option<Approval>,
    /// What an `approve` step asks, while it waits.
    pub approval_prompt: Option<String>,
    /// Rollback progress for this step.
    pub compensation: Option<CompensationState>,
    /// What was cleaned up after the run ended without success.
    pub discarded: Option<super::activity::Discarded>,
    /// Why the step ran again after it had completed (what it made was gone), oldest
    /// first.
    pub reruns: Vec<String>,
}

impl StepState {
    /// The error of the most recent failed attempt.
    pub fn last_error(&self) -> Option<&str> {
        self.attempts.iter().rev().find_map(|a| a.error.as_deref())
    }
}

/// Why and where a run is halted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HaltState {
    /// The step at which it halted.
    pub step: String,
    /// Why.
    pub reason: HaltReason,
    /// When, µs since the epoch.
    pub at_us: i64,
}

/// The run as its events describe it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunState {
    /// Where the run stands.
    pub status: RunStatus,
    /// Steps in workflow order.
    pub steps: Vec<StepState>,
    /// Set while halted.
    pub halt: Option<HaltState>,
    /// A halt asked for but not yet honoured (`by`, `now`).
    pub pending_halt: Option<(String, bool)>,
    /// `--halt-before` / `--halt-after` points already honoured (step, is_after).
    pub honoured_halts: HashSet<(String, bool)>,
    /// Who started a rollback and why.
    pub rollback: Option<(String, String)>,
    /// Who cancelled.
    pub cancelled_by: Option<String>,
    /// The error that stopped the run, if one did.
    pub error: Option<String>,
    /// When the run reached a terminal state.
    pub ended_us: Option<i64>,
    /// Time of the newest event.
    pub last_event_us: Option<i64>,
    /// Where the run's spans go in a distributed trace.
    #[serde(skip)]
    pub trace: Option<super::trace::TraceIds>,
}

impl RunState {
    /// Folds a run's events over its workflow.
    pub fn fold(workflow: &Workflow, events: &[EventRecord]) -> Self {
        let mut state = RunState {
            status: RunStatus::Running,
            steps: workflow
                .steps
                .iter()
                .map(|s| StepState {
                    id: s.id.clone(),
                    activity: s.activity.clone(),
                    status: StepStatus::Pending,
                    attempts: Vec::new(),
                    failures_since_resume: 0,
                    output: None,
                    completed_us: None,
                    checkpoint: None,
                    approval: None,
                    approval_prompt: None,
                    compensation: None,
                    discarded: None,
                    reruns: Vec::new(),
                })
                .collect(),
            halt: None,
            pending_halt: None,
            honoured_halts: HashSet::new(),
            rollback: None,
            cancelled_by: None,
            error: None,
            ended_us: None,
            last_event_us: None,
            trace: None,
        };
        for record in events {
            state.apply(record);
        }
        state
    }

    fn step_mut(&mut self, id: &str) -> Option<&mut StepState> {
        self.steps.iter_mut().find(|s| s.id == id)
    }

    /// The step called `id`.
    pub fn step(&self, id: &str) -> Option<&StepState> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// Brings the state up to date with one more event.
    pub(crate) fn apply(&mut self, record: &EventRecord) {
        // A finished run changes no more; only a rollback of a success reopens it. Events
        // that raced a cancel or a finish into the journal are ignored.
        if let Event::Discarded { step, output } = &record.event {
            if let Some(s) = self.step_mut(step) {
                s.discarded = serde_json::from_slice(output).ok();
            }
            return;
        }
        if let Event::Traced { trace_id, span_id } = &record.event {
            self.trace = super::trace::TraceIds::from_hex(trace_id, span_id);
            return;
        }
        if self.status.is_terminal()
            && !(self.status == RunStatus::Succeeded
                && matches!(record.event, Event::RollbackStarted { .. }))
        {
            return;
        }
        let at = record.at_us;
        self.last_event_us = Some(at);
        let in_rollback = self.rollback.is_some();
        match &record.event {
            Event::StepStarted { step, attempt } => {
                if let Some(s) = self.step_mut(step) {
                    s.status = StepStatus::Running;
                    s.attempts.push(AttemptState {
                        attempt: *attempt,
                        started_us: at,
                        ended_us: None,
                        error: None,
                        failure: None,
                    });
                }
                self.status = RunStatus::Running;
                self.error = None;
            }
            Event::StepCheckpoint { step, data, .. } => {
                if let Some(s) = self.step_mut(step) {
                    s.checkpoint = Some(data.clone());
                }
            }
            Event::StepCompleted { step, output, .. } => {
                if let Some(s) = self.step_mut(step) {
                    s.status = StepStatus::Completed;
                    s.output = Some(serde_json::from_slice(output).unwrap_or(Value::Null));
                    s.completed_us = Some(at);
                    s.approval_prompt = None;
                    if let Some(a) = s.attempts.last_mut() {
                        a.ended_us = Some(at);
                    }
                }
                if self.status == RunStatus::WaitingApproval {
                    self.status = RunStatus::Running;
                }
            }
            Event::StepFailed {
                step, kind, error, ..
            } => {
                if let Some(s) = self.step_mut(step) {
                    s.status = StepStatus::Failed;
                    s.approval_prompt = None;
                    if *kind != FailureKind::Cancelled {
                        s.failures_since_resume += 1;
                    }
                    if let Some(a) = s.attempts.last_mut() {
                        a.ended_us = Some(at);
                        a.error = Some(error.clone());
                        a.failure = Some(*kind);
                    }
                }
                if self.status == RunStatus::WaitingApproval {
                    self.status = RunStatus::Running;
                }
            }
            Event::HaltRequested { by, now } => {
                if !self.status.is_terminal() {
                    self.pending_halt = Some((by.clone(), *now));
                }
            }
            Event::Halted { step, reason } => {
                self.status = RunStatus::Halted;
                self.pending_halt = None;
                match reason {
                    HaltReason::HaltBefore => {
                        self.honoured_halts.insert((step.clone(), false));
                    }
                    HaltReason::HaltAfter => {
                        self.honoured_halts.insert((step.clone(), true));
                    }
                    HaltReason::StepFailed(error) | HaltReason::Fenced(error) => {
                        self.error = Some(error.clone())
                    }
                    HaltReason::Requested | HaltReason::Interrupted => {}
                }
                self.halt = Some(HaltState {
                    step: step.clone(),
                    reason: reason.clone(),
                    at_us: at,
                });
            }
            Event::Resumed { .. } => {
                self.close_open_attempts(at);
                self.halt = None;
                self.pending_halt = None;
                self.error = None;
                for s in &mut self.steps {
                    s.failures_since_resume = 0;
                    if let Some(c) = &mut s.compensation {
                        c.failures_since_resume = 0;
                    }
                }
                self.status = if in_rollback {
                    RunStatus::RollingBack
                } else {
                    RunStatus::Running
                };
            }
            Event::ApprovalRequested { step, prompt } => {
                if let Some(s) = self.step_mut(step) {
                    s.status = StepStatus::WaitingApproval;
                    s.approval_prompt = Some(prompt.clone());
                }
                self.status = RunStatus::WaitingApproval;
            }
            Event::Approved { step, by, comment } => {
                if let Some(s) = self.step_mut(step) {
                    s.approval = Some(Approval {
                        by: by.clone(),
                        comment: comment.clone(),
                        at: crate::engine::clock::rfc3339(at),
                    });
                    if s.status == StepStatus::WaitingApproval {
                        s.status = StepStatus::Running;
                    }
                }
                if self.status == RunStatus::WaitingApproval {
                    self.status = RunStatus::Running;
                }
            }
            Event::RollbackStarted { by, reason } => {
                self.close_open_attempts(at);
                self.ended_us = None;
                self.rollback = Some((by.clone(), reason.clone()));
                self.status = RunStatus::RollingBack;
                self.halt = None;
                self.pending_halt = None;
            }
            Event::CompensationStarted { step, .. } => {
                if let Some(s) = self.step_mut(step) {
                    s.status = StepStatus::Compensating;
                    let c = s.compensation.get_or_insert_with(Default::default);
                    c.attempts += 1;
                    c.started_us.get_or_insert(at);
                }
                self.status = RunStatus::RollingBack;
            }
            Event::CompensationCompleted { step, output } => {
                if let Some(s) = self.step_mut(step) {
                    s.status = StepStatus::Compensated;
                    let c = s.compensation.get_or_insert_with(Default::default);
                    c.completed_us = Some(at);
                    c.output = Some(serde_json::from_slice(output).unwrap_or(Value::Null));
                }
            }
            Event::CompensationFailed { step, error, .. } => {
                if let Some(s) = self.step_mut(step) {
                    s.status = StepStatus::CompensationFailed;
                    let c = s.compensation.get_or_insert_with(Default::default);
                    c.failures_since_resume += 1;
                    c.error = Some(error.clone());
                }
            }
            Event::RolledBack => {
                self.status = RunStatus::RolledBack;
                self.ended_us = Some(at);
            }
            Event::RollbackFailed { step, error } => {
                self.status = RunStatus::Failed;
                self.error = Some(format!("rollback stopped at step \"{step}\": {error}"));
            }
            Event::Cancelled { by } => {
                self.close_open_attempts(at);
                self.status = RunStatus::Cancelled;
                self.cancelled_by = Some(by.clone());
                self.pending_halt = None;
                self.ended_us = Some(at);
            }
            Event::Succeeded => {
                self.status = RunStatus::Succeeded;
                self.ended_us = Some(at);
            }
            Event::Refused { error, .. } => {
                self.close_open_attempts(at);
                self.status = RunStatus::Refused;
                self.error = Some(error.clone());
                self.pending_halt = None;
                self.ended_us = Some(at);
            }
            Event::Discarded { .. } | Event::Traced { .. } => {}
            Event::StepSkipped {
                step,
                condition,
                evaluated,
            } => {
                if let Some(s) = self.step_mut(step) {
                    s.status = StepStatus::Skipped;
                    s.output = Some(serde_json::json!({
                        "skipped": true,
                        "when": condition,
                        "evaluated": evaluated,
                        "reason": super::workflow::skip_reason(condition, evaluated),
                    }));
                    s.completed_us = Some(at);
                }
            }
            Event::OutputLost { step, reason } => {
                if let Some(s) = self.step_mut(step) {
                    s.status = StepStatus::Pending;
                    s.output = None;
                    s.completed_us = None;
                    s.checkpoint = None;
                    s.failures_since_resume = 0;
                    s.reruns.push(reason.clone());
                }
            }
        }
    }

    /// An attempt still open when the run is resumed, rolled back or ended was cut short
    /// by the death of the process running it: say so rather than leave it "running".
    fn close_open_attempts(&mut self, at: i64) {
        for s in &mut self.steps {
            if matches!(s.status, StepStatus::Running | StepStatus::WaitingApproval)
                && let Some(a) = s.attempts.last_mut()
                && a.ended_us.is_none()
            {
                a.ended_us = Some(at);
                a.error = Some("interrupted: the process running it stopped".into());
                a.failure = Some(FailureKind::Cancelled);
                s.status = StepStatus::Failed;
                s.approval_prompt = None;
            }
        }
    }

    /// The first step that has not completed.
    pub fn next_step(&self) -> Option<&StepState> {
        self.steps.iter().find(|s| s.output.is_none())
    }

    /// Outputs of completed steps, for rendering `${steps.ID.FIELD}`.
    pub fn outputs(&self) -> BTreeMap<String, Value> {
        self.steps
            .iter()
            .filter_map(|s| s.output.clone().map(|o| (s.id.clone(), o)))
            .collect()
    }

    /// Whether a `--halt-before`/`--halt-after` point was already honoured (so a resumed
    /// run does not stop there again).
    pub fn honoured(&self, step: &str, after: bool) -> bool {
        self.honoured_halts.contains(&(step.to_string(), after))
    }

    /// When the run started: its submission time.
    pub fn started_us(run: &RunRecord) -> i64 {
        run.created_at_us
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::activity::{
        Activity, ActivityContext, ActivityError, ActivitySpec, InputSpec, Registry,
    };
    use async_trait::async_trait;
    use std::sync::Arc;

    struct Nop;
    static NOP: ActivitySpec = ActivitySpec {
        name: "nop",
        summary: "",
        inputs: &[InputSpec {
            name: "x",
            required: false,
            help: "",
        }],
        outputs: &[],
    };
    #[async_trait]
    impl Activity for Nop {
        fn spec(&self) -> &'static ActivitySpec {
            &NOP
        }
        async fn run(&self, _: &ActivityContext, _: Value) -> Result<Value, ActivityError> {
            Ok(Value::Null)
        }
    }

    /// A two-step workflow (`a`, `b`) of no-op steps, for tests of folding.
    pub(crate) fn workflow() -> Workflow {
        let mut r = Registry::new();
        r.register(Arc::new(Nop));
        Workflow::parse(
            "t",
            "name = \"t\"\n[[steps]]\nid = \"a\"\nactivity = \"nop\"\n[[steps]]\nid = \"b\"\nactivity = \"nop\"\n",
            &r,
        )
        .unwrap()
    }

    fn ev(at: i64, event: Event) -> EventRecord {
        EventRecord { at_us: at, event }
    }

    #[test]
    fn folds_progress_halts_and_resume() {
        let wf = workflow();
        let events = vec![
            ev(
                1,
                Event::StepStarted {
                    step: "a".into(),
                    attempt: 1,
                },
            ),
            ev(
                2,
                Event::StepFailed {
                    step: "a".into(),
                    attempt: 1,
                    kind: FailureKind::Retryable,
                    error: "boom".into(),
                },
            ),
            ev(
                3,
                Event::StepStarted {
                    step: "a".into(),
                    attempt: 2,
                },
            ),
            ev(
                4,
                Event::StepCompleted {
                    step: "a".into(),
                    attempt: 2,
                    output: b"{\"k\":1}".to_vec(),
                },
            ),
            ev(
                5,
                Event::Halted {
                    step: "b".into(),
                    reason: HaltReason::HaltBefore,
                },
            ),
        ];
        let s = RunState::fold(&wf, &events);
        assert_eq!(s.status, RunStatus::Halted);
        assert_eq!(s.step("a").unwrap().attempts.len(), 2);
        assert_eq!(s.step("a").unwrap().failures_since_resume, 1);
        assert_eq!(s.next_step().unwrap().id, "b");
        assert!(s.honoured("b", false));
        assert_eq!(s.outputs()["a"]["k"], 1);

        let mut more = events.clone();
        more.push(ev(6, Event::Resumed { by: "op".into() }));
        let s = RunState::fold(&wf, &more);
        assert_eq!(s.status, RunStatus::Running);
        assert_eq!(s.step("a").unwrap().failures_since_resume, 0);
        assert!(s.honoured("b", false), "honoured halts survive resume");
    }

    #[test]
    fn interrupted_attempts_do_not_use_the_retry_budget() {
        let wf = workflow();
        let s = RunState::fold(
            &wf,
            &[
                ev(
                    1,
                    Event::StepStarted {
                        step: "a".into(),
                        attempt: 1,
                    },
                ),
                ev(
                    2,
                    Event::StepFailed {
                        step: "a".into(),
                        attempt: 1,
                        kind: FailureKind::Cancelled,
                        error: "halted".into(),
                    },
                ),
            ],
        );
        assert_eq!(s.step("a").unwrap().failures_since_resume, 0);
    }

    #[test]
    fn resume_after_failed_rollback_continues_rolling_back() {
        let wf = workflow();
        let s = RunState::fold(
            &wf,
            &[
                ev(
                    1,
                    Event::RollbackStarted {
                        by: "op".into(),
                        reason: "bad".into(),
                    },
                ),
                ev(
                    2,
                    Event::RollbackFailed {
                        step: "a".into(),
                        error: "x".into(),
                    },
                ),
                ev(3, Event::Resumed { by: "op".into() }),
            ],
        );
        assert_eq!(s.status, RunStatus::RollingBack);
    }

    #[test]
    fn nothing_after_a_cancel_revives_the_run() {
        let wf = workflow();
        let s = RunState::fold(
            &wf,
            &[
                ev(1, Event::Cancelled { by: "a".into() }),
                ev(2, Event::Resumed { by: "b".into() }),
                ev(
                    3,
                    Event::StepStarted {
                        step: "a".into(),
                        attempt: 1,
                    },
                ),
                ev(
                    4,
                    Event::RollbackStarted {
                        by: "b".into(),
                        reason: "x".into(),
                    },
                ),
            ],
        );
        assert_eq!(s.status, RunStatus::Cancelled);
        assert!(s.step("a").unwrap().attempts.is_empty());
    }

    #[test]
    fn a_succeeded_run_can_still_be_rolled_back() {
        let wf = workflow();
        let s = RunState::fold(
            &wf,
            &[
                ev(1, Event::Succeeded),
                ev(2, Event::Resumed { by: "b".into() }),
                ev(
                    3,
                    Event::RollbackStarted {
                        by: "b".into(),
                        reason: "x".into(),
                    },
                ),
            ],
        );
        assert_eq!(s.status, RunStatus::RollingBack);
    }

    #[test]
    fn approval_wait_and_grant() {
        let wf = workflow();
        let mut events = vec![
            ev(
                1,
                Event::StepStarted {
                    step: "a".into(),
                    attempt: 1,
                },
            ),
            ev(
                2,
                Event::ApprovalRequested {
                    step: "a".into(),
                    prompt: "ok?".into(),
                },
            ),
        ];
        assert_eq!(
            RunState::fold(&wf, &events).status,
            RunStatus::WaitingApproval
        );
        events.push(ev(
            3,
            Event::Approved {
                step: "a".into(),
                by: "alice".into(),
                comment: None,
            },
        ));
        let s = RunState::fold(&wf, &events);
        assert_eq!(s.status, RunStatus::Running);
        assert_eq!(s.step("a").unwrap().approval.as_ref().unwrap().by, "alice");
    }
}
