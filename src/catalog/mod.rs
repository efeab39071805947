//! Backups and their verification status. The manifests in the stores are the truth; the
//! catalog (a tree in the state directory's sled store) is an index of them that
//! `lazarus catalog sync` rebuilds from any one store — the recovery host may be new.

use serde::{Deserialize, Serialize};

use crate::storage::{ObjectStore, StorageError, StoreSet};

pub mod choose;
pub mod expire;
pub mod preflight;
pub mod retention;

/// Manifest format written by this build.
pub const MANIFEST_VERSION: u32 = 1;

/// One table in a backup, with the planner's row estimate at backup time (-1: unknown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableInfo {
    /// Schema.
    pub schema: String,
    /// Table.
    pub name: String,
    /// `pg_class.reltuples` at backup time; -1 when never analysed.
    pub rows: i64,
}

/// The outcome of a verification drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// When the drill ended, RFC 3339.
    pub at: String,
    /// The drill run.
    pub run: String,
    /// Seconds to restore it (pg_restore).
    pub restore_seconds: Option<f64>,
    /// What was found wrong, if anything.
    pub error: Option<String>,
}

/// Everything known about a backup without its key: ids, sizes, checksums, times, tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub manifest_version: u32,
    /// Backup id, e.g. `shop-20261124T213500Z`.
    pub id: String,
    /// `logical` (pg_dump) — physical base backups come with point-in-time recovery.
    pub kind: String,
    /// The database dumped.
    pub database: String,
    /// `SHOW server_version` of the source.
    pub server_version: String,
    /// When the dump started (its data is as of about then), RFC 3339.
    pub created_at: String,
    /// When the backup file was complete, RFC 3339.
    pub finished_at: String,
    /// Object key of the backup file in every store.
    pub key: String,
    /// Size of the backup file.
    pub size: u64,
    /// SHA-256 of the backup file, hex.
    pub sha256: String,
    /// Bytes of plaintext (the pg_dump archive), when known.
    pub plaintext_size: Option<u64>,
    /// SHA-256 of the plaintext, when known.
    pub plaintext_sha256: Option<String>,
    /// `chunked` or `legacy_fernet`.
    pub format: String,
    /// `zstd` or `gzip`.
    pub compression: String,
    /// Id of the encrypting key (never the key).
    pub key_id: Option<String>,
    /// Tables with row estimates.
    pub tables: Vec<TableInfo>,
    /// `UNVERIFIED`, `VERIFIED` or `FAILED`.
    pub status: String,
    /// The latest drill, if any.
    pub verification: Option<Verification>,
    /// Stores the backup landed in when it was made.
    pub copies: Vec<String>,
    /// Configured stores it did not land in when it was made, each with why: a backup with
    /// fewer copies than asked for is one store failure from being lost.
    #[serde(default)]
    pub missing_copies: Vec<String>,
    /// For physical (base) backups: where they sit in the WAL.
    #[serde(default)]
    pub physical: Option<PhysicalInfo>,
    /// For logical backups: where each table's data sits in the pg_dump archive, so a
    /// restore can stream every table from its own chunks instead of writing the whole
    /// archive out first. Absent for archives that cannot be streamed (and older backups).
    #[serde(default)]
    pub data_blocks: Option<Vec<crate::pg::dump_blocks::DataBlock>>,
}

/// What a base backup is in WAL terms: the facts point-in-time planning needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhysicalInfo {
    /// The WAL archive of its cluster.
    pub archive: String,
    /// Timeline it was taken on.
    pub timeline: u32,
    /// Where replay must start (the checkpoint's redo point), e.g. `0/2000028`.
    pub start_lsn: String,
    /// Where the copy becomes consistent.
    pub stop_lsn: String,
    /// When it started, RFC 3339.
    pub start_time: String,
    /// When it became consistent, RFC 3339.
    pub stop_time: String,
    /// The cluster's system identifier.
    pub system_id: String,
    /// WAL segment size of the cluster.
    pub segment_size: u64,
}

/// Backup states.
pub mod status {
    /// Not yet restored by a drill.
    pub const UNVERIFIED: &str = "UNVERIFIED";
    /// A drill restored it and found it whole.
    pub const VERIFIED: &str = "VERIFIED";
    /// A drill could not restore it, or found it wrong.
    pub const FAILED: &str = "FAILED";
}

/// Where a backup's files live in the stores.
impl Manifest {
    /// Seconds since the backup finished, at `now` (`None` when its time does not parse).
    pub fn age_seconds(&self, now: chrono::DateTime<chrono::Utc>) -> Option<f64> {
        chrono::DateTime::parse_from_rfc3339(&self.finished_at)
            .ok()
            .map(|t| (now - t.with_timezone(&chrono::Utc)).num_milliseconds() as f64 / 1e3)
    }
}

/// The age in seconds of each database's newest backup, at `now`.
pub fn newest_age_per_database(
    manifests: &[Manifest],
    now: chrono::DateTime<chrono::Utc>,
) -> std::collections::BTreeMap<String, f64> {
    let mut newest = std::collections::BTreeMap::new();
    for m in manifests {
        if let Some(age) = m.age_seconds(now) {
            let slot = newest.entry(m.database.clone()).or_insert(f64::INFINITY);
            *slot = f64::min(*slot, age);
        }
    }
    newest
}

