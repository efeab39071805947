//! Leases in the stores: the fence that lets one host at a time drive a run, and one run at
//! a time hold a target, when hosts share nothing but their stores.
//!
//! A run's lease is `runs/RUN/lease`, a target's `targets/NAME/lease`, in the first store
//! that can condition a write and answers. It is created only if absent and renewed or taken over only at the version
//! read (S3 `If-None-Match: *` / `If-Match: ETAG`; a lock file and a rename on a local
//! store), so two hosts racing for it cannot both win. Another host is refused, with the
//! holder's name, until the holder's last renewal plus its duration has passed on this
//! host's clock (or the holder let it go); then it takes it over. A store that cannot
//! condition writes is used only when no store can, and then a write is checked by reading
//! it back: that narrows the window in which two hosts both believe they hold the lease,
//! but does not close it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{lease_key, target_lease_key};
use crate::engine::fence::{FenceError, is_run_claim};
use crate::lease::{LeaseBackend, Renewal};
use crate::storage::{Condition, ConditionalError, ObjectStore, StoreSet};

/// What a lease object says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseBody {
    /// Who drives the run (host and state directory).
    pub holder: String,
    /// The run.
    pub run: String,
    /// Its target.
    pub target: String,
    /// The holder's last renewal, microseconds since the Unix epoch, its clock.
    pub renewed_at_us: i64,
    /// How long the lease holds without renewal, milliseconds.
    pub duration_ms: u64,
    /// How many times the run changed hands.
    pub transitions: u64,
    /// Whether the holder let it go (the run ended or stopped here).
    pub released: bool,
}

impl LeaseBody {
    /// Whether it no longer keeps anyone out at `now_us`: let go, or unrenewed for its
    /// duration.
    pub fn expired(&self, now_us: i64) -> bool {
        self.released
            || self.renewed_at_us.saturating_add(
                i64::try_from(self.duration_ms)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1000),
            ) <= now_us
    }
}

/// How long reading one store's lease may take before the store counts as partitioned from
/// this host (a store slower than this is passed over; see docs/beyond-one-host.md) — at
/// most a quarter of the lease's duration, so a lease taken after the wait is still fresh.
const READ_LIMIT: Duration = Duration::from_secs(3);

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// What one lease object guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseScope {
    /// A run: one host drives it (`runs/RUN/lease`).
    Run,
    /// A recovery target: one run at a time, on any host (`targets/NAME/lease`).
    Target,
}

/// Leases kept in a set of stores, one per run or one per target.
pub struct StoreLeases {
    stores: StoreSet,
    holder: String,
    duration: Duration,
    scope: LeaseScope,
    /// The store each lease (by its key) was taken in.
    chosen: Mutex<HashMap<String, String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How taking a lease in one store went.
enum Taken {
    Yes,
    /// Another holder's lease is valid (the message names it).
    Held(String),
    /// This store cannot condition a write.
    Unsupported(String),
    /// This store did not answer.
    Failed(String),
}

impl StoreLeases {
    /// Leases in `stores` as `holder`, one per `scope`, each valid for `duration` unless
    /// renewed.
    pub fn new(stores: StoreSet, holder: &str, duration: Duration, scope: LeaseScope) -> Self {
        Self {
            stores,
            holder: holder.to_string(),
            duration,
            scope,
            chosen: Mutex::new(HashMap::new()),
        }
    }

    /// A target lease for a run without a target: its run lease is all there is to hold.
    fn guards_nothing(&self, target: &str, run: &str) -> bool {
        self.scope == LeaseScope::Target && is_run_claim(target, run)
    }

    /// The lease object for a claim key (see [`LeaseBackend::key`]).
    fn object(&self, key: &str) -> String {
        match self.scope {
            LeaseScope::Run => lease_key(key),
            LeaseScope::Target => target_lease_key(key),
        }
    }

    fn body(&self, target: &str, run: &str, transitions: u64) -> LeaseBody {
        LeaseBody {
            holder: self.holder.clone(),
            run: run.to_string(),
            target: target.to_string(),
            renewed_at_us: now_us(),
            duration_ms: u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX),
            transitions,
            released: false,
        }
    }

    /// Whether `lease` keeps this host out: another holder's, still valid, and not the one
    /// an operator named to take it from.
    /// A forced takeover (`over`) takes a target only from the run being taken over, never
    /// from another run still holding it.
    fn keeps_out(&self, lease: &LeaseBody, run: &str, over: Option<&str>) -> bool {
        let forced = over == Some(lease.holder.as_str())
            && (self.scope == LeaseScope::Run || lease.run == run);
        lease.holder != self.holder && !forced && !lease.expired(now_us())
    }

