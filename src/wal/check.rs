//! Whether a WAL archive is whole: gaps per timeline, history files that agree, and (when
//! asked) whether every indexed segment is in some store. `lazarus wal check` and the
//! `wal-check` runbook (which a schedule can start) both answer with this.

use serde_json::{Value, json};

use super::catalog::{WalCatalog, WalCatalogError};
use super::names::SegmentName;
use super::presence;
use crate::storage::StoreSet;

/// Adds to a check what the stores hold of every indexed segment: one missing from every
/// store is a problem (a gap the index does not show), one missing from some is noted.
pub async fn check_stores(
    stores: &StoreSet,
    catalog: &WalCatalog,
    archive: &str,
    report: &mut Value,
) -> Result<(), WalCatalogError> {
    let mut problems: Vec<Value> = report["problems"].as_array().cloned().unwrap_or_default();
    let mut notes = Vec::new();
    for tli in catalog.timelines(archive)? {
        let runs = catalog.runs(archive, tli)?;
        let Some(first) = runs.first() else { continue };
        let size = catalog
            .segment(archive, tli, first.first)?
            .and_then(|m| m.segment_size)
            .unwrap_or(crate::wal::names::DEFAULT_SEGMENT_SIZE);
        let parts: Vec<(u32, u64, u64)> = runs.iter().map(|r| (tli, r.first, r.last)).collect();
        let found = presence::check(stores, archive, &parts, size).await;
        if !found.missing.is_empty() {
            problems.push(json!(format!(
                "timeline {tli}: {} segment(s) indexed but in no store: {} (deleted from the stores?); a recovery cannot replay past them",
                found.missing.len(),
                found.describe_missing()
            )));
        }
        for why in &found.unreadable {
            problems.push(json!(format!("a store could not be listed: {why}")));
        }
        for (store, n) in &found.thin {
            notes.push(format!(
                "timeline {tli}: store {store} lacks {n} segment(s) another store holds"
            ));
        }
    }
    report["ok"] = json!(problems.is_empty());
    report["problems"] = json!(problems);
    report["notes"] = json!(notes);
    Ok(())
}

/// Gaps per timeline and history consistency.
pub fn check(catalog: &WalCatalog, archive: &str) -> Result<Value, WalCatalogError> {
    let mut timelines = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let all = catalog.timelines(archive)?;
    for &tli in &all {
        let runs = catalog.runs(archive, tli)?;
        // Names depend on the cluster's segment size, which its manifests record.
        let size = match runs.first() {
            Some(run) => catalog
                .segment(archive, tli, run.first)?
                .and_then(|m| m.segment_size)
                .unwrap_or(crate::wal::names::DEFAULT_SEGMENT_SIZE),
            None => crate::wal::names::DEFAULT_SEGMENT_SIZE,
        };
        let name = |segno| {
            SegmentName {
                timeline: tli,
                segno,
            }
            .file_name(size)
        };
        let mut gaps = Vec::new();
        for pair in runs.windows(2) {
            let gap = json!({"first": name(pair[0].last + 1), "last": name(pair[1].first - 1),
                "segments": pair[1].first - pair[0].last - 1});
            problems.push(format!(
                "timeline {tli}: segments {} to {} are missing",
                name(pair[0].last + 1),
                name(pair[1].first - 1)
            ));
            gaps.push(gap);
        }
        let history = catalog.history(archive, tli)?;
        if tli > 1 {
            match &history {
                None => problems.push(format!(
                    "timeline {tli} has segments but no {tli:08X}.history file"
                )),
                Some(entries) => {
                    if let Some(last) = entries.last() {
                        let parent_runs = catalog.runs(archive, last.parent)?;
                        let needed = last.switch.segno(size).saturating_sub(1);
                        let reaches = parent_runs.iter().any(|r| r.last >= needed);
                        if !parent_runs.is_empty() && !reaches {
                            problems.push(format!(
                                "timeline {tli} branched from timeline {} at {}, but timeline {}'s archive ends before that",
                                last.parent, last.switch, last.parent
                            ));
                        }
                        if let Some(parent_history) = catalog.history(archive, last.parent)?
                            && parent_history[..] != entries[..entries.len() - 1]
                        {
                            problems.push(format!(
                                "timeline {tli}'s history does not extend timeline {}'s",
                                last.parent
                            ));
                        }
                    }
                }
            }
        }
        let segments: u64 = runs.iter().map(|r| r.last - r.first + 1).sum();
        timelines.push(json!({
            "timeline": tli,
            "segments": segments,
            "first": runs.first().map(|r| name(r.first)),
            "last": runs.last().map(|r| name(r.last)),
            "gaps": gaps,
            "history": history,
        }));
    }
    Ok(
        json!({"archive": archive, "ok": problems.is_empty(), "problems": problems, "timelines": timelines}),
    )
}
