//! `[[schedules]]` in `lazarus serve`: backups fire on a per-second cron as ordinary runs;
//! a daily schedule whose time passed while serve was down fires once when it comes back,
//! and not again.

mod common;

use std::time::Duration;

use common::pg::Pg;
use common::{Sandbox, kill9, text};
use serde_json::Value;

/// `serve`, its log kept in the sandbox; returns once it owns the state directory (a
/// `runs` polled before that could own it for a moment and make `serve` give up).
fn start_serve(sb: &Sandbox, name: &str) -> std::process::Child {
    let log = std::fs::File::create(sb.path().join(format!("serve-{name}.log"))).unwrap();
    let child = sb
        .cmd()
        .args(["serve", "--no-http"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    sb.wait_for(
        "serve to own the state directory",
        Duration::from_secs(30),
        || std::fs::read_to_string(sb.state().join("owner.pid")).is_ok_and(|p| p.trim() == pid),
    );
    child
}

/// The runs a schedule started, from the journal.
fn scheduled(sb: &Sandbox, name: &str) -> Vec<Value> {
    let out = sb.run(&["runs", "--json"]);
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|r| {
            r["reason"]
                .as_str()
                .is_some_and(|s| s.starts_with(&format!("schedule {name} ")))
        })
        .collect()
}

#[test]
fn scheduled_backups_fire_as_runs_and_a_missed_schedule_fires_once_on_restart() {
    let pg = Pg::start();
    pg.load_sample("shop", 1);
    let sb = Sandbox::new();
    let work = sb.path().join("work");

    // Every 3 seconds.
    common::pg::write_config(
        &sb,
        &pg,
        &format!(
            "[[schedules]]\nname = \"often\"\ncron = \"*/3 * * * * *\"\nrunbook = \"backup\"\nparams = {{ database = \"shop\", workdir = \"{}\" }}\n",
            work.display()
        ),
    );
    let mut serve = start_serve(&sb, "often");
    sb.wait_for("two scheduled backups", Duration::from_secs(90), || {
        scheduled(&sb, "often")
            .iter()
            .filter(|r| r["status"] == "succeeded")
            .count()
            >= 2
    });
    kill9(&mut serve);
    // One may have been cut off mid-backup: it would hold the target; end it.
    for run in scheduled(&sb, "often") {
        if matches!(
            run["status"].as_str(),
            Some("running" | "halted" | "failed")
        ) {
            sb.ok(&["cancel", run["id"].as_str().unwrap()]);
        }
    }
    let listed: Value = serde_json::from_str(&sb.ok(&["backups", "--json"])).unwrap();
    assert!(listed.as_array().unwrap().len() >= 2, "{listed}");
    let runs = scheduled(&sb, "often");
    assert!(
        runs.iter()
            .all(|r| r["workflow"] == "backup" && r["operator"] == "schedule:often"),
        "{runs:?}"
    );

    // A daily schedule at 03:00 that last fired two days ago: one run when serve comes
    // back, however many times were missed, and none when it comes back again.
    common::pg::write_config(
        &sb,
        &pg,
        &format!(
            "[[schedules]]\nname = \"nightly\"\ncron = \"0 3 * * *\"\nrunbook = \"backup\"\nparams = {{ database = \"shop\", workdir = \"{}\" }}\n",
            work.display()
        ),
    );
    let two_days_ago = (chrono::Utc::now() - chrono::Duration::days(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    std::fs::write(
        sb.state().join("schedules.json"),
        format!("{{\"nightly\": \"{two_days_ago}\"}}"),
    )
    .unwrap();
    let mut serve = start_serve(&sb, "nightly");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !scheduled(&sb, "nightly")
        .iter()
        .any(|r| r["status"] == "succeeded")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the missed nightly backup did not run: {}\n{}",
            sb.ok(&["runs"]),
            std::fs::read_to_string(sb.path().join("serve-nightly.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        scheduled(&sb, "nightly").len(),
        1,
        "missed twice, fired once"
    );
    kill9(&mut serve);
    // Restarted, with the watch's own backup-age target: no second nightly run, and the
    // stale backup is raised in `status` (and the log).
    common::pg::write_config(
        &sb,
        &pg,
        &format!(
            "[watch]\nevery = \"1s\"\nbackup_max_age = \"1s\"\n\n[[schedules]]\nname = \"nightly\"\ncron = \"0 3 * * *\"\nrunbook = \"backup\"\nparams = {{ database = \"shop\", workdir = \"{}\" }}\n",
            work.display()
        ),
    );
    let mut serve = start_serve(&sb, "again");
    sb.wait_for(
        "the watch to raise the backup's age",
        Duration::from_secs(30),
        || {
            let out = sb.run(&["status"]);
            text(&out).contains("⚠ watch   database shop: the newest backup is")
        },
    );
    assert_eq!(
        scheduled(&sb, "nightly").len(),
        1,
        "not fired again on the next restart"
    );
    kill9(&mut serve);

    // A schedule that cannot work is refused when serve starts, naming it.
    common::pg::write_config(
        &sb,
        &pg,
        "[[schedules]]\nname = \"typo\"\ncron = \"0 3 * * * * * *\"\nrunbook = \"backup\"\n",
    );
    let out = sb.run(&["serve", "--no-http"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("typo") && text(&out).contains("cron"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_scheduled_drill_that_fails_marks_the_backup_failed_and_raises_it() {
    use std::sync::{Arc, Mutex};
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let seen = Arc::clone(&received);
    let hook = common::http_server(axum::Router::new().route(
        "/hook/{secret}",
        axum::routing::post(move |body: axum::Json<Value>| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().unwrap().push(body.0);
                axum::http::StatusCode::OK
            }
        }),
    ));
    let pg = Pg::start();
    pg.load_sample("shop", 1);
    let sb = Sandbox::new();
    let work = sb.path().join("work");
    let schedule = format!(
        "[[alerts]]\nname = \"oncall\"\nurl_env = \"LAZARUS_TEST_HOOK\"\n\n[[schedules]]\nname = \"daily-drill\"\ncron = \"0 0 4 * * *\"\nrunbook = \"drill\"\nparams = {{ database = \"shop\", workdir = \"{}\" }}\n",
        work.display()
    );
    common::pg::write_config(&sb, &pg, &schedule);
    sb.ok(&[
        "backup",
        "--database",
        "shop",
        "-p",
        &format!("workdir={}", work.display()),
    ]);
    // The backup rots in the store: bytes in its middle are overwritten.
    let dir = sb.path().join("store/backups/shop");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".dump.lzr"))
        .expect("the backup file");
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&file, bytes).unwrap();
    // The daily drill's time passed while serve was down: it runs once at start.
    let yesterday = (chrono::Utc::now() - chrono::Duration::days(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    std::fs::write(
        sb.state().join("schedules.json"),
        format!("{{\"daily-drill\": \"{yesterday}\"}}"),
    )
    .unwrap();
    let log = std::fs::File::create(sb.path().join("serve.log")).unwrap();
    let mut serve = sb
        .cmd()
        .args(["serve", "--no-http"])
        .env("LAZARUS_TEST_HOOK", format!("http://{hook}/hook/SECRET"))
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = serve.id().to_string();
    sb.wait_for(
        "serve to own the state directory",
        Duration::from_secs(30),
        || std::fs::read_to_string(sb.state().join("owner.pid")).is_ok_and(|p| p.trim() == pid),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !received
        .lock()
        .unwrap()
        .iter()
        .any(|e| e["event"] == "drill_failed")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no drill_failed alert: {:?}\nruns: {}",
            received.lock().unwrap(),
            text(&sb.run(&["runs"]))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    kill9(&mut serve);
    let listed: Value = serde_json::from_str(&sb.ok(&["backups", "--json"])).unwrap();
    assert_eq!(listed[0]["status"], "FAILED", "{listed}");
    let runs = scheduled(&sb, "daily-drill");
    assert_eq!(runs.len(), 1, "{runs:?}");
}

#[test]
fn two_serves_sharing_stores_start_each_scheduled_time_once() {
    let pg = Pg::start();
    pg.load_sample("shop", 1);
    let shared = tempfile::Builder::new()
        .prefix("lzshared")
        .tempdir_in("/tmp")
        .expect("shared dir");
    let keys = shared.path().join("keys");
    let hosts = [Sandbox::new(), Sandbox::new()];
    hosts[0].ok(&["key", "generate", "--file", keys.to_str().unwrap()]);
    let mut serves = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let config = host.write(
            "lazarus.toml",
            &format!(
                "[keys]\nfile = \"{}\"\n\n[postgres]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"postgres\"\n\n\
                 [mirror]\nholder = \"host-{i}\"\n\n\
                 [[stores]]\nname = \"shared\"\nkind = \"local\"\npath = \"{}\"\n\n\
                 [[schedules]]\nname = \"often\"\ncron = \"*/2 * * * * *\"\nrunbook = \"backup\"\nparams = {{ database = \"shop\", workdir = \"{}\" }}\n",
                keys.display(),
                pg.port(),
                shared.path().join("store").display(),
                host.path().join("work").display()
            ),
        );
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        serves.push(start_serve(host, "shared"));
    }
    hosts[0].wait_for(
        "four scheduled backups in the stores",
        Duration::from_secs(120),
        || {
            let listed = hosts[0].run(&["runs", "--from-stores", "--json"]);
            serde_json::from_slice::<Value>(&listed.stdout).is_ok_and(|runs| {
                runs.as_array().is_some_and(|runs| {
                    runs.iter()
                        .filter(|r| r["status"] == "succeeded" && r["workflow"] == "backup")
                        .count()
                        >= 4
                })
            })
        },
    );
    for serve in &mut serves {
        kill9(serve);
    }
    // Each run's reason names its scheduled time: no time was started twice.
    let runs: Vec<Value> = hosts.iter().flat_map(|h| scheduled(h, "often")).collect();
    let times: std::collections::BTreeSet<&str> =
        runs.iter().filter_map(|r| r["reason"].as_str()).collect();
    assert_eq!(
        runs.len(),
        times.len(),
        "a scheduled time started on both hosts: {runs:?}"
    );
    assert!(
        runs.iter()
            .all(|r| r["id"].as_str().is_some_and(|id| id.starts_with("often-2"))),
        "run ids name the schedule and its time: {runs:?}"
    );
}
