//! A fence made of leases: claimed when a run is created or resumed, renewed every third
//! of its duration while this process lives, checked at every step boundary, let go when
//! the run ends.
//!
//! What a lease is (a Kubernetes Lease per target, an object per run in a store) is a
//! [`LeaseBackend`]'s business; this module keeps the claims and decides when one can no
//! longer be trusted: past its duration after the last renewal that got through, measured
//! on this host's monotonic clock, whatever a hung renewal is still waiting for.
//!
//! The engine asks synchronously; a backend's calls run on a small runtime of their own,
//! so neither side blocks the other's workers, and every call is bounded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::engine::fence::{Fence, FenceError};

/// How long one backend call may take before it counts as failed.
pub const CALL_LIMIT: Duration = Duration::from_secs(10);

/// Why a renewal did not happen.
pub enum Renewal {
    /// Another holder has the lease (named).
    TakenBy(String),
    /// The backend did not answer, or refused for another reason.
    Failed(String),
}

/// Where leases are kept and how one is taken, renewed and let go.
#[async_trait]
pub trait LeaseBackend: Send + Sync + 'static {
    /// The name a claim is kept under: a run's target, or the run itself.
    fn key(&self, target: &str, run: &str) -> String;
    /// The lease for `key` in words ("the Lease NS/NAME", "the lease runs/RUN/lease in
    /// store r2").
    fn describe(&self, key: &str) -> String;
    /// Who this process is to other runners.
    fn holder(&self) -> &str;
    /// How long a lease holds without renewal.
    fn duration(&self) -> Duration;
    /// Creates, renews or takes over the lease; refused (naming the holder) while another
    /// holder's lease is valid, unless that holder is `over` (a forced takeover).
    async fn take(&self, target: &str, run: &str, over: Option<&str>) -> Result<(), FenceError>;
    /// Renews this holder's lease.
    async fn renew(&self, target: &str, run: &str) -> Result<(), Renewal>;
    /// Gives the lease up, if this holder still has it.
    async fn release(&self, target: &str, run: &str) -> Result<(), String>;
}

/// The claims of this process, kept as leases by a backend.
pub struct LeaseFence<B: LeaseBackend> {
    /// Runs the backend's calls; `None` only while being dropped.
    runtime: Option<tokio::runtime::Runtime>,
    backend: Arc<B>,
    claims: Arc<Mutex<HashMap<String, Claim>>>,
}

/// One lease this process holds.
struct Claim {
    run: String,
    /// Set when the renewer finds the lease taken by someone else, or expired.
    lost: Option<String>,
    /// Until when this runner may trust it holds the lease: its duration after the last
    /// write that got through, measured from before that write was sent.
    valid_until: tokio::time::Instant,
    stop: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs a future on a runtime and waits for it from any thread, inside an async context
/// or not (a plain `block_on` would refuse inside the engine's runtime). Bounded: a hung
/// backend must not hold an engine worker (or a control request).
pub fn wait_on<F>(runtime: &tokio::runtime::Runtime, future: F) -> Option<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (answer, answered) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let _ = answer.send(future.await);
    });
    answered
        .recv_timeout(CALL_LIMIT + Duration::from_secs(1))
        .ok()
}

/// The small runtime a fence's calls run on.
pub fn lease_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("lazarus-lease")
        .enable_all()
        .build()
}

impl<B: LeaseBackend> LeaseFence<B> {
    /// A fence keeping its leases through `backend`, whose calls run on `runtime`.
    pub fn new(runtime: tokio::runtime::Runtime, backend: B) -> Self {
        Self {
            runtime: Some(runtime),
            backend: Arc::new(backend),
            claims: Arc::default(),
        }
    }

