//! The WAL catalog: an index of the archive's manifests in the state directory's sled store,
//! laid out so that planning a point-in-time recovery over months of segments reads a
//! handful of keys — per timeline, the contiguous runs of archived segments (the gap proof)
//! and a time index (which segment's commits pass a moment).
//!
//! Keys (each prefixed by a tag byte and `archive\0`):
//! `s` timeline+segno → manifest; `t` timeline+time+segno → (); `r` timeline → runs;
//! `h` timeline → history manifest; `o` file → manifest of other files; `k` file → ();
//! `x` timeline+segno → the xid range of its transaction ends (8 bytes); `p` timeline+segno
//! → its restore points (JSON), for segments that have any; `a` timeline → its
//! [`Abandoned`] record, for timelines a rolled-back cut-over left.

use serde::{Deserialize, Serialize};

use super::abandoned::Abandoned;
use super::archive::{
    ArchiveError, FileKind, RestorePointEntry, WalManifest, read_manifests, rfc3339_to_micros,
};
use super::names::HistoryEntry;
use crate::storage::StoreSet;

/// A catalog problem.
#[derive(Debug, thiserror::Error)]
pub enum WalCatalogError {
    /// The sled tree failed.
    #[error("WAL catalog: {0}")]
    Store(String),
    /// Reading the archive failed.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

fn store_err(e: impl std::fmt::Display) -> WalCatalogError {
    WalCatalogError::Store(e.to_string())
}

/// A contiguous run of archived segments on one timeline, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// First segment number.
    pub first: u64,
    /// Last segment number.
    pub last: u64,
}

/// The index of one or more archives.
#[derive(Clone)]
pub struct WalCatalog {
    tree: sled::Tree,
}

fn key(tag: u8, archive: &str, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + archive.len() + rest.len());
    k.push(tag);
    k.extend_from_slice(archive.as_bytes());
    k.push(0);
    k.extend_from_slice(rest);
    k
}

fn seg_rest(timeline: u32, segno: u64) -> Vec<u8> {
    let mut rest = timeline.to_be_bytes().to_vec();
    rest.extend_from_slice(&segno.to_be_bytes());
    rest
}

/// Times sort as unsigned big-endian once the sign bit is flipped.
fn time_bytes(micros: i64) -> [u8; 8] {
    ((micros as u64) ^ (1 << 63)).to_be_bytes()
}

fn time_from(bytes: &[u8]) -> i64 {
    let raw = u64::from_be_bytes(bytes.try_into().unwrap_or([0; 8]));
    (raw ^ (1 << 63)) as i64
}

impl WalCatalog {
    /// A catalog over a sled tree.
    pub fn new(tree: sled::Tree) -> Self {
        Self { tree }
    }

    /// Whether `file` of `archive` is indexed.
    pub fn contains(&self, archive: &str, file: &str) -> Result<bool, WalCatalogError> {
        self.tree
            .contains_key(key(b'k', archive, file.as_bytes()))
            .map_err(store_err)
    }

