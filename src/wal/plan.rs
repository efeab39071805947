//! PITR planning: for a target time, the newest base backup that finished before it, the
//! exact segment chain from the backup's start to a segment whose commits pass the target,
//! on the right timelines, with the proof that the chain has no gap — all from the catalog,
//! before anything is downloaded. A target the archive cannot reach is refused with the
//! window it can.

use serde::{Deserialize, Serialize};

use super::archive::micros_to_rfc3339;
use super::catalog::{WalCatalog, WalCatalogError};
use super::names::{Lsn, SegmentName};

/// A base backup as planning needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseBackup {
    /// Backup id.
    pub id: String,
    /// Timeline it was taken on.
    pub timeline: u32,
    /// Where replay must start.
    pub start_lsn: Lsn,
    /// Where the copy became consistent.
    pub stop_lsn: Lsn,
    /// When it became consistent (microseconds since the Unix epoch).
    pub stop_time: i64,
    /// WAL segment size of its cluster.
    pub segment_size: u64,
}

/// Which timeline to recover along.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimelineChoice {
    /// The newest timeline in the archive that is not abandoned: the one the live primary
    /// writes (see [`super::abandoned`]).
    Latest,
    /// A named timeline (its ancestry is followed).
    Exactly(u32),
}

/// The span of time an archive can restore to, along one timeline path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// The earliest reachable moment: the oldest usable base backup's consistent point.
    pub from: Option<String>,
    /// The last archived commit.
    pub to: Option<String>,
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.from, &self.to) {
            (Some(from), Some(to)) => write!(f, "{from} to {to}"),
            (None, Some(to)) => write!(f, "nothing (no base backup; last archived commit {to})"),
            (Some(from), None) => write!(
                f,
                "nothing (base backup at {from}, but no archived commits after it)"
            ),
            (None, None) => write!(f, "nothing (no base backup and no archived WAL)"),
        }
    }
}

/// One timeline's stretch of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainPart {
    /// Timeline.
    pub timeline: u32,
    /// First segment number.
    pub first_segno: u64,
    /// Last segment number.
    pub last_segno: u64,
    /// First file name.
    pub first_file: String,
    /// Last file name.
    pub last_file: String,
}

/// A plan for a point-in-time recovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PitrPlan {
    /// The archive.
    pub archive: String,
    /// The target, RFC 3339.
    pub target: String,
    /// The target in microseconds since the Unix epoch.
    pub target_micros: i64,
    /// The timeline recovery ends on.
    pub timeline: u32,
    /// The base backup to restore.
    pub backup: BaseBackup,
    /// The segments to replay, per timeline, in order; proven gap-free.
    pub chain: Vec<ChainPart>,
    /// Segments in the chain.
    pub segments: u64,
    /// The chain's last segment: its commits pass the target.
    pub target_segment: String,
    /// The latest commit time in that segment (the first archived commit past the target is
    /// at or before it).
    pub target_segment_last_commit: String,
    /// The window this timeline path can restore to.
    pub window: Window,
    /// Archived history newer than the target that this recovery leaves out, in seconds
    /// (last archived commit − target).
    pub newer_history_seconds: f64,
    /// Where replay stops instead of at the target time: set when the target is the last
    /// archived transaction end itself, which no later record passes, so replay stops
    /// right after that record (`recovery_target_lsn`, inclusive).
    #[serde(default)]
    pub stop_lsn: Option<String>,
    /// `time`, `lsn`, `xid`, `name` or `immediate`.
    #[serde(default = "time_kind")]
    pub target_kind: String,
    /// When replay stops, RFC 3339: the target itself for a time; otherwise as well as the
    /// catalog knows (a restore point's time, the latest transaction end of the stop
    /// segment, the base backup's consistent point) — for the RPO and the report.
    #[serde(default)]
    pub target_time: String,
}

fn time_kind() -> String {
    "time".into()
}

