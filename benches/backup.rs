//! `lazarus backup` beside its floor and the old system's pipeline, on the recovery
//! benchmark's data (pgbench -s 60 plus 3 million rows of random md5 text, 1.4 GB): the RPO of
//! a logical backup is bounded by how long it takes.
//!
//! * floor: `pg_dump -Fc -Z0 > /dev/null` — the dump alone, nothing kept;
//! * lazarus: `lazarus backup` to a local store (pg_dump -Fc -Z0 → zstd → chunked Fernet →
//!   the store, manifest published), its wall time and peak RSS;
//! * seed: `pg_dump -Fc | gzip -9 > file`, then one Fernet token over the whole file in
//!   Python `cryptography` (what the Django/Celery system did), its wall time and the
//!   encryption's peak RSS.
//!
//! Peak memory flat in database size: Lazarus's peak RSS is also measured on a database a
//! tenth the size, in the same run.
//!
//! Three interleaved rounds; best and median. Goal: lazarus ≤ 1.15x the floor, ≥ 3x faster
//! than the seed.
//!
//! Run: `cargo bench --bench backup` (LAZARUS_BENCH_SCALE overrides the pgbench scale).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{measure, mib};
use lazarus::pg::Tools;
use lazarus::pg::cluster::Cluster;
use lazarus::pg::sql::Sql;

fn env(cmd: &mut Command, port: u16) -> &mut Command {
    cmd.env("PGHOST", "127.0.0.1")
        .env("PGPORT", port.to_string())
        .env("PGUSER", "postgres")
        .env_remove("PGDATABASE")
}

fn best_and_median(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    (v[0].as_secs_f64(), v[v.len() / 2].as_secs_f64())
}

fn main() {
    let scale: u32 = std::env::var("LAZARUS_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-backup");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let tools = Tools::new(None);
    let mut cluster = Cluster::create(tools.clone(), "bench").expect("PostgreSQL server binaries");
    cluster
        .configure(&[
            "fsync = off".into(),
            "synchronous_commit = off".into(),
            "max_wal_size = 8GB".into(),
        ])
        .unwrap();
    cluster.start().unwrap();
    let port = cluster.port;
    let server = cluster.server();
    let sql = Sql::new(&tools, &server);

    eprintln!("loading pgbench -s {scale} + 3M md5 rows, and a database a tenth the size");
    let started = Instant::now();
    common::load_dataset(&tools, &sql, port, "bench", scale, 3_000_000);
    common::load_dataset(&tools, &sql, port, "small", (scale / 10).max(1), 300_000);
    let size = |db: &str| -> u64 {
        sql.scalar(db, &format!("SELECT pg_database_size('{db}')"))
            .unwrap()
            .unwrap_or_default()
            .parse()
            .unwrap_or(0)
    };
    eprintln!(
        "databases: {:.0} MiB and {:.0} MiB, loaded in {:.0}s",
        mib(size("bench")),
        mib(size("small")),
        started.elapsed().as_secs_f64()
    );

    let bench_lazarus = common::BenchLazarus::new(&root, port);
    let key_file = bench_lazarus.key_file.clone();
    let lazarus = |args: &[&str]| bench_lazarus.cmd(args);
    let key = std::fs::read_to_string(&key_file)
        .unwrap()
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .unwrap()
        .trim()
        .to_string();
    let pg_dump = tools.path("pg_dump").unwrap();
    let work = format!("workdir={}", root.join("work").display());
    let settle = || {
        let _ = Command::new("sync").status();
        let _ = std::fs::remove_dir_all(root.join("store"));
    };
    let backup = |db: &str| -> (Duration, u64) {
        settle();
        measure(&mut lazarus(&[
            "backup",
            "--database",
            db,
            "--param",
            &work,
        ]))
    };

    let (mut floor, mut ours, mut seed) = (Vec::new(), Vec::new(), Vec::new());
    let (mut our_rss, mut seed_rss, mut small_rss) = (0u64, 0u64, 0u64);
    for round in 1..=3 {
        settle();
        let (t, _) = measure(env(
            Command::new("sh").args([
                "-c",
                &format!("'{}' -Fc -Z0 bench > /dev/null", pg_dump.display()),
            ]),
            port,
        ));
        floor.push(t);

        let (t, rss) = backup("bench");
        ours.push(t);
        our_rss = our_rss.max(rss);

        settle();
        let gz = root.join("seed.dump.gz");
        let enc = root.join("seed.dump.gz.enc");
        let (dump_time, _) = measure(env(
            Command::new("sh").args([
                "-c",
                &format!(
                    "'{}' -Fc bench | gzip -9 > '{}'",
                    pg_dump.display(),
                    gz.display()
                ),
            ]),
            port,
        ));
        let (enc_time, rss) = measure(Command::new("python3").args([
            "-c",
            "import sys\nfrom cryptography.fernet import Fernet\nkey, src, dst = sys.argv[1:4]\nopen(dst, 'wb').write(Fernet(key.encode()).encrypt(open(src, 'rb').read()))\n",
            &key,
            gz.to_str().unwrap(),
            enc.to_str().unwrap(),
        ]));
        seed.push(dump_time + enc_time);
        seed_rss = seed_rss.max(rss);
        let _ = std::fs::remove_file(&gz);
        let _ = std::fs::remove_file(&enc);

        let (_, rss) = backup("small");
        small_rss = small_rss.max(rss);
        eprintln!(
            "round {round}: floor {:.1}s, lazarus {:.1}s, seed {:.1}s",
            floor[round - 1].as_secs_f64(),
            ours[round - 1].as_secs_f64(),
            seed[round - 1].as_secs_f64()
        );
    }
    let (fb, fm) = best_and_median(floor);
    let (lb, lm) = best_and_median(ours);
    let (sb, sm) = best_and_median(seed);
    println!(
        "backup of a {:.0} MiB database (best / median of 3 rounds)",
        mib(size("bench"))
    );
    println!("  floor   pg_dump -Fc -Z0 > /dev/null          {fb:6.1} s / {fm:6.1} s");
    println!(
        "  lazarus backup (zstd, encrypt, store)        {lb:6.1} s / {lm:6.1} s   {:.2}x / {:.2}x the floor (goal <= 1.15)   peak RSS {:.0} MiB",
        lb / fb,
        lm / fm,
        mib(our_rss)
    );
    println!(
        "  seed    pg_dump | gzip -9, one Fernet token {sb:6.1} s / {sm:6.1} s   lazarus {:.2}x / {:.2}x faster (goal >= 3)   peak RSS {:.0} MiB",
        sb / lb,
        sm / lm,
        mib(seed_rss)
    );
    println!(
        "  lazarus peak RSS: {:.0} MiB on {:.0} MiB, {:.0} MiB on {:.0} MiB (flat in database size)",
        mib(small_rss),
        mib(size("small")),
        mib(our_rss),
        mib(size("bench"))
    );
    let _ = cluster.stop();
    let _ = std::fs::remove_dir_all(Path::new(&root));
}
