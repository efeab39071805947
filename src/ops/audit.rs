//! The audit trail: every control action from any transport, accepted or refused, as an
//! append-only hash chain in the journal (each entry carries the SHA-256 of the one before),
//! mirrored to every store as numbered objects so it outlives the host and so an entry
//! edited or deleted in one place shows up against the others.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::actor::Actor;
use crate::storage::{Body, StoreSet};

/// Where the mirror keeps entries in a store.
pub const AUDIT_PREFIX: &str = "audit/";

/// The link of the first entry: nothing came before it.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Whether an action was carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It was done.
    Accepted,
    /// It was refused (by role, or by the engine), with the reason in the message.
    Refused,
}

/// One entry of the trail, exactly as stored and hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// When, RFC 3339 in UTC.
    pub at: String,
    /// Who: the token's identity, or the operator the CLI named.
    pub identity: String,
    /// The role the action was judged by.
    pub role: String,
    /// Where from: the socket with the OS user, or HTTP with the peer address.
    pub via: String,
    /// What: start, halt, approve, resume, rollback, cancel, gc, …
    pub action: String,
    /// The run it concerns, when there is one.
    pub run: Option<String>,
    /// The reason given, when one was.
    pub reason: Option<String>,
    /// Carried out or refused.
    pub outcome: Outcome,
    /// What happened, or why it was refused.
    pub message: String,
    /// SHA-256 (hex) of the previous entry's stored bytes; [`GENESIS`] for the first.
    pub prev: String,
}

/// What a caller records; the log adds the sequence number, time and link.
#[derive(Debug, Clone)]
pub struct AuditRecord<'a> {
    /// Who acted, from where.
    pub actor: &'a Actor,
    /// The action's name.
    pub action: &'a str,
    /// The run concerned.
    pub run: Option<String>,
    /// The reason given.
    pub reason: Option<String>,
    /// Done or refused.
    pub outcome: Outcome,
    /// The result or the refusal.
    pub message: String,
}

/// The trail could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("audit trail: {0}")]
pub struct AuditError(pub String);

/// One thing `audit verify` found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The entry concerned.
    pub seq: u64,
    /// "journal" or a store's name.
    pub place: String,
    /// What is wrong, in words.
    pub what: String,
}

/// How far one store's copy of the trail reaches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreCopy {
    /// The store.
    pub store: String,
    /// Entries found there.
    pub entries: u64,
    /// Entries the mirror put there (what must be there).
    pub mirrored: u64,
    /// Why the store could not be checked, if it could not.
    pub error: Option<String>,
}

/// The result of `audit verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// Entries in the journal.
    pub entries: u64,
    /// SHA-256 of the newest entry (what the next one will link to).
    pub head: String,
    /// Each store's copy.
    pub stores: Vec<StoreCopy>,
    /// Everything wrong, the first broken link first.
    pub problems: Vec<Problem>,
}

/// How the mirror stands on one store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorState {
    /// The store.
    pub store: String,
    /// The newest entry it holds.
    pub mirrored: u64,
    /// Entries not there yet.
    pub behind: u64,
    /// The last failure, while behind.
    pub error: Option<String>,
}

/// The trail in the journal, and its mirror.
pub struct AuditLog {
    entries: sled::Tree,
    mirrored: sled::Tree,
    append_lock: Mutex<()>,
    wake: Notify,
    errors: Mutex<BTreeMap<String, String>>,
}

fn hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn object_key(seq: u64) -> String {
    format!("{AUDIT_PREFIX}{seq:012}.json")
}

fn seq_of_key(key: &str) -> Option<u64> {
    key.strip_prefix(AUDIT_PREFIX)?
        .strip_suffix(".json")?
        .parse()
        .ok()
}

fn err(e: impl std::fmt::Display) -> AuditError {
    AuditError(e.to_string())
}

