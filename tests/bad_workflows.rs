//! Every kind of broken workflow file is refused with the file, the line and the name.

mod common;

use common::Sandbox;

fn validate(sb: &Sandbox, text: &str) -> String {
    let path = sb.write("bad.toml", text);
    let out = sb.run(&["validate", path.to_str().unwrap()]);
    assert!(!out.status.success(), "validate must fail for:\n{text}");
    common::text(&out)
}

#[test]
fn toml_syntax_error_names_the_line() {
    let sb = Sandbox::new();
    let err = validate(
        &sb,
        "name = \"x\"\n[[steps]]\nid = \"a\nactivity = \"command\"\n",
    );
    assert!(err.contains("bad.toml:3:"), "{err}");
}

#[test]
fn unknown_activity_is_named_with_a_suggestion() {
    let sb = Sandbox::new();
    let err = validate(
        &sb,
        "name = \"x\"\n[[steps]]\nid = \"a\"\nactivity = \"comand\"\nwith = { shell = \"true\" }\n",
    );
    assert!(
        err.contains(
            "bad.toml:4: step \"a\": unknown activity \"comand\" (did you mean \"command\"?)"
        ),
        "{err}"
    );
}

#[test]
fn unknown_and_forward_references_are_refused() {
    let sb = Sandbox::new();
    let err = validate(
        &sb,
        r#"name = "x"
[params]
database = { required = true }
[[steps]]
id = "a"
activity = "command"
with = { shell = "echo ${steps.b.stdout}" }
[[steps]]
id = "b"
activity = "command"
with = { shell = "echo ${params.databse}" }
"#,
    );
    assert!(
        err.contains(
            "bad.toml:7: step \"a\": input refers to step \"b\" (line 9), which runs later"
        ),
        "{err}"
    );
    assert!(err.contains("bad.toml:11: step \"b\": input refers to unknown parameter \"databse\" (did you mean \"database\"?)"), "{err}");
}

#[test]
fn duplicate_ids_bad_durations_and_typoed_inputs_are_refused() {
    let sb = Sandbox::new();
    let err = validate(
        &sb,
        r#"name = "x"
[[steps]]
id = "a"
activity = "command"
timeout = "ten seconds"
with = { shell = "true" }
[[steps]]
id = "a"
activity = "http_check"
with = { url = "http://127.0.0.1:1/", atempts = 3 }
retry = { attempts = 2, backoff = "5" }
"#,
    );
    assert!(
        err.contains("bad.toml:5: step \"a\": bad duration for timeout"),
        "{err}"
    );
    assert!(
        err.contains("bad.toml:8: duplicate step id \"a\" (first used on line 3)"),
        "{err}"
    );
    assert!(err.contains("bad.toml:10: step \"a\": activity \"http_check\" has no input \"atempts\" (did you mean \"attempts\"?)"), "{err}");
    assert!(
        err.contains("bad duration for retry.backoff: \"5\" has no unit"),
        "{err}"
    );
}

#[test]
fn unknown_keys_and_bad_on_failure_are_refused() {
    let sb = Sandbox::new();
    let err = validate(
        &sb,
        "name = \"x\"\non_failure = \"explode\"\n[[steps]]\nid = \"a\"\nactivity = \"command\"\nwith = { shell = \"true\" }\ntimeuot = \"1s\"\n",
    );
    assert!(err.contains("bad.toml:"), "{err}");
    assert!(err.contains("timeuot"), "{err}");
    let err = validate(
        &sb,
        "name = \"x\"\non_failure = \"explode\"\n[[steps]]\nid = \"a\"\nactivity = \"command\"\nwith = { shell = \"true\" }\n",
    );
    assert!(
        err.contains(
            "bad.toml:2: on_failure = \"explode\" is not known; use \"halt\" or \"rollback\""
        ),
        "{err}"
    );
}

#[test]
fn project_runbooks_validate_and_are_listed() {
    let sb = Sandbox::new();
    let root = env!("CARGO_MANIFEST_DIR");
    for entry in std::fs::read_dir(format!("{root}/workflows")).unwrap() {
        let path = entry.unwrap().path();
        let out = sb.run(&["validate", path.to_str().unwrap()]);
        assert!(out.status.success(), "{}", common::text(&out));
    }
    let list = sb.ok(&["workflows", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "example" && r["source"] == "builtin:example")
    );
}
