//! Running a completed step again when what it made is gone: a run taken up on a host that
//! never had its work files (the first host was lost), or whose files were removed, cannot
//! go on from a step that reads them. The step that made them runs again first; it is
//! idempotent, so doing it twice is safe, and the journal says why it ran twice.

use std::collections::BTreeMap;
use std::path::Path;

use super::activity::Registry;
use super::state::{RunState, StepStatus};
use super::template::{Reference, Scope, references};
use super::workflow::Workflow;

/// How many times one step is run again for a missing file before the step that needs it
/// is left to fail on its own (with the activity's message): a step whose output vanishes
/// each time it is made is a fault to show, not to loop on.
const MAX_RERUNS: usize = 3;

/// A completed step whose output a later step needs and this host does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostOutput {
    /// The step to run again.
    pub producer: String,
    /// What is missing and who needs it, for the journal and the report.
    pub reason: String,
}

/// The completed step that must run again before `step_id` can, if any: an input the
/// step's activity reads as a file ([`super::Activity::input_files`]) names a path that
/// does not exist, and that path came from an earlier step's output.
pub fn lost_output(
    registry: &Registry,
    workflow: &Workflow,
    state: &RunState,
    params: &BTreeMap<String, String>,
    run_id: &str,
    step_id: &str,
) -> Option<LostOutput> {
    let step = workflow.step(step_id)?;
    let files = registry.get(&step.activity)?.input_files();
    if files.is_empty() {
        return None;
    }
    let outputs = state.outputs();
    let scope = Scope {
        params,
        outputs: &outputs,
        run_id,
    };
    files.iter().find_map(|name| {
        let raw = step.with.get(*name)?;
        let producer = references(raw)
            .ok()?
            .into_iter()
            .rev()
            .find_map(|reference| match reference {
                Reference::Step { id, .. }
                    if state.step(&id).is_some_and(|s| {
                        s.status == StepStatus::Completed && s.reruns.len() < MAX_RERUNS
                    }) =>
                {
                    Some(id)
                }
                _ => None,
            })?;
        let rendered = scope.render(raw).ok()?;
        let path = rendered.as_str().filter(|p| !p.is_empty())?;
        // Only a file that is not there: one this host cannot read is the step's to report.
        if !matches!(Path::new(path).try_exists(), Ok(false)) {
            return None;
        }
        Some(LostOutput {
            reason: format!(
                "{path} (input \"{name}\" of step \"{step_id}\") is not on this host: step \"{producer}\" made it and runs again"
            ),
            producer,
        })
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;
    use serde_json::{Value, json};

    use super::*;
    use crate::engine::activity::{
        Activity, ActivityContext, ActivityError, ActivitySpec, InputSpec,
    };
    use crate::engine::records::{Event, EventRecord};

    /// `make` writes a file and names it; `read` reads the file it is given.
    struct Step(&'static ActivitySpec, &'static [&'static str]);
    static MAKE: ActivitySpec = ActivitySpec {
        name: "make",
        summary: "",
        inputs: &[],
        outputs: &["path"],
    };
    static READ: ActivitySpec = ActivitySpec {
        name: "read",
        summary: "",
        inputs: &[InputSpec {
            name: "file",
            required: true,
            help: "",
        }],
        outputs: &[],
    };
    #[async_trait]
    impl Activity for Step {
        fn spec(&self) -> &'static ActivitySpec {
            self.0
        }
        fn input_files(&self) -> &'static [&'static str] {
            self.1
        }
        async fn run(&self, _: &ActivityContext, _: Value) -> Result<Value, ActivityError> {
            Ok(Value::Null)
        }
    }

    fn setup(path: &Path) -> (Registry, Workflow, Vec<EventRecord>) {
        let mut registry = Registry::new();
        registry.register(Arc::new(Step(&MAKE, &[])));
        registry.register(Arc::new(Step(&READ, &["file"])));
        let workflow = Workflow::parse(
            "t",
            "name = \"t\"\n[[steps]]\nid = \"make\"\nactivity = \"make\"\n\
             [[steps]]\nid = \"read\"\nactivity = \"read\"\nwith = { file = \"${steps.make.path}\" }\n",
            &registry,
        )
        .expect("workflow");
        let made = EventRecord {
            at_us: 1,
            event: Event::StepCompleted {
                step: "make".into(),
                attempt: 1,
                output: serde_json::to_vec(&json!({ "path": path })).expect("json"),
            },
        };
        (registry, workflow, vec![made])
    }

    fn lost(
        registry: &Registry,
        workflow: &Workflow,
        events: &[EventRecord],
    ) -> Option<LostOutput> {
        let state = RunState::fold(workflow, events);
        lost_output(registry, workflow, &state, &BTreeMap::new(), "r", "read")
    }

    #[test]
    fn a_step_whose_input_file_is_gone_sends_its_maker_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("made");
        let (registry, workflow, mut events) = setup(&path);
        let gone = lost(&registry, &workflow, &events).expect("the file is gone");
        assert_eq!(gone.producer, "make");
        assert!(
            gone.reason.contains("is not on this host"),
            "{}",
            gone.reason
        );

        std::fs::write(&path, b"x").expect("write");
        assert_eq!(
            lost(&registry, &workflow, &events),
            None,
            "the file is here"
        );

        // Folding the loss makes the maker pending again, with the reason kept.
        std::fs::remove_file(&path).expect("remove");
        events.push(EventRecord {
            at_us: 2,
            event: Event::OutputLost {
                step: gone.producer,
                reason: gone.reason.clone(),
            },
        });
        let state = RunState::fold(&workflow, &events);
        assert_eq!(state.next_step().map(|s| s.id.as_str()), Some("make"));
        assert_eq!(
            state.step("make").map(|s| s.reruns.clone()),
            Some(vec![gone.reason])
        );
    }

    #[test]
    fn a_maker_whose_output_keeps_vanishing_is_not_rerun_forever() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (registry, workflow, made) = setup(&dir.path().join("never"));
        let mut events = Vec::new();
        for at in 0..MAX_RERUNS as i64 {
            events.extend(made.iter().cloned());
            events.push(EventRecord {
                at_us: at,
                event: Event::OutputLost {
                    step: "make".into(),
                    reason: "gone".into(),
                },
            });
        }
        events.extend(made);
        assert_eq!(lost(&registry, &workflow, &events), None);
    }
}