/// Why no plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] WalCatalogError),
    /// Nothing archived.
    #[error(
        "the WAL archive {0} is empty: point-in-time recovery needs `archive_command = 'lazarus wal push %p'` and a base backup (run `lazarus catalog sync` on a new host)"
    )]
    Empty(String),
    /// A timeline's history file is missing.
    #[error(
        "timeline {0} has no history file in the archive, so its ancestry is unknown; archive {0:08X}.history or pick an older timeline"
    )]
    MissingHistory(u32),
    /// The target is before the first consistent point.
    #[error(
        "{target} is before the oldest base backup on timeline {timeline} became consistent; this archive covers {window}"
    )]
    BeforeWindow {
        /// The target.
        target: String,
        /// Timeline.
        timeline: u32,
        /// What is covered.
        window: Window,
    },
    /// The target is after the last archived commit.
    #[error(
        "{target} is after the last archived commit on timeline {timeline}; this archive covers {window} (is archiving behind? see `lazarus wal status`)"
    )]
    AfterWindow {
        /// The target.
        target: String,
        /// Timeline.
        timeline: u32,
        /// What is covered.
        window: Window,
    },
    /// The transaction end that decides the target continues into a segment that is not
    /// archived yet: replay could not read it.
    #[error(
        "the first transaction end at or after {target} continues into segment {next}, which is not archived yet: wait until it is (`lazarus wal status`), or pick a target before {reachable}"
    )]
    Unfinished {
        /// The target.
        target: String,
        /// The segment replay would need.
        next: String,
        /// The latest moment reachable without it.
        reachable: String,
    },
    /// A target other than a time that the archive cannot reach, with what it can.
    #[error("{0}")]
    Unreachable(String),
    /// The chain has a hole.
    #[error(
        "WAL segments {first} to {last} are missing from the archive, so base backup {backup} cannot replay to {target}; this archive covers {window} without crossing the gap — take a new base backup, or pick a target before the gap"
    )]
    Gap {
        /// First missing file.
        first: String,
        /// Last missing file.
        last: String,
        /// The backup that would need them.
        backup: String,
        /// The target.
        target: String,
        /// What is covered without the gap.
        window: Box<Window>,
    },
}

/// One timeline's stretch of a path: `[begin, end)` in LSNs.
#[derive(Debug, Clone, Copy)]
pub(super) struct PathPart {
    pub(super) timeline: u32,
    pub(super) begin: Lsn,
    pub(super) end: Option<Lsn>,
}

/// The timelines a recovery along `timeline` passes through, oldest first.
pub(super) fn timeline_path(
    catalog: &WalCatalog,
    archive: &str,
    timeline: u32,
) -> Result<Vec<PathPart>, PlanError> {
    if timeline == 1 {
        return Ok(vec![PathPart {
            timeline,
            begin: Lsn(0),
            end: None,
        }]);
    }
    let history = catalog
        .history(archive, timeline)?
        .ok_or(PlanError::MissingHistory(timeline))?;
    let mut path = Vec::new();
    let mut begin = Lsn(0);
    for entry in &history {
        path.push(PathPart {
            timeline: entry.parent,
            begin,
            end: Some(entry.switch),
        });
        begin = entry.switch;
    }
    path.push(PathPart {
        timeline,
        begin,
        end: None,
    });
    Ok(path)
}

/// Where every plan starts: the timeline, its path, each part's segment range, and the
/// base backups on the path.
pub(super) struct Route<'a> {
    pub(super) timeline: u32,
    pub(super) path: Vec<PathPart>,
    pub(super) segment_size: u64,
    /// Per path part: (timeline, first segno, last segno); the segment holding a switch
    /// point is read from the newer timeline, as PostgreSQL does.
    pub(super) ranges: Vec<(u32, u64, u64)>,
    /// Base backups started within their timeline's stretch of the path, unsorted.
    pub(super) usable: Vec<&'a BaseBackup>,
}

/// Resolves the timeline and lays out its path for a plan.
pub(super) fn route<'a>(
    catalog: &WalCatalog,
    archive: &str,
    timeline: TimelineChoice,
    backups: &'a [BaseBackup],
) -> Result<Route<'a>, PlanError> {
    let timeline = match timeline {
        TimelineChoice::Exactly(t) => t,
        TimelineChoice::Latest => catalog
            .latest_timeline(archive)?
            .ok_or_else(|| PlanError::Empty(archive.to_string()))?,
    };
    let path = timeline_path(catalog, archive, timeline)?;
    let segment_size = backups
        .first()
        .map(|b| b.segment_size)
        .unwrap_or(super::names::DEFAULT_SEGMENT_SIZE);
    let seg = |lsn: Lsn| lsn.segno(segment_size);
    let ranges = path
        .iter()
        .map(|p| {
            let last = p.end.map_or(u64::MAX, |end| seg(end).saturating_sub(1));
            (p.timeline, seg(p.begin), last)
        })
        .collect();
    let usable = backups
        .iter()
        .filter(|b| {
            path.iter().any(|p| {
                p.timeline == b.timeline
                    && b.start_lsn >= p.begin
                    && p.end.is_none_or(|end| b.stop_lsn <= end)
            })
        })
        .collect();
    Ok(Route {
        timeline,
        path,
        segment_size,
        ranges,
        usable,
    })
}

