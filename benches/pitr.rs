//! Point-in-time recovery end to end — restore until the server is promoted at the target —
//! against pgBackRest and against the floor, in one run, on the data set of the recovery
//! benchmark (pgbench -s 60 + 3 M rows of md5 text) plus 30 s of `pgbench -c 2` after the
//! base backups:
//!
//! * floor: a plain copy (`cp -a`) of the same base backup Lazarus restores, unpacked to
//!   plain files beforehand (so both replay the same WAL from the same redo point), and
//!   `restore_command = 'cp …'` over plain WAL files;
//! * pgbackrest: `pgbackrest restore --type=time` (zst + aes-256-cbc repository), then start;
//! * lazarus: `lazarus recover --to T --param cutover=none` (plan, download, unpack, replay
//!   with `wal fetch --prefetch`).
//!
//! Every segment is archived by all three (one archive_command runs them in turn); restored
//! servers do not archive (so one round's new timeline does not change the next round).
//! Run: `cargo bench --bench pitr` (needs pgbackrest; LAZARUS_BENCH_SCALE overrides the scale).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{as_postgres, run_ok, which};
use lazarus::pg::cluster::{Cluster, free_port};
use lazarus::pg::sql::Sql;
use lazarus::pg::{Server, Tools, running_as_root};

fn chown(path: &Path) {
    if running_as_root() {
        run_ok(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(path),
            "chown",
        );
    }
}

/// Starts a restored data directory on a new port and waits until it is promoted.
fn start_and_wait_promoted(tools: &Tools, data: &Path, port: u16) {
    let conf = data.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap_or_default();
    text.push_str(&format!("port = {port}\nlisten_addresses = '127.0.0.1'\n"));
    std::fs::write(&conf, text).unwrap();
    chown(&conf);
    run_ok(
        Cluster::server_command(tools, "pg_ctl")
            .unwrap()
            .arg("-D")
            .arg(data)
            .arg("-l")
            .arg(data.with_extension("log"))
            .args(["-W", "-o"])
            .arg(format!("-k {}", data.display()))
            .arg("start"),
        "pg_ctl start",
    );
    wait_promoted(tools, port, data);
}

