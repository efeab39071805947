//! Which backup a recovery restores: the one named, or the newest VERIFIED (or, when asked,
//! the newest not FAILED). A wrong choice is the run's own input, so it is refused with
//! what there is instead.

use super::{Manifest, status};

/// No backup fits what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChooseError {
    /// The id names no backup of the database.
    #[error(
        "unknown backup id {id} for database {database}{}; `lazarus backups --database {database}` lists them",
        latest_ids(.latest)
    )]
    UnknownId {
        /// The id asked for.
        id: String,
        /// The database.
        database: String,
        /// The newest backups there are, newest first.
        latest: Vec<String>,
    },
    /// The database has no backup of the kind asked for.
    #[error(
        "no {} backup of database {database} ({total} backups: {unverified} unverified, {failed} failed); {}",
        if *.verified_only { "VERIFIED" } else { "usable" },
        advice(.database, *.total)
    )]
    NoneUsable {
        /// The database.
        database: String,
        /// Only VERIFIED backups were acceptable.
        verified_only: bool,
        /// Backups of the database.
        total: usize,
        /// Of them, not yet drilled.
        unverified: usize,
        /// Of them, failed their drill.
        failed: usize,
    },
}

fn latest_ids(ids: &[String]) -> String {
    if ids.is_empty() {
        " (it has no backups; is the database name right? `lazarus backups` lists every database)"
            .to_string()
    } else {
        format!(" (latest: {})", ids.join(", "))
    }
}

fn advice(database: &str, total: usize) -> String {
    if total == 0 {
        format!(
            "is the database name right? `lazarus backups` lists every database; `lazarus backup --database {database}` makes one"
        )
    } else {
        format!(
            "run `lazarus drill --database {database}` to verify one, or pick one with `recover --backup ID` (`lazarus backups --database {database}` lists them)"
        )
    }
}

/// Picks from `all` (one database's manifests, oldest first): `id` when given, else the
/// newest VERIFIED one — or, with `verified_only` false, the newest that did not fail.
pub fn choose(
    all: &[Manifest],
    database: &str,
    id: Option<&str>,
    verified_only: bool,
) -> Result<Manifest, ChooseError> {
    if let Some(id) = id.filter(|id| !id.is_empty()) {
        return all
            .iter()
            .find(|m| m.id == id)
            .cloned()
            .ok_or_else(|| ChooseError::UnknownId {
                id: id.to_string(),
                database: database.to_string(),
                latest: all.iter().rev().take(5).map(|m| m.id.clone()).collect(),
            });
    }
    all.iter()
        .rev()
        .find(|m| m.status == status::VERIFIED || (!verified_only && m.status != status::FAILED))
        .cloned()
        .ok_or_else(|| {
            let count = |s: &str| all.iter().filter(|m| m.status == s).count();
            ChooseError::NoneUsable {
                database: database.to_string(),
                verified_only,
                total: all.len(),
                unverified: count(status::UNVERIFIED),
                failed: count(status::FAILED),
            }
        })
}
