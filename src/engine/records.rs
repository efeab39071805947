//! The journal's records and their encoding — the only module that touches bincode.
//!
//! Each stored value is one version byte followed by the bincode encoding of that version's
//! struct. bincode is not self-describing, so these types avoid `serde_json::Value`,
//! `flatten`, `untagged` and `skip_serializing_if`; activity inputs, outputs and checkpoints
//! ride as JSON bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::activity::FailureKind;

/// The version byte written in front of every record by this build.
pub const RECORD_VERSION: u8 = 1;

/// A run as submitted: who, why, what (the pinned workflow), with which parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run's id.
    pub id: String,
    /// The workflow's name.
    pub workflow_name: String,
    /// Where the workflow text was read from at submission.
    pub workflow_source: String,
    /// The pinned workflow text; `resume` uses this, never the file on disk.
    pub workflow_text: String,
    /// SHA-256 of the pinned text.
    pub workflow_hash: String,
    /// Parameter values with defaults applied.
    pub params: BTreeMap<String, String>,
    /// The rendered lock target, if the workflow declares one.
    pub target: Option<String>,
    /// The operator's justification.
    pub reason: String,
    /// Who submitted the run.
    pub operator: String,
    /// Submission time, microseconds since the Unix epoch.
    pub created_at_us: i64,
    /// Steps to halt before (declared at submission).
    pub halt_before: Vec<String>,
    /// Steps to halt after (declared at submission).
    pub halt_after: Vec<String>,
}

/// Why a run stopped at a step boundary (or in a step) and waits for a human.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HaltReason {
    /// `--halt-before STEP` at submission.
    HaltBefore,
    /// `--halt-after STEP` at submission.
    HaltAfter,
    /// `lazarus halt RUN`, honoured at the next step boundary.
    Requested,
    /// `lazarus halt RUN --now`, or the owner was told to stop: the running step was
    /// interrupted and will run again on resume.
    Interrupted,
    /// The step failed all its attempts and the workflow says `on_failure = "halt"`.
    StepFailed(String),
    /// Another runner took the target's cross-host claim (a Kubernetes Lease) after this
    /// process failed to renew it: this process runs no further step. Appended last: older
    /// journal records keep their encoding.
    Fenced(String),
}

/// One entry of a run's append-only event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// An attempt of a step began.
    StepStarted { step: String, attempt: u32 },
    /// An activity journaled coarse progress (JSON bytes).
    StepCheckpoint {
        step: String,
        attempt: u32,
        data: Vec<u8>,
    },
    /// The step finished; its output (JSON bytes) is final.
    StepCompleted {
        step: String,
        attempt: u32,
        output: Vec<u8>,
    },
    /// An attempt failed.
    StepFailed {
        step: String,
        attempt: u32,
        kind: FailureKind,
        error: String,
    },
    /// A halt was asked for (`now` cancels the running step).
    HaltRequested { by: String, now: bool },
    /// The run stopped and waits for `resume` or `rollback`.
    Halted { step: String, reason: HaltReason },
    /// The run was resumed by someone.
    Resumed { by: String },
    /// An `approve` step is waiting for a human.
    ApprovalRequested { step: String, prompt: String },
    /// A human approved the waiting step.
    Approved {
        step: String,
        by: String,
        comment: Option<String>,
    },
    /// Rollback began: compensations run newest first.
    RollbackStarted { by: String, reason: String },
    /// An attempt at undoing a step began.
    CompensationStarted { step: String, attempt: u32 },
    /// A step was undone (output as JSON bytes).
    CompensationCompleted { step: String, output: Vec<u8> },
    /// An attempt at undoing a step failed.
    CompensationFailed {
        step: String,
        attempt: u32,
        error: String,
    },
    /// Every compensation has run.
    RolledBack,
    /// Rollback stopped because a compensation failed for good; `resume` continues it.
    RollbackFailed { step: String, error: String },
    /// The run was cancelled: no compensation, lock released.
    Cancelled { by: String },
    /// Every step completed.
    Succeeded,
    /// A step's `when` condition was false: it did not run (appended last: older records
    /// keep their encoding).
    StepSkipped {
        step: String,
        condition: String,
        evaluated: String,
    },
    /// A step refused the run's own input: the run ended, failed, and released its target
    /// (appended last: older records keep their encoding).
    Refused { step: String, error: String },
    /// After a run ended without success, what one step made was cleaned up (JSON of
    /// [`crate::engine::activity::Discarded`]); the only event a finished run still takes.
    /// Appended last: older records keep their encoding.
    Discarded { step: String, output: Vec<u8> },
    /// The run's trace and run-span ids (see [`super::trace`]). Appended last: older
    /// journal records keep their encoding.
    Traced { trace_id: String, span_id: String },
    /// What a completed step made is gone from the host driving the run (it was made on a
    /// host since lost, or removed): the step runs again before the step that needs it.
    /// Appended last: older journal records keep their encoding.
    OutputLost { step: String, reason: String },
}

