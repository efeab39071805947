//! Pointing the application at the restored database inside Kubernetes, and back.
//!
//! Three places an application finds its database: a Service (its selector, or its
//! `externalName`), a ConfigMap key, or a Secret key. A cut-over reads the object, changes
//! that one thing and writes it back conditioned on the resourceVersion it read. Its undo
//! writes the previous value back only if the object is still exactly as the cut-over left
//! it (same resourceVersion): a change someone made meanwhile is never overwritten — the
//! undo refuses and says what it found.
//!
//! A key's previous value (a connection string, often with its password) never leaves the
//! cluster: it is kept in a companion Secret (`NAME-lazarus-undo-RUN`) before the key is
//! written, the undo reads it back and deletes it, and the journal holds only its name and
//! the values with their password hidden. A retried cut-over finds the companion and so
//! still knows the value from before the first attempt.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};

use super::rollout::FIELD_MANAGER;
use super::{K8sError, valid_name};
use crate::pg::conninfo;

/// Which object holds the database location, and which part of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Place {
    /// A Service's pod selector.
    ServiceSelector(String),
    /// An `ExternalName` Service's DNS name.
    ServiceExternalName(String),
    /// A key of a ConfigMap.
    ConfigMapKey(String, String),
    /// A key of a Secret.
    SecretKey(String, String),
}

impl Place {
    /// Reads `service/NAME`, `configmap/NAME` or `secret/NAME`; `key` is needed for the
    /// last two, `external` picks a Service's `externalName` over its selector.
    pub fn parse(object: &str, key: &str, external: bool) -> Result<Self, K8sError> {
        let Some((kind, name)) = object.trim().split_once('/') else {
            return Err(K8sError::Invalid(format!(
                "\"{object}\" does not name an object; use service/NAME, configmap/NAME or secret/NAME"
            )));
        };
        if !valid_name(name) {
            return Err(K8sError::Invalid(format!(
                "\"{name}\" is not a valid Kubernetes object name"
            )));
        }
        let name = name.to_string();
        let needs_key = |kind: &str| {
            if key.trim().is_empty() {
                Err(K8sError::Invalid(format!(
                    "a {kind} cut-over needs the key that holds the database location (e.g. DATABASE_URL)"
                )))
            } else {
                Ok(key.trim().to_string())
            }
        };
        Ok(match kind.to_ascii_lowercase().as_str() {
            "service" | "svc" if external => Self::ServiceExternalName(name),
            "service" | "svc" => Self::ServiceSelector(name),
            "configmap" | "cm" => Self::ConfigMapKey(name, needs_key("ConfigMap")?),
            "secret" => Self::SecretKey(name, needs_key("Secret")?),
            other => {
                return Err(K8sError::Invalid(format!(
                    "\"{other}\" cannot hold a database location; use service, configmap or secret"
                )));
            }
        })
    }

    fn object(&self) -> String {
        match self {
            Self::ServiceSelector(n) | Self::ServiceExternalName(n) => format!("service/{n}"),
            Self::ConfigMapKey(n, _) => format!("configmap/{n}"),
            Self::SecretKey(n, _) => format!("secret/{n}"),
        }
    }

    fn part(&self) -> String {
        match self {
            Self::ServiceSelector(_) => "its selector".into(),
            Self::ServiceExternalName(_) => "its externalName".into(),
            Self::ConfigMapKey(_, k) | Self::SecretKey(_, k) => format!("key {k}"),
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.object(), self.part())
    }
}

/// What to write: a whole value, or only the database of the connection string already
/// there (every other byte kept — the password never passes through Lazarus's inputs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewValue {
    /// The value as given (a selector `k=v,k2=v2`, a DNS name, or a key's whole text).
    Whole(String),
    /// Replace the database name in the connection string the key holds.
    Dbname(String),
}

