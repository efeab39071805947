//! Journal overhead per step beside the floor (a 4 KiB write + fsync on the same disk), steps
//! per second through the whole engine with a no-op activity, and durable step transitions
//! per second with 50 runs at once beside one run alone, with per-step latency p50/p99 (the
//! step's whole cycle, and the part of it spent waiting for its completion to be on disk).
//!
//! Run: `cargo bench --bench journal` (numbers go to benches/RESULTS.md by hand).

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lazarus::engine::records::{Event, EventRecord, RunRecord};
use lazarus::engine::{
    Activity, ActivityContext, ActivityError, ActivitySpec, Engine, Journal, JournalError,
    Registry, SledJournal, Submission, Workflow,
};
use serde_json::Value;

const ROUNDS: usize = 300;

fn bench_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("bench dir")
}

/// The floor: append 4 KiB to a file and fsync it, per step.
fn write_fsync(rounds: usize) -> Duration {
    let dir = bench_dir();
    let mut file = std::fs::File::create(dir.path().join("floor")).expect("file");
    let block = vec![7u8; 4096];
    let start = Instant::now();
    for _ in 0..rounds {
        file.write_all(&block).expect("write");
        file.sync_all().expect("fsync");
    }
    start.elapsed() / rounds as u32
}

/// A cheaper floor: overwrite one 4 KiB block in place and fdatasync it.
fn overwrite_fdatasync(rounds: usize) -> Duration {
    use std::os::unix::fs::FileExt;
    let dir = bench_dir();
    let file = std::fs::File::create(dir.path().join("floor2")).expect("file");
    let block = vec![7u8; 4096];
    file.write_all_at(&block, 0).expect("write");
    file.sync_all().expect("fsync");
    let start = Instant::now();
    for _ in 0..rounds {
        file.write_all_at(&block, 0).expect("write");
        file.sync_data().expect("fdatasync");
    }
    start.elapsed() / rounds as u32
}

/// The journal's share of a step: StepStarted appended, StepCompleted appended, flushed.
fn journal_step(rounds: usize) -> Duration {
    let dir = bench_dir();
    let journal = SledJournal::open(dir.path()).expect("journal");
    let output = serde_json::to_vec(&serde_json::json!({"exit_code": 0, "stdout": "ok"})).unwrap();
    let start = Instant::now();
    for i in 0..rounds {
        let step = format!("step-{i}");
        journal
            .append(
                "run",
                &EventRecord {
                    at_us: 0,
                    event: Event::StepStarted {
                        step: step.clone(),
                        attempt: 1,
                    },
                },
            )
            .expect("append");
        journal
            .append(
                "run",
                &EventRecord {
                    at_us: 0,
                    event: Event::StepCompleted {
                        step,
                        attempt: 1,
                        output: output.clone(),
                    },
                },
            )
            .expect("append");
        journal.flush().expect("flush");
    }
    start.elapsed() / rounds as u32
}

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

/// The tracing dispatcher the engine's threads run under: none (the global no-op), or the
/// one given, set on every runtime thread (so two settings can alternate in one process).
static DISPATCH: std::sync::Mutex<Option<tracing::Dispatch>> = std::sync::Mutex::new(None);

/// A runtime whose threads use [`DISPATCH`] as it is when the runtime is built.
fn runtime() -> tokio::runtime::Runtime {
    let dispatch = DISPATCH.lock().unwrap().clone();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(dispatch) = dispatch {
        builder.on_thread_start(move || {
            std::mem::forget(tracing::dispatcher::set_default(&dispatch));
        });
    }
    builder.build().expect("runtime")
}

/// Steps per second through submit, the executor and the journal, no-op activity.
fn engine_steps_per_second(steps: usize) -> f64 {
    let dir = bench_dir();
    let mut registry = Registry::new();
    registry.register(Arc::new(Noop));
    let mut text = String::from("name = \"bench\"\n");
    for i in 0..steps {
        text.push_str(&format!("[[steps]]\nid = \"s{i}\"\nactivity = \"noop\"\n"));
    }
    let workflow = Workflow::parse("bench", &text, &registry).expect("workflow");
    let runtime = runtime();
    runtime.block_on(async {
        let journal = Arc::new(SledJournal::open(dir.path()).expect("journal"));
        let engine = Engine::new(journal, Arc::new(registry));
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
        assert_eq!(engine.report(&run).expect("report").status, "succeeded");
        steps as f64 / took.as_secs_f64()
    })
}

/// What many runs at once achieved: durable step completions per second across all runs,
/// each step's cycle (one completion to the run's next, from the journal's own times), and
/// each completion's commit (appended to on disk, as the journal saw it).
struct Concurrent {
    per_second: f64,
    cycles: Vec<Duration>,
    commits: Vec<Duration>,
    flushes: Vec<Duration>,
}

/// The journal with a stopwatch: when each StepCompleted was appended, and when the first
/// flush that began after it ended — how long that completion waited for the disk.
struct Timed {
    inner: SledJournal,
    pending: Mutex<Vec<Instant>>,
    commits: Mutex<Vec<Duration>>,
    /// How long each flush itself took (the disk's share of a commit wait).
    flushes: Mutex<Vec<Duration>>,
}

