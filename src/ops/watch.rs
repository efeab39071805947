//! The RPO watch of `serve`: the age of the newest archived transaction end and of each
//! database's newest backup, checked against the limits alerts set, raised once when a limit
//! is crossed (and again only after it was back under).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Operations;

/// Between two checks unless `[watch] every` says otherwise.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(60);

fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// What one round reads: the archive's lag (with its last commit) and each database's
/// newest backup age, each only when some target asks for it.
#[derive(Debug, Default)]
struct Readings {
    lag: Option<(f64, serde_json::Value)>,
    ages: Vec<(String, f64)>,
}

async fn read(ops: &Operations, lag: bool, ages: bool) -> Readings {
    let mut out = Readings::default();
    if lag {
        let query = super::wal::WalQuery::Status {
            archive: crate::wal::DEFAULT_ARCHIVE.to_string(),
            rpo_seconds: 0.0,
        };
        match super::wal::answer(ops.services(), query).await {
            Ok(answer) => {
                out.lag = answer["lag_seconds"]
                    .as_f64()
                    .map(|lag| (lag, answer["last_commit"].clone()));
            }
            Err(e) => tracing::warn!(error = %e, "RPO watch: cannot read the archive status"),
        }
    }
    if ages {
        let backups = ops.backups(None).await.unwrap_or_default();
        out.ages = crate::catalog::newest_age_per_database(&backups, chrono::Utc::now())
            .into_iter()
            .collect();
    }
    out
}

/// One round: reads the archive and the backups once, raises what alerts ask for, and
/// checks the watch's own targets (logged, kept for `status`).
pub async fn round(
    ops: &Operations,
    targets: &Targets,
    state: &Path,
    seen: &mut HashMap<String, bool>,
) {
    let hooks = ops.alerts().hooks().to_vec();
    let lag = targets.rpo.is_some() || hooks.iter().any(|h| h.rpo.is_some());
    let ages = targets.backup_max_age.is_some() || hooks.iter().any(|h| h.backup_max_age.is_some());
    if !lag && !ages {
        return;
    }
    let readings = read(ops, lag, ages).await;
    alert(ops, &readings);
    check_targets(targets, &readings, state, seen);
}

/// Raises what the alerts' own limits ask for, once per crossing.
fn alert(ops: &Operations, readings: &Readings) {
    let alerts = ops.alerts();
    let hooks = alerts.hooks().to_vec();
    let archive = crate::wal::DEFAULT_ARCHIVE;
    if let Some((lag, last_commit)) = &readings.lag {
        let lag = *lag;
        for hook in hooks.iter().filter(|h| h.rpo.is_some()) {
            let target = hook.rpo.unwrap_or_default().as_secs_f64();
            alerts.watched(
                hook,
                &format!("rpo:{archive}"),
                lag > target,
                "rpo_exceeded",
                &format!("archive {archive}"),
                json!({
                    "event": "rpo_exceeded", "archive": archive, "lag_seconds": lag,
                    "rpo_seconds": target, "last_commit": last_commit,
                    "at": now_text(),
                    "text": format!("Lazarus: archive {archive} is {lag:.0}s behind (RPO target {target:.0}s): a loss now would cost that much data. Check archive_command and `lazarus wal status`."),
                }),
            );
        }
    }
    for hook in hooks.iter().filter(|h| h.backup_max_age.is_some()) {
        let limit = hook.backup_max_age.unwrap_or_default().as_secs_f64();
        for (database, age) in &readings.ages {
            alerts.watched(
                hook,
                &format!("backup:{database}"),
                *age > limit,
                "backup_too_old",
                &format!("database {database}"),
                json!({
                    "event": "backup_too_old", "database": database, "age_seconds": age,
                    "limit_seconds": limit, "at": now_text(),
                    "text": format!("Lazarus: the newest backup of {database} is {age:.0}s old (limit {limit:.0}s). Check the backup schedule; `lazarus backup --database {database}` makes one now."),
                }),
            );
        }
    }
}

/// The watch's own targets (`[watch] rpo`, `backup_max_age`), apart from any alert's.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// The newest archived transaction may be at most this old.
    pub rpo: Option<Duration>,
    /// Every database's newest backup may be at most this old.
    pub backup_max_age: Option<Duration>,
}

/// One thing the watch checked against a target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// What was checked (`rpo:main`, `backup:shop`).
    pub what: String,
    /// Whether it is past its target.
    pub over: bool,
    /// In words, with what to do.
    pub text: String,
}

/// The last round of the watch, as `STATE/watch.json` keeps it for `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Verdicts {
    /// When it was checked, RFC 3339.
    pub checked_at: String,
    /// Every finding.
    pub findings: Vec<Finding>,
}

/// Where the last round is kept.
pub fn verdicts_path(state: &Path) -> PathBuf {
    state.join("watch.json")
}

/// The last round, if `serve` has made one.
pub fn last_verdicts(state: &Path) -> Option<Verdicts> {
    serde_json::from_slice(&std::fs::read(verdicts_path(state)).ok()?).ok()
}

/// The findings of one round against the watch's own targets.
fn findings(targets: &Targets, readings: &Readings) -> Vec<Finding> {
    let mut out = Vec::new();
    let archive = crate::wal::DEFAULT_ARCHIVE;
    if let (Some(rpo), Some((lag, _))) = (targets.rpo, &readings.lag) {
        let (lag, target) = (*lag, rpo.as_secs_f64());
        out.push(Finding {
            what: format!("rpo:{archive}"),
            over: lag > target,
            text: format!(
                "archive {archive}: the newest archived transaction is {lag:.0}s old (RPO {target:.0}s){}",
                if lag > target { "; a loss now would cost that much data: check archive_command and `lazarus wal status`" } else { "" }
            ),
        });
    }
    if let Some(limit) = targets.backup_max_age {
        let limit = limit.as_secs_f64();
        for (database, age) in &readings.ages {
            out.push(Finding {
                what: format!("backup:{database}"),
                over: *age > limit,
                text: format!(
                    "database {database}: the newest backup is {age:.0}s old (limit {limit:.0}s){}",
                    if *age > limit {
                        format!("; `lazarus backup --database {database}` makes one now")
                    } else {
                        String::new()
                    }
                ),
            });
        }
    }
    out
}

/// One round against the watch's own targets: logs every crossing (once, and again when it
/// is back under), and keeps the round in `STATE/watch.json` for `status`.
fn check_targets(
    targets: &Targets,
    readings: &Readings,
    state: &Path,
    seen: &mut HashMap<String, bool>,
) {
    if targets.rpo.is_none() && targets.backup_max_age.is_none() {
        return;
    }
    let findings = findings(targets, readings);
    for f in &findings {
        if seen.insert(f.what.clone(), f.over) != Some(f.over) {
            if f.over {
                tracing::warn!(what = %f.what, "{}", f.text);
            } else {
                tracing::info!(what = %f.what, "{}", f.text);
            }
        }
    }
    let verdicts = Verdicts {
        checked_at: now_text(),
        findings,
    };
    let path = verdicts_path(state);
    if let Err(e) = super::replace_json(&path, &verdicts) {
        tracing::warn!(file = %path.display(), error = %e, "cannot keep the watch's findings");
    }
}
