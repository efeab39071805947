//! kill -9 torture: SIGKILL the runner at random moments, resume, repeat. Every step's effect
//! must be present exactly once at the end, every run must succeed, and the store must reopen
//! cleanly after every kill without losing a flushed step completion.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Sandbox, kill9};
use rand::Rng;

const STEPS: usize = 8;

fn torture_workflow() -> String {
    let mut text = String::from(
        "name = \"torture\"\ntarget = \"${params.dir}\"\n[params]\ndir = { required = true }\n",
    );
    for i in 1..=STEPS {
        // Count every invocation; append the effect only if absent; take a little while.
        text.push_str(&format!(
            r#"
[[steps]]
id = "s{i}"
activity = "command"
retry = {{ attempts = 3, backoff = "50ms" }}
with = {{ shell = 'echo . >> "$D/count-s{i}"; sleep 0.0{d}; grep -qx s{i} "$D/effects" 2>/dev/null || echo s{i} >> "$D/effects"', env = {{ D = "${{params.dir}}" }} }}
"#,
            d = (i % 9) + 1
        ));
    }
    text
}

fn completed(report: &serde_json::Value) -> BTreeSet<String> {
    report["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["status"] == "completed")
        .filter_map(|s| s["id"].as_str().map(String::from))
        .collect()
}

fn torture(kills_wanted: usize) {
    let sb = Sandbox::new();
    sb.write("torture.toml", &torture_workflow());
    let mut rng = rand::rng();
    let mut kills = 0;
    let mut runs_verified = 0;
    let mut run_no = 0;
    while kills < kills_wanted {
        run_no += 1;
        let run = format!("t{run_no}");
        let dir = sb.path().join(&run);
        std::fs::create_dir_all(&dir).unwrap();
        let param = format!("dir={}", dir.display());
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut created = false;
        loop {
            let mut child = if created {
                sb.spawn(&["resume", &run])
            } else {
                sb.spawn(&[
                    "run",
                    "torture.toml",
                    "--id",
                    &run,
                    "--reason",
                    "torture",
                    "--param",
                    &param,
                ])
            };
            let delay = rng.random_range(0..350);
            std::thread::sleep(Duration::from_millis(delay));
            let finished_before_kill = matches!(child.try_wait(), Ok(Some(_)));
            kill9(&mut child);
            if !finished_before_kill {
                kills += 1;
            }
            // The store must reopen cleanly after every kill.
            let out = sb.run(&["status", &run, "--json"]);
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() {
                // With --json the answer is JSON on stdout: {"error": "no run ..."}.
                let said = serde_json::from_str::<serde_json::Value>(&stdout)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(String::from))
                    .unwrap_or_default();
                assert!(
                    said.contains(&format!("no run \"{run}\"")),
                    "store failed to reopen after kill {kills}: {stdout}{stderr}"
                );
                assert!(
                    !created,
                    "run {run} vanished from the journal after kill {kills}"
                );
                continue;
            }
            created = true;
            let report: serde_json::Value = serde_json::from_str(&stdout).expect("report json");
            let now = completed(&report);
            assert!(
                now.is_superset(&seen),
                "a flushed step completion was lost after kill {kills}: before {seen:?}, now {now:?}"
            );
            seen = now;
            if report["status"] == "succeeded" {
                break;
            }
            assert_eq!(report["status"], "running", "unexpected status: {report}");
            if kills >= kills_wanted {
                // Finish the last run without killing it.
                let out = sb.run(&["resume", &run]);
                assert!(
                    out.status.success(),
                    "final resume failed: {}",
                    common::text(&out)
                );
                break;
            }
        }
        let report = sb.status(&run);
        assert_eq!(report["status"], "succeeded", "{report}");
        assert_eq!(report["success"], true);
        let effects = std::fs::read_to_string(dir.join("effects")).unwrap();
        let expected: Vec<String> = (1..=STEPS).map(|i| format!("s{i}")).collect();
        assert_eq!(
            effects.lines().collect::<Vec<_>>(),
            expected,
            "every effect exactly once, in order (run {run})"
        );
        for i in 1..=STEPS {
            let count =
                std::fs::read_to_string(dir.join(format!("count-s{i}"))).unwrap_or_default();
            assert!(!count.is_empty(), "step s{i} of {run} never ran");
        }
        runs_verified += 1;
    }
    assert!(runs_verified >= 1);
    eprintln!("{kills} kills over {runs_verified} runs, all verified");
}

#[test]
fn survives_fifty_kill_nines_with_every_effect_exactly_once() {
    torture(50);
}

#[test]
#[ignore = "long: 500 kills (run with --ignored)"]
fn survives_five_hundred_kill_nines_with_every_effect_exactly_once() {
    torture(500);
}
