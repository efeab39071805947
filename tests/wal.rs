//! The WAL archive on a real PostgreSQL: `archive_command = 'lazarus wal push %p'`, the WAL
//! reader against pg_waldump, fetch with failover, re-push safety, list/check/status.

mod common;

use std::path::Path;

use common::wal::{Archiving, end_big_transaction_at_a_segment_end, waldump_xacts_across};
use lazarus::pg::Tools;
use lazarus::wal::reader::{ScanOptions, XactKind, scan_segment};

fn pg_waldump() -> std::path::PathBuf {
    Tools::new(None)
        .path("pg_waldump")
        .expect("pg_waldump (Debian: apt-get install postgresql)")
}

fn workload(a: &Archiving, rounds: usize) {
    a.psql("CREATE TABLE IF NOT EXISTS t (id serial primary key, at timestamptz default clock_timestamp(), pad text)");
    for i in 0..rounds {
        a.psql(&format!(
            "INSERT INTO t (pad) SELECT repeat('x', 200) FROM generate_series(1, {})",
            50 + i
        ));
        // An aborted transaction that wrote something leaves an abort record.
        a.psql("BEGIN; INSERT INTO t (pad) VALUES ('gone'); ROLLBACK;");
    }
}

/// `lazarus wal fetch SEGMENT DEST`, which must succeed; the fetched bytes.
fn fetched(a: &Archiving, state: &Path, segment: &str, dest: &Path) -> Vec<u8> {
    let out = a
        .lazarus(state)
        .args(["wal", "fetch", segment])
        .arg(dest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "wal fetch {segment}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(dest).unwrap()
}

/// (lsn, kind, time in µs) of every commit/abort pg_waldump finds in one segment file.
fn waldump_xacts(file: &Path) -> Vec<(String, String, i64)> {
    waldump_xacts_across(&pg_waldump(), file, None)
        .into_iter()
        .map(|(lsn, _, kind, time)| (lazarus::wal::Lsn(lsn).to_string(), kind, time))
        .collect()
}

#[test]
fn wal_reader_agrees_with_pg_waldump_on_commit_times() {
    let a = Archiving::start(&[]);
    let first = a.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    workload(&a, 40);
    // Enough WAL to cross segments, so records straddle pages and segment starts continue.
    a.psql("INSERT INTO t (pad) SELECT repeat(md5(g::text), 40) FROM generate_series(1, 40000) g");
    workload(&a, 10);
    let last = a.switch_and_wait();
    let mut compared = 0;
    let mut files: Vec<_> = std::fs::read_dir(a.pg_wal())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.len() == 24 && n.as_str() >= first.as_str() && n.as_str() <= last.as_str())
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "the workload should span segments: {files:?}"
    );
    for name in &files {
        let path = a.pg_wal().join(name);
        let data = std::fs::read(&path).unwrap();
        let scan = scan_segment(
            &data,
            ScanOptions {
                collect_xacts: true,
            },
        )
        .unwrap();
        assert_eq!(scan.name.file_name(scan.segment_size), *name);
        assert_eq!(scan.server_version, 15);
        let ours: Vec<(String, String, i64)> = scan
            .xacts
            .iter()
            .map(|x| {
                let kind = match x.kind {
                    XactKind::Commit | XactKind::CommitPrepared => "COMMIT",
                    XactKind::Abort | XactKind::AbortPrepared => "ABORT",
                };
                (
                    format!("{}", x.lsn).replace('/', "/"),
                    kind.to_string(),
                    x.time,
                )
            })
            .collect();
        let theirs = waldump_xacts(&path);
        // pg_waldump zero-pads the low half of LSNs; compare as numbers.
        let norm = |v: &[(String, String, i64)]| -> Vec<(u64, String, i64)> {
            v.iter()
                .map(|(l, k, t)| (l.parse::<lazarus::wal::Lsn>().unwrap().0, k.clone(), *t))
                .collect()
        };
        assert_eq!(norm(&ours), norm(&theirs), "segment {name}");
        compared += theirs.len();
        if let (Some(first), Some(last)) = (theirs.first(), theirs.last()) {
            assert_eq!(
                scan.first_xact_time,
                Some(
                    first
                        .2
                        .min(last.2)
                        .min(theirs.iter().map(|x| x.2).min().unwrap())
                )
            );
            assert_eq!(scan.last_xact_time, theirs.iter().map(|x| x.2).max());
        }
    }
    assert!(compared > 50, "only {compared} transaction ends compared");
}

