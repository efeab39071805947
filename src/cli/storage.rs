//! `storage check` and `storage ls`: are the stores reachable and writable, what do they hold.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use bytes::Bytes;
use clap::Subcommand;
use serde::Serialize;
use tokio::io::AsyncReadExt;

use super::Context;
use crate::storage::{Body, ObjectStore};

/// `lazarus storage ...`.
#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// Say which stores are reachable and writable (writes, reads back and deletes a probe).
    Check {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List objects.
    Ls {
        /// Key prefix.
        #[arg(default_value = "")]
        prefix: String,
        /// Only this store (default: the first that answers).
        #[arg(long)]
        store: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Serialize)]
struct CheckRow {
    store: String,
    location: String,
    reachable: bool,
    writable: bool,
    milliseconds: u128,
    error: Option<String>,
}

async fn check_one(store: &dyn ObjectStore) -> CheckRow {
    let started = Instant::now();
    let mut row = CheckRow {
        store: store.name().to_string(),
        location: store.describe(),
        reachable: false,
        writable: false,
        milliseconds: 0,
        error: None,
    };
    let probe = format!(".lazarus-probe/{}-{}", hostname(), std::process::id());
    let payload = Bytes::from(format!("lazarus storage check {}", chrono::Utc::now()));
    let result = async {
        store.list(".lazarus-probe/").await?;
        row.reachable = true;
        store.put(&probe, Body::Bytes(payload.clone())).await?;
        let mut back = Vec::new();
        store
            .get(&probe, 0, None)
            .await?
            .read_to_end(&mut back)
            .await
            .map_err(|e| crate::storage::StorageError::Transient {
                store: store.name().to_string(),
                message: format!("reading the probe back: {e}"),
            })?;
        store.delete(&probe).await?;
        if back != payload {
            return Err(crate::storage::StorageError::Permanent {
                store: store.name().to_string(),
                message: "the probe read back differs from what was written".into(),
            });
        }
        row.writable = true;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        row.error = Some(e.to_string());
    }
    row.milliseconds = started.elapsed().as_millis();
    row
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "host".into())
}

/// `lazarus storage`.
pub async fn storage(ctx: &Context, command: StorageCommand) -> Result<ExitCode> {
    let loaded = ctx.loaded_config()?;
    let stores = loaded.stores(&ctx.state)?;
    match command {
        StorageCommand::Check { json } => {
            let rows =
                futures::future::join_all(stores.stores().iter().map(|s| check_one(s.as_ref())))
                    .await;
            let all_ok = rows.iter().all(|r| r.writable);
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("configuration: {}", loaded.source);
                for r in &rows {
                    let state = match (r.reachable, r.writable) {
                        (true, true) => "ok: reachable and writable".to_string(),
                        (true, false) => format!(
                            "reachable, NOT writable: {}",
                            r.error.as_deref().unwrap_or("")
                        ),
                        _ => format!("UNREACHABLE: {}", r.error.as_deref().unwrap_or("")),
                    };
                    println!(
                        "  {:<10} {:<6}ms  {state}\n  {:<10} {}",
                        r.store, r.milliseconds, "", r.location
                    );
                }
            }
            Ok(if all_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        StorageCommand::Ls {
            prefix,
            store,
            json,
        } => {
            let chosen = match &store {
                Some(name) => stores
                    .only(std::slice::from_ref(name))
                    .map_err(anyhow::Error::msg)?,
                None => stores,
            };
            let mut last_error = None;
            for s in chosen.stores() {
                match s.list(&prefix).await {
                    Ok(objects) => {
                        if json {
                            println!("{}", serde_json::to_string_pretty(&objects)?);
                        } else {
                            println!("{} ({}):", s.name(), s.describe());
                            for o in objects {
                                println!(
                                    "  {:>14}  {}  {}",
                                    o.size,
                                    o.modified.unwrap_or_default(),
                                    o.key
                                );
                            }
                        }
                        return Ok(ExitCode::SUCCESS);
                    }
                    Err(e) => {
                        eprintln!("{e}; trying the next store");
                        last_error = Some(e);
                    }
                }
            }
            Err(anyhow::anyhow!(
                "no store could be listed{}",
                last_error.map(|e| format!(": {e}")).unwrap_or_default()
            ))
        }
    }
}
