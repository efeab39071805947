//! A store in a local directory: the last resort after R2 and B2, and the embedded default
//! (`state/store`).

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::io::AsyncReadExt;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{
    Body, ByteStream, Condition, ConditionalError, ObjectMeta, ObjectStore, StorageError,
    Versioned, check_key,
};

/// Objects as files under a root directory; keys are relative paths.
pub struct LocalStore {
    name: String,
    root: PathBuf,
}

impl LocalStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(name: impl Into<String>, root: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            root: root.into(),
        }
    }

    fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        check_key(&self.name, key)?;
        Ok(self.root.join(key))
    }

    fn err(&self, what: &str, path: &Path, e: std::io::Error) -> StorageError {
        let message = format!("{what} {}: {e}", path.display());
        match e.kind() {
            std::io::ErrorKind::PermissionDenied => StorageError::Permanent {
                store: self.name.clone(),
                message,
            },
            _ => StorageError::Transient {
                store: self.name.clone(),
                message,
            },
        }
    }
}

/// Creates `dir` and its missing parents. Run as root, each new directory gets the owner of
/// the nearest directory that existed: a store shared with the PostgreSQL user (whose
/// `archive_command` writes WAL there) stays writable by it after root wrote the first
/// object of a new subtree (an audit entry, a manifest).
fn create_dirs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut existing = dir;
    while !existing.as_os_str().is_empty() && !existing.exists() {
        missing.push(existing.to_path_buf());
        existing = existing.parent().unwrap_or(Path::new(""));
    }
    std::fs::create_dir_all(dir)?;
    if nix::unistd::geteuid().is_root() {
        let base = if existing.as_os_str().is_empty() {
            Path::new(".")
        } else {
            existing
        };
        let owner = std::fs::metadata(base)?;
        for created in missing {
            let _ = std::os::unix::fs::chown(&created, Some(owner.uid()), Some(owner.gid()));
        }
    }
    Ok(())
}

fn write_atomically(target: &Path, body: &Body) -> std::io::Result<u64> {
    let dir = target.parent().unwrap_or(Path::new("."));
    create_dirs(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        target
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let written = match body {
        Body::Bytes(bytes) => {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            bytes.len() as u64
        }
        Body::File(source) => {
            let n = std::fs::copy(source, &tmp)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            n
        }
        Body::Finished(source) => {
            let _ = std::fs::remove_file(&tmp);
            // On the same filesystem the object is the finished file itself under a second
            // name: no second full write and flush (a backup's upload would otherwise copy
            // all of it again). Elsewhere (another filesystem), a copy.
            match std::fs::hard_link(source, &tmp) {
                Ok(()) => {
                    let f = std::fs::File::open(&tmp)?;
                    f.sync_all()?;
                    f.metadata()?.len()
                }
                Err(_) => {
                    let n = std::fs::copy(source, &tmp)?;
                    std::fs::File::open(&tmp)?.sync_all()?;
                    n
                }
            }
        }
    };
    std::fs::rename(&tmp, target)?;
    // The rename is durable once the directory is.
    std::fs::File::open(dir)?.sync_all()?;
    Ok(written)
}

/// A local object's version: a hash of its bytes (two writes of the same bytes are the same
/// version, which is all a compare-and-swap needs).
fn content_tag(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..16])
}

/// Writes `bytes` to `target` if its current state meets `condition`. A replace holds an
/// exclusive lock on a hidden lock file beside it for the check and the rename: every
/// conditional writer on this filesystem takes the same lock, and the kernel drops it if
/// its process dies. An exclusive create needs no lock (see [`create_exclusive`]).
fn write_if(
    target: &Path,
    bytes: &[u8],
    condition: &Condition,
) -> std::io::Result<Result<String, ()>> {
    let dir = target.parent().unwrap_or(Path::new("."));
    create_dirs(dir)?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match condition {
        Condition::Absent => return create_exclusive(dir, &name, target, bytes, true),
        Condition::AbsentCopy => return create_exclusive(dir, &name, target, bytes, false),
        Condition::Matches(_) => {}
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(format!(".{name}.lock")))?;
    lock.lock()?;
    let current = match std::fs::read(target) {
        Ok(found) => Some(content_tag(&found)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let met = match condition {
        Condition::Absent | Condition::AbsentCopy => current.is_none(),
        Condition::Matches(tag) => current.as_deref() == Some(tag.as_str()),
    };
    if !met {
        return Ok(Err(()));
    }
    write_atomically(target, &Body::Bytes(Bytes::copy_from_slice(bytes)))?;
    Ok(Ok(content_tag(bytes)))
}

/// Creates `target` only if it does not exist: the bytes go to a new hidden file, made
/// durable when `synced`, then linked under the object's name (`link` fails if the name is
/// taken, in one step). The directory is not synced: a create lost in a crash is an object
/// that is not there, which every caller (a lease taken again, a journal batch copied
/// again) handles; a synced name that survived always has its whole bytes behind it. An
/// unsynced one (a copy, see [`Condition::AbsentCopy`]) may be torn by a machine crash,
/// never by a process's death: the kernel holds its bytes before the link names them.
fn create_exclusive(
    dir: &Path,
    name: &str,
    target: &Path,
    bytes: &[u8],
    synced: bool,
) -> std::io::Result<Result<String, ()>> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{name}.new-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if synced {
            f.sync_data()?;
        }
        std::fs::hard_link(&tmp, target)
    })();
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => Ok(Ok(content_tag(bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Err(())),
        Err(e) => Err(e),
    }
}

