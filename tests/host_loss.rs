//! Losing the host that drives a recovery: two state directories ("host A", "host B") that
//! share nothing but their stores (an S3 server and a directory). Host A dies with SIGKILL
//! in the middle of a run, and its work files with it; host B rebuilds the run from the
//! stores alone (fetching the backup again), waits out A's lease, and finishes it; host A,
//! started again, is fenced and runs no step.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::s3::{ACCESS_KEY, S3sFs, SECRET_KEY, create_bucket};
use common::{Sandbox, kill9, text};
use serde_json::Value;

const BUCKET: &str = "lazarus";

/// The stores both hosts share, and a directory for work files both can reach.
struct Shared {
    s3: S3sFs,
    dir: tempfile::TempDir,
}

impl Shared {
    fn start() -> Shared {
        let dir = tempfile::Builder::new()
            .prefix("lzshared")
            .tempdir_in("/tmp")
            .expect("shared dir");
        let s3 = S3sFs::start_serialized(&dir.path().join("s3"));
        create_bucket(&s3.endpoint(), BUCKET);
        std::fs::create_dir_all(dir.path().join("work")).expect("work dir");
        Shared { s3, dir }
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// A host's configuration: both shared stores, leases of 3 s under the host's name,
    /// and whatever else the test needs before them.
    fn configure(&self, host: &Sandbox, name: &str, before: &str) -> PathBuf {
        let config = host.write(
            "lazarus.toml",
            &format!(
                "{before}[mirror]\nlease_duration = \"3s\"\nholder = \"{name}\"\n\n\
                 [[stores]]\nname = \"r2\"\nkind = \"s3\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nbucket = \"{BUCKET}\"\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n\n\
                 [[stores]]\nname = \"local\"\nkind = \"local\"\npath = \"{}\"\n",
                self.s3.endpoint(),
                self.dir.path().join("local").display()
            ),
        );
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        config
    }
}

/// An S3 store (moto) reached through a proxy that can swallow its traffic, and a work
/// directory for the steps' effects.
fn store_behind_a_proxy() -> (common::s3::Moto, common::s3::Blackhole, tempfile::TempDir) {
    let moto = common::s3::Moto::start_serialized();
    create_bucket(&moto.endpoint(), BUCKET);
    let hole = common::s3::Blackhole::start(([127, 0, 0, 1], moto.port).into());
    let work = tempfile::Builder::new()
        .prefix("lzwork")
        .tempdir_in("/tmp")
        .unwrap();
    (moto, hole, work)
}

fn from_stores(host: &Sandbox, run: &str) -> Value {
    let listed: Value =
        serde_json::from_str(&host.ok(&["runs", "--from-stores", "--json"])).expect("json");
    listed
        .as_array()
        .and_then(|runs| runs.iter().find(|r| r["id"] == run).cloned())
        .unwrap_or_else(|| panic!("run {run} is not in the stores: {listed}"))
}

#[test]
fn a_run_whose_host_dies_is_finished_from_the_stores_by_another_and_the_first_is_fenced() {
    let shared = Shared::start();
    let (a, b) = (Sandbox::new(), Sandbox::new());
    shared.configure(&a, "host-a", "");
    shared.configure(&b, "host-b", "");
    let work = shared.work();
    let wf = a.write(
        "torture.toml",
        &common::five_effects_workflow("torture", &work),
    );

    let mut runner = a
        .cmd()
        .args([
            "run",
            &wf.display().to_string(),
            "--id",
            "r1",
            "--reason",
            "primary lost",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("host A");
    a.wait_for("step 3 on host A", Duration::from_secs(60), || {
        std::fs::read_to_string(work.join("log")).is_ok_and(|l| l.contains("s3-start"))
    });

    // Host B, which has never seen the run, finds it in the stores, driven by host A, with
    // the two completed steps before the one running.
    let seen = from_stores(&b, "r1");
    assert_eq!(seen["driven_by"], "host-a", "{seen}");
    assert_eq!(seen["workflow"], "torture", "{seen}");
    let local_runs = b.ok(&["runs", "--json"]);
    assert!(!local_runs.contains("\"r1\""), "{local_runs}");
    // Nor can host B start another run on the target host A's run holds.
    let beside = b.run(&[
        "run",
        &wf.display().to_string(),
        "--id",
        "r2",
        "--reason",
        "second opinion",
    ]);
    assert!(!beside.status.success(), "{}", text(&beside));
    assert!(
        text(&beside).contains("target \"shop\" is held by run r1, driven by host-a"),
        "{}",
        text(&beside)
    );
    assert!(
        text(&beside).contains("lazarus resume r1 --force host-a"),
        "the refusal names the way to take over from a lost host: {}",
        text(&beside)
    );

    kill9(&mut runner);

    // While host A's lease is valid, host B is refused, naming A.
    let early = b.run(&["resume", "r1"]);
    assert!(!early.status.success(), "{}", text(&early));
    assert!(
        text(&early).contains("driven by host-a"),
        "{}",
        text(&early)
    );

    // An operator who knows host A is gone takes the run over at once, naming A; naming
    // anyone else takes nothing.
    let wrong = b.run(&["resume", "r1", "--force", "host-z"]);
    assert!(!wrong.status.success(), "{}", text(&wrong));
    assert!(
        text(&wrong).contains("driven by host-a"),
        "{}",
        text(&wrong)
    );
    std::fs::write(work.join("go"), "").unwrap();
    let resumed = b.run(&["resume", "r1", "--force", "host-a"]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    let audit = b.ok(&["audit", "--json"]);
    assert!(
        audit.contains("resume --force host-a"),
        "the forced takeover is audited: {audit}"
    );
    let report = b.status("r1");
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(
        std::fs::read_to_string(work.join("effects")).unwrap(),
        "s1\ns2\ns3\ns4\ns5\n",
        "every step's effect exactly once across both hosts"
    );

    // Host A comes back: its copy of the run went another way, so it is fenced, says why,
    // and runs no step.
    let back = a.run(&["resume", "r1"]);
    assert!(!back.status.success(), "{}", text(&back));
    assert!(
        text(&back).contains("continued by another host"),
        "{}",
        text(&back)
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        std::fs::read_to_string(work.join("effects")).unwrap(),
        "s1\ns2\ns3\ns4\ns5\n"
    );

    // The stores hold the whole run, ended, with nobody driving it.
    let ended = from_stores(&a, "r1");
    assert_eq!(ended["status"], "succeeded", "{ended}");
    assert_eq!(ended["driven_by"], Value::Null, "{ended}");
    let lease: Value = serde_json::from_slice(
        &std::fs::read(
            shared
                .dir
                .path()
                .join("s3")
                .join(BUCKET)
                .join("runs/r1/lease"),
        )
        .expect("the lease is in the first store"),
    )
    .expect("lease json");
    assert_eq!(lease["holder"], "host-b", "{lease}");
    assert_eq!(lease["transitions"], 1, "{lease}");
    assert_eq!(lease["released"], true, "{lease}");
    // Both stores hold the same events.
    let events = |root: &Path| -> usize {
        std::fs::read_dir(root.join("runs/r1/events"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert!(events(&shared.dir.path().join("local")) > 0);
    assert!(events(&shared.dir.path().join("s3").join(BUCKET)) > 0);
}

#[test]
fn a_real_restore_killed_on_one_host_is_finished_on_another_with_identical_data() {
    let shared = Shared::start();
    let (a, b) = (Sandbox::new(), Sandbox::new());
    let pg = common::pg::Pg::start();
    pg.load_sample("shop", 2);
    let original = pg.checksums("shop");
    let keys = shared.dir.path().join("keys");
    a.ok(&["key", "generate", "--file", keys.to_str().unwrap()]);
    let before = format!(
        "[keys]\nfile = \"{}\"\n\n[postgres]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"postgres\"\n\n",
        keys.display(),
        pg.port()
    );
    shared.configure(&a, "host-a", &before);
    shared.configure(&b, "host-b", &before);
    let workdir = format!("workdir={}", shared.work().display());
    a.ok(&["backup", "--database", "shop", "-p", &workdir]);
    a.ok(&["drill", "--database", "shop", "-p", &workdir]);

    let mut runner = a.spawn(&[
        "recover",
        "--database",
        "shop",
        "--reason",
        "primary lost",
        "--id",
        "r1",
        "-p",
        &workdir,
        "-p",
        "cutover=none",
    ]);
    a.wait_for("the restore on host A", Duration::from_secs(120), || {
        let report = a.run(&["status", "r1", "--json"]);
        serde_json::from_slice::<Value>(&report.stdout).is_ok_and(|r| {
            r["steps"].as_array().is_some_and(|steps| {
                steps
                    .iter()
                    .any(|s| s["id"] == "restore" && s["status"] == "running")
            })
        })
    });
    kill9(&mut runner);
    // Host A's disk goes with it: the download and the unpacked archive are gone.
    std::fs::remove_dir_all(shared.work()).expect("remove host A's work files");

    std::thread::sleep(Duration::from_millis(3500));
    let resumed = b.run(&["resume", "r1"]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert!(
        text(&resumed).contains("rebuilt from its journal in store r2"),
        "{}",
        text(&resumed)
    );
    let report = b.status("r1");
    assert_eq!(report["status"], "succeeded", "{report}");
    // Host B fetched the backup again from the stores: the restore's input was not there.
    for made in ["decrypt", "download"] {
        let step = Sandbox::step(&report, made);
        assert!(
            step["reruns"][0]
                .as_str()
                .is_some_and(|r| r.contains("is not on this host")),
            "{made} ran again on host B: {step}"
        );
    }
    assert!(
        text(&resumed).contains("download runs again"),
        "{}",
        text(&resumed)
    );
    let restored = Sandbox::step(&report, "restore")["output"]["database"]
        .as_str()
        .expect("restored database")
        .to_string();
    assert_eq!(
        pg.checksums(&restored),
        original,
        "identical data after the host was lost mid-restore"
    );
    let back = a.run(&["resume", "r1"]);
    assert!(!back.status.success(), "{}", text(&back));
    assert!(
        text(&back).contains("continued by another host"),
        "{}",
        text(&back)
    );
}

#[test]
fn a_run_without_a_target_still_has_one_driver_across_hosts() {
    let shared = Shared::start();
    let (a, b) = (Sandbox::new(), Sandbox::new());
    shared.configure(&a, "host-a", "");
    shared.configure(&b, "host-b", "");
    let work = shared.work();
    let text_of_workflow =
        common::five_effects_workflow("untargeted", &work).replace("target = \"shop\"\n", "");
    assert!(!text_of_workflow.contains("target ="));
    let wf = a.write("untargeted.toml", &text_of_workflow);
    let mut runner = a.spawn(&[
        "run",
        &wf.display().to_string(),
        "--id",
        "u1",
        "--reason",
        "check",
    ]);
    a.wait_for("step 3 on host A", Duration::from_secs(60), || {
        std::fs::read_to_string(work.join("log")).is_ok_and(|l| l.contains("s3-start"))
    });
    let refused = b.run(&["resume", "u1"]);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("driven by host-a"),
        "{}",
        text(&refused)
    );
    std::fs::write(work.join("go"), "").unwrap();
    let finished = runner.wait().expect("host A");
    assert!(finished.success());
    assert_eq!(
        std::fs::read_to_string(work.join("effects")).unwrap(),
        "s1\ns2\ns3\ns4\ns5\n"
    );
}

#[test]
fn a_run_waiting_inside_a_step_is_seen_waiting_from_the_stores() {
    let shared = Shared::start();
    let (a, b) = (Sandbox::new(), Sandbox::new());
    shared.configure(&a, "host-a", "");
    shared.configure(&b, "host-b", "");
    let wf = a.write(
        "gated.toml",
        "name = \"gated\"\ntarget = \"gate\"\n\
         [[steps]]\nid = \"first\"\nactivity = \"command\"\nwith = { argv = [\"true\"] }\n\
         [[steps]]\nid = \"ask\"\nactivity = \"approve\"\nwith = { prompt = \"cut over?\" }\n",
    );
    let mut runner = a.spawn(&[
        "run",
        &wf.display().to_string(),
        "--id",
        "g1",
        "--reason",
        "gated",
    ]);
    // The approval is asked for inside a step that may wait for hours: the stores say so
    // without waiting for the step to end.
    b.wait_for(
        "the stores to show the run waiting for approval",
        Duration::from_secs(30),
        || {
            let listed = b.run(&["runs", "--from-stores", "--json"]);
            serde_json::from_slice::<Value>(&listed.stdout).is_ok_and(|runs| {
                runs.as_array().is_some_and(|runs| {
                    runs.iter()
                        .any(|r| r["id"] == "g1" && r["status"] == "waiting_approval")
                })
            })
        },
    );
    kill9(&mut runner);
}

#[test]
fn a_run_that_ended_while_the_store_hung_is_not_driven_again_by_another_host() {
    let (_moto, hole, work) = store_behind_a_proxy();
    let (a, b) = (Sandbox::new(), Sandbox::new());
    for (host, name) in [(&a, "host-a"), (&b, "host-b")] {
        let config = host.write(
            "lazarus.toml",
            &format!(
                "[mirror]\nlease_duration = \"3s\"\nholder = \"{name}\"\n\n\
                 [[stores]]\nname = \"moto\"\nkind = \"s3\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nbucket = \"{BUCKET}\"\naccess_key_id = \"a\"\nsecret_access_key = \"b\"\ntimeout = \"1s\"\n",
                hole.endpoint()
            ),
        );
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
    }
    // Three steps, the last waiting for a go: the store hangs while it runs.
    let mut runbook = "name = \"hung\"\ntarget = \"shop\"\n".to_string();
    for i in 1..=3 {
        let wait = if i == 3 {
            "echo s3-start >> \"$D/log\"; while [ ! -f \"$D/go\" ]; do sleep 0.05; done; "
        } else {
            ""
        };
        runbook.push_str(&format!(
            "[[steps]]\nid = \"s{i}\"\nactivity = \"command\"\nwith = {{ shell = '{wait}echo s{i} >> \"$D/effects\"', env = {{ D = \"{}\" }} }}\n",
            work.path().display()
        ));
    }
    let wf = b.write("hung.toml", &runbook);
    let mut runner = b
        .cmd()
        .args([
            "run",
            &wf.display().to_string(),
            "--id",
            "r8",
            "--reason",
            "hung store",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("host B");
    b.wait_for("step 3 on host B", Duration::from_secs(60), || {
        std::fs::read_to_string(work.path().join("log")).is_ok_and(|l| l.contains("s3-start"))
    });
    // The store hangs while host B finishes the run, and for longer than B's lease.
    hole.hang();
    std::fs::write(work.path().join("go"), "").unwrap();
    b.wait_for("the last step on host B", Duration::from_secs(60), || {
        std::fs::read_to_string(work.path().join("effects")).is_ok_and(|e| e.contains("s3"))
    });
    // Long enough for a host that does not wait for its end to reach a store to leave.
    let frozen = std::time::Instant::now();
    while frozen.elapsed() < Duration::from_secs(25) && runner.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(4));
    hole.restore();
    let started = std::time::Instant::now();
    while runner.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "host B never finished copying the run's end"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = from_stores(&a, "r8");
    assert_eq!(
        seen["status"], "succeeded",
        "the run's end reached the store: {seen}"
    );

    // Host A, resuming the run from the stores, runs none of its steps again.
    let again = a.run(&["resume", "r8"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        std::fs::read_to_string(work.path().join("effects")).unwrap(),
        "s1\ns2\ns3\n",
        "a step ran twice: {}",
        text(&again)
    );
}

/// With the first store hanging from the start (its traffic swallowed), a run still starts
/// and ends on the stores that answer: the lease is read from every store at once, each for
/// a few seconds, and a store that does not answer is passed over — it used to spend the
/// whole time limit of the lease call, and nothing could start ("could not be checked").
#[test]
fn a_run_starts_and_ends_while_the_first_store_hangs() {
    let (_moto, hole, work) = store_behind_a_proxy();
    let host = Sandbox::new();
    let config = host.write(
        "lazarus.toml",
        &format!(
            "[mirror]\nlease_duration = \"3s\"\nholder = \"host-a\"\n\n\
             [[stores]]\nname = \"moto\"\nkind = \"s3\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nbucket = \"{BUCKET}\"\naccess_key_id = \"a\"\nsecret_access_key = \"b\"\ntimeout = \"3s\"\n\n\
             [[stores]]\nname = \"local\"\nkind = \"local\"\npath = \"{}\"\n",
            hole.endpoint(),
            work.path().join("local").display()
        ),
    );
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let mut runbook = "name = \"steady\"\ntarget = \"shop\"\n".to_string();
    for i in 1..=2 {
        runbook.push_str(&format!(
            "[[steps]]\nid = \"s{i}\"\nactivity = \"command\"\nwith = {{ shell = 'echo s{i} >> \"$D/effects\"', env = {{ D = \"{}\" }} }}\n",
            work.path().display()
        ));
    }
    let wf = host.write("steady.toml", &runbook);
    hole.hang();
    let out = host.run(&[
        "run",
        &wf.display().to_string(),
        "--id",
        "r9",
        "--reason",
        "one store hangs",
    ]);
    let report: Value =
        serde_json::from_str(&host.ok(&["status", "r9", "--json"])).expect("status json");
    assert_eq!(report["status"], "succeeded", "{}\n{report}", text(&out));
    assert_eq!(
        std::fs::read_to_string(work.path().join("effects")).unwrap_or_default(),
        "s1\ns2\n",
        "{}",
        text(&out)
    );
    hole.restore();
}
