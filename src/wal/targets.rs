//! Recovery targets other than a time — an LSN, a transaction id, a named restore point, or
//! the end of the base backup (`immediate`), as every peer offers them — planned like a time
//! target: the base backup consistent before the target, and the exact, gap-free chain to
//! the segment where replay stops, all from the catalog before anything is downloaded.

use std::fmt;

use super::archive::rfc3339_to_micros;
use super::catalog::WalCatalog;
use super::names::{Lsn, SegmentName};
use super::plan::{
    self, BaseBackup, PitrPlan, PlanError, Route, TimelineChoice, Window, prove_chain, route,
};

/// Where a recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// At a moment (microseconds since the Unix epoch): `recovery_target_time`.
    Time(i64),
    /// At a WAL position: `recovery_target_lsn`.
    Lsn(Lsn),
    /// At the end of a transaction: `recovery_target_xid`.
    Xid(u32),
    /// At a restore point made with `pg_create_restore_point`: `recovery_target_name`.
    Name(String),
    /// As soon as the base backup is consistent: `recovery_target = 'immediate'`.
    Immediate,
}

impl Target {
    /// Reads a target as the `to` parameter carries it: a time, `lsn:X/Y`, `xid:N`,
    /// `name:NAME` or `immediate`.
    pub fn parse(text: &str) -> Result<Target, String> {
        let text = text.trim();
        if text == "immediate" {
            return Ok(Target::Immediate);
        }
        if let Some(lsn) = text.strip_prefix("lsn:") {
            return lsn.trim().parse::<Lsn>().map(Target::Lsn).map_err(|_| {
                format!("{lsn:?} is not an LSN: write it as PostgreSQL prints it, e.g. 0/3000060")
            });
        }
        if let Some(xid) = text.strip_prefix("xid:") {
            return match xid.trim().parse::<u32>() {
                Ok(n) if n >= 3 => Ok(Target::Xid(n)),
                _ => Err(format!(
                    "{xid:?} is not a transaction id: a number from 3 to 4294967295 (txid_current() modulo 2^32)"
                )),
            };
        }
        if let Some(name) = text.strip_prefix("name:") {
            let name = name.trim();
            if name.is_empty() || name.len() >= 64 {
                return Err(format!(
                    "{name:?} cannot be a restore point name: 1 to 63 bytes"
                ));
            }
            return Ok(Target::Name(name.to_string()));
        }
        super::parse_target_time(text).map(Target::Time)
    }

    /// The kind, as plans and reports name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Time(_) => "time",
            Target::Lsn(_) => "lsn",
            Target::Xid(_) => "xid",
            Target::Name(_) => "name",
            Target::Immediate => "immediate",
        }
    }

    /// The `postgresql.conf` lines that make the server stop here (`None` for a time,
    /// whose lines depend on the plan's stop position).
    pub fn recovery_settings(&self) -> Option<String> {
        let quote = |t: &str| format!("'{}'", t.replace('\'', "''"));
        match self {
            Target::Time(_) => None,
            Target::Lsn(lsn) => Some(format!("recovery_target_lsn = {}", quote(&lsn.to_string()))),
            Target::Xid(xid) => Some(format!("recovery_target_xid = '{xid}'")),
            Target::Name(name) => Some(format!("recovery_target_name = {}", quote(name))),
            Target::Immediate => Some("recovery_target = 'immediate'".into()),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Time(t) => write!(f, "{}", super::archive::micros_to_rfc3339(*t)),
            Target::Lsn(lsn) => write!(f, "lsn:{lsn}"),
            Target::Xid(xid) => write!(f, "xid:{xid}"),
            Target::Name(name) => write!(f, "name:{name}"),
            Target::Immediate => write!(f, "immediate"),
        }
    }
}

/// A target planned here (a time goes to [`plan::plan`]).
#[derive(Clone, Copy)]
enum Position<'a> {
    Lsn(Lsn),
    Xid(u32),
    Name(&'a str),
    Immediate,
}

/// Where replay stops, found before the base backup is chosen.
struct Stop {
    timeline: u32,
    segno: u64,
    /// The base backup must be consistent at or before this position.
    before: Lsn,
    /// When the stop happened, as well as the catalog knows (for RPO and the report).
    time: Option<i64>,
    /// Take the next segment too when it is archived: the stop record may run into it.
    and_next: bool,
}

