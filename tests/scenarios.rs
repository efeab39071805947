//! Scenarios: a seed chooses a sequence of operations and faults, run against the real
//! binary, a real PostgreSQL with pgbouncer in front, a real S3 server (behind a proxy that
//! can swallow its traffic) and a local store; after every operation, the invariants that
//! must always hold are checked, each by name. A failure prints the seed, the operations
//! so far and the command that replays them (`SEED=N cargo test --test scenarios`).
//!
//! Operations: backup, drill, recover beside the live database (kept for inspection),
//! recover with a cut-over through pgbouncer, a runner killed with SIGKILL at a random
//! moment, resume, cancel, rollback, gc, expire, writes to the live database, one byte of
//! a store's copy flipped, the S3 store hanging during an operation.
//!
//! CI runs the fixed seeds of [`CI_SEEDS`]; `SCENARIO_MINUTES=N` runs fresh seeds for that
//! long (see docs/scenarios.md).

mod common;

use std::collections::BTreeMap;
use std::process::Output;
use std::time::{Duration, Instant};

use common::pg::{Bouncer, Pg};
use common::s3::{ACCESS_KEY, Blackhole, Moto, SECRET_KEY, create_bucket};
use common::{Sandbox, text};
use serde_json::Value;

/// The seeds CI runs (each a dozen operations).
const CI_SEEDS: [u64; 3] = [1, 2, 3];
/// Operations per seed.
const OPERATIONS: usize = 12;

/// SplitMix64: the same seed, the same operations, on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One operation of a scenario.
#[derive(Debug, Clone)]
enum Op {
    Backup,
    Drill,
    RecoverBeside,
    RecoverCutOver,
    /// A recovery whose runner is killed (SIGKILL) after this many milliseconds.
    KillDuring(u64),
    Resume,
    Cancel,
    Rollback,
    Gc,
    Expire,
    Write,
    FlipByte,
    /// The next operation runs while the S3 store swallows its traffic.
    HungStore(Box<Op>),
}

fn choose(rng: &mut Rng) -> Op {
    let plain = |rng: &mut Rng| match rng.below(12) {
        0 | 1 => Op::Backup,
        2 => Op::Drill,
        3 => Op::RecoverBeside,
        4 => Op::RecoverCutOver,
        5 => Op::KillDuring(50 + rng.below(1000)),
        6 => Op::Resume,
        7 => Op::Cancel,
        8 => Op::Rollback,
        9 => Op::Gc,
        10 => Op::Expire,
        _ => Op::Write,
    };
    match rng.below(14) {
        12 => Op::FlipByte,
        13 => Op::HungStore(Box::new(plain(rng))),
        _ => plain(rng),
    }
}

/// A recovery kept for inspection: its database and the data it must hold.
struct Kept {
    run: String,
    database: String,
    checksums: BTreeMap<String, String>,
}

/// An invariant: `Err` says what was seen.
type Invariant = fn(&mut World) -> Result<(), String>;

/// Everything a scenario runs against, and what it expects.
struct World {
    pg: Pg,
    bouncer: Bouncer,
    hole: Blackhole,
    _moto: Moto,
    sb: Sandbox,
    key: String,
    /// The live database's data, as the model says it must be.
    live: BTreeMap<String, String>,
    /// Each backup's data at the time it was taken.
    backed_up: BTreeMap<String, BTreeMap<String, String>>,
    kept: Vec<Kept>,
    /// Backups of which this scenario damaged the local copy.
    damaged: Vec<String>,
    /// Everything the commands printed, for the secrets check.
    printed: String,
    runs: usize,
    seed: u64,
}

