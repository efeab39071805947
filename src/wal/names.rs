//! WAL positions and file names: LSNs (`16/B374D848`), segment names
//! (`000000010000001600000003`), `.history` and `.backup` names, and timeline history files.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::WalError;

/// The default WAL segment size (16 MiB); clusters can be initialised with others.
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 << 20;

/// A position in the WAL (a byte offset in the cluster's WAL stream).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = WalError;

    fn from_str(text: &str) -> Result<Lsn, WalError> {
        let bad = || WalError::BadName(format!("{text:?} is not an LSN (like 16/B374D848)"));
        let (high, low) = text.trim().split_once('/').ok_or_else(bad)?;
        let high = u32::from_str_radix(high, 16).map_err(|_| bad())?;
        let low = u32::from_str_radix(low, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(high) << 32) | u64::from(low)))
    }
}

impl Lsn {
    /// The segment holding this position.
    pub fn segno(self, segment_size: u64) -> u64 {
        self.0 / segment_size
    }
}

/// One WAL segment file: timeline and segment number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SegmentName {
    /// Timeline.
    pub timeline: u32,
    /// Segment number (LSN / segment size).
    pub segno: u64,
}

impl SegmentName {
    /// The 24-hex-digit file name PostgreSQL uses.
    pub fn file_name(&self, segment_size: u64) -> String {
        let per_id = 0x1_0000_0000 / segment_size;
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.segno / per_id,
            self.segno % per_id
        )
    }

    /// Parses a segment file name (`.partial` not included).
    pub fn parse(name: &str, segment_size: u64) -> Result<SegmentName, WalError> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(WalError::BadName(format!(
                "{name:?} is not a WAL segment name (24 hex digits)"
            )));
        }
        let field = |range: std::ops::Range<usize>| u32::from_str_radix(&name[range], 16);
        let (Ok(timeline), Ok(log), Ok(seg)) = (field(0..8), field(8..16), field(16..24)) else {
            return Err(WalError::BadName(format!(
                "{name:?} is not a WAL segment name"
            )));
        };
        let per_id = 0x1_0000_0000 / segment_size;
        if u64::from(seg) >= per_id {
            return Err(WalError::BadName(format!(
                "{name:?}: segment {seg:X} does not exist with {} MiB segments",
                segment_size >> 20
            )));
        }
        Ok(SegmentName {
            timeline,
            segno: u64::from(log) * per_id + u64::from(seg),
        })
    }

    /// The first position in the segment.
    pub fn start(&self, segment_size: u64) -> Lsn {
        Lsn(self.segno * segment_size)
    }
}

/// What kind of file PostgreSQL hands to `archive_command` / asks of `restore_command`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalFile {
    /// A WAL segment.
    Segment(SegmentName),
    /// A partial segment left at a timeline switch (`….partial`).
    Partial(SegmentName),
    /// A timeline history file (`00000002.history`).
    History(u32),
    /// A backup history file (`…​.00000028.backup`).
    BackupLabel(String),
}

impl WalFile {
    /// Classifies a file name; anything else is refused.
    pub fn parse(name: &str, segment_size: u64) -> Result<WalFile, WalError> {
        if let Some(tli) = name.strip_suffix(".history")
            && tli.len() == 8
            && let Ok(tli) = u32::from_str_radix(tli, 16)
        {
            return Ok(WalFile::History(tli));
        }
        if let Some(segment) = name.strip_suffix(".partial") {
            return Ok(WalFile::Partial(SegmentName::parse(segment, segment_size)?));
        }
        if let Some(stem) = name.strip_suffix(".backup")
            && stem.len() == 33
            && SegmentName::parse(&stem[..24], segment_size).is_ok()
        {
            return Ok(WalFile::BackupLabel(name.to_string()));
        }
        if name.len() == 24 {
            return Ok(WalFile::Segment(SegmentName::parse(name, segment_size)?));
        }
        Err(WalError::BadName(format!(
            "{name:?} is not a WAL segment, .partial, .history or .backup file name"
        )))
    }
}

/// The name of timeline `tli`'s history file.
pub fn history_file_name(tli: u32) -> String {
    format!("{tli:08X}.history")
}

/// One line of a timeline history file: `parent` ended at `switch` and the next timeline began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The parent timeline.
    pub parent: u32,
    /// Where the child timeline branched off the parent.
    pub switch: Lsn,
    /// PostgreSQL's reason text.
    pub reason: String,
}

/// Parses a `.history` file's text: ancestors, oldest first.
pub fn parse_history(text: &str) -> Result<Vec<HistoryEntry>, WalError> {
    let mut entries = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.splitn(3, char::is_whitespace);
        let bad = || WalError::BadHistory(format!("line {}: {line:?}", number + 1));
        let parent = fields
            .next()
            .and_then(|t| t.parse::<u32>().ok())
            .ok_or_else(bad)?;
        let switch = fields
            .next()
            .ok_or_else(bad)?
            .parse::<Lsn>()
            .map_err(|_| bad())?;
        let reason = fields.next().unwrap_or("").trim().to_string();
        if let Some(last) = entries.last() {
            let last: &HistoryEntry = last;
            if parent <= last.parent || switch < last.switch {
                return Err(WalError::BadHistory(format!(
                    "line {}: timelines and switch points must increase",
                    number + 1
                )));
            }
        }
        entries.push(HistoryEntry {
            parent,
            switch,
            reason,
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_through_text() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert!("16B374D848".parse::<Lsn>().is_err());
    }

    #[test]
    fn segment_names_round_trip() {
        let size = DEFAULT_SEGMENT_SIZE;
        let name = SegmentName::parse("000000020000001600000003", size).unwrap();
        assert_eq!(name.timeline, 2);
        assert_eq!(name.segno, 0x16 * 256 + 3);
        assert_eq!(name.file_name(size), "000000020000001600000003");
        assert_eq!(name.start(size), "16/3000000".parse().unwrap());
        assert!(SegmentName::parse("000000020000001600000100", size).is_err());
        assert!(SegmentName::parse("00000002000000160000000G", size).is_err());
    }

    #[test]
    fn classifies_archive_file_names() {
        let size = DEFAULT_SEGMENT_SIZE;
        assert_eq!(
            WalFile::parse("00000003.history", size).unwrap(),
            WalFile::History(3)
        );
        assert!(matches!(
            WalFile::parse("000000010000000000000002.partial", size).unwrap(),
            WalFile::Partial(_)
        ));
        assert!(matches!(
            WalFile::parse("000000010000000000000002.00000028.backup", size).unwrap(),
            WalFile::BackupLabel(_)
        ));
        assert!(WalFile::parse("../etc/passwd", size).is_err());
    }

    #[test]
    fn reads_timeline_history() {
        let text = "1\t0/3000158\tbefore 2026-11-24 10:00:00+00\n\n2\t0/5000000\tno recovery target specified\n";
        let entries = parse_history(text).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].parent, 2);
        assert_eq!(entries[1].switch, Lsn(0x500_0000));
        assert!(parse_history("2\t0/5000000\tx\n1\t0/3000000\ty\n").is_err());
        assert!(parse_history("one\t0/5000000\tx\n").is_err());
    }
}
