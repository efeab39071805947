//! `inspect_legacy`: make a manifest for one of the seed's `*.dump.gz.enc` files (one Fernet
//! token over a gzip'd pg_dump), so it can be uploaded and restored like any other backup.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::inputs;
use super::services::Services;
use crate::catalog::{MANIFEST_VERSION, Manifest, backup_key, new_backup_id, status};
use crate::crypto::legacy;
use crate::engine::{Activity, ActivityContext, ActivityError, ActivitySpec, InputSpec};

static SPEC: ActivitySpec = ActivitySpec {
    name: "inspect_legacy",
    summary: "check a seed *.dump.gz.enc file and make its manifest",
    inputs: &[
        InputSpec {
            name: "file",
            required: true,
            help: "the *.dump.gz.enc file",
        },
        InputSpec {
            name: "database",
            required: true,
            help: "the database it is a dump of",
        },
        InputSpec {
            name: "id",
            required: false,
            help: "backup id (default DATABASE-TIMESTAMP of the token)",
        },
    ],
    outputs: &["id", "key", "manifest", "size", "sha256", "key_id"],
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inputs {
    file: PathBuf,
    database: String,
    id: Option<String>,
}

/// The `inspect_legacy` activity.
pub struct InspectLegacy {
    services: Arc<Services>,
}

impl InspectLegacy {
    /// The activity over these services.
    pub fn new(services: Arc<Services>) -> Self {
        Self { services }
    }
}

#[async_trait]
impl Activity for InspectLegacy {
    fn spec(&self) -> &'static ActivitySpec {
        &SPEC
    }

    async fn run(&self, _ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: Inputs = inputs::parse("inspect_legacy", inputs)?;
        let keys = self
            .services
            .keys()
            .map_err(|e| ActivityError::permanent(e.to_string()))?;
        let file = inputs.file.clone();
        let (size, sha256, stamp, key_id) =
            tokio::task::spawn_blocking(move || -> Result<_, String> {
                let mut f = std::fs::File::open(&file)
                    .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
                let mut head = [0u8; 16];
                f.read_exact(&mut head)
                    .map_err(|_| format!("{} is too short to be a Fernet token", file.display()))?;
                if !legacy::looks_like_token(&head) {
                    return Err(format!(
                        "{} is not a Fernet token file (*.dump.gz.enc)",
                        file.display()
                    ));
                }
                let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(&head[..12])
                    .map_err(|_| "the token's header is not base64url".to_string())?;
                let stamp = u64::from_be_bytes(decoded[1..9].try_into().unwrap_or_default());
                // The key must authenticate the whole token: proves both the key and the file.
                let key = legacy::identify_key(
                    std::io::BufReader::new(std::fs::File::open(&file).map_err(|e| e.to_string())?),
                    &keys,
                )
                .map_err(|e| e.to_string())?;
                let mut hash = Sha256::new();
                let mut reader = std::fs::File::open(&file).map_err(|e| e.to_string())?;
                let mut buf = vec![0u8; 1 << 20];
                let mut size = 0u64;
                loop {
                    let n = reader.read(&mut buf).map_err(|e| e.to_string())?;
                    if n == 0 {
                        break;
                    }
                    size += n as u64;
                    hash.update(&buf[..n]);
                }
                Ok((
                    size,
                    hex::encode(hash.finalize()),
                    stamp,
                    key.id().to_string(),
                ))
            })
            .await
            .map_err(|e| ActivityError::retryable(format!("inspection failed: {e}")))?
            .map_err(ActivityError::permanent)?;
        let created = chrono::DateTime::<chrono::Utc>::from_timestamp(stamp as i64, 0)
            .unwrap_or_else(chrono::Utc::now);
        let id = inputs
            .id
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| new_backup_id(&inputs.database, created));
        let key = backup_key(&inputs.database, &id, ".dump.gz.enc");
        let when = created.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let manifest = Manifest {
            manifest_version: MANIFEST_VERSION,
            id: id.clone(),
            kind: "logical".into(),
            database: inputs.database.clone(),
            server_version: String::new(),
            created_at: when.clone(),
            finished_at: when,
            key: key.clone(),
            size,
            sha256: sha256.clone(),
            plaintext_size: None,
            plaintext_sha256: None,
            format: "legacy_fernet".into(),
            compression: "gzip".into(),
            key_id: Some(key_id.clone()),
            tables: Vec::new(),
            status: status::UNVERIFIED.into(),
            verification: None,
            copies: Vec::new(),
            missing_copies: Vec::new(),
            physical: None,
            data_blocks: None,
        };
        Ok(json!({
            "id": id, "key": key, "manifest": manifest, "size": size, "sha256": sha256, "key_id": key_id,
        }))
    }
}
