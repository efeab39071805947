//! The runbook activities: one file each. They depend on the engine's `Activity` trait; the
//! engine never depends on them.

pub mod approve;
pub mod command;
pub mod http_check;
mod inputs;
pub mod notify;
pub mod supervise;
mod web;

use std::sync::Arc;

use crate::engine::Registry;

/// The product registry: every real activity a runbook may use.
pub fn builtin_registry() -> Registry {
    let mut registry = Registry::new();
    registry.register(Arc::new(command::CommandActivity));
    registry.register(Arc::new(http_check::HttpCheck));
    registry.register(Arc::new(approve::Approve));
    registry.register(Arc::new(notify::Notify));
    registry
}
