//! Kubernetes through kube-rs: restarting and scaling workloads, pointing the application
//! at a restored database, and fencing a recovery target with a Lease.
//!
//! The client comes from the standard places (`KUBECONFIG` or `~/.kube/config`, else the
//! pod's service account), so Lazarus runs the same from a laptop and from a Job. No
//! `kubectl` subprocess: typed objects and patches that say exactly what they change.

pub mod cutover;
pub mod lease;
pub mod rollout;

use std::fmt;

use kube::Client;

/// One permission the adapters use: an API group, a resource, a verb, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permission {
    /// The API group ("" for the core group).
    pub group: &'static str,
    /// The resource, plural.
    pub resource: &'static str,
    /// The verb.
    pub verb: &'static str,
    /// What Lazarus does with it.
    pub why: &'static str,
}

const fn grant(
    group: &'static str,
    resource: &'static str,
    verb: &'static str,
    why: &'static str,
) -> Permission {
    Permission {
        group,
        resource,
        verb,
        why,
    }
}

/// Every permission the adapters use, and nothing else: docker/k8s/rbac.yaml grants
/// exactly these (a test holds them equal), so a cluster admin can see what Lazarus may do.
pub const PERMISSIONS: &[Permission] = &[
    grant(
        "apps",
        "deployments",
        "get",
        "read the replica count before a stop",
    ),
    grant(
        "apps",
        "deployments",
        "list",
        "the first read of a rollout watch",
    ),
    grant(
        "apps",
        "deployments",
        "watch",
        "wait for a rollout without polling",
    ),
    grant(
        "apps",
        "deployments",
        "patch",
        "the restartedAt annotation; replicas for a stop or start",
    ),
    grant(
        "apps",
        "statefulsets",
        "get",
        "read the replica count before a stop",
    ),
    grant(
        "apps",
        "statefulsets",
        "list",
        "the first read of a rollout watch",
    ),
    grant(
        "apps",
        "statefulsets",
        "watch",
        "wait for a rollout without polling",
    ),
    grant(
        "apps",
        "statefulsets",
        "patch",
        "the restartedAt annotation; replicas for a stop or start",
    ),
    grant(
        "",
        "services",
        "get",
        "read the selector or externalName a cut-over changes",
    ),
    grant(
        "",
        "services",
        "update",
        "write it back, conditioned on the resourceVersion read",
    ),
    grant("", "configmaps", "get", "read the key a cut-over changes"),
    grant(
        "",
        "configmaps",
        "update",
        "write it back, conditioned on the resourceVersion read",
    ),
    grant(
        "",
        "secrets",
        "get",
        "read the key a cut-over changes, and the kept old value on undo",
    ),
    grant(
        "",
        "secrets",
        "update",
        "write it back, conditioned on the resourceVersion read",
    ),
    grant(
        "",
        "secrets",
        "create",
        "keep the old value in a companion Secret, never in the journal",
    ),
    grant(
        "",
        "secrets",
        "delete",
        "remove that companion once the undo has put the value back",
    ),
    grant(
        "coordination.k8s.io",
        "leases",
        "get",
        "see who holds a recovery target",
    ),
    grant(
        "coordination.k8s.io",
        "leases",
        "create",
        "take a free target",
    ),
    grant(
        "coordination.k8s.io",
        "leases",
        "update",
        "renew the Lease, or take over an expired one",
    ),
    grant(
        "coordination.k8s.io",
        "leases",
        "delete",
        "let the target go when the run ends",
    ),
];

/// A Kubernetes operation that failed, said so an operator can act on it.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// No configuration or no reachable API server.
    #[error(
        "cannot reach the Kubernetes API: {0} (set KUBECONFIG, or run in a pod with a service account)"
    )]
    Connect(String),
    /// The object does not exist.
    #[error("{0} was not found; check its kind, name and namespace")]
    NotFound(String),
    /// The API refused the request (permissions, validation).
    #[error("{what}: the Kubernetes API refused it ({code} {reason}): {message}{hint}")]
    Refused {
        /// What was being done.
        what: String,
        /// HTTP status.
        code: u16,
        /// The API's reason (`Forbidden`, `Invalid`, ...).
        reason: String,
        /// The API's message.
        message: String,
        /// What to do about it, if known.
        hint: &'static str,
    },
    /// Someone else changed the object since Lazarus read it.
    #[error("{0}")]
    Conflict(String),
    /// The object did not reach the wanted state in time.
    #[error("{0}")]
    Timeout(String),
    /// The request did not get an answer (network, server error): worth another try.
    #[error("{what}: {message}")]
    Transport {
        /// What was being done.
        what: String,
        /// What went wrong.
        message: String,
    },
    /// The object is not in a shape Lazarus can work with, or the input is wrong.
    #[error("{0}")]
    Invalid(String),
}