/// What a cut-over changed: enough for its undo, and no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Where.
    pub place: Place,
    /// The namespace.
    pub namespace: String,
    /// A Service's previous selector or externalName (a key's is in `companion`).
    pub previous: Option<String>,
    /// The value before, as it may be shown: a password hidden, a Secret's not at all.
    pub shown_previous: String,
    /// The value after, as it may be shown.
    pub shown_current: String,
    /// The resourceVersion the cut-over left: the undo proceeds only from this one.
    pub resource_version: String,
    /// For a key: the companion Secret holding the previous value.
    pub companion: Option<String>,
}

/// A ConfigMap or a Secret: an object with text under keys.
trait Keyed:
    kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + Serialize
    + fmt::Debug
{
    /// `configmap` or `secret`.
    const KIND: &'static str;
    /// The text under `key`: `None` when absent, `Some(Err)` when it is not text.
    fn text(&self, key: &str) -> Option<Result<String, ()>>;
    /// Its keys, for a message.
    fn keys(&self) -> Vec<String>;
    /// Sets the text under `key`.
    fn set(&mut self, key: &str, text: String);
    /// A value as it may be shown.
    fn shown(text: &str) -> String;
}

impl Keyed for ConfigMap {
    const KIND: &'static str = "configmap";
    fn text(&self, key: &str) -> Option<Result<String, ()>> {
        self.data.as_ref()?.get(key).cloned().map(Ok)
    }
    fn keys(&self) -> Vec<String> {
        self.data.iter().flat_map(|d| d.keys().cloned()).collect()
    }
    fn set(&mut self, key: &str, text: String) {
        self.data
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_string(), text);
    }
    fn shown(text: &str) -> String {
        conninfo::redacted(text)
    }
}

impl Keyed for Secret {
    const KIND: &'static str = "secret";
    fn text(&self, key: &str) -> Option<Result<String, ()>> {
        let ByteString(bytes) = self.data.as_ref()?.get(key)?.clone();
        Some(String::from_utf8(bytes).map_err(|_| ()))
    }
    fn keys(&self) -> Vec<String> {
        self.data.iter().flat_map(|d| d.keys().cloned()).collect()
    }
    fn set(&mut self, key: &str, text: String) {
        self.data
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_string(), ByteString(text.into_bytes()));
    }
    fn shown(_: &str) -> String {
        "(secret)".into()
    }
}

/// The text under `key`, or why there is none.
fn key_text<K: Keyed>(
    object: &K,
    name: &str,
    key: &str,
    namespace: &str,
) -> Result<String, K8sError> {
    match object.text(key) {
        Some(Ok(text)) => Ok(text),
        Some(Err(())) => Err(K8sError::Invalid(format!(
            "{}/{name} key {key} is not text; give the whole new value",
            K::KIND
        ))),
        None => Err(K8sError::Invalid(format!(
            "{}/{name} in namespace {namespace} has no key {key} (it has: {})",
            K::KIND,
            object.keys().join(", ")
        ))),
    }
}

/// Refuses a cut-over that would leave the value as it is (and so traffic where it was).
fn would_change(place: &Place, previous: &str, wanted: &str) -> Result<(), K8sError> {
    if previous == wanted {
        return Err(K8sError::Invalid(format!(
            "{place} already holds that value: the cut-over would change nothing and traffic would stay where it is. \
             For a restored server (point-in-time recovery) give the new value with -p k8s_cutover_value"
        )));
    }
    Ok(())
}

