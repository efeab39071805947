//! What `/metrics` says, in the Prometheus text format: runs by workflow and status, step
//! durations, the age of the newest backup and of the newest VERIFIED drill per database
//! with the drill's RTO, WAL archive lag against the RPO target, bytes downloaded and
//! restored, the audit mirror's lag, and alert deliveries that failed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::Operations;
use crate::catalog::status;

/// The RPO target the archive lag is measured against when none is configured.
pub const DEFAULT_RPO_SECONDS: f64 = 900.0;

/// Escapes a label value.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric family being written.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Self { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        let labels = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", labels.join(","))
        };
        let _ = writeln!(self.out, "{name}{labels} {value}");
    }
}

/// The whole exposition.
pub async fn render(ops: &Operations, alert_failures: u64) -> String {
    let mut out = String::new();
    let now = chrono::Utc::now();
    let runs = ops.runs().unwrap_or_default();

    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    for run in &runs {
        *counts
            .entry((run.workflow.clone(), run.status.clone()))
            .or_default() += 1;
    }
    let mut f = Family::new(
        &mut out,
        "lazarus_runs",
        "gauge",
        "Runs by workflow and status.",
    );
    for ((workflow, state), n) in &counts {
        f.sample(
            "lazarus_runs",
            &[("workflow", workflow), ("status", state)],
            *n as f64,
        );
    }

    let mut durations: BTreeMap<(String, String), (f64, u64)> = BTreeMap::new();
    let (mut downloaded, mut restored) = (0u64, 0u64);
    for run in &runs {
        let Ok(report) = ops.report(Some(&run.id)) else {
            continue;
        };
        for step in &report.steps {
            if let Some(seconds) = step.duration_seconds.filter(|_| step.status == "completed") {
                let entry = durations
                    .entry((report.workflow.clone(), step.id.clone()))
                    .or_default();
                entry.0 += seconds;
                entry.1 += 1;
            }
            let size = step
                .output
                .as_ref()
                .and_then(|o| o["size"].as_u64())
                .unwrap_or(0);
            match step.activity.as_str() {
                "download" => downloaded += size,
                "decrypt" => restored += size,
                _ => {}
            }
        }
    }
    let mut f = Family::new(
        &mut out,
        "lazarus_step_duration_seconds",
        "summary",
        "Durations of completed steps, by workflow and step.",
    );
    for ((workflow, step), (sum, count)) in &durations {
        let labels = [("workflow", workflow.as_str()), ("step", step.as_str())];
        f.sample("lazarus_step_duration_seconds_sum", &labels, *sum);
        f.sample(
            "lazarus_step_duration_seconds_count",
            &labels,
            *count as f64,
        );
    }
    let mut f = Family::new(
        &mut out,
        "lazarus_downloaded_bytes",
        "gauge",
        "Bytes downloaded by the runs in the journal.",
    );
    f.sample("lazarus_downloaded_bytes", &[], downloaded as f64);
    let mut f = Family::new(
        &mut out,
        "lazarus_restored_bytes",
        "gauge",
        "Plaintext bytes of the archives the runs in the journal decrypted for restoring.",
    );
    f.sample("lazarus_restored_bytes", &[], restored as f64);

    let backups = ops.backups(None).await.unwrap_or_default();
    let newest = crate::catalog::newest_age_per_database(&backups, now);
    let mut verified: BTreeMap<&str, (f64, Option<f64>)> = BTreeMap::new();
    for m in &backups {
        let Some(age) = m.age_seconds(now) else {
            continue;
        };
        if m.status == status::VERIFIED {
            let rto = m.verification.as_ref().and_then(|v| v.restore_seconds);
            let slot = verified.entry(&m.database).or_insert((f64::INFINITY, None));
            if age < slot.0 {
                *slot = (age, rto);
            }
        }
    }
    let mut f = Family::new(
        &mut out,
        "lazarus_backup_newest_age_seconds",
        "gauge",
        "Age of the newest backup, per database.",
    );
    for (database, age) in &newest {
        f.sample(
            "lazarus_backup_newest_age_seconds",
            &[("database", database)],
            *age,
        );
    }
    let mut f = Family::new(
        &mut out,
        "lazarus_backup_verified_age_seconds",
        "gauge",
        "Age of the newest backup a drill VERIFIED, per database.",
    );
    for (database, (age, _)) in &verified {
        f.sample(
            "lazarus_backup_verified_age_seconds",
            &[("database", database)],
            *age,
        );
    }
    let mut f = Family::new(
        &mut out,
        "lazarus_drill_rto_seconds",
        "gauge",
        "Restore time the newest VERIFIED backup's drill measured, per database.",
    );
    for (database, (_, rto)) in &verified {
        if let Some(rto) = rto {
            f.sample("lazarus_drill_rto_seconds", &[("database", database)], *rto);
        }
    }

    let archive = crate::wal::DEFAULT_ARCHIVE;
    // The tightest RPO an alert watches, else the CLI's default.
    let rpo = ops
        .alerts()
        .hooks()
        .iter()
        .filter_map(|h| h.rpo)
        .map(|d| d.as_secs_f64())
        .reduce(f64::min)
        .unwrap_or(DEFAULT_RPO_SECONDS);
    let query = super::wal::WalQuery::Status {
        archive: archive.to_string(),
        rpo_seconds: rpo,
    };
    if let Ok(answer) = super::wal::answer(ops.services(), query).await
        && let Some(lag) = answer["lag_seconds"].as_f64()
    {
        let mut f = Family::new(
            &mut out,
            "lazarus_wal_archive_lag_seconds",
            "gauge",
            "Now minus the newest archived transaction end: the data a loss now would cost.",
        );
        f.sample(
            "lazarus_wal_archive_lag_seconds",
            &[("archive", archive)],
            lag,
        );
        let mut f = Family::new(
            &mut out,
            "lazarus_wal_rpo_exceeded",
            "gauge",
            "1 when the archive lag is over the RPO target (the tightest alert rpo, else 15 minutes).",
        );
        let over = if lag > rpo { 1.0 } else { 0.0 };
        f.sample("lazarus_wal_rpo_exceeded", &[("archive", archive)], over);
    }

    let mut f = Family::new(
        &mut out,
        "lazarus_audit_mirror_behind",
        "gauge",
        "Audit entries not yet copied to a store.",
    );
    for state in ops.audit().mirror_state(&ops.services().stores) {
        f.sample(
            "lazarus_audit_mirror_behind",
            &[("store", &state.store)],
            state.behind as f64,
        );
    }
    let mut f = Family::new(
        &mut out,
        "lazarus_alert_delivery_failures_total",
        "counter",
        "Alert deliveries that failed (each attempt).",
    );
    f.sample(
        "lazarus_alert_delivery_failures_total",
        &[],
        alert_failures as f64,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut out = String::new();
        let mut f = Family::new(&mut out, "x", "gauge", "help");
        f.sample("x", &[("db", "shop")], 2.0);
        assert_eq!(out, "# HELP x help\n# TYPE x gauge\nx{db=\"shop\"} 2\n");
    }
}
