//! A PostgreSQL cluster that archives its WAL with `lazarus wal push`, into two local stores.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lazarus::pg::cluster::Cluster;
use lazarus::pg::{Tools, running_as_root};

/// A cluster with archive_command = 'lazarus wal push %p' and the configuration it uses.
pub struct Archiving {
    pub cluster: Cluster,
    /// Everything lazarus needs, readable by the server's user.
    pub home: PathBuf,
    /// lazarus.toml.
    pub config: PathBuf,
    /// The binary the server runs.
    pub binary: PathBuf,
}

fn chown_postgres(path: &Path) {
    if running_as_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .expect("chown");
        assert!(ok.success());
    }
}

impl Archiving {
    /// initdb, configure archiving through lazarus, start.
    pub fn start(extra: &[&str]) -> Archiving {
        Self::start_with(extra, "")
    }

    /// As `start`, with more stores (TOML) in front of the two local ones.
    pub fn start_with(extra: &[&str], stores_first: &str) -> Archiving {
        Self::start_full(Tools::new(None), extra, stores_first)
    }

    /// An archiving cluster of one PostgreSQL major version; Lazarus's configuration names
    /// every major's tools (`bin_dir`), so it must pick them by the server's version.
    pub fn start_version(major: u32, extra: &[&str]) -> Archiving {
        Self::start_full(Tools::new(Some(super::pg::pg_bin(major))), extra, "")
            .with_bin_dir(&super::pg::all_pg_bins())
    }

    /// Adds `bin_dir` to the `[postgres]` section of the configuration.
    fn with_bin_dir(self, dirs: &str) -> Archiving {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let text = text.replacen(
            "[postgres]\n",
            &format!("[postgres]\nbin_dir = \"{dirs}\"\n"),
            1,
        );
        std::fs::write(&self.config, text).unwrap();
        self
    }

    fn start_full(tools: Tools, extra: &[&str], stores_first: &str) -> Archiving {
        let cluster = Cluster::create(tools, "wal").unwrap_or_else(|e| {
            panic!("this test needs PostgreSQL's server binaries (Debian: apt-get install postgresql): {e}")
        });
        let home = cluster.root.join("lazarus");
        std::fs::create_dir_all(home.join("state")).unwrap();
        // The server's user runs the binary: link it where that user can reach it.
        let binary = home.join("lazarus");
        let source = PathBuf::from(env!("CARGO_BIN_EXE_lazarus"));
        if std::fs::hard_link(&source, &binary).is_err() {
            std::fs::copy(&source, &binary).unwrap();
        }
        let keys = home.join("keys");
        let out = Command::new(&binary)
            .args(["key", "generate", "--file"])
            .arg(&keys)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = home.join("lazarus.toml");
        std::fs::write(
            &config,
            format!(
                "[keys]\nfile = \"{keys}\"\n\n[postgres]\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"postgres\"\n\n{stores_first}\
                 [[stores]]\nname = \"primary\"\nkind = \"local\"\npath = \"{a}\"\n\n\
                 [[stores]]\nname = \"secondary\"\nkind = \"local\"\npath = \"{b}\"\n",
                keys = keys.display(),
                port = cluster.port,
                a = home.join("store-a").display(),
                b = home.join("store-b").display(),
            ),
        )
        .unwrap();
        // Secrets live in it: readable by its owner (the server's user) alone.
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        chown_postgres(&home);
        let mut lines = vec![
            "fsync = off".to_string(),
            "wal_level = replica".into(),
            "archive_mode = on".into(),
            format!(
                "archive_command = '{} --config {} --state {} wal push %p'",
                binary.display(),
                config.display(),
                home.join("state").display()
            ),
        ];
        lines.extend(extra.iter().map(|l| l.to_string()));
        cluster.configure(&lines).unwrap();
        let mut archiving = Archiving {
            cluster,
            home,
            config,
            binary,
        };
        archiving
            .cluster
            .start()
            .unwrap_or_else(|e| panic!("cannot start PostgreSQL: {e}"));
        archiving
    }

