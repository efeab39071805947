//! Restarting and scaling Deployments and StatefulSets, and waiting for the rollout.
//!
//! A restart is what `kubectl rollout restart` does — the `kubectl.kubernetes.io/restartedAt`
//! annotation on the pod template, as a strategic merge patch — followed by what
//! `kubectl rollout status` waits for, watched rather than polled. Scaling to zero keeps the
//! replica count it replaced in an annotation on the workload, so a retried stop never
//! forgets it and an operator looking at the workload sees why it is at zero.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::api::{Patch, PatchParams};
use kube::runtime::wait::await_condition;
use kube::{Api, Client};
use serde::Serialize;
use serde_json::json;

use super::{K8sError, Workload, WorkloadKind};

/// The pod-template annotation whose change makes the controller roll every pod.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
/// The workload annotation that remembers the replica count a stop replaced.
pub const REPLICAS_BEFORE_STOP: &str = "lazarus.io/replicas-before-stop";
/// The field manager Lazarus's changes are recorded under.
pub const FIELD_MANAGER: &str = "lazarus";

/// Where a workload's rollout stands, read from its status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// `spec.replicas`.
    pub desired: i32,
    /// Pods running the current template.
    pub updated: i32,
    /// Pods ready.
    pub ready: i32,
    /// Pods available (Deployment) or ready (StatefulSet).
    pub available: i32,
    /// Pods in all, old and new.
    pub total: i32,
    /// `metadata.generation`.
    pub generation: i64,
    /// `status.observedGeneration`.
    pub observed: i64,
    /// The revision the workload is rolling to.
    pub revision: String,
    /// Why the controller gave up, if it did (`ProgressDeadlineExceeded`).
    pub stuck: Option<String>,
}

impl Progress {
    /// Whether the rollout of at least `generation` has completed.
    pub fn done(&self, generation: i64) -> bool {
        self.observed >= self.generation
            && self.observed >= generation
            && self.updated == self.desired
            && self.total == self.desired
            && self.available == self.desired
            && self.ready == self.desired
    }

    fn of_deployment(d: &Deployment) -> Self {
        let status = d.status.clone().unwrap_or_default();
        let stuck = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find_map(|c| {
                (c.type_ == "Progressing"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
                .then(|| {
                    c.message
                        .unwrap_or_else(|| "progress deadline exceeded".into())
                })
            });
        Self {
            desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            updated: status.updated_replicas.unwrap_or(0),
            ready: status.ready_replicas.unwrap_or(0),
            available: status.available_replicas.unwrap_or(0),
            total: status.replicas.unwrap_or(0),
            generation: d.metadata.generation.unwrap_or(0),
            observed: status.observed_generation.unwrap_or(0),
            revision: d
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("deployment.kubernetes.io/revision"))
                .cloned()
                .unwrap_or_default(),
            stuck,
        }
    }

    fn of_statefulset(s: &StatefulSet) -> Self {
        let status = s.status.clone().unwrap_or_default();
        let ready = status.ready_replicas.unwrap_or(0);
        Self {
            desired: s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            updated: status.updated_replicas.unwrap_or(0),
            ready,
            available: status.available_replicas.unwrap_or(ready),
            total: status.replicas,
            generation: s.metadata.generation.unwrap_or(0),
            observed: status.observed_generation.unwrap_or(0),
            revision: status.update_revision.unwrap_or_default(),
            stuck: None,
        }
    }
}

/// What a restart or scale left: the workload, the revision that came up, its pods.
#[derive(Debug, Clone, Serialize)]
pub struct Rollout {
    /// `kind/name`.
    pub workload: String,
    /// Its namespace.
    pub namespace: String,
    /// The revision now running (Deployment revision number, StatefulSet update revision).
    pub revision: String,
    /// Replicas wanted and ready.
    pub replicas: i32,
    /// Pods ready.
    pub ready: i32,
}

/// Restarts a workload's pods (`kubectl rollout restart`) and waits until the rollout has
/// completed, up to `timeout`.
pub async fn restart(
    client: &Client,
    namespace: &str,
    workload: &Workload,
    at: &str,
    timeout: Duration,
) -> Result<Rollout, K8sError> {
    let patch = json!({
        "spec": { "template": { "metadata": { "annotations": { RESTARTED_AT: at } } } }
    });
    let generation = patch_workload(client, namespace, workload, Patch::Strategic(patch)).await?;
    wait(client, namespace, workload, generation, timeout).await
}

