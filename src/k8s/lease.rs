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
//! Claims, renewals and the trust kept in them are [`crate::lease`]'s; this module is
//! the Kubernetes side of it.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{DeleteParams, PostParams, Preconditions};
use sha2::{Digest, Sha256};

use super::K8sError;
use super::rollout::FIELD_MANAGER;
use crate::engine::fence::{FenceError, is_run_claim};
use crate::lease::{CALL_LIMIT, LeaseBackend, LeaseFence, Renewal, lease_runtime, wait_on};

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

/// Leases in one namespace of a cluster, one per recovery target.
pub struct KubeLeases {
    api: Api<Lease>,
    namespace: String,
    holder: String,
    duration: Duration,
}

/// The fence of a runner in (or beside) a cluster.
pub type KubeLeaseFence = LeaseFence<KubeLeases>;

impl LeaseFence<KubeLeases> {
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
        let runtime = lease_runtime()
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
        Ok(LeaseFence::new(
            runtime,
            KubeLeases {
                api: Api::namespaced(client, &namespace),
                namespace,
                holder: holder.to_string(),
                duration,
            },
        ))
    }

    /// Where the Leases are kept.
    pub fn namespace(&self) -> &str {
        &self.backend().namespace
    }
}

impl KubeLeases {
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
    async fn take_bounded(
        &self,
        target: &str,
        run: &str,
        over: Option<&str>,
    ) -> Result<(), FenceError> {
        let name = lease_name(target);
        let namespace = self.namespace.clone();
        tokio::time::timeout(CALL_LIMIT, self.take_unbounded(target, run, over))
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
        &self,
        target: &str,
        run: &str,
        over: Option<&str>,
    ) -> Result<(), FenceError> {
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
            let forced = over.is_some() && over == spec.holder_identity.as_deref();
            if !ours && !expired && !forced {
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

#[async_trait]
impl LeaseBackend for KubeLeases {
    fn key(&self, target: &str, _run: &str) -> String {
        target.to_string()
    }

    fn describe(&self, key: &str) -> String {
        format!("the Lease {}/{}", self.namespace, lease_name(key))
    }

    fn holder(&self) -> &str {
        &self.holder
    }

    fn duration(&self) -> Duration {
        self.duration
    }

    async fn take(&self, target: &str, run: &str, over: Option<&str>) -> Result<(), FenceError> {
        // A Lease guards a target; a run without one has none to take.
        if is_run_claim(target, run) {
            return Ok(());
        }
        self.take_bounded(target, run, over).await
    }

    async fn renew(&self, target: &str, run: &str) -> Result<(), Renewal> {
        if is_run_claim(target, run) {
            return Ok(());
        }
        renew(&self.api, &lease_name(target), &self.holder, self.duration).await
    }

    async fn release(&self, target: &str, run: &str) -> Result<(), String> {
        if is_run_claim(target, run) {
            return Ok(());
        }
        let name = lease_name(target);
        let Some(lease) = self.api.get_opt(&name).await.map_err(|e| e.to_string())? else {
            return Ok(());
        };
        let ours = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(self.holder.as_str());
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
        self.api
            .delete(&name, &params)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
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