    /// The backend (for what only it knows: a namespace, a store).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn run<F>(&self, future: F) -> Option<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        wait_on(self.runtime.as_ref()?, future)
    }

    /// Renews the lease every third of its duration until stopped; marks the claim lost
    /// when another holder has it, or when it expired before a renewal got through.
    fn spawn_renewer(&self, target: String, run: String, stop: CancellationToken) {
        let Some(runtime) = self.runtime.as_ref() else {
            return;
        };
        let backend = Arc::clone(&self.backend);
        let claims = Arc::clone(&self.claims);
        runtime.spawn(async move {
            let duration = backend.duration();
            let key = backend.key(&target, &run);
            let what = backend.describe(&key);
            let mut last_renewed = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(duration / 3) => {}
                }
                let asked = tokio::time::Instant::now();
                let renewed = tokio::time::timeout(
                    (duration / 3).max(Duration::from_secs(1)),
                    backend.renew(&target, &run),
                )
                .await
                .unwrap_or_else(|_| Err(Renewal::Failed("no answer in time".into())));
                if stop.is_cancelled() {
                    return;
                }
                let lost = match renewed {
                    Ok(()) => {
                        last_renewed = asked;
                        if let Some(claim) = lock(&claims).get_mut(&key)
                            && claim.run == run
                        {
                            claim.valid_until = asked + duration;
                        }
                        None
                    }
                    Err(Renewal::TakenBy(other)) => Some(format!(
                        "{what} on target \"{target}\" is now held by {other}: \
                         another runner took over; this one runs no further step"
                    )),
                    Err(Renewal::Failed(why)) if last_renewed.elapsed() >= duration => Some(format!(
                        "{what} on target \"{target}\" expired before it could be renewed ({why}); \
                         another runner may have taken over, so this one runs no further step. \
                         Resume when it can be reached again"
                    )),
                    Err(Renewal::Failed(why)) => {
                        tracing::warn!(target = %target, error = %why, "could not renew {what}; trying again");
                        None
                    }
                };
                if let Some(lost) = lost {
                    tracing::warn!(target = %target, "{lost}");
                    if let Some(claim) = lock(&claims).get_mut(&key)
                        && claim.run == run
                        && !stop.is_cancelled()
                    {
                        claim.lost = Some(lost);
                    }
                    return;
                }
            }
        });
    }
}

impl<B: LeaseBackend> Fence for LeaseFence<B> {
    fn claim(&self, target: &str, run: &str) -> Result<(), FenceError> {
        self.claim_as(target, run, None)
    }

    fn claim_over(&self, target: &str, run: &str, holder: &str) -> Result<(), FenceError> {
        self.claim_as(target, run, Some(holder))
    }

    fn check(&self, target: &str, run: &str) -> Result<(), FenceError> {
        self.check_claim(target, run)
    }

    fn release(&self, target: &str, run: &str) {
        self.release_claim(target, run)
    }

    fn abandon(&self, target: &str, run: &str) {
        let key = self.backend.key(target, run);
        let mut claims = lock(&self.claims);
        if claims.get(&key).is_some_and(|c| c.run == run)
            && let Some(claim) = claims.remove(&key)
        {
            claim.stop.cancel();
        }
    }
}

impl<B: LeaseBackend> LeaseFence<B> {
    fn claim_as(&self, target: &str, run: &str, over: Option<&str>) -> Result<(), FenceError> {
        let key = self.backend.key(target, run);
        // Another run of this very runner holds the lease: it is not ours to hand over
        // (the journal's own lock refuses the run too, and must not cost the lease).
        if let Some(other) = lock(&self.claims)
            .get(&key)
            .filter(|c| c.run != run && c.lost.is_none())
        {
            return Err(FenceError::Held(format!(
                "target \"{target}\" is being recovered by run {} on this runner ({}); only one run per target at a time",
                other.run,
                self.backend.holder()
            )));
        }
        let asked = tokio::time::Instant::now();
        let backend = Arc::clone(&self.backend);
        let (t, r) = (target.to_string(), run.to_string());
        let over = over.map(str::to_string);
        let what = self.backend.describe(&key);
        self.run(async move {
            tokio::time::timeout(CALL_LIMIT, backend.take(&t, &r, over.as_deref()))
                .await
                .unwrap_or_else(|_| {
                    Err(FenceError::Unavailable(format!(
                        "{what} for target \"{t}\" could not be checked within {}s; nothing was started: try again when it answers",
                        CALL_LIMIT.as_secs()
                    )))
                })
        })
        .unwrap_or_else(|| {
            Err(FenceError::Unavailable(format!(
                "{} did not answer for target \"{target}\"; try again when it does",
                self.backend.describe(&key)
            )))
        })?;
        let valid_until = asked + self.backend.duration();
        let mut claims = lock(&self.claims);
        if let Some(claim) = claims.get_mut(&key).filter(|c| c.run == run) {
            claim.valid_until = valid_until;
        }
        let renewing = claims
            .get(&key)
            .is_some_and(|c| c.run == run && c.lost.is_none());
        if !renewing {
            if let Some(old) = claims.remove(&key) {
                old.stop.cancel();
            }
            let stop = CancellationToken::new();
            claims.insert(
                key,
                Claim {
                    run: run.to_string(),
                    lost: None,
                    valid_until,
                    stop: stop.clone(),
                },
            );
            drop(claims);
            self.spawn_renewer(target.to_string(), run.to_string(), stop);
        }
        Ok(())
    }