#[test]
fn a_transaction_end_that_crosses_a_segment_boundary_belongs_to_the_segment_it_starts_in() {
    let a = Archiving::start(&["wal_keep_size = '1GB'"]);
    a.psql("CREATE TABLE sub (i int)");
    for (end, kind) in [("COMMIT", "COMMIT"), ("ROLLBACK", "ABORT")] {
        // Try a few times: a background record written in between can move the end.
        let mut straddled = None;
        for _ in 0..4 {
            end_big_transaction_at_a_segment_end(&a, end);
            let current = a.psql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())");
            a.switch_and_wait();
            let segno = u64::from_str_radix(&current[16..], 16).unwrap()
                + (u64::from_str_radix(&current[8..16], 16).unwrap() << 8);
            let name = |n: u64| format!("{}{:08X}{:08X}", &current[..8], n >> 8, n & 0xFF);
            let (before, after) = (a.pg_wal().join(name(segno - 1)), a.pg_wal().join(&current));
            let boundary = segno << 24;
            let theirs = waldump_xacts_across(&pg_waldump(), &before, Some(&after));
            if let Some(x) = theirs
                .iter()
                .find(|x| x.2 == kind && x.0 < boundary && x.0 + x.1 > boundary)
            {
                straddled = Some((before, after, boundary, x.clone(), theirs));
                break;
            }
        }
        let (before, after, boundary, record, theirs) =
            straddled.unwrap_or_else(|| panic!("no {kind} record crossed a segment boundary"));
        let scan = |path: &Path| {
            scan_segment(
                &std::fs::read(path).unwrap(),
                ScanOptions {
                    collect_xacts: true,
                },
            )
            .unwrap()
        };
        let (first, second) = (scan(&before), scan(&after));
        assert!(
            first.runs_off,
            "{kind}: the scan says the last record runs off"
        );
        let kind_of = |k: XactKind| match k {
            XactKind::Commit | XactKind::CommitPrepared => "COMMIT",
            XactKind::Abort | XactKind::AbortPrepared => "ABORT",
        };
        let ours: Vec<(u64, String, i64)> = first
            .xacts
            .iter()
            .map(|x| (x.lsn.0, kind_of(x.kind).to_string(), x.time))
            .collect();
        let placed: Vec<(u64, String, i64)> = theirs
            .iter()
            .filter(|x| x.0 < boundary)
            .map(|x| (x.0, x.2.clone(), x.3))
            .collect();
        assert_eq!(ours, placed, "{kind}: segment as pg_waldump places it");
        assert_eq!(first.last_xact_time, Some(record.3), "{kind}: last time");
        assert!(
            second.xacts.iter().all(|x| x.lsn.0 != record.0),
            "{kind}: the next segment does not count it again"
        );
    }
}

#[test]
fn unknown_page_magic_is_refused_by_name() {
    let mut data = vec![0u8; 16 << 20];
    data[0] = 0x06;
    data[1] = 0xD1;
    let err = scan_segment(&data, ScanOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("0xD106"), "{err}");
    assert!(err.contains("PostgreSQL 15"), "{err}");
}

