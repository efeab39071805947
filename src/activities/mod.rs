//! The runbook activities: one file each. They depend on the engine's `Activity` trait; the
//! engine never depends on them.

pub mod approve;
pub mod archiving;
pub mod backups;
pub mod base_backup;
pub mod checks;
pub mod command;
pub mod cutover;
pub mod decompress;
pub mod decrypt;
pub mod download;
pub mod dump;
pub mod encrypt;
pub mod expire;
pub mod expire_runs;
pub mod files;
pub mod http_check;
pub mod import;
mod inputs;
pub mod notify;
pub mod pgbouncer;
pub mod pitr;
pub mod preflight;
pub mod report;
pub mod restart;
pub mod restore;
pub mod services;
mod streamed;
pub mod supervise;
pub mod upload;
pub mod wal_check;
mod web;

use std::sync::Arc;

use crate::engine::Registry;

pub use services::Services;

/// The product registry without configured stores or keys: enough to check workflows.
pub fn builtin_registry() -> Registry {
    registry(Arc::new(Services::default()))
}

/// The product registry: every real activity a runbook may use, over these services.
pub fn registry(services: Arc<Services>) -> Registry {
    let mut registry = Registry::new();
    registry.register(Arc::new(download::Download::new(Arc::clone(&services))));
    registry.register(Arc::new(decrypt::Decrypt::new(Arc::clone(&services))));
    registry.register(Arc::new(decompress::Decompress));
    registry.register(Arc::new(encrypt::Encrypt::new(Arc::clone(&services))));
    registry.register(Arc::new(upload::Upload::new(Arc::clone(&services))));
    registry.register(Arc::new(dump::Dump::new(Arc::clone(&services))));
    registry.register(Arc::new(base_backup::BaseBackup::new(Arc::clone(
        &services,
    ))));
    registry.register(Arc::new(pitr::PitrPlan::new(Arc::clone(&services))));
    registry.register(Arc::new(pitr::UnpackBaseBackup::new(Arc::clone(&services))));
    registry.register(Arc::new(pitr::StartRecovery::new(Arc::clone(&services))));
    registry.register(Arc::new(archiving::ReleaseArchiving::new(Arc::clone(
        &services,
    ))));
    registry.register(Arc::new(backups::PublishBackup::new(Arc::clone(&services))));
    registry.register(Arc::new(backups::MarkBackup::new(Arc::clone(&services))));
    registry.register(Arc::new(expire::ExpireBackups::new(Arc::clone(&services))));
    registry.register(Arc::new(expire_runs::ExpireRuns::new(Arc::clone(
        &services,
    ))));
    registry.register(Arc::new(wal_check::WalCheck::new(Arc::clone(&services))));
    registry.register(Arc::new(backups::SelectBackup::new(Arc::clone(&services))));
    registry.register(Arc::new(restore::Restore::new(Arc::clone(&services))));
    registry.register(Arc::new(restore::DropDatabase::new(Arc::clone(&services))));
    registry.register(Arc::new(checks::VerifyRestore::new(Arc::clone(&services))));
    registry.register(Arc::new(checks::SqlCheck::new(Arc::clone(&services))));
    registry.register(Arc::new(pgbouncer::Pgbouncer::new(Arc::clone(&services))));
    registry.register(Arc::new(cutover::Cutover::new(Arc::clone(&services))));
    registry.register(Arc::new(preflight::CheckRecovery::new(Arc::clone(
        &services,
    ))));
    registry.register(Arc::new(restart::RestartApp));
    registry.register(Arc::new(report::RecoveryReport));
    registry.register(Arc::new(import::InspectLegacy::new(Arc::clone(&services))));
    registry.register(Arc::new(command::CommandActivity));
    registry.register(Arc::new(http_check::HttpCheck));
    registry.register(Arc::new(approve::Approve));
    registry.register(Arc::new(notify::Notify));
    registry
}
