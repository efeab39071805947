//! Compare-and-swap on one small object: what a lease needs from a store.
//!
//! A write is conditioned on the object being absent (S3 `If-None-Match: *`) or still at
//! the version read (S3 `If-Match: ETAG`); the store refuses it otherwise, so two writers
//! racing from the same read cannot both win. Stores that cannot condition a write say so
//! with [`ConditionalError::Unsupported`] instead of silently writing.

use bytes::Bytes;

use super::StorageError;

/// What a conditional write requires of the object's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The object must not exist (an exclusive create).
    Absent,
    /// As [`Condition::Absent`], for a copy that can be made again: the store need not
    /// make the bytes durable before answering. A crash of the machine holding a local
    /// store can leave such an object torn or absent, so its reader treats one that does
    /// not decode as absent. S3 stores treat it as `Absent` (their writes are durable).
    AbsentCopy,
    /// The object must still be at this version (its ETag, as read).
    Matches(String),
}

/// An object's bytes with the version tag a later [`Condition::Matches`] names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The object's bytes.
    pub bytes: Bytes,
    /// Its version (an S3 ETag, or a local store's content hash).
    pub etag: String,
}

/// Why a conditional write did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionalError {
    /// The object was not in the state required: someone else wrote it first.
    #[error("{store}: {key} was changed by another writer (the conditional write was refused)")]
    Refused { store: String, key: String },
    /// The store does not condition writes (Backblaze B2 answers NotImplemented).
    #[error("{store} does not support conditional writes ({detail})")]
    Unsupported { store: String, detail: String },
    /// The store failed the way any write can.
    #[error(transparent)]
    Storage(#[from] StorageError),
}