impl Journal for Timed {
    fn create_run(&self, run: &RunRecord) -> Result<(), JournalError> {
        self.inner.create_run(run)
    }
    fn run(&self, id: &str) -> Result<Option<RunRecord>, JournalError> {
        self.inner.run(id)
    }
    fn runs(&self) -> Result<Vec<RunRecord>, JournalError> {
        self.inner.runs()
    }
    fn append(&self, run: &str, event: &EventRecord) -> Result<(), JournalError> {
        self.inner.append(run, event)?;
        if matches!(event.event, Event::StepCompleted { .. }) {
            self.pending.lock().unwrap().push(Instant::now());
        }
        Ok(())
    }
    fn flush(&self) -> Result<(), JournalError> {
        let covered = std::mem::take(&mut *self.pending.lock().unwrap());
        let began = Instant::now();
        self.inner.flush()?;
        let done = Instant::now();
        self.flushes.lock().unwrap().push(done - began);
        self.commits
            .lock()
            .unwrap()
            .extend(covered.iter().map(|at| done - *at));
        Ok(())
    }
    fn events(&self, run: &str) -> Result<Vec<EventRecord>, JournalError> {
        self.inner.events(run)
    }
    fn events_from(&self, run: &str, skip: usize) -> Result<Vec<EventRecord>, JournalError> {
        self.inner.events_from(run, skip)
    }
    fn lock_holder(&self, target: &str) -> Result<Option<String>, JournalError> {
        self.inner.lock_holder(target)
    }
    fn acquire_lock(&self, target: &str, run: &str) -> Result<(), JournalError> {
        self.inner.acquire_lock(target, run)
    }
    fn release_lock(&self, target: &str, run: &str) -> Result<(), JournalError> {
        self.inner.release_lock(target, run)
    }
}

/// `runs` runs of `steps` no-op steps each, started together.
fn engine_concurrent(runs: usize, steps: usize) -> Concurrent {
    let dir = bench_dir();
    let mut registry = Registry::new();
    registry.register(Arc::new(Noop));
    let mut text = String::from("name = \"many\"\n");
    for i in 0..steps {
        text.push_str(&format!("[[steps]]\nid = \"s{i}\"\nactivity = \"noop\"\n"));
    }
    let workflow = Workflow::parse("many", &text, &registry).expect("workflow");
    let runtime = runtime();
    runtime.block_on(async {
        let journal = Arc::new(Timed {
            inner: SledJournal::open(dir.path()).expect("journal"),
            pending: Mutex::new(Vec::new()),
            commits: Mutex::new(Vec::new()),
            flushes: Mutex::new(Vec::new()),
        });
        let engine = Engine::new(journal.clone(), Arc::new(registry));
        let ids: Vec<String> = (0..runs)
            .map(|i| {
                engine
                    .submit(Submission {
                        workflow: workflow.clone(),
                        params: Default::default(),
                        reason: "bench".into(),
                        operator: "bench".into(),
                        halt_before: vec![],
                        halt_after: vec![],
                        id: Some(format!("r{i}")),
                    })
                    .expect("submit")
            })
            .collect();
        let start = Instant::now();
        for id in &ids {
            engine.start(id).expect("start");
        }
        engine.wait_idle().await;
        let took = start.elapsed();
        let mut cycles = Vec::new();
        let mut completed = 0usize;
        for id in &ids {
            assert_eq!(engine.report(id).expect("report").status, "succeeded");
            let mut previous: Option<i64> = None;
            for record in engine.events(id).expect("events") {
                match record.event {
                    Event::StepStarted { .. } if previous.is_none() => {
                        previous = Some(record.at_us)
                    }
                    Event::StepCompleted { .. } => {
                        completed += 1;
                        if let Some(p) = previous {
                            cycles.push(Duration::from_micros((record.at_us - p).max(0) as u64));
                        }
                        previous = Some(record.at_us);
                    }
                    _ => {}
                }
            }
        }
        let commits = std::mem::take(&mut *journal.commits.lock().unwrap());
        let flushes = std::mem::take(&mut *journal.flushes.lock().unwrap());
        assert_eq!(
            commits.len(),
            completed,
            "every completion was flushed once"
        );
        Concurrent {
            per_second: completed as f64 / took.as_secs_f64(),
            cycles,
            commits,
            flushes,
        }
    })
}

/// `rounds` rounds of [`engine_concurrent`], each on a fresh journal: the median rate and
/// every round's latencies pooled.
fn engine_concurrent_rounds(rounds: usize, runs: usize, steps: usize) -> Concurrent {
    let mut rates = Vec::new();
    let (mut cycles, mut commits, mut flushes) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let round = engine_concurrent(runs, steps);
        rates.push(round.per_second);
        cycles.extend(round.cycles);
        commits.extend(round.commits);
        flushes.extend(round.flushes);
    }
    rates.sort_by(f64::total_cmp);
    cycles.sort();
    commits.sort();
    flushes.sort();
    Concurrent {
        per_second: rates[rates.len() / 2],
        cycles,
        commits,
        flushes,
    }
}

