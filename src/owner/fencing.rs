//! Whether this owner fences its targets with a Kubernetes Lease, and as whom.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::KubernetesConfig;
use crate::engine::duration::parse_duration;
use crate::engine::fence::Fence;
use crate::k8s::lease::LeaseFence;

/// How long a Lease holds without renewal when the configuration says nothing.
const DEFAULT_LEASE: Duration = Duration::from_secs(15);

/// The fence the configuration asks for: `None` when leases are off (or `auto` outside a
/// pod), an error naming the setting when they are on but cannot work.
pub fn from_config(
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
    let fence = LeaseFence::connect(config.namespace.as_deref(), &holder, duration).map_err(|e| {
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
