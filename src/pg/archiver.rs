//! Watching the server's WAL archiver while something waits on it.
//!
//! `pg_basebackup -X none` ends by waiting until the server has archived the last segment
//! the backup needs. With `archive_command` failing (a full store, a permission, a typo) it
//! waits forever and says nothing. pgBackRest checks the archive before trusting a backup;
//! here the wait is watched: when the archiver keeps failing and archives nothing for a
//! while, the wait is given up with what `pg_stat_archiver` says.

use std::time::{Duration, Instant};

use super::sql::Sql;

/// One reading of `pg_stat_archiver`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiverStats {
    /// Segments archived since the statistics were reset.
    pub archived_count: u64,
    /// Failed attempts since the statistics were reset.
    pub failed_count: u64,
    /// The segment the last failure was for.
    pub last_failed_wal: String,
    /// When the last failure happened.
    pub last_failed_time: String,
}

impl ArchiverStats {
    /// Reads the server's archiver statistics.
    pub fn read(sql: &Sql<'_>) -> Result<ArchiverStats, super::PgError> {
        let row = sql
            .query(
                "postgres",
                "SELECT archived_count, failed_count, coalesce(last_failed_wal, ''), coalesce(last_failed_time::text, '') FROM pg_stat_archiver",
            )?
            .into_iter()
            .next()
            .unwrap_or_default();
        let field = |i: usize| row.get(i).cloned().unwrap_or_default();
        Ok(ArchiverStats {
            archived_count: field(0).parse().unwrap_or(0),
            failed_count: field(1).parse().unwrap_or(0),
            last_failed_wal: field(2),
            last_failed_time: field(3),
        })
    }
}

/// Decides, from successive readings, when an archiver has been failing for too long.
#[derive(Debug)]
pub struct ArchiverWatch {
    patience: Duration,
    baseline: Option<ArchiverStats>,
    failing_since: Option<Instant>,
}

impl ArchiverWatch {
    /// A watch that gives up after `patience` of failures with nothing archived.
    pub fn new(patience: Duration) -> Self {
        Self {
            patience,
            baseline: None,
            failing_since: None,
        }
    }

    /// Takes a reading at `now`; the reason to give up, once the archiver has failed and
    /// archived nothing for the whole patience.
    pub fn observe(&mut self, stats: ArchiverStats, now: Instant) -> Option<String> {
        let Some(base) = &self.baseline else {
            self.baseline = Some(stats);
            return None;
        };
        if stats.archived_count > base.archived_count || stats.failed_count == base.failed_count {
            // Progress, or no failure: whatever waits is waiting on a slow archiver.
            self.baseline = Some(stats);
            self.failing_since = None;
            return None;
        }
        let since = *self.failing_since.get_or_insert(now);
        if now.duration_since(since) < self.patience {
            return None;
        }
        Some(format!(
            "WAL archiving is failing on the server: its archiver failed {} times in {}s and archived nothing (last failure: segment {} at {}), so the backup's WAL never reaches the archive. \
             Fix archive_command (the server's log says why each attempt fails), check with `SELECT * FROM pg_stat_archiver`, then run the base backup again",
            stats.failed_count - base.failed_count,
            now.duration_since(since).as_secs(),
            if stats.last_failed_wal.is_empty() {
                "?"
            } else {
                &stats.last_failed_wal
            },
            if stats.last_failed_time.is_empty() {
                "?"
            } else {
                &stats.last_failed_time
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(archived: u64, failed: u64) -> ArchiverStats {
        ArchiverStats {
            archived_count: archived,
            failed_count: failed,
            last_failed_wal: "000000010000000000000003".into(),
            last_failed_time: "2026-12-04 10:00:00+00".into(),
        }
    }

    #[test]
    fn an_archiver_that_keeps_failing_is_given_up_on_after_the_patience() {
        let t0 = Instant::now();
        let mut watch = ArchiverWatch::new(Duration::from_secs(30));
        assert_eq!(watch.observe(stats(5, 0), t0), None);
        assert_eq!(
            watch.observe(stats(5, 2), t0 + Duration::from_secs(5)),
            None
        );
        assert_eq!(
            watch.observe(stats(5, 4), t0 + Duration::from_secs(20)),
            None
        );
        let why = watch
            .observe(stats(5, 9), t0 + Duration::from_secs(40))
            .unwrap();
        assert!(why.contains("000000010000000000000003"), "{why}");
        assert!(why.contains("failed 9 times"), "{why}");
    }

    #[test]
    fn a_slow_or_recovering_archiver_is_waited_for() {
        let t0 = Instant::now();
        let mut watch = ArchiverWatch::new(Duration::from_secs(30));
        watch.observe(stats(5, 0), t0);
        assert_eq!(
            watch.observe(stats(5, 3), t0 + Duration::from_secs(10)),
            None
        );
        // One segment got through: the clock starts again.
        assert_eq!(
            watch.observe(stats(6, 4), t0 + Duration::from_secs(50)),
            None
        );
        assert_eq!(
            watch.observe(stats(6, 4), t0 + Duration::from_secs(200)),
            None
        );
    }
}
