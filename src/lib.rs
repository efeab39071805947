//! Lazarus: a durable runbook engine that recovers PostgreSQL from disaster.
//!
//! A recovery is a run of a workflow (TOML, in `workflows/`); each step is an idempotent
//! activity whose result is journaled, so a crashed, killed or halted recovery resumes from
//! the last completed step.

pub mod activities;
pub mod allocator;
pub mod api;
pub mod catalog;
pub mod cli;
pub mod codec;
pub mod compose;
pub mod config;
pub mod crypto;
pub mod engine;
pub mod k8s;
pub mod lease;
pub mod mirror;
pub mod ops;
pub mod owner;
pub mod parallel;
pub mod pg;
pub mod runbooks;
pub mod size;
pub mod storage;
pub mod telemetry;
pub mod userfile;
pub mod wal;
