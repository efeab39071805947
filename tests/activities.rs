//! The product activities on real processes and a real HTTP server.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use common::{Sandbox, kill9, process_with};
use tokio::sync::Mutex;

/// An HTTP server on 127.0.0.1 in its own thread; returns its address.
fn serve(app: Router) -> SocketAddr {
    common::http_server(app)
}

#[test]
fn command_journals_its_output_tail_and_honours_env_and_cwd() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path().join("sub")).unwrap();
    sb.write(
        "cmd.toml",
        r#"
name = "cmd"
[params]
greeting = { default = "hello" }
[[steps]]
id = "say"
activity = "command"
with = { shell = 'pwd; echo "$GREETING from $LAZARUS_STEP_ID"; seq 1 5000 >&2', cwd = "sub", env = { GREETING = "${params.greeting}" }, tail_bytes = 64 }
[[steps]]
id = "use"
activity = "command"
with = { argv = ["sh", "-c", "echo got: $0", "${steps.say.exit_code}"] }
"#,
    );
    sb.ok(&[
        "run",
        "cmd.toml",
        "--id",
        "o1",
        "--reason",
        "test",
        "-p",
        "greeting=hi",
    ]);
    let report = sb.status("o1");
    let say = &Sandbox::step(&report, "say")["output"];
    let stdout = say["stdout"].as_str().unwrap();
    assert!(stdout.ends_with("/sub\nhi from say"), "{stdout}");
    let stderr = say["stderr"].as_str().unwrap();
    assert!(
        stderr.starts_with('…') && stderr.ends_with("4999\n5000"),
        "tail only: {stderr}"
    );
    assert!(stderr.len() <= 70, "{}", stderr.len());
    assert_eq!(Sandbox::step(&report, "use")["output"]["stdout"], "got: 0");
}

#[test]
fn command_processes_never_outlive_a_killed_runner() {
    let sb = Sandbox::new();
    sb.write(
        "bg.toml",
        r#"
name = "bg"
[[steps]]
id = "spawn"
activity = "command"
with = { shell = 'sleep 523.5 & sleep 524.5 & echo ready > ready; wait' }
"#,
    );
    let mut runner = sb.spawn(&["run", "bg.toml", "--id", "k1", "--reason", "test"]);
    sb.wait_for("the command to start", Duration::from_secs(20), || {
        !sb.read("ready").is_empty()
    });
    assert!(process_with("sleep 523.5"));
    kill9(&mut runner);
    sb.wait_for(
        "the step's processes to die",
        Duration::from_secs(5),
        || !process_with("sleep 523.5") && !process_with("sleep 524.5"),
    );
}

#[test]
fn http_check_polls_until_healthy() {
    let hits = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/health",
            get(|State(hits): State<Arc<AtomicUsize>>| async move {
                if hits.fetch_add(1, Ordering::SeqCst) < 2 {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting")
                } else {
                    (StatusCode::OK, "database: ok")
                }
            }),
        )
        .with_state(Arc::clone(&hits));
    let addr = serve(app);
    let sb = Sandbox::new();
    sb.write(
        "health.toml",
        &format!(
            r#"
name = "health"
[params]
attempts = {{ default = "5" }}
[[steps]]
id = "health"
activity = "http_check"
with = {{ url = "http://{addr}/health", attempts = "${{params.attempts}}", interval = "100ms", expect_status = 200, body_contains = "ok" }}
"#
        ),
    );
    sb.ok(&["run", "health.toml", "--id", "h1", "--reason", "test"]);
    let report = sb.status("h1");
    let out = &Sandbox::step(&report, "health")["output"];
    assert_eq!(out["status"], 200);
    assert_eq!(out["attempts"], 3);
}

#[test]
fn http_check_that_never_passes_fails_with_the_last_answer() {
    let app = Router::new().route(
        "/health",
        get(|| async { (StatusCode::BAD_GATEWAY, "down") }),
    );
    let addr = serve(app);
    let sb = Sandbox::new();
    sb.write(
        "health.toml",
        &format!(
            r#"
name = "health"
[[steps]]
id = "health"
activity = "http_check"
with = {{ url = "http://{addr}/health", attempts = 3, interval = "50ms" }}
"#
        ),
    );
    let out = sb.run(&["run", "health.toml", "--id", "h2", "--reason", "test"]);
    assert_eq!(out.status.code(), Some(3));
    let error = sb.status("h2")["error"].as_str().unwrap().to_string();
    assert!(
        error.contains(&format!("http://{addr}/… not healthy after 3 attempts")),
        "{error}"
    );
    assert!(error.contains("HTTP 502 (want 200)"), "{error}");
}

