//! Before a recovery downloads anything: which store holds a good copy of the backup. Every
//! store is an equal source — a copy that is missing, the wrong size, or whose authenticated
//! index does not check out is passed over with its reason, and the next store is tried, just
//! as the download fails over.

use std::fmt;
use std::sync::Arc;

use tokio::io::AsyncReadExt;

use super::Manifest;
use crate::crypto::chunked::{self, FRAME_PREFIX, TRAILER_LEN, Trailer};
use crate::crypto::{CryptoError, Keyring};
use crate::storage::{ObjectStore, StorageError, StoreSet};

/// Why one store's copy cannot serve the recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyProblem {
    /// The store does not have the object.
    Missing,
    /// The store could not be read (down, timing out, access denied).
    Unreachable(String),
    /// The object is not the size its manifest records (cut short, or replaced).
    WrongSize {
        /// Bytes in the store.
        found: u64,
        /// Bytes in the manifest.
        expected: u64,
    },
    /// The copy is damaged or was altered: its trailer or authenticated index is wrong.
    Damaged(String),
}

impl fmt::Display for CopyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CopyProblem::Missing => f.write_str("not there"),
            CopyProblem::Unreachable(why) => write!(f, "cannot be read: {why}"),
            CopyProblem::WrongSize { found, expected } => write!(
                f,
                "is {found} bytes, its manifest says {expected} (cut short or replaced)"
            ),
            CopyProblem::Damaged(why) => write!(f, "is damaged: {why}"),
        }
    }
}

/// One store's copy that was passed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCopy {
    /// The store.
    pub store: String,
    /// What is wrong with its copy.
    pub problem: CopyProblem,
}

impl fmt::Display for BadCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store {}: the copy {}", self.store, self.problem)
    }
}

/// The store that will serve the download, and what was wrong with the ones before it.
#[derive(Clone)]
pub struct GoodCopy {
    /// The first store whose copy checked out.
    pub store: Arc<dyn ObjectStore>,
    /// The key that decrypts it, when the format names one.
    pub key_id: Option<String>,
    /// Stores tried first whose copies cannot serve, in order.
    pub passed_over: Vec<BadCopy>,
}

/// No store can serve the backup.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PreflightError {
    /// The backup's key is not configured: no copy can be read.
    #[error(
        "backup {id} was encrypted with key {key_id}, which is not configured (configured: {configured}); add that key to LAZARUS_KEYS or the [keys] file, or pick a backup made with a configured key"
    )]
    UnknownKey {
        /// The backup.
        id: String,
        /// The key that encrypted it.
        key_id: String,
        /// The ids configured here.
        configured: String,
    },
    /// Every store was tried and none has a good copy.
    #[error("no store has a good copy of backup {id}: {}; {}", list(.copies), advice(.copies))]
    NoGoodCopy {
        /// The backup.
        id: String,
        /// Each store's problem, in store order.
        copies: Vec<BadCopy>,
    },
}

fn list(copies: &[BadCopy]) -> String {
    if copies.is_empty() {
        return "no stores are configured".into();
    }
    copies
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn advice(copies: &[BadCopy]) -> &'static str {
    if copies
        .iter()
        .any(|c| matches!(c.problem, CopyProblem::Unreachable(_)))
    {
        "once the store that cannot be read is back, `lazarus resume` tries again"
    } else {
        "pick another backup (`lazarus backups` lists them; `recover --backup ID`)"
    }
}

impl PreflightError {
    /// Whether a later attempt could succeed without a new run: some store could not be
    /// read, and may hold a good copy once it can.
    pub fn resume_can_help(&self) -> bool {
        match self {
            PreflightError::UnknownKey { .. } => false,
            PreflightError::NoGoodCopy { copies, .. } => copies
                .iter()
                .any(|c| matches!(c.problem, CopyProblem::Unreachable(_))),
        }
    }
}

