//! Alerts to a real HTTP webhook that is down for the first deliveries and up later: every
//! event arrives once, the runs never waited for it, and the failed deliveries show in
//! `status`, the audit trail and `/metrics` — without the webhook's URL anywhere.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use common::serve::{Server, token};
use common::{Sandbox, text};
use serde_json::Value;

const BREAKS: &str = r#"
name = "breaks"
[[steps]]
id = "broken"
activity = "command"
with = { shell = 'exit 3' }
retry = { attempts = 1 }
"#;

const GATED: &str = r#"
name = "gated"
[[steps]]
id = "gate"
activity = "approve"
with = { prompt = "go on?" }

[[steps]]
id = "after"
activity = "command"
with = { shell = 'true' }
"#;

#[derive(Default)]
struct Hook {
    up: bool,
    attempts: u32,
    received: Vec<Value>,
}

type Shared = Arc<Mutex<Hook>>;

async fn receive(State(hook): State<Shared>, body: axum::Json<Value>) -> StatusCode {
    let mut hook = hook.lock().unwrap();
    hook.attempts += 1;
    if !hook.up {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    hook.received.push(body.0);
    StatusCode::OK
}

/// The webhook, on 127.0.0.1 in a thread of its own.
fn webhook(hook: Shared) -> std::net::SocketAddr {
    common::http_server(
        Router::new()
            .route("/hook/{secret}", post(receive))
            .with_state(hook),
    )
}

#[test]
fn a_webhook_down_at_first_gets_every_event_once_and_no_run_waits_for_it() {
    let hook: Shared = Arc::default();
    let addr = webhook(Arc::clone(&hook));
    let sb = Sandbox::new();
    sb.write(
        "lazarus.toml",
        "[[stores]]\nname = \"local\"\nkind = \"local\"\npath = \"store\"\n\n[[alerts]]\nname = \"oncall\"\nurl_env = \"LAZARUS_TEST_HOOK\"\nevents = [\"run_halted\", \"waiting_approval\", \"run_succeeded\"]\n",
    );
    sb.write("workflows/breaks.toml", BREAKS);
    sb.write("workflows/gated.toml", GATED);
    let url = format!("http://{addr}/hook/SECRET-HOOK-TOKEN");
    let server = Server::start_with(&sb, &[("LAZARUS_TEST_HOOK", &url)]);

    // The runs go on while the webhook refuses.
    let out = sb.run(&["run", "breaks", "--id", "b1", "--reason", "alerts"]);
    assert_eq!(out.status.code(), Some(3), "halted: {}", text(&out));
    let mut follower = sb.spawn(&["run", "gated", "--id", "g1", "--reason", "alerts"]);
    sb.wait_for("g1 to wait for approval", Duration::from_secs(20), || {
        let out = sb.run(&["status", "g1", "--json"]);
        out.status.success()
            && serde_json::from_slice::<Value>(&out.stdout)
                .is_ok_and(|r| r["status"] == "waiting_approval")
    });
    sb.ok(&["approve", "g1", "--by", "carol"]);
    let started = Instant::now();
    sb.wait_for("g1 to succeed", Duration::from_secs(20), || {
        sb.status("g1")["status"] == "succeeded"
    });
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the run did not wait for the webhook"
    );
    let _ = follower.wait();
    assert!(hook.lock().unwrap().received.is_empty());
    sb.wait_for("failed attempts", Duration::from_secs(20), || {
        hook.lock().unwrap().attempts >= 3
    });
    let status = sb.ok(&["status", "g1"]);
    assert!(status.contains("not delivered yet"), "{status}");
    assert!(
        status.contains("alert oncall: last attempt: the webhook answered HTTP 503"),
        "{status}"
    );

    // Up again: each event arrives, once.
    hook.lock().unwrap().up = true;
    sb.wait_for("every event", Duration::from_secs(90), || {
        hook.lock().unwrap().received.len() >= 3
    });
    std::thread::sleep(Duration::from_secs(3));
    let received = hook.lock().unwrap().received.clone();
    let mut events: Vec<String> = received
        .iter()
        .map(|b| {
            format!(
                "{} {}",
                b["event"].as_str().unwrap(),
                b["run"].as_str().unwrap()
            )
        })
        .collect();
    events.sort();
    assert_eq!(
        events,
        ["run_halted b1", "run_succeeded g1", "waiting_approval g1"]
    );
    let halted = received
        .iter()
        .find(|b| b["event"] == "run_halted")
        .unwrap();
    assert!(
        halted["text"]
            .as_str()
            .unwrap()
            .starts_with("Lazarus: run b1 (breaks) halted"),
        "{halted}"
    );
    assert!(halted["next_action"].is_string());

    // Visible in the audit trail and the metrics.
    let audit: Value = serde_json::from_str(&sb.ok(&["audit", "--json"])).unwrap();
    let alerts: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["action"]
                .as_str()
                .unwrap_or_default()
                .starts_with("alert ")
        })
        .collect();
    assert!(
        alerts.iter().any(|e| e["outcome"] == "refused"
            && e["action"] == "alert run_halted of run b1 to alert oncall"),
        "{alerts:?}"
    );
    assert!(alerts.iter().any(|e| {
        e["outcome"] == "accepted"
            && e["message"]
                .as_str()
                .unwrap()
                .starts_with("delivered after")
    }));
    let viewer = token(&sb, "prometheus", "viewer");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let metrics = rt.block_on(async {
        reqwest::Client::new()
            .get(format!("{}/metrics", server.base))
            .bearer_auth(&viewer)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let failures: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lazarus_alert_delivery_failures_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(failures >= 3.0, "{metrics}");
    assert!(
        metrics.contains("lazarus_runs{workflow=\"gated\",status=\"succeeded\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("lazarus_step_duration_seconds_count{workflow=\"gated\",step=\"after\"} 1"),
        "{metrics}"
    );

    let served = server.stop();
    for output in [served, status, audit.to_string(), metrics] {
        assert!(
            !output.contains("SECRET-HOOK-TOKEN"),
            "the webhook URL leaked"
        );
    }
}

#[test]
fn serve_raises_an_exceeded_rpo_and_a_backup_too_old_once_each() {
    let hook: Shared = Arc::default();
    hook.lock().unwrap().up = true;
    let addr = webhook(Arc::clone(&hook));
    let archiving = common::wal::Archiving::start(&[]);
    archiving.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1)");
    archiving.switch_and_wait();
    let sb = Sandbox::new();
    let config = format!(
        "{}\n[watch]\nevery = \"1s\"\n\n[[alerts]]\nname = \"watch\"\nurl_env = \"LAZARUS_TEST_HOOK\"\nrpo = \"1s\"\nbackup_max_age = \"2s\"\n",
        std::fs::read_to_string(&archiving.config).unwrap()
    );
    let file = sb.write("lazarus.toml", &config);
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = sb.run(&["backup", "--database", "postgres"]);
    assert!(out.status.success(), "{}", text(&out));
    let url = format!("http://{addr}/hook/x");
    let server = Server::start_with(&sb, &[("LAZARUS_TEST_HOOK", &url)]);
    let events = || -> Vec<String> {
        let mut e: Vec<String> = hook
            .lock()
            .unwrap()
            .received
            .iter()
            .map(|b| b["event"].as_str().unwrap_or_default().to_string())
            .collect();
        e.sort();
        e
    };
    sb.wait_for("both watch alerts", Duration::from_secs(60), || {
        events().len() >= 2
    });
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(events(), ["backup_too_old", "rpo_exceeded"], "each once");
    let received = hook.lock().unwrap().received.clone();
    let rpo = received
        .iter()
        .find(|b| b["event"] == "rpo_exceeded")
        .unwrap();
    assert_eq!(rpo["archive"], "main");
    assert!(rpo["lag_seconds"].as_f64().unwrap() > 1.0, "{rpo}");
    let old = received
        .iter()
        .find(|b| b["event"] == "backup_too_old")
        .unwrap();
    assert_eq!(old["database"], "postgres");
    assert!(
        old["text"]
            .as_str()
            .unwrap()
            .contains("lazarus backup --database postgres")
    );
    server.stop();
}