fn walk(root: &Path, dir: &Path, prefix: &str, out: &mut Vec<ObjectMeta>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            walk(root, &path, prefix, out)?;
        } else if file_type.is_file() {
            let key = path
                .strip_prefix(root)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            if key.starts_with(prefix) {
                let meta = entry.metadata()?;
                out.push(ObjectMeta {
                    key,
                    size: meta.len(),
                    modified: meta.modified().ok().map(|t| {
                        chrono::DateTime::<chrono::Utc>::from(t)
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    }),
                });
            }
        }
    }
    Ok(())
}

#[async_trait]
impl ObjectStore for LocalStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn describe(&self) -> String {
        format!("local directory {}", self.root.display())
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }

    async fn put(&self, key: &str, body: Body) -> Result<u64, StorageError> {
        let path = self.path(key)?;
        let target = path.clone();
        let written = tokio::task::spawn_blocking(move || write_atomically(&target, &body))
            .await
            .map_err(|e| StorageError::Transient {
                store: self.name.clone(),
                message: format!("writer task failed: {e}"),
            })?;
        written.map_err(|e| self.err("cannot write", &path, e))
    }

    async fn get(
        &self,
        key: &str,
        offset: u64,
        len: Option<u64>,
    ) -> Result<ByteStream, StorageError> {
        let path = self.path(key)?;
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::NotFound {
                    store: self.name.clone(),
                    key: key.to_string(),
                });
            }
            Err(e) => return Err(self.err("cannot open", &path, e)),
        };
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| self.err("cannot seek in", &path, e))?;
        let file = tokio::fs::File::from_std(file);
        Ok(match len {
            Some(n) => Box::pin(file.take(n)),
            None => Box::pin(file),
        })
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let path = self.path(key)?;
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: meta.len(),
                modified: meta.modified().ok().map(|t| {
                    chrono::DateTime::<chrono::Utc>::from(t)
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                }),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err("cannot stat", &path, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let mut out = Vec::new();
        walk(&self.root, &self.root, prefix, &mut out)
            .map_err(|e| self.err("cannot list", &self.root, e))?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path(key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err("cannot delete", &path, e)),
        }
    }

    async fn read_versioned(&self, key: &str) -> Result<Option<Versioned>, StorageError> {
        let path = self.path(key)?;
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(Versioned {
                etag: content_tag(&bytes),
                bytes: Bytes::from(bytes),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err("cannot read", &path, e)),
        }
    }

    async fn put_if(
        &self,
        key: &str,
        bytes: Bytes,
        condition: Condition,
    ) -> Result<String, ConditionalError> {
        let path = self.path(key)?;
        let target = path.clone();
        let written = tokio::task::spawn_blocking(move || write_if(&target, &bytes, &condition))
            .await
            .map_err(|e| StorageError::Transient {
                store: self.name.clone(),
                message: format!("writer task failed: {e}"),
            })?;
        match written.map_err(|e| self.err("cannot write", &path, e))? {
            Ok(tag) => Ok(tag),
            Err(()) => Err(ConditionalError::Refused {
                store: self.name.clone(),
                key: key.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn new_directories_take_the_owner_of_the_directory_they_are_made_in() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        // Run as root, the shared directory belongs to another user (as a store the
        // PostgreSQL user archives into does); otherwise it is ours.
        let other = nix::unistd::geteuid().is_root().then_some(65534u32);
        if let Some(uid) = other {
            std::os::unix::fs::chown(&shared, Some(uid), Some(uid)).unwrap();
        }
        let store = LocalStore::new("local", shared.join("store"));
        store
            .put(
                "audit/000000000001.json",
                Body::Bytes(Bytes::from_static(b"{}")),
            )
            .await
            .unwrap();
        let expected = other.unwrap_or_else(|| nix::unistd::geteuid().as_raw());
        for created in ["store", "store/audit"] {
            let meta = std::fs::metadata(shared.join(created)).unwrap();
            assert_eq!(meta.uid(), expected, "{created}");
        }
    }

    #[tokio::test]
    async fn a_finished_file_is_linked_not_written_again_and_any_other_file_is_copied() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new("local", dir.path().join("store"));
        let src = dir.path().join("backup.lzr");
        std::fs::write(&src, b"finished bytes").unwrap();
        store
            .put("b/linked", Body::Finished(src.clone()))
            .await
            .unwrap();
        store
            .put("b/copied", Body::File(src.clone()))
            .await
            .unwrap();
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let linked = dir.path().join("store/b/linked");
        let copied = dir.path().join("store/b/copied");
        assert_eq!(ino(&linked), ino(&src), "one write for both names");
        assert_ne!(ino(&copied), ino(&src));
        // The work name goes after the upload; the object stays whole.
        std::fs::remove_file(&src).unwrap();
        assert_eq!(std::fs::read(&linked).unwrap(), b"finished bytes");
        assert_eq!(std::fs::read(&copied).unwrap(), b"finished bytes");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_writers_racing_from_one_read_exactly_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(LocalStore::new("local", dir.path()));
        for round in 0..20 {
            let key = format!("runs/r{round}/lease");
            let race = |condition: Condition, body: &'static str| {
                let (store, key) = (store.clone(), key.clone());
                tokio::spawn(async move { store.put_if(&key, Bytes::from(body), condition).await })
            };
            let (a, b) = (race(Condition::Absent, "a"), race(Condition::Absent, "b"));
            let created = [a.await.unwrap(), b.await.unwrap()];
            assert_eq!(
                created.iter().filter(|r| r.is_ok()).count(),
                1,
                "{created:?}"
            );
            let read = store.read_versioned(&key).await.unwrap().unwrap();
            let tag = Condition::Matches(read.etag.clone());
            let (a, b) = (race(tag.clone(), "c"), race(tag, "d"));
            let replaced = [a.await.unwrap(), b.await.unwrap()];
            assert_eq!(
                replaced.iter().filter(|r| r.is_ok()).count(),
                1,
                "{replaced:?}"
            );
            assert!(matches!(
                replaced.iter().find(|r| r.is_err()),
                Some(Err(ConditionalError::Refused { .. }))
            ));
        }
        // The lock files stay hidden from listings.
        assert!(
            store
                .list("runs/")
                .await
                .unwrap()
                .iter()
                .all(|m| m.key.ends_with("/lease"))
        );
    }

    #[tokio::test]
    async fn put_get_ranges_list_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new("local", dir.path().join("store"));
        store
            .put("a/one", Body::Bytes(Bytes::from_static(b"0123456789")))
            .await
            .unwrap();
        store
            .put("a/two", Body::Bytes(Bytes::from_static(b"xy")))
            .await
            .unwrap();
        store
            .put("b/three", Body::Bytes(Bytes::from_static(b"z")))
            .await
            .unwrap();
        let mut part = String::new();
        store
            .get("a/one", 3, Some(4))
            .await
            .unwrap()
            .read_to_string(&mut part)
            .await
            .unwrap();
        assert_eq!(part, "3456");
        let mut rest = String::new();
        store
            .get("a/one", 8, None)
            .await
            .unwrap()
            .read_to_string(&mut rest)
            .await
            .unwrap();
        assert_eq!(rest, "89");
        let keys: Vec<String> = store
            .list("a/")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, ["a/one", "a/two"]);
        assert_eq!(store.head("a/one").await.unwrap().unwrap().size, 10);
        store.delete("a/one").await.unwrap();
        assert!(store.head("a/one").await.unwrap().is_none());
        assert!(matches!(
            store.get("a/one", 0, None).await,
            Err(StorageError::NotFound { .. })
        ));
        assert!(store.get("../x", 0, None).await.is_err());
    }
}
