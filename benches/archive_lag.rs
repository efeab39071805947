//! Archive lag under load: PostgreSQL's archiver calling `lazarus wal push --async %p`
//! while `pgbench -c 2` runs at full speed, against the same load archived by pgBackRest's
//! `archive-push` (asynchronous, two processes, zst + aes-256-cbc: its fast configuration).
//!
//! Sampled every 100 ms: segments waiting (`.ready` in `archive_status`) and segments
//! behind (the current WAL segment against `pg_stat_archiver.last_archived_wal`); every
//! 2 s for Lazarus, the lag `lazarus wal status` reports (now − newest archived commit).
//! Two loads: pgbench's TPC-B-like one (the issue's), and bulk inserts of ~1 MiB per
//! transaction that fill segments as fast as the disk allows.
//! Goal (issue 11 item 20): at most 2 segments waiting at any moment.
//!
//! Run: `cargo bench --bench archive_lag` (needs pgbench and pgbackrest; `LAZARUS_LOAD_SECONDS`
//! shortens the 60 s load).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{as_postgres, run_ok, which};
use lazarus::pg::cluster::Cluster;
use lazarus::pg::sql::Sql;
use lazarus::pg::{Tools, running_as_root};

/// What one archiver did under the load.
#[derive(Debug, Default)]
struct Lag {
    max_ready: usize,
    max_behind: u64,
    max_status_lag: Option<f64>,
    tps: f64,
    archived: u64,
    failed: u64,
}

