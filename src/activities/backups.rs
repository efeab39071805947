//! Backups in the catalog: `publish_backup` (the manifest beside the backup in every store,
//! and in the catalog), `mark_backup` (a drill's verdict), and `select_backup` (the backup to
//! restore, with every check that can run before anything is downloaded).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::inputs::{self, lenient_bool};
use super::services::Services;
use crate::catalog::choose::choose;
use crate::catalog::preflight::find_good_copy;
use crate::catalog::{Manifest, Verification, manifest_key, status};
use crate::crypto::chunked;
use crate::engine::{Activity, ActivityContext, ActivityError, ActivitySpec, InputSpec};
use crate::pg::dump_blocks::worth_streaming;
use crate::storage::Body;

/// Writes a manifest to every store and to the catalog; says where it landed.
pub async fn write_manifest(
    services: &Services,
    manifest: &Manifest,
) -> Result<Vec<String>, ActivityError> {
    let bytes = serde_json::to_vec_pretty(manifest)
        .map_err(|e| ActivityError::permanent(format!("manifest does not serialise: {e}")))?;
    let key = manifest_key(&manifest.database, &manifest.id);
    let copies = services
        .stores
        .put_all(&key, Body::Bytes(Bytes::from(bytes)))
        .await;
    let landed: Vec<String> = copies
        .iter()
        .filter(|c| c.bytes.is_some())
        .map(|c| c.store.clone())
        .collect();
    if landed.is_empty() {
        let errors: Vec<String> = copies.iter().filter_map(|c| c.error.clone()).collect();
        return Err(ActivityError::retryable(format!(
            "the manifest of {} landed in no store: {}",
            manifest.id,
            errors.join("; ")
        )));
    }
    services
        .catalog()?
        .put(manifest)
        .map_err(|e| ActivityError::retryable(e.to_string()))?;
    Ok(landed)
}

/// The manifest of a backup: from the catalog, else from the stores (a new host).
async fn find_manifest(services: &Services, id: &str) -> Result<Option<Manifest>, ActivityError> {
    let catalog = services.catalog()?;
    if let Some(found) = catalog
        .get(id)
        .map_err(|e| ActivityError::retryable(e.to_string()))?
    {
        return Ok(Some(found));
    }
    catalog.sync(&services.stores).await.map_err(|e| {
        ActivityError::retryable(format!("cannot rebuild the catalog from the stores: {e}"))
    })?;
    catalog
        .get(id)
        .map_err(|e| ActivityError::retryable(e.to_string()))
}

static PUBLISH: ActivitySpec = ActivitySpec {
    name: "publish_backup",
    summary: "write a backup's manifest beside it in every store and in the catalog",
    inputs: &[
        InputSpec {
            name: "manifest",
            required: true,
            help: "the draft manifest (${steps.dump.manifest})",
        },
        InputSpec {
            name: "copies",
            required: false,
            help: "where the backup landed (${steps.upload.copies})",
        },
    ],
    outputs: &[
        "id",
        "status",
        "manifest_stores",
        "copies",
        "missing_copies",
    ],
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishInputs {
    manifest: Manifest,
    copies: Option<Vec<Value>>,
}

/// The `publish_backup` activity.
pub struct PublishBackup {
    services: Arc<Services>,
}

impl PublishBackup {
    /// The activity over these services.
    pub fn new(services: Arc<Services>) -> Self {
        Self { services }
    }
}

#[async_trait]
impl Activity for PublishBackup {
    fn spec(&self) -> &'static ActivitySpec {
        &PUBLISH
    }

    async fn run(&self, _ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: PublishInputs = inputs::parse("publish_backup", inputs)?;
        let mut manifest = inputs.manifest;
        if let Some(copies) = inputs.copies {
            manifest.copies = copies
                .iter()
                .filter(|c| !c["bytes"].is_null())
                .filter_map(|c| c["store"].as_str().map(String::from))
                .collect();
            manifest.missing_copies = copies
                .iter()
                .filter(|c| c["bytes"].is_null())
                .filter_map(|c| {
                    let store = c["store"].as_str()?;
                    Some(match c["error"].as_str() {
                        Some(why) => format!("{store} ({why})"),
                        None => store.to_string(),
                    })
                })
                .collect();
        }
        let landed = write_manifest(&self.services, &manifest).await?;
        Ok(json!({
            "id": manifest.id,
            "status": manifest.status,
            "manifest_stores": landed,
            "copies": manifest.copies,
            "missing_copies": manifest.missing_copies,
            "results": { "backup": manifest.id, "backup_status": manifest.status },
        }))
    }
}

