//! Fencing across hosts: a claim on a recovery target that every host able to run
//! recoveries can see, beside the journal's own per-target lock (which only this state
//! directory sees).
//!
//! The engine asks for the claim before a run is created or resumed, checks it at every
//! step boundary, and lets it go when the run ends. What holds the claim (a Kubernetes
//! Lease, an object in a store) is the implementer's business; the engine knows none.

/// Why a claim was refused or lost, in words for the operator (names the holder).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FenceError {
    /// Another runner holds the target.
    #[error("{0}")]
    Held(String),
    /// The claim could not be checked (its service is unreachable).
    #[error("{0}")]
    Unavailable(String),
}

/// A cross-host claim on recovery targets, held by this process.
pub trait Fence: Send + Sync {
    /// Claims `target` for `run`, or renews this process's claim; refused while another
    /// runner holds it.
    fn claim(&self, target: &str, run: &str) -> Result<(), FenceError>;
    /// Whether this process still holds the claim it took for `run` (another runner may
    /// have taken the target after this one failed to renew it).
    fn check(&self, target: &str, run: &str) -> Result<(), FenceError>;
    /// Lets the claim go: the run has ended.
    fn release(&self, target: &str, run: &str);
    /// Stops holding the claim without letting it go: it lapses after its duration. For a
    /// run whose end could not be recorded where the next holder looks.
    fn abandon(&self, target: &str, run: &str) {
        self.release(target, run);
    }
    /// Claims `target` for `run` although `holder` still holds it: an operator's
    /// `resume --force HOLDER`, after making sure that runner is gone. Refused when anyone
    /// other than `holder` holds it.
    fn claim_over(&self, target: &str, run: &str, holder: &str) -> Result<(), FenceError>;
}

/// What a run is fenced under across hosts: its target, or, for a run without one, the
/// run itself (one driver per run either way).
pub fn claim_name(target: Option<&str>, run: &str) -> String {
    target.map_or_else(|| format!("run:{run}"), str::to_string)
}

/// Whether a claim is a run's own (it has no target): a fence that guards targets (one run
/// at a time on each) has nothing to guard for it.
pub fn is_run_claim(target: &str, run: &str) -> bool {
    target.strip_prefix("run:") == Some(run)
}
