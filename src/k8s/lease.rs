//! A `coordination.k8s.io/v1` Lease per recovery target: the cross-host fence when Lazarus
//! runs in a cluster (or beside one).
//!
//! Taken when a run is created or resumed, renewed every third of its duration while this
//! process lives, checked at every step boundary, deleted when the run ends. Another
//! runner (another pod, another host) is refused with the holder's name until the Lease
//! expires — renewTime + leaseDurationSeconds, the same rule as Kubernetes' own leader
//! election — and then takes it over (`leaseTransitions` + 1). Every write is conditioned on
//! the resourceVersion it read, so two runners racing for an expired Lease cannot both win.
//!
//! The engine asks synchronously; the Lease's HTTP calls run on a small runtime of its own,
//! so neither side blocks the other's workers.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{DeleteParams, PostParams, Preconditions};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::K8sError;
use super::rollout::FIELD_MANAGER;
use crate::engine::fence::{Fence, FenceError};

/// The Lease annotation naming the run that holds the target.
pub const RUN_ANNOTATION: &str = "lazarus.io/run";
/// The Lease annotation naming the target in full (the Lease name is a shortened form).
pub const TARGET_ANNOTATION: &str = "lazarus.io/target";

/// The Lease's name for a target: `lazarus-` and a readable, valid form of the target with
/// a short hash, so two targets never share one.
pub fn lease_name(target: &str) -> String {
    let readable: String = target
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let readable: String = readable.trim_matches('-').chars().take(40).collect();
    let hash = hex::encode(&Sha256::digest(target.as_bytes())[..4]);
    format!("lazarus-{readable}-{hash}").replace("--", "-")
}

/// The claims of this process on targets, as Leases.
pub struct LeaseFence {
    /// Runs the Lease's HTTP calls; `None` only while being dropped.
    runtime: Option<tokio::runtime::Runtime>,
    inner: Arc<Inner>,
    claims: Arc<Mutex<HashMap<String, Claim>>>,
}

/// What the Lease calls need, shared with the renewers.
struct Inner {
    api: Api<Lease>,
    namespace: String,
    holder: String,
    duration: Duration,
}

/// One target this process holds.
struct Claim {
    run: String,
    /// Set when the renewer finds the Lease taken by someone else, or expired.
    lost: Option<String>,
    /// Until when this runner may trust it holds the Lease, measured on this host's own
    /// monotonic clock from before the last write that got through: past it, another
    /// runner may have taken an expired Lease, whatever the renewer is still waiting for.
    valid_until: tokio::time::Instant,
    stop: CancellationToken,
}

/// How long one Lease call may take before it counts as failed.
const CALL_LIMIT: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs a future on the Lease's runtime and waits for it from any thread, inside an async
/// context or not (a plain `block_on` would refuse inside the engine's runtime).
fn wait_on<F>(runtime: &tokio::runtime::Runtime, future: F) -> Option<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (answer, answered) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let _ = answer.send(future.await);
    });
    // Bounded: a hung API server must not hold an engine worker (or a control request).
    answered
        .recv_timeout(CALL_LIMIT + Duration::from_secs(1))
        .ok()
}

impl LeaseFence {
    /// A fence holding Leases in `namespace` (default: the kubeconfig's or the pod's) as
    /// `holder` (the pod or host name), each valid for `duration` unless renewed; the
    /// cluster is found the standard way (`KUBECONFIG`, `~/.kube/config`, the pod's account).
    pub fn connect(
        namespace: Option<&str>,
        holder: &str,
        duration: Duration,
    ) -> Result<Self, K8sError> {
        Self::start(None, namespace, holder, duration)
    }

    /// The same, with the cluster's configuration given.
    pub fn with_config(
        config: kube::Config,
        namespace: Option<&str>,
        holder: &str,
        duration: Duration,
    ) -> Result<Self, K8sError> {
        Self::start(Some(config), namespace, holder, duration)
    }