pub fn backup_key(database: &str, id: &str, suffix: &str) -> String {
    format!("backups/{database}/{id}{suffix}")
}

/// Where a backup's manifest lives in the stores.
pub fn manifest_key(database: &str, id: &str) -> String {
    format!("backups/{database}/{id}.manifest.json")
}

/// A catalog problem.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The sled tree failed.
    #[error("backup catalog: {0}")]
    Store(String),
    /// Reading manifests from storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A manifest does not parse.
    #[error("manifest {key} in store {store} does not parse: {message}")]
    BadManifest {
        /// The store.
        store: String,
        /// Its key.
        key: String,
        /// Why.
        message: String,
    },
}

/// The index of manifests, in the state directory's store.
#[derive(Clone)]
pub struct Catalog {
    tree: sled::Tree,
}

impl Catalog {
    /// A catalog over a sled tree.
    pub fn new(tree: sled::Tree) -> Self {
        Self { tree }
    }

    /// Records (or replaces) a manifest.
    pub fn put(&self, manifest: &Manifest) -> Result<(), CatalogError> {
        let bytes = serde_json::to_vec(manifest).map_err(|e| CatalogError::Store(e.to_string()))?;
        self.tree
            .insert(manifest.id.as_bytes(), bytes)
            .map_err(|e| CatalogError::Store(e.to_string()))?;
        self.tree
            .flush()
            .map_err(|e| CatalogError::Store(e.to_string()))?;
        Ok(())
    }

    /// Forgets a backup (its files are gone from the stores).
    pub fn remove(&self, id: &str) -> Result<(), CatalogError> {
        self.tree
            .remove(id.as_bytes())
            .map_err(|e| CatalogError::Store(e.to_string()))?;
        self.tree
            .flush()
            .map_err(|e| CatalogError::Store(e.to_string()))?;
        Ok(())
    }

    /// The manifest of a backup.
    pub fn get(&self, id: &str) -> Result<Option<Manifest>, CatalogError> {
        self.tree
            .get(id.as_bytes())
            .map_err(|e| CatalogError::Store(e.to_string()))?
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| CatalogError::Store(e.to_string()))
            })
            .transpose()
    }

    /// All manifests (of one database), oldest first.
    pub fn list(&self, database: Option<&str>) -> Result<Vec<Manifest>, CatalogError> {
        let mut all = Vec::new();
        for entry in self.tree.iter() {
            let (_, bytes) = entry.map_err(|e| CatalogError::Store(e.to_string()))?;
            let manifest: Manifest =
                serde_json::from_slice(&bytes).map_err(|e| CatalogError::Store(e.to_string()))?;
            if database.is_none_or(|d| d == manifest.database) {
                all.push(manifest);
            }
        }
        all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(all)
    }

    /// All manifests (of one database), oldest first, rebuilt from the stores first when
    /// the catalog is empty (a new host).
    pub async fn list_or_sync(
        &self,
        stores: &StoreSet,
        database: Option<&str>,
    ) -> Result<Vec<Manifest>, CatalogError> {
        if self.is_empty() {
            self.sync(stores).await.map_err(|e| {
                CatalogError::Store(format!(
                    "the catalog is empty and could not be rebuilt from the stores: {e}"
                ))
            })?;
        }
        self.list(database)
    }

    /// Whether the catalog holds nothing.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// Replaces the whole index with the manifests found in `store`.
    pub async fn sync_from(&self, store: &dyn ObjectStore) -> Result<usize, CatalogError> {
        let manifests = read_manifests(store).await?;
        self.tree
            .clear()
            .map_err(|e| CatalogError::Store(e.to_string()))?;
        for manifest in &manifests {
            self.put(manifest)?;
        }
        Ok(manifests.len())
    }

    /// Syncs from the first store that can be listed; returns it and the count.
    pub async fn sync(&self, stores: &StoreSet) -> Result<(String, usize), CatalogError> {
        let mut last = None;
        for store in stores.stores() {
            match self.sync_from(store.as_ref()).await {
                Ok(n) => return Ok((store.name().to_string(), n)),
                Err(CatalogError::Storage(e)) => {
                    tracing::warn!(store = store.name(), error = %e, "cannot read manifests; trying the next store");
                    last = Some(CatalogError::Storage(e));
                }
                Err(other) => return Err(other),
            }
        }
        Err(last.unwrap_or_else(|| CatalogError::Store("no stores are configured".into())))
    }
}

/// Every manifest in a store.
pub async fn read_manifests(store: &dyn ObjectStore) -> Result<Vec<Manifest>, CatalogError> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    for object in store.list("backups/").await? {
        if !object.key.ends_with(".manifest.json") {
            continue;
        }
        let mut bytes = Vec::new();
        store
            .get(&object.key, 0, None)
            .await?
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| StorageError::Transient {
                store: store.name().to_string(),
                message: format!("reading {}: {e}", object.key),
            })?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| CatalogError::BadManifest {
                store: store.name().to_string(),
                key: object.key.clone(),
                message: e.to_string(),
            })?;
        out.push(manifest);
    }
    Ok(out)
}

/// A new backup id for a database at a time: `DB-YYYYMMDDTHHMMSSZ`.
pub fn new_backup_id(database: &str, at: chrono::DateTime<chrono::Utc>) -> String {
    format!("{database}-{}", at.format("%Y%m%dT%H%M%SZ"))
}
