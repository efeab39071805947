//! The run report: what `lazarus status RUN --json` prints and what followers receive.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::activity::Approval;
use super::clock::{now_us, rfc3339, seconds_between};
use super::records::{HaltReason, RunRecord};
use super::state::{RunState, RunStatus, StepStatus};
use super::workflow::Workflow;

/// One attempt of a step, for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptReport {
    /// 1-based.
    pub attempt: u32,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339, if it ended.
    pub ended_at: Option<String>,
    /// Its error, if it failed.
    pub error: Option<String>,
}

/// A step's compensation, for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompensationReport {
    /// Attempts made.
    pub attempts: u32,
    /// Whether it completed.
    pub completed: bool,
    /// RFC 3339 completion time.
    pub completed_at: Option<String>,
    /// Its output.
    pub output: Option<Value>,
    /// Its last error.
    pub error: Option<String>,
}

/// One step, for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Step id.
    pub id: String,
    /// Activity name.
    pub activity: String,
    /// Where it stands (`pending`, `running`, `completed`, ...).
    pub status: String,
    /// Attempts started.
    pub attempts: u32,
    /// First attempt's start, RFC 3339.
    pub started_at: Option<String>,
    /// Completion, RFC 3339.
    pub ended_at: Option<String>,
    /// Start of the first attempt to completion (includes retries and crash gaps).
    pub duration_seconds: Option<f64>,
    /// The step's output, once completed.
    pub output: Option<Value>,
    /// The latest error, if the step is not completed.
    pub error: Option<String>,
    /// What the `approve` step asks, while it waits.
    pub approval_prompt: Option<String>,
    /// The approval given, for `approve` steps.
    pub approval: Option<Approval>,
    /// Every attempt.
    pub attempt_log: Vec<AttemptReport>,
    /// Its compensation, once rollback reached it.
    pub compensation: Option<CompensationReport>,
    /// What was cleaned up (and kept, with why) after the run ended without success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discarded: Option<super::activity::Discarded>,
    /// Why the step ran again after it had completed (what it made was gone from the host
    /// driving the run), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reruns: Vec<String>,
}

/// Where and why a run halted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HaltReport {
    /// The step.
    pub step: String,
    /// `halt_before`, `halt_after`, `requested`, `interrupted` or `step_failed`.
    pub reason: String,
    /// RFC 3339.
    pub at: String,
}

/// The whole run, for people and machines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Run id.
    pub id: String,
    /// Workflow name.
    pub workflow: String,
    /// SHA-256 of the pinned workflow text.
    pub workflow_hash: String,
    /// Where the workflow was read from at submission.
    pub workflow_source: String,
    /// The operator's justification.
    pub reason: String,
    /// Who submitted it.
    pub operator: String,
    /// Parameter values.
    pub params: BTreeMap<String, String>,
    /// The locked target.
    pub target: Option<String>,
    /// `running`, `halted`, `waiting_approval`, `succeeded`, `failed`, `rolling_back`,
    /// `rolled_back` or `cancelled`.
    pub status: String,
    /// What the run left for the operator to find (a restored database, a data directory
    /// and port): the `results` of completed steps' outputs whose effect was not undone,
    /// later steps winning.
    #[serde(default)]
    pub results: BTreeMap<String, Value>,
    /// What the run leaves by design (a restored server's data directory): the `kept`
    /// paths of completed steps whose effect was not undone. `gc`, `expire` and other runs
    /// never remove them.
    #[serde(default)]
    pub kept: Vec<String>,
    /// Whether a process is executing it right now.
    pub active: bool,
    /// Submission time, RFC 3339.
    pub started_at: String,
    /// Time it reached a terminal state.
    pub ended_at: Option<String>,
    /// Start to end (or to now, while unfinished).
    pub duration_seconds: f64,
    /// Whether it succeeded.
    pub success: bool,
    /// What stopped it, if something did.
    pub error: Option<String>,
    /// Set while halted.
    pub halted: Option<HaltReport>,
    /// Who started the rollback and why.
    pub rollback: Option<BTreeMap<String, String>>,
    /// Who cancelled it.
    pub cancelled_by: Option<String>,
    /// `--halt-before` points.
    pub halt_before: Vec<String>,
    /// `--halt-after` points.
    pub halt_after: Vec<String>,
    /// Every step.
    pub steps: Vec<StepReport>,
    /// What the operator can do next, as a command line.
    pub next_action: Option<String>,
    /// The run's OpenTelemetry trace id (32 hex digits), to find it in a tracing backend.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// How far each store's copy of the run's journal stands (empty when not mirrored, or
    /// when this process has not copied it).
    #[serde(default)]
    pub mirror: Vec<super::mirror::MirrorLag>,
}