/// Cuts a ConfigMap or Secret key over, keeping the previous value in a companion Secret.
async fn apply_keyed<K: Keyed>(
    client: &Client,
    namespace: &str,
    place: &Place,
    name: &str,
    key: &str,
    value: &NewValue,
    run: &str,
) -> Result<Applied, K8sError> {
    let api = Api::<K>::namespaced(client.clone(), namespace);
    let mut object = get(&api, name, namespace, K::KIND).await?;
    let found = key_text(&object, name, key, namespace)?;
    let companion = companion_name(name, run);
    // The previous value goes to the companion first: if this attempt dies after the write
    // below, a retry finds it there instead of reading the new value as the old one.
    let (previous, fresh) = keep_in_companion(client, namespace, &companion, key, &found).await?;
    let wanted = new_text(&previous, value, place)?;
    if let Err(e) = would_change(place, &previous, &wanted) {
        if fresh {
            drop_companion(
                &Api::namespaced(client.clone(), namespace),
                &companion,
                namespace,
            )
            .await?;
        }
        return Err(e);
    }
    let resource_version = if found == wanted {
        // An earlier attempt's write landed.
        object.meta().resource_version.clone().unwrap_or_default()
    } else {
        object.set(key, wanted.clone());
        replace(&api, name, &object, namespace, K::KIND).await?
    };
    Ok(Applied {
        place: place.clone(),
        namespace: namespace.to_string(),
        previous: None,
        shown_previous: K::shown(&previous),
        shown_current: K::shown(&wanted),
        resource_version,
        companion: Some(companion),
    })
}

/// Puts a key's previous value back from its companion Secret, if the object is still as
/// the cut-over left it.
async fn undo_keyed<K: Keyed>(
    client: &Client,
    applied: &Applied,
    name: &str,
    key: &str,
    changed: &impl Fn(Option<String>, Option<String>) -> K8sError,
) -> Result<(), K8sError> {
    let namespace = applied.namespace.as_str();
    let companion = applied.companion.clone().ok_or_else(|| {
        K8sError::Invalid(format!(
            "the cut-over of {} does not say where it kept the old value; set it back by hand",
            applied.place
        ))
    })?;
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let api = Api::<K>::namespaced(client.clone(), namespace);
    let keeper = get(&secrets, &companion, namespace, "secret").await;
    let mut object = get(&api, name, namespace, K::KIND).await?;
    let untouched =
        object.meta().resource_version.as_deref() == Some(applied.resource_version.as_str());
    let previous = match keeper {
        Ok(keeper) => key_text(&keeper, &companion, key, namespace).map_err(|_| {
            K8sError::Invalid(format!(
                "secret/{companion} in namespace {namespace} lacks key {key}: the old value of {} is lost; set it by hand",
                applied.place
            ))
        })?,
        // Put back and cleaned up by an earlier attempt of this undo.
        Err(K8sError::NotFound(_)) if !untouched => return Ok(()),
        Err(K8sError::NotFound(_)) => {
            return Err(K8sError::Invalid(format!(
                "the old value of {} was kept in secret/{companion} in namespace {namespace}, which is gone; \
                 it cannot be put back: set it by hand",
                applied.place
            )));
        }
        Err(e) => return Err(e),
    };
    if !untouched {
        let found = object.text(key).and_then(Result::ok);
        if found.as_deref() == Some(previous.as_str()) {
            return drop_companion(&secrets, &companion, namespace).await;
        }
        return Err(changed(
            object.meta().resource_version.clone(),
            found.map(|f| K::shown(&f)),
        ));
    }
    object.set(key, previous);
    replace(&api, name, &object, namespace, K::KIND)
        .await
        .map_err(|e| conflict_is_change(e, changed))?;
    drop_companion(&secrets, &companion, namespace).await
}

