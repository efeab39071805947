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
    /// The newest timeline in the archive (PostgreSQL's `latest`).
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
struct PathPart {
    timeline: u32,
    begin: Lsn,
    end: Option<Lsn>,
}

fn timeline_path(
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

/// Plans a recovery of `archive` to `target` (microseconds since the Unix epoch).
pub fn plan(
    catalog: &WalCatalog,
    archive: &str,
    target: i64,
    timeline: TimelineChoice,
    backups: &[BaseBackup],
) -> Result<PitrPlan, PlanError> {
    let target_text = micros_to_rfc3339(target);
    let timeline = match timeline {
        TimelineChoice::Exactly(t) => t,
        TimelineChoice::Latest => *catalog
            .timelines(archive)?
            .last()
            .ok_or_else(|| PlanError::Empty(archive.to_string()))?,
    };
    let path = timeline_path(catalog, archive, timeline)?;
    let segment_size = backups
        .first()
        .map(|b| b.segment_size)
        .unwrap_or(super::names::DEFAULT_SEGMENT_SIZE);
    let seg = |lsn: Lsn| lsn.segno(segment_size);
    // Segment ranges per path part: the segment holding a switch point is read from the
    // newer timeline, as PostgreSQL does.
    let ranges: Vec<(u32, u64, u64)> = path
        .iter()
        .map(|p| {
            let first = seg(p.begin);
            let last = match p.end {
                Some(end) => seg(end).saturating_sub(1),
                None => u64::MAX,
            };
            (p.timeline, first, last)
        })
        .collect();
    // Base backups on this path (started within their timeline's stretch of it).
    let mut usable: Vec<&BaseBackup> = backups
        .iter()
        .filter(|b| {
            path.iter().any(|p| {
                p.timeline == b.timeline
                    && b.start_lsn >= p.begin
                    && p.end.is_none_or(|end| b.stop_lsn <= end)
            })
        })
        .collect();
    usable.sort_by_key(|b| (b.stop_time, b.stop_lsn));
    let mut last_commit: Option<(i64, u32, u64)> = None;
    for &(tli, first, last) in ranges.iter().rev() {
        if let Some((time, segno)) = catalog.latest_commit(archive, tli, first, last)? {
            last_commit = Some((time, tli, segno));
            break;
        }
    }
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
    if last_commit.is_none_or(|(t, _, _)| t <= target) {
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
            chain.push((tli, first, segno));
            found = Some((time, tli, segno));
            break;
        }
        chain.push((tli, first, last));
    }
    let Some((found_time, found_tli, found_seg)) = found else {
        return Err(PlanError::AfterWindow {
            target: target_text,
            timeline,
            window,
        });
    };
    // The gap proof: every stretch lies inside one run of archived segments.
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
                    target: target_text,
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
    })
}
