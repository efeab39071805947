//! Carrying out a retention policy: which backups of every database and archive go (see
//! [`super::retention`]), then their files out of every store and out of the catalog, and
//! the WAL that no kept base backup needs; and the point-in-time window that is left.
//!
//! Every deletion can be repeated (an absent object is fine), so a run interrupted half-way
//! finishes on resume; a backup stays in the catalog until every store has let go of it.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::retention::{Expiry, Policy, expire};
use super::{Catalog, Manifest, manifest_key};
use crate::config::RetentionConfig;
use crate::engine::duration::parse_duration;
use crate::storage::StoreSet;
use crate::wal::archive::{FileKind, WalManifest, manifest_key as wal_manifest_key, object_key};
use crate::wal::catalog::WalCatalog;
use crate::wal::names::SegmentName;
use crate::wal::plan::{self, TimelineChoice};

/// Deletions done at once against the stores.
const AT_ONCE: usize = 16;

/// What a policy does to one database or one archive.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    /// `database` or `archive`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// The window, as configured ("30d").
    pub recovery_window: String,
    /// The minimum kept.
    pub min_backups: usize,
    /// The verdicts.
    #[serde(flatten)]
    pub expiry: Expiry,
}

/// What an expiry removes, decided once and kept, so a resumed run removes the same.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Removal {
    /// Backups (logical and base) to remove, by id.
    pub backups: Vec<String>,
    /// Per archive: the segment number below which WAL goes.
    pub wal_below: BTreeMap<String, u64>,
}

/// The policy for one database (`physical` false) or archive, from `[retention]`; `None`
/// when no window is configured for it.
pub fn policy_for(
    config: &RetentionConfig,
    physical: bool,
    name: &str,
) -> Result<Option<(Policy, String)>, String> {
    let rule = if physical {
        config.archives.get(name)
    } else {
        config.databases.get(name)
    };
    let window = rule
        .and_then(|r| r.recovery_window.clone())
        .or_else(|| config.recovery_window.clone());
    let Some(text) = window else {
        return Ok(None);
    };
    let window = parse_duration(&text).map_err(|e| {
        format!("[retention] recovery_window for {name}: {e} (write it like \"30d\" or \"12h\")")
    })?;
    let min_backups = rule
        .and_then(|r| r.min_backups)
        .or(config.min_backups)
        .unwrap_or(1);
    Ok(Some((
        Policy {
            window,
            min_backups,
        },
        text,
    )))
}

/// Decides over every database's and archive's backups (optionally one of them).
pub fn decide(
    manifests: &[Manifest],
    config: &RetentionConfig,
    only: Option<&str>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Group>, String> {
    let mut grouped: BTreeMap<(bool, String), Vec<Manifest>> = BTreeMap::new();
    for m in manifests {
        let (physical, name) = match &m.physical {
            Some(p) => (true, p.archive.clone()),
            None => (false, m.database.clone()),
        };
        if only.is_none_or(|o| o == name) {
            grouped.entry((physical, name)).or_default().push(m.clone());
        }
    }
    let mut out = Vec::new();
    for ((physical, name), backups) in grouped {
        let Some((policy, text)) = policy_for(config, physical, &name)? else {
            continue;
        };
        out.push(Group {
            kind: if physical { "archive" } else { "database" }.into(),
            name,
            recovery_window: text,
            min_backups: policy.min_backups,
            expiry: expire(&backups, policy, now),
        });
    }
    Ok(out)
}

/// The removal the verdicts call for.
pub fn removal(groups: &[Group]) -> Removal {
    Removal {
        backups: groups
            .iter()
            .flat_map(|g| g.expiry.remove.iter().map(|v| v.id.clone()))
            .collect(),
        wal_below: groups
            .iter()
            .filter(|g| g.kind == "archive")
            .filter_map(|g| Some((g.name.clone(), g.expiry.wal_needed_from?)))
            .collect(),
    }
}

/// Deletes `keys` from every store, a few at a time; returns what failed, with why.
async fn delete_everywhere(stores: &StoreSet, keys: Vec<String>) -> Vec<String> {
    let mut pending: Vec<futures::future::BoxFuture<'static, Option<String>>> = Vec::new();
    for store in stores.stores() {
        for key in &keys {
            let (store, key) = (Arc::clone(store), key.clone());
            pending.push(Box::pin(async move {
                store
                    .delete(&key)
                    .await
                    .err()
                    .map(|e| format!("{key} in store {}: {e}", store.name()))
            }));
        }
    }
    let mut failures = Vec::new();
    let mut outcomes = futures::stream::iter(pending).buffer_unordered(AT_ONCE);
    while let Some(outcome) = outcomes.next().await {
        failures.extend(outcome);
    }
    failures
}

/// Removes backups (their files first, then their manifests, from every store; then the
/// catalog entry, once every store has let go). Returns the ids removed and the failures.
pub async fn remove_backups(
    stores: &StoreSet,
    catalog: &Catalog,
    manifests: &[Manifest],
    ids: &[String],
) -> (Vec<String>, Vec<String>) {
    let (mut removed, mut failures) = (Vec::new(), Vec::new());
    for id in ids {
        let Some(m) = manifests.iter().find(|m| &m.id == id) else {
            // Gone already (an earlier attempt of this run got that far).
            removed.push(id.clone());
            continue;
        };
        let mut failed = delete_everywhere(stores, vec![m.key.clone()]).await;
        if failed.is_empty() {
            failed = delete_everywhere(stores, vec![manifest_key(&m.database, &m.id)]).await;
        }
        if failed.is_empty() {
            match catalog.remove(id) {
                Ok(()) => removed.push(id.clone()),
                Err(e) => failures.push(format!("{id}: {e}")),
            }
        } else {
            failures.extend(failed);
        }
    }
    (removed, failures)
}

/// The segment a WAL file belongs to (segments, partials and backup labels; history files
/// have none and are always kept).
fn segno_of(m: &WalManifest) -> Option<u64> {
    match m.kind {
        FileKind::History => None,
        FileKind::Segment | FileKind::Partial => m.segno,
        FileKind::BackupLabel => {
            let size = m
                .segment_size
                .unwrap_or(crate::wal::names::DEFAULT_SEGMENT_SIZE);
            SegmentName::parse(m.file.get(..24)?, size)
                .ok()
                .map(|s| s.segno)
        }
    }
}

/// The WAL files of `archive` below segment `below`, oldest first.
pub fn wal_to_remove(
    wal: &WalCatalog,
    archive: &str,
    below: u64,
) -> Result<Vec<WalManifest>, String> {
    let mut files: Vec<WalManifest> = wal
        .list(archive)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|m| segno_of(m).is_some_and(|s| s < below))
        .collect();
    files.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(files)
}