/// Plans a recovery of `archive` to `target`.
pub fn plan_target(
    catalog: &WalCatalog,
    archive: &str,
    target: &Target,
    timeline: TimelineChoice,
    backups: &[BaseBackup],
) -> Result<PitrPlan, PlanError> {
    let position = match target {
        Target::Time(t) => {
            let mut planned = plan::plan(catalog, archive, *t, timeline, backups)?;
            planned.target_time = planned.target.clone();
            return Ok(planned);
        }
        Target::Lsn(lsn) => Position::Lsn(*lsn),
        Target::Xid(xid) => Position::Xid(*xid),
        Target::Name(name) => Position::Name(name),
        Target::Immediate => Position::Immediate,
    };
    let text = target.to_string();
    let Route {
        timeline,
        path,
        segment_size,
        ranges,
        mut usable,
    } = route(catalog, archive, timeline, backups)?;
    let seg = |lsn: Lsn| lsn.segno(segment_size);
    usable.sort_by_key(|b| (b.stop_lsn, b.stop_time));
    let Some(newest) = usable.last().copied() else {
        return Err(PlanError::Unreachable(format!(
            "no base backup on timeline {timeline}'s path to recover from: take one (`lazarus run base-backup`)"
        )));
    };
    let segment_time = |tli: u32, segno: u64| -> Result<Option<i64>, PlanError> {
        Ok(catalog
            .segment(archive, tli, segno)?
            .and_then(|m| m.last_xact_time)
            .as_deref()
            .and_then(rfc3339_to_micros))
    };
    let stop = match position {
        Position::Immediate => Stop {
            timeline: newest.timeline,
            segno: seg(Lsn(newest.stop_lsn.0.saturating_sub(1))),
            before: newest.stop_lsn,
            time: Some(newest.stop_time),
            and_next: false,
        },
        Position::Lsn(lsn) => {
            let Some(part) = path
                .iter()
                .find(|p| p.begin <= lsn && p.end.is_none_or(|end| lsn < end))
            else {
                return Err(PlanError::Unreachable(format!(
                    "{text} is not on timeline {timeline}'s path"
                )));
            };
            let archived_end = catalog
                .runs(archive, part.timeline)?
                .last()
                .map(|r| Lsn((r.last + 1) * segment_size));
            match archived_end {
                None => {
                    return Err(PlanError::Unreachable(format!(
                        "{text} is on timeline {}, which has no archived segment yet (pick another with --timeline, or see `lazarus wal status`)",
                        part.timeline
                    )));
                }
                Some(end) if lsn >= end => {
                    return Err(PlanError::Unreachable(format!(
                        "{text} is past the archived WAL on timeline {}: it ends at {end} (is archiving behind? see `lazarus wal status`)",
                        part.timeline
                    )));
                }
                Some(_) => {}
            }
            Stop {
                timeline: part.timeline,
                segno: seg(lsn),
                before: lsn,
                time: segment_time(part.timeline, seg(lsn))?,
                and_next: true,
            }
        }
        Position::Xid(xid) => {
            let mut found = Vec::new();
            for &(tli, first, last) in &ranges {
                for segno in catalog.segments_spanning_xid(archive, tli, xid, first, last)? {
                    found.push((tli, segno));
                }
            }
            let (Some(&(_, first_seg)), Some(&(tli, segno))) = (found.first(), found.last()) else {
                let mut spans = Vec::new();
                for &(tli, _, _) in &ranges {
                    if let Some((lo, hi)) = catalog.xid_span(archive, tli)? {
                        spans.push(format!("{lo} to {hi} on timeline {tli}"));
                    }
                }
                return Err(PlanError::Unreachable(format!(
                    "no archived transaction end of xid {xid} on timeline {timeline}'s path; the archived transaction ends span xids {} (segments archived before Lazarus recorded xids carry none)",
                    if spans.is_empty() {
                        "nothing".to_string()
                    } else {
                        spans.join(", ")
                    }
                )));
            };
            // A long transaction can widen several segments' ranges: stop at the latest
            // that may hold the end, and start from a backup consistent before the first.
            Stop {
                timeline: tli,
                segno,
                before: Lsn(first_seg * segment_size),
                time: segment_time(tli, segno)?,
                and_next: true,
            }
        }
        Position::Name(name) => {
            let mut points = Vec::new();
            let mut known = std::collections::BTreeSet::new();
            for part in &path {
                for (segno, point) in catalog.restore_points(archive, part.timeline)? {
                    let Ok(lsn) = point.lsn.parse::<Lsn>() else {
                        continue;
                    };
                    if part.begin <= lsn && part.end.is_none_or(|end| lsn < end) {
                        known.insert(point.name.clone());
                        if point.name == name {
                            points.push((part.timeline, segno, lsn, point));
                        }
                    }
                }
            }
            let Some((_, _, latest, _)) = points.last() else {
                return Err(PlanError::Unreachable(format!(
                    "no restore point named {name:?} is archived on timeline {timeline}'s path; {} (`lazarus wal restore-points` lists them)",
                    if known.is_empty() {
                        "none is".to_string()
                    } else {
                        format!(
                            "archived: {}",
                            known.into_iter().take(10).collect::<Vec<_>>().join(", ")
                        )
                    }
                )));
            };
            let latest = *latest;
            // PostgreSQL stops at the first restore point of that name after the backup is
            // consistent: with the backup for the newest one, that is the one it reaches.
            let backup_stop = usable
                .iter()
                .rev()
                .find(|b| b.stop_lsn <= latest)
                .map(|b| b.stop_lsn)
                .unwrap_or(latest);
            let (tli, segno, lsn, point) = points
                .iter()
                .find(|(_, _, lsn, _)| *lsn >= backup_stop)
                .cloned()
                .unwrap_or_else(|| points[points.len() - 1].clone());
            Stop {
                timeline: tli,
                segno,
                before: lsn,
                time: rfc3339_to_micros(&point.time),
                and_next: true,
            }
        }
    };
    let Some(backup) = (match position {
        Position::Immediate => Some(newest),
        _ => usable
            .iter()
            .rev()
            .find(|b| b.stop_lsn <= stop.before)
            .copied(),
    }) else {
        let oldest = usable[0];
        return Err(PlanError::Unreachable(format!(
            "{text} is before the oldest base backup ({}) became consistent at {}; pick a later target",
            oldest.id, oldest.stop_lsn
        )));
    };
    let start_seg = seg(backup.start_lsn);
    let from_part = ranges
        .iter()
        .position(|&(tli, first, last)| {
            tli == backup.timeline && (first..=last).contains(&start_seg)
        })
        .unwrap_or(0);
    let mut chain = Vec::new();
    let mut reached = false;
    for &(tli, first, last) in &ranges[from_part..] {
        let first = first.max(start_seg);
        if tli == stop.timeline && (first..=last).contains(&stop.segno) {
            let next_archived = catalog.segment(archive, tli, stop.segno + 1)?.is_some();
            let end = if stop.and_next && next_archived && stop.segno < last {
                stop.segno + 1
            } else {
                stop.segno
            };
            chain.push((tli, first, end));
            reached = true;
            break;
        }
        if first <= last {
            chain.push((tli, first, last));
        }
    }
    if !reached {
        return Err(PlanError::Unreachable(format!(
            "{text} is not reachable from base backup {} along timeline {timeline}: pick the timeline it is on (--timeline N; `lazarus wal list` shows them)",
            backup.id
        )));
    }
    let (parts, count) = prove_chain(catalog, archive, chain, backup, &text, segment_size)?;
    let mut last_commit = None;
    for &(tli, first, last) in ranges.iter().rev() {
        if let Some((time, _)) = catalog.latest_commit(archive, tli, first, last)? {
            last_commit = Some(time);
            break;
        }
    }
    let window = Window {
        from: usable
            .first()
            .map(|b| super::archive::micros_to_rfc3339(b.stop_time)),
        to: last_commit.map(super::archive::micros_to_rfc3339),
    };
    let time = stop.time.unwrap_or(backup.stop_time);
    let segment_name = SegmentName {
        timeline: stop.timeline,
        segno: stop.segno,
    }
    .file_name(segment_size);
    Ok(PitrPlan {
        archive: archive.to_string(),
        target: text,
        target_micros: time,
        timeline,
        backup: backup.clone(),
        chain: parts,
        segments: count,
        target_segment: segment_name,
        target_segment_last_commit: stop
            .time
            .map(super::archive::micros_to_rfc3339)
            .unwrap_or_default(),
        window,
        newer_history_seconds: last_commit.map_or(0.0, |l| ((l - time) as f64 / 1e6).max(0.0)),
        stop_lsn: None,
        target_kind: target.kind().to_string(),
        target_time: super::archive::micros_to_rfc3339(time),
    })
}