    /// Runs SQL, returns psql's unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        psql_at(self.cluster.port, sql)
    }

    /// Switches to a new segment and waits until the old one is archived; returns its name.
    pub fn switch_and_wait(&self) -> String {
        let segment = self.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
        self.psql("SELECT pg_switch_wal()");
        self.wait_archived(&segment);
        segment
    }

    /// Waits until `segment` (or a later one) is archived; fails on archiver errors.
    pub fn wait_archived(&self, segment: &str) {
        let started = Instant::now();
        loop {
            let row = self.psql(
                "SELECT coalesce(last_archived_wal, ''), failed_count, coalesce(last_failed_wal, '') FROM pg_stat_archiver",
            );
            let fields: Vec<&str> = row.split('|').collect();
            if fields[0] >= segment && fields[0].len() == 24 {
                return;
            }
            if started.elapsed() > Duration::from_secs(60) {
                let log = std::fs::read_to_string(self.cluster.root.join("server.log"))
                    .unwrap_or_default();
                panic!(
                    "{segment} was not archived in 60 s (archiver: {row}); server log:\n{}",
                    log.lines()
                        .rev()
                        .take(30)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's pg_wal directory.
    pub fn pg_wal(&self) -> PathBuf {
        self.cluster.data.join("pg_wal")
    }

    /// A lazarus command with this configuration (and the test's own state directory).
    pub fn lazarus(&self, state: &Path) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--state")
            .arg(state)
            .env("LAZARUS_OPERATOR", "tester")
            .env_remove("RUST_LOG");
        cmd
    }
}

/// Runs SQL on a local server port.
pub fn psql_at(port: u16, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
        ])
        .arg(port.to_string())
        .args(["-d", "postgres", "-c", sql])
        .output()
        .expect("psql (Debian: apt-get install postgresql-client)");
    assert!(
        out.status.success(),
        "psql failed on {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// (lsn, total length, kind, time in µs) of every transaction end `pg_waldump` reads from
/// the segment file `first`, or from `first` to `last` (records that cross from one into the
/// next included); prepared ones count as COMMIT and ABORT, as the reader counts them.
pub fn waldump_xacts_across(
    pg_waldump: &Path,
    first: &Path,
    last: Option<&Path>,
) -> Vec<(u64, u64, String, i64)> {
    let out = Command::new(pg_waldump)
        .args(["--rmgr=Transaction"])
        .arg(first)
        .args(last)
        .env("TZ", "UTC")
        .output()
        .expect("run pg_waldump");
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let (Some(lsn), Some(len), Some(desc)) = (
            line.split("lsn: ").nth(1).and_then(|s| s.split(',').next()),
            line.split("len (rec/tot): ")
                .nth(1)
                .and_then(|s| s.split(',').next())
                .and_then(|s| s.split('/').nth(1)),
            line.split("desc: ").nth(1),
        ) else {
            continue;
        };
        let mut words = desc.splitn(2, ' ');
        let kind = match words.next().unwrap_or("") {
            "COMMIT" | "COMMIT_PREPARED" => "COMMIT",
            "ABORT" | "ABORT_PREPARED" => "ABORT",
            _ => continue,
        };
        let mut rest = words.next().unwrap_or("").trim();
        // Prepared ones name their xid first: "COMMIT_PREPARED 745: 2026-...".
        if let Some((first, after)) = rest.split_once(' ')
            && first.ends_with(':')
        {
            rest = after;
        }
        let stamp = rest.split(';').next().unwrap_or("").trim();
        let time = chrono::NaiveDateTime::parse_from_str(
            stamp.trim_end_matches(" UTC"),
            "%Y-%m-%d %H:%M:%S%.f",
        )
        .unwrap_or_else(|e| panic!("pg_waldump time {stamp:?}: {e}"))
        .and_utc()
        .timestamp_micros();
        found.push((
            lsn.trim().parse::<lazarus::wal::Lsn>().unwrap().0,
            len.trim().parse().unwrap(),
            kind.to_string(),
            time,
        ));
    }
    found
}

/// Ends a transaction of 3000 subtransactions (a ~12 KB commit or abort record) a few KiB
/// before the end of the current segment, so that its record crosses into the next one.
pub fn end_big_transaction_at_a_segment_end(a: &Archiving, end: &str) {
    a.psql(&format!(
        "BEGIN;
         DO $$ BEGIN FOR i IN 1..3000 LOOP
             BEGIN INSERT INTO sub VALUES (i); EXCEPTION WHEN others THEN NULL; END;
         END LOOP; END $$;
         DO $$ DECLARE room numeric; BEGIN LOOP
             room := 16777216 - (pg_current_wal_insert_lsn() - '0/0'::pg_lsn) % 16777216;
             EXIT WHEN room BETWEEN 2000 AND 6000;
             PERFORM pg_logical_emit_message(false, 'pad',
                 repeat('x', CASE WHEN room < 2000 THEN 4000 ELSE least(room - 4000, 1000000)::int END));
         END LOOP; END $$;
         {end};"
    ));
}
