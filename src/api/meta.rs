//! About the server and its caller: who am I, what can be run, the audit trail.

use axum::Json;
use axum::extract::{OriginalUri, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::ApiState;
use super::auth::Caller;
use super::error::ApiError;
use crate::ops::workflows::describe_all;

/// `GET /api/whoami`: the caller's identity and role (what the page shows and hides by).
pub async fn whoami(Caller(actor): Caller) -> Json<Value> {
    Json(json!({
        "identity": actor.identity,
        "role": actor.role,
        "via": actor.via.to_string(),
    }))
}

/// `GET /api/workflows`: every workflow with its parameters, help and step ids.
pub async fn workflows(State(state): State<ApiState>, Caller(_): Caller) -> Json<Value> {
    Json(json!({ "workflows": describe_all(state.ops.engine().registry()) }))
}

/// `GET /api/audit`: the audit trail, oldest first (operators and admins).
pub async fn audit(
    State(state): State<ApiState>,
    Caller(actor): Caller,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "entries": state.ops.audit_entries(&actor)? })))
}

/// `GET /api/audit/verify`: the chain recomputed and compared with every store's copy.
pub async fn audit_verify(
    State(state): State<ApiState>,
    Caller(actor): Caller,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(state.ops.audit_verify(&actor).await?)))
}

/// `GET /api/alerts`: configured webhooks, events waiting, failed attempts.
pub async fn alerts(State(state): State<ApiState>, Caller(_): Caller) -> Json<Value> {
    Json(json!(state.ops.alert_state()))
}

/// `GET /metrics`: the Prometheus text format (any token; Prometheus sends it with
/// `authorization: credentials_file`).
pub async fn metrics(State(state): State<ApiState>, Caller(_): Caller) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.ops.metrics().await,
    )
}

/// Anything else: 404 naming the path and where the list of endpoints is.
pub async fn not_found(OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no endpoint {}; GET /api/openapi.json describes every endpoint",
            uri.path()
        ),
    )
}
