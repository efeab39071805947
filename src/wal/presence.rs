//! Which archived segments the stores really hold. The catalog is an index of manifests; a
//! segment deleted from a store after it was indexed is still in the index. A plan is a
//! promise made before anything is downloaded, so it is proven against the stores: one
//! listing per directory of 256 segments, not one HEAD per segment.

use std::collections::BTreeSet;

use super::archive::{OBJECT_SUFFIX, archive_prefix};
use super::names::SegmentName;
use crate::storage::StoreSet;

/// What the stores were found to hold of a set of segments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Presence {
    /// Segments in no store that could be listed, in order.
    pub missing: Vec<String>,
    /// Segments missing from some listed store but held by another: one store failure from
    /// a gap. (store, count).
    pub thin: Vec<(String, usize)>,
    /// Stores that could not be listed, with why.
    pub unreadable: Vec<String>,
    /// Segments checked.
    pub checked: usize,
}

impl Presence {
    /// Every segment is in some store, and every store could be read.
    pub fn complete(&self) -> bool {
        self.missing.is_empty() && self.unreadable.is_empty()
    }

    /// The missing segments as ranges, for a message: `A` or `A to B`, with the count.
    pub fn describe_missing(&self) -> String {
        let shown: Vec<&str> = self.missing.iter().take(3).map(String::as_str).collect();
        let more = self.missing.len().saturating_sub(shown.len());
        format!(
            "{}{}",
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        )
    }
}

/// The segment files `first..=last` of `timeline`.
fn names(timeline: u32, first: u64, last: u64, segment_size: u64) -> Vec<String> {
    (first..=last)
        .map(|segno| SegmentName { timeline, segno }.file_name(segment_size))
        .collect()
}

/// Checks which of the segments in `parts` — (timeline, first, last) — each store holds.
pub async fn check(
    stores: &StoreSet,
    archive: &str,
    parts: &[(u32, u64, u64)],
    segment_size: u64,
) -> Presence {
    let wanted: Vec<String> = parts
        .iter()
        .flat_map(|&(tli, first, last)| names(tli, first, last, segment_size))
        .collect();
    // Segment objects live in one directory per 16-character name prefix.
    let dirs: BTreeSet<&str> = wanted.iter().map(|f| &f[..16]).collect();
    let mut presence = Presence {
        checked: wanted.len(),
        ..Presence::default()
    };
    let mut anywhere: BTreeSet<String> = BTreeSet::new();
    let mut per_store: Vec<(String, BTreeSet<String>)> = Vec::new();
    for store in stores.stores() {
        let mut held = BTreeSet::new();
        let mut failed = None;
        for dir in &dirs {
            let prefix = format!("{}{dir}/", archive_prefix(archive));
            match store.list(&prefix).await {
                Ok(objects) => held.extend(objects.into_iter().filter_map(|o| {
                    let name = o.key.rsplit('/').next()?.strip_suffix(OBJECT_SUFFIX)?;
                    Some(name.to_string())
                })),
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        match failed {
            Some(why) => presence.unreadable.push(why),
            None => {
                anywhere.extend(held.iter().cloned());
                per_store.push((store.name().to_string(), held));
            }
        }
    }
    presence.missing = wanted
        .iter()
        .filter(|f| !anywhere.contains(*f))
        .cloned()
        .collect();
    for (store, held) in per_store {
        let lacking = wanted
            .iter()
            .filter(|f| anywhere.contains(*f) && !held.contains(*f))
            .count();
        if lacking > 0 {
            presence.thin.push((store, lacking));
        }
    }
    presence
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::storage::local::LocalStore;
    use crate::storage::{Body, ObjectStore};
    use crate::wal::archive::object_key;

    #[tokio::test]
    async fn a_segment_deleted_from_every_store_is_missing_and_one_copy_is_thin() {
        let dir = tempfile::tempdir().unwrap();
        let a: Arc<dyn ObjectStore> = Arc::new(LocalStore::new("a", dir.path().join("a")));
        let b: Arc<dyn ObjectStore> = Arc::new(LocalStore::new("b", dir.path().join("b")));
        let size = crate::wal::names::DEFAULT_SEGMENT_SIZE;
        for segno in 1..=5u64 {
            let file = SegmentName { timeline: 1, segno }.file_name(size);
            for store in [&a, &b] {
                if (segno == 3) || (segno == 4 && store.name() == "b") {
                    continue;
                }
                store
                    .put(
                        &object_key("main", &file),
                        Body::Bytes(bytes::Bytes::from_static(b"x")),
                    )
                    .await
                    .unwrap();
            }
        }
        let stores = StoreSet::new(vec![a, b]);
        let found = check(&stores, "main", &[(1, 1, 5)], size).await;
        assert_eq!(
            found.missing,
            vec![
                SegmentName {
                    timeline: 1,
                    segno: 3
                }
                .file_name(size)
            ]
        );
        assert_eq!(found.thin, vec![("b".to_string(), 1)]);
        assert!(!found.complete());
        assert_eq!(found.checked, 5);
    }
}
