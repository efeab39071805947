//! Which backups a retention policy keeps, and why: a recovery window (Barman's `RECOVERY
//! WINDOW OF 30 DAYS`) and a minimum number of backups, per database and per WAL archive.
//!
//! Logical backups of a database are kept while they finished inside the window, as the
//! newest `min_backups`, or as the newest VERIFIED one (never removed: it is what a
//! recovery picks). Base backups of an archive are kept by the same rules plus one: the
//! newest that became consistent *before* the window began, since reaching the window's
//! first moments replays from it. WAL older than the start of the oldest kept base backup
//! is needed by nothing kept.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Manifest, status};

/// How long and how many backups to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Every moment this far back must stay recoverable.
    pub window: Duration,
    /// Backups kept whatever their age (per database, or base backups per archive).
    pub min_backups: usize,
}

/// One backup's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// The backup.
    pub id: String,
    /// Its database (or archive, for a base backup).
    pub database: String,
    /// `logical` or `physical`.
    pub kind: String,
    /// When it finished (RFC 3339).
    pub finished_at: String,
    /// Why it is kept, or why it goes.
    pub why: String,
}

/// What a policy does to one database's or one archive's backups.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Expiry {
    /// Kept, with why.
    pub keep: Vec<Verdict>,
    /// Removed, with why.
    pub remove: Vec<Verdict>,
    /// For an archive: the WAL segment number below which nothing kept needs WAL (`None`:
    /// no base backup is kept, so no WAL is removed either).
    pub wal_needed_from: Option<u64>,
}