    fn check_claim(&self, target: &str, run: &str) -> Result<(), FenceError> {
        let key = self.backend.key(target, run);
        let what = self.backend.describe(&key);
        let duration = self.backend.duration();
        match lock(&self.claims).get(&key) {
            Some(claim) if claim.run == run => match &claim.lost {
                Some(lost) => Err(FenceError::Held(lost.clone())),
                // A margin of a tenth of the duration for the clocks of the two hosts.
                None if tokio::time::Instant::now() + duration / 10 >= claim.valid_until => {
                    Err(FenceError::Held(format!(
                        "{what} on target \"{target}\" could not be renewed before it expired; \
                         another runner may have taken over, so this one runs no further step. \
                         `lazarus resume {run}` takes it again if nobody else holds it"
                    )))
                }
                None => Ok(()),
            },
            _ => Err(FenceError::Held(format!(
                "this runner does not hold {what} on target \"{target}\" for run {run}; \
                 `lazarus resume {run}` takes it if it is free"
            ))),
        }
    }

    fn release_claim(&self, target: &str, run: &str) {
        let key = self.backend.key(target, run);
        let claim = {
            let mut claims = lock(&self.claims);
            match claims.get(&key) {
                Some(c) if c.run == run => claims.remove(&key),
                _ => None,
            }
        };
        let Some(claim) = claim else {
            return;
        };
        claim.stop.cancel();
        if claim.lost.is_some() {
            return;
        }
        let backend = Arc::clone(&self.backend);
        let (t, r) = (target.to_string(), run.to_string());
        let result = self.run(async move {
            tokio::time::timeout(CALL_LIMIT, backend.release(&t, &r))
                .await
                .unwrap_or_else(|_| Err("no answer in time".into()))
        });
        if let Some(Err(e)) = result {
            tracing::warn!(target = %target, error = %e, "could not let {} go; it expires on its own", self.backend.describe(&key));
        }
    }
}

impl<B: LeaseBackend> Drop for LeaseFence<B> {
    fn drop(&mut self) {
        for claim in lock(&self.claims).values() {
            claim.stop.cancel();
        }
        // Dropping a runtime waits for its threads, which an async context may not do.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Several fences as one: a claim takes each in order (letting go of those taken when a
/// later one refuses), a check fails when any does.
pub struct AllFences(pub Vec<Arc<dyn Fence>>);

impl Fence for AllFences {
    fn claim(&self, target: &str, run: &str) -> Result<(), FenceError> {
        for (taken, fence) in self.0.iter().enumerate() {
            if let Err(e) = fence.claim(target, run) {
                for earlier in &self.0[..taken] {
                    earlier.release(target, run);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn claim_over(&self, target: &str, run: &str, holder: &str) -> Result<(), FenceError> {
        for (taken, fence) in self.0.iter().enumerate() {
            if let Err(e) = fence.claim_over(target, run, holder) {
                for earlier in &self.0[..taken] {
                    earlier.release(target, run);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn check(&self, target: &str, run: &str) -> Result<(), FenceError> {
        self.0.iter().try_for_each(|f| f.check(target, run))
    }

    fn abandon(&self, target: &str, run: &str) {
        for fence in &self.0 {
            fence.abandon(target, run);
        }
    }

    fn release(&self, target: &str, run: &str) {
        for fence in self.0.iter().rev() {
            fence.release(target, run);
        }
    }
}