impl World {
    fn new(seed: u64) -> World {
        let pg = Pg::start();
        pg.load_sample("shop", 1);
        let bouncer = Bouncer::start(pg.port(), "shop");
        let moto = Moto::start();
        create_bucket(&moto.endpoint(), "backups");
        let hole = Blackhole::start(([127, 0, 0, 1], moto.port).into());
        let sb = Sandbox::new();
        let key = lazarus::crypto::keys::generate();
        let keys = sb.path().join("keys");
        std::fs::write(&keys, format!("{key}\n")).unwrap();
        std::fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let config = sb.write(
            "lazarus.toml",
            &format!(
                "[keys]\nfile = \"{}\"\n\n[postgres]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"postgres\"\n\n\
                 [retention]\nrecovery_window = \"40s\"\nmin_backups = 1\nruns_window = \"30d\"\n\n\
                 [[stores]]\nname = \"moto\"\nkind = \"s3\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nbucket = \"backups\"\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\ntimeout = \"3s\"\n\n\
                 [[stores]]\nname = \"local\"\nkind = \"local\"\npath = \"store\"\n",
                keys.display(),
                pg.port(),
                hole.endpoint()
            ),
        );
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let live = pg.checksums("shop");
        World {
            pg,
            bouncer,
            hole,
            _moto: moto,
            sb,
            key,
            live,
            backed_up: BTreeMap::new(),
            kept: Vec::new(),
            damaged: Vec::new(),
            printed: String::new(),
            runs: 0,
            seed,
        }
    }

    fn work(&self) -> String {
        format!("workdir={}", self.sb.path().join("work").display())
    }

    fn run(&mut self, args: &[&str]) -> Output {
        let out = self.sb.run(args);
        self.printed.push_str(&text(&out));
        out
    }