fn finished(m: &Manifest) -> Option<DateTime<Utc>> {
    let at = m
        .physical
        .as_ref()
        .map_or(m.finished_at.as_str(), |p| p.stop_time.as_str());
    DateTime::parse_from_rfc3339(at)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn verdict(m: &Manifest, why: String) -> Verdict {
    Verdict {
        id: m.id.clone(),
        database: m.database.clone(),
        kind: m.kind.clone(),
        finished_at: m.finished_at.clone(),
        why,
    }
}

/// Decides over the backups of one database (logical) or one archive (physical): `backups`
/// all of one kind and one database or archive, in any order.
pub fn expire(backups: &[Manifest], policy: Policy, now: DateTime<Utc>) -> Expiry {
    let window = chrono::Duration::from_std(policy.window).unwrap_or(chrono::Duration::MAX);
    let start = now
        .checked_sub_signed(window)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let mut sorted: Vec<&Manifest> = backups.iter().collect();
    // Newest first; a backup whose time does not parse counts as newest (never removed
    // on a guess).
    sorted.sort_by_key(|m| std::cmp::Reverse(finished(m).unwrap_or(DateTime::<Utc>::MAX_UTC)));
    let physical = sorted.iter().any(|m| m.physical.is_some());
    let newest_verified = sorted
        .iter()
        .find(|m| m.status == status::VERIFIED)
        .map(|m| m.id.clone());
    let mut counted = 0;
    let mut anchor_taken = false;
    let mut out = Expiry::default();
    for m in sorted {
        let at = finished(m);
        let failed = m.status == status::FAILED;
        let why_keep = if at.is_none() {
            Some("its finish time does not parse; kept rather than guessed at".to_string())
        } else if newest_verified.as_deref() == Some(m.id.as_str()) {
            Some("the newest VERIFIED backup".to_string())
        } else if at.is_some_and(|t| t >= start) {
            // A FAILED drill can be the drill's fault (a full disk, a store outage): a
            // backup inside the window is never removed for it.
            Some(if failed {
                "inside the recovery window (FAILED by a drill; kept until it leaves the window)"
            } else {
                "inside the recovery window"
            }
            .to_string())
        } else if counted < policy.min_backups && !failed {
            Some(format!("one of the newest {}", policy.min_backups))
        } else if physical && !anchor_taken && !failed && at.is_some_and(|t| t < start) {
            Some("the newest base backup before the window: replay to the window's first moments starts from it".to_string())
        } else {
            None
        };
        if !failed && at.is_some() {
            counted += 1;
        }
        if physical && !failed && at.is_some_and(|t| t < start) && why_keep.is_some() {
            anchor_taken = true;
        }
        match why_keep {
            Some(why) => out.keep.push(verdict(m, why)),
            None if failed => out
                .remove
                .push(verdict(m, "FAILED, and outside the recovery window".into())),
            None => out.remove.push(verdict(
                m,
                format!(
                    "finished before the recovery window began ({}) and not among the newest {}",
                    start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    policy.min_backups
                ),
            )),
        }
    }
    if physical {
        // A kept base backup whose start cannot be read keeps every WAL file.
        let starts: Option<Vec<u64>> = backups
            .iter()
            .filter(|m| out.keep.iter().any(|k| k.id == m.id))
            .map(|m| {
                let p = m.physical.as_ref()?;
                let lsn: crate::wal::names::Lsn = p.start_lsn.parse().ok()?;
                Some(lsn.segno(p.segment_size))
            })
            .collect();
        out.wal_needed_from = starts.and_then(|s| s.into_iter().min());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::PhysicalInfo;

    const DAY: i64 = 86_400;

    fn at(days_ago: f64, now: DateTime<Utc>) -> String {
        (now - chrono::Duration::seconds((days_ago * DAY as f64) as i64))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    fn logical(id: &str, days_ago: f64, status: &str, now: DateTime<Utc>) -> Manifest {
        Manifest {
            manifest_version: 1,
            id: id.into(),
            kind: "logical".into(),
            database: "shop".into(),
            server_version: "15".into(),
            created_at: at(days_ago, now),
            finished_at: at(days_ago, now),
            key: format!("backups/shop/{id}.dump.lzr"),
            size: 1,
            sha256: String::new(),
            plaintext_size: None,
            plaintext_sha256: None,
            format: "chunked".into(),
            compression: "zstd".into(),
            key_id: None,
            tables: vec![],
            status: status.into(),
            verification: None,
            copies: vec![],
            missing_copies: vec![],
            physical: None,
            data_blocks: None,
        }
    }

    fn base(id: &str, days_ago: f64, segno: u64, now: DateTime<Utc>) -> Manifest {
        let mut m = logical(id, days_ago, status::UNVERIFIED, now);
        m.kind = "physical".into();
        m.database = "main".into();
        m.physical = Some(PhysicalInfo {
            archive: "main".into(),
            timeline: 1,
            start_lsn: format!("0/{:X}", segno << 24),
            stop_lsn: format!("0/{:X}", (segno << 24) + 0x100),
            start_time: at(days_ago, now),
            stop_time: at(days_ago, now),
            system_id: "1".into(),
            segment_size: 16 << 20,
        });
        m
    }

    fn ids(v: &[Verdict]) -> Vec<&str> {
        let mut ids: Vec<&str> = v.iter().map(|v| v.id.as_str()).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn a_month_of_daily_dumps_keeps_the_window_and_the_newest_verified() {
        let now = Utc::now();
        let mut all: Vec<Manifest> = (0..30)
            .map(|d| logical(&format!("d{d:02}"), d as f64 + 0.5, status::UNVERIFIED, now))
            .collect();
        all[20].status = status::VERIFIED.into(); // 20.5 days old: the newest verified
        all[3].status = status::FAILED.into(); // inside the window: kept all the same
        all[25].status = status::FAILED.into(); // outside: goes
        let policy = Policy {
            window: Duration::from_secs(7 * DAY as u64),
            min_backups: 2,
        };
        let out = expire(&all, policy, now);
        let mut kept: Vec<String> = (0..7).map(|d| format!("d{d:02}")).collect();
        kept.push("d20".into());
        kept.sort();
        assert_eq!(
            ids(&out.keep),
            kept.iter().map(String::as_str).collect::<Vec<_>>()
        );
        assert_eq!(out.keep.len() + out.remove.len(), 30);
        assert!(
            out.remove
                .iter()
                .any(|v| v.id == "d25" && v.why.contains("FAILED"))
        );
        assert!(
            out.keep
                .iter()
                .any(|v| v.id == "d03" && v.why.contains("FAILED"))
        );
        assert_eq!(out.wal_needed_from, None);
    }

    #[test]
    fn the_minimum_keeps_old_backups_when_the_window_holds_too_few() {
        let now = Utc::now();
        let all: Vec<Manifest> = (0..5)
            .map(|d| logical(&format!("d{d}"), 40.0 + d as f64, status::UNVERIFIED, now))
            .collect();
        let out = expire(
            &all,
            Policy {
                window: Duration::from_secs(30 * DAY as u64),
                min_backups: 3,
            },
            now,
        );
        assert_eq!(ids(&out.keep), vec!["d0", "d1", "d2"]);
        assert_eq!(ids(&out.remove), vec!["d3", "d4"]);
    }

    #[test]
    fn base_backups_keep_the_one_before_the_window_and_the_wal_from_its_start() {
        let now = Utc::now();
        // Weekly base backups over a month, 10 segments apart.
        let all: Vec<Manifest> = (0..5)
            .map(|w| {
                base(
                    &format!("b{w}"),
                    (w * 7) as f64 + 1.0,
                    100 - 10 * w as u64,
                    now,
                )
            })
            .collect();
        let out = expire(
            &all,
            Policy {
                window: Duration::from_secs(10 * DAY as u64),
                min_backups: 1,
            },
            now,
        );
        // b0 (1 day), b1 (8 days) inside; b2 (15 days) is the newest before the window.
        assert_eq!(ids(&out.keep), vec!["b0", "b1", "b2"]);
        assert_eq!(ids(&out.remove), vec!["b3", "b4"]);
        assert_eq!(out.wal_needed_from, Some(80), "WAL from b2's start on");
    }
}