impl AuditLog {
    /// The trail kept in `entries`, with the mirror's progress per store in `mirrored`.
    pub fn new(entries: sled::Tree, mirrored: sled::Tree) -> Self {
        Self {
            entries,
            mirrored,
            append_lock: Mutex::new(()),
            wake: Notify::new(),
            errors: Mutex::new(BTreeMap::new()),
        }
    }

    /// Appends an entry, durably, linked to the one before.
    pub fn append(&self, record: AuditRecord<'_>) -> Result<AuditEntry, AuditError> {
        let _guard = self
            .append_lock
            .lock()
            .map_err(|_| AuditError("the audit lock is poisoned".into()))?;
        let (seq, prev) = match self.entries.last().map_err(err)? {
            Some((key, bytes)) => (key_seq(&key) + 1, hash(&bytes)),
            None => (1, GENESIS.to_string()),
        };
        let entry = AuditEntry {
            seq,
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            identity: record.actor.identity.clone(),
            role: record.actor.role.as_str().to_string(),
            via: record.actor.via.to_string(),
            action: record.action.to_string(),
            run: record.run,
            reason: record.reason.filter(|r| !r.is_empty()),
            outcome: record.outcome,
            message: record.message,
            prev,
        };
        let bytes = serde_json::to_vec(&entry).map_err(err)?;
        self.entries.insert(seq.to_be_bytes(), bytes).map_err(err)?;
        self.entries.flush().map_err(err)?;
        self.wake.notify_one();
        Ok(entry)
    }

    /// Every entry, oldest first (unreadable ones skipped: `verify` names them).
    pub fn list(&self) -> Result<Vec<AuditEntry>, AuditError> {
        let mut out = Vec::new();
        for item in self.entries.iter() {
            let (_, bytes) = item.map_err(err)?;
            if let Ok(entry) = serde_json::from_slice(&bytes) {
                out.push(entry);
            }
        }
        Ok(out)
    }

    fn mirrored_on(&self, store: &str) -> u64 {
        self.mirrored
            .get(store.as_bytes())
            .ok()
            .flatten()
            .map_or(0, |v| key_seq(&v))
    }

    /// How far the mirror has got on each store.
    pub fn mirror_state(&self, stores: &StoreSet) -> Vec<MirrorState> {
        let newest = self
            .entries
            .last()
            .ok()
            .flatten()
            .map_or(0, |(k, _)| key_seq(&k));
        let errors = self.errors.lock().map(|e| e.clone()).unwrap_or_default();
        stores
            .names()
            .into_iter()
            .map(|store| {
                let mirrored = self.mirrored_on(&store);
                MirrorState {
                    error: errors.get(&store).cloned().filter(|_| mirrored < newest),
                    behind: newest.saturating_sub(mirrored),
                    mirrored,
                    store,
                }
            })
            .collect()
    }

    /// Copies entries the stores do not have yet, store by store, until nothing is left;
    /// returns whether every store is up to date. An entry deleted from a store after it
    /// was mirrored is not put back: that is for `verify` to find.
    pub async fn mirror_once(&self, stores: &StoreSet) -> bool {
        let mut complete = true;
        for store in stores.stores() {
            let name = store.name().to_string();
            let from = self.mirrored_on(&name) + 1;
            for item in self.entries.range(from.to_be_bytes()..) {
                let Ok((key, bytes)) = item else {
                    complete = false;
                    break;
                };
                let seq = key_seq(&key);
                match store
                    .put(&object_key(seq), Body::Bytes(bytes.to_vec().into()))
                    .await
                {
                    Ok(_) => {
                        let _ = self.mirrored.insert(name.as_bytes(), &seq.to_be_bytes());
                        if let Ok(mut errors) = self.errors.lock() {
                            errors.remove(&name);
                        }
                    }
                    Err(e) => {
                        if let Ok(mut errors) = self.errors.lock() {
                            errors.insert(name.clone(), e.to_string());
                        }
                        complete = false;
                        break;
                    }
                }
            }
        }
        let _ = self.mirrored.flush_async().await;
        complete
    }

