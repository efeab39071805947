//! Engine behaviour exercised in-process, where a crash's leftovers can be staged exactly.

use std::collections::BTreeMap;
use std::sync::Arc;

use lazarus::activities::builtin_registry;
use lazarus::engine::journal::Journal;
use lazarus::engine::records::{Event, EventRecord, RunRecord};
use lazarus::engine::{Engine, SledJournal, Submission, Workflow};

const WORKFLOW: &str = "name = \"w\"\ntarget = \"${params.db}\"\n[params]\ndb = { required = true }\n[[steps]]\nid = \"a\"\nactivity = \"command\"\nwith = { shell = \"true\" }\n";

#[tokio::test]
async fn a_lock_left_by_a_finished_run_does_not_block_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(SledJournal::open(dir.path()).unwrap());
    let registry = Arc::new(builtin_registry());
    let workflow = Workflow::parse("w.toml", WORKFLOW, &registry).unwrap();
    // A run that succeeded, then crashed before releasing its lock.
    journal
        .create_run(&RunRecord {
            id: "old".into(),
            workflow_name: "w".into(),
            workflow_source: "w.toml".into(),
            workflow_text: WORKFLOW.into(),
            workflow_hash: workflow.hash.clone(),
            params: BTreeMap::from([("db".into(), "shop".into())]),
            target: Some("shop".into()),
            reason: "r".into(),
            operator: "o".into(),
            created_at_us: 1,
            halt_before: vec![],
            halt_after: vec![],
        })
        .unwrap();
    journal
        .append(
            "old",
            &EventRecord {
                at_us: 2,
                event: Event::Succeeded,
            },
        )
        .unwrap();
    assert_eq!(journal.lock_holder("shop").unwrap().as_deref(), Some("old"));

    let engine = Engine::new(journal.clone(), registry);
    let run = engine
        .submit(Submission {
            workflow,
            params: BTreeMap::from([("db".into(), "shop".into())]),
            reason: "next".into(),
            operator: "o".into(),
            halt_before: vec![],
            halt_after: vec![],
            id: Some("new".into()),
        })
        .unwrap();
    assert_eq!(run, "new");
    assert_eq!(journal.lock_holder("shop").unwrap().as_deref(), Some("new"));
}

/// An activity that refuses its input, as `select_backup` does with an unknown backup id.
struct Refuses;

static REFUSES: lazarus::engine::ActivitySpec = lazarus::engine::ActivitySpec {
    name: "refuses",
    summary: "refuses its input",
    inputs: &[],
    outputs: &[],
};

#[async_trait::async_trait]
impl lazarus::engine::Activity for Refuses {
    fn spec(&self) -> &'static lazarus::engine::ActivitySpec {
        &REFUSES
    }

    async fn run(
        &self,
        _ctx: &lazarus::engine::ActivityContext,
        _inputs: serde_json::Value,
    ) -> Result<serde_json::Value, lazarus::engine::ActivityError> {
        Err(lazarus::engine::ActivityError::refused(
            "unknown backup id nope; pick another",
        ))
    }
}

fn submission(workflow: &Workflow, id: &str) -> Submission {
    Submission {
        workflow: workflow.clone(),
        params: BTreeMap::from([("db".into(), "shop".into())]),
        reason: "r".into(),
        operator: "o".into(),
        halt_before: vec![],
        halt_after: vec![],
        id: Some(id.into()),
    }
}

async fn settled(engine: &Engine, run: &str) -> lazarus::engine::RunReport {
    for _ in 0..500 {
        let report = engine.report(run).unwrap();
        if !report.active && report.status != "running" {
            return report;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("run {run} did not settle");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_input_ends_the_run_and_frees_its_target_unless_something_needs_undoing() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(SledJournal::open(dir.path()).unwrap());
    let mut registry = builtin_registry();
    registry.register(Arc::new(Refuses));
    let registry = Arc::new(registry);
    let engine = Engine::new(journal.clone(), registry.clone());

    let first = "name = \"w\"\ntarget = \"${params.db}\"\n[params]\ndb = { required = true }\n[[steps]]\nid = \"select\"\nactivity = \"refuses\"\n";
    let workflow = Workflow::parse("w.toml", first, &registry).unwrap();
    let run = engine.launch(submission(&workflow, "r1")).unwrap();
    let report = settled(&engine, &run).await;
    assert_eq!(report.status, "failed");
    assert!(report.ended_at.is_some(), "the run has ended");
    assert!(report.halted.is_none());
    assert_eq!(
        report.error.as_deref(),
        Some("unknown backup id nope; pick another")
    );
    assert_eq!(journal.lock_holder("shop").unwrap(), None, "target freed");
    let again = engine.resume(&run, "o").unwrap_err().to_string();
    assert!(again.contains("start a new run"), "{again}");
    // The corrected run is not locked out.
    let next = engine.launch(submission(&workflow, "r2")).unwrap();
    assert_eq!(settled(&engine, &next).await.status, "failed");

    // A completed step with an undo: the refusal halts, keeping the target, so the
    // operator can roll back what was done.
    let second = "name = \"w2\"\ntarget = \"${params.db}\"\n[params]\ndb = { required = true }\n[[steps]]\nid = \"a\"\nactivity = \"command\"\nwith = { shell = \"true\" }\ncompensate = { activity = \"command\", with = { shell = \"true\" } }\n[[steps]]\nid = \"select\"\nactivity = \"refuses\"\n";
    let workflow = Workflow::parse("w2.toml", second, &registry).unwrap();
    let run = engine.launch(submission(&workflow, "r3")).unwrap();
    let report = settled(&engine, &run).await;
    assert_eq!(report.status, "halted");
    assert_eq!(journal.lock_holder("shop").unwrap().as_deref(), Some("r3"));
}

#[tokio::test]
async fn work_files_default_to_the_state_directory_not_the_current_one() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(SledJournal::open(dir.path()).unwrap());
    let registry = Arc::new(builtin_registry());
    let engine = Engine::new(journal.clone(), registry.clone());
    engine.set_state_dir(dir.path());
    let text = "name = \"w\"\n[params]\nworkdir = { default = \"${lazarus.state}/work\" }\n[[steps]]\nid = \"a\"\nactivity = \"command\"\nwith = { shell = \"true\" }\n";
    let workflow = Workflow::parse("w.toml", text, &registry).unwrap();
    let mut sub = submission(&workflow, "d1");
    sub.params.clear();
    let run = engine.submit(sub).unwrap();
    let record = journal.run(&run).unwrap().unwrap();
    assert_eq!(
        record.params["workdir"],
        format!("{}/work", dir.path().display())
    );
    // Given explicitly, the value is the caller's, untouched.
    let mut sub = submission(&workflow, "d2");
    sub.params = BTreeMap::from([("workdir".into(), "here".into())]);
    let run = engine.submit(sub).unwrap();
    assert_eq!(
        journal.run(&run).unwrap().unwrap().params["workdir"],
        "here"
    );
}
