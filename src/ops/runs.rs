//! Finding runs: by status, workflow, target and time, a page at a time, newest first.

use serde::{Deserialize, Serialize};

use crate::engine::RunSummary;

/// The largest page a caller may ask for.
pub const MAX_PAGE: usize = 500;

/// Which runs to show.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunFilter {
    /// Only runs in this status (`running`, `halted`, `succeeded`, …); several separated
    /// by commas.
    pub status: Option<String>,
    /// Only runs of this workflow.
    pub workflow: Option<String>,
    /// Only runs on this target (`database:shop`).
    pub target: Option<String>,
    /// Only runs started at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Only runs started before this time (RFC 3339).
    pub until: Option<String>,
    /// Runs per page (default 50, at most [`MAX_PAGE`]).
    pub limit: Option<usize>,
    /// Runs to skip (what the previous page's `next_offset` said).
    pub offset: Option<usize>,
}

/// One page of runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunPage {
    /// The runs, newest first.
    pub runs: Vec<RunSummary>,
    /// Runs matching the filter, on every page.
    pub total: usize,
    /// The `offset` of the next page, when there is one.
    pub next_offset: Option<usize>,
}

/// A filter that cannot be applied.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

fn instant(field: &str, value: &str) -> Result<chrono::DateTime<chrono::Utc>, FilterError> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| {
            FilterError(format!(
                "{field} {value:?} is not an RFC 3339 time ({e}); write it like 2026-11-24T02:14:00Z"
            ))
        })
}

/// Applies `filter` to every run.
pub fn page(mut runs: Vec<RunSummary>, filter: &RunFilter) -> Result<RunPage, FilterError> {
    let since = filter
        .since
        .as_deref()
        .map(|v| instant("since", v))
        .transpose()?;
    let until = filter
        .until
        .as_deref()
        .map(|v| instant("until", v))
        .transpose()?;
    let statuses: Option<Vec<&str>> = filter.status.as_deref().map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    });
    runs.retain(|run| {
        let started = chrono::DateTime::parse_from_rfc3339(&run.started_at)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc));
        statuses
            .as_ref()
            .is_none_or(|s| s.contains(&run.status.as_str()))
            && filter.workflow.as_ref().is_none_or(|w| *w == run.workflow)
            && filter
                .target
                .as_ref()
                .is_none_or(|t| run.target.as_ref() == Some(t))
            && since.is_none_or(|s| started.is_some_and(|t| t >= s))
            && until.is_none_or(|u| started.is_some_and(|t| t < u))
    });
    runs.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(b.id.cmp(&a.id)));
    let total = runs.len();
    let offset = filter.offset.unwrap_or(0).min(total);
    let limit = filter.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    let runs: Vec<RunSummary> = runs.into_iter().skip(offset).take(limit).collect();
    let next_offset = Some(offset + runs.len()).filter(|n| *n < total);
    Ok(RunPage {
        runs,
        total,
        next_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, workflow: &str, status: &str, started: &str) -> RunSummary {
        RunSummary {
            id: id.into(),
            workflow: workflow.into(),
            status: status.into(),
            active: false,
            target: Some(format!("database:{id}")),
            started_at: started.into(),
            operator: "o".into(),
            reason: "r".into(),
            ended_at: None,
            duration_seconds: 0.0,
            error: None,
        }
    }

    fn runs() -> Vec<RunSummary> {
        vec![
            run("a", "backup", "succeeded", "2026-11-01T00:00:00Z"),
            run("b", "drill", "failed", "2026-11-02T00:00:00Z"),
            run("c", "backup", "halted", "2026-11-03T00:00:00Z"),
            run("d", "backup", "succeeded", "2026-11-04T00:00:00Z"),
        ]
    }

    #[test]
    fn filters_by_status_workflow_target_and_time_newest_first() {
        let ids = |p: RunPage| p.runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
        let all = page(runs(), &RunFilter::default()).unwrap();
        assert_eq!(ids(all), ["d", "c", "b", "a"]);
        let f = RunFilter {
            workflow: Some("backup".into()),
            status: Some("succeeded,halted".into()),
            since: Some("2026-11-02T00:00:00Z".into()),
            ..Default::default()
        };
        assert_eq!(ids(page(runs(), &f).unwrap()), ["d", "c"]);
        let f = RunFilter {
            target: Some("database:b".into()),
            ..Default::default()
        };
        assert_eq!(ids(page(runs(), &f).unwrap()), ["b"]);
    }

    #[test]
    fn pages_say_where_the_next_one_starts() {
        let f = RunFilter {
            limit: Some(3),
            ..Default::default()
        };
        let first = page(runs(), &f).unwrap();
        assert_eq!(
            (first.total, first.next_offset, first.runs.len()),
            (4, Some(3), 3)
        );
        let rest = page(
            runs(),
            &RunFilter {
                offset: first.next_offset,
                ..f
            },
        )
        .unwrap();
        assert_eq!((rest.runs.len(), rest.next_offset), (1, None));
    }

    #[test]
    fn a_bad_time_is_refused_with_an_example() {
        let f = RunFilter {
            since: Some("yesterday".into()),
            ..Default::default()
        };
        assert!(
            page(runs(), &f)
                .unwrap_err()
                .0
                .contains("2026-11-24T02:14:00Z")
        );
    }
}