    /// Indexes one manifest (replacing an older entry for the same file).
    pub fn insert(&self, manifest: &WalManifest) -> Result<(), WalCatalogError> {
        let archive = manifest.archive.as_str();
        let json = serde_json::to_vec(manifest).map_err(store_err)?;
        match (manifest.kind, manifest.segno) {
            (FileKind::Segment, Some(segno)) => {
                let rest = seg_rest(manifest.timeline, segno);
                if let Some(old) = self
                    .tree
                    .insert(key(b's', archive, &rest), json)
                    .map_err(store_err)?
                {
                    // A re-archived segment: drop its old time entry.
                    if let Ok(old) = serde_json::from_slice::<WalManifest>(&old)
                        && let Some(t) = old.last_xact_time.as_deref().and_then(rfc3339_to_micros)
                    {
                        self.tree
                            .remove(time_key(archive, manifest.timeline, t, segno))
                            .map_err(store_err)?;
                    }
                }
                if let Some(t) = manifest
                    .last_xact_time
                    .as_deref()
                    .and_then(rfc3339_to_micros)
                {
                    self.tree
                        .insert(time_key(archive, manifest.timeline, t, segno), &[])
                        .map_err(store_err)?;
                }
                match (manifest.xid_min, manifest.xid_max) {
                    (Some(lo), Some(hi)) => {
                        let mut range = lo.to_be_bytes().to_vec();
                        range.extend_from_slice(&hi.to_be_bytes());
                        self.tree
                            .insert(key(b'x', archive, &rest), range)
                            .map_err(store_err)?;
                    }
                    _ => {
                        self.tree
                            .remove(key(b'x', archive, &rest))
                            .map_err(store_err)?;
                    }
                }
                if manifest.restore_points.is_empty() {
                    self.tree
                        .remove(key(b'p', archive, &rest))
                        .map_err(store_err)?;
                } else {
                    let points = serde_json::to_vec(&manifest.restore_points).map_err(store_err)?;
                    self.tree
                        .insert(key(b'p', archive, &rest), points)
                        .map_err(store_err)?;
                }
                self.add_to_runs(archive, manifest.timeline, segno)?;
            }
            (FileKind::History, _) => {
                self.tree
                    .insert(key(b'h', archive, &manifest.timeline.to_be_bytes()), json)
                    .map_err(store_err)?;
            }
            _ => {
                self.tree
                    .insert(key(b'o', archive, manifest.file.as_bytes()), json)
                    .map_err(store_err)?;
            }
        }
        self.tree
            .insert(key(b'k', archive, manifest.file.as_bytes()), &[])
            .map_err(store_err)?;
        Ok(())
    }

    fn add_to_runs(&self, archive: &str, timeline: u32, segno: u64) -> Result<(), WalCatalogError> {
        let mut runs = self.runs(archive, timeline)?;
        merge_run(&mut runs, segno);
        let bytes = serde_json::to_vec(&runs).map_err(store_err)?;
        self.tree
            .insert(key(b'r', archive, &timeline.to_be_bytes()), bytes)
            .map_err(store_err)?;
        Ok(())
    }

    /// Contiguous runs of archived segments on a timeline, in order.
    pub fn runs(&self, archive: &str, timeline: u32) -> Result<Vec<Run>, WalCatalogError> {
        match self
            .tree
            .get(key(b'r', archive, &timeline.to_be_bytes()))
            .map_err(store_err)?
        {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(store_err),
            None => Ok(Vec::new()),
        }
    }

