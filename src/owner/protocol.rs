//! The control protocol on `state/control.sock`: one JSON request per connection, answered
//! by one JSON response — or, for `follow`, by a stream of JSON lines.

use serde::{Deserialize, Serialize};

use crate::catalog::Manifest;
use crate::engine::{Progress, RunReport, RunSummary};

pub use crate::ops::SubmitRequest;

/// What a client asks of the owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Is an owner here, and who?
    Ping,
    /// Submit and start a run.
    Submit(SubmitRequest),
    /// Resume a run.
    Resume {
        run: String,
        by: String,
        /// Take the run's lease from this holder before it expires.
        #[serde(default)]
        force: Option<String>,
    },
    /// Halt a run.
    Halt { run: String, by: String, now: bool },
    /// Approve a waiting step.
    Approve {
        run: String,
        by: String,
        comment: Option<String>,
    },
    /// Roll a run back.
    Rollback {
        run: String,
        by: String,
        reason: String,
    },
    /// Cancel a run.
    Cancel { run: String, by: String },
    /// A run's report (the latest run when `run` is absent).
    Report { run: Option<String> },
    /// Every run.
    Runs,
    /// Stream a run's reports and progress until the owner stops driving it.
    Follow { run: String },
    /// The backups in the catalog (synced from the stores if it is empty).
    Backups { database: Option<String> },
    /// Rebuild the catalog from one store (the first that answers when none is named).
    CatalogSync { store: Option<String> },
    /// A question about a WAL archive.
    Wal { query: crate::ops::wal::WalQuery },
    /// Remove (or list) what no live run needs.
    Gc { dry_run: bool },
    /// The audit trail.
    Audit,
    /// Recompute the audit chain and compare it with the stores.
    AuditVerify,
    /// How alert delivery stands.
    Alerts,
}

/// The owner's answer to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// The owner's process id.
    Pong { pid: u32 },
    /// A run id (submit).
    RunId { run: String },
    /// A sentence for the operator (control requests).
    Done { message: String },
    /// A run report.
    Report { report: Box<RunReport> },
    /// Run summaries.
    Runs { runs: Vec<RunSummary> },
    /// Backup manifests.
    Backups { backups: Vec<Manifest> },
    /// The catalog was rebuilt from `store` with `count` manifests.
    Synced { store: String, count: usize },
    /// The answer to a WAL question.
    Wal { answer: serde_json::Value },
    /// What `gc` removed, kept and left.
    Gc { answer: serde_json::Value },
    /// The audit trail.
    Audit {
        entries: Vec<crate::ops::audit::AuditEntry>,
    },
    /// What `audit verify` found.
    AuditVerify {
        verification: Box<crate::ops::audit::Verification>,
    },
    /// How alert delivery stands.
    Alerts {
        state: crate::ops::alerts::AlertState,
    },
    /// The request was refused or failed; `retry` means the owner is going away and the
    /// client should connect again.
    Error { message: String, retry: bool },
}

/// One line of a `follow` stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "item", rename_all = "snake_case")]
pub enum FollowItem {
    /// The run changed: here is its report.
    Report { report: Box<RunReport> },
    /// Live progress of a step.
    Progress { step: String, progress: Progress },
    /// The owner stopped driving the run (with the error, if it could not continue).
    End { error: Option<String> },
}
