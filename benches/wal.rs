//! The WAL archive, measured:
//!
//! 1. `lazarus wal push` (and `--async`) segments per second against `pgbackrest
//!    archive-push` (Debian's pgBackRest, zst + aes-256-cbc; as documented, and with
//!    `archive-async` and two processes) and against `cp` and `cp` + `sync`, on the same 32
//!    real segments, one process per segment as PostgreSQL calls `archive_command`, with the
//!    archiver's `.ready`/`.done` files in `archive_status` as PostgreSQL keeps them.
//! 2. `pitr plan` over a synthetic catalog of 150,000 segments (30 days at 5,120 a day).
//!
//! Run: `cargo bench --bench wal` (needs pgbackrest: `apt-get install pgbackrest`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{as_postgres, run_ok, which};
use lazarus::pg::cluster::{Cluster, chown_to_postgres};
use lazarus::pg::sql::Sql;
use lazarus::pg::{Tools, running_as_root};
use lazarus::wal::catalog::WalCatalog;
use lazarus::wal::plan::{TimelineChoice, plan, synthetic_archive};

const SEGMENTS: usize = 32;

/// Seconds to run `each` once per segment, one process at a time, as PostgreSQL's archiver
/// does: every segment starts `.ready` in `archive_status`, and each success turns its
/// `.ready` into `.done` before the next call.
fn per_segment(segments: &[PathBuf], mut each: impl FnMut(&Path) -> Command) -> Duration {
    for seg in segments {
        let (ready, done) = status_files(seg);
        let _ = std::fs::remove_file(&done);
        std::fs::write(&ready, b"").unwrap();
    }
    if running_as_root()
        && let Some(status) = segments
            .first()
            .and_then(|s| status_files(s).0.parent().map(Path::to_path_buf))
    {
        chown_to_postgres(&status).unwrap();
        for seg in segments {
            chown_to_postgres(&status_files(seg).0).unwrap();
        }
    }
    let started = Instant::now();
    for seg in segments {
        run_ok(&mut each(seg), &format!("{}", seg.display()));
        let (ready, done) = status_files(seg);
        std::fs::rename(ready, done).unwrap();
    }
    started.elapsed()
}

