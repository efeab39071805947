//! The WAL archive: `wal push` (PostgreSQL's `archive_command`) stores each segment, history
//! and backup-label file compressed and encrypted in every store, with a manifest beside it
//! that needs no key to read; `wal fetch` (`restore_command`) brings one back with failover.
//!
//! Push is a short process per file: it never touches the state directory, and it is safe
//! to re-run (the same content is success, different content is refused).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::names::{HistoryEntry, Lsn, SegmentName, parse_history};
use super::reader::{ScanOptions, scan_segment};
use crate::codec::Compression;
use crate::crypto::chunked::{self, EncodeOptions};
use crate::crypto::{CryptoError, Key, Keyring};
use crate::storage::{Body, ObjectStore, StorageError, StoreSet};

/// Manifest format written by this build.
pub const WAL_MANIFEST_VERSION: u32 = 1;
/// Suffix of stored (compressed, encrypted) files.
pub const OBJECT_SUFFIX: &str = ".lzr";
/// Suffix of manifests.
pub const MANIFEST_SUFFIX: &str = ".json";

/// The kinds of files PostgreSQL archives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// A WAL segment.
    Segment,
    /// The last, partial segment of a timeline that was branched off.
    Partial,
    /// A timeline history file.
    History,
    /// A backup history (label) file.
    BackupLabel,
}

/// Everything known about one archived file, without its key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WalManifest {
    /// Manifest format version.
    pub manifest_version: u32,
    /// What it is.
    pub kind: FileKind,
    /// The file name PostgreSQL uses.
    pub file: String,
    /// The archive (one per cluster) it belongs to.
    pub archive: String,
    /// Timeline.
    pub timeline: u32,
    /// Segment number (segments and partials).
    pub segno: Option<u64>,
    /// Segment size (segments and partials).
    pub segment_size: Option<u64>,
    /// First byte of the segment.
    pub start_lsn: Option<String>,
    /// End of the last record decoded in it.
    pub end_lsn: Option<String>,
    /// Bytes of the file.
    pub size: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// Bytes stored (compressed, encrypted).
    pub stored_size: u64,
    /// SHA-256 of the stored object, hex.
    pub stored_sha256: String,
    /// Id of the encrypting key.
    pub key_id: String,
    /// Compression inside the stored object.
    pub compression: String,
    /// Earliest commit/abort time in the segment, RFC 3339 with microseconds.
    pub first_xact_time: Option<String>,
    /// Latest commit/abort time in the segment.
    pub last_xact_time: Option<String>,
    /// Where the segment's last commit/abort record (by position) starts, e.g. `0/3FFE2A8`.
    #[serde(default)]
    pub last_xact_lsn: Option<String>,
    /// Commits found.
    pub commits: u64,
    /// Aborts found.
    pub aborts: u64,
    /// Ended early by a WAL switch.
    pub switched: bool,
    /// Its last record starts in it and ends in the next segment: a recovery that stops at
    /// that record needs the next segment too.
    #[serde(default)]
    pub runs_off: bool,
    /// That record is a transaction end (its time counts in this segment's).
    #[serde(default)]
    pub runs_off_xact: bool,
    /// With `runs_off_xact`: the latest transaction end that ends in this segment.
    #[serde(default)]
    pub last_complete_xact_time: Option<String>,
    /// The smallest transaction id among the segment's transaction ends (`--to-xid`).
    #[serde(default)]
    pub xid_min: Option<u32>,
    /// The largest.
    #[serde(default)]
    pub xid_max: Option<u32>,
    /// Named restore points made in the segment (`--to-name`), in order.
    #[serde(default)]
    pub restore_points: Vec<RestorePointEntry>,
    /// The cluster's system identifier (segments).
    pub system_id: Option<String>,
    /// PostgreSQL major version that wrote it (segments).
    pub server_version: Option<u32>,
    /// The timeline's ancestry (history files), oldest first.
    pub history: Vec<HistoryEntry>,
    /// When it was archived, RFC 3339.
    pub archived_at: String,
}

/// A named restore point as a manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePointEntry {
    /// The name given to `pg_create_restore_point`.
    pub name: String,
    /// When, RFC 3339 with microseconds.
    pub time: String,
    /// Where its record starts, e.g. `0/3000028`.
    pub lsn: String,
}

/// Microseconds since the Unix epoch as RFC 3339 with microseconds.
pub fn micros_to_rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_else(|| micros.to_string())
}

