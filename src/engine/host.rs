//! The engine's side of [`StepHost`]: checkpoints into the journal, progress to followers,
//! and the durable wait for approval.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::activity::{ActivityError, Approval, Progress, StepHost};
use super::records::Event;
use super::runtime::{Engine, RunHandle, Update};

/// Services for one attempt of one step.
pub(crate) struct AttemptHost {
    engine: Arc<Engine>,
    run: String,
    step: String,
    attempt: u32,
    handle: Arc<RunHandle>,
    /// The most bytes the attempt reported moving (for its trace span).
    bytes: AtomicU64,
    /// When a checkpoint last sent the run's journal to the stores.
    copied_at: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How often checkpoints inside one attempt send the journal to the stores: a download
/// checkpoints every few MiB, and a copy per checkpoint would be an object per checkpoint.
const CHECKPOINT_COPY_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl AttemptHost {
    pub(crate) fn new(
        engine: Arc<Engine>,
        run: String,
        step: String,
        attempt: u32,
        handle: Arc<RunHandle>,
    ) -> Self {
        Self {
            engine,
            run,
            step,
            attempt,
            handle,
            bytes: AtomicU64::new(0),
            copied_at: std::sync::Mutex::new(None),
        }
    }

    /// The bytes the attempt reported moving, if it reported any.
    pub(crate) fn bytes(&self) -> Option<u64> {
        Some(self.bytes.load(Ordering::Relaxed)).filter(|b| *b > 0)
    }

    /// The approval recorded for this step, if any.
    /// The approval recorded for this step, and whether a halt is pending.
    fn recorded_approval(&self) -> Result<(Option<Approval>, bool), ActivityError> {
        let (_, _, state) = self
            .engine
            .load(&self.run)
            .map_err(|e| ActivityError::retryable(e.to_string()))?;
        Ok((
            state.step(&self.step).and_then(|s| s.approval.clone()),
            state.pending_halt.is_some(),
        ))
    }
}

#[async_trait]
impl StepHost for AttemptHost {
    async fn checkpoint(&self, data: Vec<u8>) -> Result<(), String> {
        self.engine
            .append_durable(
                &self.run,
                Event::StepCheckpoint {
                    step: self.step.clone(),
                    attempt: self.attempt,
                    data,
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        let due = {
            let mut copied_at = self.copied_at.lock().unwrap_or_else(|p| p.into_inner());
            let due = copied_at.is_none_or(|at| at.elapsed() >= CHECKPOINT_COPY_EVERY);
            if due {
                *copied_at = Some(std::time::Instant::now());
            }
            due
        };
        if due {
            self.engine.mirror_soon(&self.run);
        }
        Ok(())
    }

    fn progress(&self, progress: Progress) {
        if progress.unit == "bytes" {
            self.bytes.fetch_max(progress.done, Ordering::Relaxed);
        }
        self.engine.publish(Update::Progress {
            run: self.run.clone(),
            step: self.step.clone(),
            progress,
        });
    }

    async fn await_approval(
        &self,
        prompt: String,
        cancel: CancellationToken,
    ) -> Result<Approval, ActivityError> {
        let mut asked = false;
        loop {
            // Register for wake-ups before looking, so an approval in between is not missed.
            let notified = self.handle.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (approval, halt_pending) = self.recorded_approval()?;
            if let Some(approval) = approval {
                return Ok(approval);
            }
            if halt_pending {
                // Waiting for a human is a step boundary as far as a halt is concerned.
                return Err(ActivityError::cancelled(
                    "halted while waiting for approval",
                ));
            }
            if !asked {
                self.engine
                    .append_durable(
                        &self.run,
                        Event::ApprovalRequested {
                            step: self.step.clone(),
                            prompt: prompt.clone(),
                        },
                    )
                    .await
                    .map_err(|e| ActivityError::retryable(e.to_string()))?;
                self.engine.mirror_soon(&self.run);
                tracing::info!(run = %self.run, step = %self.step, "waiting for approval");
            }
            asked = true;
            tokio::select! {
                _ = &mut notified => {}
                _ = cancel.cancelled() => {
                    return Err(ActivityError::cancelled("approval wait interrupted"));
                }
            }
        }
    }

    fn run_summary(&self) -> Value {
        self.engine
            .report(&self.run)
            .ok()
            .and_then(|r| serde_json::to_value(r).ok())
            .unwrap_or(Value::Null)
    }
}
