//! Retry with exponential backoff, and timeouts that kill a hanging command.

mod common;

use chrono::DateTime;
use common::{Sandbox, process_with};

fn millis(text: &serde_json::Value) -> i64 {
    DateTime::parse_from_rfc3339(text.as_str().expect("timestamp"))
        .expect("rfc3339")
        .timestamp_millis()
}

#[test]
fn retry_backoff_doubles_up_to_the_cap() {
    let sb = Sandbox::new();
    sb.write(
        "flaky.toml",
        r#"
name = "flaky"
[[steps]]
id = "flaky"
activity = "command"
retry = { attempts = 4, backoff = "400ms", max_backoff = "600ms" }
with = { shell = 'n=$(cat n 2>/dev/null || echo 0); n=$((n+1)); echo $n > n; [ $n -ge 4 ] || { echo "not yet ($n)" >&2; exit 1; }' }
"#,
    );
    sb.ok(&["run", "flaky.toml", "--id", "f1", "--reason", "test"]);
    let report = sb.status("f1");
    let step = Sandbox::step(&report, "flaky");
    assert_eq!(step["attempts"], 4);
    let log = step["attempt_log"].as_array().unwrap();
    assert_eq!(
        log[0]["error"],
        "shell command exited with status 1: not yet (1)"
    );
    let expected = [400, 600, 600];
    for (i, want) in expected.iter().enumerate() {
        let gap = millis(&log[i + 1]["started_at"]) - millis(&log[i]["ended_at"]);
        assert!(
            gap >= want - 5 && gap <= want + 300,
            "wait before attempt {} was {gap} ms, want about {want} ms",
            i + 2
        );
    }
}

#[test]
fn exhausted_attempts_halt_with_the_last_error() {
    let sb = Sandbox::new();
    sb.write(
        "never.toml",
        r#"
name = "never"
[[steps]]
id = "never"
activity = "command"
retry = { attempts = 2, backoff = "10ms" }
with = { argv = ["sh", "-c", "echo nope >&2; exit 7"] }
"#,
    );
    let out = sb.run(&["run", "never.toml", "--id", "n1", "--reason", "test"]);
    assert_eq!(out.status.code(), Some(3));
    let report = sb.status("n1");
    assert_eq!(
        report["error"],
        "sh exited with status 7: nope (after 2 attempts)"
    );
}

#[test]
fn hanging_command_is_killed_by_its_timeout() {
    let sb = Sandbox::new();
    sb.write(
        "hang.toml",
        r#"
name = "hang"
[[steps]]
id = "hang"
activity = "command"
timeout = "1s"
with = { shell = 'sleep 417.25; echo never >> log' }
"#,
    );
    let started = std::time::Instant::now();
    let out = sb.run(&["run", "hang.toml", "--id", "t1", "--reason", "test"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(3), "{}", common::text(&out));
    assert!(took.as_secs_f64() < 8.0, "timeout took {took:?}");
    let report = sb.status("t1");
    assert_eq!(report["error"], "timed out after 1.0s (after 1 attempt)");
    assert!(
        !process_with("sleep 417.25"),
        "the hanging command must be killed"
    );
    assert_eq!(sb.read("log"), "");
}

#[test]
fn missing_program_fails_at_once_without_retrying() {
    let sb = Sandbox::new();
    sb.write(
        "missing.toml",
        r#"
name = "missing"
[[steps]]
id = "m"
activity = "command"
retry = { attempts = 5, backoff = "1s" }
with = { argv = ["no-such-program-lazarus"] }
"#,
    );
    let out = sb.run(&["run", "missing.toml", "--id", "m1", "--reason", "test"]);
    assert_eq!(out.status.code(), Some(3));
    let report = sb.status("m1");
    let step = Sandbox::step(&report, "m");
    assert_eq!(step["attempts"], 1, "a permanent failure is not retried");
    let error = step["error"].as_str().unwrap();
    assert!(
        error.contains("cannot start \"no-such-program-lazarus\""),
        "{error}"
    );
}