static MARK: ActivitySpec = ActivitySpec {
    name: "mark_backup",
    summary: "record a drill's verdict (VERIFIED or FAILED) in a backup's manifest",
    inputs: &[
        InputSpec {
            name: "id",
            required: true,
            help: "backup id",
        },
        InputSpec {
            name: "status",
            required: true,
            help: "VERIFIED or FAILED",
        },
        InputSpec {
            name: "restore_seconds",
            required: false,
            help: "measured restore time",
        },
        InputSpec {
            name: "error",
            required: false,
            help: "what was wrong",
        },
    ],
    outputs: &["id", "status", "manifest_stores", "results"],
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkInputs {
    id: String,
    status: String,
    restore_seconds: Option<f64>,
    error: Option<String>,
}

/// The `mark_backup` activity.
pub struct MarkBackup {
    services: Arc<Services>,
}

impl MarkBackup {
    /// The activity over these services.
    pub fn new(services: Arc<Services>) -> Self {
        Self { services }
    }
}

#[async_trait]
impl Activity for MarkBackup {
    fn spec(&self) -> &'static ActivitySpec {
        &MARK
    }

    fn check_inputs(&self, inputs: &Value) -> Result<(), String> {
        match inputs.get("status").and_then(Value::as_str) {
            Some(s) if !s.contains("${") && s != status::VERIFIED && s != status::FAILED => {
                Err(format!("status \"{s}\" is not VERIFIED or FAILED"))
            }
            _ => Ok(()),
        }
    }

    async fn run(&self, ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: MarkInputs = inputs::parse("mark_backup", inputs)?;
        let mut manifest = find_manifest(&self.services, &inputs.id)
            .await?
            .ok_or_else(|| ActivityError::permanent(format!("no backup with id {}", inputs.id)))?;
        manifest.status = inputs.status.clone();
        manifest.verification = Some(Verification {
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            run: ctx.run_id.clone(),
            restore_seconds: inputs.restore_seconds,
            error: inputs.error,
        });
        let landed = write_manifest(&self.services, &manifest).await?;
        Ok(json!({
            "id": manifest.id,
            "status": manifest.status,
            "manifest_stores": landed,
            "results": { "backup": manifest.id, "verdict": manifest.status },
        }))
    }
}

static SELECT: ActivitySpec = ActivitySpec {
    name: "select_backup",
    summary: "choose the backup to restore and check it can be (present, key works, disk space)",
    inputs: &[
        InputSpec {
            name: "database",
            required: true,
            help: "database whose backup to use",
        },
        InputSpec {
            name: "id",
            required: false,
            help: "a backup id (default: the latest VERIFIED)",
        },
        InputSpec {
            name: "verified_only",
            required: false,
            help: "only VERIFIED backups (default true; an explicit id is always allowed)",
        },
        InputSpec {
            name: "workdir",
            required: false,
            help: "where the backup will be downloaded (checked for free space)",
        },
        InputSpec {
            name: "stream",
            required: false,
            help: "the restore streams table data from the backup: the free-space check leaves out the plain archive (default false)",
        },
    ],
    outputs: &[
        "id",
        "key",
        "size",
        "sha256",
        "created_at",
        "age_seconds",
        "status",
        "format",
        "plaintext_size",
        "tables",
        "server_version",
        "checks",
        "store",
        "passed_over",
        "manifest",
    ],
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectInputs {
    database: String,
    id: Option<String>,
    #[serde(default, deserialize_with = "opt_bool")]
    verified_only: Option<bool>,
    workdir: Option<PathBuf>,
    #[serde(default, deserialize_with = "lenient_bool")]
    stream: bool,
}

fn opt_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    lenient_bool(d).map(Some)
}

/// The `select_backup` activity.
pub struct SelectBackup {
    services: Arc<Services>,
}

