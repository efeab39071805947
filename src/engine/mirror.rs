//! The journal copied off this host: after every step, a run's new events go to a place
//! another host can read (the stores), so the run outlives the host that drives it.
//!
//! The engine says when (before each step, and when a run stops); what the copy is made
//! of and where it goes is the implementer's business. A step waits for the copy of the
//! events before it, never for more; a copy that fails is retried at the next boundary
//! and shows in the run's report as lag.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::journal::Journal;
use super::records::{EventRecord, RunRecord};

/// How far one place's copy of a run stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorLag {
    /// Where the copy is (a store's name).
    pub store: String,
    /// Events copied there.
    pub mirrored: usize,
    /// Events journaled here that are not there yet.
    pub behind: usize,
    /// Why the last copy failed, while it is behind.
    pub error: Option<String>,
}

/// A run as the copies hold it: what a host that never saw it starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirroredRun {
    /// The run's record (with its pinned workflow).
    pub record: RunRecord,
    /// Its events, in order.
    pub events: Vec<EventRecord>,
    /// Which copy they were read from.
    pub source: String,
}

/// Where runs' journals are copied.
#[async_trait]
pub trait Mirror: Send + Sync {
    /// Copies the run's record (once) and the events journaled since the last copy;
    /// returns when every place has taken them or failed to.
    async fn publish(&self, record: &RunRecord, journal: &dyn Journal) -> Vec<MirrorLag>;
    /// How far behind each copy of a run is, as of the last publish in this process.
    fn lag(&self, run: &str) -> Vec<MirrorLag>;
    /// Makes the next publish of a run try every place, even one left alone after a
    /// failure (a run's end is worth the wait).
    fn retry_now(&self, run: &str);
    /// The fullest copy of a run, or `None` when no place has one.
    async fn fetch(&self, run: &str) -> Result<Option<MirroredRun>, String>;
}