/// The newest archived commit along a path's ranges: (time, timeline, segment).
fn last_commit(
    catalog: &WalCatalog,
    archive: &str,
    ranges: &[(u32, u64, u64)],
) -> Result<Option<(i64, u32, u64)>, PlanError> {
    for &(tli, first, last) in ranges.iter().rev() {
        if let Some((time, segno)) = catalog.latest_commit(archive, tli, first, last)? {
            return Ok(Some((time, tli, segno)));
        }
    }
    Ok(None)
}

/// The span of time `archive` can be restored to along `timeline`'s path with these base
/// backups: what is left after `expire`, say.
pub fn window(
    catalog: &WalCatalog,
    archive: &str,
    timeline: TimelineChoice,
    backups: &[BaseBackup],
) -> Result<Window, PlanError> {
    let route = route(catalog, archive, timeline, backups)?;
    let from = route.usable.iter().map(|b| b.stop_time).min();
    let to = last_commit(catalog, archive, &route.ranges)?;
    Ok(Window {
        from: from.map(micros_to_rfc3339),
        to: to.map(|(t, _, _)| micros_to_rfc3339(t)),
    })
}

/// Plans a recovery of `archive` to `target` (microseconds since the Unix epoch).
pub fn plan(
    catalog: &WalCatalog,
    archive: &str,
    target: i64,
    timeline: TimelineChoice,
    backups: &[BaseBackup],
) -> Result<PitrPlan, PlanError> {
    let target_text = micros_to_rfc3339(target);
    let Route {
        timeline,
        path: _,
        segment_size,
        ranges,
        mut usable,
    } = route(catalog, archive, timeline, backups)?;
    let seg = |lsn: Lsn| lsn.segno(segment_size);
    usable.sort_by_key(|b| (b.stop_time, b.stop_lsn));
    let last_commit = last_commit(catalog, archive, &ranges)?;
    let window = Window {
        from: usable.first().map(|b| micros_to_rfc3339(b.stop_time)),
        to: last_commit.map(|(t, _, _)| micros_to_rfc3339(t)),
    };
    if usable.is_empty() && last_commit.is_none() {
        return Err(PlanError::Empty(archive.to_string()));
    }
    let Some(backup) = usable.iter().rev().find(|b| b.stop_time <= target).copied() else {
        return Err(PlanError::BeforeWindow {
            target: target_text,
            timeline,
            window,
        });
    };
    if last_commit.is_none_or(|(t, _, _)| t < target) {
        return Err(PlanError::AfterWindow {
            target: target_text,
            timeline,
            window,
        });
    }
    // Walk the path from the backup's timeline, finding the first segment whose commits
    // pass the target.
    let start_seg = seg(backup.start_lsn);
    let from_part = ranges
        .iter()
        .position(|&(tli, first, last)| {
            tli == backup.timeline && (first..=last).contains(&start_seg)
        })
        .unwrap_or(0);
    let mut chain = Vec::new();
    let mut found: Option<(i64, u32, u64)> = None;
    for &(tli, first, last) in &ranges[from_part..] {
        let first = first.max(start_seg);
        if first > last {
            continue;
        }
        let candidates = catalog.segments_committing_after(archive, tli, target, first, last, 8)?;
        if let Some(&(time, segno)) = candidates.iter().min_by_key(|(_, s)| *s) {
            // A record that starts in the segment and ends in the next (a commit with many
            // subtransactions) is read whole only with the next segment at hand.
            let manifest = catalog.segment(archive, tli, segno)?;
            let next_archived = catalog.segment(archive, tli, segno + 1)?.is_some();
            if let Some(m) = &manifest {
                unfinished(m, target, next_archived, segment_size)?;
            }
            let runs_off = manifest.as_ref().is_some_and(|m| m.runs_off);
            let end = if runs_off && segno < last && next_archived {
                segno + 1
            } else {
                segno
            };
            chain.push((tli, first, end));
            found = Some((time, tli, segno));
            break;
        }
        chain.push((tli, first, last));
    }
    let mut stop_lsn = None;
    let (found_time, found_tli, found_seg) = match (found, last_commit) {
        (Some(found), _) => found,
        // The target is the last archived transaction end: nothing later passes it, so
        // replay stops right after the last such record instead.
        (None, Some((time, tli, segno))) if time == target => {
            let (end, lsn) = last_transaction_end(catalog, archive, tli, segno, target)?;
            let Some(lsn) = lsn else {
                return Err(PlanError::AfterWindow {
                    target: target_text,
                    timeline,
                    window: Window {
                        to: Some(format!("just before {}", micros_to_rfc3339(time))),
                        ..window
                    },
                });
            };
            stop_lsn = Some(lsn);
            match chain.last_mut() {
                Some(last) if last.0 == tli => last.2 = end,
                _ => chain.push((tli, start_seg.max(segno), end)),
            }
            (time, tli, segno)
        }
        _ => {
            return Err(PlanError::AfterWindow {
                target: target_text,
                timeline,
                window,
            });
        }
    };
    let (parts, count) = prove_chain(catalog, archive, chain, backup, &target_text, segment_size)?;
    let newest = last_commit.map_or(found_time, |(t, _, _)| t);
    Ok(PitrPlan {
        archive: archive.to_string(),
        target: target_text,
        target_micros: target,
        timeline,
        backup: backup.clone(),
        chain: parts,
        segments: count,
        target_segment: SegmentName {
            timeline: found_tli,
            segno: found_seg,
        }
        .file_name(segment_size),
        target_segment_last_commit: micros_to_rfc3339(found_time),
        window,
        newer_history_seconds: (newest - target) as f64 / 1e6,
        stop_lsn,
        target_kind: time_kind(),
        target_time: micros_to_rfc3339(target),
    })
}

