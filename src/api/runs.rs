//! Runs: list, report, start, and the control actions on one run.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiState;
use super::auth::Caller;
use super::error::{ApiError, Body, Params};
use crate::ops::SubmitRequest;
use crate::ops::runs::{RunFilter, page};
use crate::runbooks;

/// `GET /api/runs`: a page of runs, newest first.
pub async fn list(
    State(state): State<ApiState>,
    Caller(_): Caller,
    Params(filter): Params<RunFilter>,
) -> Result<Json<Value>, ApiError> {
    let runs = state.ops.runs()?;
    let page = page(runs, &filter).map_err(|e| ApiError::bad_request(e.0))?;
    Ok(Json(json!(page)))
}

/// `GET /api/runs/{run}`: a run's report.
pub async fn report(
    State(state): State<ApiState>,
    Caller(_): Caller,
    Path(run): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(state.ops.report(Some(&run))?)))
}

/// The body of `POST /api/runs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    /// A workflow name: `./workflows/NAME.toml` beside `serve`, or a built-in runbook.
    workflow: String,
    /// Parameter values.
    #[serde(default)]
    params: BTreeMap<String, String>,
    /// Why: required, kept with the run and in the audit trail.
    reason: String,
    /// Steps to halt before.
    #[serde(default)]
    halt_before: Vec<String>,
    /// Steps to halt after.
    #[serde(default)]
    halt_after: Vec<String>,
    /// A run id of the caller's choosing.
    id: Option<String>,
}

/// `POST /api/runs`: starts a run as the caller.
pub async fn start(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Body(body): Body<StartBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if body.reason.trim().is_empty() {
        return Err(ApiError::bad_request(
            "a reason is required: say why this run is started (it is kept with the run and in the audit trail)",
        ));
    }
    if body.workflow.contains('/') || body.workflow.ends_with(".toml") {
        return Err(ApiError::bad_request(format!(
            "\"{}\" is a path; over the API, name a workflow (`GET /api/workflows` lists them)",
            body.workflow
        )));
    }
    let located = runbooks::locate(&body.workflow)
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))?;
    let run = state.ops.submit(
        &actor,
        SubmitRequest {
            workflow_text: located.text,
            workflow_source: located.source,
            params: body.params,
            reason: body.reason,
            operator: actor.identity.clone(),
            halt_before: body.halt_before,
            halt_after: body.halt_after,
            id: body.id,
        },
    )?;
    Ok((StatusCode::CREATED, Json(json!({ "run": run }))))
}

/// The body of `POST /api/runs/{run}/halt`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaltBody {
    /// Stop the running step at once instead of at the next boundary.
    #[serde(default)]
    now: bool,
}

/// The body of `POST /api/runs/{run}/approve`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    /// A note kept with the approval.
    comment: Option<String>,
}

/// The body of `POST /api/runs/{run}/rollback`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// Why: required.
    reason: String,
}

fn done(message: String) -> Json<Value> {
    Json(json!({ "message": message }))
}

/// An optional JSON body: absent or empty means the defaults.
fn or_default<T: Default + serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "unreadable JSON body ({e}); GET /api/openapi.json lists the fields of this endpoint"
        ))
    })
}

/// `POST /api/runs/{run}/halt`.
pub async fn halt(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(run): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: HaltBody = or_default(&body)?;
    Ok(done(state.ops.halt(&actor, &run, body.now)?))
}

/// `POST /api/runs/{run}/approve`: the approver is the caller.
pub async fn approve(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(run): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: ApproveBody = or_default(&body)?;
    Ok(done(state.ops.approve(&actor, &run, body.comment)?))
}

/// `POST /api/runs/{run}/resume`.
pub async fn resume(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(run): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(done(state.ops.resume(&actor, &run, None).await?))
}

/// `POST /api/runs/{run}/rollback`.
pub async fn rollback(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(run): Path<String>,
    Body(body): Body<RollbackBody>,
) -> Result<Json<Value>, ApiError> {
    if body.reason.trim().is_empty() {
        return Err(ApiError::bad_request(
            "a reason is required: say why the run is rolled back",
        ));
    }
    Ok(done(state.ops.rollback(&actor, &run, &body.reason)?))
}

/// `POST /api/runs/{run}/cancel`.
pub async fn cancel(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(run): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(done(state.ops.cancel(&actor, &run)?))
}
