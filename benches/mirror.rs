//! What copying every run's journal to the stores costs a step: the same no-op run with no
//! mirror, with a mirror to a local store, and with a mirror to an S3 server (s3s-fs over
//! real HTTP on this machine), alternating round by round so the disk's moods hit all
//! three alike; beside it, what one small S3 PUT and one local exclusive create cost alone.
//!
//! Goals (issue 14): with a local store, at most 1.5x the step without a mirror; with S3,
//! a step waits for at most one PUT.
//!
//! Run: `cargo bench --bench mirror` (numbers go to benches/RESULTS.md by hand).

#[path = "../tests/common/s3.rs"]
mod s3;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use lazarus::engine::Journal;
use lazarus::engine::mirror::{Mirror, MirrorLag, MirroredRun};
use lazarus::engine::records::RunRecord;
use lazarus::engine::{
    Activity, ActivityContext, ActivityError, ActivitySpec, Engine, Registry, SledJournal,
    Submission, Workflow,
};
use lazarus::mirror::StoreMirror;
use lazarus::storage::local::LocalStore;
use lazarus::storage::s3::{S3Settings, S3Store};
use lazarus::storage::{Condition, ObjectStore, StoreSet};
use serde_json::Value;

const STEPS: usize = 200;
const ROUNDS: usize = 7;

struct Noop;
static NOOP: ActivitySpec = ActivitySpec {
    name: "noop",
    summary: "does nothing",
    inputs: &[],
    outputs: &[],
};
#[async_trait]
impl Activity for Noop {
    fn spec(&self) -> &'static ActivitySpec {
        &NOOP
    }
    async fn run(&self, _: &ActivityContext, _: Value) -> Result<Value, ActivityError> {
        Ok(Value::Null)
    }
}

/// A mirror with a stopwatch: how long each publish (one batch to every store) took.
struct Timed {
    inner: StoreMirror,
    publishes: std::sync::Mutex<Vec<Duration>>,
}

#[async_trait]
impl Mirror for Timed {
    async fn publish(&self, record: &RunRecord, journal: &dyn Journal) -> Vec<MirrorLag> {
        let start = Instant::now();
        let lag = self.inner.publish(record, journal).await;
        self.publishes.lock().unwrap().push(start.elapsed());
        lag
    }
    fn lag(&self, run: &str) -> Vec<MirrorLag> {
        self.inner.lag(run)
    }
    fn retry_now(&self, run: &str) {
        self.inner.retry_now(run)
    }
    async fn fetch(&self, run: &str) -> Result<Option<MirroredRun>, String> {
        self.inner.fetch(run).await
    }
}

fn timed(store: Arc<dyn ObjectStore>) -> Arc<Timed> {
    Arc::new(Timed {
        inner: StoreMirror::new(StoreSet::new(vec![store])),
        publishes: std::sync::Mutex::new(Vec::new()),
    })
}

fn bench_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("lzbench")
        .tempdir_in(std::env::current_dir().expect("cwd").join("target"))
        .expect("bench dir")
}

/// The time per step of a run of [`STEPS`] no-op steps, with `mirror` (or none), and the
/// time per step the run waited for its copies to land.
fn per_step(
    runtime: &tokio::runtime::Runtime,
    mirror: Option<Arc<dyn Mirror>>,
) -> (Duration, Duration) {
    let dir = bench_dir();
    let mut registry = Registry::new();
    registry.register(Arc::new(Noop));
    let mut text = String::from("name = \"bench\"\n");
    for i in 0..STEPS {
        text.push_str(&format!("[[steps]]\nid = \"s{i}\"\nactivity = \"noop\"\n"));
    }
    let workflow = Workflow::parse("bench", &text, &registry).expect("workflow");
    runtime.block_on(async {
        let journal = Arc::new(SledJournal::open(dir.path()).expect("journal"));
        let engine = Engine::new(journal, Arc::new(registry));
        if let Some(mirror) = mirror {
            engine.set_mirror(mirror);
        }
        let run = engine
            .submit(Submission {
                workflow,
                params: Default::default(),
                reason: "bench".into(),
                operator: "bench".into(),
                halt_before: vec![],
                halt_after: vec![],
                id: None,
            })
            .expect("submit");
        let start = Instant::now();
        engine.start(&run).expect("start");
        engine.wait_idle().await;
        let took = start.elapsed();
        let report = engine.report(&run).expect("report");
        assert_eq!(report.status, "succeeded");
        if let Some(copy) = report.mirror.first() {
            assert_eq!(copy.behind, 0, "the mirror kept up: {copy:?}");
        }
        (took / STEPS as u32, engine.mirror_waited() / STEPS as u32)
    })
}

