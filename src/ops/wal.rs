//! WAL questions the owner of the state directory answers from its catalog: list, check,
//! status, sync and PITR plans. Each first adds what the archive gained since the last look
//! (an incremental listing), so answers are current on a new host too.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::ControlError;
use crate::activities::Services;
use crate::wal::archive::micros_to_rfc3339;
use crate::wal::catalog::WalCatalog;
use crate::wal::names::SegmentName;
use crate::wal::plan::TimelineChoice;
use crate::wal::presence;

/// A question about a WAL archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "query", rename_all = "snake_case")]
pub enum WalQuery {
    /// Every archived file.
    List {
        /// Archive name.
        archive: String,
    },
    /// Gaps per timeline and timeline-history consistency.
    Check {
        /// Archive name.
        archive: String,
        /// Check the index alone, not what the stores hold.
        #[serde(default)]
        local: bool,
    },
    /// Archive lag against the RPO target.
    Status {
        /// Archive name.
        archive: String,
        /// The RPO target in seconds.
        rpo_seconds: f64,
    },
    /// Re-read the archive (all of it with `full`).
    Sync {
        /// Archive name.
        archive: String,
        /// One store to read from.
        store: Option<String>,
        /// Forget the index first.
        full: bool,
    },
    /// The named restore points archived, on every timeline.
    RestorePoints {
        /// Archive name.
        archive: String,
    },
    /// A point-in-time recovery plan.
    Plan {
        /// Archive name.
        archive: String,
        /// The target: a time, `lsn:X/Y`, `xid:N`, `name:NAME` or `immediate`.
        to: String,
        /// A timeline; the newest when absent.
        timeline: Option<u32>,
    },
}

impl WalQuery {
    /// Whether answering rewrites the archive's index (a sync): an operator's action, not a
    /// read.
    pub fn changes_the_index(&self) -> bool {
        matches!(self, WalQuery::Sync { .. })
    }
}

fn refused(e: impl std::fmt::Display) -> ControlError {
    ControlError::Refused(e.to_string())
}

/// Brings the catalog up to date with the archive; a failure is reported, not fatal.
async fn refresh(services: &Services, catalog: &WalCatalog, archive: &str) -> Option<String> {
    match catalog.sync(&services.stores, archive).await {
        Ok(_) => None,
        Err(e) => Some(format!(
            "could not read the archive ({e}); answering from the catalog as it was"
        )),
    }
}

/// Answers a WAL question.
pub async fn answer(services: &Services, query: WalQuery) -> Result<Value, ControlError> {
    let catalog = services
        .wal_catalog()
        .map_err(|e| ControlError::Refused(e.message))?;
    match query {
        WalQuery::Sync {
            archive,
            store,
            full,
        } => {
            let stores = match store {
                Some(name) => services.stores.only(&[name]).map_err(refused)?,
                None => services.stores.clone(),
            };
            if full {
                catalog.clear(&archive).map_err(refused)?;
            }
            let (store, added) = catalog.sync(&stores, &archive).await.map_err(refused)?;
            Ok(json!({"archive": archive, "store": store, "added": added}))
        }
        WalQuery::List { archive } => {
            let warning = refresh(services, catalog, &archive).await;
            let files = catalog.list(&archive).map_err(refused)?;
            Ok(json!({"archive": archive, "warning": warning, "files": files}))
        }
        WalQuery::Check { archive, local } => {
            let warning = refresh(services, catalog, &archive).await;
            let mut report = check(catalog, &archive)?;
            report["warning"] = json!(warning);
            report["stores_checked"] = json!(!local);
            if !local {
                check_stores(services, catalog, &archive, &mut report).await?;
            }
            Ok(report)
        }
        WalQuery::Status {
            archive,
            rpo_seconds,
        } => {
            let warning = refresh(services, catalog, &archive).await;
            let mut report = status(catalog, &archive, rpo_seconds)?;
            report["warning"] = json!(warning);
            Ok(report)
        }
        WalQuery::RestorePoints { archive } => {
            let warning = refresh(services, catalog, &archive).await;
            let mut points = Vec::new();
            for tli in catalog.timelines(&archive).map_err(refused)? {
                for (segno, point) in catalog.restore_points(&archive, tli).map_err(refused)? {
                    points.push(json!({
                        "name": point.name,
                        "time": point.time,
                        "lsn": point.lsn,
                        "timeline": tli,
                        "segment": catalog
                            .segment(&archive, tli, segno)
                            .map_err(refused)?
                            .map(|m| m.file),
                    }));
                }
            }
            Ok(json!({ "archive": archive, "restore_points": points, "warning": warning }))
        }
        WalQuery::Plan {
            archive,
            to,
            timeline,
        } => {
            let target = crate::wal::targets::Target::parse(&to).map_err(refused)?;
            let warning = refresh(services, catalog, &archive).await;
            let manifests = super::list_backups(services, None).await?;
            let backups = crate::wal::plan::base_backups(&manifests, &archive);
            let choice = timeline.map_or(TimelineChoice::Latest, TimelineChoice::Exactly);
            let plan =
                crate::wal::targets::plan_target(catalog, &archive, &target, choice, &backups)
                    .map_err(refused)?;
            let mut value = serde_json::to_value(&plan).map_err(refused)?;
            value["warning"] = json!(warning);
            // Planning is fast because it reads the index; `recover --to` proves the chain
            // against the stores before it restores anything.
            value["stores_checked"] = json!(false);
            Ok(value)
        }
    }
}

