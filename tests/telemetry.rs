//! OpenTelemetry: a real OTLP/HTTP receiver gets one trace per run — the run span, a span
//! per step under it, a span per attempt under each step, errors as span events — and a
//! run killed with SIGKILL and resumed goes on in the same trace.

mod common;

use std::time::Duration;

use common::Sandbox;
use common::otlp::{Otlp, Received};

fn workflow(dir: &std::path::Path) -> String {
    let d = dir.display();
    format!(
        r#"name = "traced"
target = "traced"

[[steps]]
id = "s1"
activity = "download"
with = {{ key = "objects/blob", dest = "{d}/blob" }}

[[steps]]
id = "flaky"
activity = "command"
retry = {{ attempts = 2, backoff = "10ms" }}
with = {{ shell = 'test -f "{d}/tried" || {{ touch "{d}/tried"; echo "disk on fire" >&2; exit 7; }}' }}

[[steps]]
id = "wait"
activity = "command"
with = {{ shell = 'echo started >> "{d}/log"; while [ ! -f "{d}/go" ]; do sleep 0.05; done' }}

[[steps]]
id = "last"
activity = "command"
with = {{ argv = ["true"] }}
"#
    )
}

fn find<'a>(spans: &'a [Received], name: &str) -> Vec<&'a Received> {
    spans.iter().filter(|s| s.name == name).collect()
}

#[test]
fn a_run_killed_and_resumed_is_one_trace_of_run_step_and_attempt_spans() {
    let otlp = Otlp::start();
    let sb = Sandbox::new();
    let work = sb.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let wf = sb.write("traced.toml", &workflow(&work));
    let config = sb.write(
        "lazarus.toml",
        &format!(
            "[telemetry]\notlp_endpoint = \"{}\"\n\n[[stores]]\nname = \"local\"\nkind = \"local\"\npath = \"store\"\n",
            otlp.endpoint()
        ),
    );
    let blob: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    sb.write("store/objects/blob", "");
    std::fs::write(sb.path().join("store/objects/blob"), &blob).unwrap();
    let lazarus = || {
        let mut cmd = sb.cmd();
        cmd.env("LAZARUS_CONFIG", &config)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_SDK_DISABLED");
        cmd
    };
    let mut first = lazarus()
        .args([
            "run",
            &wf.display().to_string(),
            "--id",
            "t1",
            "--reason",
            "trace it",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("runner");
    sb.wait_for("the spans before the kill", Duration::from_secs(60), || {
        std::fs::read_to_string(work.join("log")).is_ok_and(|l| l.contains("started"))
            && !find(&otlp.spans(), "step flaky").is_empty()
    });
    common::kill9(&mut first);
    let before_kill = otlp.spans();
    std::fs::write(work.join("go"), "").unwrap();
    let out = Sandbox::run_in(lazarus(), &["resume", "t1"]);
    assert!(out.status.success(), "{}", common::text(&out));
    let report = sb.status("t1");
    assert_eq!(report["status"], "succeeded");
    let trace = report["trace_id"]
        .as_str()
        .expect("the report names the trace")
        .to_string();
    sb.wait_for("the run span", Duration::from_secs(10), || {
        !find(&otlp.spans(), "run traced").is_empty()
    });
    let spans = otlp.spans();

    // One trace: what was sent before the kill and after the resume.
    for span in &spans {
        assert_eq!(span.trace_id, trace, "{span:?}");
        assert_eq!(span.service, "lazarus");
    }
    assert!(
        find(&before_kill, "step s1").len() == 1,
        "s1 was sent by the first process"
    );

    // The run span is the root, with the journaled id; every step hangs under it.
    let run = find(&spans, "run traced");
    assert_eq!(run.len(), 1, "{run:?}");
    let run = run[0];
    assert_eq!(run.parent, "", "the run span is the root");
    assert_eq!(run.attributes["lazarus.run"], "t1");
    assert_eq!(run.attributes["lazarus.outcome"], "succeeded");
    for step in ["s1", "flaky", "wait", "last"] {
        let found = find(&spans, &format!("step {step}"));
        assert_eq!(
            found.len(),
            1,
            "one finished span for step {step}: {found:?}"
        );
        let span = found[0];
        assert_eq!(span.parent, run.span_id, "step {step} is under the run");
        assert_eq!(span.attributes["lazarus.step"], step);
        let activity = if step == "s1" { "download" } else { "command" };
        assert_eq!(span.attributes["lazarus.activity"], activity);
        assert_eq!(span.attributes["lazarus.workflow"], "traced");
        assert_eq!(span.attributes["lazarus.run"], "t1");
        assert_eq!(span.attributes["lazarus.outcome"], "completed");
        let attempts: Vec<&Received> = spans.iter().filter(|s| s.parent == span.span_id).collect();
        assert!(!attempts.is_empty(), "attempts of {step}");
        for attempt in &attempts {
            assert_eq!(attempt.attributes["lazarus.step"], step);
            assert!(
                attempt.name.starts_with(&format!("attempt {step} #")),
                "{}",
                attempt.name
            );
        }
    }

    // What the download moved.
    let download = find(&spans, "step s1")[0];
    let attempt = spans
        .iter()
        .find(|s| s.parent == download.span_id)
        .expect("the download's attempt");
    assert_eq!(attempt.attributes["lazarus.bytes"], "3000000");

    // The failed attempt: its outcome, its error as a span event, its status.
    let flaky = find(&spans, "step flaky")[0];
    let mut attempts: Vec<&Received> = spans.iter().filter(|s| s.parent == flaky.span_id).collect();
    attempts.sort_by_key(|a| a.attributes["lazarus.attempt"].clone());
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0].attributes["lazarus.attempt"], "1");
    assert_eq!(attempts[0].attributes["lazarus.outcome"], "failed");
    assert_eq!(attempts[0].status, 2, "error status");
    let (name, fields) = attempts[0]
        .events
        .iter()
        .find(|(name, _)| name == "attempt failed")
        .expect("the error as a span event");
    assert_eq!(name, "attempt failed");
    assert!(
        fields["error"].contains("disk on fire") || fields["error"].contains("7"),
        "{fields:?}"
    );
    assert_eq!(attempts[1].attributes["lazarus.outcome"], "completed");
}

#[test]
fn the_standard_environment_turns_traces_on_and_otel_sdk_disabled_off() {
    let otlp = Otlp::start();
    let sb = Sandbox::new();
    let wf = sb.write(
        "quiet.toml",
        "name = \"quiet\"\n[[steps]]\nid = \"a\"\nactivity = \"command\"\nwith = { argv = [\"true\"] }\n",
    );
    let run = |disabled: bool| {
        let mut cmd = sb.cmd();
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint())
            .env("OTEL_BSP_SCHEDULE_DELAY", "50")
            .env_remove("LAZARUS_CONFIG");
        if disabled {
            cmd.env("OTEL_SDK_DISABLED", "true");
        } else {
            cmd.env_remove("OTEL_SDK_DISABLED");
        }
        let out = Sandbox::run_in(cmd, &["run", &wf.display().to_string(), "--reason", "env"]);
        assert!(out.status.success(), "{}", common::text(&out));
    };
    run(true);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        otlp.spans().is_empty(),
        "OTEL_SDK_DISABLED=true sends nothing"
    );
    run(false);
    let spans = otlp.spans();
    assert_eq!(
        ["run quiet", "step a", "attempt a #1"]
            .iter()
            .map(|n| find(&spans, n).len())
            .collect::<Vec<_>>(),
        vec![1, 1, 1],
        "{spans:?}"
    );
}