/// Removes WAL files (object, then manifest) from every store, then rebuilds the archive's
/// index from the stores. Returns the count removed and the failures.
pub async fn remove_wal(
    stores: &StoreSet,
    wal: &WalCatalog,
    archive: &str,
    files: &[WalManifest],
) -> (usize, Vec<String>) {
    let objects = files.iter().map(|m| object_key(archive, &m.file)).collect();
    let mut failures = delete_everywhere(stores, objects).await;
    if failures.is_empty() {
        let manifests = files
            .iter()
            .map(|m| wal_manifest_key(archive, &m.file))
            .collect();
        failures = delete_everywhere(stores, manifests).await;
    }
    if let Err(e) = wal.clear(archive) {
        failures.push(format!("cannot clear the WAL index of {archive}: {e}"));
    } else if let Err(e) = wal.sync(stores, archive).await {
        failures.push(format!("cannot rebuild the WAL index of {archive}: {e}"));
    }
    let removed = if failures.is_empty() { files.len() } else { 0 };
    (removed, failures)
}

/// The point-in-time window an archive covers with these backups (what is left).
pub fn window_left(wal: &WalCatalog, archive: &str, manifests: &[Manifest]) -> String {
    let bases = plan::base_backups(manifests, archive);
    match plan::window(wal, archive, TimelineChoice::Latest, &bases) {
        Ok(window) => window.to_string(),
        Err(e) => format!("unknown ({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{PhysicalInfo, status};
    use crate::config::RetentionRule;
    use crate::storage::local::LocalStore;
    use crate::storage::{Body, ObjectStore};
    use crate::wal::archive::micros_to_rfc3339;
    use crate::wal::names::{DEFAULT_SEGMENT_SIZE, Lsn};

    const HOUR: i64 = 3_600_000_000;
    const DAY: i64 = 24 * HOUR;

    /// A daily base backup taken `day` days into the month: it starts in the first segment
    /// of that day (segments are hourly, numbered from 1).
    fn base(day: i64, month_start: i64) -> Manifest {
        let segno = (1 + 24 * day) as u64;
        let start = Lsn(segno * DEFAULT_SEGMENT_SIZE + 40);
        let stop = Lsn(start.0 + 4096);
        let stop_time = micros_to_rfc3339(month_start + day * DAY + 1_000_000);
        Manifest {
            manifest_version: 1,
            id: format!("main-base-{day:02}"),
            kind: "physical".into(),
            database: "main".into(),
            server_version: "15".into(),
            created_at: stop_time.clone(),
            finished_at: stop_time.clone(),
            key: format!("backups/main/main-base-{day:02}.tar.lzr"),
            size: 1,
            sha256: String::new(),
            plaintext_size: None,
            plaintext_sha256: None,
            format: "chunked".into(),
            compression: "zstd".into(),
            key_id: None,
            tables: vec![],
            status: if day == 10 {
                status::VERIFIED.into()
            } else {
                status::UNVERIFIED.into()
            },
            verification: None,
            copies: vec![],
            missing_copies: vec![],
            physical: Some(PhysicalInfo {
                archive: "main".into(),
                timeline: 1,
                start_lsn: start.to_string(),
                stop_lsn: stop.to_string(),
                start_time: stop_time.clone(),
                stop_time,
                system_id: "1".into(),
                segment_size: DEFAULT_SEGMENT_SIZE,
            }),
            data_blocks: None,
        }
    }

    #[tokio::test]
    async fn a_month_of_base_backups_and_wal_keeps_exactly_the_window_and_plans_still_work() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let (catalog, wal) = (
            Catalog::new(db.open_tree("catalog").unwrap()),
            WalCatalog::new(db.open_tree("wal").unwrap()),
        );
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new("local", dir.path()));
        let stores = StoreSet::new(vec![Arc::clone(&store)]);
        let now = chrono::Utc::now();
        let month_start = now.timestamp_micros() - 30 * DAY;
        // A month of hourly WAL segments with commits, in the catalog and the store.
        plan::synthetic_archive(&wal, "main", 30 * 24, month_start, 3600).unwrap();
        for m in wal.list("main").unwrap() {
            let object = Body::Bytes(bytes::Bytes::from_static(b"segment"));
            store
                .put(&object_key("main", &m.file), object)
                .await
                .unwrap();
            let json = bytes::Bytes::from(serde_json::to_vec(&m).unwrap());
            store
                .put(&wal_manifest_key("main", &m.file), Body::Bytes(json))
                .await
                .unwrap();
        }
        // A base backup every day of the month; day 10's was verified by a drill.
        let manifests: Vec<Manifest> = (0..30).map(|d| base(d, month_start)).collect();
        for m in &manifests {
            catalog.put(m).unwrap();
            store
                .put(&m.key, Body::Bytes(bytes::Bytes::from_static(b"tar")))
                .await
                .unwrap();
            let json = bytes::Bytes::from(serde_json::to_vec(m).unwrap());
            store
                .put(&manifest_key("main", &m.id), Body::Bytes(json))
                .await
                .unwrap();
        }
        let config = RetentionConfig {
            recovery_window: Some("30d".into()),
            min_backups: Some(2),
            runs_window: None,
            databases: BTreeMap::new(),
            archives: BTreeMap::from([(
                "main".to_string(),
                RetentionRule {
                    recovery_window: Some("7d".into()),
                    min_backups: Some(2),
                },
            )]),
        };

        let groups = decide(&manifests, &config, None, now).unwrap();
        let planned = removal(&groups);
        // Inside 7 days: days 23..=29 (day 23 finished 7 days minus 1 s ago); the newest
        // before the window: day 22; the newest VERIFIED: day 10. Everything else goes.
        let mut kept: Vec<String> = (22..30).map(|d| format!("main-base-{d:02}")).collect();
        kept.push("main-base-10".into());
        let mut removed: Vec<String> = (0..22)
            .filter(|d| *d != 10)
            .map(|d| format!("main-base-{d:02}"))
            .collect();
        removed.sort();
        let mut planned_ids = planned.backups.clone();
        planned_ids.sort();
        assert_eq!(planned_ids, removed);
        // The WAL kept starts where the oldest kept base backup (day 10, verified) starts.
        assert_eq!(planned.wal_below.get("main"), Some(&(1 + 24 * 10)));

        let (gone, failed) = remove_backups(&stores, &catalog, &manifests, &planned.backups).await;
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(gone.len(), removed.len());
        let files = wal_to_remove(&wal, "main", 1 + 24 * 10).unwrap();
        assert_eq!(files.len(), 24 * 10);
        let (wal_gone, failed) = remove_wal(&stores, &wal, "main", &files).await;
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(wal_gone, 240);

        // The stores and both catalogs hold exactly what was kept.
        let left: Vec<String> = catalog
            .list(None)
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        let mut expected = kept.clone();
        expected.sort();
        let mut left_sorted = left.clone();
        left_sorted.sort();
        assert_eq!(left_sorted, expected);
        for id in &removed {
            assert!(
                store
                    .head(&format!("backups/main/{id}.tar.lzr"))
                    .await
                    .unwrap()
                    .is_none()
            );
            assert!(
                store
                    .head(&manifest_key("main", id))
                    .await
                    .unwrap()
                    .is_none()
            );
        }
        let indexed = wal.list("main").unwrap();
        assert_eq!(indexed.len(), 30 * 24 - 240);
        assert!(indexed.iter().all(|m| m.segno.unwrap_or(0) >= 241));

        // Point-in-time plans to moments spread over the window that is left still work.
        let remaining = catalog.list(None).unwrap();
        let bases = plan::base_backups(&remaining, "main");
        let window = window_left(&wal, "main", &remaining);
        assert!(
            window.starts_with(&micros_to_rfc3339(month_start + 10 * DAY + 1_000_000)),
            "{window}"
        );
        for days_ago in [20, 7, 3, 1] {
            let target = now.timestamp_micros() - days_ago * DAY + HOUR / 2;
            let planned = plan::plan(&wal, "main", target, TimelineChoice::Latest, &bases);
            assert!(planned.is_ok(), "{days_ago} days ago: {planned:?}");
        }
        // A moment that was expired is refused, naming the window that is left.
        let expired = now.timestamp_micros() - 25 * DAY;
        let refused = plan::plan(&wal, "main", expired, TimelineChoice::Latest, &bases)
            .unwrap_err()
            .to_string();
        assert!(refused.contains(&window), "{refused}");
    }
}
