//! The HTTP API and web page of `lazarus serve`: JSON over HTTP, bearer tokens, the same
//! operations as the control socket (`crate::ops`), and the same messages the command line
//! prints.

mod auth;
mod error;
mod events;
mod meta;
mod openapi;
mod page;
mod runs;
mod stores;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::ops::Operations;
use crate::ops::tokens::Tokens;
pub use auth::Throttle;
pub use error::ApiError;

/// The address `serve` listens on unless told otherwise: this host only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7345";

/// What every handler reaches.
#[derive(Clone)]
pub struct ApiState {
    /// The operations.
    pub ops: Arc<Operations>,
    /// The configured tokens.
    pub tokens: Arc<Tokens>,
    /// Slows down callers with wrong tokens.
    pub throttle: Arc<Throttle>,
}

/// Every route.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(page::index))
        .route("/app.js", get(page::script))
        .route("/app.css", get(page::style))
        .route("/api/openapi.json", get(openapi::document))
        .route("/api/whoami", get(meta::whoami))
        .route("/api/workflows", get(meta::workflows))
        .route("/api/audit", get(meta::audit))
        .route("/api/audit/verify", get(meta::audit_verify))
        .route("/api/alerts", get(meta::alerts))
        .route("/metrics", get(meta::metrics))
        .route("/api/runs", get(runs::list).post(runs::start))
        .route("/api/runs/{run}", get(runs::report))
        .route("/api/runs/{run}/events", get(events::stream))
        .route("/api/runs/{run}/halt", post(runs::halt))
        .route("/api/runs/{run}/approve", post(runs::approve))
        .route("/api/runs/{run}/resume", post(runs::resume))
        .route("/api/runs/{run}/rollback", post(runs::rollback))
        .route("/api/runs/{run}/cancel", post(runs::cancel))
        .route("/api/backups", get(stores::backups))
        .route("/api/wal/status", get(stores::wal_status))
        .route("/api/wal/check", get(stores::wal_check))
        .route("/api/pitr/plan", post(stores::pitr_plan))
        .fallback(meta::not_found)
        .with_state(state)
}

/// Serves the API on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: ApiState) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}