/// What a stop left: the replica count it replaced, and the rollout to zero.
#[derive(Debug, Clone, Serialize)]
pub struct Stopped {
    /// The replica count before the stop (what `start` brings back).
    pub previous_replicas: i32,
    /// The workload at zero.
    pub rollout: Rollout,
}

/// Scales a workload to zero, remembering its replica count on the workload itself, and
/// waits until no pod is left. A stop of a workload already stopped by Lazarus keeps the
/// count remembered then.
pub async fn stop(
    client: &Client,
    namespace: &str,
    workload: &Workload,
    timeout: Duration,
) -> Result<Stopped, K8sError> {
    let (replicas, remembered) = replicas(client, namespace, workload).await?;
    let previous = remembered.unwrap_or(replicas);
    let patch = json!({
        "metadata": { "annotations": { REPLICAS_BEFORE_STOP: previous.to_string() } },
        "spec": { "replicas": 0 }
    });
    let generation = patch_workload(client, namespace, workload, Patch::Merge(patch)).await?;
    let rollout = wait(client, namespace, workload, generation, timeout).await?;
    Ok(Stopped {
        previous_replicas: previous,
        rollout,
    })
}

/// Scales a workload back to `replicas` (or what the stop remembered), forgets the stop,
/// and waits until the rollout has completed. A workload that is running again (without
/// Lazarus's stop mark) is not touched.
pub async fn start(
    client: &Client,
    namespace: &str,
    workload: &Workload,
    replicas: Option<i32>,
    timeout: Duration,
) -> Result<Rollout, K8sError> {
    let (current, remembered) = self::replicas(client, namespace, workload).await?;
    if remembered.is_none() && current > 0 {
        // Running already: started by an earlier attempt of this step, or scaled by someone
        // since the stop. Left exactly as it is.
        return wait(client, namespace, workload, 0, timeout).await;
    }
    let Some(wanted) = replicas.or(remembered) else {
        return Err(K8sError::Invalid(format!(
            "{workload} was not stopped by Lazarus (no {REPLICAS_BEFORE_STOP} annotation) and no replica count was given"
        )));
    };
    let patch = json!({
        "metadata": { "annotations": { REPLICAS_BEFORE_STOP: null } },
        "spec": { "replicas": wanted }
    });
    let generation = patch_workload(client, namespace, workload, Patch::Merge(patch)).await?;
    wait(client, namespace, workload, generation, timeout).await
}

/// A Deployment or a StatefulSet, as the functions here need it.
trait Rollable:
    kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// Where its rollout stands.
    fn progress(&self) -> Progress;
}

impl Rollable for Deployment {
    fn progress(&self) -> Progress {
        Progress::of_deployment(self)
    }
}

impl Rollable for StatefulSet {
    fn progress(&self) -> Progress {
        Progress::of_statefulset(self)
    }
}

/// The workload's `spec.replicas` and the count a Lazarus stop remembered, if any.
async fn replicas(
    client: &Client,
    namespace: &str,
    workload: &Workload,
) -> Result<(i32, Option<i32>), K8sError> {
    async fn read<K: Rollable>(api: Api<K>, name: &str, what: &str) -> Result<K, K8sError> {
        api.get(name)
            .await
            .map_err(|e| K8sError::from_kube(what, e))
    }
    let what = format!("read {workload} in namespace {namespace}");
    let name = workload.name.as_str();
    let (desired, meta) = match workload.kind {
        WorkloadKind::Deployment => {
            let d = read(
                Api::<Deployment>::namespaced(client.clone(), namespace),
                name,
                &what,
            )
            .await?;
            (d.progress().desired, d.metadata)
        }
        WorkloadKind::StatefulSet => {
            let s = read(
                Api::<StatefulSet>::namespaced(client.clone(), namespace),
                name,
                &what,
            )
            .await?;
            (s.progress().desired, s.metadata)
        }
    };
    let remembered = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(REPLICAS_BEFORE_STOP))
        .and_then(|v| v.parse().ok());
    Ok((desired, remembered))
}

