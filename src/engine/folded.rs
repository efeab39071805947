//! Folded run states kept between reads, so a run's state is brought up to date by the
//! events appended since the last read instead of re-reading and re-folding its whole log.
//!
//! A step reads its run's state several times; a long download journals thousands of
//! checkpoints. Re-folding the whole log each time made every step of a run cost more than
//! the one before, and with many runs at once that CPU is what a step waits for.
//!
//! Correct because a run's record never changes after it is created and its events are
//! append-only, in order: the first `applied` events read last time are still the first
//! `applied` events now.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::journal::{Journal, JournalError};
use super::records::RunRecord;
use super::state::RunState;
use super::workflow::Workflow;

/// How many runs' folds are kept before the ones nobody is driving are dropped.
const KEEP: usize = 256;

/// One run's fold: its record, pinned workflow, state, and how many events it covers.
struct Fold {
    record: Arc<RunRecord>,
    workflow: Arc<Workflow>,
    state: Arc<RunState>,
    applied: usize,
}

/// The folded state of recently read runs.
#[derive(Default)]
pub(crate) struct FoldCache {
    folds: Mutex<HashMap<String, Fold>>,
}

/// A run as the journal describes it now.
pub(crate) type Loaded = (Arc<RunRecord>, Arc<Workflow>, Arc<RunState>);

impl FoldCache {
    /// The run's record, workflow and state, up to date with every event in the journal,
    /// or `None` for a run the journal does not know. `fresh` reads the record and pinned
    /// workflow of a run not seen before; `keep` says whether a run's fold is worth keeping
    /// when the cache is full (a run being driven).
    pub(crate) fn load<E: From<JournalError>>(
        &self,
        journal: &dyn Journal,
        run_id: &str,
        fresh: impl FnOnce() -> Result<Option<(RunRecord, Arc<Workflow>)>, E>,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Option<Loaded>, E> {
        let mut folds = self
            .folds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !folds.contains_key(run_id) {
            let Some((record, workflow)) = fresh()? else {
                return Ok(None);
            };
            if folds.len() >= KEEP {
                folds.retain(|id, _| keep(id));
            }
            let state = Arc::new(RunState::fold(&workflow, &[]));
            folds.insert(
                run_id.to_string(),
                Fold {
                    record: Arc::new(record),
                    workflow,
                    state,
                    applied: 0,
                },
            );
        }
        let Some(fold) = folds.get_mut(run_id) else {
            return Ok(None);
        };
        let new = journal.events_from(run_id, fold.applied)?;
        if !new.is_empty() {
            let state = Arc::make_mut(&mut fold.state);
            for record in &new {
                state.apply(record);
            }
            fold.applied += new.len();
        }
        Ok(Some((
            Arc::clone(&fold.record),
            Arc::clone(&fold.workflow),
            Arc::clone(&fold.state),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::SledJournal;
    use crate::engine::records::{Event, EventRecord};
    use std::collections::BTreeMap;

    fn record(id: &str) -> RunRecord {
        RunRecord {
            id: id.to_string(),
            workflow_name: "t".into(),
            workflow_source: "t".into(),
            workflow_text: String::new(),
            workflow_hash: "h".into(),
            params: BTreeMap::new(),
            target: None,
            reason: String::new(),
            operator: String::new(),
            created_at_us: 0,
            halt_before: vec![],
            halt_after: vec![],
        }
    }

    #[test]
    fn a_cached_fold_equals_a_fold_of_the_whole_log_after_every_append() {
        let dir = tempfile::tempdir().expect("dir");
        let journal = SledJournal::open(dir.path()).expect("journal");
        let wf = Arc::new(crate::engine::state::tests::workflow());
        journal.create_run(&record("r")).expect("create");
        let cache = FoldCache::default();
        let events = [
            Event::StepStarted {
                step: "a".into(),
                attempt: 1,
            },
            Event::StepCheckpoint {
                step: "a".into(),
                attempt: 1,
                data: vec![1, 2],
            },
            Event::StepCompleted {
                step: "a".into(),
                attempt: 1,
                output: b"{\"x\":1}".to_vec(),
            },
            Event::HaltRequested {
                by: "op".into(),
                now: false,
            },
            Event::Succeeded,
        ];
        let mut reads = 0;
        for (i, event) in events.into_iter().enumerate() {
            journal
                .append(
                    "r",
                    &EventRecord {
                        at_us: i as i64,
                        event,
                    },
                )
                .expect("append");
            let (_, _, cached) = cache
                .load::<JournalError>(
                    &journal,
                    "r",
                    || {
                        reads += 1;
                        Ok(Some((record("r"), Arc::clone(&wf))))
                    },
                    |_| true,
                )
                .expect("load")
                .expect("known");
            let whole = RunState::fold(&wf, &journal.events("r").expect("events"));
            assert_eq!(*cached, whole, "after event {i}");
        }
        assert_eq!(reads, 1, "the record is read once");
    }

    #[test]
    fn an_unknown_run_is_none_and_not_kept() {
        let dir = tempfile::tempdir().expect("dir");
        let journal = SledJournal::open(dir.path()).expect("journal");
        let cache = FoldCache::default();
        let loaded = cache
            .load::<JournalError>(&journal, "nope", || Ok(None), |_| true)
            .expect("load");
        assert!(loaded.is_none());
        assert!(cache.folds.lock().expect("lock").is_empty());
    }
}