async fn read_range(
    store: &dyn ObjectStore,
    key: &str,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, CopyProblem> {
    let mut bytes = Vec::with_capacity(len as usize);
    let mut body = store
        .get(key, offset, Some(len))
        .await
        .map_err(|e| match e {
            StorageError::NotFound { .. } => CopyProblem::Missing,
            other => CopyProblem::Unreachable(other.to_string()),
        })?;
    body.read_to_end(&mut bytes).await.map_err(|e| {
        CopyProblem::Unreachable(format!(
            "reading bytes {offset}..{} of {key}: {e}",
            offset + len
        ))
    })?;
    Ok(bytes)
}

/// Checks one store's copy: its size, and for the chunked format its trailer and the
/// authenticated index (a ranged read of the file's end, a few KiB); the key that reads it.
async fn check_copy(
    store: &dyn ObjectStore,
    manifest: &Manifest,
    keys: &Keyring,
) -> Result<Option<String>, CopyProblem> {
    let meta = match store.head(&manifest.key).await {
        Ok(Some(meta)) => meta,
        Ok(None) | Err(StorageError::NotFound { .. }) => return Err(CopyProblem::Missing),
        Err(e) => return Err(CopyProblem::Unreachable(e.to_string())),
    };
    if meta.size != manifest.size {
        return Err(CopyProblem::WrongSize {
            found: meta.size,
            expected: manifest.size,
        });
    }
    if manifest.format != "chunked" {
        return Ok(manifest.key_id.clone());
    }
    let tail = read_range(
        store,
        &manifest.key,
        meta.size.saturating_sub(TRAILER_LEN as u64),
        TRAILER_LEN as u64,
    )
    .await?;
    let trailer = Trailer::decode(&tail).map_err(|e| CopyProblem::Damaged(e.to_string()))?;
    let frame_len = FRAME_PREFIX as u64 + u64::from(trailer.index_len);
    if trailer
        .index_offset
        .checked_add(frame_len)
        .is_none_or(|end| end > meta.size)
    {
        return Err(CopyProblem::Damaged(
            "its trailer points past the end of the file".into(),
        ));
    }
    let frame = read_range(store, &manifest.key, trailer.index_offset, frame_len).await?;
    let index = chunked::decode_index(&frame, &trailer, keys).map_err(|e| match e {
        CryptoError::Authentication { .. } => CopyProblem::Damaged(format!(
            "its index fails the HMAC check with key {} (the copy was altered or damaged in this store)",
            trailer.key_id
        )),
        other => CopyProblem::Damaged(other.to_string()),
    })?;
    if manifest
        .plaintext_sha256
        .as_deref()
        .is_some_and(|h| h != hex::encode(index.plaintext_sha256))
    {
        return Err(CopyProblem::Damaged(
            "its authenticated index does not match the manifest (a different backup under this name?)".into(),
        ));
    }
    Ok(Some(trailer.key_id))
}

/// Finds the first store, in failover order, whose copy of the backup checks out; the
/// stores passed over on the way are named with their problem.
pub async fn find_good_copy(
    stores: &StoreSet,
    manifest: &Manifest,
    keys: &Keyring,
) -> Result<GoodCopy, PreflightError> {
    if let Some(key_id) = manifest.key_id.as_deref()
        && manifest.format == "chunked"
        && keys.by_id(key_id).is_none()
    {
        return Err(PreflightError::UnknownKey {
            id: manifest.id.clone(),
            key_id: key_id.to_string(),
            configured: keys.ids().join(", "),
        });
    }
    let mut passed_over = Vec::new();
    for store in stores.stores() {
        match check_copy(store.as_ref(), manifest, keys).await {
            Ok(key_id) => {
                return Ok(GoodCopy {
                    store: Arc::clone(store),
                    key_id,
                    passed_over,
                });
            }
            Err(problem) => {
                tracing::warn!(store = store.name(), backup = %manifest.id, %problem, "passing over this store's copy");
                passed_over.push(BadCopy {
                    store: store.name().to_string(),
                    problem,
                });
            }
        }
    }
    Err(PreflightError::NoGoodCopy {
        id: manifest.id.clone(),
        copies: passed_over,
    })
}
