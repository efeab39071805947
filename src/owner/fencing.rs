//! Whether this owner fences its runs (a Kubernetes Lease per target, a lease per run in
//! the stores) and mirrors their journals to the stores, and as whom.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, KubernetesConfig, MirrorConfig};
use crate::engine::duration::parse_duration;
use crate::engine::fence::Fence;
use crate::engine::mirror::Mirror;
use crate::k8s::lease::KubeLeaseFence;
use crate::lease::{AllFences, LeaseFence, lease_runtime};
use crate::mirror::lease::LeaseScope;
use crate::mirror::{StoreLeases, StoreMirror};
use crate::storage::StoreSet;

/// How long a Lease holds without renewal when the configuration says nothing.
const DEFAULT_LEASE: Duration = Duration::from_secs(15);

/// How long a run's lease in the stores holds without renewal when the configuration says
/// nothing: long enough for a slow store's renewal, short enough to take over a dead host's
/// run within a minute.
const DEFAULT_STORE_LEASE: Duration = Duration::from_secs(30);

/// The fence runs claim, and the mirror their journals are copied through, if any.
pub type Guards = (Option<Arc<dyn Fence>>, Option<Arc<dyn Mirror>>);

/// The fences and the journal mirror a configuration asks for (`config` is `None` for the
/// embedded default: nothing to fence with, nowhere off the host to copy to).
pub fn from_config(
    config: Option<&Config>,
    stores: &StoreSet,
    state_dir: &Path,
) -> Result<Guards, String> {
    let embedded = Config::default();
    let config = config.unwrap_or(&embedded);
    let mut fences = Vec::new();
    if let Some(fence) = kube_fence(&config.kubernetes, state_dir)? {
        fences.push(fence);
    }
    let configured = !config.stores.is_empty();
    let journal = config.mirror.journal.unwrap_or(configured);
    let mirror = journal.then(|| Arc::new(StoreMirror::new(stores.clone())) as Arc<dyn Mirror>);
    if config.mirror.lease.unwrap_or(journal) {
        fences.push(store_fence(&config.mirror, stores, state_dir)?);
    }
    let fence: Option<Arc<dyn Fence>> = match fences.len() {
        0 => None,
        1 => fences.pop(),
        _ => Some(Arc::new(AllFences(fences))),
    };
    Ok((fence, mirror))
}

/// A lease per run and one per target in the stores: one host drives a run, and one run
/// at a time holds a target across hosts (the journal's own target lock sees one host).
fn store_fence(
    config: &MirrorConfig,
    stores: &StoreSet,
    state_dir: &Path,
) -> Result<Arc<dyn Fence>, String> {
    let duration = match config.lease_duration.as_deref() {
        Some(text) => parse_duration(text).map_err(|e| format!("[mirror] lease_duration: {e}"))?,
        None => DEFAULT_STORE_LEASE,
    };
    let holder = config
        .holder
        .clone()
        .unwrap_or_else(|| default_holder(state_dir));
    let runtime = lease_runtime().map_err(|e| format!("cannot start the lease runtime: {e}"))?;
    tracing::debug!(holder = %holder, "runs are fenced with leases in the stores");
    let runs = LeaseFence::new(
        runtime,
        StoreLeases::new(stores.clone(), &holder, duration, LeaseScope::Run),
    );
    let runtime = lease_runtime().map_err(|e| format!("cannot start the lease runtime: {e}"))?;
    let targets = LeaseFence::new(
        runtime,
        StoreLeases::new(stores.clone(), &holder, duration, LeaseScope::Target),
    );
    // The target first: a forced takeover it refuses has not yet taken the run's lease.
    Ok(Arc::new(AllFences(vec![Arc::new(targets), Arc::new(runs)])))
}

/// The Kubernetes Lease fence the configuration asks for: `None` when leases are off (or
/// `auto` outside a pod), an error naming the setting when they are on but cannot work.
fn kube_fence(
    config: &KubernetesConfig,
    state_dir: &Path,
) -> Result<Option<Arc<dyn Fence>>, String> {
    let mode = config.lease.as_deref().unwrap_or("auto");
    let wanted = match mode {
        "on" | "true" => true,
        "off" | "false" => false,
        "auto" => std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
        other => {
            return Err(format!(
                "[kubernetes] lease = \"{other}\" is not auto, on or off"
            ));
        }
    };
    if !wanted {
        return Ok(None);
    }
    let duration = match config.lease_duration.as_deref() {
        Some(text) => {
            parse_duration(text).map_err(|e| format!("[kubernetes] lease_duration: {e}"))?
        }
        None => DEFAULT_LEASE,
    };
    let holder = config
        .holder
        .clone()
        .unwrap_or_else(|| default_holder(state_dir));
    let fence = KubeLeaseFence::connect(config.namespace.as_deref(), &holder, duration).map_err(|e| {
        format!("{e}; the Lease that fences recoveries across pods cannot be used (set [kubernetes] lease = \"off\" to run without it)")
    })?;
    tracing::info!(holder = %holder, namespace = %fence.namespace(), "recovery targets are fenced with Kubernetes Leases");
    Ok(Some(Arc::new(fence)))
}

/// `$POD_NAME` (or the host name) and the state directory: two owners can only be the same
/// runner if they share both, and sled lets only one process open a state directory.
fn default_holder(state_dir: &Path) -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .map(|h| h.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "unknown-host".into());
    let dir = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    format!("{host}:{}", dir.display())
}
