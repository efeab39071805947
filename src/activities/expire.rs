//! `expire_backups`: the retention policy carried out (see [`crate::catalog::expire`]). The
//! removal is decided once and checkpointed, so a resumed run removes the same backups.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::inputs::{self, lenient_bool};
use super::services::Services;
use crate::catalog::expire::{
    Removal, decide, removal, remove_backups, remove_wal, wal_to_remove, window_left,
};
use crate::engine::{Activity, ActivityContext, ActivityError, ActivitySpec, InputSpec};

static SPEC: ActivitySpec = ActivitySpec {
    name: "expire_backups",
    summary: "remove backups outside the retention window and the WAL no kept base backup needs",
    inputs: &[
        InputSpec {
            name: "dry_run",
            required: false,
            help: "true: say what would go, remove nothing",
        },
        InputSpec {
            name: "only",
            required: false,
            help: "one database or WAL archive (default: all)",
        },
    ],
    outputs: &["groups", "removed", "wal_removed", "windows", "results"],
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inputs {
    #[serde(default, deserialize_with = "lenient_bool")]
    dry_run: bool,
    #[serde(default)]
    only: Option<String>,
}

/// The `expire_backups` activity.
pub struct ExpireBackups {
    services: Arc<Services>,
}

impl ExpireBackups {
    /// The activity over these services.
    pub fn new(services: Arc<Services>) -> Self {
        Self { services }
    }
}

#[async_trait]
impl Activity for ExpireBackups {
    fn spec(&self) -> &'static ActivitySpec {
        &SPEC
    }

    async fn run(&self, ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: Inputs = inputs::parse("expire_backups", inputs)?;
        let only = inputs.only.filter(|o| !o.is_empty());
        let services = Arc::clone(&self.services);
        let Some(config) = services.retention.clone() else {
            return Err(ActivityError::refused(
                "no retention is configured: add to lazarus.toml\n  [retention]\n  recovery_window = \"30d\"\n  min_backups = 2\n(and [retention.databases.NAME] / [retention.archives.NAME] for their own)",
            ));
        };
        let catalog = services.catalog()?;
        catalog.sync(&services.stores).await.map_err(|e| {
            ActivityError::retryable(format!("cannot read the backups in the stores: {e}"))
        })?;
        let manifests = catalog
            .list(None)
            .map_err(|e| ActivityError::retryable(e.to_string()))?;
        let groups = decide(&manifests, &config, only.as_deref(), chrono::Utc::now())
            .map_err(ActivityError::refused)?;
        if groups.is_empty() {
            return Err(ActivityError::refused(format!(
                "no recovery window applies to {}: set [retention] recovery_window (or one for it)",
                only.as_deref().unwrap_or("any database or archive")
            )));
        }
        let wal = services.wal_catalog()?;
        let archives: Vec<String> = groups
            .iter()
            .filter(|g| g.kind == "archive")
            .map(|g| g.name.clone())
            .collect();
        for archive in &archives {
            wal.sync(&services.stores, archive)
                .await
                .map_err(|e| ActivityError::retryable(e.to_string()))?;
        }
        // Decided once: a resumed run removes what its first attempt decided.
        let planned: Removal = match ctx.last_checkpoint::<Removal>() {
            Some(planned) => planned,
            None => {
                let planned = removal(&groups);
                if !inputs.dry_run {
                    ctx.checkpoint(&planned).await?;
                }
                planned
            }
        };
        let mut wal_files = Vec::new();
        for (archive, below) in &planned.wal_below {
            let files = wal_to_remove(wal, archive, *below).map_err(ActivityError::retryable)?;
            wal_files.push((archive.clone(), files));
        }
        let (mut removed, mut wal_removed, mut failures) = (Vec::new(), 0, Vec::new());
        if !inputs.dry_run {
            let (gone, failed) =
                remove_backups(&services.stores, catalog, &manifests, &planned.backups).await;
            removed = gone;
            failures.extend(failed);
            for (archive, files) in &wal_files {
                let (gone, failed) = remove_wal(&services.stores, wal, archive, files).await;
                wal_removed += gone;
                failures.extend(failed);
            }
            if !failures.is_empty() {
                return Err(ActivityError::retryable(format!(
                    "{} removals failed (resume retries them): {}",
                    failures.len(),
                    failures.join("; ")
                )));
            }
        }
        let left = catalog
            .list(None)
            .map_err(|e| ActivityError::retryable(e.to_string()))?;
        let kept_after: Vec<_> = if inputs.dry_run {
            left.into_iter()
                .filter(|m| !planned.backups.contains(&m.id))
                .collect()
        } else {
            left
        };
        let windows: serde_json::Map<String, Value> = groups
            .iter()
            .filter(|g| g.kind == "archive")
            .map(|g| {
                (
                    g.name.clone(),
                    json!(window_left(wal, &g.name, &kept_after)),
                )
            })
            .collect();
        let would = wal_files.iter().map(|(_, f)| f.len()).sum::<usize>();
        Ok(json!({
            "dry_run": inputs.dry_run,
            "groups": groups,
            "removed": if inputs.dry_run { json!([]) } else { json!(removed) },
            "wal_removed": wal_removed,
            "windows": windows,
            "results": {
                "to_remove": groups
                    .iter()
                    .flat_map(|g| g.expiry.remove.iter().map(|v| format!("{} ({})", v.id, v.why)))
                    .collect::<Vec<_>>(),
                "backups_removed": if inputs.dry_run { 0 } else { removed.len() },
                "backups_to_remove": planned.backups.len(),
                "wal_files_to_remove": would,
                "pitr_windows": windows,
            },
        }))
    }
}
