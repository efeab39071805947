//! `GET /api/runs/{run}/events`: a run's step events and live progress as Server-Sent
//! Events. Step events carry their journal number as the event id, so a client that
//! reconnects with `Last-Event-ID` (or `?after=N`) gets exactly what it missed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::ApiState;
use super::auth::Caller;
use super::error::{ApiError, Params};
use crate::engine::{Progress, Update};
use crate::ops::events::since;

/// The query of the events endpoint.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Replay events numbered after this (what `Last-Event-ID` says, for clients that
    /// cannot set it).
    after: Option<u64>,
}

/// Rate and time left of each step's progress, from the first sample this stream saw.
#[derive(Default)]
struct Rates {
    first: HashMap<String, (Instant, u64)>,
}

impl Rates {
    fn describe(&mut self, step: &str, progress: &Progress) -> Value {
        let (t0, d0) = *self
            .first
            .entry(step.to_string())
            .or_insert((Instant::now(), progress.done));
        let seconds = t0.elapsed().as_secs_f64();
        let rate =
            (seconds > 0.5 && progress.done > d0).then(|| (progress.done - d0) as f64 / seconds);
        let eta = match (rate, progress.total) {
            (Some(rate), Some(total)) if rate > 0.0 => {
                Some(total.saturating_sub(progress.done) as f64 / rate)
            }
            _ => None,
        };
        json!({
            "step": step,
            "done": progress.done,
            "total": progress.total,
            "unit": progress.unit,
            "message": progress.message,
            "rate_per_second": rate,
            "eta_seconds": eta,
        })
    }
}

fn data(kind: &str, value: &Value) -> Event {
    Event::default().event(kind).data(value.to_string())
}

/// `GET /api/runs/{run}/events`.
pub async fn stream(
    State(state): State<ApiState>,
    Caller(_): Caller,
    Path(run): Path<String>,
    Params(query): Params<EventsQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .or(query.after)
        .unwrap_or(0);
    let engine = std::sync::Arc::clone(state.ops.engine());
    // Subscribe before reading the journal, so nothing falls between the two.
    let mut updates = engine.subscribe();
    let first = since(&engine, &run, after)?;
    let (tx, rx) = mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let mut sent = after;
        let mut rates = Rates::default();
        let send_new = |events: Vec<Value>, sent: &mut u64| {
            let mut out = Vec::new();
            for event in events {
                let seq = event["seq"].as_u64().unwrap_or(0);
                *sent = (*sent).max(seq);
                out.push(data("step", &event).id(seq.to_string()));
            }
            out
        };
        let status = |engine: &crate::engine::Engine| {
            engine.report(&run).ok().map(
                |r| json!({ "status": r.status, "active": r.active, "next_action": r.next_action }),
            )
        };
        let mut outbox = send_new(first, &mut sent);
        if let Some(s) = status(&engine) {
            let active = s["active"] == true;
            outbox.push(data("status", &s));
            if !active {
                outbox.push(data("end", &s));
            }
        }
        for event in outbox.drain(..) {
            if tx.send(event).await.is_err() {
                return;
            }
        }
        if engine.report(&run).is_ok_and(|r| !r.active) {
            return;
        }
        loop {
            let mut end = false;
            match updates.recv().await {
                Ok(Update::Changed { run: r }) if r == run => {
                    outbox = send_new(since(&engine, &run, sent).unwrap_or_default(), &mut sent);
                    outbox.extend(status(&engine).map(|s| data("status", &s)));
                }
                Ok(Update::Progress {
                    run: r,
                    step,
                    progress,
                }) if r == run => {
                    outbox = vec![data("progress", &rates.describe(&step, &progress))];
                }
                Ok(Update::Stopped { run: r, error }) if r == run => {
                    outbox = send_new(since(&engine, &run, sent).unwrap_or_default(), &mut sent);
                    let mut s = status(&engine).unwrap_or_else(|| json!({}));
                    s["error"] = json!(error);
                    outbox.push(data("end", &s));
                    end = true;
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    outbox = send_new(since(&engine, &run, sent).unwrap_or_default(), &mut sent);
                }
                Err(broadcast::error::RecvError::Closed) => {
                    outbox = vec![data("end", &json!({ "error": "the owner is stopping" }))];
                    end = true;
                }
            }
            for event in outbox.drain(..) {
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            if end {
                return;
            }
        }
    });
    let events = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok(event), rx))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