/// Changes the place to the new value, conditioned on the object not changing meanwhile.
/// `run` names a key's companion Secret. `remember` is given a Service's previous value
/// before it is overwritten, and `remembered` is what an earlier attempt of this cut-over
/// was given: a retry after the write landed finds the new value in place and reports the
/// remembered one as previous, instead of writing again. A cut-over that would change
/// nothing is refused.
pub async fn apply<Hook, Fut>(
    client: &Client,
    namespace: &str,
    place: &Place,
    value: &NewValue,
    run: &str,
    remembered: Option<String>,
    remember: Hook,
) -> Result<Applied, K8sError>
where
    Hook: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), K8sError>>,
{
    match place {
        Place::ServiceSelector(name) | Place::ServiceExternalName(name) => {
            let api = Api::<Service>::namespaced(client.clone(), namespace);
            let what = format!("read service/{name} in namespace {namespace}");
            let mut service = api
                .get(name)
                .await
                .map_err(|e| K8sError::from_kube(&what, e))?;
            let spec = service.spec.get_or_insert_with(Default::default);
            let wanted = whole(value, place)?;
            let found = if matches!(place, Place::ServiceSelector(_)) {
                selector_text(spec.selector.as_ref())
            } else {
                spec.external_name.clone().unwrap_or_default()
            };
            if let Some(previous) = remembered.filter(|_| {
                found == wanted
                    || (matches!(place, Place::ServiceSelector(_))
                        && parse_selector(&wanted).ok().as_ref() == spec.selector.as_ref())
            }) {
                return Ok(Applied {
                    place: place.clone(),
                    namespace: namespace.to_string(),
                    shown_previous: previous.clone(),
                    previous: Some(previous),
                    shown_current: wanted,
                    resource_version: service
                        .metadata
                        .resource_version
                        .clone()
                        .unwrap_or_default(),
                    companion: None,
                });
            }
            would_change(place, &found, &wanted)?;
            if matches!(place, Place::ServiceSelector(_))
                && parse_selector(&wanted).ok().as_ref() == spec.selector.as_ref()
            {
                would_change(place, &wanted, &wanted)?;
            }
            let previous = if matches!(place, Place::ServiceSelector(_)) {
                let previous = found;
                spec.selector = Some(parse_selector(&wanted)?);
                previous
            } else {
                external_name_service(spec, name)?;
                spec.external_name = Some(wanted.clone());
                found
            };
            remember(previous.clone()).await?;
            let after = replace(&api, name, &service, namespace, "service").await?;
            Ok(Applied {
                place: place.clone(),
                namespace: namespace.to_string(),
                shown_previous: previous.clone(),
                previous: Some(previous),
                shown_current: wanted,
                resource_version: after,
                companion: None,
            })
        }
        Place::ConfigMapKey(name, key) => {
            apply_keyed::<ConfigMap>(client, namespace, place, name, key, value, run).await
        }
        Place::SecretKey(name, key) => {
            apply_keyed::<Secret>(client, namespace, place, name, key, value, run).await
        }
    }
}

/// Checks, before anything else happens, that the place exists and can be cut over;
/// returns what was found, in words (never a value).
pub async fn check(client: &Client, namespace: &str, place: &Place) -> Result<String, K8sError> {
    match place {
        Place::ServiceSelector(name) | Place::ServiceExternalName(name) => {
            let api = Api::<Service>::namespaced(client.clone(), namespace);
            let service = get(&api, name, namespace, "service").await?;
            if matches!(place, Place::ServiceExternalName(_)) {
                external_name_service(&service.spec.unwrap_or_default(), name)?;
            }
        }
        Place::ConfigMapKey(name, key) => {
            check_keyed::<ConfigMap>(client, namespace, name, key).await?
        }
        Place::SecretKey(name, key) => check_keyed::<Secret>(client, namespace, name, key).await?,
    }
    Ok(format!(
        "{place} in namespace {namespace} is there to cut over"
    ))
}