    fn held_message(&self, store: &str, lease: &LeaseBody) -> String {
        let until = chrono::DateTime::from_timestamp_micros(
            lease.renewed_at_us + i64::try_from(lease.duration_ms).unwrap_or(0) * 1000,
        )
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
        match self.scope {
            LeaseScope::Run => format!(
                "run {} is driven by {} (its lease {} in store {store} holds until {until} unless renewed): \
                 another host is running it. Wait for it; if that host is gone, resume once the lease has expired and this host takes the run over \
                 (or at once, when you are sure that host is down: lazarus resume {} --force {})",
                lease.run,
                lease.holder,
                lease_key(&lease.run),
                lease.run,
                lease.holder
            ),
            LeaseScope::Target => format!(
                "target \"{}\" is held by run {}, driven by {} (the lease {} in store {store} holds until {until} unless renewed): \
                 only one run per target at a time, on any host. Wait for that run, or end it (lazarus cancel {} on that host); \
                 if that host is gone, take the run over here first (lazarus resume {} --force {})",
                lease.target,
                lease.run,
                lease.holder,
                target_lease_key(&lease.target),
                lease.run,
                lease.run,
                lease.holder
            ),
        }
    }

    /// Creates, renews or takes over the lease in one store, conditioned on what was read.
    async fn take_in(
        &self,
        store: &dyn ObjectStore,
        target: &str,
        run: &str,
        over: Option<&str>,
    ) -> Taken {
        let key = self.object(&self.key(target, run));
        for _ in 0..3 {
            let read = match store.read_versioned(&key).await {
                Ok(read) => read,
                Err(e) => return Taken::Failed(e.to_string()),
            };
            let (body, condition) = match read {
                None => (self.body(target, run, 0), Condition::Absent),
                Some(found) => {
                    let Ok(lease) = serde_json::from_slice::<LeaseBody>(&found.bytes) else {
                        return Taken::Failed(format!(
                            "{key} in store {} is not a Lazarus lease; remove it if nothing else wrote it",
                            store.name()
                        ));
                    };
                    let ours = lease.holder == self.holder;
                    if self.keeps_out(&lease, run, over) {
                        return Taken::Held(self.held_message(store.name(), &lease));
                    }
                    let transitions = lease.transitions + u64::from(!ours);
                    if !ours {
                        tracing::warn!(run = %run, from = %lease.holder, "taking over the run's lease");
                    }
                    (
                        self.body(target, run, transitions),
                        Condition::Matches(found.etag),
                    )
                }
            };
            let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
            match store.put_if(&key, bytes, condition).await {
                Ok(_) => return Taken::Yes,
                // Someone wrote it between our read and write: read again and decide again.
                Err(ConditionalError::Refused { .. }) => continue,
                Err(ConditionalError::Unsupported { detail, .. }) => {
                    return Taken::Unsupported(detail);
                }
                Err(ConditionalError::Storage(e)) => return Taken::Failed(e.to_string()),
            }
        }
        Taken::Failed(format!(
            "{key} kept changing under this host while it tried to take it; try again in a moment"
        ))
    }

    /// The lease in a store that cannot condition writes: read, decide, write, read back.
    async fn take_unconditioned(
        &self,
        store: &dyn ObjectStore,
        target: &str,
        run: &str,
        over: Option<&str>,
    ) -> Taken {
        let key = self.object(&self.key(target, run));
        let found = match store.read_versioned(&key).await {
            Ok(found) => found.and_then(|f| serde_json::from_slice::<LeaseBody>(&f.bytes).ok()),
            Err(e) => return Taken::Failed(e.to_string()),
        };
        let transitions = match &found {
            Some(lease) if self.keeps_out(lease, run, over) => {
                return Taken::Held(self.held_message(store.name(), lease));
            }
            Some(lease) => lease.transitions + u64::from(lease.holder != self.holder),
            None => 0,
        };
        let body = self.body(target, run, transitions);
        let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        if let Err(e) = store.put(&key, crate::storage::Body::Bytes(bytes)).await {
            return Taken::Failed(e.to_string());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        match store.read_versioned(&key).await {
            Ok(Some(back)) => match serde_json::from_slice::<LeaseBody>(&back.bytes) {
                Ok(lease) if lease.holder == self.holder => Taken::Yes,
                Ok(lease) => Taken::Held(self.held_message(store.name(), &lease)),
                Err(e) => Taken::Failed(e.to_string()),
            },
            Ok(None) => Taken::Failed(format!("{key} vanished after it was written")),
            Err(e) => Taken::Failed(e.to_string()),
        }
    }

    fn store_of(&self, key: &str) -> Option<std::sync::Arc<dyn ObjectStore>> {
        let name = lock(&self.chosen).get(key).cloned()?;
        self.stores.get(&name).cloned()
    }
}

#[async_trait]
impl LeaseBackend for StoreLeases {
    fn key(&self, target: &str, run: &str) -> String {
        match self.scope {
            LeaseScope::Run => run.to_string(),
            LeaseScope::Target => target.to_string(),
        }
    }