/// The gap proof: every stretch of the chain lies inside one run of archived segments.
/// Returns the chain as parts and its length in segments, or the gap with what can be
/// reached without crossing it.
pub(super) fn prove_chain(
    catalog: &WalCatalog,
    archive: &str,
    chain: Vec<(u32, u64, u64)>,
    backup: &BaseBackup,
    target_text: &str,
    segment_size: u64,
) -> Result<(Vec<ChainPart>, u64), PlanError> {
    let mut parts = Vec::new();
    let mut count = 0u64;
    for (tli, first, last) in chain {
        let runs = catalog.runs(archive, tli)?;
        let covering = runs.iter().find(|r| r.first <= first && first <= r.last);
        match covering {
            Some(run) if run.last >= last => {}
            _ => {
                let missing_from = covering.map_or(first, |r| r.last + 1);
                let missing_to = runs
                    .iter()
                    .find(|r| r.first > missing_from)
                    .map_or(last, |r| (r.first - 1).min(last));
                let name = |segno| {
                    SegmentName {
                        timeline: tli,
                        segno,
                    }
                    .file_name(segment_size)
                };
                let reach = catalog
                    .latest_commit(archive, tli, first, missing_from.saturating_sub(1))?
                    .map(|(t, _)| micros_to_rfc3339(t));
                return Err(PlanError::Gap {
                    first: name(missing_from),
                    last: name(missing_to),
                    backup: backup.id.clone(),
                    target: target_text.to_string(),
                    window: Box::new(Window {
                        from: Some(micros_to_rfc3339(backup.stop_time)),
                        to: reach,
                    }),
                });
            }
        }
        count += last - first + 1;
        let name = |segno| {
            SegmentName {
                timeline: tli,
                segno,
            }
            .file_name(segment_size)
        };
        parts.push(ChainPart {
            timeline: tli,
            first_segno: first,
            last_segno: last,
            first_file: name(first),
            last_file: name(last),
        });
    }
    Ok((parts, count))
}

