//! One owner of state/: other invocations talk to it over the control socket; `--detach`
//! hands a run to a background owner; cancel stops a run for good.

mod common;

use std::time::Duration;

use common::{Sandbox, process_with};

const WORKFLOW: &str = r#"
name = "slow"
target = "slow-target"
[[steps]]
id = "wait"
activity = "command"
with = { shell = ': marker-${run.id}; echo started >> log; while [ ! -f go ]; do sleep 0.05; done' }
[[steps]]
id = "done"
activity = "command"
with = { shell = 'echo done >> log' }
"#;

#[test]
fn second_invocation_talks_to_the_owner() {
    let sb = Sandbox::new();
    sb.write("slow.toml", WORKFLOW);
    let mut owner = sb.spawn(&["run", "slow.toml", "--id", "c1", "--reason", "test"]);
    sb.wait_for("the step to start", Duration::from_secs(20), || {
        sb.read("log").contains("started")
    });
    // The store is held by the owner; these go through its socket.
    let report = sb.status("c1");
    assert_eq!(report["status"], "running");
    assert_eq!(report["active"], true);
    assert_eq!(Sandbox::step(&report, "wait")["status"], "running");
    let runs: serde_json::Value = serde_json::from_str(&sb.ok(&["runs", "--json"])).unwrap();
    assert_eq!(runs[0]["id"], "c1");
    assert_eq!(runs[0]["active"], true);
    let human = sb.ok(&["status"]);
    assert!(human.contains("run c1 — running"), "{human}");
    sb.write("go", "");
    assert!(owner.wait().unwrap().success());
    assert_eq!(sb.status("c1")["status"], "succeeded");
}

#[test]
fn detached_run_prints_its_id_and_the_background_owner_leaves_when_idle() {
    let sb = Sandbox::new();
    sb.write("slow.toml", WORKFLOW);
    sb.write("go", "");
    let out = sb.ok(&["run", "slow.toml", "--detach", "--reason", "test"]);
    let run = out.trim().to_string();
    assert!(
        run.starts_with("slow-") && !run.contains(' '),
        "only the id: {out:?}"
    );
    sb.wait_for(
        "the detached run to succeed",
        Duration::from_secs(30),
        || sb.status(&run)["status"] == "succeeded",
    );
    let socket = sb.state().join("control.sock");
    sb.wait_for(
        "the background owner to exit",
        Duration::from_secs(30),
        || !socket.exists(),
    );
    assert_eq!(sb.read("log"), "started\ndone\n");
}

#[test]
fn cancel_stops_a_running_run_for_good_and_frees_its_target() {
    let sb = Sandbox::new();
    sb.write("slow.toml", WORKFLOW);
    let mut owner = sb.spawn(&["run", "slow.toml", "--id", "c3", "--reason", "test"]);
    sb.wait_for("the step to start", Duration::from_secs(20), || {
        sb.read("log").contains("started")
    });
    let message = sb.ok(&["cancel", "c3"]);
    assert!(message.contains("cancelling"), "{message}");
    let status = owner.wait().unwrap();
    assert_eq!(status.code(), Some(4));
    let report = sb.status("c3");
    assert_eq!(report["status"], "cancelled");
    assert_eq!(report["cancelled_by"], "tester");
    assert!(
        !process_with("marker-c3"),
        "the cancelled command must be gone"
    );
    let out = sb.run(&["resume", "c3"]);
    assert!(
        common::text(&out).contains("already been cancelled"),
        "{}",
        common::text(&out)
    );
    sb.write("go", "");
    sb.ok(&[
        "run",
        "slow.toml",
        "--id",
        "c4",
        "--reason",
        "target is free again",
    ]);
}

#[test]
fn unknown_run_is_a_clear_error() {
    let sb = Sandbox::new();
    let out = sb.run(&["status", "nope", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or("")
            .contains("no run \"nope\"; `lazarus runs` lists the runs"),
        "{answer}"
    );
    let out = sb.run(&["halt", "nope"]);
    assert!(common::text(&out).contains("no run \"nope\""));
}

#[test]
fn looking_creates_no_state_and_json_stays_json() {
    let sb = Sandbox::new();
    let out = sb.run(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        answer["error"].as_str().unwrap().contains("does not exist"),
        "{answer}"
    );
    assert_eq!(sb.ok(&["runs", "--json"]).trim(), "[]");
    assert!(
        !sb.state().exists(),
        "status and runs created the state directory"
    );

    // A finished run lists when it ended, how long it took and what stopped it.
    sb.write(
        "two.toml",
        "name = \"two\"\n[params]\nflag = { default = \"\" }\n[[steps]]\nid = \"maybe\"\nactivity = \"command\"\nwhen = \"${params.flag} != \"\nwith = { shell = \"true\" }\n[[steps]]\nid = \"fail\"\nactivity = \"command\"\nwith = { shell = \"exit 3\" }\n",
    );
    let out = sb.run(&["run", "two.toml", "--id", "j1", "--reason", "test"]);
    assert_eq!(out.status.code(), Some(3));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("maybe skipped: no flag given"), "{text}");
    let runs: serde_json::Value = serde_json::from_str(&sb.ok(&["runs", "--json"])).unwrap();
    let run = &runs[0];
    assert!(run["duration_seconds"].as_f64().unwrap() > 0.0, "{run}");
    assert!(run["error"].as_str().unwrap().contains("exit"), "{run}");
    assert!(run.get("ended_at").is_some(), "{run}");
}

#[test]
fn help_pages_show_examples() {
    let sb = Sandbox::new();
    for command in ["recover", "backup", "drill", "run", "resume", "rollback"] {
        let help = sb.ok(&[command, "--help"]);
        assert!(
            help.contains("Example"),
            "{command} --help has no example:\n{help}"
        );
    }
}

#[test]
fn an_empty_listing_says_which_configuration_and_stores_it_looked_in() {
    let sb = Sandbox::new();
    let shown = sb.ok(&["backups"]);
    assert!(
        shown.contains("embedded default configuration") && shown.contains("local"),
        "{shown}"
    );
    let shown = sb.ok(&["wal", "list"]);
    assert!(
        shown.contains("nothing archived") && shown.contains("embedded default"),
        "{shown}"
    );

    let config = sb.write(
        "lazarus.toml",
        "[[stores]]\nname = \"nas\"\nkind = \"local\"\npath = \"nas-store\"\n",
    );
    let shown = sb.ok(&["backups"]);
    assert!(
        shown.contains(&config.display().to_string()) && shown.contains("nas"),
        "{shown}"
    );
}

#[test]
fn output_to_a_reader_that_went_away_ends_quietly() {
    // `lazarus workflows | head -1`: the reader closes the pipe before Lazarus is done.
    let sb = Sandbox::new();
    let mut child = sb
        .cmd()
        .args(["workflows"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[test]
fn init_puts_the_local_store_in_the_state_directory() {
    let sb = Sandbox::new();
    let state = sb.path().join("elsewhere/state");
    std::fs::create_dir_all(sb.path().join("etc")).unwrap();
    let out = sb
        .cmd()
        .env("LAZARUS_STATE", &state)
        .args(["init", "etc/lazarus.toml"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out));
    let written = sb.read("etc/lazarus.toml");
    let expected = format!("path = \"{}\"", state.join("store").display());
    assert!(written.contains(&expected), "{written}");
}