/// Applies a patch to the workload; returns the generation it produced.
async fn patch_workload(
    client: &Client,
    namespace: &str,
    workload: &Workload,
    patch: Patch<serde_json::Value>,
) -> Result<i64, K8sError> {
    async fn apply<K: Rollable>(
        api: Api<K>,
        name: &str,
        patch: &Patch<serde_json::Value>,
        what: &str,
    ) -> Result<i64, K8sError> {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let patched = api
            .patch(name, &params, patch)
            .await
            .map_err(|e| K8sError::from_kube(what, e))?;
        Ok(patched.meta().generation.unwrap_or(0))
    }
    let what = format!("patch {workload} in namespace {namespace}");
    let name = workload.name.as_str();
    match workload.kind {
        WorkloadKind::Deployment => {
            apply(
                Api::<Deployment>::namespaced(client.clone(), namespace),
                name,
                &patch,
                &what,
            )
            .await
        }
        WorkloadKind::StatefulSet => {
            apply(
                Api::<StatefulSet>::namespaced(client.clone(), namespace),
                name,
                &patch,
                &what,
            )
            .await
        }
    }
}

/// Waits, watching the workload, until the rollout of `generation` has completed; on
/// timeout says where it stood.
pub async fn wait(
    client: &Client,
    namespace: &str,
    workload: &Workload,
    generation: i64,
    timeout: Duration,
) -> Result<Rollout, K8sError> {
    /// Watches until `note` says done; `Err(())` on timeout.
    async fn watch<K: Rollable>(
        api: Api<K>,
        name: &str,
        timeout: Duration,
        note: impl Fn(Progress) -> bool + Send + 'static,
    ) -> Result<Result<(), kube::runtime::wait::Error>, tokio::time::error::Elapsed> {
        let condition = move |k: Option<&K>| k.is_some_and(|k| note(k.progress()));
        tokio::time::timeout(timeout, await_condition(api, name, condition))
            .await
            .map(|r| r.map(|_| ()))
    }
    let last: Arc<Mutex<Option<Progress>>> = Arc::default();
    let seen = Arc::clone(&last);
    let note = move |progress: Progress| {
        // A deadline exceeded by an earlier rollout says nothing about this one.
        let stuck = progress.stuck.is_some() && progress.observed >= generation;
        let done = progress.done(generation) || stuck;
        *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(progress);
        done
    };
    let what = format!("watch {workload} in namespace {namespace}");
    let name = workload.name.as_str();
    let watched = match workload.kind {
        WorkloadKind::Deployment => {
            watch(
                Api::<Deployment>::namespaced(client.clone(), namespace),
                name,
                timeout,
                note,
            )
            .await
        }
        WorkloadKind::StatefulSet => {
            watch(
                Api::<StatefulSet>::namespaced(client.clone(), namespace),
                name,
                timeout,
                note,
            )
            .await
        }
    };
    let progress = last.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match watched {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(K8sError::Transport {
                what,
                message: e.to_string(),
            });
        }
        Err(_) => {
            return Err(K8sError::Timeout(match progress {
                Some(p) => format!(
                    "{workload} in namespace {namespace} did not finish rolling out within {}: \
                     {} of {} replicas updated, {} ready, {} available, {} in all \
                     (generation {}, observed {}); look at its pods (kubectl describe {workload} -n {namespace})",
                    crate::engine::duration::format_duration(timeout),
                    p.updated,
                    p.desired,
                    p.ready,
                    p.available,
                    p.total,
                    p.generation,
                    p.observed
                ),
                None => format!(
                    "{workload} in namespace {namespace} was not seen within {}",
                    crate::engine::duration::format_duration(timeout)
                ),
            }));
        }
    }
    let Some(progress) = progress else {
        return Err(K8sError::NotFound(format!(
            "{workload} in namespace {namespace}"
        )));
    };
    if !progress.done(generation)
        && let Some(why) = progress.stuck.clone()
    {
        return Err(K8sError::Timeout(format!(
            "{workload} in namespace {namespace} stopped rolling out: {why} \
             ({} of {} replicas updated, {} available)",
            progress.updated, progress.desired, progress.available
        )));
    }
    Ok(Rollout {
        workload: workload.to_string(),
        namespace: namespace.to_string(),
        revision: progress.revision,
        replicas: progress.desired,
        ready: progress.ready,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollout_is_done_when_every_replica_runs_the_new_generation() {
        let mut p = Progress {
            desired: 3,
            updated: 3,
            ready: 3,
            available: 3,
            total: 4,
            generation: 5,
            observed: 5,
            ..Progress::default()
        };
        assert!(!p.done(5), "an old pod is still there");
        p.total = 3;
        assert!(p.done(5));
        assert!(!p.done(6), "the controller has not seen the patch yet");
        p.observed = 4;
        assert!(!p.done(4), "observed lags the object's generation");
        let zero = Progress::default();
        assert!(zero.done(0), "scaled to zero with no pods left");
    }
}