/// The last transaction end archived on `timeline` from segment `segno` on (the segment of
/// the latest commit time; a later segment may still hold a transaction end stamped a
/// microsecond earlier): the last segment replay needs, and where that record starts
/// (`None` for manifests written before Lazarus recorded it).
fn last_transaction_end(
    catalog: &WalCatalog,
    archive: &str,
    timeline: u32,
    segno: u64,
    target: i64,
) -> Result<(u64, Option<String>), PlanError> {
    let mut last = (segno, None);
    let mut next = segno;
    while let Some(m) = catalog.segment(archive, timeline, next)? {
        if m.commits + m.aborts > 0 || next == segno {
            last = (next, Some(m));
        }
        next += 1;
    }
    let (mut end, manifest) = last;
    let Some(m) = manifest else {
        return Ok((end, None));
    };
    let next_archived = catalog.segment(archive, timeline, end + 1)?.is_some();
    unfinished(
        &m,
        target,
        next_archived,
        m.segment_size.unwrap_or(super::names::DEFAULT_SEGMENT_SIZE),
    )?;
    if m.runs_off && next_archived {
        end += 1;
    }
    Ok((end, m.last_xact_lsn.clone()))
}

/// Refuses a stop at segment `m` when the transaction end that would stop replay is the
/// record running into the next segment, and that segment is not archived.
fn unfinished(
    m: &super::archive::WalManifest,
    target: i64,
    next_archived: bool,
    segment_size: u64,
) -> Result<(), PlanError> {
    if !m.runs_off_xact || next_archived {
        return Ok(());
    }
    let complete = m
        .last_complete_xact_time
        .as_deref()
        .and_then(super::archive::rfc3339_to_micros);
    if complete.is_some_and(|c| c > target) {
        return Ok(());
    }
    let next = SegmentName {
        timeline: m.timeline,
        segno: m.segno.unwrap_or(0) + 1,
    }
    .file_name(segment_size);
    Err(PlanError::Unfinished {
        target: micros_to_rfc3339(target),
        next,
        reachable: complete.map_or_else(|| format!("the start of {}", m.file), micros_to_rfc3339),
    })
}

/// A synthetic archive for tests and benchmarks: `segments` segments on timeline 1, one
/// commit-carrying segment every `seconds_per_segment` seconds from `start` (µs), and a base
/// backup at the first segment.
pub fn synthetic_archive(
    catalog: &WalCatalog,
    archive: &str,
    segments: u64,
    start: i64,
    seconds_per_segment: i64,
) -> Result<BaseBackup, WalCatalogError> {
    use super::archive::{FileKind, WAL_MANIFEST_VERSION, WalManifest};
    let size = super::names::DEFAULT_SEGMENT_SIZE;
    for segno in 1..=segments {
        let first = start + (segno as i64 - 1) * seconds_per_segment * 1_000_000;
        let last = first + (seconds_per_segment * 1_000_000) - 1;
        let name = SegmentName { timeline: 1, segno };
        catalog.insert(&WalManifest {
            manifest_version: WAL_MANIFEST_VERSION,
            kind: FileKind::Segment,
            file: name.file_name(size),
            archive: archive.to_string(),
            timeline: 1,
            segno: Some(segno),
            segment_size: Some(size),
            start_lsn: Some(name.start(size).to_string()),
            end_lsn: Some(Lsn(name.start(size).0 + size).to_string()),
            size,
            sha256: String::new(),
            stored_size: size / 4,
            stored_sha256: String::new(),
            key_id: "k".into(),
            compression: "zstd".into(),
            first_xact_time: Some(micros_to_rfc3339(first)),
            last_xact_time: Some(micros_to_rfc3339(last)),
            last_xact_lsn: Some(Lsn(name.start(size).0 + size - 64).to_string()),
            commits: 10,
            aborts: 0,
            switched: false,
            runs_off: false,
            runs_off_xact: false,
            xid_min: None,
            xid_max: None,
            restore_points: Vec::new(),
            last_complete_xact_time: None,
            system_id: Some("1".into()),
            server_version: Some(15),
            history: Vec::new(),
            archived_at: micros_to_rfc3339(last),
        })?;
    }
    Ok(BaseBackup {
        id: "base-1".into(),
        timeline: 1,
        start_lsn: Lsn(size + 40),
        stop_lsn: Lsn(size + 4096),
        stop_time: start + 1_000_000,
        segment_size: size,
    })
}