    fn describe(&self, key: &str) -> String {
        let store = lock(&self.chosen)
            .get(key)
            .map(|s| format!(" in store {s}"))
            .unwrap_or_default();
        format!("the lease {}{store}", self.object(key))
    }

    fn holder(&self) -> &str {
        &self.holder
    }

    fn duration(&self) -> Duration {
        self.duration
    }

    async fn take(&self, target: &str, run: &str, over: Option<&str>) -> Result<(), FenceError> {
        if self.guards_nothing(target, run) {
            return Ok(());
        }
        // A lease another host holds in any store that answers counts, not only in the
        // one this host would write to: two hosts that each reach a different first store
        // must not both drive the run.
        // Every store is read at once, each for at most READ_LIMIT: a store that hangs must
        // not spend the whole call's time limit before the others are asked. One that does
        // not answer is passed over (for reading and for taking): it is partitioned from
        // this host, and a lease written there could not be renewed either.
        let claim = self.key(target, run);
        let object = self.object(&claim);
        let limit = READ_LIMIT.min(self.duration / 4);
        let reads = self.stores.stores().iter().map(|store| {
            let object = object.clone();
            async move {
                let read = tokio::time::timeout(limit, store.read_versioned(&object)).await;
                (store.clone(), read)
            }
        });
        let mut silent = Vec::new();
        let mut failures = Vec::new();
        for (store, read) in futures::future::join_all(reads).await {
            match read {
                Ok(Ok(Some(found))) => {
                    if let Ok(lease) = serde_json::from_slice::<LeaseBody>(&found.bytes)
                        && self.keeps_out(&lease, run, over)
                    {
                        return Err(FenceError::Held(self.held_message(store.name(), &lease)));
                    }
                }
                Ok(Ok(None)) | Ok(Err(_)) => {}
                Err(_) => {
                    tracing::warn!(run = %run, store = %store.name(), "the store did not answer within {}: passed over for the run's lease", crate::engine::duration::format_duration(limit));
                    failures.push(format!(
                        "{}: no answer within {}",
                        store.name(),
                        crate::engine::duration::format_duration(limit)
                    ));
                    silent.push(store.name().to_string());
                }
            }
        }
        let mut unconditioned = Vec::new();
        // The store that already holds this run's lease first, then the rest in order.
        let mut stores = self.stores.stores().to_vec();
        stores.retain(|s| !silent.iter().any(|name| name == s.name()));
        if let Some(held) = self.store_of(&claim)
            && !silent.iter().any(|name| name == held.name())
        {
            stores.retain(|s| s.name() != held.name());
            stores.insert(0, held);
        }
        for store in &stores {
            match self.take_in(store.as_ref(), target, run, over).await {
                Taken::Yes => {
                    lock(&self.chosen).insert(claim.clone(), store.name().to_string());
                    return Ok(());
                }
                Taken::Held(message) => return Err(FenceError::Held(message)),
                Taken::Unsupported(detail) => unconditioned.push((store.clone(), detail)),
                Taken::Failed(why) => {
                    tracing::warn!(run = %run, store = %store.name(), error = %why, "cannot take the run's lease in this store; trying the next");
                    failures.push(format!("{}: {why}", store.name()));
                }
            }
        }
        if let Some((store, detail)) = unconditioned.first() {
            tracing::warn!(run = %run, store = %store.name(), %detail, "no store can condition a write: the run's lease is checked by reading it back, which narrows but does not close the window for two hosts");
            match self
                .take_unconditioned(store.as_ref(), target, run, over)
                .await
            {
                Taken::Yes => {
                    lock(&self.chosen).insert(claim.clone(), store.name().to_string());
                    return Ok(());
                }
                Taken::Held(message) => return Err(FenceError::Held(message)),
                Taken::Unsupported(why) | Taken::Failed(why) => {
                    failures.push(format!("{}: {why}", store.name()));
                }
            }
        }
        Err(FenceError::Unavailable(format!(
            "no store could hold {object} for run {run} ({}); nothing was started: try again when a store answers, or set [mirror] lease = false to drive runs without it",
            failures.join("; ")
        )))
    }