#[test]
fn wal_push_archives_and_fetch_restores_with_failover() {
    let a = Archiving::start(&[]);
    workload(&a, 5);
    let segment = a.switch_and_wait();
    let original = std::fs::read(a.pg_wal().join(&segment)).unwrap();
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");

    // list: the segment with its commit times.
    let out = a
        .lazarus(&state)
        .args(["wal", "list", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = listed["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file"] == segment.as_str())
        .unwrap_or_else(|| panic!("{segment} not listed: {listed}"));
    assert!(entry["commits"].as_u64().unwrap() >= 5, "{entry}");
    assert!(entry["aborts"].as_u64().unwrap() >= 5, "{entry}");
    assert!(entry["last_xact_time"].as_str().is_some(), "{entry}");
    assert_eq!(
        entry["system_id"],
        a.psql("SELECT system_identifier FROM pg_control_system()")
    );

    // fetch: byte-identical.
    assert!(
        fetched(&a, &state, &segment, &work.path().join("fetched")) == original,
        "fetched segment differs"
    );

    // failover: the first store lost it, the second still serves it.
    let object = lazarus::wal::archive::object_key("main", &segment);
    std::fs::remove_file(a.home.join("store-a").join(&object)).unwrap();
    assert!(fetched(&a, &state, &segment, &work.path().join("fetched2")) == original);

    // re-push of the same content: success, and the missing copy is repaired.
    let copy = work.path().join(&segment);
    std::fs::write(&copy, &original).unwrap();
    let out = a
        .lazarus(&state)
        .args(["wal", "push"])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        a.home.join("store-a").join(&object).exists(),
        "re-push should repair the missing copy"
    );

    // different content under the same name: refused, archive untouched.
    let mut tampered = original.clone();
    let at = tampered.len() - 100;
    tampered[at] ^= 0xFF;
    std::fs::write(&copy, &tampered).unwrap();
    let out = a
        .lazarus(&state)
        .args(["wal", "push"])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("different content"), "{err}");
    assert!(
        fetched(&a, &state, &segment, &work.path().join("fetched3")) == original,
        "the archived copy must not change"
    );

    // a file the archive never had: exit 1, as restore_command must.
    let missing = format!("{}FF", &segment[..22]);
    let out = a
        .lazarus(&state)
        .args(["wal", "fetch", &missing])
        .arg(work.path().join("x"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!work.path().join("x").exists());

    // a damaged object on every store: not "missing" (which would end recovery early) but 255.
    for store in ["store-a", "store-b"] {
        let path = a.home.join(store).join(&object);
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();
    }
    let out = a
        .lazarus(&state)
        .args(["wal", "fetch", &segment])
        .arg(work.path().join("y"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(!work.path().join("y").exists());

    // status against the RPO, check for gaps.
    let out = a
        .lazarus(&state)
        .args(["wal", "status", "--rpo", "1h"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = a
        .lazarus(&state)
        .args(["wal", "status", "--rpo", "0s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("EXCEEDED"));
    let out = a.lazarus(&state).args(["wal", "check"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn async_push_archives_the_waiting_segments_ahead_of_the_archiver() {
    // The archiver fails at first, so finished segments wait as `.ready` in pg_wal.
    let a = Archiving::start(&["archive_command = '/bin/false'"]);
    let mut segments = Vec::new();
    for _ in 0..6 {
        workload(&a, 2);
        segments.push(a.psql("SELECT pg_walfile_name(pg_current_wal_lsn())"));
        a.psql("SELECT pg_switch_wal()");
    }
    let status = a.pg_wal().join("archive_status");
    for segment in &segments {
        assert!(
            status.join(format!("{segment}.ready")).exists(),
            "{segment} is not waiting"
        );
    }
    let state = a.home.join("state");
    a.psql(&format!(
        "ALTER SYSTEM SET archive_command = '{} --config {} --state {} wal push --async %p'",
        a.binary.display(),
        a.config.display(),
        state.display()
    ));
    a.psql("SELECT pg_reload_conf()");
    a.wait_archived(segments.last().unwrap());

    // The background pusher ran beside the archiver...
    assert!(
        state.join("wal-push/.push.lock").exists(),
        "the background pusher never started"
    );
    // ...and every waiting segment is in both stores, readable.
    let work = tempfile::tempdir().unwrap();
    for segment in &segments {
        for store in ["store-a", "store-b"] {
            let object = lazarus::wal::archive::object_key("main", segment);
            assert!(
                a.home.join(store).join(&object).is_file(),
                "{segment} missing from {store}"
            );
        }
        let state = work.path().join("state");
        assert!(
            fetched(&a, &state, segment, &work.path().join(segment))
                == std::fs::read(a.pg_wal().join(segment)).unwrap(),
            "{segment} fetched differs from pg_wal's"
        );
    }
}

#[test]
fn wal_check_lists_the_stores_and_finds_a_segment_deleted_after_it_was_indexed() {
    let a = Archiving::start(&[]);
    workload(&a, 3);
    a.switch_and_wait();
    workload(&a, 3);
    let second = a.switch_and_wait();
    workload(&a, 3);
    a.switch_and_wait();
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let check = |extra: &[&str]| {
        let out = a
            .lazarus(&state)
            .args(["wal", "check"])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, text) = check(&[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("every indexed segment is in a store"),
        "{text}"
    );

    // The segment is deleted from every store after the index learned of it.
    let object = lazarus::wal::archive::object_key("main", &second);
    for store in ["store-a", "store-b"] {
        std::fs::remove_file(a.home.join(store).join(&object)).unwrap();
    }
    let (code, text) = check(&[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("1 segment(s) indexed but in no store") && text.contains(&second),
        "{text}"
    );
    // The same check as a run (what a schedule starts every day): it succeeds, and its
    // results say the archive is broken and where, which raises wal_check_failed.
    let out = a
        .lazarus(&state)
        .args(["run", "wal-check", "--reason", "daily check"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(
        &a.lazarus(&state)
            .args(["status", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(report["workflow"], "wal-check", "{report}");
    assert_eq!(report["results"]["ok"], false, "{report}");
    assert!(
        report["results"]["problems"].to_string().contains(&second),
        "{report}"
    );

    // --local is the fast index-only check, and says so.
    let (code, text) = check(&["--local"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("local index only"), "{text}");
}

/// A base backup on a server whose archiving fails: pg_basebackup would wait for its WAL
/// forever. SIGTERM stops it within seconds; left alone, it gives up with the archiver's
/// facts after `archive_wait`.
#[test]
fn a_base_backup_gives_up_on_a_failing_archiver_and_stops_at_once_when_asked() {
    use std::time::{Duration, Instant};
    let a = Archiving::start(&[]);
    a.psql("ALTER SYSTEM SET archive_command = 'false'");
    a.psql("SELECT pg_reload_conf()");
    let state = tempfile::tempdir().unwrap();
    let base = |id: &str, wait: &str| {
        let mut cmd = a.lazarus(&state.path().join("state"));
        cmd.args(["run", "base-backup", "--reason", "test", "--id", id])
            .args(["--param", &format!("archive_wait={wait}")])
            .args([
                "--param",
                &format!("workdir={}", state.path().join("work").display()),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd
    };

    // Interrupted: the step ends within seconds, though pg_basebackup writes nothing.
    let mut child = base("bb-term", "10m").spawn().unwrap();
    std::thread::sleep(Duration::from_secs(6));
    let asked = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(20),
            "the base backup did not stop within 20 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !common::process_with("pg_basebackup"),
        "pg_basebackup outlived the interrupted run"
    );

    // Halted where it stopped; cancelled, it frees the target.
    let out = a
        .lazarus(&state.path().join("state"))
        .args(["status", "bb-term", "--json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], "halted", "{report}");
    let out = a
        .lazarus(&state.path().join("state"))
        .args(["cancel", "bb-term"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Left alone: it gives up with what pg_stat_archiver says.
    let started = Instant::now();
    let out = base("bb-wait", "3s").output().unwrap();
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "took {:?}",
        started.elapsed()
    );
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("WAL archiving is failing"), "{said}");
    assert!(said.contains("archive_command"), "{said}");
}