/// The key is there, and text.
async fn check_keyed<K: Keyed>(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<(), K8sError> {
    let object = get(
        &Api::<K>::namespaced(client.clone(), namespace),
        name,
        namespace,
        K::KIND,
    )
    .await?;
    key_text(&object, name, key, namespace).map(|_| ())
}

/// Refuses an externalName cut-over of a Service that is not of type ExternalName.
fn external_name_service(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    name: &str,
) -> Result<(), K8sError> {
    match spec.type_.as_deref() {
        Some("ExternalName") => Ok(()),
        other => Err(K8sError::Invalid(format!(
            "service/{name} is of type {}, not ExternalName: cut over its selector instead",
            other.unwrap_or("ClusterIP")
        ))),
    }
}

/// Puts the previous value back, if the object is still as the cut-over left it.
pub async fn undo(client: &Client, applied: &Applied) -> Result<(), K8sError> {
    let namespace = applied.namespace.as_str();
    let changed = |now: Option<String>, found: Option<String>| {
        K8sError::Conflict(format!(
            "{} in namespace {namespace} was changed after the cut-over (resourceVersion {} then, {} now){}; \
             Lazarus does not overwrite someone else's change. Look at it, and if the old value is still \
             right put it back by hand{}",
            applied.place,
            applied.resource_version,
            now.unwrap_or_else(|| "unknown".into()),
            found
                .map(|f| format!(": it now holds {f}"))
                .unwrap_or_default(),
            match &applied.companion {
                Some(c) => format!(" (the old value is kept in secret/{c})"),
                None => format!(" (it was {})", applied.shown_previous),
            },
        ))
    };
    match &applied.place {
        Place::ServiceSelector(name) | Place::ServiceExternalName(name) => {
            let api = Api::<Service>::namespaced(client.clone(), namespace);
            let mut service = get(&api, name, namespace, "service").await?;
            let spec = service.spec.get_or_insert_with(Default::default);
            let (found, previous) = if matches!(applied.place, Place::ServiceSelector(_)) {
                (
                    selector_text(spec.selector.as_ref()),
                    applied.previous.clone().unwrap_or_default(),
                )
            } else {
                (
                    spec.external_name.clone().unwrap_or_default(),
                    applied.previous.clone().unwrap_or_default(),
                )
            };
            if service.metadata.resource_version.as_deref()
                != Some(applied.resource_version.as_str())
            {
                if Some(&found) == applied.previous.as_ref() {
                    return Ok(());
                }
                return Err(changed(
                    service.metadata.resource_version.clone(),
                    Some(found),
                ));
            }
            if matches!(applied.place, Place::ServiceSelector(_)) {
                spec.selector = Some(parse_selector(&previous)?);
            } else {
                spec.external_name = Some(previous);
            }
            replace(&api, name, &service, namespace, "service")
                .await
                .map_err(|e| conflict_is_change(e, &changed))?;
        }
        Place::ConfigMapKey(name, key) => {
            undo_keyed::<ConfigMap>(client, applied, name, key, &changed).await?;
        }
        Place::SecretKey(name, key) => {
            undo_keyed::<Secret>(client, applied, name, key, &changed).await?;
        }
    }
    Ok(())
}

/// The companion Secret's name for an object and run (a valid object name, at most 253).
fn companion_name(name: &str, run: &str) -> String {
    let run: String = run
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let mut out = format!("{name}-lazarus-undo-{run}");
    out.truncate(253);
    out.trim_end_matches('-').to_string()
}

/// Stores the previous value in the companion Secret, or — when this run already made
/// it — returns the value kept there; and whether it was made now.
async fn keep_in_companion(
    client: &Client,
    namespace: &str,
    companion: &str,
    key: &str,
    previous: &str,
) -> Result<(String, bool), K8sError> {
    let api = Api::<Secret>::namespaced(client.clone(), namespace);
    let keeper = Secret {
        metadata: ObjectMeta {
            name: Some(companion.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "lazarus".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            key.to_string(),
            ByteString(previous.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    };
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    match api.create(&params, &keeper).await {
        Ok(_) => Ok((previous.to_string(), true)),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let kept = get(&api, companion, namespace, "secret").await?;
            kept.data
                .and_then(|d| d.get(key).cloned())
                .and_then(|ByteString(b)| String::from_utf8(b).ok())
                .map(|kept| (kept, false))
                .ok_or_else(|| {
                    K8sError::Invalid(format!(
                        "secret/{companion} in namespace {namespace} exists without key {key}; delete it and retry"
                    ))
                })
        }
        Err(e) => Err(K8sError::from_kube(
            format!("create secret/{companion} in namespace {namespace}"),
            e,
        )),
    }
}

async fn drop_companion(
    api: &Api<Secret>,
    companion: &str,
    namespace: &str,
) -> Result<(), K8sError> {
    match api.delete(companion, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(K8sError::from_kube(
            format!("delete secret/{companion} in namespace {namespace}"),
            e,
        )),
    }
}

async fn get<K>(api: &Api<K>, name: &str, namespace: &str, kind: &str) -> Result<K, K8sError>
where
    K: Clone + serde::de::DeserializeOwned + fmt::Debug,
{
    api.get(name)
        .await
        .map_err(|e| K8sError::from_kube(format!("read {kind}/{name} in namespace {namespace}"), e))
}

/// Writes the object back with the resourceVersion it was read at; returns the new one.
async fn replace<K>(
    api: &Api<K>,
    name: &str,
    object: &K,
    namespace: &str,
    kind: &str,
) -> Result<String, K8sError>
where
    K: Clone + serde::de::DeserializeOwned + Serialize + fmt::Debug + kube::Resource,
{
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    let written = api.replace(name, &params, object).await.map_err(|e| {
        K8sError::from_kube(format!("update {kind}/{name} in namespace {namespace}"), e)
    })?;
    Ok(written.meta().resource_version.clone().unwrap_or_default())
}

/// A 409 on the undo's write means someone changed the object between its read and write.
fn conflict_is_change(
    error: K8sError,
    changed: &impl Fn(Option<String>, Option<String>) -> K8sError,
) -> K8sError {
    match error {
        K8sError::Conflict(_) => changed(None, None),
        other => other,
    }
}

fn whole(value: &NewValue, place: &Place) -> Result<String, K8sError> {
    match value {
        NewValue::Whole(v) => Ok(v.clone()),
        NewValue::Dbname(_) => Err(K8sError::Invalid(format!(
            "{place}: a database name can only be written into a connection string in a ConfigMap or Secret key; give the value"
        ))),
    }
}

fn new_text(previous: &str, value: &NewValue, place: &Place) -> Result<String, K8sError> {
    match value {
        NewValue::Whole(v) => Ok(v.clone()),
        NewValue::Dbname(db) => conninfo::with_dbname(previous, db)
            .map_err(|e| K8sError::Invalid(format!("{place}: {e}"))),
    }
}

/// A selector as `k=v,k2=v2` (sorted, as the map holds it).
fn selector_text(selector: Option<&BTreeMap<String, String>>) -> String {
    selector
        .map(|s| {
            s.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn parse_selector(text: &str) -> Result<BTreeMap<String, String>, K8sError> {
    let mut out = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(K8sError::Invalid(format!(
                "selector \"{text}\": \"{pair}\" is not key=value"
            )));
        };
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    if out.is_empty() {
        return Err(K8sError::Invalid(
            "an empty selector would send the Service's traffic nowhere; give key=value pairs"
                .into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_parsed_with_their_keys() {
        assert_eq!(
            Place::parse("configmap/app-db", "DATABASE_URL", false).unwrap(),
            Place::ConfigMapKey("app-db".into(), "DATABASE_URL".into())
        );
        assert_eq!(
            Place::parse("svc/db", "", true).unwrap(),
            Place::ServiceExternalName("db".into())
        );
        let err = Place::parse("secret/app", "", false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs the key"), "{err}");
        assert!(Place::parse("pod/x", "k", false).is_err());
    }

    #[test]
    fn selectors_round_trip_and_an_empty_one_is_refused() {
        let s = parse_selector("app=pg, role=restored").unwrap();
        assert_eq!(selector_text(Some(&s)), "app=pg,role=restored");
        assert!(parse_selector(" ").is_err());
        assert!(parse_selector("app").is_err());
    }

    #[test]
    fn companion_names_are_valid_object_names() {
        let name = companion_name("app-db", "disaster-recovery-ab12CD");
        assert_eq!(name, "app-db-lazarus-undo-disaster-recovery-ab12cd");
        assert!(valid_name(&name));
    }
}
