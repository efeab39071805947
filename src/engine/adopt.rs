//! Taking up a run from its mirrored journal: a host that never saw the run rebuilds it
//! from the copy; a host whose copy is behind catches up; a host whose copy went another
//! way (it was fenced, and another host continued the run) is refused, so it runs no step.

use super::journal::JournalError;
use super::mirror::MirroredRun;
use super::records::EventRecord;
use super::runtime::{Engine, EngineError};

/// What bringing a run in line with its mirror did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adoption {
    /// No mirror is configured, or it holds nothing of the run: the local journal stands.
    Local,
    /// This journal already holds everything the mirror has (and maybe more, not copied
    /// yet).
    Current,
    /// The run was rebuilt here from the mirror's copy (events taken).
    Rebuilt { events: usize, source: String },
    /// The local copy was behind: the mirror's later events were taken.
    CaughtUp { events: usize, source: String },
}

impl Engine {
    /// Brings this journal's copy of `run_id` in line with the mirror before it is driven
    /// here: rebuilds an unknown run, takes events this host missed, and refuses when this
    /// host's copy and the mirror's went separate ways.
    pub async fn adopt(&self, run_id: &str) -> Result<Adoption, EngineError> {
        let Some(mirror) = self.mirror.get() else {
            return Ok(Adoption::Local);
        };
        let local = self.journal.run(run_id)?;
        let copied = match mirror.fetch(run_id).await {
            Ok(copied) => copied,
            Err(e) if local.is_some() => {
                tracing::warn!(run = %run_id, error = %e, "cannot read the run's mirror; continuing from this host's journal");
                return Ok(Adoption::Local);
            }
            Err(e) => {
                return Err(EngineError::Refused(format!(
                    "run {run_id} is not in this host's journal and its copy in the stores cannot be read: {e}"
                )));
            }
        };
        let Some(MirroredRun {
            record,
            events,
            source,
        }) = copied
        else {
            return Ok(Adoption::Local);
        };
        if local.is_none() {
            match self.journal.create_run(&record) {
                Ok(()) => {}
                Err(JournalError::Locked { target, holder }) => {
                    return Err(EngineError::Refused(format!(
                        "run {run_id} (found in store {source}) needs target \"{target}\", which run {holder} holds on this host; end that run first"
                    )));
                }
                Err(e) => return Err(e.into()),
            }
            let taken = self.take_copied(run_id, &events)?;
            tracing::info!(run = %run_id, events = taken, store = %source, "run rebuilt from its mirror");
            return Ok(Adoption::Rebuilt {
                events: taken,
                source,
            });
        }
        let here = self.journal.events(run_id)?;
        let shared = here.len().min(events.len());
        if let Some(at) = (0..shared).find(|&i| here[i] != events[i]) {
            return Err(EngineError::Refused(format!(
                "run {run_id} was continued by another host: its journal in store {source} ({} events) \
                 differs from this host's ({} events) from event {at} on. This host's copy is stale \
                 and runs no step of the run; `lazarus runs --from-stores` shows where it stands",
                events.len(),
                here.len()
            )));
        }
        if events.len() <= here.len() {
            return Ok(Adoption::Current);
        }
        let taken = self.take_copied(run_id, &events[here.len()..])?;
        tracing::info!(run = %run_id, events = taken, store = %source, "took the run's later events from its mirror");
        Ok(Adoption::CaughtUp {
            events: taken,
            source,
        })
    }

    /// The store holding a copy of `run_id`, if any does (no mirror, or none readable:
    /// `None`): a run another host started.
    pub async fn in_stores(&self, run_id: &str) -> Option<String> {
        let mirror = self.mirror.get()?;
        match mirror.fetch(run_id).await {
            Ok(copy) => copy.map(|c| c.source),
            Err(e) => {
                tracing::warn!(run = %run_id, error = %e, "cannot look for the run in the stores");
                None
            }
        }
    }

    /// Takes the run's cross-host claim ahead of a resume (from `over` by force), so that
    /// what the previous holder copied up to that moment can be taken before this host
    /// goes on: nothing it publishes after can be missed.
    /// A run that has ended is not claimed: there is nothing to resume.
    pub fn claim_run(&self, run_id: &str, over: Option<&str>) -> Result<(), EngineError> {
        let (record, _, state) = self.load(run_id)?;
        if state.status.is_terminal() {
            return Ok(());
        }
        self.claim_from(&record, over)
    }

    /// Lets a claim taken by [`Engine::claim_run`] go, when the resume is refused after all.
    pub fn release_run_claim(&self, run_id: &str) {
        if let Ok((record, _, _)) = self.load(run_id) {
            self.unclaim(record.target.as_deref(), run_id);
        }
    }

    /// Appends events taken from a mirror, durably.
    fn take_copied(&self, run_id: &str, events: &[EventRecord]) -> Result<usize, EngineError> {
        for event in events {
            self.journal.append(run_id, event)?;
        }
        self.journal.flush()?;
        Ok(events.len())
    }
}

/// A run as its mirrored copy tells it, for a host that lists runs it does not hold:
/// parsed with its pinned workflow and folded like a local one.
pub fn summarize_copy(
    copy: &MirroredRun,
    registry: &super::activity::Registry,
) -> Result<super::report::RunSummary, EngineError> {
    let record = &copy.record;
    let workflow = super::workflow::Workflow::parse(
        &format!(
            "{} (pinned in run {}, store {})",
            record.workflow_source, record.id, copy.source
        ),
        &record.workflow_text,
        registry,
    )?;
    let state = super::state::RunState::fold(&workflow, &copy.events);
    let report = super::report::RunReport::build(record, &workflow, &state, false);
    Ok(super::report::RunSummary::from(&report))
}