/// The `q` quantile of sorted samples.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    // Warm the disk and allocator once; then interleave the measurements so a noisy disk
    // hurts all of them alike, and report medians of 5 batches.
    write_fsync(20);
    journal_step(20);
    let (mut floors, mut floors2, mut journals) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        floors.push(write_fsync(ROUNDS));
        floors2.push(overwrite_fdatasync(ROUNDS));
        journals.push(journal_step(ROUNDS));
    }
    let (floor, floor2, journal) = (median(floors), median(floors2), median(journals));
    println!("medians of 5 batches of {ROUNDS}:");
    println!(
        "  journal per step (start + durable completion) {:>8.1} µs",
        micros(journal)
    );
    println!(
        "  4 KiB append + fsync, same disk               {:>8.1} µs",
        micros(floor)
    );
    println!(
        "  4 KiB overwrite + fdatasync, same disk        {:>8.1} µs",
        micros(floor2)
    );
    println!(
        "  ratio journal / (append + fsync)              {:>8.2}x   (goal <= 2.00x)",
        journal.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "  ratio journal / (overwrite + fdatasync)       {:>8.2}x",
        journal.as_secs_f64() / floor2.as_secs_f64()
    );
    let rate = engine_steps_per_second(300);
    println!(
        "  engine, no-op activity, 300-step run          {rate:>8.0} steps/s ({:.2} ms/step)",
        1000.0 / rate
    );
    // A round of 50 runs lasts ~15 ms, so a single pause of the machine hits all 50 runs'
    // cycles at once: 50 rounds (25,000 steps) keep one pause from being the p99 by itself.
    const ROUNDS_AT_ONCE: usize = 50;
    let alone = engine_concurrent_rounds(ROUNDS_AT_ONCE, 1, 10);
    let many = engine_concurrent_rounds(ROUNDS_AT_ONCE, 50, 10);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "durable step transitions (no-op steps, 10 per run; median rate and pooled latencies of {ROUNDS_AT_ONCE} rounds):"
    );
    println!("                       steps/s    step cycle p50 / p99    commit wait p50 / p99");
    for (name, c) in [("one run alone", &alone), ("50 runs at once", &many)] {
        println!(
            "  {name:<18} {:>8.0}    {:>6.2} / {:>5.2} ms       {:>6.2} / {:>5.2} ms",
            c.per_second,
            ms(quantile(&c.cycles, 0.50)),
            ms(quantile(&c.cycles, 0.99)),
            ms(quantile(&c.commits, 0.50)),
            ms(quantile(&c.commits, 0.99)),
        );
    }
    println!(
        "  50 runs at once: {} step cycles, p90 / p99.9 {:.2} / {:.2} ms; {} flushes, p99 / slowest {:.2} / {:.2} ms",
        many.cycles.len(),
        ms(quantile(&many.cycles, 0.90)),
        ms(quantile(&many.cycles, 0.999)),
        many.flushes.len(),
        ms(quantile(&many.flushes, 0.99)),
        ms(many.flushes.last().copied().unwrap_or_default()),
    );
    println!(
        "  50 runs / one run  {:>8.1}x   (goal >= 5000 steps/s with 50 runs, p99 <= 5 ms)",
        many.per_second / alone.per_second
    );
    println!(
        "  floor: 4 KiB append + fsync {:.2} ms ({:.0}/s one after another)",
        ms(floor),
        1.0 / floor.as_secs_f64()
    );
    telemetry_unset_cost();
}

/// What the engine's trace spans cost when no OTLP endpoint is configured: the same runs
/// with no subscriber at all and under the CLI's own subscriber (error-level logs to
/// stderr, no OpenTelemetry layer), alternating round by round so the disk's moods hit
/// both alike. The spans are disabled callsites either way.
fn telemetry_unset_cost() {
    const ROUNDS: usize = 7;
    let cli_like = {
        use tracing_subscriber::Layer as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        tracing::Dispatch::new(
            tracing_subscriber::registry().with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(tracing_subscriber::EnvFilter::new("error")),
            ),
        )
    };
    let (mut bare, mut logged) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    for _ in 0..ROUNDS {
        for (dispatch, into) in [(None, &mut bare), (Some(cli_like.clone()), &mut logged)] {
            *DISPATCH.lock().unwrap() = dispatch;
            into.0.push(engine_steps_per_second(300));
            into.1.push(engine_concurrent(50, 10).per_second);
        }
    }
    *DISPATCH.lock().unwrap() = None;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (b1, b50, l1, l50) = (
        median(bare.0),
        median(bare.1),
        median(logged.0),
        median(logged.1),
    );
    println!(
        "telemetry unset (medians of {ROUNDS} alternating rounds; the engine's spans are disabled callsites):"
    );
    println!(
        "  300-step run: no subscriber {b1:>6.0} steps/s, the CLI's subscriber {l1:>6.0} steps/s ({:.2}x)",
        l1 / b1
    );
    println!(
        "  50 runs:      no subscriber {b50:>6.0} steps/s, the CLI's subscriber {l50:>6.0} steps/s ({:.2}x)",
        l50 / b50
    );
}
