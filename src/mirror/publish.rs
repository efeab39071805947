//! Copying runs' journals to every store: the record once, then each batch of new events
//! as an object created only if absent, to every store at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use super::{batch_key, read, record_key};
use crate::engine::journal::Journal;
use crate::engine::mirror::{Mirror, MirrorLag, MirroredRun};
use crate::engine::records::{Event, EventRecord, RunRecord, encode};
use crate::storage::{Condition, ConditionalError, ObjectStore, StoreSet};

/// Where one store's copy of one run stands.
#[derive(Debug, Clone, Default)]
struct Copy {
    /// Events known to be there; `None` until learnt from the store.
    mirrored: Option<usize>,
    /// Why the last copy failed.
    error: Option<String>,
    /// Not tried again before this (a store that failed is not waited for at every step).
    retry_after: Option<std::time::Instant>,
}

/// How long a store whose copy failed is left alone before the next try.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// The mirror of every run's journal in a set of stores.
pub struct StoreMirror {
    stores: StoreSet,
    /// Per run: where its copies stand.
    runs: Mutex<HashMap<String, Copies>>,
}

/// Events journaled as of the last publish, and each store's copy.
type Copies = (usize, HashMap<String, Copy>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Creates `key` unless it exists (`condition` is one of the two creates); a store that
/// cannot condition writes gets a plain put (the README says what that leaves).
async fn create(
    store: &dyn ObjectStore,
    key: &str,
    bytes: Bytes,
    condition: Condition,
) -> Result<bool, String> {
    match store.put_if(key, bytes.clone(), condition).await {
        Ok(_) => Ok(true),
        Err(ConditionalError::Refused { .. }) => Ok(false),
        Err(ConditionalError::Unsupported { .. }) => store
            .put(key, crate::storage::Body::Bytes(bytes))
            .await
            .map(|_| true)
            .map_err(|e| e.to_string()),
        Err(ConditionalError::Storage(e)) => Err(e.to_string()),
    }
}

impl StoreMirror {
    /// A mirror writing to every store of `stores`.
    pub fn new(stores: StoreSet) -> Self {
        Self {
            stores,
            runs: Mutex::new(HashMap::new()),
        }
    }

    /// Where a store's copy of a run ends: known, or learnt from the store — and then
    /// checked: the copy must be of this very run (its record) and agree with this
    /// journal up to where it ends, or nothing is appended to it. Batches past the end of
    /// its chain (torn by a crash) are removed, so the copy goes on from where it is whole.
    async fn position(
        store: &Arc<dyn ObjectStore>,
        record: &RunRecord,
        journal: &dyn Journal,
        known: Option<usize>,
    ) -> Result<usize, String> {
        if let Some(at) = known {
            return Ok(at);
        }
        let run = record.id.as_str();
        let name = store.name();
        let created = create(
            store.as_ref(),
            &record_key(run),
            Bytes::from(encode(record)),
            Condition::Absent,
        )
        .await?;
        if !created {
            let theirs = read::from_store(store.as_ref(), run)
                .await
                .map_err(|e| e.to_string())?;
            if theirs.as_ref().is_some_and(|t| t.record != *record) {
                return Err(format!(
                    "store {name} holds another run with id {run} (its record differs from this one's): this run is not copied there; give runs distinct ids"
                ));
            }
        }
        let chain = read::chain(store.as_ref(), run)
            .await
            .map_err(|e| e.to_string())?;
        let ours = journal.events_from(run, 0).map_err(|e| e.to_string())?;
        let theirs = &chain.events;
        if let Some(at) = (0..theirs.len()).find(|&i| ours.get(i) != Some(&theirs[i])) {
            return Err(format!(
                "store {name}'s copy of run {run} differs from this host's journal from event {at} on: {ANOTHER_HOST}"
            ));
        }
        for first in chain.past_end {
            let key = batch_key(run, first);
            tracing::warn!(store = %name, %key, "removing a journal batch past the end of the store's whole copy");
            store.delete(&key).await.map_err(|e| e.to_string())?;
        }
        Ok(theirs.len())
    }

    /// Writes the events from `from` on to a store as one batch.
    async fn append(
        store: &Arc<dyn ObjectStore>,
        run: &str,
        from: usize,
        events: &[EventRecord],
    ) -> Result<usize, String> {
        if events.is_empty() {
            return Ok(from);
        }
        let key = batch_key(run, from);
        // A batch is a copy of what this host's journal holds durably: made again from it
        // if a crash tears it, so it need not be flushed on its own (see
        // `Condition::AbsentCopy`) — except where the run ends or halts, which the next
        // host to look must find even if this one never comes back.
        let stops = events.iter().any(|e| {
            matches!(
                e.event,
                Event::Succeeded
                    | Event::RolledBack
                    | Event::Cancelled { .. }
                    | Event::Refused { .. }
                    | Event::Halted { .. }
            )
        });
        let condition = if stops {
            Condition::Absent
        } else {
            Condition::AbsentCopy
        };
        if !create(
            store.as_ref(),
            &key,
            Bytes::from(encode(&events)),
            condition,
        )
        .await?
        {
            return Err(format!(
                "{key} is already in store {}: {ANOTHER_HOST}",
                store.name()
            ));
        }
        Ok(from + events.len())
    }
}

/// Why a store's copy went on without this process.
const ANOTHER_HOST: &str =
    "another host has written this run's journal there since this one last did";

#[async_trait]
impl Mirror for StoreMirror {
    async fn publish(&self, record: &RunRecord, journal: &dyn Journal) -> Vec<MirrorLag> {
        let run = record.id.clone();
        let now = std::time::Instant::now();
        let mut resting = Vec::new();
        let known: HashMap<String, Option<usize>> = lock(&self.runs)
            .get(&run)
            .map(|(_, copies)| {
                copies
                    .iter()
                    .inspect(|(store, copy)| {
                        if copy.retry_after.is_some_and(|t| t > now) {
                            resting.push(store.to_string());
                        }
                    })
                    .map(|(store, copy)| (store.clone(), copy.mirrored))
                    .collect()
            })
            .unwrap_or_default();
        let stores: Vec<_> = self
            .stores
            .stores()
            .iter()
            .filter(|s| !resting.iter().any(|r| r == s.name()))
            .cloned()
            .collect();
        let positions = futures::future::join_all(stores.iter().map(|store| {
            let known = known.get(store.name()).copied().flatten();
            async move { (known, Self::position(store, record, journal, known).await) }
        }))
        .await;
        let from = positions
            .iter()
            .filter_map(|(_, p)| p.as_ref().ok().copied())
            .min()
            .unwrap_or(0);
        let (journaled, new) = match journal.events_from(&run, from) {
            Ok(events) => (from + events.len(), events),
            Err(e) => {
                tracing::warn!(run = %run, error = %e, "cannot read the run's journal to mirror it");
                return self.lag(&run);
            }
        };
        let writes = stores.iter().zip(&positions).map(|(store, (known, at))| {
            let new = &new;
            let run = &run;
            async move {
                let result = match at {
                    Ok(at) => match new.get(at - from..) {
                        Some(rest) => Self::append(store, run, *at, rest).await,
                        None => Err(format!(
                            "store {} holds {at} events of this run, more than this host's journal: {ANOTHER_HOST}",
                            store.name()
                        )),
                    },
                    Err(e) => Err(e.clone()),
                };
                (store.name().to_string(), *known, result)
            }
        });
        let results = futures::future::join_all(writes).await;
        let mut runs = lock(&self.runs);
        let entry = runs.entry(run.clone()).or_default();
        entry.0 = journaled;
        for (store, known, result) in results {
            let copy = entry.1.entry(store).or_default();
            match result {
                Ok(at) => {
                    *copy = Copy {
                        mirrored: Some(at),
                        error: None,
                        retry_after: None,
                    }
                }
                Err(error) => {
                    // Learn the store's position again next time: it may hold more than
                    // this process knows.
                    copy.mirrored = known.filter(|_| !error.contains(ANOTHER_HOST));
                    copy.error = Some(error);
                    copy.retry_after = Some(now + RETRY_AFTER);
                }
            }
        }
        drop(runs);
        self.lag(&run)
    }

    fn retry_now(&self, run: &str) {
        if let Some((_, copies)) = lock(&self.runs).get_mut(run) {
            for copy in copies.values_mut() {
                copy.retry_after = None;
            }
        }
    }

    fn lag(&self, run: &str) -> Vec<MirrorLag> {
        let runs = lock(&self.runs);
        let Some((journaled, copies)) = runs.get(run) else {
            return Vec::new();
        };
        self.stores
            .names()
            .into_iter()
            .map(|store| {
                let copy = copies.get(&store).cloned().unwrap_or_default();
                let mirrored = copy.mirrored.unwrap_or(0);
                MirrorLag {
                    behind: journaled.saturating_sub(mirrored),
                    error: copy.error.filter(|_| mirrored < *journaled),
                    mirrored,
                    store,
                }
            })
            .collect()
    }

    async fn fetch(&self, run: &str) -> Result<Option<MirroredRun>, String> {
        read::fullest(&self.stores, run).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::SledJournal;
    use crate::engine::journal::tests::record;
    use crate::storage::local::LocalStore;

    fn event(at_us: i64) -> EventRecord {
        EventRecord {
            at_us,
            event: Event::Succeeded,
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_batch_torn_by_a_crash_reads_as_absent_and_is_copied_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = SledJournal::open(&dir.path().join("state")).expect("journal");
        let run = record("r", None);
        journal.create_run(&run).expect("run");
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalStore::new("local", dir.path().join("store")));
        let stores = StoreSet::new(vec![store.clone()]);
        for at in 0..2 {
            journal.append("r", &event(at)).expect("append");
        }
        StoreMirror::new(stores.clone())
            .publish(&run, &journal)
            .await;

        // A machine crash tore a later batch: its name is there, its bytes are not.
        let torn = dir.path().join("store").join(batch_key("r", 2));
        std::fs::write(&torn, b"").expect("tear");
        let read = read::from_store(store.as_ref(), "r")
            .await
            .expect("readable")
            .expect("the run");
        assert_eq!(read.events.len(), 2, "the copy ends before the torn batch");

        // Another process (a restarted host) learns where the copy is whole and goes on.
        journal.append("r", &event(2)).expect("append");
        let lags = StoreMirror::new(stores).publish(&run, &journal).await;
        assert_eq!(lags[0].behind, 0, "{lags:?}");
        assert_eq!(lags[0].error, None);
        let read = read::from_store(store.as_ref(), "r")
            .await
            .expect("readable")
            .expect("the run");
        assert_eq!(read.events, journal.events_from("r", 0).expect("events"));
    }
}
