//! The `approve` step: a durable wait that survives the owner's death.

mod common;

use std::time::Duration;

use common::{Sandbox, kill9};

const WORKFLOW: &str = r#"
name = "gated"
[[steps]]
id = "before"
activity = "command"
with = { shell = 'echo before >> log' }

[[steps]]
id = "gate"
activity = "approve"
with = { prompt = "cut traffic over to the restored database?" }

[[steps]]
id = "after"
activity = "command"
with = { shell = 'echo after >> log' }
"#;

fn waiting(sb: &Sandbox, run: &str) -> bool {
    let out = sb.run(&["status", run, "--json"]);
    out.status.success()
        && serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .is_ok_and(|r| r["status"] == "waiting_approval")
}

#[test]
fn approval_survives_a_restart_of_the_owner() {
    let sb = Sandbox::new();
    sb.write("gated.toml", WORKFLOW);
    let mut owner = sb.spawn(&["run", "gated.toml", "--id", "g1", "--reason", "test"]);
    sb.wait_for("the approval wait", Duration::from_secs(20), || {
        waiting(&sb, "g1")
    });
    let report = sb.status("g1");
    assert_eq!(
        report["active"], true,
        "the owner answers status over its socket"
    );
    assert_eq!(
        Sandbox::step(&report, "gate")["approval_prompt"],
        "cut traffic over to the restored database?"
    );
    kill9(&mut owner);

    // No owner now: the wait is still on record.
    let report = sb.status("g1");
    assert_eq!(report["status"], "waiting_approval");
    assert_eq!(report["active"], false);

    let message = sb.ok(&["approve", "g1", "--by", "alice", "--comment", "looks right"]);
    assert!(message.contains("approved by alice"), "{message}");
    assert!(message.contains("lazarus resume g1"), "{message}");

    sb.ok(&["resume", "g1"]);
    let report = sb.status("g1");
    assert_eq!(report["status"], "succeeded");
    let gate = Sandbox::step(&report, "gate");
    assert_eq!(gate["output"]["approved_by"], "alice");
    assert_eq!(gate["output"]["comment"], "looks right");
    assert_eq!(sb.read("log"), "before\nafter\n");
}

#[test]
fn approval_through_a_live_owner_releases_the_wait() {
    let sb = Sandbox::new();
    sb.write("gated.toml", WORKFLOW);
    let mut owner = sb.spawn(&["run", "gated.toml", "--id", "g2", "--reason", "test"]);
    sb.wait_for("the approval wait", Duration::from_secs(20), || {
        waiting(&sb, "g2")
    });
    let out = sb.run(&["approve", "g2", "--by", ""]);
    assert!(!out.status.success(), "an approver must be named");
    sb.ok(&["approve", "g2", "--by", "bob"]);
    let status = owner.wait().unwrap();
    assert!(
        status.success(),
        "the owner finishes the run after approval"
    );
    assert_eq!(sb.read("log"), "before\nafter\n");
    let out = sb.run(&["approve", "g2", "--by", "bob"]);
    assert!(
        common::text(&out).contains("already succeeded"),
        "{}",
        common::text(&out)
    );
}
