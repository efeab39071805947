//! The core on every PostgreSQL major users run: 15 (Debian's), 16, 17 and 18 (toolkits
//! scripts/setup.sh installs). Lazarus is given no version setting: its `bin_dir` names every
//! major's tools, 15 first, and it must pick those of the server's version (a backup, a
//! drill and a recovery with an older pg_dump or pg_ctl fail). Per major: a logical backup,
//! drill and streamed recovery with identical data; a base backup and point-in-time
//! recoveries to a time, an xid and a restore point with exact rows; and the WAL reader
//! against that version's `pg_waldump` on transaction ends that cross a segment's end —
//! whole records, a split header — and on prepared transactions.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::pg::{MAJORS, Pg, all_pg_bins, pg_bin};
use common::wal::{Archiving, end_big_transaction_at_a_segment_end, psql_at, waldump_xacts_across};
use common::{Sandbox, text};
use lazarus::wal::reader::{ScanOptions, XactKind, scan_segment, scan_segment_continued};
use serde_json::Value;

fn step<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["id"] == id))
        .unwrap_or_else(|| panic!("no step {id} in {report}"))
}

#[test]
fn logical_backup_drill_and_streamed_recovery_on_every_major() {
    for major in MAJORS {
        let pg = Pg::start_version(major);
        pg.load_sample("shop", 1);
        let sb = Sandbox::new();
        configure(&sb, &pg, Some(&all_pg_bins()));
        let work = format!("workdir={}", sb.path().join("work").display());
        sb.ok(&["backup", "--database", "shop", "-p", &work]);
        let listed: Value = serde_json::from_str(&sb.ok(&["backups", "--json"])).unwrap();
        let backup = listed
            .as_array()
            .and_then(|b| b.first())
            .unwrap_or_else(|| panic!("PostgreSQL {major}: no backup in {listed}"));
        assert!(
            backup["server_version"]
                .as_str()
                .is_some_and(|v| v.starts_with(&major.to_string())),
            "PostgreSQL {major}: {backup}"
        );
        assert!(
            backup["data_blocks"].is_array(),
            "PostgreSQL {major}: the backup must be streamable: {backup}"
        );

        sb.ok(&["drill", "--database", "shop", "-p", &work]);
        let drill: Value = serde_json::from_str(&sb.ok(&["status", "--json"])).unwrap();
        assert_eq!(
            step(&drill, "decrypt")["output"]["streamed"],
            true,
            "PostgreSQL {major}: the drill streams: {drill}"
        );

        sb.ok(&[
            "recover",
            "--database",
            "shop",
            "--reason",
            "every major",
            "--id",
            "r1",
            "-p",
            &work,
            "-p",
            "cutover=none",
        ]);
        let recovery = sb.status("r1");
        assert_eq!(
            step(&recovery, "decrypt")["output"]["streamed"],
            true,
            "PostgreSQL {major}: the recovery streams: {recovery}"
        );
        let restored = step(&recovery, "restore")["output"]["database"]
            .as_str()
            .unwrap_or_else(|| panic!("PostgreSQL {major}: no restored database: {recovery}"))
            .to_string();
        assert_eq!(
            pg.checksums(&restored),
            pg.checksums("shop"),
            "PostgreSQL {major}: the restored database equals the live one"
        );
    }
}

