//! A fake Kubernetes API server speaking real HTTP/JSON to kube-rs — the one allowed
//! stand-in, since no cluster can run here.
//!
//! It keeps Deployments, StatefulSets, Services, ConfigMaps, Secrets and Leases with
//! resourceVersion semantics (a write carrying a stale one gets 409 Conflict, a create of an
//! existing name 409 AlreadyExists, a delete with a failed precondition 409), applies JSON
//! merge and strategic merge patches (the same for the maps these tests patch), serves
//! lists and watches (newline-delimited events, resumable from a resourceVersion), and
//! progresses a workload's rollout over time the way a controller would: the new
//! generation is observed, then one replica at a time is updated, ready and available. A
//! workload labelled `fake.lazarus.io/stuck: "true"` never gets a replica updated. Every
//! request is recorded for the tests to check.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

/// (plural, namespace, name)
type Key = (String, String, String);

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    /// Every change, for watches: (resourceVersion, key, type, object).
    events: Vec<(u64, Key, &'static str, Value)>,
    requests: Vec<Recorded>,
}

/// The fake API server; lives as long as the test holds it.
pub struct FakeKube {
    store: Arc<Mutex<Store>>,
    changed: Arc<Notify>,
    pub addr: std::net::SocketAddr,
}

fn kind_of(plural: &str) -> (&'static str, &'static str) {
    match plural {
        "deployments" => ("apps/v1", "Deployment"),
        "statefulsets" => ("apps/v1", "StatefulSet"),
        "services" => ("v1", "Service"),
        "configmaps" => ("v1", "ConfigMap"),
        "secrets" => ("v1", "Secret"),
        "leases" => ("coordination.k8s.io/v1", "Lease"),
        _ => ("v1", "Unknown"),
    }
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code
    });
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn json_response(value: &Value) -> Response {
    ([("content-type", "application/json")], value.to_string()).into_response()
}

/// RFC 7386 JSON merge patch (null removes).
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn is_workload(plural: &str) -> bool {
    plural == "deployments" || plural == "statefulsets"
}

impl Store {
    fn bump(&mut self, key: &Key, kind: &'static str) -> u64 {
        self.rv += 1;
        let rv = self.rv;
        if let Some(obj) = self.objects.get_mut(key) {
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            let snapshot = obj.clone();
            self.events.push((rv, key.clone(), kind, snapshot));
        }
        rv
    }

