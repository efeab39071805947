//! Where backups live: one [`ObjectStore`] trait with a local-directory backend and an S3
//! backend (R2 and B2 are S3-compatible), and an ordered [`StoreSet`] that writes to every
//! store and reads with failover.
//!
//! Every store holds byte-identical copies (encrypt once, upload the same bytes), so a
//! download that fails on one store continues on the next at the same offset.

pub mod conditional;
pub mod local;
pub mod s3;
pub mod set;
pub mod verify;

use std::path::PathBuf;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncRead;

pub use conditional::{Condition, ConditionalError, Versioned};
pub use set::StoreSet;

/// A stream of object bytes.
pub type ByteStream = Pin<Box<dyn AsyncRead + Send>>;

/// What a listing or a head tells about an object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectMeta {
    /// The key, relative to the store's prefix.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, RFC 3339, when the store says.
    pub modified: Option<String>,
}

/// What to upload.
#[derive(Debug, Clone)]
pub enum Body {
    /// Bytes in memory (manifests, small objects).
    Bytes(Bytes),
    /// A file, streamed (multipart for large ones on S3).
    File(PathBuf),
    /// A finished file that nothing changes any more (an earlier step's output): a local
    /// store on the same filesystem links it under the object's name instead of writing it
    /// a second time.
    Finished(PathBuf),
}

/// How a storage operation failed; decides whether to retry, fail over or give up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The object is not in this store.
    #[error("{store}: {key} not found")]
    NotFound { store: String, key: String },
    /// Timeouts, 5xx, connection resets: worth another try, or the next store.
    #[error("{store}: {message}")]
    Transient { store: String, message: String },
    /// Access denied, bad bucket, bad request: another try will not help here.
    #[error("{store}: {message}")]
    Permanent { store: String, message: String },
}

impl StorageError {
    /// The store the error came from.
    pub fn store(&self) -> &str {
        match self {
            StorageError::NotFound { store, .. }
            | StorageError::Transient { store, .. }
            | StorageError::Permanent { store, .. } => store,
        }
    }

    /// Whether another attempt on the same store might succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StorageError::Transient { .. })
    }
}

/// One place backups are kept.
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// The configured name ("r2", "b2", "local").
    fn name(&self) -> &str;

    /// Where it is, for people; never holds credentials.
    fn describe(&self) -> String;

    /// The directory a local store keeps its objects in (`None` for remote stores): what
    /// a configuration written for another process must name.
    fn local_root(&self) -> Option<&std::path::Path> {
        None
    }

    /// Stores an object (atomically: readers see the old object or the whole new one).
    /// Returns the bytes written.
    async fn put(&self, key: &str, body: Body) -> Result<u64, StorageError>;

    /// Reads an object from `offset`, `len` bytes or to the end.
    async fn get(
        &self,
        key: &str,
        offset: u64,
        len: Option<u64>,
    ) -> Result<ByteStream, StorageError>;

    /// Size and time of an object, or `None` if absent.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError>;

    /// Objects whose keys start with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError>;

    /// Removes an object (absent is fine).
    async fn delete(&self, key: &str) -> Result<(), StorageError>;

    /// A small object's bytes and version, or `None` if absent: the read a
    /// [`ObjectStore::put_if`] is conditioned on.
    async fn read_versioned(&self, key: &str) -> Result<Option<Versioned>, StorageError>;

    /// Writes a small object only if it is in the state `condition` names; returns the
    /// new version. Stores that cannot condition a write answer
    /// [`ConditionalError::Unsupported`] and write nothing.
    async fn put_if(
        &self,
        key: &str,
        bytes: Bytes,
        condition: Condition,
    ) -> Result<String, ConditionalError>;
}

/// Checks a key before it becomes a path or a URL: relative, no `..`, no empty parts.
pub fn check_key(store: &str, key: &str) -> Result<(), StorageError> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
        || key.contains('\0');
    if bad {
        return Err(StorageError::Permanent {
            store: store.to_string(),
            message: format!(
                "invalid object key {key:?}: use relative paths without empty, '.' or '..' parts"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape_the_store() {
        for bad in ["", "/etc/passwd", "a/../b", "a//b", "./a", "a/"] {
            assert!(check_key("s", bad).is_err(), "{bad}");
        }
        assert!(check_key("s", "backups/shop/2026-11-24T01:00:00Z.dump.zst.lzr").is_ok());
    }
}
