//! WAL questions the owner of the state directory answers from its catalog: list, check,
//! status, sync and PITR plans. Each first adds what the archive gained since the last look
//! (an incremental listing), so answers are current on a new host too.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::ControlError;
use crate::activities::Services;
use crate::wal::archive::micros_to_rfc3339;
use crate::wal::catalog::WalCatalog;
use crate::wal::check;
use crate::wal::plan::TimelineChoice;

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
            let mut report = check::check(catalog, &archive).map_err(refused)?;
            report["warning"] = json!(warning);
            report["stores_checked"] = json!(!local);
            if !local {
                check::check_stores(&services.stores, catalog, &archive, &mut report)
                    .await
                    .map_err(refused)?;
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

/// Archive lag: now − last archived commit, against the RPO target.
pub fn status(
    catalog: &WalCatalog,
    archive: &str,
    rpo_seconds: f64,
) -> Result<Value, ControlError> {
    let abandoned: Vec<Value> = catalog
        .abandoned(archive)
        .map_err(refused)?
        .into_iter()
        .filter(|a| catalog.is_abandoned(archive, a.timeline).unwrap_or(false))
        .map(|a| json!({ "timeline": a.timeline, "at": a.at, "reason": a.reason }))
        .collect();
    // The timeline the live primary writes: a rolled-back cut-over's is passed over.
    let Some(latest) = catalog.latest_timeline(archive).map_err(refused)? else {
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
        "abandoned_timelines": abandoned,
    }))
}
