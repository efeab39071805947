//! `download`: fetch an object from the first store that has a good copy, failing over to the
//! next store — at the same offset after a network error, at the damaged chunk after an
//! integrity failure — and resuming a killed download from its journaled checkpoint.
//! The result is verified (structure, HMACs, size, checksum) before it takes its final name.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use super::files::{commit, part_path, prepare_dir, remove_output};
use super::inputs::{self, lenient_opt_u64};
use super::services::Services;
use crate::engine::{
    Activity, ActivityContext, ActivityError, ActivitySpec, Discarded, InputSpec, Leftovers,
    Progress,
};
use crate::storage::verify::{Verified, Verifier};
use crate::storage::{ObjectStore, StorageError, StoreSet};

/// Bytes between durable checkpoints.
const CHECKPOINT_EVERY: u64 = 64 << 20;
/// Read size from a store.
const BUFFER: usize = 1 << 20;
/// Network failures tolerated per store before it is passed over for good.
const TRIES_PER_STORE: u32 = 2;

static SPEC: ActivitySpec = ActivitySpec {
    name: "download",
    summary: "fetch an object with failover across stores; resumable, verified",
    inputs: &[
        InputSpec {
            name: "key",
            required: true,
            help: "object key in the stores",
        },
        InputSpec {
            name: "dest",
            required: true,
            help: "local file to write",
        },
        InputSpec {
            name: "size",
            required: false,
            help: "expected size in bytes (from the manifest)",
        },
        InputSpec {
            name: "sha256",
            required: false,
            help: "expected SHA-256, hex (from the manifest)",
        },
        InputSpec {
            name: "stores",
            required: false,
            help: "store names to use, in order (default: all, in configured order)",
        },
        InputSpec {
            name: "checkpoint_every",
            required: false,
            help: "bytes between resumable checkpoints (default 64 MiB)",
        },
    ],
    outputs: &[
        "path",
        "size",
        "sha256",
        "format",
        "authenticated",
        "served_by",
        "sources",
        "skipped",
        "resumed_from",
        "seconds",
        "reused",
    ],
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inputs {
    key: String,
    dest: PathBuf,
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    size: Option<u64>,
    sha256: Option<String>,
    stores: Option<Vec<String>>,
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    checkpoint_every: Option<u64>,
}

/// A span of the object and the store it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Source {
    store: String,
    from: u64,
    to: u64,
}

/// A store passed over, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Skip {
    store: String,
    reason: String,
}

/// What is journaled to resume: the verified prefix and the history so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Checkpoint {
    key: String,
    offset: u64,
    sources: Vec<Source>,
    skipped: Vec<Skip>,
}

/// The `download` activity.
pub struct Download {
    services: Arc<Services>,
}

impl Download {
    /// The activity over these stores and keys.
    pub fn new(services: Arc<Services>) -> Self {
        Self { services }
    }
}

fn io_retry(what: &str, path: &Path, e: std::io::Error) -> ActivityError {
    ActivityError::retryable(format!("{what} {}: {e}", path.display()))
}

/// Feeds a file's first `len` bytes to a fresh verifier (to resume, or to re-check).
fn replay(path: &Path, len: u64, verifier: &mut Verifier) -> Result<(), ActivityError> {
    let mut file = std::fs::File::open(path).map_err(|e| io_retry("cannot read", path, e))?;
    let mut buf = vec![0u8; BUFFER];
    let mut left = len;
    while left > 0 {
        let want = (left as usize).min(buf.len());
        file.read_exact(&mut buf[..want])
            .map_err(|e| io_retry("cannot read", path, e))?;
        verifier.feed(&buf[..want]).map_err(|f| {
            ActivityError::retryable(format!(
                "the partial download no longer verifies: {}",
                f.reason
            ))
        })?;
        left -= want as u64;
    }
    Ok(())
}