/// RFC 3339 text back to microseconds since the Unix epoch.
pub fn rfc3339_to_micros(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_micros())
}

/// The prefix under which one archive's files live.
pub fn archive_prefix(archive: &str) -> String {
    format!("wal/{archive}/")
}

fn is_segment_like(file: &str) -> bool {
    file.len() >= 24 && file.as_bytes()[..24].iter().all(u8::is_ascii_hexdigit)
}

/// Where a file's stored object lives: segments grouped 256 to a folder (timeline + log).
pub fn object_key(archive: &str, file: &str) -> String {
    if is_segment_like(file) {
        format!("wal/{archive}/{}/{file}{OBJECT_SUFFIX}", &file[..16])
    } else {
        format!("wal/{archive}/{file}{OBJECT_SUFFIX}")
    }
}

/// What [`prepare_local_folders`] did and found.
#[derive(Debug, Default)]
pub struct PreparedFolders {
    /// The archive's folder in each local store, writable by the server's user.
    pub folders: Vec<std::path::PathBuf>,
    /// Folders that user cannot reach, each with the directory in the way and what to
    /// change: if the server archives into them, its `wal push` fails.
    pub unreachable: Vec<String>,
}

/// Makes the folders of `archive` in every local store writable by the user the server
/// archives as (`uid`/`gid`: `wal push` runs as the server's user, while the command line
/// that prepares a base backup may run as root): each is created if need be and given to
/// that user when root owns it. A folder that user cannot reach is reported, naming the
/// directory in the way and what to change (whether the server archives there is the
/// server's configuration, which this cannot see).
pub fn prepare_local_folders(
    stores: &StoreSet,
    archive: &str,
    uid: u32,
    gid: u32,
) -> Result<PreparedFolders, String> {
    use std::os::unix::fs::MetadataExt;
    let mut prepared = PreparedFolders::default();
    for store in stores.stores() {
        let Some(root) = store.local_root() else {
            continue;
        };
        let dir = root.join("wal").join(archive);
        std::fs::create_dir_all(&dir).map_err(|e| {
            format!(
                "cannot create {} in store {}: {e}",
                dir.display(),
                store.name()
            )
        })?;
        let meta = std::fs::metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if meta.uid() == 0 && uid != 0 {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| format!("cannot give {} to the server's user: {e}", dir.display()))?;
        }
        if let Some(first) = crate::pg::reach::blocked_ancestors(&dir, uid, gid).first() {
            prepared.unreachable.push(format!(
                "the server's user (uid {uid}) cannot reach the WAL folder {} of store {}: {} is in the way, so a `lazarus wal push` run by the server cannot archive there; let it through (chmod o+x {}) or keep the store elsewhere",
                dir.display(),
                store.name(),
                first.display(),
                first.display()
            ));
        }
        prepared.folders.push(dir);
    }
    Ok(prepared)
}

/// Where a file's manifest lives.
pub fn manifest_key(archive: &str, file: &str) -> String {
    let object = object_key(archive, file);
    format!(
        "{}{MANIFEST_SUFFIX}",
        object.strip_suffix(OBJECT_SUFFIX).unwrap_or(&object)
    )
}

/// An archive problem.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The file handed over is not one PostgreSQL archives.
    #[error("{0}")]
    BadFile(String),
    /// Reading or writing a local file failed.
    #[error("{0}")]
    Io(String),
    /// The WAL does not read.
    #[error(transparent)]
    Wal(#[from] super::WalError),
    /// Encryption or decryption failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// An archived file of the same name holds different bytes.
    #[error(
        "{file} is already archived with different content (archived SHA-256 {archived}, this \
         file {offered}); refusing to overwrite it. Two clusters may be archiving into the same \
         archive name: give each its own --archive"
    )]
    Conflict {
        /// The file.
        file: String,
        /// SHA-256 in the archive.
        archived: String,
        /// SHA-256 of the file offered.
        offered: String,
    },
    /// Too few stores took the file.
    #[error("{file} reached {landed} of the {wanted} stores required: {failures}")]
    TooFewCopies {
        /// The file.
        file: String,
        /// Copies written.
        landed: usize,
        /// Copies required.
        wanted: usize,
        /// Why the others failed.
        failures: String,
    },
    /// No store has the file.
    #[error("{file} is not in the archive {archive} (looked in {stores})")]
    NotFound {
        /// The file.
        file: String,
        /// The archive.
        archive: String,
        /// The stores asked.
        stores: String,
    },
    /// No store that answered has it, and some could not be asked.
    #[error("{file} could not be fetched: {failures}")]
    Unavailable {
        /// The file.
        file: String,
        /// What went wrong with each store.
        failures: String,
    },
    /// A manifest in a store does not parse.
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

