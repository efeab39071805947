//! Encryption: Fernet keys and rotation, binary tokens, the chunked format of new backups,
//! and streaming decryption of the seed's single-token files.

pub mod chunked;
pub mod keys;
pub mod legacy;
pub mod token;

pub use keys::{Key, Keyring};

/// An encryption or decryption failure, worded for the operator. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// No key is configured.
    #[error(
        "no encryption keys configured: set LAZARUS_KEYS (comma-separated Fernet keys) or `[keys] file` in lazarus.toml; `lazarus key generate` makes one"
    )]
    NoKeys,
    /// A key is malformed or its file unsafe.
    #[error("{0}")]
    BadKey(String),
    /// No configured key authenticates the data.
    #[error(
        "HMAC check failed with every configured key (ids {tried}){at}: the data was encrypted with another key, or it was altered"
    )]
    Authentication {
        /// Ids of the keys tried.
        tried: String,
        /// Where, if known (e.g. " at chunk 12").
        at: String,
    },
    /// The bytes are not in the expected format.
    #[error("not a valid encrypted backup: {0}")]
    Malformed(String),
    /// The data ends early.
    #[error("the backup is truncated: {0}")]
    Truncated(String),
    /// Reading or writing failed.
    #[error("{0}")]
    Io(String),
}

impl CryptoError {
    /// Names the chunk an authentication failure happened at.
    pub fn at_chunk(self, chunk: u64) -> CryptoError {
        match self {
            CryptoError::Authentication { tried, .. } => CryptoError::Authentication {
                tried,
                at: format!(" at chunk {chunk}"),
            },
            other => other,
        }
    }
}