/// Verifies a whole existing file.
fn verify_file(
    path: &Path,
    keys: &crate::crypto::Keyring,
    size: Option<u64>,
    sha256: Option<&str>,
) -> Option<Verified> {
    let len = std::fs::metadata(path).ok()?.len();
    let mut verifier = Verifier::new(keys.clone());
    replay(path, len, &mut verifier).ok()?;
    verifier.finish(size, sha256).ok()
}

/// Where the loop stands, reported in the output.
struct Progression {
    sources: Vec<Source>,
    skipped: Vec<Skip>,
}

impl Progression {
    fn served(&mut self, store: &str, from: u64, to: u64) {
        if to <= from {
            return;
        }
        match self.sources.last_mut() {
            Some(last) if last.store == store && last.to == from => last.to = to,
            _ => self.sources.push(Source {
                store: store.to_string(),
                from,
                to,
            }),
        }
    }

    fn skip(&mut self, store: &str, reason: String) {
        tracing::warn!(store, reason = %reason, "store passed over");
        self.skipped.push(Skip {
            store: store.to_string(),
            reason,
        });
    }
}

#[async_trait]
impl Activity for Download {
    fn spec(&self) -> &'static ActivitySpec {
        &SPEC
    }

    async fn discard(
        &self,
        _ctx: &ActivityContext,
        leftovers: Leftovers,
    ) -> Result<Discarded, ActivityError> {
        let inputs: Inputs = inputs::parse("download", leftovers.inputs)?;
        Ok(Discarded {
            removed: remove_output(&inputs.dest, leftovers.dry_run)?,
            ..Discarded::default()
        })
    }

    async fn run(&self, ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: Inputs = inputs::parse("download", inputs)?;
        let started = Instant::now();
        let keys = self
            .services
            .keys_for_verification()
            .map_err(|e| ActivityError::permanent(e.to_string()))?;
        let stores: StoreSet = match &inputs.stores {
            Some(names) => self
                .services
                .stores
                .only(names)
                .map_err(ActivityError::permanent)?,
            None => self.services.stores.clone(),
        };
        if stores.stores().is_empty() {
            return Err(ActivityError::permanent("no stores are configured"));
        }
        let dest = inputs.dest.clone();
        prepare_dir(&dest)?;

        let (found, passed) = stores.locate(&inputs.key).await;
        let mut progress = Progression {
            sources: Vec::new(),
            skipped: Vec::new(),
        };
        let Some((first, meta)) = found else {
            let all_missing = passed
                .iter()
                .all(|e| matches!(e, StorageError::NotFound { .. }));
            let reasons: Vec<String> = passed.iter().map(ToString::to_string).collect();
            let message = format!(
                "object {} is in no store ({})",
                inputs.key,
                reasons.join("; ")
            );
            return Err(if all_missing {
                ActivityError::permanent(message)
            } else {
                ActivityError::retryable(message)
            });
        };
        for e in passed {
            progress.skip(e.store(), e.to_string());
        }
        let total = inputs.size.unwrap_or(meta.size);
        let checkpoint_every = inputs
            .checkpoint_every
            .unwrap_or(CHECKPOINT_EVERY)
            .max(1 << 20);

        // Idempotent: a file already in place that is this object (the store's size, and
        // the manifest's checksum when given) and verifies is the answer.
        if std::fs::metadata(&dest).is_ok_and(|m| m.is_file() && m.len() == total) {
            if let Some(v) = verify_file(&dest, &keys, Some(total), inputs.sha256.as_deref()) {
                return Ok(json!({
                    "path": dest, "size": v.size, "sha256": v.sha256, "format": v.format,
                    "authenticated": v.authenticated, "served_by": null, "sources": [],
                    "skipped": [], "resumed_from": 0, "seconds": started.elapsed().as_secs_f64(),
                    "reused": true,
                }));
            }
            tracing::warn!(path = %dest.display(), "existing file does not verify; downloading again");
        }

        // Resume from the journaled, verified prefix if the partial file still holds it.
        let part = part_path(&dest);
        let mut verifier = Verifier::new(keys.clone());
        let mut offset = 0u64;
        if let Some(cp) = ctx.last_checkpoint::<Checkpoint>()
            && cp.key == inputs.key
            && std::fs::metadata(&part).is_ok_and(|m| m.len() >= cp.offset)
        {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&part)
                .map_err(|e| io_retry("cannot open", &part, e))?;
            file.set_len(cp.offset)
                .map_err(|e| io_retry("cannot truncate", &part, e))?;
            if replay(&part, cp.offset, &mut verifier).is_ok() {
                offset = cp.offset;
                progress.sources = cp.sources;
                progress.skipped = cp.skipped;
                tracing::info!(key = %inputs.key, offset, "resuming download");
            } else {
                verifier = Verifier::new(keys.clone());
            }
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&part)
            .map_err(|e| io_retry("cannot create", &part, e))?;
        file.set_len(offset)
            .map_err(|e| io_retry("cannot truncate", &part, e))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| io_retry("cannot seek in", &part, e))?;

        let order: Vec<Arc<dyn ObjectStore>> = stores.stores().to_vec();
        let start_at = order
            .iter()
            .position(|s| s.name() == first.name())
            .unwrap_or(0);
        let mut failures = vec![0u32; order.len()];
        // A copy whose whole-object check failed is bad everywhere; a damaged chunk only
        // rules its store out for that chunk: later chunks may still come from it.
        let mut bad = vec![false; order.len()];
        // Copies found damaged as a whole (a legacy token's HMAC, the manifest's checksum),
        // as opposed to stores that could not be read.
        let mut damaged = vec![false; order.len()];
        let mut bad_at: Vec<std::collections::BTreeSet<u64>> =
            vec![Default::default(); order.len()];
        let mut current = start_at;
        let resumed_from = offset;
        let mut last_checkpoint = offset;
        let mut buf = vec![0u8; BUFFER];
        let served_by;
        let verified: Verified;
        'stores: loop {
            // The next store still worth asking, starting with the current one.
            let Some(index) = (0..order.len())
                .map(|i| (current + i) % order.len())
                .find(|&i| {
                    !bad[i] && !bad_at[i].contains(&offset) && failures[i] < TRIES_PER_STORE
                })
            else {
                let reasons: Vec<String> = progress
                    .skipped
                    .iter()
                    .map(|s| format!("{}: {}", s.store, s.reason))
                    .collect();
                let integrity = (0..order.len()).all(|i| damaged[i] || bad_at[i].contains(&offset));
                let message = format!(
                    "no store could serve a good copy of {} ({})",
                    inputs.key,
                    reasons.join("; ")
                );
                drop(file);
                // Damaged in every store: no resume can fix it; another backup can.
                return Err(if integrity {
                    ActivityError::refused(format!(
                        "{message}; every copy fails there — damaged in every store, or encrypted with a key that is not configured: pick another backup (`lazarus backups` lists them) or configure its key"
                    ))
                } else {
                    ActivityError::retryable(message)
                });
            };
            current = index;
            let store = Arc::clone(&order[index]);
            let mut stream = match store.get(&inputs.key, offset, None).await {
                Ok(stream) => stream,
                Err(e) => {
                    match e {
                        StorageError::Transient { .. } => failures[index] += 1,
                        _ => bad[index] = true,
                    }
                    progress.skip(store.name(), format!("at byte {offset}: {e}"));
                    continue;
                }
            };
            let segment_start = offset;
            loop {
                let read = tokio::select! {
                    r = stream.read(&mut buf) => r,
                    _ = ctx.cancellation().cancelled() => {
                        progress.served(store.name(), segment_start, offset);
                        return Err(ActivityError::cancelled(format!("download stopped at byte {offset}")));
                    }
                };
                let n = match read {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        failures[index] += 1;
                        progress.served(store.name(), segment_start, offset);
                        progress.skip(
                            store.name(),
                            format!("connection failed at byte {offset}: {e}"),
                        );
                        continue 'stores;
                    }
                };
                if let Err(failure) = verifier.feed(&buf[..n]) {
                    // Bytes from restart_at on are bad: drop them, take them from elsewhere.
                    // Those before it in this buffer were verified: keep them.
                    if failure.restart_at > offset {
                        let good = ((failure.restart_at - offset) as usize).min(n);
                        file.write_all(&buf[..good])
                            .map_err(|e| io_retry("cannot write", &part, e))?;
                    }
                    progress.served(
                        store.name(),
                        segment_start,
                        failure.restart_at.max(segment_start),
                    );
                    progress.skip(store.name(), failure.reason.clone());
                    bad_at[index].insert(failure.restart_at);
                    offset = failure.restart_at;
                    file.set_len(offset)
                        .map_err(|e| io_retry("cannot truncate", &part, e))?;
                    file.seek(SeekFrom::Start(offset))
                        .map_err(|e| io_retry("cannot seek in", &part, e))?;
                    verifier = Verifier::new(keys.clone());
                    replay(&part, offset, &mut verifier)?;
                    continue 'stores;
                }
                file.write_all(&buf[..n])
                    .map_err(|e| io_retry("cannot write", &part, e))?;
                offset += n as u64;
                ctx.progress(Progress {
                    done: offset,
                    total: Some(total),
                    unit: "bytes".into(),
                    message: Some(format!("from {}", store.name())),
                });
                let safe = verifier.safe_offset();
                if safe >= last_checkpoint + checkpoint_every {
                    file.sync_data()
                        .map_err(|e| io_retry("cannot flush", &part, e))?;
                    let mut sources = progress.sources.clone();
                    let mut tmp = Progression {
                        sources: std::mem::take(&mut sources),
                        skipped: vec![],
                    };
                    tmp.served(store.name(), segment_start, safe);
                    ctx.checkpoint(&Checkpoint {
                        key: inputs.key.clone(),
                        offset: safe,
                        sources: tmp.sources,
                        skipped: progress.skipped.clone(),
                    })
                    .await?;
                    last_checkpoint = safe;
                }
            }
            progress.served(store.name(), segment_start, offset);
            if offset < total {
                failures[index] += 1;
                progress.skip(
                    store.name(),
                    format!("stream ended early at byte {offset} of {total}"),
                );
                continue;
            }
            let finished = std::mem::replace(&mut verifier, Verifier::new(keys.clone()))
                .finish(inputs.size.or(Some(total)), inputs.sha256.as_deref());
            match finished {
                Ok(v) => {
                    served_by = store.name().to_string();
                    verified = v;
                    break;
                }
                Err(failure) => {
                    // A whole-object check failed (a legacy token's HMAC, the manifest's
                    // checksum): every store that served these bytes has a bad copy.
                    for source in &progress.sources {
                        if let Some(i) = order.iter().position(|s| s.name() == source.store) {
                            bad[i] = true;
                            damaged[i] = true;
                        }
                    }
                    let served: Vec<String> =
                        progress.sources.iter().map(|s| s.store.clone()).collect();
                    for name in served {
                        progress.skip(
                            &name,
                            format!("copy failed verification: {}", failure.reason),
                        );
                    }
                    progress.sources.clear();
                    offset = failure.restart_at;
                    file.set_len(offset)
                        .map_err(|e| io_retry("cannot truncate", &part, e))?;
                    file.seek(SeekFrom::Start(offset))
                        .map_err(|e| io_retry("cannot seek in", &part, e))?;
                    replay(&part, offset, &mut verifier)?;
                    continue;
                }
            }
        }
        file.flush()
            .map_err(|e| io_retry("cannot write", &part, e))?;
        drop(file);
        commit(&part, &dest)?;
        Ok(json!({
            "path": dest,
            "size": verified.size,
            "sha256": verified.sha256,
            "format": verified.format,
            "authenticated": verified.authenticated,
            "served_by": served_by,
            "sources": progress.sources,
            "skipped": progress.skipped,
            "resumed_from": resumed_from,
            "seconds": started.elapsed().as_secs_f64(),
            "reused": false,
        }))
    }
}