/// An event with its journal time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// When it was journaled, microseconds since the Unix epoch.
    pub at_us: i64,
    /// What happened.
    pub event: Event,
}

/// A failure to decode a stored record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The record was written by a newer Lazarus.
    #[error(
        "journal record version {0} is newer than this build understands (it reads version {RECORD_VERSION}); use a newer lazarus"
    )]
    UnknownVersion(u8),
    /// The record is empty.
    #[error("empty journal record")]
    Empty,
    /// The bytes do not decode.
    #[error("journal record does not decode: {0}")]
    Corrupt(String),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes a record behind the current version byte.
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    // Encoding plain structs of strings, integers and byte vectors cannot fail.
    if let Err(e) = bincode::serde::encode_into_std_write(record, &mut out, config()) {
        unreachable!("encoding a journal record failed: {e}");
    }
    out
}

/// Decodes a record written by [`encode`].
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, RecordError> {
    let (&version, payload) = bytes.split_first().ok_or(RecordError::Empty)?;
    if version != RECORD_VERSION {
        return Err(RecordError::UnknownVersion(version));
    }
    let (value, used) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|e| RecordError::Corrupt(e.to_string()))?;
    if used != payload.len() {
        return Err(RecordError::Corrupt(format!(
            "{} trailing bytes",
            payload.len() - used
        )));
    }
    Ok(value)
}

/// The event that ended a run, read without its workflow: the newest success, rollback,
/// cancel or refusal that no later rollback or resume reopened.
pub fn ending(events: &[EventRecord]) -> Option<&Event> {
    events
        .iter()
        .rev()
        .find_map(|record| match record.event {
            Event::Succeeded
            | Event::RolledBack
            | Event::Cancelled { .. }
            | Event::Refused { .. } => Some(Some(&record.event)),
            Event::RollbackStarted { .. } | Event::Resumed { .. } => Some(None),
            _ => None,
        })
        .flatten()
}

/// Whether the run these events tell of has ended (see [`ending`]).
pub fn has_ended(events: &[EventRecord]) -> bool {
    ending(events).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_with_version_byte() {
        let record = EventRecord {
            at_us: 1_700_000_000_000_000,
            event: Event::Halted {
                step: "restore".into(),
                reason: HaltReason::StepFailed("exit 1".into()),
            },
        };
        let bytes = encode(&record);
        assert_eq!(bytes[0], RECORD_VERSION);
        assert_eq!(decode::<EventRecord>(&bytes).unwrap(), record);
    }

    #[test]
    fn refuses_unknown_versions_and_garbage() {
        let mut bytes = encode(&EventRecord {
            at_us: 1,
            event: Event::Succeeded,
        });
        bytes[0] = 9;
        assert!(matches!(
            decode::<EventRecord>(&bytes),
            Err(RecordError::UnknownVersion(9))
        ));
        assert!(matches!(
            decode::<EventRecord>(&[]),
            Err(RecordError::Empty)
        ));
        assert!(decode::<EventRecord>(&[RECORD_VERSION, 0xff, 0xff]).is_err());
    }
}
