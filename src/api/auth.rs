//! Who is calling: the bearer token's identity and role, the peer's address; and a caller
//! that keeps presenting wrong tokens is answered more and more slowly.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;

use super::ApiState;
use super::error::ApiError;
use crate::ops::actor::{Actor, Via};

/// Failures from one address before answers slow down.
const FREE_FAILURES: u32 = 3;
/// The longest an answer to a wrong token is held back.
const MAX_DELAY: Duration = Duration::from_secs(8);
/// How long a run of failures is remembered.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// Wrong-token counts per peer address, and when that peer may next be answered.
#[derive(Default)]
pub struct Throttle {
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

/// One peer's run of wrong tokens.
struct Failures {
    count: u32,
    last: Instant,
    /// Answers to this peer's wrong tokens queue behind each other: parallel guesses are
    /// no faster than serial ones.
    not_before: Instant,
}

/// What a wrong token costs its peer: when to answer, and the peer's count so far.
pub struct Penalty {
    /// How long to hold this answer back.
    pub delay: Duration,
    /// Wrong tokens from this peer in the current run of failures.
    pub count: u32,
}

impl Throttle {
    /// Counts a failure from `peer`; says how long to hold the answer back (the delays of
    /// the peer's earlier wrong tokens still pending come first).
    pub fn failed(&self, peer: IpAddr) -> Penalty {
        let Ok(mut map) = self.failures.lock() else {
            return Penalty {
                delay: MAX_DELAY,
                count: u32::MAX,
            };
        };
        map.retain(|_, f| f.last.elapsed() < FORGET_AFTER);
        let now = Instant::now();
        let entry = map.entry(peer).or_insert(Failures {
            count: 0,
            last: now,
            not_before: now,
        });
        entry.count += 1;
        entry.last = now;
        let over = entry.count.saturating_sub(FREE_FAILURES);
        let own = if over == 0 {
            Duration::ZERO
        } else {
            (Duration::from_millis(250) * 2u32.saturating_pow(over.min(6) - 1)).min(MAX_DELAY)
        };
        entry.not_before = entry.not_before.max(now) + own;
        Penalty {
            delay: entry.not_before - now,
            count: entry.count,
        }
    }

    /// Forgets the failures of `peer` (it presented a good token).
    pub fn succeeded(&self, peer: IpAddr) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(&peer);
        }
    }
}

/// The authenticated caller of a request.
pub struct Caller(pub Actor);

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(axum::http::header::AUTHORIZATION)?;
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let Some(token) = bearer(parts) else {
            let hint = if state.tokens.is_empty() {
                "no API token is configured yet: make one with `lazarus token create --name NAME --role viewer|operator|admin`"
            } else {
                "send the header `Authorization: Bearer TOKEN`"
            };
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                format!("this needs an API token; {hint}"),
            ));
        };
        match state.tokens.identify(token) {
            Some((identity, role)) => {
                state.throttle.succeeded(peer.ip());
                Ok(Caller(Actor {
                    identity,
                    role,
                    via: Via::Http {
                        peer: peer.to_string(),
                    },
                }))
            }
            None => {
                let penalty = state.throttle.failed(peer.ip());
                tracing::warn!(peer = %peer, "request with an unknown API token");
                // Audited, but not one entry per guess: the 1st, 2nd, 4th, 8th, ... of a run.
                if penalty.count.is_power_of_two() {
                    state
                        .ops
                        .audit_unknown_token(&peer.to_string(), penalty.count);
                }
                tokio::time::sleep(penalty.delay).await;
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "the API token is not one this server knows (revoked, or mistyped); `lazarus token create` makes a new one",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_slow_down_after_repeated_failures_and_recover_after_success() {
        let t = Throttle::default();
        let peer: IpAddr = [10, 0, 0, 1].into();
        let delays: Vec<Duration> = (0..8).map(|_| t.failed(peer).delay).collect();
        assert_eq!(delays[..3], [Duration::ZERO; 3]);
        assert!(delays[3] > Duration::ZERO && delays[4] > delays[3]);
        assert_eq!(
            t.failed([10, 0, 0, 2].into()).delay,
            Duration::ZERO,
            "per address"
        );
        t.succeeded(peer);
        assert_eq!(t.failed(peer).delay, Duration::ZERO);
    }

    #[test]
    fn parallel_wrong_tokens_from_one_peer_queue_behind_each_other() {
        // 40 guesses sent at once: the last is answered only after every earlier delay.
        let t = Throttle::default();
        let peer: IpAddr = [10, 0, 0, 3].into();
        let last = (0..40).map(|_| t.failed(peer)).last().unwrap();
        assert_eq!(last.count, 40);
        assert!(
            last.delay > Duration::from_secs(200),
            "40 parallel guesses would all be answered within {:?}",
            last.delay
        );
    }
}