    async fn renew(&self, target: &str, run: &str) -> Result<(), Renewal> {
        if self.guards_nothing(target, run) {
            return Ok(());
        }
        let claim = self.key(target, run);
        let Some(store) = self.store_of(&claim) else {
            return Err(Renewal::Failed("no store holds this lease".into()));
        };
        let key = self.object(&claim);
        let found = match store.read_versioned(&key).await {
            Ok(Some(found)) => found,
            Ok(None) => return Err(Renewal::TakenBy("nobody (the lease was removed)".into())),
            Err(e) => return Err(Renewal::Failed(e.to_string())),
        };
        let lease: LeaseBody = serde_json::from_slice(&found.bytes)
            .map_err(|e| Renewal::Failed(format!("{key} does not parse: {e}")))?;
        if lease.holder != self.holder || lease.released || lease.run != run {
            return Err(Renewal::TakenBy(lease.holder));
        }
        let body = self.body(target, run, lease.transitions);
        let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        match store
            .put_if(&key, bytes.clone(), Condition::Matches(found.etag))
            .await
        {
            Ok(_) => Ok(()),
            Err(ConditionalError::Refused { .. }) => Err(Renewal::Failed(
                "the lease changed between read and renewal".into(),
            )),
            Err(ConditionalError::Unsupported { .. }) => store
                .put(&key, crate::storage::Body::Bytes(bytes))
                .await
                .map(|_| ())
                .map_err(|e| Renewal::Failed(e.to_string())),
            Err(ConditionalError::Storage(e)) => Err(Renewal::Failed(e.to_string())),
        }
    }

    async fn release(&self, target: &str, run: &str) -> Result<(), String> {
        if self.guards_nothing(target, run) {
            return Ok(());
        }
        let claim = self.key(target, run);
        let Some(store) = self.store_of(&claim) else {
            return Ok(());
        };
        let key = self.object(&claim);
        let Some(found) = store
            .read_versioned(&key)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        let Ok(mut lease) = serde_json::from_slice::<LeaseBody>(&found.bytes) else {
            return Ok(());
        };
        if lease.holder != self.holder || lease.run != run {
            return Ok(());
        }
        lease.released = true;
        lease.renewed_at_us = now_us();
        let bytes = Bytes::from(serde_json::to_vec(&lease).unwrap_or_default());
        match store
            .put_if(&key, bytes.clone(), Condition::Matches(found.etag))
            .await
        {
            Ok(_) | Err(ConditionalError::Refused { .. }) => Ok(()),
            Err(ConditionalError::Unsupported { .. }) => store
                .put(&key, crate::storage::Body::Bytes(bytes))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(ConditionalError::Storage(e)) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_its_duration_after_its_renewal_or_when_let_go() {
        let mut lease = LeaseBody {
            holder: "a".into(),
            run: "r".into(),
            target: "t".into(),
            renewed_at_us: 1_000_000,
            duration_ms: 15_000,
            transitions: 0,
            released: false,
        };
        assert!(!lease.expired(15_999_999));
        assert!(lease.expired(16_000_000));
        lease.released = true;
        assert!(lease.expired(1_000_001));
    }

    #[test]
    fn forcing_takes_a_run_over_but_never_a_target_another_run_holds() {
        let held = LeaseBody {
            holder: "host-x".into(),
            run: "r2".into(),
            target: "shop".into(),
            renewed_at_us: now_us(),
            duration_ms: 60_000,
            transitions: 0,
            released: false,
        };
        let leases = |scope| {
            StoreLeases::new(
                StoreSet::new(vec![]),
                "host-b",
                Duration::from_secs(60),
                scope,
            )
        };
        let targets = leases(LeaseScope::Target);
        assert!(
            targets.keeps_out(&held, "r1", Some("host-x")),
            "r2 still holds shop"
        );
        assert!(
            !targets.keeps_out(&held, "r2", Some("host-x")),
            "r2 itself is taken over"
        );
        assert!(targets.keeps_out(&held, "r2", None));
        assert!(!leases(LeaseScope::Run).keeps_out(&held, "r2", Some("host-x")));
        assert!(targets.guards_nothing("run:r9", "r9"));
        assert!(!targets.guards_nothing("shop", "r9"));
    }
}