fn step_status_name(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Pending => "pending",
        StepStatus::Running => "running",
        StepStatus::WaitingApproval => "waiting_approval",
        StepStatus::Failed => "failed",
        StepStatus::Completed => "completed",
        StepStatus::Compensating => "compensating",
        StepStatus::Compensated => "compensated",
        StepStatus::CompensationFailed => "compensation_failed",
        StepStatus::Skipped => "skipped",
    }
}

fn halt_reason_name(reason: &HaltReason) -> &'static str {
    match reason {
        HaltReason::HaltBefore => "halt_before",
        HaltReason::HaltAfter => "halt_after",
        HaltReason::Requested => "requested",
        HaltReason::Interrupted => "interrupted",
        HaltReason::StepFailed(_) => "step_failed",
        HaltReason::Fenced(_) => "fenced",
    }
}

impl RunReport {
    /// Builds the report from the run's record, its pinned workflow and folded state.
    pub fn build(run: &RunRecord, workflow: &Workflow, state: &RunState, active: bool) -> Self {
        let id = &run.id;
        let end = state.ended_us.unwrap_or_else(now_us);
        let steps = state
            .steps
            .iter()
            .map(|s| {
                let first = s.attempts.first().map(|a| a.started_us);
                StepReport {
                    id: s.id.clone(),
                    activity: s.activity.clone(),
                    status: step_status_name(s.status).to_string(),
                    attempts: u32::try_from(s.attempts.len()).unwrap_or(u32::MAX),
                    started_at: first.map(rfc3339),
                    ended_at: s.completed_us.map(rfc3339),
                    duration_seconds: first
                        .zip(s.completed_us)
                        .map(|(a, b)| seconds_between(a, b)),
                    output: s.output.clone(),
                    error: if s.output.is_none() {
                        s.last_error().map(String::from)
                    } else {
                        None
                    },
                    approval_prompt: s.approval_prompt.clone(),
                    approval: s.approval.clone(),
                    attempt_log: s
                        .attempts
                        .iter()
                        .map(|a| AttemptReport {
                            attempt: a.attempt,
                            started_at: rfc3339(a.started_us),
                            ended_at: a.ended_us.map(rfc3339),
                            error: a.error.clone(),
                        })
                        .collect(),
                    compensation: s.compensation.as_ref().map(|c| CompensationReport {
                        attempts: c.attempts,
                        completed: c.completed_us.is_some(),
                        completed_at: c.completed_us.map(rfc3339),
                        output: c.output.clone(),
                        error: c.error.clone(),
                    }),
                    discarded: s.discarded.clone(),
                    reruns: s.reruns.clone(),
                }
            })
            .collect();
        let next_action = match state.status {
            RunStatus::Halted => Some(format!(
                "lazarus resume {id}   (or: lazarus rollback {id} --reason \"...\")"
            )),
            RunStatus::WaitingApproval => Some(format!(
                "lazarus approve {id} --by NAME   (or: lazarus rollback {id} --reason \"...\")"
            )),
            RunStatus::Failed => Some(format!(
                "fix the cause, then lazarus resume {id} to retry the rollback"
            )),
            RunStatus::Refused => Some(format!(
                "this run has ended and released its target; fix what the error names and start a new run (lazarus resume {id} would meet the same input)"
            )),
            RunStatus::Running | RunStatus::RollingBack if !active => Some(format!(
                "no process is executing this run (it was interrupted): lazarus resume {id}"
            )),
            _ => None,
        };
        let error = state.error.clone().or_else(|| match &state.halt {
            Some(h) if h.reason == HaltReason::Interrupted => Some(format!(
                "step \"{}\" was interrupted; it runs again on resume",
                h.step
            )),
            _ => None,
        });
        RunReport {
            id: id.clone(),
            workflow: run.workflow_name.clone(),
            workflow_hash: run.workflow_hash.clone(),
            workflow_source: run.workflow_source.clone(),
            reason: run.reason.clone(),
            operator: run.operator.clone(),
            params: run
                .params
                .iter()
                .map(|(k, v)| {
                    let shown = match workflow.params.iter().find(|p| &p.name == k) {
                        Some(param) => param.shown(v),
                        None => super::params::ParamKind::Text.shown(v),
                    };
                    (k.clone(), shown)
                })
                .collect(),
            target: run.target.clone(),
            status: state.status.as_str().to_string(),
            results: state
                .steps
                .iter()
                .filter(|s| {
                    s.compensation
                        .as_ref()
                        .is_none_or(|c| c.completed_us.is_none())
                        && s.discarded.as_ref().is_none_or(|d| d.removed.is_empty())
                })
                .filter_map(|s| s.output.as_ref()?.get("results")?.as_object().cloned())
                .flatten()
                .collect(),
            kept: state
                .steps
                .iter()
                .filter(|s| {
                    s.compensation
                        .as_ref()
                        .is_none_or(|c| c.completed_us.is_none())
                        && s.discarded.as_ref().is_none_or(|d| d.removed.is_empty())
                })
                .filter_map(|s| s.output.as_ref()?.get("kept")?.as_array().cloned())
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            active,
            started_at: rfc3339(run.created_at_us),
            ended_at: state.ended_us.map(rfc3339),
            duration_seconds: seconds_between(run.created_at_us, end),
            success: state.status == RunStatus::Succeeded,
            error,
            halted: state.halt.as_ref().map(|h| HaltReport {
                step: h.step.clone(),
                reason: halt_reason_name(&h.reason).to_string(),
                at: rfc3339(h.at_us),
            }),
            rollback: state.rollback.as_ref().map(|(by, reason)| {
                BTreeMap::from([
                    ("by".to_string(), by.clone()),
                    ("reason".to_string(), reason.clone()),
                ])
            }),
            cancelled_by: state.cancelled_by.clone(),
            halt_before: run.halt_before.clone(),
            halt_after: run.halt_after.clone(),
            steps,
            next_action,
            trace_id: state.trace.map(|t| t.trace_hex()),
            mirror: Vec::new(),
        }
    }

