//! The generic durable engine: workflows as data, a journal of events, and an executor that
//! resumes from the journal. It knows nothing of PostgreSQL and never imports an activity.

pub mod activity;
pub mod adopt;
pub mod clock;
mod commit;
pub mod duration;
mod executor;
pub mod fence;
mod folded;
mod host;
pub mod journal;
pub mod mirror;
pub mod params;
pub mod records;
pub mod report;
pub mod rerun;
pub mod runtime;
pub mod state;
pub mod suggest;
pub mod template;
pub mod trace;
pub mod workflow;

pub use activity::{
    Activity, ActivityContext, ActivityError, ActivitySpec, Approval, Discarded, FailureKind,
    InputSpec, Leftovers, Progress, Registry, StepHost,
};
pub use journal::{Journal, JournalError, SledJournal};
pub use report::{RunReport, RunSummary};
pub use runtime::{Engine, EngineError, Submission, Update};
pub use state::RunStatus;
pub use workflow::{Workflow, WorkflowError};