impl SelectBackup {
    /// The activity over these services.
    pub fn new(services: Arc<Services>) -> Self {
        Self { services }
    }
}

#[async_trait]
impl Activity for SelectBackup {
    fn spec(&self) -> &'static ActivitySpec {
        &SELECT
    }

    async fn run(&self, _ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: SelectInputs = inputs::parse("select_backup", inputs)?;
        let catalog = self.services.catalog()?;
        if catalog.is_empty() {
            catalog.sync(&self.services.stores).await.map_err(|e| {
                ActivityError::retryable(format!(
                    "the catalog is empty and cannot be rebuilt from the stores: {e}"
                ))
            })?;
        }
        let all = catalog
            .list(Some(&inputs.database))
            .map_err(|e| ActivityError::retryable(e.to_string()))?;
        let manifest = choose(
            &all,
            &inputs.database,
            inputs.id.as_deref(),
            inputs.verified_only.unwrap_or(true),
        )
        .map_err(|e| ActivityError::refused(e.to_string()))?;

        // Plans before actions: everything checkable is checked now, not after an hour.
        // Every store is an equal source: a bad copy is passed over, as the download does.
        let mut checks = Vec::new();
        let keys = self
            .services
            .keys()
            .map_err(|e| ActivityError::refused(e.to_string()))?;
        let copy = find_good_copy(&self.services.stores, &manifest, &keys)
            .await
            .map_err(|e| {
                if e.resume_can_help() {
                    ActivityError::retryable(e.to_string())
                } else {
                    ActivityError::refused(e.to_string())
                }
            })?;
        for bad in &copy.passed_over {
            checks.push(format!("passed over {bad}"));
        }
        checks.push(format!(
            "present in {} ({} bytes)",
            copy.store.name(),
            manifest.size
        ));
        match (&copy.key_id, manifest.format.as_str()) {
            (Some(key), "chunked") => checks.push(format!("key {key} decrypts its index")),
            _ => checks
                .push("legacy single-token file: the key is checked when it is decrypted".into()),
        }
        if let Some(dir) = &inputs.workdir {
            std::fs::create_dir_all(dir).map_err(|e| {
                ActivityError::refused(format!(
                    "cannot create the work directory {}: {e}; pass a writable one with -p workdir=DIR",
                    dir.display()
                ))
            })?;
            let free = crate::size::free_bytes(dir).map_err(|e| {
                ActivityError::retryable(format!(
                    "cannot check free space in {}: {e}",
                    dir.display()
                ))
            })?;
            // A streamed restore never writes the plain archive out.
            let streamed = inputs.stream
                && manifest.data_blocks.as_deref().is_some_and(|blocks| {
                    worth_streaming(blocks, chunked::DEFAULT_CHUNK_SIZE as u64)
                });
            let needed = if streamed {
                manifest.size + (1 << 20)
            } else {
                manifest.size + manifest.plaintext_size.unwrap_or(manifest.size * 4)
            };
            if free < needed {
                return Err(ActivityError::retryable(format!(
                    "{} has {} MiB free; the backup{} need about {} MiB: free space there and `lazarus resume`, or start again with -p workdir=DIR on a larger disk",
                    dir.display(),
                    free >> 20,
                    if streamed {
                        ""
                    } else {
                        " and its restored dump"
                    },
                    needed >> 20
                )));
            }
            checks.push(format!("{} MiB free in {}", free >> 20, dir.display()));
        }
        let age = chrono::DateTime::parse_from_rfc3339(&manifest.created_at)
            .map(|t| {
                (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_milliseconds() as f64
                    / 1000.0
            })
            .unwrap_or(-1.0);
        Ok(json!({
            "id": manifest.id,
            "key": manifest.key,
            "size": manifest.size,
            "sha256": manifest.sha256,
            "created_at": manifest.created_at,
            "age_seconds": age,
            "status": manifest.status,
            "format": manifest.format,
            "plaintext_size": manifest.plaintext_size,
            "tables": manifest.tables,
            "server_version": manifest.server_version,
            "checks": checks,
            "store": copy.store.name(),
            "passed_over": copy.passed_over.iter().map(|b| json!({"store": b.store, "problem": b.problem.to_string()})).collect::<Vec<_>>(),
            "manifest": manifest,
        }))
    }
}