    fn json(&mut self, args: &[&str]) -> Value {
        let out = self.run(args);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    fn backups(&mut self) -> Vec<Value> {
        self.json(&["backups", "--json"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn runs_listed(&mut self) -> Vec<Value> {
        self.json(&["runs", "--json"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn new_run_id(&mut self, kind: &str) -> String {
        self.runs += 1;
        format!("s{}-{kind}{}", self.seed, self.runs)
    }

    /// Runs not yet ended (halted, interrupted, waiting).
    fn open_runs(&mut self) -> Vec<String> {
        self.runs_listed()
            .into_iter()
            .filter(|r| {
                !matches!(
                    r["status"].as_str(),
                    Some("succeeded" | "failed" | "cancelled" | "rolled_back")
                )
            })
            .filter_map(|r| r["id"].as_str().map(String::from))
            .collect()
    }

    fn recover_args(&self, id: &str, cutover: &str) -> Vec<String> {
        [
            "recover",
            "--database",
            "shop",
            "--reason",
            "scenario",
            "--id",
            id,
            "-p",
            &self.work(),
            "-p",
            &format!("cutover={cutover}"),
            "-p",
            &format!("pgbouncer_ini={}", self.bouncer.ini.display()),
            "-p",
            &format!("pgbouncer_port={}", self.bouncer.port),
            "-p",
            "pgbouncer_admin=postgres",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// After a recovery that kept its database: what it must hold.
    fn note_kept(&mut self, run: &str) {
        // A runner killed early may not have created its run at all.
        let report = self.json(&["status", run, "--json"]);
        if report["status"] != "succeeded" {
            return;
        }
        let step = |id: &str| {
            report["steps"]
                .as_array()
                .and_then(|s| s.iter().find(|s| s["id"] == id))
                .cloned()
                .unwrap_or(Value::Null)
        };
        let database = step("restore")["output"]["database"]
            .as_str()
            .map(String::from);
        let backup = step("select")["output"]["id"].as_str().map(String::from);
        if let (Some(database), Some(backup)) = (database, backup)
            && let Some(checksums) = self.backed_up.get(&backup).cloned()
        {
            self.kept.push(Kept {
                run: run.to_string(),
                database,
                checksums,
            });
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Backup => {
                let before: Vec<String> = self
                    .backups()
                    .iter()
                    .filter_map(|b| b["id"].as_str().map(String::from))
                    .collect();
                let work = self.work();
                self.run(&["backup", "--database", "shop", "-p", &work]);
                let live = self.live.clone();
                for b in self.backups() {
                    if let Some(id) = b["id"].as_str()
                        && !before.iter().any(|x| x == id)
                    {
                        self.backed_up.insert(id.to_string(), live.clone());
                    }
                }
            }
            Op::Drill => {
                let work = self.work();
                self.run(&["drill", "--database", "shop", "-p", &work]);
            }
            Op::RecoverBeside | Op::RecoverCutOver => {
                let cutover = if matches!(op, Op::RecoverBeside) {
                    "none"
                } else {
                    "pgbouncer"
                };
                let id = self.new_run_id("recover");
                let args = self.recover_args(&id, cutover);
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                self.run(&refs);
                self.note_kept(&id);
            }
            Op::KillDuring(ms) => {
                let id = self.new_run_id("killed");
                let args = self.recover_args(&id, "none");
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                let mut child = self.sb.spawn(&refs);
                let started = Instant::now();
                while started.elapsed() < Duration::from_millis(*ms) {
                    if child.try_wait().unwrap().is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                common::kill9(&mut child);
                self.note_kept(&id);
            }
            Op::Resume => {
                for run in self.open_runs().into_iter().take(1) {
                    self.run(&["resume", &run]);
                    if run.contains("-recover") || run.contains("-killed") {
                        self.note_kept(&run);
                    }
                }
            }
            Op::Cancel => {
                for run in self.open_runs().into_iter().take(1) {
                    self.run(&["cancel", &run]);
                }
            }
            Op::Rollback => {
                let last = self
                    .runs_listed()
                    .into_iter()
                    .find(|r| r["id"].as_str().is_some_and(|id| id.contains("-recover")))
                    .and_then(|r| r["id"].as_str().map(String::from));
                if let Some(run) = last {
                    self.run(&["rollback", &run, "--reason", "scenario"]);
                    self.kept.retain(|k| k.run != run);
                }
            }
            Op::Gc => {
                self.run(&["gc"]);
            }
            Op::Expire => {
                self.run(&["expire"]);
            }
            Op::Write => {
                let n = self.runs + 1;
                self.pg.psql(
                    "shop",
                    &format!("INSERT INTO notes SELECT 100000 + g + {n} * 1000, md5(g::text) FROM generate_series(1, 50) g ON CONFLICT DO NOTHING"),
                );
                self.live = self.pg.checksums("shop");
            }
            Op::FlipByte => {
                // The local copy of the newest backup the S3 store also holds.
                let target = self.backups().into_iter().find(|b| {
                    b["copies"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|s| s == "moto"))
                        && b["copies"]
                            .as_array()
                            .is_some_and(|c| c.iter().any(|s| s == "local"))
                });
                if let Some(b) = target
                    && let (Some(id), Some(key)) = (b["id"].as_str(), b["key"].as_str())
                {
                    let path = self.sb.path().join("store").join(key);
                    if let Ok(mut bytes) = std::fs::read(&path)
                        && !bytes.is_empty()
                    {
                        let at = bytes.len() / 2;
                        bytes[at] ^= 0x40;
                        let _ = std::fs::write(&path, bytes);
                        self.damaged.push(id.to_string());
                    }
                }
            }
            Op::HungStore(inner) => {
                self.hole.hang();
                self.apply(inner);
                self.hole.restore();
            }
        }
    }

    /// Every invariant, by name; the first broken one with what was seen.
    fn broken(&mut self) -> Option<(&'static str, String)> {
        let checks: [(&'static str, Invariant); 6] = [
            ("audit_verify_holds", audit_verify_holds),
            ("every_run_ended_or_resumable", every_run_ended_or_resumable),
            (
                "verified_backups_stay_recoverable",
                verified_backups_stay_recoverable,
            ),
            (
                "what_a_run_keeps_is_still_there",
                what_a_run_keeps_is_still_there,
            ),
            (
                "the_live_database_is_untouched",
                the_live_database_is_untouched,
            ),
            ("no_secret_is_shown", no_secret_is_shown),
        ];
        for (name, check) in checks {
            if let Err(detail) = check(self) {
                return Some((name, detail));
            }
        }
        None
    }
}

fn audit_verify_holds(w: &mut World) -> Result<(), String> {
    let out = w.run(&["audit", "verify"]);
    out.status.success().then_some(()).ok_or_else(|| text(&out))
}

fn every_run_ended_or_resumable(w: &mut World) -> Result<(), String> {
    for run in w.runs_listed() {
        let status = run["status"].as_str().unwrap_or("");
        let known = [
            "succeeded",
            "failed",
            "cancelled",
            "rolled_back",
            "halted",
            "running",
            "waiting_approval",
            "rolling_back",
        ];
        if !known.contains(&status) {
            return Err(format!("run {} is {status:?}", run["id"]));
        }
    }
    Ok(())
}

fn verified_backups_stay_recoverable(w: &mut World) -> Result<(), String> {
    for b in w.backups() {
        if b["status"] != "VERIFIED" {
            continue;
        }
        let id = b["id"].as_str().unwrap_or_default().to_string();
        let copies: Vec<String> = b["copies"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let good_local = (|| {
            let key = b["key"].as_str()?;
            let bytes = std::fs::read(w.sb.path().join("store").join(key)).ok()?;
            let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            Some(Some(sha.as_str()) == b["sha256"].as_str())
        })()
        .unwrap_or(false);
        let elsewhere = copies.iter().any(|c| c == "moto");
        if !good_local && !elsewhere {
            return Err(format!(
                "VERIFIED backup {id} has no good copy: local {good_local}, listed copies {copies:?}"
            ));
        }
        if !good_local && !w.damaged.contains(&id) {
            return Err(format!(
                "the local copy of {id} changed though nothing here damaged it"
            ));
        }
    }
    Ok(())
}

fn what_a_run_keeps_is_still_there(w: &mut World) -> Result<(), String> {
    for i in 0..w.kept.len() {
        let (database, expected, run) = (
            w.kept[i].database.clone(),
            w.kept[i].checksums.clone(),
            w.kept[i].run.clone(),
        );
        let exists = w.pg.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{database}'"),
        );
        if exists != "1" {
            return Err(format!("run {run} kept database {database}, which is gone"));
        }
        let seen = w.pg.checksums(&database);
        if seen != expected {
            return Err(format!(
                "run {run}'s database {database} no longer holds its backup's data"
            ));
        }
    }
    Ok(())
}

fn the_live_database_is_untouched(w: &mut World) -> Result<(), String> {
    let seen = w.pg.checksums("shop");
    (seen == w.live)
        .then_some(())
        .ok_or_else(|| "the live database shop changed without a write of the scenario".into())
}

fn no_secret_is_shown(w: &mut World) -> Result<(), String> {
    for (what, secret) in [
        ("the encryption key", w.key.clone()),
        ("the S3 secret", SECRET_KEY.to_string()),
    ] {
        if w.printed.contains(&secret) {
            return Err(format!("{what} was printed"));
        }
    }
    Ok(())
}

/// Runs one seed: the operations it chooses, the invariants after each.
fn run_seed(seed: u64, operations: usize) -> Result<usize, String> {
    let mut rng = Rng(seed);
    let mut world = World::new(seed);
    let mut done: Vec<Op> = Vec::new();
    // A backup and a drill first, so recoveries have something to restore.
    let mut ops = vec![Op::Backup, Op::Drill];
    ops.extend((0..operations).map(|_| choose(&mut rng)));
    for op in ops {
        world.apply(&op);
        done.push(op);
        if let Some((name, detail)) = world.broken() {
            return Err(format!(
                "invariant {name} broken: {detail}\n  seed {seed}; operations: {done:?}\n  replay: SEED={seed} cargo test --test scenarios -- --nocapture"
            ));
        }
    }
    // What the seed exercised, so a run that only met refusals shows as such.
    let mut ended: BTreeMap<String, usize> = BTreeMap::new();
    for run in world.runs_listed() {
        *ended
            .entry(run["status"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    println!(
        "seed {seed}: {done:?}\n  runs by status {ended:?}; {} kept databases checked; {} copies damaged",
        world.kept.len(),
        world.damaged.len()
    );
    // Nothing left running before the world goes.
    for run in world.open_runs() {
        world.run(&["cancel", &run]);
    }
    Ok(done.len())
}

#[test]
fn scenarios_hold_every_invariant() {
    let started = Instant::now();
    let (seeds, deadline): (Vec<u64>, Option<Duration>) = match (
        std::env::var("SEED").ok().and_then(|s| s.parse().ok()),
        std::env::var("SCENARIO_MINUTES")
            .ok()
            .and_then(|m| m.parse::<u64>().ok()),
    ) {
        (Some(seed), _) => (vec![seed], None),
        (None, Some(minutes)) => {
            let first = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_secs());
            (
                (0..100_000).map(|i| first + i).collect(),
                Some(Duration::from_secs(minutes * 60)),
            )
        }
        (None, None) => (CI_SEEDS.to_vec(), None),
    };
    let mut ran = 0;
    let mut seeds_run = 0;
    for seed in seeds {
        if deadline.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        match run_seed(seed, OPERATIONS) {
            Ok(n) => {
                ran += n;
                seeds_run += 1;
            }
            Err(failure) => panic!("{failure}"),
        }
    }
    println!(
        "scenarios: {seeds_run} seeds, {ran} operations, every invariant held ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
}
