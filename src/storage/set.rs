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
    /// A finished file is linked into at most one store (the first local one): every other
    /// store gets a copy of its own, so damage to one store's copy is never another's.
    pub async fn put_all(&self, key: &str, body: Body) -> Vec<CopyOutcome> {
        let linker = match &body {
            Body::Finished(_) => self.stores.iter().position(|s| s.local_root().is_some()),
            _ => None,
        };
        let puts = self.stores.iter().enumerate().map(|(i, store)| {
            let body = match &body {
                Body::Finished(path) if Some(i) != linker => Body::File(path.clone()),
                other => other.clone(),
            };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::local::LocalStore;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn two_local_stores_on_one_filesystem_hold_two_copies() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("backup.lzr");
        std::fs::write(&src, b"finished bytes").unwrap();
        let set = StoreSet::new(vec![
            Arc::new(LocalStore::new("one", dir.path().join("one"))),
            Arc::new(LocalStore::new("two", dir.path().join("two"))),
        ]);
        let copies = set.put_all("b/x", Body::Finished(src.clone())).await;
        assert!(copies.iter().all(|c| c.bytes == Some(14)), "{copies:?}");
        let ino = |p: std::path::PathBuf| std::fs::metadata(p).unwrap().ino();
        let (one, two) = (
            ino(dir.path().join("one/b/x")),
            ino(dir.path().join("two/b/x")),
        );
        assert_eq!(
            one,
            ino(src),
            "the first local store links the finished file"
        );
        assert_ne!(one, two, "the second store has a copy of its own");
        // Damage in place in the first store leaves the second intact.
        std::fs::write(dir.path().join("one/b/x"), b"damaged").unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("two/b/x")).unwrap(),
            b"finished bytes"
        );
    }
}
