//! Point-in-time recovery's foundations: WAL names and positions, Lazarus's own WAL reader,
//! the archive (push and fetch), the segment catalog and PITR planning.

pub mod abandoned;
pub mod ahead;
pub mod archive;
pub mod catalog;
pub mod check;
pub mod names;
pub mod plan;
pub mod presence;
pub mod reader;
pub mod restore_config;
pub mod targets;

pub use names::{Lsn, SegmentName, WalFile};

/// The archive name when none is given: one archive per cluster.
pub const DEFAULT_ARCHIVE: &str = "main";

/// A WAL problem, phrased for the person who has to act on it.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A file or position name that is not what PostgreSQL writes.
    #[error("{0}")]
    BadName(String),
    /// A timeline history file that does not parse.
    #[error("timeline history file does not parse: {0}")]
    BadHistory(String),
    /// The bytes are not a WAL segment.
    #[error("not a WAL segment: {0}")]
    NotWal(String),
    /// A WAL page magic this build does not know.
    #[error(
        "WAL page magic {0:#06X} is not a format this build reads (PostgreSQL 15, 16, 17 and \
         18 write 0xD110, 0xD113, 0xD116 and 0xD118): nothing was archived, and PostgreSQL \
         keeps the segment in pg_wal and retries; use a Lazarus release that supports this \
         server, or archive with another tool meanwhile"
    )]
    UnknownMagic(u16),
}

/// Parses a recovery target: RFC 3339 (`2026-11-24T02:14:00Z`) or PostgreSQL's timestamptz
/// text (`2026-11-24 02:14:00.123+00`); without a zone, UTC. Returns microseconds since the
/// Unix epoch.
pub fn parse_target_time(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_micros());
    }
    let spaced = match text.get(10..11) {
        Some("T") | Some("t") => format!("{} {}", &text[..10], &text[11..]),
        _ => text.to_string(),
    };
    let zoned = spaced
        .strip_suffix(" UTC")
        .map(|s| format!("{s}+00"))
        .unwrap_or(spaced);
    for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%#z"] {
        if let Ok(t) = chrono::DateTime::parse_from_str(&zoned, format) {
            return Ok(t.timestamp_micros());
        }
    }
    for format in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(&zoned, format) {
            return Ok(t.and_utc().timestamp_micros());
        }
    }
    Err(format!(
        "{text:?} is not a time: use RFC 3339 (2026-11-24T02:14:00Z) or PostgreSQL's form \
         (2026-11-24 02:14:00+00); a time without a zone is UTC"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_times_in_both_notations_agree() {
        let a = parse_target_time("2026-11-24T02:14:00Z").unwrap();
        assert_eq!(parse_target_time("2026-11-24 02:14:00+00").unwrap(), a);
        assert_eq!(parse_target_time("2026-11-24 04:14:00+02:00").unwrap(), a);
        assert_eq!(parse_target_time("2026-11-24 02:14:00 UTC").unwrap(), a);
        assert_eq!(parse_target_time("2026-11-24 02:14:00").unwrap(), a);
        assert_eq!(
            parse_target_time("2026-11-24 02:14:00.25+00").unwrap(),
            a + 250_000
        );
        assert!(parse_target_time("yesterday").is_err());
    }
}