/// How `wal push` works.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// The archive name (one per cluster).
    pub archive: String,
    /// Stores that must take the file for success (default: all).
    pub min_copies: Option<usize>,
    /// zstd level.
    pub level: i32,
    /// Threads for compression and encryption.
    pub threads: usize,
}

/// What `wal push` did.
#[derive(Debug, Clone)]
pub struct PushOutcome {
    /// The manifest stored.
    pub manifest: WalManifest,
    /// It was archived before with the same content.
    pub already_archived: bool,
    /// Stores that hold it now.
    pub copies: Vec<String>,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> ArchiveError {
    move |e| ArchiveError::Io(format!("{context}: {e}"))
}

/// Archives the file at `path` into every store.
pub async fn push(
    path: &Path,
    stores: &StoreSet,
    key: &Key,
    options: &PushOptions,
) -> Result<PushOutcome, ArchiveError> {
    let file = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| ArchiveError::BadFile(format!("{} has no file name", path.display())))?
        .to_string();
    let kind = classify(&file)?;
    // The archived copy, if any, is looked up while the file is read and encoded.
    let existing = tokio::spawn({
        let stores = stores.clone();
        let key = manifest_key(&options.archive, &file);
        async move { first_manifest(&stores, &key).await }
    });
    let encoded = tokio::task::spawn_blocking({
        let path = path.to_path_buf();
        let file = file.clone();
        let key = key.clone();
        let options = options.clone();
        move || encode_file(&path, &file, kind, &key, &options)
    })
    .await
    .map_err(|e| ArchiveError::Io(format!("encoding task failed: {e}")))??;
    let (manifest, object) = encoded;
    let existing = existing
        .await
        .map_err(|e| ArchiveError::Io(format!("manifest lookup failed: {e}")))?;
    let object_key = object_key(&options.archive, &file);
    let manifest_key = manifest_key(&options.archive, &file);
    if let Some(existing) = existing {
        if existing.sha256 != manifest.sha256 {
            return Err(ArchiveError::Conflict {
                file,
                archived: existing.sha256,
                offered: manifest.sha256,
            });
        }
        let copies = repair_copies(stores, &object_key, &manifest_key, &existing).await;
        check_copies(&file, stores, options, &copies)?;
        return Ok(PushOutcome {
            manifest: existing,
            already_archived: true,
            copies: copies.landed,
        });
    }
    let manifest_bytes = Bytes::from(
        serde_json::to_vec_pretty(&manifest).map_err(|e| ArchiveError::Io(e.to_string()))?,
    );
    // Object first, manifest second: a manifest never names a missing object.
    let mut copies = Copies::default();
    let puts = stores.stores().iter().map(|store| {
        let object = object.clone();
        let manifest_bytes = manifest_bytes.clone();
        let object_key = object_key.clone();
        let manifest_key = manifest_key.clone();
        async move {
            store.put(&object_key, Body::Bytes(object)).await?;
            store
                .put(&manifest_key, Body::Bytes(manifest_bytes))
                .await?;
            Ok::<_, StorageError>(store.name().to_string())
        }
    });
    for outcome in futures::future::join_all(puts).await {
        match outcome {
            Ok(name) => copies.landed.push(name),
            Err(e) => copies.failures.push(e.to_string()),
        }
    }
    check_copies(&file, stores, options, &copies)?;
    Ok(PushOutcome {
        manifest,
        already_archived: false,
        copies: copies.landed,
    })
}

#[derive(Default)]
struct Copies {
    landed: Vec<String>,
    failures: Vec<String>,
}

fn check_copies(
    file: &str,
    stores: &StoreSet,
    options: &PushOptions,
    copies: &Copies,
) -> Result<(), ArchiveError> {
    let wanted = options
        .min_copies
        .unwrap_or(stores.stores().len())
        .clamp(1, stores.stores().len().max(1));
    if copies.landed.len() < wanted {
        return Err(ArchiveError::TooFewCopies {
            file: file.to_string(),
            landed: copies.landed.len(),
            wanted,
            failures: copies.failures.join("; "),
        });
    }
    Ok(())
}