/// A segment's `.ready` and `.done` files in `archive_status` beside it.
fn status_files(segment: &Path) -> (PathBuf, PathBuf) {
    let status = segment.with_file_name("archive_status");
    let name = segment.file_name().unwrap().to_string_lossy().to_string();
    (
        status.join(format!("{name}.ready")),
        status.join(format!("{name}.done")),
    )
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-wal");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    plan_benchmark(&root);

    let tools = Tools::new(None);
    let pgbackrest = which("pgbackrest").expect(
        "this benchmark compares with pgBackRest: apt-get install pgbackrest (scripts/setup.sh --bench)",
    );
    let mut cluster =
        Cluster::create(tools.clone(), "walbench").expect("PostgreSQL server binaries");
    cluster
        .configure(&[
            "wal_level = replica".into(),
            "max_wal_size = 4GB".into(),
            "archive_mode = on".into(),
            "archive_command = '/bin/true'".into(),
        ])
        .unwrap();
    cluster.start().unwrap();
    let port = cluster.port;
    let server = cluster.server();
    let sql = Sql::new(&tools, &server);

    // Real WAL: pgbench's load and a burst of its transactions.
    let mut load = Command::new(tools.path("pgbench").expect("pgbench"));
    load.args([
        "-i",
        "-s",
        "60",
        "-q",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-p",
    ])
    .arg(port.to_string())
    .arg("postgres");
    run_ok(&mut load, "pgbench -i");
    let current = sql
        .scalar("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())")
        .unwrap()
        .unwrap();
    let pg_wal = cluster.data.join("pg_wal");
    let mut names: Vec<String> = std::fs::read_dir(&pg_wal)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.len() == 24 && n.as_str() < current.as_str())
        .collect();
    names.sort();
    assert!(
        names.len() >= SEGMENTS,
        "only {} complete segments",
        names.len()
    );
    // A copy of pg_wal (and pg_control, which pgBackRest reads) where the archiver's
    // `.ready` files can be replayed for every tool.
    let fake_data = root.join("pgdata");
    let source = fake_data.join("pg_wal");
    std::fs::create_dir_all(source.join("archive_status")).unwrap();
    std::fs::create_dir_all(fake_data.join("global")).unwrap();
    std::fs::copy(
        cluster.data.join("global/pg_control"),
        fake_data.join("global/pg_control"),
    )
    .unwrap();
    let segments: Vec<PathBuf> = names[names.len() - SEGMENTS..]
        .iter()
        .map(|n| {
            let to = source.join(n);
            std::fs::copy(pg_wal.join(n), &to).unwrap();
            to
        })
        .collect();
    if running_as_root() {
        run_ok(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&root),
            "chown",
        );
    }

    // Lazarus's configuration: one local store, one key.
    let lz = env!("CARGO_BIN_EXE_lazarus");
    let keys = root.join("keys");
    run_ok(
        Command::new(lz)
            .args(["key", "generate", "--file"])
            .arg(&keys),
        "key generate",
    );
    let mut results: Vec<(String, Duration)> = Vec::new();
    for round in 1..=2 {
        let dir = root.join(format!("round{round}"));
        std::fs::create_dir_all(&dir).unwrap();
        if running_as_root() {
            chown_to_postgres(&dir).unwrap();
        }
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
        let cp_dir = dir.join("cp");
        let cp_sync_dir = dir.join("cp-sync");
        std::fs::create_dir_all(&cp_dir).unwrap();
        std::fs::create_dir_all(&cp_sync_dir).unwrap();
        // pgBackRest with zst and aes-256-cbc, its repository beside ours.
        let async_config = dir.join("lazarus-async.toml");
        std::fs::write(
            &async_config,
            format!(
                "[keys]\nfile = \"{}\"\n\n[[stores]]\nname = \"local\"\nkind = \"local\"\npath = \"{}\"\n",
                keys.display(),
                dir.join("store-async").display()
            ),
        )
        .unwrap();
        // pgBackRest as documented, and with its own asynchronous mode (two processes), each
        // with its own repository.
        let pgbr_conf = |name: &str, extra: &str| {
            let conf = dir.join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "[global]\nrepo1-path={repo}\nrepo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass=benchmark-passphrase\ncompress-type=zst\nlog-level-console=warn\nlog-level-file=off\nlock-path={dir}/lock-{name}\nspool-path={dir}/spool-{name}\n{extra}\n[bench]\npg1-path={data}\npg1-port={port}\npg1-socket-path={socket}\n",
                    repo = dir.join(name).display(),
                    dir = dir.display(),
                    data = cluster.data.display(),
                    socket = cluster.root.display(),
                ),
            )
            .unwrap();
            conf
        };
        let conf = pgbr_conf("pgbr", "");
        let conf_async = pgbr_conf("pgbr-async", "archive-async=y\nprocess-max=2\n");
        if running_as_root() {
            run_ok(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&dir),
                "chown",
            );
        }
        for conf in [&conf, &conf_async] {
            run_ok(
                as_postgres(&pgbackrest)
                    .arg(format!("--config={}", conf.display()))
                    .args(["--stanza=bench", "stanza-create"]),
                "pgbackrest stanza-create",
            );
        }
        let cp = per_segment(&segments, |seg| {
            let mut c = Command::new("cp");
            c.arg(seg).arg(&cp_dir);
            c
        });
        let cp_sync = per_segment(&segments, |seg| {
            let mut c = Command::new("sh");
            c.arg("-c").arg(format!(
                "cp {} {}/ && sync",
                seg.display(),
                cp_sync_dir.display()
            ));
            c
        });
        let lazarus = per_segment(&segments, |seg| {
            let mut c = Command::new(lz);
            c.arg("--config")
                .arg(&config)
                .arg("--state")
                .arg(dir.join("state"))
                .args(["wal", "push"])
                .arg(seg);
            c
        });
        let lazarus_async = per_segment(&segments, |seg| {
            let mut c = Command::new(lz);
            c.arg("--config")
                .arg(&async_config)
                .arg("--state")
                .arg(dir.join("state-async"))
                .args(["wal", "push", "--async"])
                .arg(seg);
            c
        });
        let pgbr = per_segment(&segments, |seg| {
            let mut c = as_postgres(&pgbackrest);
            c.arg(format!("--config={}", conf.display()))
                .args(["--stanza=bench", "archive-push"])
                .arg(seg);
            c
        });
        let pgbr_async = per_segment(&segments, |seg| {
            let mut c = as_postgres(&pgbackrest);
            c.arg(format!("--config={}", conf_async.display()))
                .arg(format!("--pg1-path={}", fake_data.display()))
                .args(["--stanza=bench", "archive-push"])
                .arg(seg);
            c
        });
        eprintln!(
            "round {round}: cp {:.2}s, cp+sync {:.2}s, lazarus {:.2}s, lazarus --async {:.2}s, pgbackrest {:.2}s, pgbackrest async {:.2}s",
            cp.as_secs_f64(),
            cp_sync.as_secs_f64(),
            lazarus.as_secs_f64(),
            lazarus_async.as_secs_f64(),
            pgbr.as_secs_f64(),
            pgbr_async.as_secs_f64()
        );
        for (name, t) in [
            ("cp", cp),
            ("cp+sync", cp_sync),
            ("lazarus", lazarus),
            ("lazarus --async", lazarus_async),
            ("pgbackrest", pgbr),
            ("pgbackrest async", pgbr_async),
        ] {
            match results.iter_mut().find(|(n, _)| n == name) {
                Some((_, best)) => *best = (*best).min(t),
                None => results.push((name.to_string(), t)),
            }
        }
    }
    for store in ["store", "store-async"] {
        let objects = count_objects(&root.join("round2").join(store));
        assert_eq!(
            objects, SEGMENTS,
            "{store}: {objects} segments archived of {SEGMENTS}"
        );
    }
    let stored: u64 = walk_size(&root.join("round2/store"));
    let rate = |name: &str| {
        let t = results
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| *t)
            .unwrap_or_default();
        SEGMENTS as f64 / t.as_secs_f64()
    };
    println!();
    println!(
        "wal push: {SEGMENTS} segments of 16 MiB, one process per segment (best of 2 rounds):"
    );
    for name in [
        "cp",
        "cp+sync",
        "pgbackrest",
        "pgbackrest async",
        "lazarus",
        "lazarus --async",
    ] {
        println!("  {name:<18} {:>7.1} segments/s", rate(name));
    }
    println!(
        "  lazarus --async / pgbackrest: {:.2}x (goal >= 2x); lazarus --async / pgbackrest async: {:.2}x; lazarus / pgbackrest (both synchronous): {:.2}x",
        rate("lazarus --async") / rate("pgbackrest"),
        rate("lazarus --async") / rate("pgbackrest async"),
        rate("lazarus") / rate("pgbackrest"),
    );
    println!(
        "  lazarus stored {:.1} MiB for {} MiB of WAL",
        stored as f64 / (1 << 20) as f64,
        SEGMENTS * 16
    );
    cluster.stop().unwrap();
    let _ = std::fs::remove_dir_all(&root);
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .flat_map(|e| {
            let p = e.path();
            if p.is_dir() { files_under(&p) } else { vec![p] }
        })
        .collect()
}

