//! A full recovery from the local store beside its floor and the seed, on the data:
//! pgbench -s 60 plus a 3-million-row table of random md5 text (four md5s a row), a 1.4 GB
//! database whose `pg_dump -Fc` is about 250 MB (the issue: 1.4 GB, 218 MB):
//!
//! * raw: `pg_restore --jobs 2` of the plain `pg_dump -Fc -Z0` archive already on disk (the
//!   issue's floor), and `--jobs 4` (the job count Lazarus picks on two cores, to show what
//!   the pipeline itself costs);
//! * lazarus: `lazarus recover --param cutover=none` with its defaults (two jobs per core,
//!   each table streamed from the backup into pg_restore): select, download, decrypt,
//!   pg_restore, checks, report, from the local store;
//! * lazarus, written out: the same with `stream=false` (the whole archive decrypted to disk
//!   first, big tables cut into parts), to show what streaming changes;
//! * seed: Python `Fernet.decrypt` + `gzip.decompress` of its `*.dump.gz.enc`, then
//!   `pg_restore -j4`.
//!
//! Five interleaved rounds; best and median of each.
//!
//! Run: `cargo bench --bench recovery` (LAZARUS_BENCH_SCALE overrides the pgbench scale).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{measure, mib};
use lazarus::pg::Tools;
use lazarus::pg::cluster::Cluster;
use lazarus::pg::sql::Sql;

const DB: &str = "bench";

fn env(cmd: &mut Command, port: u16) -> &mut Command {
    cmd.env("PGHOST", "127.0.0.1")
        .env("PGPORT", port.to_string())
        .env("PGUSER", "postgres")
        .env_remove("PGDATABASE")
}