fn main() {
    let seconds: u64 = std::env::var("LAZARUS_LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let tools = Tools::new(None);
    let pgbackrest = which("pgbackrest").expect(
        "this benchmark compares with pgBackRest: apt-get install pgbackrest (scripts/setup.sh --bench)",
    );
    let pgbench = tools.path("pgbench").expect("pgbench (postgresql-client)");
    let mut cluster =
        Cluster::create(tools.clone(), "archlag").expect("PostgreSQL server binaries");
    let dir = cluster.root.join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    let lz = env!("CARGO_BIN_EXE_lazarus");
    let keys = dir.join("keys");
    run_ok(
        Command::new(lz)
            .args(["key", "generate", "--file"])
            .arg(&keys),
        "key generate",
    );
    let config = dir.join("lazarus.toml");
    std::fs::write(
        &config,
        format!(
            "[keys]\nfile = \"{}\"\n\n[[stores]]\nname = \"local\"\nkind = \"local\"\npath = \"{}\"\n",
            keys.display(),
            dir.join("store").display()
        ),
    )
    .unwrap();
    let state = dir.join("state");
    let pgbr_conf = dir.join("pgbr.conf");
    std::fs::write(
        &pgbr_conf,
        format!(
            "[global]\nrepo1-path={repo}\nrepo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass=benchmark-passphrase\ncompress-type=zst\nlog-level-console=warn\nlog-level-file=off\nlock-path={dir}/lock\nspool-path={dir}/spool\narchive-async=y\nprocess-max=2\n\n[bench]\npg1-path={data}\npg1-port={port}\npg1-socket-path={socket}\n",
            repo = dir.join("pgbr-repo").display(),
            dir = dir.display(),
            data = cluster.data.display(),
            port = cluster.port,
            socket = cluster.root.display(),
        ),
    )
    .unwrap();
    if running_as_root() {
        run_ok(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir),
            "chown",
        );
    }
    let lazarus_command = format!(
        "{lz} --config {} --state {} wal push --async %p",
        config.display(),
        state.display()
    );
    let pgbr_command = format!(
        "{pgbackrest} --config={} --stanza=bench archive-push %p",
        pgbr_conf.display()
    );
    cluster
        .configure(&[
            "wal_level = replica".into(),
            "max_wal_size = 4GB".into(),
            "archive_mode = on".into(),
            format!("archive_command = '{lazarus_command}'"),
        ])
        .unwrap();
    cluster.start().unwrap();
    let server = cluster.server();
    let sql = Sql::new(&tools, &server);
    run_ok(
        as_postgres(&pgbackrest)
            .arg(format!("--config={}", pgbr_conf.display()))
            .args(["--stanza=bench", "stanza-create"]),
        "pgbackrest stanza-create",
    );
    let port = cluster.port.to_string();
    let mut init = Command::new(&pgbench);
    init.args([
        "-i",
        "-s",
        "20",
        "-q",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-p",
    ])
    .arg(&port)
    .arg("postgres");
    run_ok(&mut init, "pgbench -i");
    settle(&sql, &cluster.data);
    // Two loads: pgbench's own (TPC-B-like, little WAL per transaction), and a bulk one
    // (each transaction writes ~1 MiB of rows) that fills segments as fast as the disk
    // takes them, which is what stresses an archiver.
    sql.execute(
        "postgres",
        "CREATE TABLE bulk (id int, pad text) WITH (autovacuum_enabled = off)",
    )
    .unwrap();
    let bulk = dir.join("bulk.sql");
    std::fs::write(
        &bulk,
        "INSERT INTO bulk SELECT g, repeat('x', 1000) FROM generate_series(1, 1000) g;\n",
    )
    .unwrap();
    if running_as_root() {
        lazarus::pg::cluster::chown_to_postgres(&bulk).unwrap();
    }
    let bulk_seconds = (seconds / 2).max(5);
    let loads: [(&str, Option<&Path>, u64); 2] = [
        ("pgbench (TPC-B)", None, seconds),
        ("bulk inserts", Some(bulk.as_path()), bulk_seconds),
    ];
    let lazarus_status = || {
        let out = Command::new(lz)
            .args(["--config"])
            .arg(&config)
            .arg("--state")
            .arg(&state)
            .args(["wal", "status", "--json"])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        answer["lag_seconds"].as_f64()
    };
    let mut lazarus = Vec::new();
    for (_, script, secs) in loads {
        lazarus.push(under_load(
            &pgbench,
            &port,
            (script, secs),
            &sql,
            &cluster.data,
            lazarus_status,
        ));
        settle(&sql, &cluster.data);
    }
    sql.execute(
        "postgres",
        &format!(
            "ALTER SYSTEM SET archive_command = {}",
            lazarus::pg::sql::literal(&pgbr_command)
        ),
    )
    .unwrap();
    sql.execute("postgres", "SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let mut pgbr = Vec::new();
    for (_, script, secs) in loads {
        pgbr.push(under_load(
            &pgbench,
            &port,
            (script, secs),
            &sql,
            &cluster.data,
            || None,
        ));
        settle(&sql, &cluster.data);
    }

    println!();
    println!(
        "archive lag: 2 clients at full speed, on {} cores, sampled every 100 ms:",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for (i, (load, _, secs)) in loads.iter().enumerate() {
        println!("  {load}, {secs} s:");
        for (name, lag) in [
            ("lazarus wal push --async", &lazarus[i]),
            ("pgbackrest archive-push (async, 2 processes)", &pgbr[i]),
        ] {
            println!(
                "    {name:<46} max {:>2} .ready waiting, max {:>2} segments behind, {:>4} archived ({} failed calls), {:.0} tps{}",
                lag.max_ready,
                lag.max_behind,
                lag.archived,
                lag.failed,
                lag.tps,
                lag.max_status_lag
                    .map(|l| format!(", max `wal status` lag {l:.1} s"))
                    .unwrap_or_default()
            );
        }
    }
    let worst = lazarus.iter().map(|l| l.max_ready).max().unwrap_or(0);
    let worst_pgbr = pgbr.iter().map(|l| l.max_ready).max().unwrap_or(0);
    println!(
        "  goal: at most 2 segments waiting — lazarus {} (max {worst}; pgbackrest max {worst_pgbr})",
        if worst <= 2 { "met" } else { "NOT met" },
    );
    cluster.stop().unwrap();
}

/// Runs pgbench at full speed for `seconds` and samples the archiver meanwhile.
fn under_load(
    pgbench: &Path,
    port: &str,
    (script, seconds): (Option<&Path>, u64),
    sql: &Sql,
    data: &Path,
    mut status_lag: impl FnMut() -> Option<f64>,
) -> Lag {
    let (archived0, failed0) = archiver_counts(sql);
    let mut cmd = Command::new(pgbench);
    if let Some(script) = script {
        cmd.arg("-f").arg(script);
    }
    let mut load = cmd
        .args(["-c", "2", "-j", "2", "-T"])
        .arg(seconds.to_string())
        .args(["-h", "127.0.0.1", "-U", "postgres", "-p", port, "postgres"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("pgbench");
    let mut lag = Lag::default();
    let mut last_status = Instant::now() - Duration::from_secs(10);
    loop {
        if let Ok(Some(_)) = load.try_wait() {
            break;
        }
        lag.max_ready = lag.max_ready.max(ready_count(data));
        if let Some(behind) = segments_behind(sql) {
            lag.max_behind = lag.max_behind.max(behind);
        }
        if last_status.elapsed() >= Duration::from_secs(2) {
            last_status = Instant::now();
            if let Some(l) = status_lag() {
                lag.max_status_lag = Some(lag.max_status_lag.map_or(l, |m: f64| m.max(l)));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = load.wait_with_output().expect("pgbench output");
    let text = String::from_utf8_lossy(&out.stdout);
    lag.tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l["tps = ".len()..].split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    let (archived, failed) = archiver_counts(sql);
    lag.archived = archived - archived0;
    lag.failed = failed - failed0;
    lag
}

/// Segments waiting for the archiver.
fn ready_count(data: &Path) -> usize {
    std::fs::read_dir(data.join("pg_wal/archive_status"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".ready"))
                .count()
        })
        .unwrap_or(0)
}

/// Whole segments between the newest archived one and the one being written.
fn segments_behind(sql: &Sql) -> Option<u64> {
    let row = sql
        .query(
            "postgres",
            "SELECT pg_walfile_name(pg_current_wal_lsn()), coalesce(last_archived_wal, '') FROM pg_stat_archiver",
        )
        .ok()?;
    let row = row.first()?;
    let current = segno(row.first()?)?;
    let archived = segno(row.get(1)?)?;
    Some(current.saturating_sub(archived + 1))
}

/// A WAL file name's segment number (timeline ignored: one timeline here).
fn segno(name: &str) -> Option<u64> {
    if name.len() < 24 {
        return None;
    }
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    Some(log * 256 + seg)
}

fn archiver_counts(sql: &Sql) -> (u64, u64) {
    sql.query(
        "postgres",
        "SELECT archived_count, failed_count FROM pg_stat_archiver",
    )
    .ok()
    .and_then(|rows| {
        let row = rows.first()?;
        Some((row.first()?.parse().ok()?, row.get(1)?.parse().ok()?))
    })
    .unwrap_or((0, 0))
}

/// Switches to a fresh segment and waits until nothing is waiting, so each pass starts
/// from an empty queue.
fn settle(sql: &Sql, data: &Path) {
    let _ = sql.execute("postgres", "SELECT pg_switch_wal()");
    let deadline = Instant::now() + Duration::from_secs(300);
    while ready_count(data) > 0 {
        assert!(
            Instant::now() < deadline,
            "the archiver did not catch up within 5 minutes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
