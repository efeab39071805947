//! One run per target: a second run on a locked target is refused, naming the holder.

mod common;

use common::Sandbox;

const WORKFLOW: &str = r#"
name = "locked"
target = "${params.db}"
[params]
db = { required = true }
[[steps]]
id = "a"
activity = "command"
with = { shell = 'echo a >> log' }
[[steps]]
id = "b"
activity = "command"
with = { shell = 'echo b >> log' }
"#;

#[test]
fn concurrent_run_on_the_same_target_is_refused_naming_the_holder() {
    let sb = Sandbox::new();
    sb.write("locked.toml", WORKFLOW);
    let out = sb.run(&[
        "run",
        "locked.toml",
        "--id",
        "l1",
        "--reason",
        "first",
        "-p",
        "db=shop",
        "--halt-before",
        "b",
    ]);
    assert_eq!(out.status.code(), Some(3));

    let out = sb.run(&[
        "run",
        "locked.toml",
        "--id",
        "l2",
        "--reason",
        "second",
        "-p",
        "db=shop",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = common::text(&out);
    assert!(
        text.contains("target \"shop\" is locked by run l1 (halted at step \"b\""),
        "{text}"
    );
    assert!(text.contains("lazarus status l1"), "{text}");
    let runs = sb.ok(&["runs", "--json"]);
    assert!(
        !runs.contains("\"l2\""),
        "a refused run leaves no trace: {runs}"
    );

    // Another target is free.
    sb.ok(&[
        "run",
        "locked.toml",
        "--id",
        "l3",
        "--reason",
        "other",
        "-p",
        "db=crm",
    ]);

    // Cancelling the holder frees the target.
    sb.ok(&["cancel", "l1"]);
    assert_eq!(sb.status("l1")["status"], "cancelled");
    sb.ok(&[
        "run",
        "locked.toml",
        "--id",
        "l4",
        "--reason",
        "after cancel",
        "-p",
        "db=shop",
    ]);
}

#[test]
fn a_run_needs_a_reason_and_its_parameters() {
    let sb = Sandbox::new();
    sb.write("locked.toml", WORKFLOW);
    let out = sb.run(&["run", "locked.toml", "-p", "db=x"]);
    assert!(
        common::text(&out).contains("--reason"),
        "{}",
        common::text(&out)
    );
    let out = sb.run(&["run", "locked.toml", "--reason", "  ", "-p", "db=x"]);
    assert!(
        common::text(&out).contains("a reason is required"),
        "{}",
        common::text(&out)
    );
    let out = sb.run(&["run", "locked.toml", "--reason", "r"]);
    assert!(
        common::text(&out).contains("missing required parameter: --param db=..."),
        "{}",
        common::text(&out)
    );
    let out = sb.run(&[
        "run",
        "locked.toml",
        "--reason",
        "r",
        "-p",
        "db=x",
        "-p",
        "dbb=y",
    ]);
    assert!(
        common::text(&out).contains("unknown parameter \"dbb\" (did you mean \"db\"?)"),
        "{}",
        common::text(&out)
    );
    let out = sb.run(&[
        "run",
        "locked.toml",
        "--reason",
        "r",
        "-p",
        "db=x",
        "--halt-before",
        "bb",
    ]);
    assert!(
        common::text(&out).contains("has no step \"bb\" (did you mean \"b\"?)"),
        "{}",
        common::text(&out)
    );
    let out = sb.run(&["run", "nonesuch", "--reason", "r"]);
    assert!(
        common::text(&out).contains("no workflow \"nonesuch\""),
        "{}",
        common::text(&out)
    );
}