fn main() {
    let scale: u32 = std::env::var("LAZARUS_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-recovery");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let tools = Tools::new(None);
    let mut cluster = Cluster::create(tools.clone(), "bench").expect("PostgreSQL server binaries");
    // The same server settings for every pipeline; durability is not what is measured.
    cluster
        .configure(&[
            "fsync = off".into(),
            "synchronous_commit = off".into(),
            "max_wal_size = 8GB".into(),
            "maintenance_work_mem = 256MB".into(),
        ])
        .unwrap();
    cluster.start().unwrap();
    let port = cluster.port;
    let server = cluster.server();
    let sql = Sql::new(&tools, &server);

    eprintln!("loading pgbench -s {scale} and 3M rows of random md5 text");
    let started = Instant::now();
    common::load_dataset(&tools, &sql, port, DB, scale, 3_000_000);
    let size = sql
        .scalar(DB, &format!("SELECT pg_database_size('{DB}')"))
        .unwrap()
        .unwrap_or_default();
    eprintln!(
        "database: {:.0} MiB, loaded in {:.0}s",
        mib(size.parse().unwrap_or(0)),
        started.elapsed().as_secs_f64()
    );

    // The plain archive for the raw baseline.
    let plain = root.join("plain.dump");
    let ok = env(
        Command::new(tools.path("pg_dump").unwrap()).args([
            "-Fc",
            "-Z0",
            "-f",
            plain.to_str().unwrap(),
            DB,
        ]),
        port,
    )
    .status()
    .unwrap();
    assert!(ok.success());

    // Lazarus's backup, in its local store.
    let bench_lazarus = common::BenchLazarus::new(&root, port);
    let key_file = bench_lazarus.key_file.clone();
    let lazarus = |args: &[&str]| bench_lazarus.cmd(args);
    let work = format!("workdir={}", root.join("work").display());
    assert!(
        lazarus(&["backup", "--database", DB, "--param", &work])
            .status()
            .unwrap()
            .success()
    );
    let out = lazarus(&["backups", "--json"]).output().unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let backup = &list[0];
    let id = backup["id"].as_str().unwrap().to_string();

    // The seed's backup: pg_dump -Fc | gzip | one Fernet token.
    let seed_dump = root.join("seed.dump");
    let ok = env(
        Command::new(tools.path("pg_dump").unwrap()).args([
            "-Fc",
            "-f",
            seed_dump.to_str().unwrap(),
            DB,
        ]),
        port,
    )
    .status()
    .unwrap();
    assert!(ok.success());
    let key = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_string();
    let seed = root.join("seed.dump.gz.enc");
    let ok = Command::new("python3")
        .args([
            "-c",
            "import sys, gzip\nfrom cryptography.fernet import Fernet\nkey, src, dst = sys.argv[1:4]\nopen(dst, 'wb').write(Fernet(key.encode()).encrypt(gzip.compress(open(src, 'rb').read(), compresslevel=6)))\n",
            &key,
            seed_dump.to_str().unwrap(),
            seed.to_str().unwrap(),
        ])
        .status()
        .expect("python3 with the cryptography package");
    assert!(ok.success());
    std::fs::remove_file(&seed_dump).unwrap();
    let plain_size = std::fs::metadata(&plain).unwrap().len();
    let seed_size = std::fs::metadata(&seed).unwrap().len();

    // Before each pipeline: nothing left over, and nothing of the last one still dirty in
    // the page cache for this one to pay the writeback of.
    let fresh = |name: &str| {
        sql.execute(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        )
        .unwrap();
        sql.execute("postgres", "CHECKPOINT").unwrap();
        let _ = Command::new("sync").status();
    };

    // Five rounds, interleaved; best and median of each: this VM's disk and memory swing by
    // seconds between runs.
    let mut raw_all = Vec::new();
    let mut raw4_all = Vec::new();
    let mut lz_all = Vec::new();
    let mut seed_all = Vec::new();
    let mut raw = Duration::MAX;
    let mut raw4 = Duration::MAX;
    let mut lz_time = Duration::MAX;
    let mut lz_rss = 0u64;
    let mut out_all = Vec::new();
    let mut out_time = Duration::MAX;
    let mut out_rss = 0u64;
    let mut seed_time = Duration::MAX;
    let mut seed_rss = 0u64;
    let mut steps: Vec<(String, f64)> = Vec::new();
    let seed_out = root.join("seed-restored.dump");
    for round in 1..=5 {
        // raw: pg_restore --jobs 2 of the plain archive already on disk.
        fresh("raw");
        let started = Instant::now();
        sql.execute("postgres", "CREATE DATABASE raw TEMPLATE template0")
            .unwrap();
        measure(env(
            Command::new(tools.path("pg_restore").unwrap()).args([
                "--jobs=2",
                "--dbname=raw",
                plain.to_str().unwrap(),
            ]),
            port,
        ));
        eprintln!("round {round}: raw {:.1}s", started.elapsed().as_secs_f64());
        raw = raw.min(started.elapsed());
        raw_all.push(started.elapsed());
        fresh("raw");

        // raw with Lazarus's job count.
        let started = Instant::now();
        sql.execute("postgres", "CREATE DATABASE raw TEMPLATE template0")
            .unwrap();
        measure(env(
            Command::new(tools.path("pg_restore").unwrap()).args([
                "--jobs=4",
                "--dbname=raw",
                plain.to_str().unwrap(),
            ]),
            port,
        ));
        eprintln!(
            "round {round}: raw -j4 {:.1}s",
            started.elapsed().as_secs_f64()
        );
        raw4 = raw4.min(started.elapsed());
        raw4_all.push(started.elapsed());
        fresh("raw");

        // lazarus: the whole runbook, cut-over aside; streamed (the default), then with the
        // archive written out.
        for streamed in [true, false] {
            let run_id = format!("bench-recovery-{round}-{streamed}");
            let stream = format!("stream={streamed}");
            let (t, rss) = measure(&mut lazarus(&[
                "recover",
                "--database",
                DB,
                "--backup",
                &id,
                "--reason",
                "benchmark",
                "--id",
                &run_id,
                "--param",
                &work,
                "--param",
                "cutover=none",
                "--param",
                "check_tables=pgbench_accounts",
                "--param",
                &stream,
            ]));
            let out = lazarus(&["status", &run_id, "--json"]).output().unwrap();
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let restore = report["steps"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["id"] == "restore")
                .cloned()
                .unwrap_or_default();
            let inner = restore["output"]["pg_restore_seconds"]
                .as_f64()
                .unwrap_or(0.0);
            eprintln!(
                "round {round}: lazarus ({}) {:.1}s (pg_restore itself {inner:.1}s)",
                if streamed { "streamed" } else { "written out" },
                t.as_secs_f64()
            );
            if streamed {
                lz_rss = lz_rss.max(rss);
                lz_all.push(t);
                if t < lz_time {
                    lz_time = t;
                    steps = report["steps"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| {
                            (
                                s["id"].as_str().unwrap_or("").to_string(),
                                s["duration_seconds"].as_f64().unwrap_or(0.0),
                            )
                        })
                        .collect();
                }
            } else {
                out_rss = out_rss.max(rss);
                out_all.push(t);
                out_time = out_time.min(t);
            }
            let restored = restore["output"]["database"]
                .as_str()
                .unwrap_or("")
                .to_string();
            fresh(&restored);
        }

        // seed: decrypt + gunzip the whole file in Python, then pg_restore -j4.
        let started = Instant::now();
        let (_, rss) = measure(Command::new("python3").args([
            "-c",
            "import sys, gzip\nfrom cryptography.fernet import Fernet\nkey, src, dst = sys.argv[1:4]\nopen(dst, 'wb').write(gzip.decompress(Fernet(key.encode()).decrypt(open(src, 'rb').read())))\n",
            &key,
            seed.to_str().unwrap(),
            seed_out.to_str().unwrap(),
        ]));
        sql.execute("postgres", "CREATE DATABASE seed TEMPLATE template0")
            .unwrap();
        let (_, restore_rss) = measure(env(
            Command::new(tools.path("pg_restore").unwrap()).args([
                "--jobs=4",
                "--dbname=seed",
                seed_out.to_str().unwrap(),
            ]),
            port,
        ));
        eprintln!(
            "round {round}: seed {:.1}s",
            started.elapsed().as_secs_f64()
        );
        seed_time = seed_time.min(started.elapsed());
        seed_all.push(started.elapsed());
        seed_rss = seed_rss.max(rss).max(restore_rss);
        fresh("seed");
        let _ = std::fs::remove_file(&seed_out);
    }

    println!();
    println!(
        "full recovery of a {:.0} MiB database ({:.0} MiB pg_dump -Fc -Z0 archive; lazarus backup {:.0} MiB; seed backup {:.0} MiB):",
        mib(size.parse().unwrap_or(0)),
        mib(plain_size),
        mib(backup["size"].as_u64().unwrap_or(0)),
        mib(seed_size)
    );
    let median = |all: &mut Vec<Duration>| {
        all.sort();
        all[all.len() / 2].as_secs_f64()
    };
    let (raw_med, raw4_med, lz_med, out_med, seed_med) = (
        median(&mut raw_all),
        median(&mut raw4_all),
        median(&mut lz_all),
        median(&mut out_all),
        median(&mut seed_all),
    );
    println!(
        "  {:<58} {:>6} {:>7} {:>10}",
        "pipeline", "best", "median", "peak RSS"
    );
    println!(
        "  {:<58} {:>6.1} {:>7.1} {:>10}",
        "raw: pg_restore --jobs 2 of the plain archive on disk",
        raw.as_secs_f64(),
        raw_med,
        "-"
    );
    println!(
        "  {:<58} {:>6.1} {:>7.1} {:>10}",
        "raw: pg_restore --jobs 4 of the plain archive on disk",
        raw4.as_secs_f64(),
        raw4_med,
        "-"
    );
    println!(
        "  {:<58} {:>6.1} {:>7.1} {:>6.0} MiB",
        "lazarus recover (defaults: streamed, jobs 4), local store",
        lz_time.as_secs_f64(),
        lz_med,
        mib(lz_rss)
    );
    println!(
        "  {:<58} {:>6.1} {:>7.1} {:>6.0} MiB",
        "lazarus recover, archive written out (stream=false)",
        out_time.as_secs_f64(),
        out_med,
        mib(out_rss)
    );
    println!(
        "  {:<58} {:>6.1} {:>7.1} {:>6.0} MiB",
        "seed: python decrypt+gunzip, then pg_restore -j4",
        seed_time.as_secs_f64(),
        seed_med,
        mib(seed_rss)
    );
    println!(
        "  lazarus / raw -j4 (same jobs: the pipeline's own cost): best {:.3}x, median {:.3}x",
        lz_time.as_secs_f64() / raw4.as_secs_f64(),
        lz_med / raw4_med
    );
    println!(
        "  lazarus / raw -j2: best {:.3}x, median {:.3}x (goal <= 1.10x); seed / raw: best {:.3}x, median {:.3}x; lazarus is {:.2}x (best) / {:.2}x (median) faster than the seed (goal >= 1.3x)",
        lz_time.as_secs_f64() / raw.as_secs_f64(),
        lz_med / raw_med,
        seed_time.as_secs_f64() / raw.as_secs_f64(),
        seed_med / raw_med,
        seed_time.as_secs_f64() / lz_time.as_secs_f64(),
        seed_med / lz_med
    );
    println!(
        "  lazarus steps: {}",
        steps
            .iter()
            .map(|(id, s)| format!("{id} {s:.1}s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    cluster.stop().unwrap();
    let _ = std::fs::remove_dir_all(&root);
}