    /// Timelines with archived segments or history files, ascending.
    pub fn timelines(&self, archive: &str) -> Result<Vec<u32>, WalCatalogError> {
        let mut out = std::collections::BTreeSet::new();
        for tag in [b'r', b'h'] {
            for entry in self.tree.scan_prefix(key(tag, archive, &[])) {
                let (k, _) = entry.map_err(store_err)?;
                if let Some(tli) = k.get(k.len() - 4..) {
                    out.insert(u32::from_be_bytes(tli.try_into().unwrap_or([0; 4])));
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Records a timeline as abandoned (see [`super::abandoned`]); a record already there
    /// for the same history is kept as it was.
    pub fn mark_abandoned(&self, archive: &str, record: &Abandoned) -> Result<(), WalCatalogError> {
        let k = key(b'a', archive, &record.timeline.to_be_bytes());
        if let Some(old) = self.tree.get(&k).map_err(store_err)?
            && serde_json::from_slice::<Abandoned>(&old).is_ok_and(|o| o.history == record.history)
        {
            return Ok(());
        }
        let json = serde_json::to_vec(record).map_err(store_err)?;
        self.tree.insert(k, json).map_err(store_err)?;
        Ok(())
    }

    /// The abandoned-timeline records of an archive, by timeline.
    pub fn abandoned(&self, archive: &str) -> Result<Vec<Abandoned>, WalCatalogError> {
        self.tree
            .scan_prefix(key(b'a', archive, &[]))
            .map(|entry| {
                let (_, bytes) = entry.map_err(store_err)?;
                serde_json::from_slice(&bytes).map_err(store_err)
            })
            .collect()
    }

    /// Whether `timeline` is abandoned: a record names it with the history the archive
    /// holds for it, or the index holds no history for it (a later timeline reusing the
    /// number has another history).
    pub fn is_abandoned(&self, archive: &str, timeline: u32) -> Result<bool, WalCatalogError> {
        let Some(bytes) = self
            .tree
            .get(key(b'a', archive, &timeline.to_be_bytes()))
            .map_err(store_err)?
        else {
            return Ok(false);
        };
        let record: Abandoned = serde_json::from_slice(&bytes).map_err(store_err)?;
        // An index that lacks the history (a partial sync) passes the timeline over: safe,
        // since a timeline that reuses the number brings a history of its own.
        Ok(self
            .history(archive, timeline)?
            .is_none_or(|history| history == record.history))
    }

    /// The timeline "latest" means: the newest one that is not abandoned — the one the live
    /// primary writes. A descendant of an abandoned timeline is not passed over (it reached
    /// the archive only through a later cut-over: traffic is there). `None` when nothing is
    /// archived.
    pub fn latest_timeline(&self, archive: &str) -> Result<Option<u32>, WalCatalogError> {
        for timeline in self.timelines(archive)?.into_iter().rev() {
            if !self.is_abandoned(archive, timeline)? {
                return Ok(Some(timeline));
            }
        }
        Ok(None)
    }

    /// A timeline's ancestry from its history file, oldest first; `None` without one.
    pub fn history(
        &self,
        archive: &str,
        timeline: u32,
    ) -> Result<Option<Vec<HistoryEntry>>, WalCatalogError> {
        let Some(bytes) = self
            .tree
            .get(key(b'h', archive, &timeline.to_be_bytes()))
            .map_err(store_err)?
        else {
            return Ok(None);
        };
        let manifest: WalManifest = serde_json::from_slice(&bytes).map_err(store_err)?;
        Ok(Some(manifest.history))
    }

    /// One segment's manifest.
    pub fn segment(
        &self,
        archive: &str,
        timeline: u32,
        segno: u64,
    ) -> Result<Option<WalManifest>, WalCatalogError> {
        self.tree
            .get(key(b's', archive, &seg_rest(timeline, segno)))
            .map_err(store_err)?
            .map(|bytes| serde_json::from_slice(&bytes).map_err(store_err))
            .transpose()
    }

    /// Segments on `timeline` in `first..=last` whose latest commit is after `after`, in time
    /// order, at most `limit` of them: (time, segno).
    pub fn segments_committing_after(
        &self,
        archive: &str,
        timeline: u32,
        after: i64,
        first: u64,
        last: u64,
        limit: usize,
    ) -> Result<Vec<(i64, u64)>, WalCatalogError> {
        let start = time_key(archive, timeline, after.saturating_add(1), 0);
        let end = key(b't', archive, &(timeline + 1).to_be_bytes());
        let mut out = Vec::new();
        for entry in self.tree.range(start..end) {
            let (k, _) = entry.map_err(store_err)?;
            let (time, segno) = parse_time_key(&k);
            if (first..=last).contains(&segno) {
                out.push((time, segno));
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The latest commit on `timeline` among segments `first..=last`: (time, segno).
    pub fn latest_commit(
        &self,
        archive: &str,
        timeline: u32,
        first: u64,
        last: u64,
    ) -> Result<Option<(i64, u64)>, WalCatalogError> {
        for entry in self
            .tree
            .scan_prefix(key(b't', archive, &timeline.to_be_bytes()))
            .rev()
        {
            let (k, _) = entry.map_err(store_err)?;
            let (time, segno) = parse_time_key(&k);
            if (first..=last).contains(&segno) {
                return Ok(Some((time, segno)));
            }
        }
        Ok(None)
    }

    /// Segments on `timeline` in `first..=last` whose transaction ends span `xid`, in
    /// segment order: the transaction ends in one of them (a long transaction's end can make
    /// several ranges hold it).
    pub fn segments_spanning_xid(
        &self,
        archive: &str,
        timeline: u32,
        xid: u32,
        first: u64,
        last: u64,
    ) -> Result<Vec<u64>, WalCatalogError> {
        let mut out = Vec::new();
        let start = key(b'x', archive, &seg_rest(timeline, first));
        let end = key(
            b'x',
            archive,
            &seg_rest(timeline, last.saturating_add(1).max(first)),
        );
        let range: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
            if last == u64::MAX {
                Box::new(
                    self.tree
                        .range(start..key(b'x', archive, &(timeline + 1).to_be_bytes())),
                )
            } else {
                Box::new(self.tree.range(start..end))
            };
        for entry in range {
            let (k, v) = entry.map_err(store_err)?;
            let (Some(segno), Some((lo, hi))) = (
                k.get(k.len() - 8..)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes),
                xid_range(&v),
            ) else {
                continue;
            };
            if (lo..=hi).contains(&xid) {
                out.push(segno);
            }
        }
        Ok(out)
    }

    /// The smallest and largest transaction id of the transaction ends indexed on
    /// `timeline` (what a `--to-xid` can reach), if any segment carries a range.
    pub fn xid_span(
        &self,
        archive: &str,
        timeline: u32,
    ) -> Result<Option<(u32, u32)>, WalCatalogError> {
        let mut span: Option<(u32, u32)> = None;
        for entry in self
            .tree
            .scan_prefix(key(b'x', archive, &timeline.to_be_bytes()))
        {
            let (_, v) = entry.map_err(store_err)?;
            if let Some((lo, hi)) = xid_range(&v) {
                span = Some(span.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
            }
        }
        Ok(span)
    }

    /// Every restore point indexed on `timeline`, in WAL order: (segno, point).
    pub fn restore_points(
        &self,
        archive: &str,
        timeline: u32,
    ) -> Result<Vec<(u64, RestorePointEntry)>, WalCatalogError> {
        let mut out = Vec::new();
        for entry in self
            .tree
            .scan_prefix(key(b'p', archive, &timeline.to_be_bytes()))
        {
            let (k, v) = entry.map_err(store_err)?;
            let segno = k
                .get(k.len() - 8..)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            let points: Vec<RestorePointEntry> = serde_json::from_slice(&v).map_err(store_err)?;
            out.extend(points.into_iter().map(|p| (segno, p)));
        }
        Ok(out)
    }

    /// Every indexed manifest of an archive: segments in order, then the others.
    pub fn list(&self, archive: &str) -> Result<Vec<WalManifest>, WalCatalogError> {
        let mut out = Vec::new();
        for tag in [b'h', b's', b'o'] {
            for entry in self.tree.scan_prefix(key(tag, archive, &[])) {
                let (_, bytes) = entry.map_err(store_err)?;
                out.push(serde_json::from_slice(&bytes).map_err(store_err)?);
            }
        }
        Ok(out)
    }

    /// Adds what `store`'s archive holds that the catalog does not (everything on a new
    /// host); returns how many manifests were added.
    pub async fn sync_from(
        &self,
        store: &dyn crate::storage::ObjectStore,
        archive: &str,
    ) -> Result<usize, WalCatalogError> {
        let known = |file: &str| self.contains(archive, file).unwrap_or(false);
        let manifests = read_manifests(store, archive, &known).await?;
        for manifest in &manifests {
            self.insert(manifest)?;
        }
        self.tree.flush_async().await.map_err(store_err)?;
        Ok(manifests.len())
    }

    /// Syncs from the first store that can be listed; returns it and the count added.
    pub async fn sync(
        &self,
        stores: &StoreSet,
        archive: &str,
    ) -> Result<(String, usize), WalCatalogError> {
        self.merge_abandoned(stores, archive).await;
        let mut last = None;
        for store in stores.stores() {
            match self.sync_from(store.as_ref(), archive).await {
                Ok(n) => return Ok((store.name().to_string(), n)),
                Err(e) => {
                    tracing::warn!(store = store.name(), error = %e, "cannot read the WAL archive; trying the next store");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| WalCatalogError::Store("no stores are configured".into())))
    }

    /// Adds the abandoned-timeline records every store holds (a rollback writes them to the
    /// stores it reaches: any one may have missed some). A store that cannot be read within
    /// a few seconds is passed over; its records come with a later sync.
    async fn merge_abandoned(&self, stores: &StoreSet, archive: &str) {
        let reads = stores.stores().iter().map(|store| async move {
            let limit = std::time::Duration::from_secs(5);
            match tokio::time::timeout(limit, super::abandoned::read_from(store.as_ref(), archive))
                .await
            {
                Ok(Ok(records)) => records,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read the abandoned timelines of a store");
                    Vec::new()
                }
                Err(_) => {
                    tracing::warn!(
                        store = store.name(),
                        "the abandoned timelines of this store did not answer within 5s"
                    );
                    Vec::new()
                }
            }
        });
        for record in futures::future::join_all(reads).await.into_iter().flatten() {
            if let Err(e) = self.mark_abandoned(archive, &record) {
                tracing::warn!(error = %e, "cannot index an abandoned timeline");
            }
        }
    }

    /// Forgets one archive's index (before a full rebuild). Abandoned-timeline records
    /// stay: the local record may be the only one while the stores are down.
    pub fn clear(&self, archive: &str) -> Result<(), WalCatalogError> {
        for tag in [b's', b't', b'r', b'h', b'o', b'k', b'x', b'p'] {
            for entry in self.tree.scan_prefix(key(tag, archive, &[])) {
                let (k, _) = entry.map_err(store_err)?;
                self.tree.remove(k).map_err(store_err)?;
            }
        }
        Ok(())
    }
}

/// An `x` entry's value: the smallest and largest xid, big-endian.
fn xid_range(value: &[u8]) -> Option<(u32, u32)> {
    let lo = u32::from_be_bytes(value.get(..4)?.try_into().ok()?);
    let hi = u32::from_be_bytes(value.get(4..8)?.try_into().ok()?);
    Some((lo, hi))
}

fn time_key(archive: &str, timeline: u32, micros: i64, segno: u64) -> Vec<u8> {
    let mut rest = timeline.to_be_bytes().to_vec();
    rest.extend_from_slice(&time_bytes(micros));
    rest.extend_from_slice(&segno.to_be_bytes());
    key(b't', archive, &rest)
}

fn parse_time_key(k: &[u8]) -> (i64, u64) {
    let n = k.len();
    if n < 16 {
        return (0, 0);
    }
    let time = time_from(&k[n - 16..n - 8]);
    let segno = u64::from_be_bytes(k[n - 8..].try_into().unwrap_or([0; 8]));
    (time, segno)
}

/// Adds a segment to sorted, disjoint runs, merging neighbours.
pub fn merge_run(runs: &mut Vec<Run>, segno: u64) {
    let at = runs.partition_point(|r| r.last.saturating_add(1) < segno);
    let joins = runs
        .get(at)
        .is_some_and(|run| run.first <= segno.saturating_add(1));
    if !joins {
        runs.insert(
            at,
            Run {
                first: segno,
                last: segno,
            },
        );
        return;
    }
    runs[at].first = runs[at].first.min(segno);
    runs[at].last = runs[at].last.max(segno);
    if let Some(next) = runs.get(at + 1).copied()
        && next.first <= runs[at].last.saturating_add(1)
    {
        runs[at].last = runs[at].last.max(next.last);
        runs.remove(at + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_in_any_order() {
        let mut runs = Vec::new();
        for s in [5, 7, 1, 2, 6, 10, 3] {
            merge_run(&mut runs, s);
        }
        assert_eq!(
            runs,
            vec![
                Run { first: 1, last: 3 },
                Run { first: 5, last: 7 },
                Run {
                    first: 10,
                    last: 10
                }
            ]
        );
        merge_run(&mut runs, 4);
        merge_run(&mut runs, 4);
        assert_eq!(runs[0], Run { first: 1, last: 7 });
        assert_eq!(runs.len(), 2);
    }

    #[test]
    fn time_keys_sort_by_time_across_the_epoch() {
        assert!(time_bytes(-5) < time_bytes(3));
        assert_eq!(time_from(&time_bytes(-5)), -5);
        assert_eq!(
            time_from(&time_bytes(1_700_000_000_000_000)),
            1_700_000_000_000_000
        );
    }
}
