//! The durable journal: runs, their append-only events, and per-target locks.
//!
//! [`Journal`] is deliberately narrow so the store can be swapped if sled ever fails the
//! kill -9 torture test; [`SledJournal`] is the implementation on sled 0.34.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::records::{EventRecord, RecordError, RunRecord, decode, encode};

/// A journal operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Another process has the store open (sled allows one).
    #[error("the state directory {0} is in use by another lazarus process")]
    InUse(PathBuf),
    /// The store could not be read or written.
    #[error("journal store error in {path}: {message}")]
    Store { path: PathBuf, message: String },
    /// A stored record does not decode.
    #[error("journal record for run {run}: {source}")]
    Record {
        run: String,
        #[source]
        source: RecordError,
    },
    /// The run id is taken.
    #[error("a run with id \"{0}\" already exists; choose another --id")]
    RunExists(String),
    /// A flush shared by several runs (group commit) failed; the message is the store's.
    #[error("{0}")]
    SharedFlush(String),
    /// The target is locked by an unfinished run.
    #[error("target \"{target}\" is locked by run {holder}")]
    Locked { target: String, holder: String },
}

/// Where runs, events and locks are kept. Appends are ordered per run; [`Journal::flush`]
/// makes everything appended so far durable.
pub trait Journal: Send + Sync {
    /// Stores a new run and takes its target lock, atomically and durably.
    fn create_run(&self, run: &RunRecord) -> Result<(), JournalError>;
    /// The run with this id.
    fn run(&self, id: &str) -> Result<Option<RunRecord>, JournalError>;
    /// Every run, oldest first.
    fn runs(&self) -> Result<Vec<RunRecord>, JournalError>;
    /// Appends an event to a run's log (durable only after [`Journal::flush`]).
    fn append(&self, run: &str, event: &EventRecord) -> Result<(), JournalError>;
    /// Makes every append so far durable.
    fn flush(&self) -> Result<(), JournalError>;
    /// A run's events in append order.
    fn events(&self, run: &str) -> Result<Vec<EventRecord>, JournalError>;
    /// A run's events after the first `skip`, in append order: what was appended since a
    /// reader last saw `skip` events (events are never removed or reordered).
    fn events_from(&self, run: &str, skip: usize) -> Result<Vec<EventRecord>, JournalError> {
        let mut events = self.events(run)?;
        events.drain(..skip.min(events.len()));
        Ok(events)
    }
    /// The run holding a target's lock.
    fn lock_holder(&self, target: &str) -> Result<Option<String>, JournalError>;
    /// Takes a target's lock for `run` again (a rollback of a finished run), durably;
    /// refused while another run holds it.
    fn acquire_lock(&self, target: &str, run: &str) -> Result<(), JournalError>;
    /// Releases a target's lock if `run` holds it; durable after the next
    /// [`Journal::flush`] (an engine lets it ride the group commit of the run's last event).
    fn release_lock(&self, target: &str, run: &str) -> Result<(), JournalError>;
}

/// The journal on an embedded sled database in `DIR/journal`.
pub struct SledJournal {
    path: PathBuf,
    db: sled::Db,
    runs: sled::Tree,
    events: sled::Tree,
    locks: sled::Tree,
    append_order: Mutex<()>,
}

