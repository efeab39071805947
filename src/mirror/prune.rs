//! Removing the copies of runs that ended long ago from the stores. A copy is what lets
//! another host take a run over or see how it went; a run that ended is never taken over,
//! so once it is older than the retention keeps, its copy goes like the backups it used.

use serde::{Deserialize, Serialize};

use super::{RUNS_PREFIX, read};
use crate::engine::records::has_ended;
use crate::storage::StoreSet;

/// A run whose copy is old enough to remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedRun {
    /// The run.
    pub run: String,
    /// When its last event was journaled, µs since the Unix epoch.
    pub ended_at_us: i64,
}

/// The runs the stores hold that ended before `before_us`, oldest first; and the stores
/// or runs that could not be read (their copies are left alone).
pub async fn ended_before(stores: &StoreSet, before_us: i64) -> (Vec<EndedRun>, Vec<String>) {
    let (runs, failures) = read::all_runs(stores).await;
    let mut ended: Vec<EndedRun> = runs
        .into_iter()
        .filter(|copy| has_ended(&copy.events))
        .filter_map(|copy| {
            let last = copy.events.last()?.at_us;
            (last < before_us).then_some(EndedRun {
                run: copy.record.id,
                ended_at_us: last,
            })
        })
        .collect();
    ended.sort_by_key(|r| r.ended_at_us);
    (ended, failures)
}

/// Removes every object of a run's copy (record, events, lease) from every store; how
/// many went. Removing what is already gone is not an error, so a resumed removal
/// finishes the job. Looked at again first: a run reopened since it was chosen (a
/// rollback of a success) or whose lease someone holds is kept (`Ok(None)`).
pub async fn remove(stores: &StoreSet, run: &str) -> Result<Option<usize>, String> {
    if let Some((lease, _)) = read::lease(stores, run).await
        && !lease.released
        && !lease.expired(chrono::Utc::now().timestamp_micros())
    {
        return Ok(None);
    }
    if let Some(copy) = read::fullest(stores, run).await?
        && !has_ended(&copy.events)
    {
        return Ok(None);
    }
    let prefix = format!("{RUNS_PREFIX}{run}/");
    let mut removed = 0;
    for store in stores.stores() {
        let listing = store
            .list(&prefix)
            .await
            .map_err(|e| format!("cannot list run {run}'s copy: {e}"))?;
        for object in listing {
            store
                .delete(&object.key)
                .await
                .map_err(|e| format!("cannot remove {}: {e}", object.key))?;
            removed += 1;
        }
    }
    Ok(Some(removed))
}
