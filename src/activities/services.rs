//! What data-path activities need from the outside: the stores and the keys.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::crypto::{CryptoError, Keyring};
use crate::storage::StoreSet;

/// The configured stores and keys, shared by the activities of one process.
#[derive(Default)]
pub struct Services {
    /// The stores in failover order.
    pub stores: StoreSet,
    keys_file: Option<PathBuf>,
    keyring: OnceLock<Result<Keyring, CryptoError>>,
}

impl Services {
    /// Services over these stores, with keys from `LAZARUS_KEYS` or `keys_file`.
    pub fn new(stores: StoreSet, keys_file: Option<PathBuf>) -> Self {
        Self {
            stores,
            keys_file,
            keyring: OnceLock::new(),
        }
    }

    /// The keys, loaded on first use; an error if none are configured or they are unusable.
    pub fn keys(&self) -> Result<Keyring, CryptoError> {
        let loaded = self
            .keyring
            .get_or_init(|| Keyring::load(self.keys_file.as_deref()));
        match loaded {
            Ok(ring) if ring.is_empty() => Err(CryptoError::NoKeys),
            Ok(ring) => Ok(ring.clone()),
            Err(e) => Err(e.clone()),
        }
    }

    /// The keys for verification: none is fine (checks fall back to checksums), bad ones
    /// are an error.
    pub fn keys_for_verification(&self) -> Result<Keyring, CryptoError> {
        match self.keys() {
            Ok(ring) => Ok(ring),
            Err(CryptoError::NoKeys) => Ok(Keyring::default()),
            Err(e) => Err(e),
        }
    }
}