fn wait_promoted(tools: &Tools, port: u16, data: &Path) {
    let server = Server {
        host: Some("127.0.0.1".into()),
        port: Some(port),
        user: Some("postgres".into()),
        password: None,
    };
    let sql = Sql::new(tools, &server);
    let started = Instant::now();
    loop {
        if let Ok(Some(v)) = sql.scalar("postgres", "SELECT NOT pg_is_in_recovery()")
            && v == "t"
        {
            return;
        }
        if started.elapsed() > Duration::from_secs(600) {
            let log = std::fs::read_to_string(data.with_extension("log")).unwrap_or_default();
            panic!("{} never promoted:\n{log}", data.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// PostgreSQL's own account of the replay: "redo done ... elapsed: X s".
fn redo_elapsed(data: &Path) -> String {
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap_or_default();
    log.lines()
        .find(|l| l.contains("redo done"))
        .and_then(|l| l.split("elapsed: ").nth(1))
        .map(|s| format!("replay {}", s.trim()))
        .unwrap_or_else(|| "replay ?".into())
}

fn stop(tools: &Tools, data: &Path) {
    let _ = Cluster::server_command(tools, "pg_ctl")
        .unwrap()
        .arg("-D")
        .arg(data)
        .args(["-m", "immediate", "-w", "stop"])
        .output();
}

fn main() {
    let scale: u32 = std::env::var("LAZARUS_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let tools = Tools::new(None);
    let pgbackrest = which("pgbackrest")
        .expect("this benchmark compares with pgBackRest: apt-get install pgbackrest");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-pitr");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("plainwal")).unwrap();
    std::fs::create_dir_all(root.join("work")).unwrap();
    let lz = env!("CARGO_BIN_EXE_lazarus");

    let mut cluster =
        Cluster::create(tools.clone(), "pitrbench").expect("PostgreSQL server binaries");
    let port = cluster.port;
    // Lazarus's configuration and pgBackRest's, both readable by the server's user.
    let keys = root.join("keys");
    run_ok(
        Command::new(lz)
            .args(["key", "generate", "--file"])
            .arg(&keys),
        "key generate",
    );
    let config = root.join("lazarus.toml");
    std::fs::write(
        &config,
        format!(
            "[keys]\nfile = \"{}\"\n\n[postgres]\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"postgres\"\n\n[[stores]]\nname = \"local\"\nkind = \"local\"\npath = \"{}\"\n",
            keys.display(),
            root.join("store").display()
        ),
    )
    .unwrap();
    let pgbr_conf = root.join("pgbackrest.conf");
    std::fs::write(
        &pgbr_conf,
        format!(
            "[global]\nrepo1-path={repo}\nrepo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass=benchmark-passphrase\ncompress-type=zst\nlog-level-console=warn\nlog-level-file=off\nlock-path={root}/pgbr-lock\nspool-path={root}/pgbr-spool\nstart-fast=y\n\n[bench]\npg1-path={data}\npg1-port={port}\npg1-socket-path={socket}\n",
            repo = root.join("pgbr").display(),
            root = root.display(),
            data = cluster.data.display(),
            socket = cluster.root.display(),
        ),
    )
    .unwrap();
    chown(&root);
    let archive_command = format!(
        "{lz} --config {config} --state {state} wal push %p && {pgbackrest} --config={pgbr} --stanza=bench archive-push %p && cp %p {plain}/%f",
        config = config.display(),
        state = root.join("push-state").display(),
        pgbr = pgbr_conf.display(),
        plain = root.join("plainwal").display(),
    );
    cluster
        .configure(&[
            "fsync = off".into(),
            "max_wal_size = 8GB".into(),
            "maintenance_work_mem = 256MB".into(),
            "wal_level = replica".into(),
            "archive_mode = on".into(),
            format!("archive_command = '{archive_command}'"),
        ])
        .unwrap();
    cluster.start().unwrap();
    let server = cluster.server();
    let sql = Sql::new(&tools, &server);
    let pgbr = |args: &[&str]| {
        let mut cmd = as_postgres(&pgbackrest);
        cmd.arg(format!("--config={}", pgbr_conf.display()))
            .arg("--stanza=bench")
            .args(args);
        cmd
    };
    run_ok(&mut pgbr(&["stanza-create"]), "pgbackrest stanza-create");

    eprintln!("loading pgbench -s {scale} and 3M rows of md5 text");
    let pg_env = |cmd: &mut Command| {
        cmd.env("PGHOST", "127.0.0.1")
            .env("PGPORT", port.to_string())
            .env("PGUSER", "postgres");
    };
    let mut load = Command::new(tools.path("pgbench").unwrap());
    load.args(["-i", "-q", "-s", &scale.to_string(), "postgres"]);
    pg_env(&mut load);
    run_ok(&mut load, "pgbench -i");
    sql.execute(
        "postgres",
        "CREATE TABLE notes (id int PRIMARY KEY, body text); \
         INSERT INTO notes SELECT g, md5(g::text || random()::text) FROM generate_series(1, 3000000) g",
    )
    .unwrap();
    sql.execute("postgres", "CHECKPOINT").unwrap();

    eprintln!("base backups: lazarus, pgbackrest, plain");
    let lazarus = |args: &[&str]| {
        let mut cmd = Command::new(lz);
        cmd.current_dir(&root)
            .arg("--config")
            .arg(&config)
            .arg("--state")
            .arg(root.join("state"))
            .args(args)
            .env_remove("LAZARUS_KEYS");
        cmd
    };
    let work = format!("workdir={}", root.join("work").display());
    run_ok(
        &mut lazarus(&[
            "run",
            "base-backup",
            "--reason",
            "benchmark",
            "--param",
            &work,
        ]),
        "lazarus base backup",
    );
    run_ok(&mut pgbr(&["--type=full", "backup"]), "pgbackrest backup");

    eprintln!("30 s of pgbench -c 2");
    let mut bench = Command::new(tools.path("pgbench").unwrap());
    bench.args(["-c", "2", "-j", "2", "-T", "30", "postgres"]);
    pg_env(&mut bench);
    run_ok(&mut bench, "pgbench -T 30");
    let target = sql
        .scalar(
            "postgres",
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        )
        .unwrap()
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // One commit after the target, so every recovery can see it has passed the target.
    sql.execute("postgres", "CREATE TABLE after_target (x int)")
        .unwrap();
    let last = sql
        .scalar("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())")
        .unwrap()
        .unwrap();
    sql.execute("postgres", "SELECT pg_switch_wal()").unwrap();
    let started = Instant::now();
    loop {
        let done = sql
            .scalar(
                "postgres",
                "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
            )
            .unwrap()
            .unwrap_or_default();
        if done.as_str() >= last.as_str() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "archiving fell behind"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.stop().unwrap();
    // The floor restores the very base backup Lazarus restores, as plain files: both replay
    // the same WAL from the same redo point (a separate pg_basebackup taken later would start
    // later and replay less). Unpacked by Lazarus's own runbook, halted before recovery.
    let plain_base = root.join("plain-base");
    // Its own state directory: the halted run keeps its lock on the PITR target.
    let halted = Command::new(lz)
        .current_dir(&root)
        .arg("--config")
        .arg(&config)
        .arg("--state")
        .arg(root.join("plain-state"))
        .args([
            "recover",
            "--to",
            &target,
            "--reason",
            "benchmark: the floor's plain base backup",
            "--id",
            "bench-plain-base",
            "--halt-before",
            "recover",
            "--param",
            "cutover=none",
            "--param",
            &work,
            "--param",
            &format!("data_dir={}", plain_base.display()),
        ])
        .env_remove("LAZARUS_KEYS")
        .output()
        .expect("lazarus recover --halt-before recover");
    assert!(
        plain_base.join("backup_label").is_file(),
        "unpacking the plain base backup failed: {}",
        String::from_utf8_lossy(&halted.stderr)
    );
    let base_start = run_ok(
        Command::new("sh").arg("-c").arg(format!(
            "grep 'START WAL LOCATION' {}/backup_label | cut -d' ' -f6 | tr -d ')'",
            plain_base.display()
        )),
        "backup_label",
    );
    let segments = std::fs::read_dir(root.join("plainwal"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.len() == 24 && n.as_str() >= base_start.trim() && n.as_str() <= last.as_str()
        })
        .count();
    eprintln!("target {target}; {segments} segments from the base backups to the target");

    let mut floor = Duration::MAX;
    let mut pgbr_time = Duration::MAX;
    let mut lz_time = Duration::MAX;
    let mut steps = String::new();
    for round in 1..=3 {
        // floor: plain copy + cp restore_command.
        let _ = Command::new("sync").status();
        let dir = root.join(format!("floor-{round}"));
        let t = Instant::now();
        run_ok(
            Command::new("cp").arg("-a").arg(&plain_base).arg(&dir),
            "cp -a",
        );
        chown(&dir);
        let conf = dir.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap_or_default();
        text.push_str(&format!(
            "restore_command = 'cp {}/%f %p'\nrecovery_target_time = '{}'\nrecovery_target_action = 'promote'\narchive_mode = off\n",
            root.join("plainwal").display(),
            target.replace('T', " ").replace('Z', "+00")
        ));
        std::fs::write(&conf, text).unwrap();
        std::fs::write(dir.join("recovery.signal"), b"").unwrap();
        chown(&dir);
        start_and_wait_promoted(&tools, &dir, free_port().unwrap());
        let elapsed = t.elapsed();
        stop(&tools, &dir);
        eprintln!(
            "round {round}: floor {:.1}s ({})",
            elapsed.as_secs_f64(),
            redo_elapsed(&dir)
        );
        floor = floor.min(elapsed);
        let _ = std::fs::remove_dir_all(&dir);

        // pgbackrest restore --type=time.
        let _ = Command::new("sync").status();
        let dir = root.join(format!("pgbr-{round}"));
        std::fs::create_dir_all(&dir).unwrap();
        chown(&dir);
        let t = Instant::now();
        run_ok(
            &mut pgbr(&[
                &format!("--pg1-path={}", dir.display()),
                "--type=time",
                &format!("--target={}", target.replace('T', " ").replace('Z', "+00")),
                "--target-action=promote",
                "--archive-mode=off",
                "restore",
            ]),
            "pgbackrest restore",
        );
        start_and_wait_promoted(&tools, &dir, free_port().unwrap());
        let elapsed = t.elapsed();
        stop(&tools, &dir);
        eprintln!(
            "round {round}: pgbackrest {:.1}s ({})",
            elapsed.as_secs_f64(),
            redo_elapsed(&dir)
        );
        pgbr_time = pgbr_time.min(elapsed);
        let _ = std::fs::remove_dir_all(&dir);

        // lazarus recover --to.
        let _ = Command::new("sync").status();
        let dir = root.join(format!("lazarus-{round}"));
        let run = format!("bench-pitr-{round}");
        let t = Instant::now();
        run_ok(
            &mut lazarus(&[
                "recover",
                "--to",
                &target,
                "--reason",
                "benchmark",
                "--id",
                &run,
                "--param",
                "cutover=none",
                "--param",
                "archive_mode=off",
                "--param",
                &work,
                "--param",
                &format!("data_dir={}", dir.display()),
                "--param",
                &format!("config={}", config.display()),
            ]),
            "lazarus recover --to",
        );
        let elapsed = t.elapsed();
        stop(&tools, &dir);
        let out = run_ok(&mut lazarus(&["status", &run, "--json"]), "status");
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        let these = report["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                format!(
                    "{} {:.1}s",
                    s["id"].as_str().unwrap_or(""),
                    s["duration_seconds"].as_f64().unwrap_or(0.0)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        eprintln!(
            "round {round}: lazarus {:.1}s ({}; {these})",
            elapsed.as_secs_f64(),
            redo_elapsed(&dir)
        );
        if elapsed < lz_time {
            lz_time = elapsed;
            steps = these;
        }
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(dir.with_extension("log"));
    }
    println!();
    println!(
        "PITR to the end of 30 s of pgbench -c 2 ({segments} WAL segments after the base backup), restore → promoted:"
    );
    println!("  {:<58} {:>8}", "pipeline", "seconds");
    println!(
        "  {:<58} {:>8.1}",
        "floor: cp -a of a plain base backup, cp restore_command",
        floor.as_secs_f64()
    );
    println!(
        "  {:<58} {:>8.1}",
        "pgbackrest restore --type=time (zst, aes-256-cbc)",
        pgbr_time.as_secs_f64()
    );
    println!(
        "  {:<58} {:>8.1}",
        "lazarus recover --to (cutover=none)",
        lz_time.as_secs_f64()
    );
    println!(
        "  lazarus / floor: {:.2}x (goal <= 1.2x); pgbackrest / floor: {:.2}x",
        lz_time.as_secs_f64() / floor.as_secs_f64(),
        pgbr_time.as_secs_f64() / floor.as_secs_f64()
    );
    println!("  lazarus steps: {steps}");
    let _ = std::fs::remove_dir_all(&root);
}
