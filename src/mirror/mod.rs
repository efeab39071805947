//! Runs' journals kept in the stores, so a run outlives the host that drives it: where the
//! copies live (`runs/RUN/`), how they are written and read back, and the lease that lets
//! one host at a time drive a run.
//!
//! Layout in every store:
//!
//! * `runs/RUN/run` — the run's record with its pinned workflow, written once;
//! * `runs/RUN/events/NNNNNNNNNN` — immutable batches of events, named by the index of their
//!   first event, created only if absent (two hosts can never both write one index);
//! * `runs/RUN/lease` — who drives the run (in the first store that takes it), JSON;
//! * `targets/NAME/lease` — which run holds a recovery target, on any host, JSON.
//!
//! Records and batches use the journal's own encoding ([`crate::engine::records`]).

pub mod lease;
pub mod prune;
pub mod publish;
pub mod read;

pub use lease::StoreLeases;
pub use publish::StoreMirror;

/// Where runs are kept in a store.
pub const RUNS_PREFIX: &str = "runs/";

/// The key of a run's record.
pub fn record_key(run: &str) -> String {
    format!("{RUNS_PREFIX}{run}/run")
}

/// The prefix of a run's event batches.
pub fn events_prefix(run: &str) -> String {
    format!("{RUNS_PREFIX}{run}/events/")
}

/// The key of the batch whose first event has index `first`.
pub fn batch_key(run: &str, first: usize) -> String {
    format!("{}{first:010}", events_prefix(run))
}

/// The key of a run's lease.
pub fn lease_key(run: &str) -> String {
    format!("{RUNS_PREFIX}{run}/lease")
}

/// The key of a target's lease: a readable form of the target and a short hash of it, so
/// two targets never share one and no target can name a path outside `targets/`.
pub fn target_lease_key(target: &str) -> String {
    use sha2::Digest;
    let readable: String = target
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(60)
        .collect();
    let hash = hex::encode(&sha2::Sha256::digest(target.as_bytes())[..4]);
    format!("targets/{readable}-{hash}/lease")
}

/// The first event index of a batch, from its key.
pub fn batch_first(key: &str) -> Option<usize> {
    key.rsplit('/').next()?.parse().ok()
}

/// The run a key under [`RUNS_PREFIX`] belongs to.
pub fn run_of(key: &str) -> Option<&str> {
    key.strip_prefix(RUNS_PREFIX)?.split('/').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_run_and_batches_sort_by_index() {
        assert_eq!(batch_key("dr-1", 12), "runs/dr-1/events/0000000012");
        assert_eq!(batch_first(&batch_key("dr-1", 12)), Some(12));
        assert!(batch_key("r", 9) < batch_key("r", 10));
        assert_eq!(run_of(&lease_key("dr-1")), Some("dr-1"));
        assert_eq!(run_of("backups/x"), None);
        let shop = target_lease_key("backup:shop");
        assert!(shop.starts_with("targets/backup-shop-"), "{shop}");
        assert_ne!(shop, target_lease_key("backup/shop"));
        assert!(!target_lease_key("../x").contains(".."));
    }
}
