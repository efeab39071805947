//! `http_check`: poll a URL until it answers with the expected status (and, optionally, a
//! body containing some text) — the seed's "30 attempts, 10 s intervals".

use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::inputs::{self, duration, lenient_u64};
use super::web::{client, redact_url};
use crate::engine::{Activity, ActivityContext, ActivityError, ActivitySpec, InputSpec, Progress};

static SPEC: ActivitySpec = ActivitySpec {
    name: "http_check",
    summary: "poll a URL until it returns the expected status (and body text)",
    inputs: &[
        InputSpec {
            name: "url",
            required: true,
            help: "URL to GET",
        },
        InputSpec {
            name: "attempts",
            required: false,
            help: "polls before giving up (default 30)",
        },
        InputSpec {
            name: "interval",
            required: false,
            help: "wait between polls (default \"10s\")",
        },
        InputSpec {
            name: "expect_status",
            required: false,
            help: "HTTP status that counts as healthy (default 200)",
        },
        InputSpec {
            name: "body_contains",
            required: false,
            help: "text the body must contain",
        },
        InputSpec {
            name: "request_timeout",
            required: false,
            help: "limit for one request (default \"5s\")",
        },
    ],
    outputs: &["status", "attempts", "elapsed_seconds"],
};

fn default_attempts() -> u64 {
    30
}
fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_status() -> u64 {
    200
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inputs {
    url: String,
    #[serde(default = "default_attempts", deserialize_with = "lenient_u64")]
    attempts: u64,
    #[serde(default = "default_interval", deserialize_with = "duration")]
    interval: Duration,
    #[serde(default = "default_status", deserialize_with = "lenient_u64")]
    expect_status: u64,
    body_contains: Option<String>,
    #[serde(default = "default_request_timeout", deserialize_with = "duration")]
    request_timeout: Duration,
}

/// The `http_check` activity.
pub struct HttpCheck;

#[async_trait]
impl Activity for HttpCheck {
    fn spec(&self) -> &'static ActivitySpec {
        &SPEC
    }

    async fn run(&self, ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: Inputs = inputs::parse("http_check", inputs)?;
        let url = reqwest::Url::parse(&inputs.url).map_err(|e| {
            ActivityError::permanent(format!(
                "http_check: bad url {}: {e}",
                redact_url(&inputs.url)
            ))
        })?;
        let shown = redact_url(url.as_str());
        let client = client(inputs.request_timeout)?;
        let attempts = inputs.attempts.max(1);
        let started = Instant::now();
        let mut last = String::from("no answer yet");
        for attempt in 1..=attempts {
            let outcome = tokio::select! {
                r = client.get(url.clone()).send() => r,
                _ = ctx.cancellation().cancelled() => {
                    return Err(ActivityError::cancelled("health check interrupted"));
                }
            };
            match outcome {
                Ok(response) => {
                    let status = u64::from(response.status().as_u16());
                    let body = match &inputs.body_contains {
                        Some(_) => response.text().await.unwrap_or_default(),
                        None => String::new(),
                    };
                    let body_ok = inputs
                        .body_contains
                        .as_ref()
                        .is_none_or(|needle| body.contains(needle.as_str()));
                    if status == inputs.expect_status && body_ok {
                        return Ok(json!({
                            "status": status,
                            "attempts": attempt,
                            "elapsed_seconds": started.elapsed().as_secs_f64(),
                        }));
                    }
                    last = if status == inputs.expect_status {
                        format!(
                            "HTTP {status}, but the body lacks \"{}\"",
                            inputs.body_contains.as_deref().unwrap_or_default()
                        )
                    } else {
                        format!("HTTP {status} (want {})", inputs.expect_status)
                    };
                }
                Err(e) => {
                    last = if e.is_timeout() {
                        format!("no answer within {:?}", inputs.request_timeout)
                    } else if e.is_connect() {
                        "connection refused or unreachable".to_string()
                    } else {
                        format!("request failed: {}", super::web::describe(e))
                    };
                }
            }
            ctx.progress(Progress {
                done: attempt,
                total: Some(attempts),
                unit: "attempts".into(),
                message: Some(format!("{shown}: {last}")),
            });
            if attempt < attempts {
                tokio::select! {
                    _ = tokio::time::sleep(inputs.interval) => {}
                    _ = ctx.cancellation().cancelled() => {
                        return Err(ActivityError::cancelled("health check interrupted"));
                    }
                }
            }
        }
        Err(ActivityError::retryable(format!(
            "{shown} not healthy after {attempts} attempts over {:.0}s: {last}",
            started.elapsed().as_secs_f64()
        )))
    }
}