/// The median time of one small exclusive create in a store.
fn one_create(runtime: &tokio::runtime::Runtime, store: &Arc<dyn ObjectStore>) -> Duration {
    runtime.block_on(async {
        let mut times = Vec::new();
        for i in 0..200 {
            let body = Bytes::from(vec![7u8; 300]);
            let start = Instant::now();
            store
                .put_if(&format!("put/{i}"), body, Condition::Absent)
                .await
                .expect("put");
            times.push(start.elapsed());
        }
        median(times)
    })
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn quantile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[((sorted.len() - 1) as f64 * q) as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server_dir = bench_dir();
    let server = s3::S3sFs::start(&server_dir.path().join("s3"));
    s3::create_bucket(&server.endpoint(), "bench");
    let s3_store = |prefix: String| -> Arc<dyn ObjectStore> {
        Arc::new(S3Store::new(S3Settings {
            name: "s3".into(),
            endpoint: Some(server.endpoint()),
            region: "us-east-1".into(),
            bucket: "bench".into(),
            prefix,
            path_style: true,
            credentials: Some((s3::ACCESS_KEY.into(), s3::SECRET_KEY.into())),
            timeout: Duration::from_secs(10),
        }))
    };
    let store_dirs: Vec<tempfile::TempDir> = (0..ROUNDS).map(|_| bench_dir()).collect();
    per_step(&runtime, None);
    let (mut none, mut local, mut remote) = (Vec::new(), Vec::new(), Vec::new());
    let (mut local_publishes, mut s3_publishes) = (Vec::new(), Vec::new());
    let (mut local_waits, mut s3_waits) = (Vec::new(), Vec::new());
    for (round, dir) in store_dirs.iter().enumerate() {
        none.push(per_step(&runtime, None).0);
        let to_local = timed(Arc::new(LocalStore::new("local", dir.path())));
        let (step, waited) = per_step(&runtime, Some(to_local.clone()));
        local.push(step);
        local_waits.push(waited);
        local_publishes.extend(to_local.publishes.lock().unwrap().iter().copied());
        let to_s3 = timed(s3_store(format!("round{round}/")));
        let (step, waited) = per_step(&runtime, Some(to_s3.clone()));
        remote.push(step);
        s3_waits.push(waited);
        s3_publishes.extend(to_s3.publishes.lock().unwrap().iter().copied());
    }
    let (local_wait, s3_wait) = (median(local_waits), median(s3_waits));
    let (none, local, remote) = (median(none), median(local), median(remote));
    let put_dir = bench_dir();
    let local_put = one_create(
        &runtime,
        &(Arc::new(LocalStore::new("local", put_dir.path())) as Arc<dyn ObjectStore>),
    );
    let s3_put = one_create(&runtime, &s3_store("puts/".into()));
    println!("journal mirror, {STEPS}-step no-op run (medians of {ROUNDS} alternating rounds):");
    println!("  no mirror            {:>7.3} ms/step", ms(none));
    println!(
        "  mirror to local dir  {:>7.3} ms/step   {:>5.2}x   (goal <= 1.50x)",
        ms(local),
        local.as_secs_f64() / none.as_secs_f64()
    );
    println!(
        "  mirror to S3 server  {:>7.3} ms/step   {:>5.2}x",
        ms(remote),
        remote.as_secs_f64() / none.as_secs_f64()
    );
    println!(
        "  one synced 300-byte exclusive create: local {:.3} ms, S3 {:.3} ms",
        ms(local_put),
        ms(s3_put)
    );
    let runs_steps = (ROUNDS * STEPS) as f64;
    for (name, publishes) in [("local", &local_publishes), ("S3", &s3_publishes)] {
        println!(
            "  {name:<5} publishes per step {:.3}; one publish p50 / p99 {:.3} / {:.3} ms",
            publishes.len() as f64 / runs_steps,
            ms(median(publishes.clone())),
            ms(quantile(publishes, 0.99)),
        );
    }
    println!(
        "  waited for copies per step: local {:.3} ms, S3 {:.3} ms",
        ms(local_wait),
        ms(s3_wait)
    );
    println!(
        "  S3: waited per step / one S3 PUT alone  {:>5.2}   (goal <= 1: a step waits for at most the one publish in flight)",
        s3_wait.as_secs_f64() / s3_put.as_secs_f64()
    );
    println!(
        "  S3: wall cost per step / one S3 PUT alone  {:>5.2}   (also the CPU the S3 server, in this process, takes from the engine)",
        (remote.as_secs_f64() - none.as_secs_f64()) / s3_put.as_secs_f64()
    );
}