    /// Stores a changed object: a new spec is a new generation (and, for a Deployment whose
    /// pod template changed, a new revision).
    fn put(&mut self, key: &Key, mut object: Value, kind: &'static str) -> Value {
        let (api_version, k) = kind_of(&key.0);
        object["apiVersion"] = json!(api_version);
        object["kind"] = json!(k);
        object["metadata"]["name"] = json!(key.2);
        object["metadata"]["namespace"] = json!(key.1);
        let old = self.objects.get(key).cloned();
        match &old {
            Some(old) => {
                object["metadata"]["uid"] = old["metadata"]["uid"].clone();
                object["metadata"]["creationTimestamp"] =
                    old["metadata"]["creationTimestamp"].clone();
                if is_workload(&key.0) {
                    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
                    let spec_changed = old["spec"] != object["spec"];
                    object["metadata"]["generation"] = json!(if spec_changed {
                        generation + 1
                    } else {
                        generation
                    });
                    object["status"] = old["status"].clone();
                    let template_changed = old["spec"]["template"] != object["spec"]["template"];
                    let revision =
                        old["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                            .as_str()
                            .and_then(|r| r.parse::<i64>().ok())
                            .unwrap_or(1);
                    if key.0 == "deployments" {
                        object["metadata"]["annotations"]["deployment.kubernetes.io/revision"] =
                            json!((revision + i64::from(template_changed)).to_string());
                    }
                }
            }
            None => {
                object["metadata"]["uid"] = json!(format!("uid-{}-{}", key.2, self.rv + 1));
                object["metadata"]["creationTimestamp"] = json!("2026-12-01T00:00:00Z");
                if is_workload(&key.0) {
                    object["metadata"]["generation"] = json!(1);
                }
            }
        }
        self.objects.insert(key.clone(), object);
        self.bump(key, kind);
        self.objects[key].clone()
    }

    /// One controller step for every workload: observe a new generation, then bring one
    /// more replica up to date. Returns whether anything changed.
    fn progress(&mut self) -> bool {
        let keys: Vec<Key> = self
            .objects
            .keys()
            .filter(|k| is_workload(&k.0))
            .cloned()
            .collect();
        let mut any = false;
        for key in keys {
            let obj = self.objects[&key].clone();
            let desired = obj["spec"]["replicas"].as_i64().unwrap_or(1);
            let generation = obj["metadata"]["generation"].as_i64().unwrap_or(1);
            let stuck = obj["metadata"]["labels"]["fake.lazarus.io/stuck"] == "true";
            let status = &obj["status"];
            let observed = status["observedGeneration"].as_i64().unwrap_or(0);
            let mut updated = status["updatedReplicas"].as_i64().unwrap_or(0);
            if observed < generation {
                updated = 0;
            } else if updated < desired && !stuck {
                updated += 1;
            } else if updated > desired {
                updated = desired;
            }
            let total = if updated < desired {
                desired + 1
            } else {
                desired
            };
            let ready = if stuck {
                desired.min(status["readyReplicas"].as_i64().unwrap_or(0))
            } else {
                updated
            };
            let mut new_status = json!({
                "observedGeneration": generation,
                "replicas": total,
                "updatedReplicas": updated,
                "readyReplicas": ready,
                "availableReplicas": ready,
            });
            if key.0 == "statefulsets" {
                let revision = format!("{}-{generation}", key.2);
                new_status["updateRevision"] = json!(revision);
                new_status["currentRevision"] = json!(if updated == desired {
                    revision
                } else {
                    status["currentRevision"].as_str().unwrap_or("").to_string()
                });
            }
            if new_status != *status {
                self.objects.get_mut(&key).expect("workload")["status"] = new_status;
                self.bump(&key, "MODIFIED");
                any = true;
            }
        }
        any
    }
}

impl FakeKube {
    /// Starts the server and its controller loop (a step every 100 ms).
    pub fn start() -> Self {
        let store: Arc<Mutex<Store>> = Arc::default();
        let changed = Arc::new(Notify::new());
        let (s, c) = (Arc::clone(&store), Arc::clone(&changed));
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let (store, changed) = (Arc::clone(&s), Arc::clone(&c));
                async move { handle(store, changed, method, uri, headers, body).await }
            },
        );
        let addr = super::http_server(app);
        let (s, c) = (Arc::clone(&store), Arc::clone(&changed));
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(100));
                let changed_any = s.lock().expect("store").progress();
                if changed_any {
                    c.notify_waiters();
                }
            }
        });
        FakeKube {
            store,
            changed,
            addr,
        }
    }

    /// Puts an object in place (as a cluster would have it before the test).
    pub fn insert(&self, plural: &str, namespace: &str, object: Value) {
        let name = object["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_string();
        let key = (plural.to_string(), namespace.to_string(), name);
        let mut store = self.store.lock().expect("store");
        let exists = store.objects.contains_key(&key);
        store.put(&key, object, if exists { "MODIFIED" } else { "ADDED" });
        drop(store);
        self.changed.notify_waiters();
    }

    /// A Deployment with `replicas` pods, fully rolled out.
    pub fn deployment(&self, namespace: &str, name: &str, replicas: i64, stuck: bool) {
        self.insert("deployments", namespace, workload(name, replicas, stuck));
        self.settle();
    }

    /// A StatefulSet with `replicas` pods, fully rolled out.
    pub fn statefulset(&self, namespace: &str, name: &str, replicas: i64) {
        self.insert("statefulsets", namespace, workload(name, replicas, false));
        self.settle();
    }

    /// Lets the controller finish every rollout it can.
    fn settle(&self) {
        let mut store = self.store.lock().expect("store");
        for _ in 0..64 {
            if !store.progress() {
                break;
            }
        }
    }

    /// The object, as stored now.
    pub fn get(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        self.store
            .lock()
            .expect("store")
            .objects
            .get(&(plural.into(), namespace.into(), name.into()))
            .cloned()
    }

    /// Changes an object as someone else would (a new resourceVersion).
    pub fn edit(&self, plural: &str, namespace: &str, name: &str, change: impl FnOnce(&mut Value)) {
        let key = (plural.to_string(), namespace.to_string(), name.to_string());
        let mut store = self.store.lock().expect("store");
        let mut object = store.objects.get(&key).cloned().expect("object to edit");
        change(&mut object);
        store.put(&key, object, "MODIFIED");
        drop(store);
        self.changed.notify_waiters();
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.store.lock().expect("store").requests.clone()
    }

    /// The requests that changed something (not GET).
    pub fn writes(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method != "GET")
            .collect()
    }

    /// The requests made with one method (`PATCH`, `PUT`, ...).
    pub fn requests_of(&self, method: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method)
            .collect()
    }

    /// A kubeconfig pointing at this server, with `namespace` as the default.
    pub fn kubeconfig(&self, dir: &Path, namespace: &str) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: tester\n    namespace: {namespace}\n\
             current-context: fake\nusers:\n- name: tester\n  user:\n    token: fake-cluster-token\n",
            self.addr
        );
        std::fs::write(&path, text).expect("kubeconfig");
        path
    }
}