/// Re-archiving a file already archived: copies missing from some store are restored from
/// a store that has them.
async fn repair_copies(
    stores: &StoreSet,
    object_key: &str,
    manifest_key: &str,
    manifest: &WalManifest,
) -> Copies {
    let mut copies = Copies::default();
    let mut missing: Vec<Arc<dyn ObjectStore>> = Vec::new();
    let mut source: Option<Arc<dyn ObjectStore>> = None;
    for store in stores.stores() {
        match (store.head(object_key).await, store.head(manifest_key).await) {
            (Ok(Some(object)), Ok(Some(_))) if object.size == manifest.stored_size => {
                copies.landed.push(store.name().to_string());
                source.get_or_insert_with(|| Arc::clone(store));
            }
            (Err(e), _) | (_, Err(e)) => copies.failures.push(e.to_string()),
            _ => missing.push(Arc::clone(store)),
        }
    }
    let Some(source) = source else {
        copies
            .failures
            .push("no store holds a complete copy to repair from".into());
        return copies;
    };
    for store in missing {
        let repaired = async {
            let object = read_all(source.as_ref(), object_key).await?;
            let manifest_bytes = read_all(source.as_ref(), manifest_key).await?;
            store.put(object_key, Body::Bytes(object.into())).await?;
            store
                .put(manifest_key, Body::Bytes(manifest_bytes.into()))
                .await?;
            Ok::<_, StorageError>(())
        };
        match repaired.await {
            Ok(()) => copies.landed.push(store.name().to_string()),
            Err(e) => copies.failures.push(e.to_string()),
        }
    }
    copies
}

/// Reads a whole (small) object.
pub async fn read_all(store: &dyn ObjectStore, key: &str) -> Result<Vec<u8>, StorageError> {
    let mut bytes = Vec::new();
    store
        .get(key, 0, None)
        .await?
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| StorageError::Transient {
            store: store.name().to_string(),
            message: format!("reading {key}: {e}"),
        })?;
    Ok(bytes)
}

/// The manifest at `key` in the first store that has it.
async fn first_manifest(stores: &StoreSet, key: &str) -> Option<WalManifest> {
    for store in stores.stores() {
        if let Ok(bytes) = read_all(store.as_ref(), key).await
            && let Ok(manifest) = serde_json::from_slice::<WalManifest>(&bytes)
        {
            return Some(manifest);
        }
    }
    None
}

/// What kind of file a name is, refusing anything PostgreSQL would not archive.
pub fn classify(file: &str) -> Result<FileKind, ArchiveError> {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    let kind = if file.len() == 24 && hex(file) {
        FileKind::Segment
    } else if file.len() == 32 && file.ends_with(".partial") && hex(&file[..24]) {
        FileKind::Partial
    } else if file.len() == 16 && file.ends_with(".history") && hex(&file[..8]) {
        FileKind::History
    } else if file.len() == 40 && file.ends_with(".backup") && hex(&file[..33].replace('.', "")) {
        FileKind::BackupLabel
    } else {
        return Err(ArchiveError::BadFile(format!(
            "{file:?} is not a WAL segment, .partial, .history or .backup file name"
        )));
    };
    Ok(kind)
}

