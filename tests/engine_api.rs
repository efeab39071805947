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
