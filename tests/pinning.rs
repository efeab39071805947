//! A run pins its workflow: editing the file after the start changes nothing for the run.

mod common;

use common::Sandbox;

#[test]
fn workflow_edited_after_start_does_not_change_the_resumed_run() {
    let sb = Sandbox::new();
    let original = r#"
name = "pinned"
[[steps]]
id = "a"
activity = "command"
with = { shell = 'echo original-a >> log' }
[[steps]]
id = "b"
activity = "command"
with = { shell = 'echo original-b >> log' }
"#;
    sb.write("pinned.toml", original);
    let out = sb.run(&[
        "run",
        "pinned.toml",
        "--id",
        "p1",
        "--reason",
        "test",
        "--halt-before",
        "b",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let hash = sb.status("p1")["workflow_hash"].clone();

    sb.write(
        "pinned.toml",
        r#"
name = "pinned"
[[steps]]
id = "a"
activity = "command"
with = { shell = 'echo edited-a >> log' }
[[steps]]
id = "b"
activity = "command"
with = { shell = 'echo edited-b >> log' }
[[steps]]
id = "z"
activity = "command"
with = { shell = 'echo edited-z >> log' }
"#,
    );
    sb.ok(&["resume", "p1"]);
    assert_eq!(sb.read("log"), "original-a\noriginal-b\n");
    let report = sb.status("p1");
    assert_eq!(report["workflow_hash"], hash);
    assert_eq!(report["steps"].as_array().unwrap().len(), 2);
}