/// Archived segment objects (`.lzr`) under a store.
fn count_objects(dir: &Path) -> usize {
    files_under(dir)
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "lzr"))
        .count()
}

/// Bytes of all files under `dir`.
fn walk_size(dir: &Path) -> u64 {
    files_under(dir)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// `pitr plan` over 30 days of segments at the seed's rate.
fn plan_benchmark(root: &Path) {
    let db = sled::Config::new()
        .path(root.join("plan-catalog"))
        .open()
        .unwrap();
    let catalog = WalCatalog::new(db.open_tree("wal").unwrap());
    const T0: i64 = 1_790_000_000_000_000;
    let segments = 150_000u64;
    let per = 86_400 / 5_120 + 1;
    let started = Instant::now();
    let backup = synthetic_archive(&catalog, "main", segments, T0, per).unwrap();
    let built = started.elapsed();
    let mut times = Vec::new();
    let mut longest_chain = 0;
    for i in 0..200i64 {
        // Targets spread over the month, the far end included.
        let target = T0 + 2_000_000 + (i * (segments as i64 - 2) / 200) * per * 1_000_000;
        let t = Instant::now();
        let p = plan(
            &catalog,
            "main",
            target,
            TimelineChoice::Latest,
            std::slice::from_ref(&backup),
        )
        .unwrap();
        times.push(t.elapsed());
        longest_chain = longest_chain.max(p.segments);
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "pitr plan over {segments} segments (catalog built in {:.1}s): median {:.3} ms, max {:.3} ms (goal < 10 ms); longest chain {longest_chain} segments",
        built.as_secs_f64(),
        ms(times[times.len() / 2]),
        ms(*times.last().unwrap())
    );
}