/// The base backups of an archive, from the backup catalog, usable for PITR (not FAILED).
pub fn base_backups(manifests: &[crate::catalog::Manifest], archive: &str) -> Vec<BaseBackup> {
    manifests
        .iter()
        .filter(|m| m.status != crate::catalog::status::FAILED)
        .filter_map(|m| {
            let p = m.physical.as_ref().filter(|p| p.archive == archive)?;
            Some(BaseBackup {
                id: m.id.clone(),
                timeline: p.timeline,
                start_lsn: p.start_lsn.parse::<Lsn>().ok()?,
                stop_lsn: p.stop_lsn.parse::<Lsn>().ok()?,
                stop_time: super::archive::rfc3339_to_micros(&p.stop_time)?,
                segment_size: p.segment_size,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> WalCatalog {
        let db = sled::Config::new().temporary(true).open().unwrap();
        WalCatalog::new(db.open_tree("wal").unwrap())
    }

    const T0: i64 = 1_790_000_000_000_000;

    #[test]
    fn both_ends_of_the_printed_window_are_accepted() {
        let c = catalog();
        let backup = synthetic_archive(&c, "main", 20, T0, 60).unwrap();
        let last = T0 + 20 * 60_000_000 - 1;
        let at_end = plan_from(&c, last, &backup);
        assert_eq!(
            at_end.window.to.as_deref(),
            Some(micros_to_rfc3339(last).as_str())
        );
        assert_eq!(at_end.chain.last().unwrap().last_segno, 20);
        let size = super::super::names::DEFAULT_SEGMENT_SIZE;
        assert_eq!(
            at_end.stop_lsn,
            Some(Lsn(20 * size + size - 64).to_string()),
            "replay stops right after the last transaction end"
        );
        let first = plan_from(&c, backup.stop_time, &backup);
        assert_eq!(first.stop_lsn, None);
        assert!(matches!(
            plan(&c, "main", last + 1, TimelineChoice::Latest, &[backup]),
            Err(PlanError::AfterWindow { .. })
        ));
    }

    #[test]
    fn a_transaction_end_running_into_an_unarchived_segment_is_not_promised() {
        let c = catalog();
        let backup = synthetic_archive(&c, "main", 20, T0, 60).unwrap();
        let size = super::super::names::DEFAULT_SEGMENT_SIZE;
        // Segment 20's last record is a commit that continues into 21, not archived yet.
        let mut last = c.segment("main", 1, 20).unwrap().unwrap();
        let complete = T0 + 19 * 60_000_000 + 30_000_000;
        last.runs_off = true;
        last.runs_off_xact = true;
        last.last_complete_xact_time = Some(micros_to_rfc3339(complete));
        c.insert(&last).unwrap();
        // Before the last complete commit: an earlier record of segment 20 stops replay.
        let fine = plan_from(&c, complete - 1, &backup);
        assert_eq!(fine.chain.last().unwrap().last_segno, 20);
        // After it, only the unfinished record would: refused, naming segment 21.
        let err = plan(
            &c,
            "main",
            complete + 1,
            TimelineChoice::Latest,
            std::slice::from_ref(&backup),
        )
        .unwrap_err()
        .to_string();
        let next = SegmentName {
            timeline: 1,
            segno: 21,
        }
        .file_name(size);
        assert!(
            err.contains(&next) && err.contains("not archived yet"),
            "{err}"
        );
        let at_end = plan(
            &c,
            "main",
            T0 + 20 * 60_000_000 - 1,
            TimelineChoice::Latest,
            &[backup],
        );
        assert!(
            matches!(at_end, Err(PlanError::Unfinished { .. })),
            "{at_end:?}"
        );
    }

    fn plan_from(c: &WalCatalog, target: i64, backup: &BaseBackup) -> PitrPlan {
        plan(
            c,
            "main",
            target,
            TimelineChoice::Latest,
            std::slice::from_ref(backup),
        )
        .unwrap()
    }

    #[test]
    fn plans_the_chain_to_the_segment_that_passes_the_target() {
        let c = catalog();
        let backup = synthetic_archive(&c, "main", 100, T0, 60).unwrap();
        // 10.5 minutes in: segment 11's commits pass it.
        let target = T0 + 630 * 1_000_000;
        let plan = plan(&c, "main", target, TimelineChoice::Latest, &[backup]).unwrap();
        assert_eq!(plan.timeline, 1);
        assert_eq!(plan.chain.len(), 1);
        assert_eq!(plan.chain[0].first_segno, 1);
        assert_eq!(plan.chain[0].last_segno, 11);
        assert_eq!(plan.segments, 11);
        assert_eq!(plan.target_segment, "00000001000000000000000B");
    }

    #[test]
    fn refuses_targets_outside_the_window_and_names_it() {
        let c = catalog();
        let backup = synthetic_archive(&c, "main", 10, T0, 60).unwrap();
        let early = plan(
            &c,
            "main",
            T0 - 1,
            TimelineChoice::Latest,
            std::slice::from_ref(&backup),
        )
        .unwrap_err()
        .to_string();
        assert!(early.contains("before the oldest base backup"), "{early}");
        assert!(
            early.contains(&micros_to_rfc3339(T0 + 1_000_000)),
            "{early}"
        );
        let late = plan(
            &c,
            "main",
            T0 + 3600 * 1_000_000,
            TimelineChoice::Latest,
            &[backup],
        )
        .unwrap_err()
        .to_string();
        assert!(late.contains("after the last archived commit"), "{late}");
        assert!(
            late.contains(&micros_to_rfc3339(T0 + 600 * 1_000_000 - 1)),
            "{late}"
        );
    }

    #[test]
    fn refuses_a_chain_with_a_gap_and_names_the_missing_segments() {
        let c = catalog();
        let backup = synthetic_archive(&c, "main", 10, T0, 60).unwrap();
        // Rebuild without segments 4 and 5.
        let kept: Vec<_> = c
            .list("main")
            .unwrap()
            .into_iter()
            .filter(|m| !matches!(m.segno, Some(4) | Some(5)))
            .collect();
        let c2 = catalog();
        for m in &kept {
            c2.insert(m).unwrap();
        }
        let err = plan(
            &c2,
            "main",
            T0 + 500 * 1_000_000,
            TimelineChoice::Latest,
            std::slice::from_ref(&backup),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("000000010000000000000004 to 000000010000000000000005"),
            "{err}"
        );
        // Before the gap is fine.
        assert!(
            plan(
                &c2,
                "main",
                T0 + 100 * 1_000_000,
                TimelineChoice::Latest,
                &[backup]
            )
            .is_ok()
        );
    }

    #[test]
    fn follows_the_timeline_history() {
        use crate::wal::archive::{FileKind, WAL_MANIFEST_VERSION, WalManifest};
        use crate::wal::names::HistoryEntry;
        let c = catalog();
        let backup = synthetic_archive(&c, "main", 10, T0, 60).unwrap();
        // Timeline 2 branched at segment 6; its segments 6.. carry later commits.
        let size = crate::wal::names::DEFAULT_SEGMENT_SIZE;
        let mut history = c.list("main").unwrap()[0].clone();
        history.kind = FileKind::History;
        history.file = "00000002.history".into();
        history.timeline = 2;
        history.segno = None;
        history.history = vec![HistoryEntry {
            parent: 1,
            switch: Lsn(6 * size + 100),
            reason: "x".into(),
        }];
        c.insert(&history).unwrap();
        for segno in 6..=8u64 {
            let mut m: WalManifest = c.segment("main", 1, segno).unwrap().unwrap();
            m.timeline = 2;
            m.file = SegmentName { timeline: 2, segno }.file_name(size);
            let base = T0 + 7200 * 1_000_000 + segno as i64 * 60_000_000;
            m.first_xact_time = Some(micros_to_rfc3339(base));
            m.last_xact_time = Some(micros_to_rfc3339(base + 59_000_000));
            m.manifest_version = WAL_MANIFEST_VERSION;
            c.insert(&m).unwrap();
        }
        let target = T0 + 7200 * 1_000_000 + 7 * 60_000_000 + 30_000_000;
        let p = plan(
            &c,
            "main",
            target,
            TimelineChoice::Latest,
            std::slice::from_ref(&backup),
        )
        .unwrap();
        assert_eq!(p.timeline, 2);
        assert_eq!(p.chain.len(), 2);
        assert_eq!(
            (
                p.chain[0].timeline,
                p.chain[0].first_segno,
                p.chain[0].last_segno
            ),
            (1, 1, 5)
        );
        assert_eq!(
            (
                p.chain[1].timeline,
                p.chain[1].first_segno,
                p.chain[1].last_segno
            ),
            (2, 6, 7)
        );
        // Timeline 1's abandoned commits after the switch do not count on timeline 2 ...
        let abandoned = T0 + 8 * 60 * 1_000_000;
        let p = plan(
            &c,
            "main",
            abandoned,
            TimelineChoice::Latest,
            std::slice::from_ref(&backup),
        )
        .unwrap();
        assert_eq!(p.chain.last().unwrap().timeline, 2);
        // ... but can be reached by asking for timeline 1.
        let p = plan(&c, "main", abandoned, TimelineChoice::Exactly(1), &[backup]).unwrap();
        assert_eq!(
            p.chain,
            vec![ChainPart {
                timeline: 1,
                first_segno: 1,
                last_segno: 9,
                first_file: "000000010000000000000001".into(),
                last_file: "000000010000000000000009".into(),
            }]
        );
    }

    #[test]
    fn latest_passes_over_an_abandoned_timeline_but_not_a_reused_number_or_a_descendant() {
        use crate::wal::abandoned::Abandoned;
        use crate::wal::archive::FileKind;
        use crate::wal::names::HistoryEntry;
        let c = catalog();
        let backup = synthetic_archive(&c, "main", 10, T0, 60).unwrap();
        let size = crate::wal::names::DEFAULT_SEGMENT_SIZE;
        let add_history = |timeline: u32, history: Vec<HistoryEntry>| {
            let mut m = c.list("main").unwrap()[0].clone();
            m.kind = FileKind::History;
            m.file = format!("{timeline:08X}.history");
            m.timeline = timeline;
            m.segno = None;
            m.history = history;
            c.insert(&m).unwrap();
        };
        let branch = |parent: u32, segno: u64| HistoryEntry {
            parent,
            switch: Lsn(segno * size + 100),
            reason: "restored for inspection".into(),
        };
        // A cut-over to a restored server wrote timeline 2; the rollback abandoned it.
        add_history(2, vec![branch(1, 6)]);
        assert_eq!(c.latest_timeline("main").unwrap(), Some(2));
        let record = Abandoned {
            timeline: 2,
            at: "2026-12-08T00:00:00Z".into(),
            reason: "run r rolled back".into(),
            history: vec![branch(1, 6)],
        };
        c.mark_abandoned("main", &record).unwrap();
        assert_eq!(c.latest_timeline("main").unwrap(), Some(1));
        // A target after the branch point plans along timeline 1, the live primary's.
        let late = T0 + 9 * 60_000_000;
        let p = plan(
            &c,
            "main",
            late,
            TimelineChoice::Latest,
            std::slice::from_ref(&backup),
        )
        .unwrap();
        assert_eq!(p.timeline, 1);
        assert_eq!(p.chain.last().unwrap().timeline, 1);
        // --timeline 2 still names it (up to its own archived end: the branch point here).
        assert_eq!(
            plan(
                &c,
                "main",
                T0 + 3 * 60_000_000,
                TimelineChoice::Exactly(2),
                std::slice::from_ref(&backup)
            )
            .unwrap()
            .timeline,
            2
        );
        // A descendant of the abandoned timeline (traffic was cut over again) is followed.
        add_history(3, vec![branch(1, 6), branch(2, 7)]);
        assert_eq!(c.latest_timeline("main").unwrap(), Some(3));
        // A later server reusing number 2 with another history is not passed over.
        let c2 = catalog();
        synthetic_archive(&c2, "main", 10, T0, 60).unwrap();
        let mut m = c2.list("main").unwrap()[0].clone();
        m.kind = FileKind::History;
        m.file = "00000002.history".into();
        m.timeline = 2;
        m.segno = None;
        m.history = vec![branch(1, 8)];
        c2.insert(&m).unwrap();
        c2.mark_abandoned("main", &record).unwrap();
        assert_eq!(c2.latest_timeline("main").unwrap(), Some(2));
        assert_eq!(c2.abandoned("main").unwrap(), vec![record]);
    }
}