    /// Mirrors for as long as the process runs: after every append, and again with backoff
    /// while a store refuses.
    pub fn spawn_mirror(self: &Arc<Self>, stores: StoreSet) -> tokio::task::JoinHandle<()> {
        let log = Arc::clone(self);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(500);
            loop {
                if log.mirror_once(&stores).await {
                    backoff = Duration::from_millis(500);
                    log.wake.notified().await;
                } else {
                    tokio::select! {
                        _ = log.wake.notified() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        })
    }

    /// Recomputes the chain in the journal and compares it with every store's copy.
    pub async fn verify(&self, stores: &StoreSet) -> Result<Verification, AuditError> {
        let mut problems = Vec::new();
        let mut local: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut expected = 1u64;
        let mut prev_hash = GENESIS.to_string();
        for item in self.entries.iter() {
            let (key, bytes) = item.map_err(err)?;
            let seq = key_seq(&key);
            if seq > expected {
                let what = if expected + 1 == seq {
                    format!("entry {expected} is missing (deleted from the journal)")
                } else {
                    format!(
                        "entries {expected} to {} are missing (deleted from the journal)",
                        seq - 1
                    )
                };
                problems.push(Problem {
                    seq: expected,
                    place: "journal".into(),
                    what,
                });
            }
            match serde_json::from_slice::<AuditEntry>(&bytes) {
                Ok(entry) if entry.seq != seq => problems.push(Problem {
                    seq,
                    place: "journal".into(),
                    what: format!("entry {seq} says it is entry {}: it was altered", entry.seq),
                }),
                Ok(entry) if entry.prev != prev_hash && seq == expected => problems.push(Problem {
                    seq,
                    place: "journal".into(),
                    what: format!(
                        "the link from entry {seq} to entry {} is broken: entry {} was changed after entry {seq} was written, or entry {seq}'s link was",
                        seq - 1,
                        seq - 1
                    ),
                }),
                Ok(_) => {}
                Err(e) => problems.push(Problem {
                    seq,
                    place: "journal".into(),
                    what: format!("entry {seq} is not a readable audit entry ({e}): it was altered"),
                }),
            }
            prev_hash = hash(&bytes);
            expected = seq + 1;
            local.insert(seq, bytes.to_vec());
        }
        let newest = expected - 1;
        let mut copies = Vec::new();
        for store in stores.stores() {
            let name = store.name().to_string();
            let mirrored = self.mirrored_on(&name);
            let listing = match store.list(AUDIT_PREFIX).await {
                Ok(listing) => listing,
                Err(e) => {
                    copies.push(StoreCopy {
                        store: name,
                        entries: 0,
                        mirrored,
                        error: Some(e.to_string()),
                    });
                    continue;
                }
            };
            let found: BTreeMap<u64, String> = listing
                .into_iter()
                .filter_map(|m| seq_of_key(&m.key).map(|s| (s, m.key)))
                .collect();
            for seq in 1..=mirrored.min(newest) {
                if !found.contains_key(&seq) && local.contains_key(&seq) {
                    problems.push(Problem {
                        seq,
                        place: name.clone(),
                        what: format!(
                            "entry {seq} is missing from store {name} although it was mirrored there: it was deleted"
                        ),
                    });
                }
            }
            for (&seq, key) in &found {
                let theirs = match read_small(store.as_ref(), key).await {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        problems.push(Problem {
                            seq,
                            place: name.clone(),
                            what: format!("entry {seq} cannot be read from store {name}: {e}"),
                        });
                        continue;
                    }
                };
                match local.get(&seq) {
                    Some(ours) if *ours != theirs => problems.push(Problem {
                        seq,
                        place: name.clone(),
                        what: format!(
                            "entry {seq} in store {name} differs from the journal's: one of them was edited"
                        ),
                    }),
                    Some(_) => {}
                    None => problems.push(Problem {
                        seq,
                        place: "journal".into(),
                        what: format!(
                            "entry {seq} is in store {name} but not in the journal: it was deleted from the journal"
                        ),
                    }),
                }
            }
            copies.push(StoreCopy {
                store: name,
                entries: found.len() as u64,
                mirrored,
                error: None,
            });
        }
        problems.sort_by_key(|p| p.seq);
        Ok(Verification {
            entries: local.len() as u64,
            head: prev_hash,
            stores: copies,
            problems,
        })
    }
}