/// Writes the sandbox's configuration for `pg`, with `bin_dir` when given.
fn configure(sb: &Sandbox, pg: &Pg, bin_dir: Option<&str>) {
    let keys = sb.path().join("keys");
    if !keys.exists() {
        sb.ok(&["key", "generate", "--file", keys.to_str().unwrap()]);
    }
    let config = sb.write(
        "lazarus.toml",
        &format!(
            "[keys]\nfile = \"{}\"\n\n[postgres]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"postgres\"\n{}\n[[stores]]\nname = \"local\"\nkind = \"local\"\npath = \"store\"\n",
            keys.display(),
            pg.port(),
            bin_dir.map_or(String::new(), |d| format!("bin_dir = \"{d}\"\n"))
        ),
    );
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// With only PostgreSQL 15's tools (Debian's), a PostgreSQL 17 server's drill and backup
/// halt naming the tool and version to install; the backup is not marked FAILED, and once
/// the tools are there `resume` finishes the drill.
#[test]
fn a_missing_tool_of_the_servers_major_halts_names_what_to_install_and_marks_nothing() {
    let pg = Pg::start_version(17);
    pg.load_sample("shop", 1);
    let sb = Sandbox::new();
    let work = format!("workdir={}", sb.path().join("work").display());
    configure(&sb, &pg, Some(&pg_bin(17).display().to_string()));
    sb.ok(&["backup", "--database", "shop", "-p", &work]);

    configure(&sb, &pg, None);
    let out = sb.run(&["drill", "--database", "shop", "-p", &work]);
    assert!(!out.status.success(), "{}", text(&out));
    let drill: Value = serde_json::from_str(&sb.ok(&["status", "--json"])).unwrap();
    assert_eq!(drill["status"], "halted", "{drill}");
    let error = drill["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("pg_restore of PostgreSQL 17 is needed")
            && error.contains("postgresql-client-17")
            && error.contains("/usr/lib/postgresql/15/bin/pg_restore (15)"),
        "{error}"
    );
    let listed: Value = serde_json::from_str(&sb.ok(&["backups", "--json"])).unwrap();
    assert_ne!(listed[0]["status"], "FAILED", "{listed}");

    let out = sb.run(&["backup", "--database", "shop", "-p", &work]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("pg_dump of PostgreSQL 17 is needed"),
        "{}",
        text(&out)
    );

    configure(&sb, &pg, Some(&all_pg_bins()));
    let run = drill["id"].as_str().unwrap().to_string();
    sb.ok(&["resume", &run]);
    assert_eq!(sb.status(&run)["status"], "succeeded");
    let listed: Value = serde_json::from_str(&sb.ok(&["backups", "--json"])).unwrap();
    assert_eq!(listed[0]["status"], "VERIFIED", "{listed}");
}

/// A server archiving into two local stores, with the state directory of the commands.
struct Pitr {
    a: Archiving,
    state: tempfile::TempDir,
    restored: Vec<PathBuf>,
}

impl Drop for Pitr {
    fn drop(&mut self) {
        for data in &self.restored {
            if let Ok(mut cmd) = lazarus::pg::cluster::Cluster::server_command(
                &lazarus::pg::Tools::new(Some(pg_bin(
                    lazarus::pg::versions::data_dir_major(data).unwrap_or(15),
                ))),
                "pg_ctl",
            ) {
                let _ = cmd
                    .arg("-D")
                    .arg(data)
                    .args(["-m", "immediate", "-w", "stop"])
                    .output();
            }
        }
    }
}

impl Pitr {
    fn lazarus(&self, args: &[&str]) -> Output {
        let mut cmd = self.a.lazarus(&self.state.path().join("state"));
        cmd.current_dir(self.state.path())
            .args(args)
            .stdin(std::process::Stdio::null());
        Sandbox::run_in(cmd, &[])
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.lazarus(args);
        assert!(out.status.success(), "lazarus {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `recover` to a target, left running for inspection; the restored server's port.
    fn recover(&mut self, target: &[&str], name: &str) -> u16 {
        let data = self.a.cluster.root.join(name);
        let mut args: Vec<String> = vec!["recover".into()];
        args.extend(target.iter().map(|s| s.to_string()));
        for (flag, value) in [
            ("--reason", "every major".to_string()),
            ("--id", format!("pitr-{name}")),
            ("-p", "cutover=none".into()),
            ("-p", format!("data_dir={}", data.display())),
            ("-p", format!("config={}", self.a.config.display())),
            ("-p", format!("lazarus={}", self.a.binary.display())),
            ("-p", "database=postgres".into()),
        ] {
            args.push(flag.into());
            args.push(value);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.lazarus(&refs);
        self.restored.push(data);
        assert!(out.status.success(), "recover {target:?}: {}", text(&out));
        let report: Value =
            serde_json::from_str(&self.ok(&["status", &format!("pitr-{name}"), "--json"])).unwrap();
        step(&report, "recover")["output"]["port"]
            .as_u64()
            .unwrap_or_else(|| panic!("no port: {report}")) as u16
    }
}

fn ids(port: u16) -> Vec<i32> {
    psql_at(port, "SELECT id FROM ticks ORDER BY id")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

#[test]
fn point_in_time_recovery_to_a_time_an_xid_and_a_restore_point_on_every_major() {
    for major in MAJORS {
        let mut p = Pitr {
            a: Archiving::start_version(major, &["track_commit_timestamp = on"]),
            state: tempfile::tempdir().unwrap(),
            restored: Vec::new(),
        };
        p.a.psql("CREATE TABLE ticks (id int PRIMARY KEY)");
        let work = format!("workdir={}", p.state.path().join("work").display());
        p.ok(&["run", "base-backup", "--reason", "every major", "-p", &work]);
        p.a.psql("INSERT INTO ticks VALUES (1)");
        let xid =
            p.a.psql("BEGIN; INSERT INTO ticks VALUES (2); SELECT txid_current(); COMMIT;");
        let xid = xid.lines().last().unwrap_or_default().trim().to_string();
        p.a.psql("INSERT INTO ticks VALUES (3)");
        let at = p.a.psql(
            "SELECT to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM ticks WHERE id = 3",
        );
        p.a.psql("SELECT pg_create_restore_point('before-4')");
        p.a.psql("INSERT INTO ticks VALUES (4)");
        p.a.psql("INSERT INTO ticks VALUES (5)");
        p.a.switch_and_wait();

        let port = p.recover(&["--to", &at], "time");
        assert_eq!(ids(port), vec![1, 2, 3], "PostgreSQL {major}: to a time");
        let port = p.recover(&["--to-xid", &xid], "xid");
        assert_eq!(ids(port), vec![1, 2], "PostgreSQL {major}: to xid {xid}");
        let port = p.recover(&["--to-name", "before-4"], "name");
        assert_eq!(
            ids(port),
            vec![1, 2, 3],
            "PostgreSQL {major}: to a restore point"
        );
        assert_eq!(
            psql_at(
                port,
                "SELECT current_setting('server_version_num')::int / 10000"
            ),
            major.to_string(),
            "the restored server runs PostgreSQL {major}"
        );
    }
}

/// A DO block that pads WAL until the insert position is `room` bytes before a segment's
/// end. Within the last page, record sizes are exact: a logical message of n bytes takes
/// 57 + n bytes (aligned to 8) with a long data header, 54 + n with a short one.
fn pad_to_segment_end(room: u64) -> String {
    format!(
        "DO $$ DECLARE left_ bigint; BEGIN
           FOR i IN 1..200 LOOP
             left_ := 16777216 - (pg_current_wal_insert_lsn() - '0/0'::pg_lsn) % 16777216;
             EXIT WHEN left_ = {room};
             IF left_ > 7000 THEN
               PERFORM pg_logical_emit_message(false, 'pad', repeat('x', least(left_ - 6000, 1000000)::int));
             ELSIF left_ - {room} >= 285 THEN
               PERFORM pg_logical_emit_message(false, 'pad', repeat('x', (left_ - {room} - 57)::int));
             ELSIF left_ - {room} >= 56 THEN
               PERFORM pg_logical_emit_message(false, 'pad', repeat('x', (left_ - {room} - 54)::int));
             ELSE
               PERFORM pg_logical_emit_message(false, 'pad', repeat('x', 7000));
             END IF;
           END LOOP;
         END $$;"
    )
}

/// The segment the insert position is in, and the one before it (pg_wal paths).
fn last_two(a: &Archiving) -> (PathBuf, PathBuf, u64) {
    let current = a.psql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())");
    let segno = u64::from_str_radix(&current[16..], 16).unwrap()
        + (u64::from_str_radix(&current[8..16], 16).unwrap() << 8);
    let name = |n: u64| format!("{}{:08X}{:08X}", &current[..8], n >> 8, n & 0xFF);
    (
        a.pg_wal().join(name(segno - 1)),
        a.pg_wal().join(&current),
        segno << 24,
    )
}

fn kind_name(kind: XactKind) -> &'static str {
    match kind {
        XactKind::Commit | XactKind::CommitPrepared => "COMMIT",
        XactKind::Abort | XactKind::AbortPrepared => "ABORT",
    }
}

/// Our reader on `before` (with `after` beside it) against pg_waldump across both: the
/// same transaction ends, placed in the segment they start in.
fn agrees_with_pg_waldump(major: u32, before: &Path, after: &Path, boundary: u64) {
    let theirs = waldump_xacts_across(&pg_bin(major).join("pg_waldump"), before, Some(after));
    let ours = scan_segment_continued(
        &std::fs::read(before).unwrap(),
        Some(&std::fs::read(after).unwrap()),
        ScanOptions {
            collect_xacts: true,
        },
    )
    .unwrap();
    let ours: Vec<(u64, String, i64)> = ours
        .xacts
        .iter()
        .map(|x| (x.lsn.0, kind_name(x.kind).to_string(), x.time))
        .collect();
    let placed: Vec<(u64, String, i64)> = theirs
        .iter()
        .filter(|x| x.0 < boundary && x.0 >= boundary - (16 << 20))
        .map(|x| (x.0, x.2.clone(), x.3))
        .collect();
    assert!(
        !placed.is_empty(),
        "PostgreSQL {major}: pg_waldump found nothing"
    );
    assert_eq!(ours, placed, "PostgreSQL {major}: {}", before.display());
}

#[test]
fn the_wal_reader_agrees_with_pg_waldump_on_every_major_and_counts_a_split_header() {
    for major in MAJORS {
        let a = Archiving::start_version(
            major,
            &["wal_keep_size = '1GB'", "max_prepared_transactions = 5"],
        );
        a.psql("CREATE TABLE sub (i int)");
        // Prepared transactions, committed and rolled back, and a restore point.
        a.psql("BEGIN; INSERT INTO sub VALUES (1); PREPARE TRANSACTION 'p1'");
        a.psql("BEGIN; INSERT INTO sub VALUES (2); PREPARE TRANSACTION 'p2'");
        a.psql("COMMIT PREPARED 'p1'");
        a.psql("ROLLBACK PREPARED 'p2'");
        a.psql("SELECT pg_create_restore_point('r1')");
        let (_, prepared, prepared_end) = last_two(&a);
        let prepared_end = prepared_end + (16 << 20);
        // A commit whose header is split by the segment's end: 16 of its 24 header bytes
        // in the first segment. Other backends may write in between: try a few times.
        let mut split = None;
        for _ in 0..8 {
            // The insert, the padding and the commit in one session: the commit record is
            // the next thing written unless another backend writes in between.
            let out = a.psql(&format!(
                "BEGIN; INSERT INTO sub VALUES (5); SELECT txid_current(); {} COMMIT;",
                pad_to_segment_end(16)
            ));
            let xid = out.lines().next().unwrap_or_default().trim().to_string();
            let (before, after, boundary) = last_two(&a);
            let theirs =
                waldump_xacts_across(&pg_bin(major).join("pg_waldump"), &before, Some(&after));
            if let Some(x) = theirs.iter().find(|x| x.0 == boundary - 16) {
                split = Some((before, after, boundary, x.clone(), xid));
                break;
            }
        }
        let (before, after, boundary, record, xid) = split.unwrap_or_else(|| {
            panic!("PostgreSQL {major}: no commit began 16 bytes before a segment's end")
        });
        a.switch_and_wait();
        // Alone, the first segment cannot read the commit, and says so.
        let alone = scan_segment(&std::fs::read(&before).unwrap(), ScanOptions::default()).unwrap();
        assert!(alone.split_tail, "PostgreSQL {major}: the split is noticed");
        agrees_with_pg_waldump(major, &before, &after, boundary);
        // wal push read it with the next segment: the archive counts it where it starts.
        let state = tempfile::tempdir().unwrap();
        let listed = a
            .lazarus(state.path())
            .args(["wal", "list", "--json"])
            .output()
            .unwrap();
        let listed: Value = serde_json::from_slice(&listed.stdout).unwrap_or(Value::Null);
        let first = before.file_name().unwrap().to_string_lossy().to_string();
        let manifest = listed["files"]
            .as_array()
            .and_then(|l| l.iter().find(|m| m["file"] == first.as_str()))
            .unwrap_or_else(|| panic!("PostgreSQL {major}: {first} not listed: {listed}"))
            .clone();
        let xid: u64 = xid.parse().unwrap();
        assert!(
            manifest["xid_max"].as_u64() == Some(xid)
                && manifest["last_xact_time"].as_str().is_some_and(|t| {
                    lazarus::wal::archive::rfc3339_to_micros(t) == Some(record.3)
                }),
            "PostgreSQL {major}: the split commit (xid {xid}, {record:?}) is counted in {first}: {manifest}"
        );

        // Whole records crossing the end: a big commit and a big abort.
        for end in ["COMMIT", "ROLLBACK"] {
            let mut crossed = None;
            for _ in 0..4 {
                end_big_transaction_at_a_segment_end(&a, end);
                let (before, after, boundary) = last_two(&a);
                // An abort is not flushed at once: the switch writes it out.
                a.switch_and_wait();
                let theirs =
                    waldump_xacts_across(&pg_bin(major).join("pg_waldump"), &before, Some(&after));
                if theirs
                    .iter()
                    .any(|x| x.0 < boundary && x.0 + x.1 > boundary)
                {
                    crossed = Some((before, after, boundary));
                    break;
                }
            }
            let (before, after, boundary) = crossed.unwrap_or_else(|| {
                let (before, after, boundary) = last_two(&a);
                let theirs = waldump_xacts_across(
                    &pg_bin(major).join("pg_waldump"),
                    &before,
                    Some(&after),
                );
                panic!(
                    "PostgreSQL {major}: no {end} crossed a segment's end ({boundary:#X}); the last: {:?}",
                    theirs.iter().rev().take(3).collect::<Vec<_>>()
                )
            });
            agrees_with_pg_waldump(major, &before, &after, boundary);
        }
        // The segment with the prepared transactions, read as pg_waldump reads it.
        let name = prepared.file_name().unwrap().to_string_lossy().to_string();
        let segno = u64::from_str_radix(&name[16..], 16).unwrap()
            + (u64::from_str_radix(&name[8..16], 16).unwrap() << 8)
            + 1;
        let next = a.pg_wal().join(format!(
            "{}{:08X}{:08X}",
            &name[..8],
            segno >> 8,
            segno & 0xFF
        ));
        agrees_with_pg_waldump(major, &prepared, &next, prepared_end);
        // The restore point, as pushed.
        let started = Instant::now();
        let listed: Value = loop {
            let out = a
                .lazarus(state.path())
                .args(["wal", "restore-points", "--json"])
                .output()
                .unwrap();
            let value: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            if value.to_string().contains("\"r1\"") || started.elapsed() > Duration::from_secs(30) {
                break value;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(
            listed.to_string().contains("\"r1\""),
            "PostgreSQL {major}: the restore point is indexed: {listed}"
        );
    }
}
