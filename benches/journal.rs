//! Journal overhead per step beside the floor (a 4 KiB write + fsync on the same disk), steps
//! per second through the whole engine with a no-op activity, and durable step transitions
//! per second with 50 runs at once beside one run alone, with per-step latency p50/p99.
//!
//! Run: `cargo bench --bench journal` (numbers go to benches/RESULTS.md by hand).

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lazarus::engine::records::{Event, EventRecord};
use lazarus::engine::{
    Activity, ActivityContext, ActivityError, ActivitySpec, Engine, Journal, Registry, SledJournal,
    Submission, Workflow,
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
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
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
/// and each step's cycle (one completion to the run's next, from the journal's own times).
struct Concurrent {
    per_second: f64,
    p50: Duration,
    p99: Duration,
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
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let journal = Arc::new(SledJournal::open(dir.path()).expect("journal"));
        let engine = Engine::new(journal, Arc::new(registry));
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
        cycles.sort();
        let at = |q: f64| cycles[((cycles.len() as f64 * q) as usize).min(cycles.len() - 1)];
        Concurrent {
            per_second: completed as f64 / took.as_secs_f64(),
            p50: at(0.50),
            p99: at(0.99),
        }
    })
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
    let alone = engine_concurrent(1, 10);
    let many = engine_concurrent(50, 10);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("durable step transitions (no-op steps, 10 per run):");
    println!(
        "  one run alone        {:>8.0} steps/s   step p50 {:.2} ms  p99 {:.2} ms",
        alone.per_second,
        ms(alone.p50),
        ms(alone.p99)
    );
    println!(
        "  50 runs at once      {:>8.0} steps/s   step p50 {:.2} ms  p99 {:.2} ms   {:.1}x one run (goal >= 5000 steps/s, p99 <= 5 ms)",
        many.per_second,
        ms(many.p50),
        ms(many.p99),
        many.per_second / alone.per_second
    );
    println!(
        "  floor: 4 KiB append + fsync {:.2} ms ({:.0}/s one after another)",
        ms(floor),
        1.0 / floor.as_secs_f64()
    );
}