/// How long `wal push` waits for the next segment to hold the rest of a record that began
/// in the pushed one (PostgreSQL writes it in the same pass, usually before the archiver
/// starts).
const NEXT_SEGMENT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads a segment again with the start of the next one beside it (in `pg_wal`), so a record
/// whose header or transaction time lies past the segment's end is counted in the segment it
/// starts in; the first scan when the next segment does not hold the rest in time.
fn rescan_with_next(
    path: &Path,
    data: &[u8],
    named: &SegmentName,
    first: super::reader::SegmentScan,
) -> super::reader::SegmentScan {
    let next_name = SegmentName {
        timeline: named.timeline,
        segno: named.segno + 1,
    }
    .file_name(first.segment_size);
    let Some(next_path) = path.parent().map(|dir| dir.join(&next_name)) else {
        return first;
    };
    // No next segment at all (pushed from elsewhere than pg_wal, the last of a timeline):
    // nothing to wait for.
    if !next_path.exists() {
        return first;
    }
    let started = std::time::Instant::now();
    loop {
        // The rest of a record lies in the next segment's first pages.
        let head = std::fs::File::open(&next_path).ok().and_then(|f| {
            use std::io::Read;
            let mut head = Vec::new();
            f.take(1 << 20).read_to_end(&mut head).ok().map(|_| head)
        });
        if let Some(head) = head
            && let Ok(scan) =
                super::reader::scan_segment_continued(data, Some(&head), ScanOptions::default())
            && !scan.split_tail
        {
            return scan;
        }
        if started.elapsed() >= NEXT_SEGMENT_WAIT {
            tracing::warn!(segment = %named.file_name(first.segment_size), "the last record continues in {next_name}, which does not hold it yet: its transaction end is not indexed");
            return first;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Reads, describes, compresses and encrypts one file.
fn encode_file(
    path: &Path,
    file: &str,
    kind: FileKind,
    key: &Key,
    options: &PushOptions,
) -> Result<(WalManifest, Bytes), ArchiveError> {
    let data = std::fs::read(path).map_err(io(format!("cannot read {}", path.display())))?;
    let mut manifest = WalManifest {
        manifest_version: WAL_MANIFEST_VERSION,
        kind,
        file: file.to_string(),
        archive: options.archive.clone(),
        timeline: 0,
        segno: None,
        segment_size: None,
        start_lsn: None,
        end_lsn: None,
        size: data.len() as u64,
        sha256: String::new(),
        stored_size: 0,
        stored_sha256: String::new(),
        key_id: key.id().to_string(),
        compression: "zstd".into(),
        first_xact_time: None,
        last_xact_time: None,
        last_xact_lsn: None,
        commits: 0,
        aborts: 0,
        switched: false,
        runs_off: false,
        runs_off_xact: false,
        last_complete_xact_time: None,
        xid_min: None,
        xid_max: None,
        restore_points: Vec::new(),
        system_id: None,
        server_version: None,
        history: Vec::new(),
        archived_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    };
    let encode_options = EncodeOptions {
        compression: Compression::Zstd,
        level: options.level,
        chunk_size: chunked::DEFAULT_CHUNK_SIZE,
        threads: options.threads.max(1),
    };
    let mut object = Vec::with_capacity(data.len() / 2 + 4096);
    // The scan (one thread) runs beside the encoding (the others).
    let (scan, summary) = std::thread::scope(|scope| {
        let scan = match kind {
            FileKind::Segment | FileKind::Partial => {
                Some(scope.spawn(|| scan_segment(&data, ScanOptions::default())))
            }
            _ => None,
        };
        let summary = chunked::encode(&data[..], &mut object, key, encode_options);
        let scan = scan.map(|handle| {
            handle
                .join()
                .unwrap_or_else(|_| Err(super::WalError::NotWal("the WAL reader panicked".into())))
        });
        (scan, summary)
    });
    let summary = summary?;
    manifest.sha256 = summary.plaintext_sha256;
    manifest.stored_size = summary.encoded_size;
    manifest.stored_sha256 = summary.encoded_sha256;
    match kind {
        FileKind::Segment | FileKind::Partial => {
            let scan = scan.ok_or_else(|| ArchiveError::Io("segment was not scanned".into()))??;
            let named = SegmentName::parse(&file[..24], scan.segment_size)?;
            let scan = if scan.split_tail && kind == FileKind::Segment {
                rescan_with_next(path, &data, &named, scan)
            } else {
                scan
            };
            // A timeline's first segment begins with its parent's WAL (and page headers), so
            // the pages may carry an older timeline than the name.
            if named.segno != scan.name.segno || scan.name.timeline > named.timeline {
                return Err(ArchiveError::BadFile(format!(
                    "{file} holds the WAL of {} (timeline {}): the file is misnamed or damaged",
                    scan.name.file_name(scan.segment_size),
                    scan.name.timeline
                )));
            }
            manifest.timeline = named.timeline;
            manifest.segno = Some(named.segno);
            manifest.segment_size = Some(scan.segment_size);
            manifest.start_lsn = Some(scan.start_lsn.to_string());
            manifest.end_lsn = Some(scan.end_lsn.to_string());
            manifest.first_xact_time = scan.first_xact_time.map(micros_to_rfc3339);
            manifest.last_xact_time = scan.last_xact_time.map(micros_to_rfc3339);
            manifest.commits = scan.commits;
            manifest.aborts = scan.aborts;
            manifest.switched = scan.switched;
            manifest.runs_off = scan.runs_off;
            manifest.runs_off_xact = scan.runs_off_xact;
            manifest.last_complete_xact_time = scan.last_complete_xact_time.map(micros_to_rfc3339);
            manifest.last_xact_lsn = scan.last_xact_lsn.map(|l| l.to_string());
            manifest.xid_min = scan.xid_range.map(|r| r.0);
            manifest.xid_max = scan.xid_range.map(|r| r.1);
            manifest.restore_points = scan
                .restore_points
                .iter()
                .map(|p| RestorePointEntry {
                    name: p.name.clone(),
                    time: micros_to_rfc3339(p.time),
                    lsn: p.lsn.to_string(),
                })
                .collect();
            manifest.system_id = Some(scan.system_id.to_string());
            manifest.server_version = Some(scan.server_version);
        }
        FileKind::History => {
            manifest.timeline = u32::from_str_radix(&file[..8], 16)
                .map_err(|_| ArchiveError::BadFile(format!("{file}: bad timeline")))?;
            let text = std::str::from_utf8(&data).map_err(|_| {
                ArchiveError::BadFile(format!("{file} is not a text timeline history"))
            })?;
            manifest.history = parse_history(text)?;
        }
        FileKind::BackupLabel => {
            manifest.timeline = u32::from_str_radix(&file[..8], 16)
                .map_err(|_| ArchiveError::BadFile(format!("{file}: bad timeline")))?;
        }
    }
    debug_assert_eq!(manifest.sha256, sha256_hex(&data));
    Ok((manifest, Bytes::from(object)))
}

/// What `wal fetch` did.
#[derive(Debug, Clone)]
pub struct FetchOutcome {
    /// The store it came from.
    pub store: String,
    /// Bytes written.
    pub bytes: u64,
}

/// Fetches `file` from the first store that has it, decrypts and decompresses it into
/// `dest` (written under a temporary name and renamed, so PostgreSQL never sees half a file).
pub async fn fetch(
    file: &str,
    dest: &Path,
    stores: &StoreSet,
    keys: &Keyring,
    archive: &str,
    threads: usize,
) -> Result<FetchOutcome, ArchiveError> {
    classify(file)?;
    let key = object_key(archive, file);
    let mut failures = Vec::new();
    let mut not_found = Vec::new();
    for store in stores.stores() {
        let mut attempt = 0;
        let object = loop {
            attempt += 1;
            match read_all(store.as_ref(), &key).await {
                Ok(bytes) => break Some(bytes),
                Err(StorageError::NotFound { .. }) => {
                    not_found.push(store.name().to_string());
                    break None;
                }
                Err(e) if e.is_transient() && attempt < 3 => {
                    tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
                }
                Err(e) => {
                    failures.push(e.to_string());
                    break None;
                }
            }
        };
        let Some(object) = object else { continue };
        let decoded = tokio::task::spawn_blocking({
            let keys = keys.clone();
            let dest = dest.to_path_buf();
            move || decode_to(&object, &keys, &dest, threads)
        })
        .await
        .map_err(|e| ArchiveError::Io(format!("decoding task failed: {e}")))?;
        match decoded {
            Ok(bytes) => {
                return Ok(FetchOutcome {
                    store: store.name().to_string(),
                    bytes,
                });
            }
            Err(e) => failures.push(format!("{}: {e}", store.name())),
        }
    }
    if failures.is_empty() {
        Err(ArchiveError::NotFound {
            file: file.to_string(),
            archive: archive.to_string(),
            stores: not_found.join(", "),
        })
    } else {
        Err(ArchiveError::Unavailable {
            file: file.to_string(),
            failures: failures.join("; "),
        })
    }
}

/// Decrypts a stored object into `dest`, atomically.
pub fn decode_to(
    object: &[u8],
    keys: &Keyring,
    dest: &Path,
    threads: usize,
) -> Result<u64, ArchiveError> {
    let opened = chunked::open(object, keys)?;
    let mut name = dest
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".lazarus-part");
    let part = dest.with_file_name(name);
    let out =
        std::fs::File::create(&part).map_err(io(format!("cannot create {}", part.display())))?;
    let mut writer = std::io::BufWriter::with_capacity(1 << 20, out);
    let threads = threads.max(1);
    let summary = chunked::decode(
        object,
        &opened,
        keys,
        0,
        true,
        threads,
        &mut writer,
        &mut |_, _| Ok(()),
    );
    let finished = summary.map_err(ArchiveError::from).and_then(|summary| {
        std::io::Write::flush(&mut writer)
            .map_err(io(format!("cannot write {}", part.display())))?;
        if summary.written != opened.index.plaintext_size {
            return Err(ArchiveError::Crypto(CryptoError::Truncated(format!(
                "decoded {} bytes of {}",
                summary.written, opened.index.plaintext_size
            ))));
        }
        Ok(summary.written)
    });
    match finished {
        Ok(written) => {
            std::fs::rename(&part, dest)
                .map_err(io(format!("cannot rename into {}", dest.display())))?;
            Ok(written)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            Err(e)
        }
    }
}

/// The WAL manifests of an archive in one store, except those of files `known` says to skip.
pub async fn read_manifests(
    store: &dyn ObjectStore,
    archive: &str,
    known: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Vec<WalManifest>, ArchiveError> {
    let listed =
        store
            .list(&archive_prefix(archive))
            .await
            .map_err(|e| ArchiveError::Unavailable {
                file: format!("the listing of archive {archive}"),
                failures: e.to_string(),
            })?;
    let mut out = Vec::new();
    for object in listed {
        let Some(stem) = object.key.strip_suffix(MANIFEST_SUFFIX) else {
            continue;
        };
        if known(stem.rsplit('/').next().unwrap_or(stem)) {
            continue;
        }
        let bytes = read_all(store, &object.key)
            .await
            .map_err(|e| ArchiveError::Unavailable {
                file: object.key.clone(),
                failures: e.to_string(),
            })?;
        let manifest: WalManifest =
            serde_json::from_slice(&bytes).map_err(|e| ArchiveError::BadManifest {
                store: store.name().to_string(),
                key: object.key.clone(),
                message: e.to_string(),
            })?;
        out.push(manifest);
    }
    Ok(out)
}

impl WalManifest {
    /// The segment's name, for segments and partials.
    pub fn segment(&self) -> Option<SegmentName> {
        Some(SegmentName {
            timeline: self.timeline,
            segno: self.segno?,
        })
    }

    /// The end of the last record decoded, parsed.
    pub fn end(&self) -> Option<Lsn> {
        self.end_lsn.as_deref()?.parse().ok()
    }
}

/// Prefetched segments wait in a spool directory, so `wal fetch` can hand PostgreSQL the
/// next segment at once while a background prefetcher decodes the ones after it — replay
/// and download overlap instead of alternating.
pub mod spool {
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use super::{ArchiveError, fetch};
    use crate::crypto::Keyring;
    use crate::storage::StoreSet;
    use crate::wal::names::SegmentName;

    /// The lock a running prefetcher holds.
    const LOCK: &str = ".prefetch.lock";

    /// A complete prefetched copy of `file`, if any.
    pub fn ready(spool: &Path, file: &str) -> Option<PathBuf> {
        let path = spool.join(file);
        path.is_file().then_some(path)
    }

    /// Whether a prefetcher is working in `spool` right now.
    pub fn prefetcher_running(spool: &Path) -> bool {
        lock_held(spool, LOCK)
    }

    /// Stops the prefetcher writing into `spool`, if one runs (SIGTERM, then SIGKILL after
    /// two seconds), so removing the spool is final; whether one was running.
    pub fn stop_prefetcher(spool: &Path) -> bool {
        if !prefetcher_running(spool) {
            return false;
        }
        let pid = std::fs::read_to_string(spool.join(LOCK))
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            .filter(|&pid| pid > 1);
        let Some(pid) = pid.map(nix::unistd::Pid::from_raw) else {
            return true;
        };
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let started = Instant::now();
        while prefetcher_running(spool) {
            if started.elapsed() > Duration::from_secs(2) {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Whether some process holds the lock file `name` in `spool` right now.
    pub fn lock_held(spool: &Path, name: &str) -> bool {
        let Ok(lock) = std::fs::File::open(spool.join(name)) else {
            return false;
        };
        nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockSharedNonblock).is_err()
    }

    /// Takes the lock file `name` in `spool` (created, with the directory, if missing) for as
    /// long as the returned guard lives; `None` when another process holds it.
    pub fn take_lock(
        spool: &Path,
        name: &str,
    ) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, ArchiveError> {
        std::fs::create_dir_all(spool)
            .map_err(|e| ArchiveError::Io(format!("cannot create {}: {e}", spool.display())))?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(spool.join(name))
            .map_err(|e| ArchiveError::Io(format!("cannot open the lock {name}: {e}")))?;
        Ok(nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock).ok())
    }

    /// Waits (bounded) for a prefetcher that is writing `file` right now.
    pub fn wait_for(spool: &Path, file: &str, limit: Duration) -> Option<PathBuf> {
        let started = Instant::now();
        let mut part = spool.join(file).into_os_string();
        part.push(".lazarus-part");
        while started.elapsed() < limit {
            if let Some(path) = ready(spool, file) {
                return Some(path);
            }
            if !Path::new(&part).exists() || !prefetcher_running(spool) {
                return ready(spool, file);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Moves a prefetched file to where PostgreSQL wants it.
    pub fn hand_over(from: &Path, dest: &Path) -> Result<u64, ArchiveError> {
        let size = std::fs::metadata(from).map(|m| m.len()).unwrap_or(0);
        if std::fs::rename(from, dest).is_err() {
            std::fs::copy(from, dest).map_err(|e| {
                ArchiveError::Io(format!(
                    "cannot copy {} to {}: {e}",
                    from.display(),
                    dest.display()
                ))
            })?;
            let _ = std::fs::remove_file(from);
        }
        Ok(size)
    }

    /// The segments after `file` on its timeline, `count` of them.
    pub fn upcoming(file: &str, segment_size: u64, count: u64) -> Vec<String> {
        let Ok(name) = SegmentName::parse(file, segment_size) else {
            return Vec::new();
        };
        (1..=count)
            .map(|i| {
                SegmentName {
                    timeline: name.timeline,
                    segno: name.segno + i,
                }
                .file_name(segment_size)
            })
            .collect()
    }

    /// Fetches the segments after `file` into `spool`, stopping at the first the archive
    /// does not have; returns how many it fetched. Only one prefetcher works per spool.
    pub async fn prefetch(
        spool: &Path,
        file: &str,
        segment_size: u64,
        count: u64,
        stores: &StoreSet,
        keys: &Keyring,
        archive: &str,
    ) -> Result<usize, ArchiveError> {
        let Some(held) = take_lock(spool, LOCK)? else {
            return Ok(0);
        };
        // Who holds the lock, for a cleanup that must stop this process first.
        {
            use std::io::Write;
            let mut file: &std::fs::File = &held;
            let _ = file.set_len(0);
            let _ = write!(file, "{}", std::process::id());
        }
        let mut fetched = 0;
        for next in upcoming(file, segment_size, count) {
            // The spool was removed (its run ended): stop, and never make it again.
            if !spool.join(LOCK).exists() {
                break;
            }
            if ready(spool, &next).is_some() {
                continue;
            }
            // One thread: PostgreSQL's replay needs the other cores more than a segment
            // that is not due yet needs speed.
            match fetch(&next, &spool.join(&next), stores, keys, archive, 1).await {
                Ok(_) => fetched += 1,
                Err(_) => break,
            }
        }
        Ok(fetched)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::sync::Arc;

    use super::prepare_local_folders;
    use crate::storage::StoreSet;
    use crate::storage::local::LocalStore;

    #[test]
    fn the_wal_folders_of_local_stores_are_given_to_the_servers_user() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test gives a folder to another user: run it as root (as CI does)"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let stores = StoreSet::new(vec![Arc::new(LocalStore::new(
            "local",
            dir.path().join("state/store"),
        ))]);
        let nobody = 65534;
        let made = prepare_local_folders(&stores, "main", nobody, nobody).unwrap();
        assert_eq!(made.folders, [dir.path().join("state/store/wal/main")]);
        assert_eq!(std::fs::metadata(&made.folders[0]).unwrap().uid(), nobody);
        assert!(made.unreachable.is_empty(), "{:?}", made.unreachable);

        // A private state directory stands in the way: said, with what to change.
        std::fs::set_permissions(
            dir.path().join("state"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        let found = prepare_local_folders(&stores, "main", nobody, nobody).unwrap();
        let refused = found.unreachable.join("\n");
        assert!(refused.contains("cannot reach"), "{refused}");
        assert!(
            refused.contains(&format!("chmod o+x {}", dir.path().join("state").display())),
            "{refused}"
        );
    }
}
