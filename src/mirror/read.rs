//! Reading a run back from the stores: the record and the longest unbroken chain of event
//! batches, from whichever store holds the most.

use std::collections::BTreeSet;

use tokio::io::AsyncReadExt;

use super::{RUNS_PREFIX, batch_first, events_prefix, record_key, run_of};
use crate::engine::mirror::MirroredRun;
use crate::engine::records::{EventRecord, RunRecord, decode};
use crate::storage::{ObjectStore, StorageError, StoreSet};

/// Why a store's copy of a run could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// An object is there but does not decode.
    #[error("{store}: {key} is not a Lazarus journal record ({message})")]
    Corrupt {
        store: String,
        key: String,
        message: String,
    },
}

async fn read_all(store: &dyn ObjectStore, key: &str) -> Result<Vec<u8>, StorageError> {
    let mut body = store.get(key, 0, None).await?;
    let mut bytes = Vec::new();
    body.read_to_end(&mut bytes)
        .await
        .map_err(|e| StorageError::Transient {
            store: store.name().to_string(),
            message: format!("read of {key}: {e}"),
        })?;
    Ok(bytes)
}

fn decoded<T: for<'de> serde::Deserialize<'de>>(
    store: &dyn ObjectStore,
    key: &str,
    bytes: &[u8],
) -> Result<T, ReadError> {
    decode(bytes).map_err(|e| ReadError::Corrupt {
        store: store.name().to_string(),
        key: key.to_string(),
        message: e.to_string(),
    })
}

/// The first indexes of a run's batches in one store, in order.
pub async fn batches(store: &dyn ObjectStore, run: &str) -> Result<Vec<usize>, StorageError> {
    let mut firsts: Vec<usize> = store
        .list(&events_prefix(run))
        .await?
        .iter()
        .filter_map(|m| batch_first(&m.key))
        .collect();
    firsts.sort_unstable();
    Ok(firsts)
}

/// One batch's events.
pub async fn batch(
    store: &dyn ObjectStore,
    run: &str,
    first: usize,
) -> Result<Vec<EventRecord>, ReadError> {
    let key = super::batch_key(run, first);
    let bytes = read_all(store, &key).await?;
    decoded(store, &key, &bytes)
}

/// The unbroken chain of a run's batches in one store, from the first.
#[derive(Debug, Default)]
pub struct Chain {
    /// The chain's events, in order.
    pub events: Vec<EventRecord>,
    /// Batches listed past where the chain ends: one that does not decode (torn by a
    /// machine crash, see [`crate::storage::Condition::AbsentCopy`]) and all after it, or
    /// one that does not follow on.
    pub past_end: Vec<usize>,
}

/// Reads a run's chain of batches in one store. In a local store (whose copies are not
/// flushed on their own), a batch that does not decode ends the chain as if it were
/// absent: a copy torn by a crash is no worse than a copy not made. Elsewhere it is an
/// error: an S3 write is durable, so such a batch is damage to look at, not to skip.
pub async fn chain(store: &dyn ObjectStore, run: &str) -> Result<Chain, ReadError> {
    let mut chain = Chain::default();
    for first in batches(store, run).await? {
        if !chain.past_end.is_empty() || first != chain.events.len() {
            chain.past_end.push(first);
            continue;
        }
        match batch(store, run, first).await {
            Ok(events) if !events.is_empty() => chain.events.extend(events),
            Ok(_) => chain.past_end.push(first),
            Err(ReadError::Corrupt { key, message, .. }) if store.local_root().is_some() => {
                tracing::warn!(store = %store.name(), %key, %message, "a journal batch in the store does not decode (torn by a crash?); the copy ends before it");
                chain.past_end.push(first);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(chain)
}

/// A run as one store holds it: its record and the events of the unbroken chain of
/// batches from the first (see [`chain`]).
pub async fn from_store(
    store: &dyn ObjectStore,
    run: &str,
) -> Result<Option<MirroredRun>, ReadError> {
    let key = record_key(run);
    let bytes = match read_all(store, &key).await {
        Ok(bytes) => bytes,
        Err(StorageError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let record: RunRecord = decoded(store, &key, &bytes)?;
    Ok(Some(MirroredRun {
        record,
        events: chain(store, run).await?.events,
        source: store.name().to_string(),
    }))
}

/// The fullest copy of a run among the stores; `Ok(None)` when every store answered and
/// none has it, an error naming each store when none could be read.
pub async fn fullest(stores: &StoreSet, run: &str) -> Result<Option<MirroredRun>, String> {
    let mut best: Option<MirroredRun> = None;
    let mut failures = Vec::new();
    for store in stores.stores() {
        match from_store(store.as_ref(), run).await {
            Ok(Some(copy)) => {
                if best
                    .as_ref()
                    .is_none_or(|b| copy.events.len() > b.events.len())
                {
                    best = Some(copy);
                }
            }
            Ok(None) => {}
            Err(e) => failures.push(e.to_string()),
        }
    }
    if best.is_none() && !failures.is_empty() && failures.len() == stores.stores().len() {
        return Err(failures.join("; "));
    }
    Ok(best)
}

/// Every run found in any store, each from its fullest copy, oldest first; and the
/// stores that could not be read, with why.
pub async fn all_runs(stores: &StoreSet) -> (Vec<MirroredRun>, Vec<String>) {
    let mut ids = BTreeSet::new();
    let mut failures = Vec::new();
    for store in stores.stores() {
        match store.list(RUNS_PREFIX).await {
            Ok(listing) => ids.extend(
                listing
                    .iter()
                    .filter_map(|m| run_of(&m.key))
                    .map(str::to_string),
            ),
            Err(e) => failures.push(e.to_string()),
        }
    }
    let mut runs = Vec::new();
    for id in ids {
        match fullest(stores, &id).await {
            Ok(Some(run)) => runs.push(run),
            Ok(None) => {}
            Err(e) => failures.push(format!("run {id}: {e}")),
        }
    }
    runs.sort_by_key(|r| r.record.created_at_us);
    (runs, failures)
}

/// A run's lease as the first store holding one says, with that store's name.
pub async fn lease(stores: &StoreSet, run: &str) -> Option<(super::lease::LeaseBody, String)> {
    for store in stores.stores() {
        if let Ok(Some(found)) = store.read_versioned(&super::lease_key(run)).await
            && let Ok(lease) = serde_json::from_slice(&found.bytes)
        {
            return Some((lease, store.name().to_string()));
        }
    }
    None
}
