//! Turning a stream of run reports and progress into lines and a live progress bar.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use crate::engine::duration::format_duration;
use crate::engine::{Progress, RunReport};

/// Prints what changed between successive reports of one run.
pub struct Renderer {
    seen: HashMap<String, (String, u32)>,
    cleaned: HashSet<String>,
    /// Reruns already told, per step.
    reruns: HashMap<String, usize>,
    run_status: Option<String>,
    bar: Option<(String, ProgressBar)>,
    tty: bool,
}

impl Default for Renderer {
    fn default() -> Self {
        Self::new()
    }
}

impl Renderer {
    /// A renderer; progress bars only when stderr is a terminal.
    pub fn new() -> Self {
        Self {
            seen: HashMap::new(),
            cleaned: HashSet::new(),
            reruns: HashMap::new(),
            run_status: None,
            bar: None,
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// Prints a line above the progress bar.
    pub fn line(&self, text: &str) {
        match &self.bar {
            Some((_, bar)) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn start_bar(&mut self, step: &str) {
        self.finish();
        if !self.tty {
            return;
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("  {spinner} {prefix} {elapsed:>4} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(step.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        self.bar = Some((step.to_string(), bar));
    }

    /// Removes the progress bar.
    pub fn finish(&mut self) {
        if let Some((_, bar)) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    /// Shows live progress of a step.
    pub fn progress(&mut self, step: &str, progress: &Progress) {
        let Some((current, bar)) = &self.bar else {
            return;
        };
        if current != step {
            return;
        }
        if let Some(total) = progress.total {
            if bar.length() != Some(total) {
                let template = if progress.unit == "bytes" {
                    "  {spinner} {prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {wide_msg}"
                } else {
                    "  {spinner} {prefix} [{bar:30}] {pos}/{len} {wide_msg}"
                };
                bar.set_style(
                    ProgressStyle::with_template(template)
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                bar.set_length(total);
            }
            bar.set_position(progress.done);
        } else if progress.unit == "bytes" && progress.done > 0 {
            bar.set_message(format!(
                "{} {}",
                HumanBytes(progress.done),
                progress.message.clone().unwrap_or_default()
            ));
            return;
        }
        if let Some(message) = &progress.message {
            bar.set_message(message.clone());
        }
    }

    /// Prints the changes a new report shows.
    pub fn report(&mut self, report: &RunReport) {
        if self.run_status.is_none() {
            self.line(&format!(
                "run {} · workflow {} · {} steps · operator {} · reason: {}",
                report.id,
                report.workflow,
                report.steps.len(),
                crate::engine::params::escape_controls(&report.operator),
                crate::engine::params::escape_controls(&report.reason)
            ));
        }
        for step in &report.steps {
            if let Some(d) = step.discarded.as_ref().filter(|d| !d.is_empty())
                && self.cleaned.insert(step.id.clone())
            {
                self.line(&cleanup_line(&step.id, d));
            }
            let told = self.reruns.insert(step.id.clone(), step.reruns.len());
            // New since the last report, or already there when following began for a step
            // that has yet to run again.
            let new = match told {
                Some(told) => told < step.reruns.len(),
                None => matches!(step.status.as_str(), "pending" | "running"),
            };
            if let Some(reason) = step.reruns.last().filter(|_| new) {
                self.line(&format!("  ↻ {} runs again: {reason}", step.id));
            }
            let key = (step.status.clone(), step.attempts);
            let before = self.seen.insert(step.id.clone(), key.clone());
            if before.as_ref() == Some(&key) {
                continue;
            }
            if before.is_none() && self.run_status.is_none() {
                // The state when we started watching: summarise what is already settled.
                match step.status.as_str() {
                    "completed" => self.line(&format!("  ✓ {} (done earlier)", step.id)),
                    "compensated" => self.line(&format!("  ↺ {} (undone earlier)", step.id)),
                    "pending" | "failed" => {}
                    _ => {}
                }
                // Skipped steps still say why below; running and waiting ones say what now.
                if !matches!(
                    step.status.as_str(),
                    "running" | "waiting_approval" | "skipped"
                ) {
                    continue;
                }
            } else if before.is_none() && step.status == "pending" {
                continue;
            }
            match step.status.as_str() {
                "running" => {
                    let attempt = if step.attempts > 1 {
                        format!(" (attempt {})", step.attempts)
                    } else {
                        String::new()
                    };
                    if !self.tty {
                        self.line(&format!("  ▸ {} started{attempt}", step.id));
                    }
                    self.start_bar(&format!("{}{attempt}", step.id));
                }
                "completed" => {
                    self.finish();
                    self.line(&format!(
                        "  ✓ {} {}",
                        step.id,
                        step.duration_seconds
                            .map(|s| format_duration(Duration::from_secs_f64(s.max(0.0))))
                            .unwrap_or_default()
                    ));
                }
                "failed" => {
                    self.finish();
                    self.line(&format!(
                        "  ✗ {} attempt {}: {}",
                        step.id,
                        step.attempts,
                        step.error.as_deref().unwrap_or("failed")
                    ));
                }
                "waiting_approval" => {
                    self.finish();
                    self.line(&format!(
                        "  ⏸ {} waits for approval: {}\n      lazarus approve {} --by NAME",
                        step.id,
                        step.approval_prompt.as_deref().unwrap_or(""),
                        report.id
                    ));
                }
                "skipped" => {
                    let why = step
                        .output
                        .as_ref()
                        .and_then(|o| o["reason"].as_str())
                        .unwrap_or("its condition is false");
                    self.line(&format!("  ⤼ {} skipped: {why}", step.id));
                }
                "compensating" => {
                    self.line(&format!("  ↺ undoing {}", step.id));
                    self.start_bar(&format!("undo {}", step.id));
                }
                "compensated" => {
                    self.finish();
                    self.line(&format!("  ↺ {} undone", step.id));
                }
                "compensation_failed" => {
                    self.finish();
                    let error = step
                        .compensation
                        .as_ref()
                        .and_then(|c| c.error.as_deref())
                        .unwrap_or("failed");
                    self.line(&format!("  ✗ undo of {} failed: {error}", step.id));
                }
                _ => {}
            }
        }
        if self.run_status.as_deref() != Some(report.status.as_str()) {
            let first = self.run_status.is_none();
            self.run_status = Some(report.status.clone());
            match report.status.as_str() {
                "halted" => {
                    self.finish();
                    if let Some(h) = &report.halted {
                        let why = match h.reason.as_str() {
                            "halt_before" => format!("before step {} (--halt-before)", h.step),
                            "halt_after" => format!("after step {} (--halt-after)", h.step),
                            "interrupted" => format!("in step {}, which was interrupted", h.step),
                            "step_failed" => format!("at step {}, which failed", h.step),
                            "fenced" => format!(
                                "before step {}: this runner no longer holds the target's Lease",
                                h.step
                            ),
                            _ => format!("at step {} (on request)", h.step),
                        };
                        self.line(&format!("  ■ halted {why}"));
                    }
                }
                "rolling_back" if !first => {
                    let reason = report
                        .rollback
                        .as_ref()
                        .and_then(|r| r.get("reason").cloned())
                        .unwrap_or_default();
                    self.line(&format!("  ↺ rolling back: {reason}"));
                }
                _ => {}
            }
        }
    }
}

/// One line saying what was cleaned up after a step of a run that ended without success.
pub fn cleanup_line(step: &str, discarded: &crate::engine::Discarded) -> String {
    let mut parts = Vec::new();
    if !discarded.removed.is_empty() {
        parts.push(format!("removed {}", discarded.removed.join(", ")));
    }
    for kept in &discarded.kept {
        parts.push(format!("kept {kept}"));
    }
    if let Some(failed) = &discarded.failed {
        parts.push(format!(
            "could not clean up ({failed}); `lazarus gc` tries again"
        ));
    }
    format!("  ⌫ {step}: {}", parts.join("; "))
}