/// Adds to a check what the stores hold of every indexed segment: one missing from every
/// store is a problem (a gap the index does not show), one missing from some is noted.
async fn check_stores(
    services: &Services,
    catalog: &WalCatalog,
    archive: &str,
    report: &mut Value,
) -> Result<(), ControlError> {
    let mut problems: Vec<Value> = report["problems"].as_array().cloned().unwrap_or_default();
    let mut notes = Vec::new();
    for tli in catalog.timelines(archive).map_err(refused)? {
        let runs = catalog.runs(archive, tli).map_err(refused)?;
        let Some(first) = runs.first() else { continue };
        let size = catalog
            .segment(archive, tli, first.first)
            .map_err(refused)?
            .and_then(|m| m.segment_size)
            .unwrap_or(crate::wal::names::DEFAULT_SEGMENT_SIZE);
        let parts: Vec<(u32, u64, u64)> = runs.iter().map(|r| (tli, r.first, r.last)).collect();
        let found = presence::check(&services.stores, archive, &parts, size).await;
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
pub fn check(catalog: &WalCatalog, archive: &str) -> Result<Value, ControlError> {
    let mut timelines = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let all = catalog.timelines(archive).map_err(refused)?;
    for &tli in &all {
        let runs = catalog.runs(archive, tli).map_err(refused)?;
        // Names depend on the cluster's segment size, which its manifests record.
        let size = match runs.first() {
            Some(run) => catalog
                .segment(archive, tli, run.first)
                .map_err(refused)?
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
        let history = catalog.history(archive, tli).map_err(refused)?;
        if tli > 1 {
            match &history {
                None => problems.push(format!(
                    "timeline {tli} has segments but no {tli:08X}.history file"
                )),
                Some(entries) => {
                    if let Some(last) = entries.last() {
                        let parent_runs = catalog.runs(archive, last.parent).map_err(refused)?;
                        let needed = last.switch.segno(size).saturating_sub(1);
                        let reaches = parent_runs.iter().any(|r| r.last >= needed);
                        if !parent_runs.is_empty() && !reaches {
                            problems.push(format!(
                                "timeline {tli} branched from timeline {} at {}, but timeline {}'s archive ends before that",
                                last.parent, last.switch, last.parent
                            ));
                        }
                        if let Some(parent_history) =
                            catalog.history(archive, last.parent).map_err(refused)?
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

/// Archive lag: now − last archived commit, against the RPO target.
pub fn status(
    catalog: &WalCatalog,
    archive: &str,
    rpo_seconds: f64,
) -> Result<Value, ControlError> {
    let all = catalog.timelines(archive).map_err(refused)?;
    let Some(&latest) = all.last() else {
        return Ok(
            json!({"archive": archive, "ok": false, "lag_seconds": null, "rpo_seconds": rpo_seconds,
            "message": "nothing is archived yet"}),
        );
    };
    let runs = catalog.runs(archive, latest).map_err(refused)?;
    let last_segment = runs.last().map(|r| r.last);
    let last_commit = catalog
        .latest_commit(archive, latest, 0, u64::MAX)
        .map_err(refused)?;
    let newest = match last_segment {
        Some(segno) => catalog.segment(archive, latest, segno).map_err(refused)?,
        None => None,
    };
    let now = chrono::Utc::now().timestamp_micros();
    let lag = last_commit.map(|(t, _)| (now - t) as f64 / 1e6);
    let ok = lag.is_some_and(|lag| lag <= rpo_seconds);
    Ok(json!({
        "archive": archive,
        "timeline": latest,
        "last_segment": newest.as_ref().map(|m| m.file.clone()),
        "last_archived_at": newest.as_ref().map(|m| m.archived_at.clone()),
        "last_commit": last_commit.map(|(t, _)| micros_to_rfc3339(t)),
        "lag_seconds": lag,
        "rpo_seconds": rpo_seconds,
        "ok": ok,
    }))
}