impl K8sError {
    /// Classifies a kube-rs error met while doing `what` (e.g. "patch deployment/web").
    pub fn from_kube(what: impl Into<String>, error: kube::Error) -> Self {
        let what = what.into();
        match error {
            kube::Error::Api(status) if status.code == 404 => Self::NotFound(object_of(&what)),
            kube::Error::Api(status) if status.code == 409 => Self::Conflict(format!(
                "{what}: someone else changed it meanwhile ({})",
                status.message
            )),
            kube::Error::Api(status) if status.code >= 500 || status.code == 429 => {
                Self::Transport {
                    what,
                    message: format!("{} {}: {}", status.code, status.reason, status.message),
                }
            }
            kube::Error::Api(status) => Self::Refused {
                hint: match status.code {
                    401 => {
                        " — the credentials in the kubeconfig or service account are not accepted"
                    }
                    403 => {
                        " — grant the verb to Lazarus's ServiceAccount (docker/k8s/rbac.yaml lists what it needs)"
                    }
                    _ => "",
                },
                what,
                code: status.code,
                reason: status.reason,
                message: status.message,
            },
            other => Self::Transport {
                what,
                message: other.to_string(),
            },
        }
    }

    /// Whether another attempt may succeed (the API was unreachable or overloaded).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transport { .. } | Self::Connect(_))
    }
}

/// "read configmap/app-db in namespace shop" → "configmap/app-db in namespace shop".
fn object_of(what: &str) -> String {
    what.split_once(' ')
        .map_or(what, |(_, object)| object)
        .to_string()
}

/// A client from the standard configuration (`KUBECONFIG` or `~/.kube/config`, else the
/// pod's service account), and the namespace to work in: `namespace` when given, else the
/// configuration's.
pub async fn connect(namespace: &str) -> Result<(Client, String), K8sError> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| K8sError::Connect(e.to_string()))?;
    connect_to(config, namespace)
}

/// The same, with the cluster's configuration given.
pub fn connect_to(config: kube::Config, namespace: &str) -> Result<(Client, String), K8sError> {
    let namespace = match namespace.trim() {
        "" => config.default_namespace.clone(),
        given => given.to_string(),
    };
    let client = Client::try_from(config).map_err(|e| K8sError::Connect(e.to_string()))?;
    Ok((client, namespace))
}

/// The kinds of workload Lazarus restarts and scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
}

/// A workload named as `kind/name` (`deployment/web`, `statefulset/db`, `deploy/web`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Its kind.
    pub kind: WorkloadKind,
    /// Its name.
    pub name: String,
}

impl Workload {
    /// Reads `kind/name`; a bare name is a Deployment.
    pub fn parse(text: &str) -> Result<Self, K8sError> {
        let text = text.trim();
        let (kind, name) = match text.split_once('/') {
            Some((kind, name)) => (kind.to_ascii_lowercase(), name),
            None => ("deployment".to_string(), text),
        };
        let kind = match kind.as_str() {
            "deployment" | "deployments" | "deploy" => WorkloadKind::Deployment,
            "statefulset" | "statefulsets" | "sts" => WorkloadKind::StatefulSet,
            other => {
                return Err(K8sError::Invalid(format!(
                    "\"{other}\" is not a workload kind Lazarus restarts; use deployment/NAME or statefulset/NAME"
                )));
            }
        };
        if name.is_empty() || !valid_name(name) {
            return Err(K8sError::Invalid(format!(
                "\"{text}\" does not name a workload; use deployment/NAME or statefulset/NAME"
            )));
        }
        Ok(Self {
            kind,
            name: name.to_string(),
        })
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            WorkloadKind::Deployment => "deployment",
            WorkloadKind::StatefulSet => "statefulset",
        };
        write!(f, "{kind}/{}", self.name)
    }
}

/// Whether a name is a valid Kubernetes object name (DNS subdomain).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_names_the_object_and_its_namespace() {
        let status = kube::core::Status {
            code: 404,
            ..kube::core::Status::default()
        };
        let e = K8sError::from_kube(
            "read configmap/app-db in namespace shop",
            kube::Error::Api(Box::new(status)),
        );
        assert_eq!(
            e.to_string(),
            "configmap/app-db in namespace shop was not found; check its kind, name and namespace"
        );
    }

    #[test]
    fn workloads_are_named_kind_slash_name() {
        assert_eq!(
            Workload::parse("deployment/web").unwrap(),
            Workload {
                kind: WorkloadKind::Deployment,
                name: "web".into()
            }
        );
        assert_eq!(
            Workload::parse("sts/db").unwrap().kind,
            WorkloadKind::StatefulSet
        );
        assert_eq!(
            Workload::parse("web").unwrap().to_string(),
            "deployment/web"
        );
        let err = Workload::parse("daemonset/x").unwrap_err().to_string();
        assert!(err.contains("deployment/NAME"), "{err}");
        assert!(Workload::parse("deployment/Web_1").is_err());
    }
}
