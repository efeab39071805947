//! Point-in-time recovery on a real PostgreSQL archiving with `lazarus wal push`: a base
//! backup, a workload whose commit times are known, recoveries to exact moments — three
//! timelines deep — and refusals that name the covered window.

mod common;

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use common::wal::{Archiving, psql_at};
use lazarus::pg::Tools;
use lazarus::pg::cluster::Cluster;
use serde_json::Value;

/// Stops a restored server when the test ends, however it ends.
struct Restored {
    data: PathBuf,
}

impl Drop for Restored {
    fn drop(&mut self) {
        if let Ok(mut cmd) = Cluster::server_command(&Tools::new(None), "pg_ctl") {
            let _ = cmd
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

struct Pitr {
    // Fields drop in order: restored servers stop before the cluster's directory goes.
    restored: Vec<Restored>,
    a: Archiving,
    state: tempfile::TempDir,
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

const UTC_MICROS: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'";

impl Pitr {
    fn new() -> Pitr {
        Self::with_stores("")
    }

    fn with_stores(stores_first: &str) -> Pitr {
        let a = Archiving::start_with(&["track_commit_timestamp = on"], stores_first);
        Pitr {
            restored: Vec::new(),
            a,
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn spawn(&self, args: &[&str]) -> std::process::Child {
        let mut cmd = self.a.lazarus(&self.state.path().join("state"));
        cmd.current_dir(self.state.path())
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Polls a run's report until `ready` says so (180 s at most).
    fn wait_for(&self, run: &str, what: &str, ready: impl Fn(&Value) -> bool) {
        let started = Instant::now();
        let mut last = Value::Null;
        loop {
            let out = self.lazarus(&["status", run, "--json"]);
            if let Ok(report) = serde_json::from_slice::<Value>(&out.stdout) {
                if ready(&report) {
                    return;
                }
                last = report;
            }
            // Generous: the suite runs several clusters at once on two cores.
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "{run}: {what} did not happen in 180 s; last report: {}",
                serde_json::to_string_pretty(&last).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The PITR arguments of `recover`.
    fn recover_args(&self, to: &str, name: &str) -> Vec<String> {
        self.target_args(&["--to", to], name)
    }

    /// The PITR arguments of `recover` with any target (`--to-lsn X`, `--immediate`, ...).
    fn target_args(&self, target: &[&str], name: &str) -> Vec<String> {
        let data = self.a.cluster.root.join(name);
        let mut args: Vec<String> = vec!["recover".into()];
        args.extend(target.iter().map(|s| s.to_string()));
        args.extend(
            [
                "--reason",
                "test",
                "--id",
                &format!("pitr-{name}"),
                "--param",
                "cutover=none",
                "--param",
                &format!("data_dir={}", data.display()),
                "--param",
                &format!("config={}", self.a.config.display()),
                "--param",
                &format!("lazarus={}", self.a.binary.display()),
                "--param",
                "database=postgres",
                "--param",
                "check_tables=ticks",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        args
    }

    fn lazarus(&self, args: &[&str]) -> Output {
        let mut cmd = self.a.lazarus(&self.state.path().join("state"));
        cmd.current_dir(self.state.path()).args(args);
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                return child.wait_with_output().unwrap();
            }
            if started.elapsed() > Duration::from_secs(180) {
                let _ = child.kill();
                panic!("lazarus {args:?} did not finish in 180 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Inserts ids one transaction at a time on a server; returns (id, commit time) pairs.
    fn commit_rows(&self, port: u16, ids: std::ops::RangeInclusive<i32>) -> Vec<(i32, String)> {
        for id in ids.clone() {
            psql_at(port, &format!("INSERT INTO ticks (id) VALUES ({id})"));
            std::thread::sleep(Duration::from_millis(20));
        }
        let rows = psql_at(
            port,
            &format!(
                "SELECT id, to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', {UTC_MICROS}) FROM ticks WHERE id BETWEEN {} AND {} ORDER BY id",
                ids.start(),
                ids.end()
            ),
        );
        rows.lines()
            .map(|l| {
                let (id, at) = l.split_once('|').unwrap();
                (id.parse().unwrap(), at.to_string())
            })
            .collect()
    }

    /// `lazarus run base-backup`, which must succeed.
    fn base_backup(&self) {
        let workdir = format!("workdir={}", self.state.path().join("work").display());
        ok(
            self.lazarus(&[
                "run",
                "base-backup",
                "--reason",
                "test",
                "--param",
                &workdir,
            ]),
            "base backup",
        );
    }

    /// A `ticks` table, a base backup, then `n` rows committed one by one and archived:
    /// the (id, commit time) pairs.
    fn backed_up_with_commits(&self, n: i32) -> Vec<(i32, String)> {
        let primary = self.a.cluster.port;
        psql_at(primary, "CREATE TABLE ticks (id int PRIMARY KEY)");
        self.base_backup();
        let commits = self.commit_rows(primary, 1..=n);
        // With nothing written since the backup, a WAL switch is a no-op: nothing to wait for.
        if n > 0 {
            self.archive_now(primary);
        }
        commits
    }

    /// A base backup, then `chunks` × 4 rows committed one by one with a WAL switch after
    /// every four (many segments to replay), archived: the (id, commit time) pairs.
    fn backed_up_across_segments(&self, chunks: i32) -> Vec<(i32, String)> {
        let primary = self.a.cluster.port;
        self.base_backup();
        let mut commits = Vec::new();
        for chunk in 0..chunks {
            let from = chunk * 4 + 1;
            commits.extend(self.commit_rows(primary, from..=from + 3));
            psql_at(primary, "SELECT pg_switch_wal()");
        }
        self.archive_now(primary);
        commits
    }

    /// Switches WAL on a server and waits until the archive has the segment.
    fn archive_now(&self, port: u16) {
        let segment = psql_at(port, "SELECT pg_walfile_name(pg_current_wal_lsn())");
        psql_at(port, "SELECT pg_switch_wal()");
        let started = Instant::now();
        loop {
            let last = psql_at(
                port,
                "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
            );
            if last.len() == 24 && last[8..] >= segment[8..] {
                return;
            }
            if started.elapsed() > Duration::from_secs(60) {
                let failed = psql_at(
                    port,
                    "SELECT coalesce(last_failed_wal, ''), failed_count FROM pg_stat_archiver",
                );
                panic!("{segment} not archived from port {port} (last {last}; failed {failed})");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs the PITR runbook to `to`, leaving the server up; returns the report and port.
    fn recover(&mut self, to: &str, name: &str) -> (Value, u16) {
        self.recover_to(&["--to", to], name, true)
    }

    /// Runs the PITR runbook to any target; `check_rows` asks for rows in `ticks` after it.
    fn recover_to(&mut self, target: &[&str], name: &str, check_rows: bool) -> (Value, u16) {
        let data = self.a.cluster.root.join(name);
        let run = format!("pitr-{name}");
        let mut args = self.target_args(target, name);
        if !check_rows {
            for a in args.iter_mut().filter(|a| *a == "check_tables=ticks") {
                *a = "check_tables=".into();
            }
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.lazarus(&refs);
        let report = ok(self.lazarus(&["status", &run, "--json"]), "status");
        let report: Value = serde_json::from_str(&report).unwrap();
        let recover = report["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == "recover")
            .cloned()
            .unwrap_or(Value::Null);
        if data.join("postmaster.pid").exists() {
            self.restored.push(Restored { data: data.clone() });
        }
        ok(out, &format!("recover {target:?}"));
        let port = recover["output"]["port"].as_u64().unwrap() as u16;
        (report, port)
    }
}

fn step_status<'a>(report: &'a Value, id: &str) -> &'a str {
    report["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["id"] == id))
        .and_then(|s| s["status"].as_str())
        .unwrap_or("")
}

fn ids(port: u16) -> Vec<i32> {
    psql_at(port, "SELECT id FROM ticks ORDER BY id")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

fn step<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no step {id}"))
}

#[test]
fn recovers_to_exact_moments_across_three_timelines() {
    let mut p = Pitr::new();
    let commits = p.backed_up_with_commits(12);

    // The plan, before anything moves.
    let t1 = commits[5].1.clone();
    let plan: Value = serde_json::from_str(&ok(
        p.lazarus(&["pitr", "plan", "--to", &t1, "--json"]),
        "pitr plan",
    ))
    .unwrap();
    assert_eq!(plan["timeline"], 1, "{plan}");
    assert!(
        plan["backup"]["id"]
            .as_str()
            .unwrap()
            .starts_with("main-base-"),
        "{plan}"
    );
    assert!(plan["segments"].as_u64().unwrap() >= 1);

    // Timeline 2: exactly the rows committed at or before t1.
    let (report, b) = p.recover(&t1, "restored1");
    assert_eq!(ids(b), (1..=6).collect::<Vec<_>>());
    let out = &step(&report, "report")["output"];
    assert_eq!(out["port"].as_u64(), Some(u64::from(b)), "a number: {out}");
    assert!(
        out["data_directory"]
            .as_str()
            .unwrap()
            .ends_with("restored1")
    );
    assert!(
        out["summary"]
            .as_str()
            .unwrap()
            .contains("keeps running for inspection"),
        "{out}"
    );
    assert_eq!(step(&report, "recover")["output"]["timeline"], 2);

    // Restored for inspection (cutover=none), the server writes nothing into the live
    // archive: no timeline 2 there, and the primary's timeline 1 still plans.
    let history = lazarus::wal::archive::object_key("main", "00000002.history");
    p.commit_rows(b, 91..=91);
    psql_at(b, "SELECT pg_switch_wal()");
    std::thread::sleep(Duration::from_secs(2));
    for store in ["store-a", "store-b"] {
        assert!(
            !p.a.home.join(store).join(&history).exists(),
            "a server restored for inspection archived its timeline into {store}"
        );
    }
    psql_at(b, "DELETE FROM ticks WHERE id = 91");
    // Traffic cut over to it (played here by hand, as the cut-over's next step does): from
    // now on it is the primary and archives, its held segments first.
    let data_b = p.a.cluster.root.join("restored1");
    assert!(lazarus::pg::archiving::release(&data_b).unwrap());
    psql_at(b, "SELECT pg_reload_conf()");

    // The new timeline archives into the same archive; recover along it to timeline 3.
    // A WAL switch between, so timeline 2 owns whole segments of the chain.
    p.commit_rows(b, 101..=102);
    psql_at(b, "SELECT pg_switch_wal()");
    let later = p.commit_rows(b, 103..=105);
    p.archive_now(b);
    let t2 = later[1].1.clone();
    let (report, c) = p.recover(&t2, "restored2");
    assert_eq!(step(&report, "recover")["output"]["timeline"], 3);
    let mut expected: Vec<i32> = (1..=6).collect();
    expected.extend(101..=104);
    assert_eq!(ids(c), expected);
    assert!(lazarus::pg::archiving::release(&p.a.cluster.root.join("restored2")).unwrap());
    psql_at(c, "SELECT pg_reload_conf()");

    // And once more along 1 → 2 → 3.
    p.commit_rows(c, 201..=202);
    psql_at(c, "SELECT pg_switch_wal()");
    let third = p.commit_rows(c, 203..=204);
    p.archive_now(c);
    let t3 = third[0].1.clone();
    let plan: Value = serde_json::from_str(&ok(
        p.lazarus(&["pitr", "plan", "--to", &t3, "--json"]),
        "pitr plan",
    ))
    .unwrap();
    let path: Vec<u64> = plan["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["timeline"].as_u64().unwrap())
        .collect();
    assert_eq!(path, vec![1, 2, 3], "{plan}");
    let (_, d) = p.recover(&t3, "restored3");
    expected.extend(201..=203);
    assert_eq!(ids(d), expected);

    // A segment lost from the middle of the chain: the plan names it and refuses.
    let lost = "000000020000000000000003";
    for store in ["store-a", "store-b"] {
        for key in [
            lazarus::wal::archive::object_key("main", lost),
            lazarus::wal::archive::manifest_key("main", lost),
        ] {
            std::fs::remove_file(p.a.home.join(store).join(key)).unwrap();
        }
    }
    ok(p.lazarus(&["wal", "sync", "--full"]), "wal sync --full");
    // (Timeline 4, made by the last recovery, has no commits yet: name timeline 3.)
    let out = p.lazarus(&["pitr", "plan", "--to", &t3, "--timeline", "3"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{lost} to {lost} are missing")),
        "{err}"
    );
    assert!(err.contains("covers"), "{err}");

    // A target after the last archived commit is refused with the window, before any download.
    let out = p.lazarus(&["pitr", "plan", "--to", "2099-01-01T00:00:00Z"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("after the last archived commit"), "{err}");
    assert!(err.contains(" to "), "the message gives the window: {err}");
    let out = p.lazarus(&["pitr", "plan", "--to", "2001-01-01T00:00:00Z"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("before the oldest base backup"), "{err}");
}

#[test]
fn resumes_after_kill_9_mid_download_and_mid_replay() {
    use common::s3::{ACCESS_KEY, Moto, SECRET_KEY, Throttle, create_bucket};
    // A slow first store (2 MiB/s) makes the download last long enough to be killed in.
    let moto = Moto::start();
    create_bucket(&moto.endpoint(), "wal");
    let throttle = Throttle::start(format!("127.0.0.1:{}", moto.port).parse().unwrap(), 2 << 20);
    let slow = format!(
        "[[stores]]\nname = \"r2\"\nkind = \"s3\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nbucket = \"wal\"\nprefix = \"prod/\"\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n\n",
        throttle.endpoint()
    );
    let mut p = Pitr::with_stores(&slow);
    let primary = p.a.cluster.port;
    psql_at(primary, "CREATE TABLE ticks (id int PRIMARY KEY, pad text)");
    // Some bulk, so the base backup takes seconds to download.
    psql_at(
        primary,
        "CREATE TABLE bulk AS SELECT g, md5(g::text) FROM generate_series(1, 200000) g",
    );
    // Many segments to replay: a switch every few commits.
    let commits = p.backed_up_across_segments(10);
    let target = commits[32].1.clone();

    let args = p.recover_args(&target, "killed");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = "pitr-killed";
    let mut child = p.spawn(&refs);
    p.wait_for(run, "download running", |r| {
        step_status(r, "download") == "running"
    });
    std::thread::sleep(Duration::from_millis(300));
    common::kill9(&mut child);
    let mut child = p.spawn(&["resume", run]);
    p.wait_for(run, "recover running", |r| {
        step_status(r, "recover") == "running"
    });
    common::kill9(&mut child);
    let data = p.a.cluster.root.join("killed");
    p.restored.push(Restored { data: data.clone() });
    let out = p.lazarus(&["resume", run]);
    ok(out, "resume after the kills");
    let report: Value =
        serde_json::from_str(&ok(p.lazarus(&["status", run, "--json"]), "status")).unwrap();
    assert_eq!(report["status"], "succeeded");
    assert!(
        step(&report, "download")["attempts"].as_u64().unwrap() >= 2,
        "killed inside the download"
    );
    assert!(
        step(&report, "recover")["attempts"].as_u64().unwrap() >= 2,
        "killed inside the replay"
    );
    let port = step(&report, "recover")["output"]["port"].as_u64().unwrap() as u16;
    assert_eq!(
        ids(port),
        (1..=33).collect::<Vec<_>>(),
        "the same result as an uninterrupted recovery"
    );
}

#[test]
fn a_target_exactly_at_the_last_archived_commit_is_reached() {
    let mut p = Pitr::new();
    let commits = p.backed_up_with_commits(5);
    // The window printed ends at the last archived commit, and that very moment plans.
    let last = commits[4].1.clone();
    let plan: Value = serde_json::from_str(&ok(
        p.lazarus(&["pitr", "plan", "--to", &last, "--json"]),
        "pitr plan to the last commit",
    ))
    .unwrap();
    assert_eq!(
        lazarus::wal::parse_target_time(plan["window"]["to"].as_str().unwrap()),
        lazarus::wal::parse_target_time(&last),
        "{plan}"
    );
    assert!(
        plan["stop_lsn"].as_str().is_some_and(|l| l.contains('/')),
        "{plan}"
    );
    let (report, port) = p.recover(&last, "atend");
    assert_eq!(report["status"], "succeeded");
    assert_eq!(ids(port), (1..=5).collect::<Vec<_>>());
}

#[test]
fn a_planned_segment_missing_from_every_store_is_refused_before_anything_is_restored() {
    let p = Pitr::new();
    let commits = p.backed_up_with_commits(4);
    let target = commits[1].1.clone();
    let plan: Value = serde_json::from_str(&ok(
        p.lazarus(&["pitr", "plan", "--to", &target, "--json"]),
        "pitr plan",
    ))
    .unwrap();
    assert_eq!(plan["stores_checked"], false, "{plan}");
    let text = ok(p.lazarus(&["pitr", "plan", "--to", &target]), "pitr plan");
    assert!(text.contains("the stores were not consulted"), "{text}");
    // The chain's last segment vanishes from every store; the index still has it.
    let gone = plan["chain"][0]["last_file"].as_str().unwrap().to_string();
    let object = lazarus::wal::archive::object_key("main", &gone);
    for store in ["store-a", "store-b"] {
        std::fs::remove_file(p.a.home.join(store).join(&object)).unwrap();
    }
    let args = p.recover_args(&target, "missing");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = p.lazarus(&refs);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&ok(
        p.lazarus(&["status", "pitr-missing", "--json"]),
        "status",
    ))
    .unwrap();
    assert_eq!(report["status"], "failed", "{report}");
    let error = report["error"].as_str().unwrap_or("");
    assert!(
        error.contains("no store holds") && error.contains(&gone),
        "{error}"
    );
    assert_eq!(step_status(&report, "download"), "pending");
}

#[test]
fn pitr_runs_on_the_embedded_default_with_keys_from_the_environment() {
    let mut p = Pitr::new();
    let commits = p.backed_up_with_commits(6);
    // A new host with no lazarus.toml: the embedded default's store (STATE/store) holds a
    // copy of the archive, and the keys come from LAZARUS_KEYS.
    let state = p.a.cluster.root.join("embedded-state");
    std::fs::create_dir_all(&state).unwrap();
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(p.a.home.join("store-a"))
        .arg(state.join("store"))
        .status()
        .unwrap();
    assert!(copied.success());
    let keys = std::fs::read_to_string(p.a.home.join("keys")).unwrap();
    let keys: String = keys
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join(",");
    let data = p.a.cluster.root.join("embedded");
    let elsewhere = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(&p.a.binary)
        .current_dir(elsewhere.path())
        .arg("--state")
        .arg(&state)
        .args([
            "recover",
            "--to",
            &commits[2].1,
            "--reason",
            "test",
            "--id",
            "emb",
        ])
        .args(["--param", "cutover=none", "--param", "database=postgres"])
        .args(["--param", "check_tables=ticks"])
        .arg("--param")
        .arg(format!("data_dir={}", data.display()))
        .arg("--param")
        .arg(format!("lazarus={}", p.a.binary.display()))
        .env("LAZARUS_KEYS", keys.trim())
        .env("LAZARUS_OPERATOR", "tester")
        .env("PGUSER", "postgres")
        .env_remove("LAZARUS_CONFIG")
        .output()
        .unwrap();
    if data.join("postmaster.pid").exists() {
        p.restored.push(Restored { data: data.clone() });
    }
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(
        &std::process::Command::new(&p.a.binary)
            .arg("--state")
            .arg(&state)
            .args(["status", "emb", "--json"])
            .current_dir(elsewhere.path())
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let recover = &step(&report, "recover")["output"];
    assert_eq!(recover["restore_config_removed"], true, "{recover}");
    assert!(
        !data.join("lazarus-restore.keys").exists(),
        "the key file is gone"
    );
    let port = recover["port"].as_u64().unwrap() as u16;
    assert_eq!(ids(port), (1..=3).collect::<Vec<_>>());
}

#[test]
fn recovers_to_an_lsn_a_transaction_a_named_restore_point_and_the_base_backup() {
    let mut p = Pitr::new();
    let primary = p.a.cluster.port;
    // The base backup sees an empty table; then rows 1-3, a restore point, row 4, the LSN
    // after it, row 5 (its transaction id noted), rows 6-7.
    p.backed_up_with_commits(0);
    p.commit_rows(primary, 1..=3);
    psql_at(
        primary,
        "SELECT pg_create_restore_point('before_migration')",
    );
    p.commit_rows(primary, 4..=4);
    let lsn = psql_at(primary, "SELECT pg_current_wal_insert_lsn()");
    p.commit_rows(primary, 5..=5);
    let xid = psql_at(primary, "SELECT xmin FROM ticks WHERE id = 5");
    p.commit_rows(primary, 6..=7);
    p.archive_now(primary);

    let listed = ok(p.lazarus(&["wal", "restore-points"]), "wal restore-points");
    assert!(listed.contains("before_migration"), "{listed}");

    // Each kind is planned before anything moves; what the archive cannot reach is refused
    // with what there is.
    for (flag, value, kind) in [
        ("--to-name", "before_migration", "name"),
        ("--to-lsn", lsn.as_str(), "lsn"),
        ("--to-xid", xid.as_str(), "xid"),
    ] {
        let plan: Value = serde_json::from_str(&ok(
            p.lazarus(&["pitr", "plan", flag, value, "--json"]),
            "pitr plan",
        ))
        .unwrap();
        assert_eq!(plan["target_kind"], kind, "{plan}");
        assert!(plan["segments"].as_u64().unwrap() >= 1, "{plan}");
    }
    for (args, says) in [
        (vec!["--to-name", "after_migration"], "before_migration"),
        (
            vec!["--to-xid", "4000000000"],
            "no archived transaction end of xid 4000000000",
        ),
        (vec!["--to-lsn", "FF/0"], "past the archived WAL"),
        (vec!["--to-lsn", "nonsense"], "is not an LSN"),
    ] {
        let mut full = vec!["pitr", "plan"];
        full.extend(args.iter().copied());
        let out = p.lazarus(&full);
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success() && text.contains(says),
            "{args:?}: {text}"
        );
    }

    // The restored data, exactly. (The restored servers do not archive: the archive keeps
    // one timeline, and every target is planned along it.)
    const QUIET: [&str; 2] = ["--param", "archive_mode=off"];
    let (_, at_name) = p.recover_to(
        &["--to-name", "before_migration", QUIET[0], QUIET[1]],
        "rp",
        true,
    );
    assert_eq!(ids(at_name), vec![1, 2, 3], "stopped at the restore point");
    let (_, at_lsn) = p.recover_to(&["--to-lsn", &lsn, QUIET[0], QUIET[1]], "lsn", true);
    assert_eq!(ids(at_lsn), vec![1, 2, 3, 4], "stopped at the LSN");
    let (_, at_xid) = p.recover_to(&["--to-xid", &xid, QUIET[0], QUIET[1]], "xid", true);
    assert_eq!(
        ids(at_xid),
        vec![1, 2, 3, 4, 5],
        "stopped after transaction {xid}"
    );
    let (report, at_start) = p.recover_to(&["--immediate", QUIET[0], QUIET[1]], "imm", false);
    assert_eq!(ids(at_start), Vec::<i32>::new(), "the base backup's state");
    assert_eq!(step(&report, "plan")["output"]["target_kind"], "immediate");
}

#[test]
fn gc_keeps_a_restored_server_that_still_runs() {
    let mut p = Pitr::new();
    let commits = p.backed_up_with_commits(3);
    // The default data directory: STATE/work/RUN.data, where gc looks for leftovers.
    let mut args = p.recover_args(&commits[2].1, "kept");
    let at = args
        .iter()
        .position(|a| a.starts_with("data_dir="))
        .unwrap();
    args.drain(at - 1..=at);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = p.lazarus(&refs);
    let report: Value =
        serde_json::from_str(&ok(p.lazarus(&["status", "pitr-kept", "--json"]), "status")).unwrap();
    let data = PathBuf::from(
        step(&report, "recover")["output"]["data_directory"]
            .as_str()
            .unwrap(),
    );
    p.restored.push(Restored { data: data.clone() });
    ok(out, "recover with the default data directory");
    assert!(
        data.starts_with(p.state.path().join("state").join("work")),
        "{}",
        data.display()
    );
    assert_eq!(
        report["kept"][0].as_str(),
        Some(data.to_str().unwrap()),
        "{report}"
    );
    let shown = ok(p.lazarus(&["status", "pitr-kept"]), "status");
    assert!(shown.contains("kept"), "{shown}");
    let port = step(&report, "recover")["output"]["port"].as_u64().unwrap() as u16;

    let said = ok(p.lazarus(&["gc"]), "gc");
    assert!(
        said.contains("kept") && said.contains("pitr-kept"),
        "{said}"
    );
    assert!(
        data.join("global/pg_control").exists(),
        "gc removed the data directory"
    );
    assert_eq!(
        ids(port),
        vec![1, 2, 3],
        "the restored server still answers"
    );
}

/// A small tmpfs, unmounted when the test ends however it ends.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(path: PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&path).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0777"),
                "tmpfs",
            ])
            .arg(&path)
            .output()
            .expect("mount (the full-disk test needs root and mount)");
        assert!(
            out.status.success(),
            "mounting a tmpfs failed (the full-disk test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(path)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_data_directory_on_a_disk_too_small_is_refused_before_unpacking() {
    let p = Pitr::new();
    let commits = p.backed_up_with_commits(1);
    let disk = SmallDisk::mount(p.a.cluster.root.join("small"), "8m");
    let data = disk.0.join("data");
    let mut args = p.recover_args(&commits[0].1, "small");
    for a in args.iter_mut().filter(|a| a.starts_with("data_dir=")) {
        *a = format!("data_dir={}", data.display());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = p.lazarus(&refs);
    assert!(!out.status.success());
    let report: Value = serde_json::from_str(&ok(
        p.lazarus(&["status", "pitr-small", "--json"]),
        "status",
    ))
    .unwrap();
    let error = report["error"].as_str().unwrap_or_default();
    assert!(error.contains("not enough disk space"), "{report}");
    assert!(
        error.contains(&data.display().to_string()),
        "names the data directory: {error}"
    );
    assert!(error.contains("was removed"), "says what was left: {error}");
    assert!(!data.exists(), "the partial data directory is gone");
    assert_eq!(report["status"], "halted", "resume can fix it: {report}");
}

/// A PITR cut over through pgbouncer writes a new timeline into the archive; the rollback
/// gives the traffic back to the old primary. From then on "latest" is the old primary's
/// timeline again: plans, `wal status`, an index rebuilt from the stores and a real
/// recovery all follow it, and the restored server (kept) archives nothing more.
#[test]
fn a_rolled_back_cut_over_leaves_latest_on_the_timeline_the_live_primary_writes() {
    let mut p = Pitr::new();
    let commits = p.backed_up_with_commits(4);
    let primary = p.a.cluster.port;
    let bouncer = common::pg::Bouncer::start(primary, "postgres");
    let mut args = p.recover_args(&commits[1].1, "cut");
    for a in args.iter_mut().filter(|a| *a == "cutover=none") {
        *a = "cutover=pgbouncer".into();
    }
    args.extend([
        "--param".into(),
        format!("pgbouncer_ini={}", bouncer.ini.display()),
        "--param".into(),
        format!("pgbouncer_port={}", bouncer.port),
        "--param".into(),
        "pgbouncer_admin=postgres".into(),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = p.lazarus(&refs);
    let data = p.a.cluster.root.join("cut");
    if data.join("postmaster.pid").exists() {
        p.restored.push(Restored { data: data.clone() });
    }
    ok(out, "recover with a cut-over");
    let report: Value =
        serde_json::from_str(&ok(p.lazarus(&["status", "pitr-cut", "--json"]), "status")).unwrap();
    let restored = step(&report, "recover")["output"]["port"].as_u64().unwrap() as u16;
    assert_eq!(
        step(&report, "recover")["output"]["timeline"],
        2,
        "{report}"
    );
    // Taking traffic, the restored server archives its timeline 2.
    psql_at(restored, "INSERT INTO ticks (id) VALUES (1000)");
    p.archive_now(restored);
    let status = |p: &Pitr| -> Value {
        serde_json::from_str(&ok(
            p.lazarus(&["wal", "status", "--rpo", "1h", "--json"]),
            "wal status",
        ))
        .unwrap()
    };
    assert_eq!(status(&p)["timeline"], 2);

    ok(
        p.lazarus(&["rollback", "pitr-cut", "--reason", "wrong moment"]),
        "rollback",
    );
    let ini = std::fs::read_to_string(&bouncer.ini).unwrap();
    assert!(ini.contains(&format!("port={primary}")), "{ini}");
    assert!(
        lazarus::pg::archiving::is_held(&data),
        "the rolled-back server must hold its archiving again"
    );
    let report: Value =
        serde_json::from_str(&ok(p.lazarus(&["status", "pitr-cut", "--json"]), "status")).unwrap();
    assert_eq!(report["status"], "rolled_back", "{report}");

    // The live primary writes on, on timeline 1.
    let later = p.commit_rows(primary, 5..=7);
    p.archive_now(primary);
    let s = status(&p);
    assert_eq!(s["timeline"], 1, "{s}");
    assert_eq!(s["abandoned_timelines"][0]["timeline"], 2, "{s}");
    let human = ok(p.lazarus(&["wal", "status", "--rpo", "1h"]), "wal status");
    assert!(human.contains("timeline 2 is abandoned"), "{human}");
    let plan_timeline = |p: &Pitr| -> Value {
        let plan: Value = serde_json::from_str(&ok(
            p.lazarus(&["pitr", "plan", "--to", &later[2].1, "--json"]),
            "pitr plan to the primary's newest commit",
        ))
        .unwrap();
        plan["timeline"].clone()
    };
    assert_eq!(plan_timeline(&p), 1);
    // An index rebuilt from the stores reads the record back.
    ok(p.lazarus(&["wal", "sync", "--full"]), "wal sync --full");
    assert_eq!(plan_timeline(&p), 1);
    assert_eq!(status(&p)["timeline"], 1);
    // `--timeline 2` still names the abandoned one.
    let out = p.lazarus(&[
        "pitr",
        "plan",
        "--to",
        &commits[1].1,
        "--timeline",
        "2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A real recovery to the primary's newest commit follows timeline 1 to exactly it.
    let (report, port) = p.recover(&later[2].1, "after");
    assert_eq!(step_status(&report, "recover"), "completed");
    assert_eq!(ids(port), vec![1, 2, 3, 4, 5, 6, 7]);
    drop(bouncer);
}

/// The restored server's processes (its postmaster's children).
fn server_children(data: &std::path::Path) -> Vec<i32> {
    let pid = std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
    let Some(pid) = pid else {
        return Vec::new();
    };
    let out = std::process::Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn signal_all(pids: &[i32], signal: nix::sys::signal::Signal) {
    for pid in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), signal);
    }
}

/// A recovery cancelled while PostgreSQL replays: its server is stopped and the spool of
/// decrypted WAL restore_command keeps beside the data directory (`RUN.lazarus-state`) is
/// removed with it. The replay is frozen (SIGSTOP of the server's children) while the
/// cancel is asked, so the step cannot finish first; the report names the server.
#[test]
fn a_cancel_during_replay_stops_the_server_and_removes_the_wal_spool() {
    let mut p = Pitr::new();
    let primary = p.a.cluster.port;
    psql_at(primary, "CREATE TABLE ticks (id int PRIMARY KEY)");
    let commits = p.backed_up_across_segments(10);
    let target = commits[36].1.clone();
    let mut frozen = None;
    for attempt in 0..3 {
        let name = format!("cancelled{attempt}");
        let data = p.a.cluster.root.join(&name);
        let spool = data.with_extension("lazarus-state");
        let run = format!("pitr-{name}");
        let args = p.recover_args(&target, &name);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = p.spawn(&refs);
        p.restored.push(Restored { data: data.clone() });
        // Replay has begun once restore_command has made its spool.
        let started = Instant::now();
        let mut children = Vec::new();
        while started.elapsed() < Duration::from_secs(120) {
            if spool.exists() {
                children = server_children(&data);
                if !children.is_empty() {
                    signal_all(&children, nix::sys::signal::Signal::SIGSTOP);
                    break;
                }
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let report: Value =
            serde_json::from_str(&ok(p.lazarus(&["status", &run, "--json"]), "status")).unwrap();
        if children.is_empty() || step_status(&report, "recover") != "running" {
            // The replay finished before it could be frozen: try again.
            signal_all(&children, nix::sys::signal::Signal::SIGCONT);
            let _ = child.wait();
            continue;
        }
        frozen = Some((run, data, spool, children, child));
        break;
    }
    let (run, data, spool, children, mut child) =
        frozen.expect("no recovery could be frozen while it replayed");
    let mut cancel = p.spawn(&["cancel", &run]);
    // The cancel stops the server: let it run again so it can shut down.
    std::thread::sleep(Duration::from_millis(500));
    signal_all(&children, nix::sys::signal::Signal::SIGCONT);
    let _ = cancel.wait();
    let _ = child.wait();
    p.wait_for(&run, "the run is cancelled", |r| r["status"] == "cancelled");
    let report: Value =
        serde_json::from_str(&ok(p.lazarus(&["status", &run, "--json"]), "status")).unwrap();
    // Long enough for an orphaned restore_command or prefetcher to make it again.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !spool.exists(),
        "the WAL spool {} must go with the cancelled run: {report}",
        spool.display()
    );
    assert!(
        !data.join("postmaster.pid").exists(),
        "the cancelled run's server is stopped"
    );
    let said = report.to_string();
    assert!(!said.contains("port 0"), "{said}");
}