    fn start(
        config: Option<kube::Config>,
        namespace: Option<&str>,
        holder: &str,
        duration: Duration,
    ) -> Result<Self, K8sError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("lazarus-lease")
            .enable_all()
            .build()
            .map_err(|e| K8sError::Connect(format!("cannot start the Lease runtime: {e}")))?;
        let namespace = namespace.map(str::to_string);
        let connected = wait_on(&runtime, async move {
            let namespace = namespace.unwrap_or_default();
            let (client, namespace) = match config {
                Some(config) => super::connect_to(config, &namespace)?,
                None => super::connect(&namespace).await?,
            };
            Ok::<_, K8sError>((client, namespace))
        })
        .ok_or_else(|| K8sError::Connect("the Lease runtime stopped".into()))?;
        let (client, namespace) = connected?;
        Ok(Self {
            runtime: Some(runtime),
            inner: Arc::new(Inner {
                api: Api::namespaced(client, &namespace),
                namespace,
                holder: holder.to_string(),
                duration,
            }),
            claims: Arc::default(),
        })
    }

    /// Where the Leases are kept.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    fn run<F>(&self, future: F) -> Option<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        wait_on(self.runtime.as_ref()?, future)
    }
}

impl Inner {
    fn held_message(&self, target: &str, lease: &Lease) -> String {
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec
            .holder_identity
            .clone()
            .unwrap_or_else(|| "(nobody)".into());
        let run = lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(RUN_ANNOTATION))
            .map(|r| format!(" (run {r})"))
            .unwrap_or_default();
        let until = expiry(&spec)
            .map(|t| format!(" until {} unless renewed", t.strftime("%Y-%m-%dT%H:%M:%SZ")))
            .unwrap_or_default();
        format!(
            "target \"{target}\" is held by {holder}{run}{until} (Lease {}/{}): another Lazarus is recovering it. \
             Wait for that run to end; if its runner is gone, resume once the Lease has expired and this runner takes it over",
            self.namespace,
            lease_name(target)
        )
    }

    /// Creates, renews or takes over the Lease, within [`CALL_LIMIT`]; refused while another
    /// holder's is valid.
    async fn take(self: Arc<Self>, target: String, run: String) -> Result<(), FenceError> {
        let name = lease_name(&target);
        let namespace = self.namespace.clone();
        tokio::time::timeout(CALL_LIMIT, self.take_unbounded(target.clone(), run))
            .await
            .unwrap_or_else(|_| {
                Err(FenceError::Unavailable(format!(
                    "the Kubernetes API did not answer within {}s about the Lease {namespace}/{name} for target \"{target}\"; \
                     nothing was started: try again when it answers, or set [kubernetes] lease = \"off\" to run unfenced",
                    CALL_LIMIT.as_secs()
                )))
            })
    }

    async fn take_unbounded(
        self: Arc<Self>,
        target: String,
        run: String,
    ) -> Result<(), FenceError> {
        let (target, run) = (target.as_str(), run.as_str());
        let name = lease_name(target);
        let unavailable = |e: kube::Error| {
            FenceError::Unavailable(format!(
                "cannot check the Lease {}/{name} for target \"{target}\": {}",
                self.namespace,
                K8sError::from_kube(format!("lease/{name}"), e)
            ))
        };
        for _ in 0..3 {
            let now = Timestamp::now();
            let found = self.api.get_opt(&name).await.map_err(unavailable)?;
            let Some(mut lease) = found else {
                let fresh = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        annotations: Some(annotations(target, run)),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/managed-by".to_string(),
                            "lazarus".to_string(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.holder.clone()),
                        lease_duration_seconds: Some(self.duration_seconds()),
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                match self.api.create(&post_params(), &fresh).await {
                    Ok(_) => return Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => return Err(unavailable(e)),
                }
            };
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            let ours = spec.holder_identity.as_deref() == Some(self.holder.as_str());
            let expired = expiry(spec).is_none_or(|t| t <= now);
            if !ours && !expired {
                return Err(FenceError::Held(self.held_message(target, &lease)));
            }
            if !ours {
                spec.holder_identity = Some(self.holder.clone());
                spec.acquire_time = Some(MicroTime(now));
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                tracing::warn!(target = %target, lease = %name, "taking over an expired Lease");
            }
            spec.renew_time = Some(MicroTime(now));
            spec.lease_duration_seconds = Some(self.duration_seconds());
            lease
                .metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .extend(annotations(target, run));
            match self.api.replace(&name, &post_params(), &lease).await {
                Ok(_) => return Ok(()),
                // Someone wrote it between our read and write: read again and decide again.
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(unavailable(e)),
            }
        }
        match self.api.get_opt(&name).await {
            Ok(Some(lease)) => Err(FenceError::Held(self.held_message(target, &lease))),
            _ => Err(FenceError::Unavailable(format!(
                "the Lease {}/{name} for target \"{target}\" kept changing under this runner; try again",
                self.namespace
            ))),
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

impl LeaseFence {
    /// Renews the Lease every third of its duration until stopped; marks the claim lost
    /// when another holder has it, or when it expired before a renewal got through.
    fn spawn_renewer(&self, target: String, run: String, stop: CancellationToken) {
        let Some(runtime) = self.runtime.as_ref() else {
            return;
        };
        let inner = Arc::clone(&self.inner);
        let claims = Arc::clone(&self.claims);
        runtime.spawn(async move {
            let (namespace, duration) = (inner.namespace.as_str(), inner.duration);
            let name = lease_name(&target);
            let mut last_renewed = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(duration / 3) => {}
                }
                let asked = tokio::time::Instant::now();
                let renewed = tokio::time::timeout(
                    (duration / 3).max(Duration::from_secs(1)),
                    renew(&inner.api, &name, &inner.holder, duration),
                )
                .await
                .unwrap_or_else(|_| Err(Renewal::Failed("the Kubernetes API did not answer in time".into())));
                if stop.is_cancelled() {
                    return;
                }
                let lost = match renewed {
                    Ok(()) => {
                        last_renewed = asked;
                        if let Some(claim) = lock(&claims).get_mut(&target)
                            && claim.run == run
                        {
                            claim.valid_until = asked + duration;
                        }
                        None
                    }
                    Err(Renewal::TakenBy(other)) => Some(format!(
                        "the Lease {namespace}/{name} on target \"{target}\" is now held by {other}: \
                         another runner took the target; this one runs no further step"
                    )),
                    Err(Renewal::Failed(why)) if last_renewed.elapsed() >= duration => Some(format!(
                        "the Lease {namespace}/{name} on target \"{target}\" expired before it could be renewed ({why}); \
                         another runner may have taken the target, so this one runs no further step. \
                         Resume when the Kubernetes API answers again"
                    )),
                    Err(Renewal::Failed(why)) => {
                        tracing::warn!(target = %target, error = %why, "could not renew the Lease; trying again");
                        None
                    }
                };
                if let Some(lost) = lost {
                    tracing::warn!(target = %target, "{lost}");
                    if let Some(claim) = lock(&claims).get_mut(&target)
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

/// Why a renewal did not happen.
enum Renewal {
    /// Another holder has the Lease.
    TakenBy(String),
    /// The API did not answer or refused.
    Failed(String),
}

async fn renew(
    api: &Api<Lease>,
    name: &str,
    holder: &str,
    duration: Duration,
) -> Result<(), Renewal> {
    let mut lease = match api.get_opt(name).await {
        Ok(Some(lease)) => lease,
        Ok(None) => return Err(Renewal::TakenBy("nobody (the Lease was deleted)".into())),
        Err(e) => return Err(Renewal::Failed(e.to_string())),
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(holder) {
        return Err(Renewal::TakenBy(
            spec.holder_identity
                .clone()
                .unwrap_or_else(|| "nobody".into()),
        ));
    }
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    spec.lease_duration_seconds =
        Some(i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX));
    match api.replace(name, &post_params(), &lease).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(Renewal::Failed(
            "the Lease changed between read and renewal".into(),
        )),
        Err(e) => Err(Renewal::Failed(e.to_string())),
    }
}

fn annotations(target: &str, run: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (RUN_ANNOTATION.to_string(), run.to_string()),
        (TARGET_ANNOTATION.to_string(), target.to_string()),
    ])
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    }
}

/// When a Lease expires: its renewal (or acquisition) plus its duration.
fn expiry(spec: &LeaseSpec) -> Option<Timestamp> {
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let seconds = spec.lease_duration_seconds?;
    renewed
        .checked_add(SignedDuration::from_secs(i64::from(seconds)))
        .ok()
}

impl Fence for LeaseFence {
    fn claim(&self, target: &str, run: &str) -> Result<(), FenceError> {
        // Another run of this very runner holds the target: the Lease is not ours to hand
        // over (the journal's own lock refuses the run too, and must not cost the Lease).
        if let Some(other) = lock(&self.claims)
            .get(target)
            .filter(|c| c.run != run && c.lost.is_none())
        {
            return Err(FenceError::Held(format!(
                "target \"{target}\" is being recovered by run {} on this runner ({}); only one run per target at a time",
                other.run, self.inner.holder
            )));
        }
        let asked = tokio::time::Instant::now();
        let inner = Arc::clone(&self.inner);
        self.run(inner.take(target.to_string(), run.to_string()))
            .unwrap_or_else(|| {
                Err(FenceError::Unavailable(format!(
                    "the Kubernetes API did not answer about the Lease for target \"{target}\"; try again when it does"
                )))
            })?;
        let valid_until = asked + self.inner.duration;
        let mut claims = lock(&self.claims);
        if let Some(claim) = claims.get_mut(target).filter(|c| c.run == run) {
            claim.valid_until = valid_until;
        }
        let renewing = claims
            .get(target)
            .is_some_and(|c| c.run == run && c.lost.is_none());
        if !renewing {
            if let Some(old) = claims.remove(target) {
                old.stop.cancel();
            }
            let stop = CancellationToken::new();
            claims.insert(
                target.to_string(),
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

    fn check(&self, target: &str, run: &str) -> Result<(), FenceError> {
        let name = lease_name(target);
        let namespace = &self.inner.namespace;
        match lock(&self.claims).get(target) {
            Some(claim) if claim.run == run => match &claim.lost {
                Some(lost) => Err(FenceError::Held(lost.clone())),
                // A margin of a tenth of the duration for the clocks of the two hosts.
                None if tokio::time::Instant::now() + self.inner.duration / 10
                    >= claim.valid_until =>
                {
                    Err(FenceError::Held(format!(
                        "the Lease {namespace}/{name} on target \"{target}\" could not be renewed before it expired; \
                         another runner may have taken the target, so this one runs no further step. \
                         `lazarus resume {run}` takes it again if nobody else holds it"
                    )))
                }
                None => Ok(()),
            },
            _ => Err(FenceError::Held(format!(
                "this runner does not hold the Lease {namespace}/{name} on target \"{target}\" for run {run}; \
                 `lazarus resume {run}` takes it if it is free"
            ))),
        }
    }

    fn release(&self, target: &str, run: &str) {
        let claim = {
            let mut claims = lock(&self.claims);
            match claims.get(target) {
                Some(c) if c.run == run => claims.remove(target),
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
        let name = lease_name(target);
        let inner = Arc::clone(&self.inner);
        let result = self.run(async move {
            let Some(lease) = inner.api.get_opt(&name).await? else {
                return Ok(());
            };
            let ours = lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(inner.holder.as_str());
            if !ours {
                return Ok(());
            }
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: lease.metadata.resource_version.clone(),
                    uid: lease.metadata.uid.clone(),
                }),
                ..DeleteParams::default()
            };
            inner.api.delete(&name, &params).await.map(|_| ())
        });
        if let Some(Err(e)) = result {
            tracing::warn!(target = %target, error = %e, "could not delete the Lease; it expires on its own");
        }
    }
}

impl Drop for LeaseFence {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_are_valid_and_distinct() {
        let a = lease_name("shop");
        let b = lease_name("Shop");
        assert!(a.starts_with("lazarus-shop-"), "{a}");
        assert_ne!(a, b);
        assert!(super::super::valid_name(&a), "{a}");
        let long = lease_name(&"x/".repeat(100));
        assert!(super::super::valid_name(&long) && long.len() < 64, "{long}");
    }

    #[test]
    fn a_lease_expires_its_duration_after_its_renewal() {
        let renewed = Timestamp::from_second(1_000).unwrap();
        let spec = LeaseSpec {
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        };
        assert_eq!(expiry(&spec), Some(Timestamp::from_second(1_015).unwrap()));
        assert_eq!(expiry(&LeaseSpec::default()), None);
    }
}
