//! Abandoned timelines: a timeline that a restored server wrote into the archive while it
//! took traffic, and that a rollback then left (traffic went back to the old primary).
//!
//! Its history file and segments stay in the archive (they are what that server wrote, and
//! `--timeline N` may still want them), but "latest" must not follow it: PostgreSQL's
//! `recovery_target_timeline = 'latest'` and a plan's newest timeline would both pick the
//! newest history file, and every later target the live primary archived on its own timeline
//! would be refused. So the rollback records the timeline as abandoned — in the local index
//! first, then in every store, as `wal/ARCHIVE/abandoned/TTTTTTTT.abandoned` (not a manifest,
//! so readers that predate it pass it by) — and "latest" passes over it.
//!
//! A record carries the abandoned timeline's archived history: a later timeline that reuses
//! the number (a new history file) does not match and is not passed over.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::names::HistoryEntry;
use crate::storage::{Body, ObjectStore, StoreSet};

/// One abandoned timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Abandoned {
    /// The timeline's number.
    pub timeline: u32,
    /// When it was abandoned (RFC 3339).
    pub at: String,
    /// Why (the run that rolled back, say).
    pub reason: String,
    /// Its history as archived when it was abandoned (ancestors, oldest first).
    pub history: Vec<HistoryEntry>,
}

/// The record for `timeline` of the server on `data_dir`, when that server archived its
/// history file (`pg_wal/archive_status/TTTTTTTT.history.done`, or `archived_elsewhere`:
/// the catalog holds it); `None` when the timeline never reached the archive — then there
/// is nothing to pass over, and a later server that reuses the number is not passed over.
pub fn from_data_dir(
    data_dir: &std::path::Path,
    timeline: u32,
    reason: &str,
    archived_elsewhere: bool,
) -> Result<Option<Abandoned>, String> {
    let name = format!("{timeline:08X}.history");
    let done = data_dir
        .join("pg_wal/archive_status")
        .join(format!("{name}.done"))
        .exists();
    if !done && !archived_elsewhere {
        return Ok(None);
    }
    let path = data_dir.join("pg_wal").join(&name);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let history = super::names::parse_history(&text).map_err(|e| e.to_string())?;
    Ok(Some(Abandoned {
        timeline,
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        reason: reason.to_string(),
        history,
    }))
}

/// The suffix of a record's object.
const SUFFIX: &str = ".abandoned";

/// Where the records of `archive` live in a store.
pub fn prefix(archive: &str) -> String {
    format!("wal/{archive}/abandoned/")
}

/// Where the record of one timeline lives in a store.
pub fn key(archive: &str, timeline: u32) -> String {
    format!("{}{timeline:08X}{SUFFIX}", prefix(archive))
}

/// Writes the record into every store at once; returns, per store that failed, its name
/// and why (the record is already in the local index: a store that is down learns it later
/// from nothing, so say which).
pub async fn record_in_stores(stores: &StoreSet, archive: &str, record: &Abandoned) -> Vec<String> {
    let bytes = match serde_json::to_vec_pretty(record) {
        Ok(bytes) => Bytes::from(bytes),
        Err(e) => return vec![format!("every store: {e}")],
    };
    let key = key(archive, record.timeline);
    let puts = stores.stores().iter().map(|store| {
        let bytes = bytes.clone();
        let key = key.clone();
        async move {
            let put = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                store.put(&key, Body::Bytes(bytes)),
            )
            .await;
            match put {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(format!("{}: {e}", store.name())),
                Err(_) => Some(format!("{}: no answer within 10s", store.name())),
            }
        }
    });
    futures::future::join_all(puts)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The records one store holds for `archive`.
pub async fn read_from(store: &dyn ObjectStore, archive: &str) -> Result<Vec<Abandoned>, String> {
    let listed = store
        .list(&prefix(archive))
        .await
        .map_err(|e| format!("{}: {e}", store.name()))?;
    let mut out = Vec::new();
    for object in listed {
        if !object.key.ends_with(SUFFIX) {
            continue;
        }
        let bytes = super::archive::read_all(store, &object.key)
            .await
            .map_err(|e| format!("{}: {e}", store.name()))?;
        let record: Abandoned = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: {} is not a record: {e}", store.name(), object.key))?;
        out.push(record);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_lives_beside_the_archive_but_not_as_a_manifest() {
        let key = key("main", 2);
        assert_eq!(key, "wal/main/abandoned/00000002.abandoned");
        assert!(key.starts_with(&super::super::archive::archive_prefix("main")));
        assert!(!key.ends_with(super::super::archive::MANIFEST_SUFFIX));
    }
}