fn key_seq(key: &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    let n = key.len().min(8);
    raw[8 - n..].copy_from_slice(&key[key.len() - n..]);
    u64::from_be_bytes(raw)
}

/// Reads a small object whole (an audit entry is a few hundred bytes).
async fn read_small(store: &dyn crate::storage::ObjectStore, key: &str) -> Result<Vec<u8>, String> {
    use tokio::io::AsyncReadExt;
    let mut stream = store.get(key, 0, None).await.map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    (&mut stream)
        .take(1 << 20)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| e.to_string())?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::actor::{Role, Via};
    use crate::storage::local::LocalStore;

    fn log(dir: &std::path::Path) -> AuditLog {
        let db = sled::open(dir.join("db")).unwrap();
        AuditLog::new(db.open_tree("audit").unwrap(), db.open_tree("m").unwrap())
    }

    fn actor() -> Actor {
        Actor {
            identity: "alice".into(),
            role: Role::Admin,
            via: Via::Http {
                peer: "127.0.0.1:1".into(),
            },
        }
    }

    fn add(log: &AuditLog, action: &str) -> AuditEntry {
        log.append(AuditRecord {
            actor: &actor(),
            action,
            run: Some("r1".into()),
            reason: Some("because".into()),
            outcome: Outcome::Accepted,
            message: "done".into(),
        })
        .unwrap()
    }

    fn stores(dir: &std::path::Path) -> StoreSet {
        StoreSet::new(vec![Arc::new(LocalStore::new("local", dir.join("store")))])
    }

    #[tokio::test]
    async fn each_entry_links_to_the_one_before_and_verify_finds_an_edit() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path());
        let first = add(&log, "start");
        let second = add(&log, "halt");
        add(&log, "resume");
        assert_eq!(first.prev, GENESIS);
        assert_eq!(
            second.prev,
            hash(&serde_json::to_vec(&first).unwrap()),
            "the second entry links to the first's bytes"
        );
        let none = StoreSet::new(vec![]);
        assert!(log.verify(&none).await.unwrap().problems.is_empty());

        let mut edited = first.clone();
        edited.identity = "mallory".into();
        log.entries
            .insert(1u64.to_be_bytes(), serde_json::to_vec(&edited).unwrap())
            .unwrap();
        let found = log.verify(&none).await.unwrap();
        assert_eq!(found.problems[0].seq, 2, "{found:?}");
        assert!(found.problems[0].what.contains("entry 1 was changed"));
    }

    #[tokio::test]
    async fn verify_finds_an_entry_deleted_from_the_journal_or_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path());
        let stores = stores(dir.path());
        for action in ["start", "halt", "resume", "cancel"] {
            add(&log, action);
        }
        assert!(log.mirror_once(&stores).await);
        assert!(log.verify(&stores).await.unwrap().problems.is_empty());

        // The newest entry deleted from the journal: only the store's copy shows it.
        log.entries.remove(4u64.to_be_bytes()).unwrap();
        let found = log.verify(&stores).await.unwrap();
        assert_eq!(found.problems.len(), 1, "{found:?}");
        assert!(found.problems[0].what.contains("not in the journal"));

        // An entry deleted from the store is not silently put back by the mirror.
        stores.stores()[0].delete(&object_key(2)).await.unwrap();
        assert!(log.mirror_once(&stores).await);
        let found = log.verify(&stores).await.unwrap();
        assert!(
            found
                .problems
                .iter()
                .any(|p| p.seq == 2 && p.place == "local" && p.what.contains("deleted")),
            "{found:?}"
        );
    }
}