    /// Whether the run can no longer change: succeeded, rolled back, cancelled, or failed
    /// for good (a refused input ends the run; a failed rollback has no end yet).
    pub fn is_finished(&self) -> bool {
        matches!(
            self.status.as_str(),
            "succeeded" | "rolled_back" | "cancelled"
        ) || (self.status == "failed" && self.ended_at.is_some())
    }
}

/// One line per run, for `lazarus runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Run id.
    pub id: String,
    /// Workflow name.
    pub workflow: String,
    /// Status name.
    pub status: String,
    /// Whether a process is executing it.
    pub active: bool,
    /// Locked target.
    pub target: Option<String>,
    /// Submission time.
    pub started_at: String,
    /// Who submitted it.
    pub operator: String,
    /// Why.
    pub reason: String,
    /// When it reached a terminal state.
    #[serde(default)]
    pub ended_at: Option<String>,
    /// Start to end (or to now, while unfinished).
    #[serde(default)]
    pub duration_seconds: f64,
    /// What stopped it, if something did.
    #[serde(default)]
    pub error: Option<String>,
}

impl From<&RunReport> for RunSummary {
    fn from(r: &RunReport) -> Self {
        RunSummary {
            id: r.id.clone(),
            workflow: r.workflow.clone(),
            status: r.status.clone(),
            active: r.active,
            target: r.target.clone(),
            started_at: r.started_at.clone(),
            operator: r.operator.clone(),
            reason: r.reason.clone(),
            ended_at: r.ended_at.clone(),
            duration_seconds: r.duration_seconds,
            error: r.error.clone(),
        }
    }
}
