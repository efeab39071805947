//! Halting: before a step, after a step, at the next boundary, and now (mid-step) — then
//! resuming to the end.

mod common;

use std::time::Duration;

use common::{Sandbox, process_with};

const WORKFLOW: &str = r#"
name = "halts"
[params]
dir = { default = "." }

[[steps]]
id = "a"
activity = "command"
with = { shell = 'echo a >> log' }

[[steps]]
id = "slow"
activity = "command"
with = { shell = ': marker-${run.id}; echo slow-started >> log; while [ ! -f go ]; do sleep 0.05; done; sleep 0.2; echo slow-done >> log' }

[[steps]]
id = "b"
activity = "command"
with = { shell = 'echo b >> log' }
"#;

fn sandbox() -> Sandbox {
    let sb = Sandbox::new();
    sb.write("halts.toml", WORKFLOW);
    sb
}

#[test]
fn halt_before_stops_before_the_step_and_resume_finishes() {
    let sb = sandbox();
    sb.write("go", "");
    let out = sb.run(&[
        "run",
        "halts.toml",
        "--id",
        "h1",
        "--reason",
        "test",
        "--halt-before",
        "slow",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "halted exit status; {}",
        common::text(&out)
    );
    let report = sb.status("h1");
    assert_eq!(report["status"], "halted");
    assert_eq!(report["halted"]["step"], "slow");
    assert_eq!(report["halted"]["reason"], "halt_before");
    assert_eq!(sb.read("log"), "a\n");
    assert_eq!(Sandbox::step(&report, "slow")["status"], "pending");

    sb.ok(&["resume", "h1"]);
    assert_eq!(sb.read("log"), "a\nslow-started\nslow-done\nb\n");
    let report = sb.status("h1");
    assert_eq!(report["status"], "succeeded");
    assert_eq!(report["halt_before"][0], "slow");
}

#[test]
fn halt_after_stops_after_the_step_and_resume_finishes() {
    let sb = sandbox();
    sb.write("go", "");
    let out = sb.run(&[
        "run",
        "halts.toml",
        "--id",
        "h2",
        "--reason",
        "test",
        "--halt-after",
        "a",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", common::text(&out));
    let report = sb.status("h2");
    assert_eq!(report["halted"]["reason"], "halt_after");
    assert_eq!(report["halted"]["step"], "a");
    assert_eq!(Sandbox::step(&report, "a")["status"], "completed");
    assert_eq!(sb.read("log"), "a\n");
    sb.ok(&["resume", "h2"]);
    assert_eq!(sb.read("log"), "a\nslow-started\nslow-done\nb\n");
}

#[test]
fn halt_request_waits_for_the_step_boundary() {
    let sb = sandbox();
    let mut runner = sb.spawn(&["run", "halts.toml", "--id", "h3", "--reason", "test"]);
    sb.wait_for("slow step to start", Duration::from_secs(20), || {
        sb.read("log").contains("slow-started")
    });
    let message = sb.ok(&["halt", "h3"]);
    assert!(message.contains("next step boundary"), "{message}");
    sb.write("go", "");
    let status = runner.wait().unwrap();
    assert_eq!(status.code(), Some(3));
    let report = sb.status("h3");
    assert_eq!(report["status"], "halted");
    assert_eq!(report["halted"]["reason"], "requested");
    assert_eq!(report["halted"]["step"], "b");
    assert_eq!(Sandbox::step(&report, "slow")["status"], "completed");
    assert!(!sb.read("log").contains("\nb\n"));
    sb.ok(&["resume", "h3"]);
    assert!(sb.read("log").ends_with("slow-done\nb\n"));
}

#[test]
fn halt_now_interrupts_the_running_step_which_runs_again_on_resume() {
    let sb = sandbox();
    let mut runner = sb.spawn(&["run", "halts.toml", "--id", "h4", "--reason", "test"]);
    sb.wait_for("slow step to start", Duration::from_secs(20), || {
        sb.read("log").contains("slow-started")
    });
    let message = sb.ok(&["halt", "h4", "--now"]);
    assert!(message.contains("halting now"), "{message}");
    let status = runner.wait().unwrap();
    assert_eq!(status.code(), Some(3), "runner exits as halted");
    let report = sb.status("h4");
    assert_eq!(report["status"], "halted");
    assert_eq!(report["halted"]["reason"], "interrupted");
    assert_eq!(report["halted"]["step"], "slow");
    let slow = Sandbox::step(&report, "slow");
    assert_eq!(slow["status"], "failed");
    assert_eq!(slow["attempts"], 1);
    assert!(
        !process_with("marker-h4"),
        "the interrupted command must be gone"
    );
    assert!(!sb.read("log").contains("slow-done"));

    sb.write("go", "");
    sb.ok(&["resume", "h4"]);
    let report = sb.status("h4");
    assert_eq!(report["status"], "succeeded");
    assert_eq!(Sandbox::step(&report, "slow")["attempts"], 2);
    assert_eq!(
        sb.read("log"),
        "a\nslow-started\nslow-started\nslow-done\nb\n"
    );
}

#[test]
fn halt_asked_for_during_a_failing_attempt_stops_the_retries() {
    let sb = Sandbox::new();
    sb.write(
        "flaky.toml",
        r#"
name = "flaky"
[[steps]]
id = "flaky"
activity = "command"
retry = { attempts = 5, backoff = "200ms" }
with = { shell = 'echo try >> log; while [ ! -f go ]; do sleep 0.05; done; rm go; exit 1' }
"#,
    );
    let mut runner = sb.spawn(&["run", "flaky.toml", "--id", "h5", "--reason", "test"]);
    sb.wait_for("the first attempt", Duration::from_secs(20), || {
        sb.read("log") == "try\n"
    });
    sb.ok(&["halt", "h5"]);
    sb.write("go", "");
    assert_eq!(runner.wait().unwrap().code(), Some(3));
    let report = sb.status("h5");
    assert_eq!(report["status"], "halted");
    assert_eq!(
        Sandbox::step(&report, "flaky")["attempts"],
        1,
        "no retry after the halt"
    );
    assert_eq!(sb.read("log"), "try\n");
}

#[test]
fn halt_asked_for_after_the_last_step_lets_the_run_succeed() {
    let sb = sandbox();
    let mut runner = sb.spawn(&["run", "halts.toml", "--id", "h6", "--reason", "test"]);
    sb.wait_for("slow step to start", Duration::from_secs(20), || {
        sb.read("log").contains("slow-started")
    });
    sb.write("go", "");
    // The halt lands somewhere between here and the end; the run never halts at "".
    let _ = sb.run(&["halt", "h6"]);
    let _ = runner.wait();
    let report = sb.status("h6");
    if report["status"] == "halted" {
        assert_ne!(report["halted"]["step"], "", "{report}");
        sb.ok(&["resume", "h6"]);
    }
    assert_eq!(sb.status("h6")["status"], "succeeded");
}