#[test]
fn notify_posts_a_summary_and_a_dead_webhook_is_not_fatal_unless_asked() {
    let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let app = Router::new()
        .route(
            "/hook/secret-token",
            post(
                |State(received): State<Arc<Mutex<Vec<serde_json::Value>>>>,
                 axum::Json(body): axum::Json<serde_json::Value>| async move {
                    received.lock().await.push(body);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(Arc::clone(&received));
    let addr = serve(app);
    let sb = Sandbox::new();
    sb.write(
        "notify.toml",
        &format!(
            r#"
name = "notify"
[[steps]]
id = "work"
activity = "command"
with = {{ shell = "true" }}
[[steps]]
id = "tell"
activity = "notify"
with = {{ url = "http://{addr}/hook/secret-token", message = "recovered" }}
[[steps]]
id = "dead"
activity = "notify"
with = {{ url = "http://127.0.0.1:9/hook/other-secret", timeout = "2s" }}
"#
        ),
    );
    sb.ok(&["run", "notify.toml", "--id", "n1", "--reason", "test"]);
    let bodies = received.blocking_lock().clone();
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0]["run"], "n1");
    assert_eq!(bodies[0]["message"], "recovered");
    assert_eq!(bodies[0]["steps"][0]["status"], "completed");
    assert!(
        bodies[0]["steps"][0].get("output").is_none(),
        "no outputs leave home"
    );
    let report = sb.status("n1");
    let dead = &Sandbox::step(&report, "dead")["output"];
    assert_eq!(dead["delivered"], false);
    let error = dead["error"].as_str().unwrap();
    assert!(error.contains("http://127.0.0.1:9/…"), "{error}");
    assert!(
        !report.to_string().contains("secret"),
        "webhook paths stay out of the journal"
    );

    sb.write(
        "fatal.toml",
        r#"
name = "fatal"
[[steps]]
id = "dead"
activity = "notify"
with = { url = "http://127.0.0.1:9/x", fatal = true, timeout = "2s" }
"#,
    );
    let out = sb.run(&["run", "fatal.toml", "--id", "n2", "--reason", "test"]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn a_command_with_a_lot_of_output_does_not_stall() {
    let sb = Sandbox::new();
    sb.write(
        "noisy.toml",
        r#"
name = "noisy"
[[steps]]
id = "noisy"
activity = "command"
timeout = "60s"
with = { shell = 'seq 1 300000; seq 1 300000 >&2' }
"#,
    );
    sb.ok(&["run", "noisy.toml", "--id", "y1", "--reason", "test"]);
    let report = sb.status("y1");
    let out = &Sandbox::step(&report, "noisy")["output"];
    assert!(out["stdout"].as_str().unwrap().ends_with("299999\n300000"));
}

#[test]
fn a_daemon_holding_the_output_pipes_does_not_hang_the_step() {
    let sb = Sandbox::new();
    sb.write(
        "daemon.toml",
        r#"
name = "daemon"
[[steps]]
id = "start"
activity = "command"
timeout = "60s"
with = { shell = 'setsid sleep 611.5 & sleep 0.5; echo started' }
"#,
    );
    let started = std::time::Instant::now();
    sb.ok(&["run", "daemon.toml", "--id", "d1", "--reason", "test"]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    let report = sb.status("d1");
    let stdout = Sandbox::step(&report, "start")["output"]["stdout"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(stdout.starts_with("started"), "{stdout}");
    assert!(stdout.contains("output no longer read"), "{stdout}");
    let _ = std::process::Command::new("pkill")
        .args(["-f", "sleep 611.5"])
        .status();
}

#[test]
fn a_command_stops_at_its_own_timeout() {
    let sb = Sandbox::new();
    sb.write(
        "slow.toml",
        r#"
name = "slow"
[[steps]]
id = "slow"
activity = "command"
with = { shell = 'sleep 433.25', timeout = "500ms" }
"#,
    );
    let out = sb.run(&["run", "slow.toml", "--id", "w1", "--reason", "test"]);
    assert_eq!(out.status.code(), Some(3), "{}", common::text(&out));
    let error = sb.status("w1")["error"].as_str().unwrap().to_string();
    assert!(
        error.starts_with("command timed out after 500ms"),
        "{error}"
    );
    assert!(!process_with("sleep 433.25"));
}

#[test]
fn restore_refuses_an_unflushed_archive_from_before_a_restart() {
    let sb = Sandbox::new();
    sb.write("archive.dump", "PGDMP and whatever followed");
    sb.write(
        "restore.toml",
        r#"
name = "restore"
[[steps]]
id = "restore"
activity = "restore"
with = { file = "archive.dump", database = "scratch", unflushed_in_boot = "00000000-0000-0000-0000-000000000000" }
"#,
    );
    let out = sb.run(&["run", "restore.toml", "--id", "r1", "--reason", "test"]);
    assert_eq!(out.status.code(), Some(3));
    let error = sb.status("r1")["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("archive.dump was written just before this machine restarted"),
        "{error}"
    );
    assert!(error.contains("Start a new recovery"), "{error}");
}
