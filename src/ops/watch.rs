//! The RPO watch of `serve`: the age of the newest archived transaction end and of each
//! database's newest backup, checked against the limits alerts set, raised once when a limit
//! is crossed (and again only after it was back under).

use std::time::Duration;

use serde_json::json;

use super::Operations;

/// Between two checks unless `[watch] every` says otherwise.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(60);

fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// One round of checks.
pub async fn check(ops: &Operations) {
    let alerts = ops.alerts();
    let hooks = alerts.hooks().to_vec();
    if hooks
        .iter()
        .all(|h| h.rpo.is_none() && h.backup_max_age.is_none())
    {
        return;
    }
    let archive = crate::wal::DEFAULT_ARCHIVE;
    if hooks.iter().any(|h| h.rpo.is_some()) {
        let query = super::wal::WalQuery::Status {
            archive: archive.to_string(),
            rpo_seconds: 0.0,
        };
        match super::wal::answer(ops.services(), query).await {
            Ok(answer) => {
                if let Some(lag) = answer["lag_seconds"].as_f64() {
                    for hook in hooks.iter().filter(|h| h.rpo.is_some()) {
                        let target = hook.rpo.unwrap_or_default().as_secs_f64();
                        let over = lag > target;
                        alerts.watched(
                            hook,
                            &format!("rpo:{archive}"),
                            over,
                            "rpo_exceeded",
                            &format!("archive {archive}"),
                            json!({
                                "event": "rpo_exceeded", "archive": archive, "lag_seconds": lag,
                                "rpo_seconds": target, "last_commit": answer["last_commit"],
                                "at": now_text(),
                                "text": format!("Lazarus: archive {archive} is {lag:.0}s behind (RPO target {target:.0}s): a loss now would cost that much data. Check archive_command and `lazarus wal status`."),
                            }),
                        );
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "RPO watch: cannot read the archive status"),
        }
    }
    if hooks.iter().any(|h| h.backup_max_age.is_some()) {
        let backups = ops.backups(None).await.unwrap_or_default();
        let newest = crate::catalog::newest_age_per_database(&backups, chrono::Utc::now());
        for hook in hooks.iter().filter(|h| h.backup_max_age.is_some()) {
            let limit = hook.backup_max_age.unwrap_or_default().as_secs_f64();
            for (database, age) in &newest {
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
}
