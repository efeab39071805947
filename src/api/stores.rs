//! What the stores hold: backups with their state, the WAL archive and its RPO exposure, and
//! point-in-time plans as dry runs.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiState;
use super::auth::Caller;
use super::error::{ApiError, Body, Params};
use crate::engine::duration::parse_duration;
use crate::ops::wal::WalQuery;
use crate::wal::DEFAULT_ARCHIVE;

/// The query of `GET /api/backups`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupsQuery {
    /// Only this database's backups.
    database: Option<String>,
}

/// `GET /api/backups`: every backup, newest first, with its state (VERIFIED, UNVERIFIED,
/// FAILED), age, size and the RTO its last drill measured.
pub async fn backups(
    State(state): State<ApiState>,
    Caller(_): Caller,
    Params(query): Params<BackupsQuery>,
) -> Result<Json<Value>, ApiError> {
    let mut manifests = state.ops.backups(query.database.as_deref()).await?;
    manifests.reverse();
    let now = chrono::Utc::now();
    let rows: Vec<Value> = manifests
        .into_iter()
        .map(|m| {
            let age = m.age_seconds(now);
            let rto = m.verification.as_ref().and_then(|v| v.restore_seconds);
            let mut row = json!(m);
            row["age_seconds"] = json!(age);
            row["drill_rto_seconds"] = json!(rto);
            row
        })
        .collect();
    Ok(Json(json!({ "backups": rows })))
}

/// The query of `GET /api/wal/status`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusQuery {
    /// The archive (default: the default archive).
    archive: Option<String>,
    /// The RPO target, as a duration ("15m", the default).
    rpo: Option<String>,
}

fn archive(name: Option<String>) -> String {
    name.unwrap_or_else(|| DEFAULT_ARCHIVE.to_string())
}

/// `GET /api/wal/status`: archive lag against the RPO target.
pub async fn wal_status(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Params(query): Params<StatusQuery>,
) -> Result<Json<Value>, ApiError> {
    let rpo = parse_duration(query.rpo.as_deref().unwrap_or("15m"))
        .map_err(|e| ApiError::bad_request(format!("rpo: {e}")))?;
    let answer = state
        .ops
        .wal(
            &actor,
            WalQuery::Status {
                archive: archive(query.archive),
                rpo_seconds: rpo.as_secs_f64(),
            },
        )
        .await?;
    Ok(Json(answer))
}

/// The query of `GET /api/wal/check`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckQuery {
    /// The archive.
    archive: Option<String>,
    /// Check the local index alone.
    #[serde(default)]
    local: bool,
}

/// `GET /api/wal/check`: gaps, timeline history, and whether the stores hold every segment.
pub async fn wal_check(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Params(query): Params<CheckQuery>,
) -> Result<Json<Value>, ApiError> {
    let answer = state
        .ops
        .wal(
            &actor,
            WalQuery::Check {
                archive: archive(query.archive),
                local: query.local,
            },
        )
        .await?;
    Ok(Json(answer))
}

/// The body of `POST /api/pitr/plan`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanBody {
    /// The archive.
    archive: Option<String>,
    /// The target: a time, `lsn:X/Y`, `xid:N`, `name:NAME` or `immediate`.
    to: String,
    /// A timeline; the newest when absent.
    timeline: Option<u32>,
}

/// `POST /api/pitr/plan`: the plan a recovery to a moment would follow — covered window,
/// base backup, WAL chain — without starting anything.
pub async fn pitr_plan(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Body(body): Body<PlanBody>,
) -> Result<Json<Value>, ApiError> {
    let answer = state
        .ops
        .wal(
            &actor,
            WalQuery::Plan {
                archive: archive(body.archive),
                to: body.to,
                timeline: body.timeline,
            },
        )
        .await?;
    Ok(Json(answer))
}