impl SledJournal {
    /// Opens (or creates) the journal under a state directory. Fails with
    /// [`JournalError::InUse`] while another process holds it.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        let path = state_dir.join("journal");
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(64 * 1024 * 1024)
            .flush_every_ms(Some(200))
            .open()
            .map_err(|e| {
                if e.to_string().contains("could not acquire lock") {
                    JournalError::InUse(state_dir.to_path_buf())
                } else {
                    JournalError::Store {
                        path: path.clone(),
                        message: e.to_string(),
                    }
                }
            })?;
        let tree = |name: &str| {
            db.open_tree(name).map_err(|e| JournalError::Store {
                path: path.clone(),
                message: e.to_string(),
            })
        };
        let runs = tree("runs")?;
        let events = tree("events")?;
        let locks = tree("locks")?;
        Ok(Self {
            path: path.clone(),
            db,
            runs,
            events,
            locks,
            append_order: Mutex::new(()),
        })
    }

    /// Another tree in the same store, for indexes kept beside the journal (the backup
    /// catalog): one owner, one lock, one place on disk.
    pub fn tree(&self, name: &str) -> Result<sled::Tree, JournalError> {
        self.db.open_tree(name).map_err(|e| self.store_err(e))
    }

    fn store_err(&self, e: impl std::fmt::Display) -> JournalError {
        JournalError::Store {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn event_prefix(run: &str) -> Vec<u8> {
        let mut key = run.as_bytes().to_vec();
        key.push(0);
        key
    }
}

impl Journal for SledJournal {
    fn create_run(&self, run: &RunRecord) -> Result<(), JournalError> {
        use sled::Transactional;
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        let encoded = encode(run);
        let result = (&self.runs, &self.locks).transaction(|(runs, locks)| {
            if runs.get(run.id.as_bytes())?.is_some() {
                return Err(ConflictableTransactionError::Abort(
                    JournalError::RunExists(run.id.clone()),
                ));
            }
            if let Some(target) = &run.target {
                if let Some(holder) = locks.get(target.as_bytes())? {
                    return Err(ConflictableTransactionError::Abort(JournalError::Locked {
                        target: target.clone(),
                        holder: String::from_utf8_lossy(&holder).into_owned(),
                    }));
                }
                locks.insert(target.as_bytes(), run.id.as_bytes())?;
            }
            runs.insert(run.id.as_bytes(), encoded.as_slice())?;
            Ok(())
        });
        match result {
            Ok(()) => self.flush(),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(self.store_err(e)),
        }
    }

    fn run(&self, id: &str) -> Result<Option<RunRecord>, JournalError> {
        self.runs
            .get(id.as_bytes())
            .map_err(|e| self.store_err(e))?
            .map(|bytes| {
                decode(&bytes).map_err(|source| JournalError::Record {
                    run: id.to_string(),
                    source,
                })
            })
            .transpose()
    }

    fn runs(&self) -> Result<Vec<RunRecord>, JournalError> {
        let mut all = Vec::new();
        for entry in self.runs.iter() {
            let (key, bytes) = entry.map_err(|e| self.store_err(e))?;
            let record: RunRecord = decode(&bytes).map_err(|source| JournalError::Record {
                run: String::from_utf8_lossy(&key).into_owned(),
                source,
            })?;
            all.push(record);
        }
        all.sort_by(|a, b| {
            a.created_at_us
                .cmp(&b.created_at_us)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(all)
    }

    fn append(&self, run: &str, event: &EventRecord) -> Result<(), JournalError> {
        // One appender at a time, so sequence numbers are inserted in the order taken.
        let _order = self
            .append_order
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let seq = self.db.generate_id().map_err(|e| self.store_err(e))?;
        let mut key = Self::event_prefix(run);
        key.extend_from_slice(&seq.to_be_bytes());
        self.events
            .insert(key, encode(event))
            .map_err(|e| self.store_err(e))?;
        Ok(())
    }

    fn flush(&self) -> Result<(), JournalError> {
        self.db.flush().map_err(|e| self.store_err(e))?;
        Ok(())
    }

    fn events(&self, run: &str) -> Result<Vec<EventRecord>, JournalError> {
        self.events
            .scan_prefix(Self::event_prefix(run))
            .map(|entry| {
                let (_, bytes) = entry.map_err(|e| self.store_err(e))?;
                decode(&bytes).map_err(|source| JournalError::Record {
                    run: run.to_string(),
                    source,
                })
            })
            .collect()
    }

    fn events_from(&self, run: &str, skip: usize) -> Result<Vec<EventRecord>, JournalError> {
        // Skipped entries are stepped over, not decoded.
        self.events
            .scan_prefix(Self::event_prefix(run))
            .skip(skip)
            .map(|entry| {
                let (_, bytes) = entry.map_err(|e| self.store_err(e))?;
                decode(&bytes).map_err(|source| JournalError::Record {
                    run: run.to_string(),
                    source,
                })
            })
            .collect()
    }

    fn lock_holder(&self, target: &str) -> Result<Option<String>, JournalError> {
        Ok(self
            .locks
            .get(target.as_bytes())
            .map_err(|e| self.store_err(e))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn acquire_lock(&self, target: &str, run: &str) -> Result<(), JournalError> {
        let swapped = self
            .locks
            .compare_and_swap(target.as_bytes(), None::<&[u8]>, Some(run.as_bytes()))
            .map_err(|e| self.store_err(e))?;
        if let Err(current) = swapped {
            let holder = current
                .current
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_default();
            if holder != run {
                return Err(JournalError::Locked {
                    target: target.to_string(),
                    holder,
                });
            }
        }
        self.flush()
    }

    fn release_lock(&self, target: &str, run: &str) -> Result<(), JournalError> {
        // Only the holder may release: compare-and-swap to empty.
        let _ = self
            .locks
            .compare_and_swap(target.as_bytes(), Some(run.as_bytes()), None::<&[u8]>)
            .map_err(|e| self.store_err(e))?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::records::Event;
    use std::collections::BTreeMap;

    /// sled's flusher thread lets go of the file lock a moment after the `Db` is dropped.
    fn reopen(path: &Path) -> SledJournal {
        for _ in 0..200 {
            match SledJournal::open(path) {
                Ok(j) => return j,
                Err(JournalError::InUse(_)) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => panic!("reopen failed: {e}"),
            }
        }
        panic!("the store stayed locked after its only handle was dropped");
    }

    /// A run record for tests, with the given id and target.
    pub(crate) fn record(id: &str, target: Option<&str>) -> RunRecord {
        RunRecord {
            id: id.into(),
            workflow_name: "wf".into(),
            workflow_source: "wf.toml".into(),
            workflow_text: "name = \"wf\"".into(),
            workflow_hash: "00".into(),
            params: BTreeMap::new(),
            target: target.map(String::from),
            reason: "test".into(),
            operator: "tester".into(),
            created_at_us: 1,
            halt_before: vec![],
            halt_after: vec![],
        }
    }

    #[test]
    fn runs_and_events_survive_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = SledJournal::open(dir.path()).unwrap();
            j.create_run(&record("a", None)).unwrap();
            j.create_run(&record("ab", None)).unwrap();
            for i in 0..300u32 {
                let ev = EventRecord {
                    at_us: i64::from(i),
                    event: Event::StepStarted {
                        step: format!("s{i}"),
                        attempt: 1,
                    },
                };
                j.append("a", &ev).unwrap();
            }
            j.append(
                "ab",
                &EventRecord {
                    at_us: 0,
                    event: Event::Succeeded,
                },
            )
            .unwrap();
            j.flush().unwrap();
        }
        let j = reopen(dir.path());
        let events = j.events("a").unwrap();
        assert_eq!(events.len(), 300, "prefix scan must not leak run \"ab\"");
        assert!(events.windows(2).all(|w| w[0].at_us < w[1].at_us));
        assert_eq!(j.events("ab").unwrap().len(), 1);
        assert_eq!(j.runs().unwrap().len(), 2);
    }

    #[test]
    fn second_open_is_refused_while_the_first_holds_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledJournal::open(dir.path()).unwrap();
        assert!(matches!(
            SledJournal::open(dir.path()),
            Err(JournalError::InUse(_))
        ));
    }

    #[test]
    fn target_lock_refuses_a_second_run_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let j = SledJournal::open(dir.path()).unwrap();
        j.create_run(&record("r1", Some("shop"))).unwrap();
        match j.create_run(&record("r2", Some("shop"))) {
            Err(JournalError::Locked { holder, .. }) => assert_eq!(holder, "r1"),
            other => panic!("expected lock refusal, got {other:?}"),
        }
        assert!(
            j.run("r2").unwrap().is_none(),
            "refused run must not be stored"
        );
        j.release_lock("shop", "someone-else").unwrap();
        assert_eq!(j.lock_holder("shop").unwrap().as_deref(), Some("r1"));
        j.release_lock("shop", "r1").unwrap();
        j.create_run(&record("r2", Some("shop"))).unwrap();
        assert!(matches!(
            j.create_run(&record("r2", None)),
            Err(JournalError::RunExists(_))
        ));
    }
}