fn workload(name: &str, replicas: i64, stuck: bool) -> Value {
    let mut labels = json!({"app": name});
    if stuck {
        labels["fake.lazarus.io/stuck"] = json!("true");
    }
    json!({
        "metadata": {"name": name, "labels": labels, "annotations": {"deployment.kubernetes.io/revision": "1"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "app", "image": "app:1"}]}}
        },
        "status": {}
    })
}

/// Splits `/api/v1/namespaces/NS/PLURAL[/NAME]` or `/apis/G/V/namespaces/NS/PLURAL[/NAME]`.
fn route(path: &str) -> Option<(String, String, Option<String>)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match parts.as_slice() {
        ["api", "v1", rest @ ..] => rest,
        ["apis", _, _, rest @ ..] => rest,
        _ => return None,
    };
    match rest {
        ["namespaces", ns, plural] => Some((plural.to_string(), ns.to_string(), None)),
        ["namespaces", ns, plural, name] => {
            Some((plural.to_string(), ns.to_string(), Some(name.to_string())))
        }
        _ => None,
    }
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.replace("%3D", "=").replace("%3d", "="))
    })
}

async fn handle(
    store: Arc<Mutex<Store>>,
    changed: Arc<Notify>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    store.lock().expect("store").requests.push(Recorded {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        content_type: content_type.clone(),
        body: body_json.clone(),
    });
    let Some((plural, ns, name)) = route(&path) else {
        return status(404, "NotFound", format!("the server could not find {path}"));
    };
    let (_, kind) = kind_of(&plural);
    match (method.as_str(), name) {
        ("GET", None) if query_param(&query, "watch").as_deref() == Some("true") => {
            watch(store, changed, plural, ns, &query)
        }
        ("GET", None) => {
            let wanted = query_param(&query, "fieldSelector")
                .and_then(|f| f.strip_prefix("metadata.name=").map(str::to_string));
            let store = store.lock().expect("store");
            let items: Vec<Value> = store
                .objects
                .iter()
                .filter(|(k, _)| {
                    k.0 == plural && k.1 == ns && wanted.as_ref().is_none_or(|w| &k.2 == w)
                })
                .map(|(_, v)| v.clone())
                .collect();
            json_response(&json!({
                "apiVersion": kind_of(&plural).0, "kind": format!("{kind}List"),
                "metadata": {"resourceVersion": store.rv.to_string()}, "items": items
            }))
        }
        ("GET", Some(name)) => {
            match store
                .lock()
                .expect("store")
                .objects
                .get(&(plural.clone(), ns, name.clone()))
            {
                Some(obj) => json_response(obj),
                None => status(404, "NotFound", format!("{plural} \"{name}\" not found")),
            }
        }
        ("POST", None) => {
            let Some(name) = body_json["metadata"]["name"].as_str().map(str::to_string) else {
                return status(422, "Invalid", "metadata.name is required".into());
            };
            let key = (plural.clone(), ns, name.clone());
            let mut s = store.lock().expect("store");
            if s.objects.contains_key(&key) {
                return status(
                    409,
                    "AlreadyExists",
                    format!("{plural} \"{name}\" already exists"),
                );
            }
            let created = s.put(&key, body_json, "ADDED");
            drop(s);
            changed.notify_waiters();
            (
                StatusCode::CREATED,
                [("content-type", "application/json")],
                created.to_string(),
            )
                .into_response()
        }
        ("PUT", Some(name)) => {
            let key = (plural.clone(), ns, name.clone());
            let mut s = store.lock().expect("store");
            let Some(current) = s.objects.get(&key) else {
                return status(404, "NotFound", format!("{plural} \"{name}\" not found"));
            };
            let sent = body_json["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("");
            let now = current["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if !sent.is_empty() && sent != now {
                return status(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {plural} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                    ),
                );
            }
            let written = s.put(&key, body_json, "MODIFIED");
            drop(s);
            changed.notify_waiters();
            json_response(&written)
        }
        ("PATCH", Some(name)) => {
            let key = (plural.clone(), ns, name.clone());
            let mut s = store.lock().expect("store");
            let Some(mut object) = s.objects.get(&key).cloned() else {
                return status(404, "NotFound", format!("{plural} \"{name}\" not found"));
            };
            if !content_type.contains("merge-patch+json") {
                return status(
                    415,
                    "UnsupportedMediaType",
                    format!("patch type {content_type} is not served here"),
                );
            }
            merge(&mut object, &body_json);
            let written = s.put(&key, object, "MODIFIED");
            drop(s);
            changed.notify_waiters();
            json_response(&written)
        }
        ("DELETE", Some(name)) => {
            let key = (plural.clone(), ns, name.clone());
            let mut s = store.lock().expect("store");
            let Some(current) = s.objects.get(&key).cloned() else {
                return status(404, "NotFound", format!("{plural} \"{name}\" not found"));
            };
            let wanted = body_json["preconditions"]["resourceVersion"]
                .as_str()
                .unwrap_or("");
            if !wanted.is_empty() && current["metadata"]["resourceVersion"] != wanted {
                return status(
                    409,
                    "Conflict",
                    format!("Precondition failed for {plural} \"{name}\": resourceVersion changed"),
                );
            }
            s.rv += 1;
            let rv = s.rv;
            s.objects.remove(&key);
            s.events.push((rv, key, "DELETED", current.clone()));
            drop(s);
            changed.notify_waiters();
            json_response(
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
            )
        }
        _ => status(
            405,
            "MethodNotAllowed",
            format!("{method} {path} is not served here"),
        ),
    }
}

