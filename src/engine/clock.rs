//! Journal time: microseconds since the Unix epoch, shown to people as RFC 3339 UTC.

use chrono::{DateTime, SecondsFormat, Utc};

/// Now, in microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

/// RFC 3339 text (UTC, millisecond precision) for a journal time.
pub fn rfc3339(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("@{us}us"))
}

/// Seconds between two journal times.
pub fn seconds_between(from_us: i64, to_us: i64) -> f64 {
    (to_us - from_us) as f64 / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_millis() {
        assert_eq!(rfc3339(1_700_000_000_123_456), "2023-11-14T22:13:20.123Z");
        assert_eq!(seconds_between(1_000_000, 3_500_000), 2.5);
    }
}
