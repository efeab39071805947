//! What data-path activities need from the outside: the stores and the keys.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::catalog::Catalog;
use crate::crypto::{CryptoError, Keyring};
use crate::engine::ActivityError;
use crate::pg::{Server, Tools};
use crate::storage::StoreSet;
use crate::wal::catalog::WalCatalog;

/// The configured stores and keys, shared by the activities of one process.
#[derive(Default)]
pub struct Services {
    /// The stores in failover order.
    pub stores: StoreSet,
    keys_file: Option<PathBuf>,
    keyring: OnceLock<Result<Keyring, CryptoError>>,
    /// PostgreSQL's tools.
    pub pg_tools: Tools,
    /// The PostgreSQL server to back up and restore to.
    pub pg_server: Server,
    /// The configuration file in force (handed to processes PostgreSQL starts, such as
    /// restore_command), if there is one.
    pub config_file: Option<PathBuf>,
    catalog: OnceLock<Catalog>,
    wal_catalog: OnceLock<WalCatalog>,
    /// How long backups and WAL are kept (`[retention]`), if configured.
    pub retention: Option<crate::config::RetentionConfig>,
}

impl Services {
    /// Services over these stores, with keys from `LAZARUS_KEYS` or `keys_file`.
    pub fn new(stores: StoreSet, keys_file: Option<PathBuf>) -> Self {
        Self {
            stores,
            keys_file,
            ..Self::default()
        }
    }

    /// With the configuration file in force.
    pub fn with_config_file(mut self, file: Option<PathBuf>) -> Self {
        self.config_file = file;
        self
    }

    /// With this retention policy.
    pub fn with_retention(mut self, retention: Option<crate::config::RetentionConfig>) -> Self {
        self.retention = retention;
        self
    }

    /// With this PostgreSQL server and tools.
    pub fn with_postgres(mut self, tools: Tools, server: Server) -> Self {
        self.pg_tools = tools;
        self.pg_server = server;
        self
    }

    /// Attaches the backup catalog (done by the process that owns the state directory).
    pub fn attach_catalog(&self, catalog: Catalog) {
        let _ = self.catalog.set(catalog);
    }

    /// Attaches the WAL catalog (done by the process that owns the state directory).
    pub fn attach_wal_catalog(&self, catalog: WalCatalog) {
        let _ = self.wal_catalog.set(catalog);
    }

    /// The WAL catalog.
    pub fn wal_catalog(&self) -> Result<&WalCatalog, ActivityError> {
        self.wal_catalog.get().ok_or_else(|| {
            ActivityError::permanent(
                "the WAL catalog is only available to the process that owns the state directory",
            )
        })
    }

    /// The backup catalog.
    pub fn catalog(&self) -> Result<&Catalog, ActivityError> {
        self.catalog.get().ok_or_else(|| {
            ActivityError::permanent(
                "the backup catalog is only available to the process that owns the state directory",
            )
        })
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