/// A watch: every change after the given resourceVersion, as it happens, until the
/// request's timeout.
fn watch(
    store: Arc<Mutex<Store>>,
    changed: Arc<Notify>,
    plural: String,
    ns: String,
    query: &str,
) -> Response {
    let wanted = query_param(query, "fieldSelector")
        .and_then(|f| f.strip_prefix("metadata.name=").map(str::to_string));
    let from: u64 = query_param(query, "resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let limit = query_param(query, "timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(290u64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(limit);
    let state = (store, changed, from, plural, ns, wanted);
    let stream = futures::stream::unfold(
        state,
        move |(store, changed, last, plural, ns, wanted)| async move {
            loop {
                let signal = Arc::clone(&changed);
                let notified = signal.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let batch: Vec<(u64, String)> = store
                    .lock()
                    .expect("store")
                    .events
                    .iter()
                    .filter(|(rv, k, _, _)| {
                        *rv > last
                            && k.0 == plural
                            && k.1 == ns
                            && wanted.as_ref().is_none_or(|w| &k.2 == w)
                    })
                    .map(|(rv, _, kind, obj)| {
                        (*rv, format!("{}\n", json!({"type": kind, "object": obj})))
                    })
                    .collect();
                if let Some((rv, _)) = batch.last() {
                    let rv = *rv;
                    let text: String = batch.into_iter().map(|(_, t)| t).collect();
                    return Some((
                        Ok::<_, std::io::Error>(Bytes::from(text)),
                        (store, changed, rv, plural, ns, wanted),
                    ));
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    return None;
                }
            }
        },
    );
    (
        [("content-type", "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}
