//! The disaster-recovery runbook end to end: real PostgreSQL, real pgbouncer, two real S3
//! servers (moto and s3s-fs) and a local store.

mod common;

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use common::pg::{Bouncer, Pg};
use common::s3::{ACCESS_KEY, Moto, S3sFs, SECRET_KEY, Throttle, create_bucket};
use common::{Sandbox, kill9, text};

const DB: &str = "shop";

/// A PostgreSQL server with a `shop` database behind pgbouncer, three stores and a key.
struct World {
    sb: Sandbox,
    pg: Pg,
    bouncer: Bouncer,
    _moto: Moto,
    _s3s: S3sFs,
    _throttle: Option<Throttle>,
    work: PathBuf,
}

impl World {
    fn new(scale: u32, slow_primary: Option<u64>) -> World {
        let pg = Pg::start();
        pg.load_sample(DB, scale);
        let bouncer = Bouncer::start(pg.port(), DB);
        let moto = Moto::start();
        let s3s = S3sFs::start(&std::env::temp_dir().join(format!(
            "lz-s3s-rec-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        )));
        create_bucket(&moto.endpoint(), "backups");
        create_bucket(&s3s.endpoint(), "backups");
        let throttle = slow_primary
            .map(|rate| Throttle::start(format!("127.0.0.1:{}", moto.port).parse().unwrap(), rate));
        let primary = throttle
            .as_ref()
            .map_or_else(|| moto.endpoint(), Throttle::endpoint);
        let sb = Sandbox::new();
        let keys = sb.path().join("keys");
        let out = sb.run(&["key", "generate", "--file", keys.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
        let mut config = format!(
            "[keys]\nfile = \"{}\"\n\n[postgres]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"postgres\"\n\n",
            keys.display(),
            pg.port()
        );
        for (name, endpoint) in [("r2", primary), ("b2", s3s.endpoint())] {
            config.push_str(&format!(
                "[[stores]]\nname = \"{name}\"\nkind = \"s3\"\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\nbucket = \"backups\"\nprefix = \"prod/\"\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n\n"
            ));
        }
        config.push_str("[[stores]]\nname = \"local\"\nkind = \"local\"\npath = \"local-store\"\n");
        let path = sb.write("lazarus.toml", &config);
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let work = sb.path().join("work");
        World {
            sb,
            pg,
            bouncer,
            _moto: moto,
            _s3s: s3s,
            _throttle: throttle,
            work,
        }
    }

    fn lz(&self, args: &[&str]) -> Output {
        self.sb.run(args)
    }

    fn ok(&self, args: &[&str]) -> String {
        self.sb.ok(args)
    }

    fn workdir(&self) -> String {
        format!("workdir={}", self.work.display())
    }

    /// A backup, verified by a drill.
    fn verified_backup(&self) -> String {
        self.ok(&["backup", "--database", DB, "-p", &self.workdir()]);
        self.ok(&["drill", "--database", DB, "-p", &self.workdir()]);
        let list: serde_json::Value =
            serde_json::from_str(&self.ok(&["backups", "--json"])).unwrap();
        let latest = list.as_array().unwrap().last().unwrap();
        assert_eq!(latest["status"], "VERIFIED", "{latest}");
        latest["id"].as_str().unwrap().to_string()
    }

    fn recover_args(&self, id: &str, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "recover",
            "--database",
            DB,
            "--reason",
            "test recovery",
            "--id",
            id,
            "-p",
            &self.workdir(),
            "-p",
            &format!("pgbouncer_ini={}", self.bouncer.ini.display()),
            "-p",
            &format!("pgbouncer_port={}", self.bouncer.port),
            "-p",
            "pgbouncer_admin=postgres",
            "-p",
            "check_tables=pgbench_accounts",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    fn recover(&self, id: &str, extra: &[&str]) -> Output {
        let args = self.recover_args(id, extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.lz(&refs)
    }

    fn restored_database(&self, run: &str) -> String {
        let report = self.sb.status(run);
        Sandbox::step(&report, "restore")["output"]["database"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The object key and size of backup `id`, from `backups --json`.
    fn backup_key_and_size(&self, id: &str) -> (String, u64) {
        let list: serde_json::Value =
            serde_json::from_str(&self.ok(&["backups", "--json"])).unwrap();
        let backup = list
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == id)
            .unwrap_or_else(|| panic!("backup {id} not listed: {list}"));
        (
            backup["key"].as_str().unwrap().to_string(),
            backup["size"].as_u64().unwrap(),
        )
    }

    fn through_bouncer(&self, sql: &str) -> String {
        self.pg.psql_at(self.bouncer.port, DB, sql)
    }
}

#[test]
fn recovery_restores_identical_content_and_traffic_reaches_it_until_rolled_back() {
    let w = World::new(1, None);
    let original = w.pg.checksums(DB);
    w.verified_backup();
    // The disaster: rows vanish from the live database after the backup.
    w.pg.psql(DB, "DELETE FROM notes WHERE id % 2 = 0");

    let out = w.recover("dr1", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let restored = w.restored_database("dr1");
    assert_ne!(restored, DB);
    assert_eq!(w.pg.checksums(&restored), original, "identical content");
    assert_eq!(w.bouncer.target(DB), restored);
    assert_eq!(
        w.through_bouncer("SELECT current_database()"),
        restored,
        "traffic reaches the restored database"
    );
    assert_eq!(w.through_bouncer("SELECT count(*) FROM notes"), "20000");

    let report = w.sb.status("dr1");
    let summary = &Sandbox::step(&report, "report")["output"];
    assert_eq!(summary["rto_met"], true);
    assert_eq!(summary["restored_database"], restored.as_str());
    assert!(["r2", "b2", "local"].contains(&summary["served_by"].as_str().unwrap()));
    assert!(
        summary["summary"].as_str().unwrap().contains("RTO"),
        "{summary}"
    );

    w.ok(&["rollback", "dr1", "--reason", "back to the live database"]);
    assert_eq!(w.bouncer.target(DB), DB);
    assert_eq!(
        w.through_bouncer("SELECT current_database()"),
        DB,
        "traffic back on the old database"
    );
}

/// Polls the run's report until `ready` holds.
fn wait_report(w: &World, run: &str, what: &str, ready: impl Fn(&serde_json::Value) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut last;
    loop {
        let out = w.lz(&["status", run, "--json"]);
        if out.status.success()
            && let Ok(report) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
        {
            if ready(&report) {
                return;
            }
            last = report;
        } else {
            last = serde_json::Value::String(text(&out));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; last report: {}",
            serde_json::to_string_pretty(&last).unwrap_or_default()
        );
        // Not faster: each `status` may own the state directory for a moment, and a stream
        // of them would keep the run itself from opening it.
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn step_status(report: &serde_json::Value, step: &str) -> String {
    Sandbox::step(report, step)["status"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn kill_nine_at_every_step_boundary_and_inside_the_long_steps_then_resume() {
    // A slow primary store makes the download last; scale 10 makes decryption and
    // pg_restore last.
    let w = World::new(10, Some(256 << 10));
    let original = w.pg.checksums(DB);
    w.verified_backup();

    // Each point: after which step completes, or inside which step (while it runs). The
    // restore streams the table data out of the backup, decompressing it as pg_restore reads:
    // killed inside it twice, at different depths.
    let points: &[(&str, bool)] = &[
        ("select", false),
        ("download", true),
        ("download", false),
        ("decrypt", false),
        ("restore", true),
        ("restore", true),
        ("restore", false),
        ("health_sql", false),
        ("healthy", false),
        ("cutover", false),
    ];
    kill_at(&w, "k9", &[], points);
    let report = w.sb.status("k9");
    assert_eq!(
        Sandbox::step(&report, "decrypt")["output"]["streamed"],
        true,
        "table data streamed into pg_restore"
    );
    assert_eq!(report["status"], "succeeded");
    assert!(
        Sandbox::step(&report, "download")["attempts"]
            .as_u64()
            .unwrap()
            >= 2
    );
    assert!(
        Sandbox::step(&report, "restore")["attempts"]
            .as_u64()
            .unwrap()
            >= 2
    );
    let restored = w.restored_database("k9");
    assert_eq!(
        w.pg.checksums(&restored),
        original,
        "identical content after all the kills"
    );
    assert_eq!(w.bouncer.target(DB), restored);
    w.ok(&["rollback", "k9", "--reason", "next: the written-out path"]);

    // With the archive written out first (stream=false), decryption and decompression are
    // a step of their own: killed inside it, and inside the pg_restore that follows.
    let points: &[(&str, bool)] = &[("decrypt", true), ("restore", true), ("cutover", false)];
    kill_at(&w, "k9w", &["-p", "stream=false"], points);
    let report = w.sb.status("k9w");
    assert_eq!(report["status"], "succeeded");
    assert_eq!(
        Sandbox::step(&report, "decrypt")["output"]["streamed"],
        false
    );
    assert!(
        Sandbox::step(&report, "decrypt")["attempts"]
            .as_u64()
            .unwrap()
            >= 2
    );
    let restored = w.restored_database("k9w");
    assert_eq!(w.pg.checksums(&restored), original);
}

/// Runs `recover` as `run`, kill -9s it at each point (after a step completes, or while it
/// runs) and resumes it, then resumes it to the end.
fn kill_at(w: &World, run: &str, extra: &[&str], points: &[(&str, bool)]) {
    let args = w.recover_args(run, extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first = true;
    for (step, inside) in points {
        let mut runner = if first {
            w.sb.spawn(&refs)
        } else {
            w.sb.spawn(&["resume", run])
        };
        first = false;
        wait_report(
            w,
            run,
            &format!("{step} ({})", if *inside { "running" } else { "done" }),
            |r| {
                let status = step_status(r, step);
                if *inside {
                    status == "running"
                } else {
                    status == "completed"
                }
            },
        );
        kill9(&mut runner);
        let report = w.sb.status(run);
        assert_eq!(
            report["active"], false,
            "the run is interrupted, not finished"
        );
    }
    // The last point kills after the cut-over; the steps after it (report, cleanup) take
    // milliseconds and may finish before the kill lands — then there is nothing to resume.
    if w.sb.status(run)["status"] != "succeeded" {
        let out = w.lz(&["resume", run]);
        assert!(out.status.success(), "{}", text(&out));
    }
}

#[test]
fn halt_before_the_cutover_leaves_the_restored_database_for_inspection() {
    let w = World::new(1, None);
    let original = w.pg.checksums(DB);
    w.verified_backup();
    let out = w.recover("h1", &["--halt-before", "cutover"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let restored = w.restored_database("h1");
    assert_eq!(
        w.pg.checksums(&restored),
        original,
        "inspect the restored database"
    );
    // Its name is at the top of the report and in the text summary.
    assert_eq!(
        w.sb.status("h1")["results"]["restored_database"],
        restored.as_str()
    );
    let summary = w.ok(&["status", "h1"]);
    assert!(
        summary.contains(&format!("restored database {restored}")),
        "{summary}"
    );
    assert_eq!(
        w.bouncer.target(DB),
        DB,
        "traffic still on the live database"
    );
    w.ok(&["resume", "h1"]);
    assert_eq!(w.bouncer.target(DB), restored);
}

#[test]
fn cutover_none_stops_after_the_health_checks_and_says_so() {
    let w = World::new(1, None);
    w.verified_backup();
    let out = w.recover("n1", &["-p", "cutover=none"]);
    assert!(out.status.success(), "{}", text(&out));
    let report = w.sb.status("n1");
    assert_eq!(step_status(&report, "cutover"), "skipped");
    let summary = Sandbox::step(&report, "report")["output"]["summary"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(summary.contains("NOT cut over"), "{summary}");
    assert_eq!(w.bouncer.target(DB), DB);
    assert!(
        text(&out).contains("summary"),
        "the readable summary is printed"
    );
}

const PY_LEGACY: &str = "import sys, gzip\nfrom cryptography.fernet import Fernet\nkey, src, dst = sys.argv[1:4]\nopen(dst, 'wb').write(Fernet(key.encode()).encrypt(gzip.compress(open(src, 'rb').read())))\n";

#[test]
fn a_legacy_backup_made_by_python_restores() {
    let w = World::new(1, None);
    let original = w.pg.checksums(DB);
    let dump = w.sb.path().join("shop.dump");
    let mut cmd = std::process::Command::new("pg_dump");
    w.pg.env(&mut cmd);
    let status = cmd
        .args(["-Fc", "-f", dump.to_str().unwrap(), DB])
        .status()
        .unwrap();
    assert!(status.success());
    let key = std::fs::read_to_string(w.sb.path().join("keys"))
        .unwrap()
        .trim()
        .to_string();
    let legacy = w.sb.path().join("shop.dump.gz.enc");
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            PY_LEGACY,
            &key,
            dump.to_str().unwrap(),
            legacy.to_str().unwrap(),
        ])
        .output()
        .expect("this test needs python3 with the cryptography package");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    w.ok(&[
        "backup",
        "import",
        legacy.to_str().unwrap(),
        "--database",
        DB,
        "--id",
        "shop-legacy",
    ]);
    let out = w.recover("l1", &["--backup", "shop-legacy", "-p", "cutover=none"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(w.pg.checksums(&w.restored_database("l1")), original);
}

#[test]
fn bad_inputs_get_clear_errors_and_touch_nothing_live() {
    let w = World::new(1, None);
    let live = w.pg.checksums(DB);
    let untouched = |what: &str| {
        assert_eq!(w.bouncer.target(DB), DB, "{what}: pgbouncer untouched");
        assert_eq!(w.pg.checksums(DB), live, "{what}: live database untouched");
    };
    let error_of = |run: &str| w.sb.status(run)["error"].as_str().unwrap_or("").to_string();

    // A refusal caused by the run's own input ends the run (failed, exit 4) and frees the
    // target: the corrected attempt that follows is not locked out, with no cancel between.
    let refused = |run: &str, out: &Output, wanted: &str| {
        assert_eq!(out.status.code(), Some(4), "{run}: {}", text(out));
        let report = w.sb.status(run);
        assert_eq!(report["status"], "failed", "{run}: {report}");
        assert!(report["ended_at"].is_string(), "{run} has ended: {report}");
        assert!(report["halted"].is_null(), "{run} is not halted: {report}");
        assert!(error_of(run).contains(wanted), "{run}: {}", error_of(run));
        assert_eq!(step_status(&report, "download"), "pending");
    };

    // No VERIFIED backup yet.
    w.ok(&["backup", "--database", DB, "-p", &w.workdir()]);
    let out = w.recover("b1", &[]);
    refused(
        "b1",
        &out,
        "no VERIFIED backup of database shop (1 backups: 1 unverified, 0 failed)",
    );
    untouched("no verified backup");

    // Unknown backup id.
    let out = w.recover("b2", &["--backup", "shop-nope"]);
    refused("b2", &out, "unknown backup id shop-nope for database shop");

    // A mistyped database.
    let mut args = w.recover_args("b2b", &[]);
    let at = args.iter().position(|a| a == DB).unwrap();
    args[at] = "shpo".into();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = w.lz(&refs);
    refused("b2b", &out, "is the database name right?");

    // Wrong key: refused before anything is downloaded, naming the backup's key.
    let id = w.verified_backup();
    let other = w.sb.path().join("other-keys");
    w.ok(&["key", "generate", "--file", other.to_str().unwrap()]);
    let args = w.recover_args("b3", &[]);
    let out =
        w.sb.cmd()
            .env(
                "LAZARUS_KEYS",
                std::fs::read_to_string(&other).unwrap().trim(),
            )
            .args(&args)
            .output()
            .unwrap();
    refused("b3", &out, "was encrypted with key");
    assert!(
        error_of("b3").contains("which is not configured"),
        "{}",
        error_of("b3")
    );
    untouched("wrong key");

    // A key file others can read.
    let keys = w.sb.path().join("keys");
    std::fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = w.recover("b3b", &[]);
    refused("b3b", &out, "chmod 600");
    std::fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    // Unreachable pgbouncer: nothing changed, traffic stays.
    let out = w.recover("b4", &["-p", "pgbouncer_port=1"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        error_of("b4").contains("nothing was changed"),
        "{}",
        error_of("b4")
    );
    untouched("unreachable pgbouncer");
    w.ok(&["cancel", "b4"]);

    // A health check that never passes halts before the cut-over.
    let out = w.recover(
        "b5",
        &[
            "-p",
            "health_url=http://127.0.0.1:1/health",
            "-p",
            "health_attempts=2",
            "-p",
            "health_interval=100ms",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    let report = w.sb.status("b5");
    assert_eq!(report["halted"]["step"], "health");
    assert_eq!(step_status(&report, "cutover"), "pending");
    untouched("failing health check");
    w.ok(&["cancel", "b5"]);

    // Corrupted on every store: the download refuses every copy.
    let (key, size) = w.backup_key_and_size(&id);
    let local = w.sb.path().join("local-store").join(&key);
    let mut bytes = std::fs::read(&local).unwrap();
    bytes[100] ^= 1;
    for endpoint in [w._moto.endpoint(), w._s3s.endpoint()] {
        common::s3::put_object(&endpoint, "backups", &format!("prod/{key}"), bytes.clone());
    }
    std::fs::write(&local, &bytes).unwrap();
    assert_eq!(bytes.len() as u64, size);
    let out = w.recover("b6", &["--backup", &id]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "damaged everywhere: refused, not halted"
    );
    let error = error_of("b6");
    assert!(
        error.contains("no store could serve a good copy"),
        "{error}"
    );
    assert!(error.contains("HMAC failure at chunk 0"), "{error}");
    untouched("corrupted everywhere");
}

#[test]
fn damaged_copies_in_the_first_stores_are_passed_over_before_anything_is_downloaded() {
    let w = World::new(1, None);
    let original = w.pg.checksums(DB);
    let id = w.verified_backup();
    let (key, size) = w.backup_key_and_size(&id);
    let good = std::fs::read(w.sb.path().join("local-store").join(&key)).unwrap();
    // r2 (moto) holds half the file; b2 (s3s) the whole size, its index flipped.
    common::s3::put_object(
        &w._moto.endpoint(),
        "backups",
        &format!("prod/{key}"),
        good[..good.len() / 2].to_vec(),
    );
    let mut flipped = good.clone();
    let n = flipped.len();
    for b in &mut flipped[n - 200..n - 100] {
        *b ^= 0x5A;
    }
    common::s3::put_object(
        &w._s3s.endpoint(),
        "backups",
        &format!("prod/{key}"),
        flipped,
    );

    let out = w.recover("pass", &["--backup", &id, "-p", "cutover=none"]);
    assert!(out.status.success(), "{}", text(&out));
    let report = w.sb.status("pass");
    let select = &Sandbox::step(&report, "select")["output"];
    assert_eq!(select["store"], "local", "{select}");
    let passed = select["passed_over"].as_array().unwrap();
    assert_eq!(passed.len(), 2, "{select}");
    assert_eq!(passed[0]["store"], "r2");
    assert!(
        passed[0]["problem"]
            .as_str()
            .unwrap()
            .contains(&format!("its manifest says {size}")),
        "{select}"
    );
    assert_eq!(passed[1]["store"], "b2");
    assert!(
        passed[1]["problem"].as_str().unwrap().contains("damaged"),
        "{select}"
    );
    let restored = w.restored_database("pass");
    assert_eq!(w.pg.checksums(&restored), original, "identical content");
}

/// Flips one byte in the last chunk of the backup a run downloaded: inside table data, past
/// the table of contents the decrypt step reads.
fn damage_download(w: &World, run: &str) {
    let report = w.sb.status(run);
    let path = Sandbox::step(&report, "download")["output"]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let mut file = std::fs::File::open(&path).unwrap();
    let trailer = lazarus::crypto::chunked::peek_trailer(&mut file).unwrap();
    assert!(trailer.chunk_count >= 3, "a backup of several chunks");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[trailer.index_offset as usize - 20] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
}

fn row_counts(w: &World, database: &str) -> Vec<(String, i64)> {
    w.pg.psql(
        database,
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
    )
    .lines()
    .map(|t| {
        let n = w.pg.psql(database, &format!("SELECT count(*) FROM {t}"));
        (t.to_string(), n.parse().unwrap())
    })
    .collect()
}

#[test]
fn a_backup_damaged_after_download_stops_the_restore_before_the_damaged_table_commits() {
    let w = World::new(4, None);
    let live = w.pg.checksums(DB);
    let live_counts = row_counts(&w, DB);
    let id = w.verified_backup();
    let out = w.recover("t1", &["--backup", &id, "--halt-after", "download"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    damage_download(&w, "t1");
    let out = w.lz(&["resume", "t1"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let report = w.sb.status("t1");
    let error = report["error"].as_str().unwrap_or("").to_string();
    assert!(error.contains("the backup is damaged"), "{error}");
    assert!(error.contains("chunk"), "names the damaged chunk: {error}");
    assert_eq!(report["halted"]["step"], "restore");
    assert_eq!(
        Sandbox::step(&report, "restore")["attempts"].as_u64(),
        Some(1),
        "a damaged backup is not retried"
    );
    // Every table of the restored database is either whole or empty: never loaded short.
    let restored = w.pg.psql(
        "postgres",
        "SELECT datname FROM pg_database WHERE datname LIKE 'shop_restored_%'",
    );
    assert!(!restored.is_empty(), "the restore had started");
    let counts = row_counts(&w, &restored);
    assert_eq!(counts.len(), live_counts.len());
    for ((table, got), (_, whole)) in counts.iter().zip(&live_counts) {
        assert!(
            *got == 0 || got == whole,
            "{table}: {got} of {whole} rows committed"
        );
    }
    assert!(
        counts
            .iter()
            .zip(&live_counts)
            .any(|((_, got), (_, whole))| *got == 0 && *whole > 0),
        "the damaged table stayed empty: {counts:?}"
    );
    assert_eq!(w.bouncer.target(DB), DB, "traffic untouched");
    assert_eq!(w.pg.checksums(DB), live, "live database untouched");
}

#[test]
fn a_connection_lost_mid_stream_is_pg_restores_failure_and_the_restore_is_retried() {
    let w = World::new(10, None);
    let original = w.pg.checksums(DB);
    let id = w.verified_backup();
    let args = w.recover_args("c1", &["--backup", &id, "-p", "cutover=none"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut runner = w.sb.spawn(&refs);
    // Drop the restore's connections while it streams rows into COPY.
    let copying = "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE 'shop_restored_%' AND query LIKE 'COPY%'";
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while w.pg.psql("postgres", copying) == "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "the restore never started copying"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    w.pg.psql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname LIKE 'shop_restored_%'",
    );
    let status = runner.wait().unwrap();
    let report = w.sb.status("c1");
    assert!(status.success(), "{report}");
    let restore = Sandbox::step(&report, "restore");
    assert!(
        restore["attempts"].as_u64().unwrap() >= 2,
        "retried as pg_restore's failure, not stopped as a damaged backup: {restore}"
    );
    assert_eq!(w.pg.checksums(&w.restored_database("c1")), original);
}

#[test]
fn an_in_place_restore_authenticates_the_whole_backup_before_touching_the_live_database() {
    let w = World::new(4, None);
    let original = w.pg.checksums(DB);
    let id = w.verified_backup();
    // The disaster: half the notes gone.
    w.pg.psql(DB, "DELETE FROM notes WHERE id % 2 = 0");
    let damaged_state = w.pg.checksums(DB);
    let in_place = [
        "-p",
        "in_place=true",
        "-p",
        "confirm=shop",
        "-p",
        "cutover=none",
    ];

    let mut args = vec!["--backup", id.as_str(), "--halt-after", "download"];
    args.extend(in_place);
    let out = w.recover("ip1", &args);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    damage_download(&w, "ip1");
    let out = w.lz(&["resume", "ip1"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let error = w.sb.status("ip1")["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(error.contains("is damaged"), "{error}");
    assert_eq!(
        w.pg.checksums(DB),
        damaged_state,
        "nothing of the live database was dropped"
    );
    w.ok(&["cancel", "ip1"]);

    let mut args = vec!["--backup", id.as_str()];
    args.extend(in_place);
    let out = w.recover("ip2", &args);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(w.restored_database("ip2"), DB);
    assert_eq!(
        w.pg.checksums(DB),
        original,
        "restored over the live database"
    );
}

#[test]
fn a_new_host_rebuilds_the_catalog_from_any_one_store() {
    let w = World::new(1, None);
    let id = w.verified_backup();
    // A new recovery host: empty state directory, same configuration.
    let fresh = w.sb.path().join("new-host-state");
    let listed =
        w.sb.cmd()
            .env("LAZARUS_STATE", &fresh)
            .args(["backups", "--json"])
            .output()
            .unwrap();
    assert!(listed.status.success(), "{}", text(&listed));
    let list: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["status"], "VERIFIED");
    let synced =
        w.sb.cmd()
            .env("LAZARUS_STATE", &fresh)
            .args(["catalog", "sync", "--store", "b2"])
            .output()
            .unwrap();
    assert!(
        text(&synced).contains("catalog rebuilt from store b2: 1 backups"),
        "{}",
        text(&synced)
    );
}

/// Entries of `dir` whose names start with `run.`.
fn work_files_of(dir: &std::path::Path, run: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{run}.")))
                .collect()
        })
        .unwrap_or_default()
}

fn database_exists(w: &World, name: &str) -> bool {
    w.pg.psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
    ) == "1"
}

#[test]
fn cancel_rollback_and_gc_clean_up_what_a_run_made_and_say_what_they_kept() {
    let w = World::new(10, Some(256 << 10));
    w.verified_backup();

    // Killed inside the restore, then rolled back without a resume: the half-restored
    // database, the download and the streamed archive go; the killed step is not left
    // "running".
    let args = w.recover_args("rb", &[]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut runner = w.sb.spawn(&refs);
    wait_report(&w, "rb", "restore running", |r| {
        step_status(r, "restore") == "running"
    });
    let restored = lazarus::activities::restore::restored_name(DB, "rb");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !database_exists(&w, &restored) {
        assert!(
            std::time::Instant::now() < deadline,
            "{restored} never appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    kill9(&mut runner);
    assert!(
        !work_files_of(&w.work, "rb").is_empty(),
        "the run made work files"
    );
    let out = w.lz(&["rollback", "rb", "--reason", "wrong backup"]);
    let shown = text(&out);
    assert!(
        !shown.contains("▸ restore started"),
        "the killed step is not shown restarting: {shown}"
    );
    let report = w.sb.status("rb");
    assert_eq!(report["status"], "rolled_back", "{report}");
    assert_eq!(step_status(&report, "restore"), "failed", "{report}");
    assert!(
        !database_exists(&w, &restored),
        "the partial database is dropped"
    );
    assert_eq!(work_files_of(&w.work, "rb"), Vec::<String>::new());
    let removed = Sandbox::step(&report, "restore")["discarded"]["removed"].to_string();
    assert!(removed.contains(&restored), "{report}");
    assert!(
        Sandbox::step(&report, "download")["discarded"]["removed"]
            .to_string()
            .contains("rb.lzr"),
        "{report}"
    );
    assert!(
        !report["results"].to_string().contains(&restored),
        "a dropped database is no result: {report}"
    );
    let status = w.ok(&["status", "rb"]);
    assert!(
        status.contains("cleanup") && status.contains(&restored),
        "{status}"
    );

    // Cancelled inside the (slow) download while another process drives it: the partial
    // file goes, and `cancel` says so.
    let args = w.recover_args("cx", &[]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut runner = w.sb.spawn(&refs);
    wait_report(&w, "cx", "download running", |r| {
        step_status(r, "download") == "running"
    });
    let part = w.work.join("cx.lzr.part");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !part.exists() {
        assert!(std::time::Instant::now() < deadline, "no partial download");
        std::thread::sleep(Duration::from_millis(20));
    }
    let said = w.ok(&["cancel", "cx"]);
    assert!(
        said.contains("cx.lzr.part"),
        "{said}\n{}\n{}",
        w.sb.status("cx"),
        std::fs::read_to_string(w.sb.state().join("lazarus.log")).unwrap_or_default()
    );
    let _ = runner.wait();
    assert!(!part.exists(), "the partial download is removed");
    assert_eq!(w.sb.status("cx")["status"], "cancelled");

    // A succeeded recovery rolled back: traffic went to the restored database, so it may
    // hold writes made since; it is kept, and the report says why.
    let out = w.recover("ok", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let served = w.restored_database("ok");
    let out = w.lz(&["rollback", "ok", "--reason", "back to the live database"]);
    assert_eq!(w.sb.status("ok")["status"], "rolled_back", "{}", text(&out));
    assert!(
        database_exists(&w, &served),
        "a database that took traffic is kept"
    );
    let report = w.sb.status("ok");
    let kept = Sandbox::step(&report, "restore")["discarded"]["kept"].to_string();
    assert!(
        kept.contains(&served) && kept.contains("traffic"),
        "{report}"
    );
    let status = w.ok(&["status", "ok"]);
    assert!(
        status.contains("(before the rollback)") && status.contains("undone: cutover"),
        "the summary does not leave \"traffic cut over\" standing: {status}"
    );

    // gc: what a crash kept the cleanup from removing goes; what no run here made is listed
    // and left alone; --dry-run removes nothing.
    std::fs::write(w.work.join("cx.dump"), b"left by a crash").unwrap();
    let own_work = w.sb.state().join("work");
    std::fs::create_dir_all(&own_work).unwrap();
    std::fs::write(own_work.join("stranger.lzr"), b"not ours").unwrap();
    w.pg.psql("postgres", &format!("CREATE DATABASE {DB}_restored_abcdef"));
    let dry = w.ok(&["gc", "--dry-run"]);
    assert!(
        dry.contains("would remove") && dry.contains("cx.dump"),
        "{dry}"
    );
    assert!(
        dry.contains("stranger.lzr") && dry.contains(&format!("{DB}_restored_abcdef")),
        "{dry}"
    );
    assert!(w.work.join("cx.dump").exists(), "a dry run removes nothing");
    let done = w.ok(&["gc"]);
    assert!(
        done.contains("removed") && done.contains("cx.dump"),
        "{done}"
    );
    assert!(!w.work.join("cx.dump").exists());
    assert!(
        own_work.join("stranger.lzr").exists(),
        "what no run made is left alone"
    );
    assert!(
        database_exists(&w, &served),
        "gc keeps a database that took traffic"
    );
    assert!(database_exists(&w, &format!("{DB}_restored_abcdef")));
}
