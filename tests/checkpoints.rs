//! The checkpoint API: an activity journals coarse progress, and a resumed attempt reads it
//! back and continues from there instead of starting over.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lazarus::engine::{
    Activity, ActivityContext, ActivityError, ActivitySpec, Engine, InputSpec, Progress, Registry,
    SledJournal, Submission, Workflow,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Serialize, Deserialize)]
struct Done {
    next: u64,
}

/// Processes items 0..total one by one, checkpointing after each.
struct Items {
    processed: Arc<Mutex<Vec<(u32, u64)>>>,
}

static ITEMS: ActivitySpec = ActivitySpec {
    name: "items",
    summary: "processes numbered items, resumably",
    inputs: &[InputSpec {
        name: "total",
        required: true,
        help: "how many",
    }],
    outputs: &["processed"],
};

#[async_trait]
impl Activity for Items {
    fn spec(&self) -> &'static ActivitySpec {
        &ITEMS
    }

    async fn run(&self, ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let total = inputs["total"].as_u64().unwrap_or(0);
        let mut next = ctx.last_checkpoint::<Done>().map_or(0, |d| d.next);
        while next < total {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(15)) => {}
                _ = ctx.cancellation().cancelled() => return Err(ActivityError::cancelled("stopped")),
            }
            self.processed.lock().unwrap().push((ctx.attempt, next));
            next += 1;
            ctx.checkpoint(&Done { next }).await?;
            ctx.progress(Progress {
                done: next,
                total: Some(total),
                unit: "items".into(),
                message: None,
            });
        }
        Ok(json!({ "processed": total }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_attempt_continues_from_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let processed = Arc::new(Mutex::new(Vec::new()));
    let mut registry = Registry::new();
    registry.register(Arc::new(Items {
        processed: Arc::clone(&processed),
    }));
    let workflow = Workflow::parse(
        "items.toml",
        "name = \"items\"\n[[steps]]\nid = \"work\"\nactivity = \"items\"\nwith = { total = 40 }\n",
        &registry,
    )
    .unwrap();
    let engine = Engine::new(
        Arc::new(SledJournal::open(dir.path()).unwrap()),
        Arc::new(registry),
    );
    let run = engine
        .launch(Submission {
            workflow,
            params: Default::default(),
            reason: "test".into(),
            operator: "tester".into(),
            halt_before: vec![],
            halt_after: vec![],
            id: Some("cp1".into()),
        })
        .unwrap();
    while processed.lock().unwrap().len() < 10 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    engine.halt(&run, "tester", true).unwrap();
    engine.wait_idle().await;
    let report = engine.report(&run).unwrap();
    assert_eq!(report.status, "halted");
    let done_first = processed.lock().unwrap().len() as u64;

    engine.resume(&run, "tester").unwrap();
    engine.wait_idle().await;
    let report = engine.report(&run).unwrap();
    assert_eq!(report.status, "succeeded", "{report:?}");
    assert_eq!(report.steps[0].attempts, 2);

    let processed = processed.lock().unwrap().clone();
    let second: Vec<u64> = processed
        .iter()
        .filter(|(a, _)| *a == 2)
        .map(|(_, i)| *i)
        .collect();
    assert_eq!(
        second.first().copied(),
        Some(done_first),
        "attempt 2 starts where attempt 1 checkpointed"
    );
    assert_eq!(second.last().copied(), Some(39));
    let all: std::collections::BTreeSet<u64> = processed.iter().map(|(_, i)| *i).collect();
    assert_eq!(all.len(), 40, "every item processed");
    assert_eq!(processed.len(), 40, "and none twice");
}
