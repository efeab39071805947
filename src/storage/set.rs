//! The ordered list of stores: writes go to every store, reads try them in order.

use std::sync::Arc;

use serde::Serialize;

use super::{Body, ObjectMeta, ObjectStore, StorageError};

/// Where one copy of an upload landed, or why it did not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyOutcome {
    /// The store.
    pub store: String,
    /// Bytes written, if it landed.
    pub bytes: Option<u64>,
    /// Why not, if it did not.
    pub error: Option<String>,
}

/// The stores in failover order (e.g. R2, then B2, then a local directory).
#[derive(Clone, Default)]
pub struct StoreSet {
    stores: Vec<Arc<dyn ObjectStore>>,
}

impl StoreSet {
    /// A set of stores, in the order reads try them.
    pub fn new(stores: Vec<Arc<dyn ObjectStore>>) -> Self {
        Self { stores }
    }

    /// The stores in order.
    pub fn stores(&self) -> &[Arc<dyn ObjectStore>] {
        &self.stores
    }

    /// Names, in order.
    pub fn names(&self) -> Vec<String> {
        self.stores.iter().map(|s| s.name().to_string()).collect()
    }

    /// The store called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn ObjectStore>> {
        self.stores.iter().find(|s| s.name() == name)
    }

    /// The subset named, in the order given; an unknown name is an error naming the known.
    pub fn only(&self, names: &[String]) -> Result<StoreSet, String> {
        let mut picked = Vec::new();
        for name in names {
            match self.get(name) {
                Some(store) => picked.push(Arc::clone(store)),
                None => {
                    return Err(format!(
                        "no store named \"{name}\"; configured stores: {}",
                        self.names().join(", ")
                    ));
                }
            }
        }
        Ok(StoreSet::new(picked))
    }

    /// Writes the same bytes to every store, concurrently; says where each copy landed.
    pub async fn put_all(&self, key: &str, body: Body) -> Vec<CopyOutcome> {
        let puts = self.stores.iter().map(|store| {
            let body = body.clone();
            async move {
                match store.put(key, body).await {
                    Ok(bytes) => CopyOutcome {
                        store: store.name().to_string(),
                        bytes: Some(bytes),
                        error: None,
                    },
                    Err(e) => CopyOutcome {
                        store: store.name().to_string(),
                        bytes: None,
                        error: Some(e.to_string()),
                    },
                }
            }
        });
        futures::future::join_all(puts).await
    }

    /// The first store that has `key`, with its size; and why earlier stores were passed over.
    pub async fn locate(
        &self,
        key: &str,
    ) -> (
        Option<(Arc<dyn ObjectStore>, ObjectMeta)>,
        Vec<StorageError>,
    ) {
        let mut skipped = Vec::new();
        for store in &self.stores {
            match store.head(key).await {
                Ok(Some(meta)) => return (Some((Arc::clone(store), meta)), skipped),
                Ok(None) => skipped.push(StorageError::NotFound {
                    store: store.name().to_string(),
                    key: key.to_string(),
                }),
                Err(e) => skipped.push(e),
            }
        }
        (None, skipped)
    }
}
