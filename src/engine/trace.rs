//! A run's place in a distributed trace, and the hook that exports it.
//!
//! The ids are journaled when the run is created, so every process that ever drives the
//! run — the first one, and the one that resumes it after a kill -9 — adds its spans to the
//! same trace under the same run span. The engine only makes `tracing` spans for steps and
//! attempts (target [`TRACE_TARGET`]) and hands them to a [`RunTracer`] to be placed in the
//! run's trace; what exports them (OpenTelemetry) is the tracer's business. Without a
//! tracer the spans are disabled callsites and cost nothing.

use super::records::RunRecord;
use super::state::RunState;

/// The `tracing` target of the engine's step and attempt spans and their events.
pub const TRACE_TARGET: &str = "lazarus::trace";

/// A run's trace id and the id of its own (root) span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceIds {
    /// The W3C trace id.
    pub trace_id: [u8; 16],
    /// The run span's id: the parent of every step span.
    pub span_id: [u8; 8],
}

impl TraceIds {
    /// Fresh random ids (never all zero, which W3C reserves).
    pub fn random() -> Self {
        let mut ids = Self {
            trace_id: rand::random(),
            span_id: rand::random(),
        };
        ids.trace_id[0] |= 1;
        ids.span_id[0] |= 1;
        ids
    }

    /// The trace id as 32 hex digits, as tracing backends show it.
    pub fn trace_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The run span's id as 16 hex digits.
    pub fn span_hex(&self) -> String {
        hex::encode(self.span_id)
    }

    /// Reads the journaled hex form; `None` if it is not 32 + 16 hex digits.
    pub fn from_hex(trace_id: &str, span_id: &str) -> Option<Self> {
        Some(Self {
            trace_id: hex::decode(trace_id).ok()?.try_into().ok()?,
            span_id: hex::decode(span_id).ok()?.try_into().ok()?,
        })
    }

    /// The journal event that records these ids.
    pub fn event(&self) -> super::records::Event {
        super::records::Event::Traced {
            trace_id: self.trace_hex(),
            span_id: self.span_hex(),
        }
    }
}

/// Places the engine's spans in their run's trace, and exports the run span itself.
pub trait RunTracer: Send + Sync {
    /// Makes `span` (a step's) a child of the run span of `ids`.
    fn adopt(&self, span: &tracing::Span, ids: &TraceIds);
    /// The run has ended: its span, from its creation to now, can be sent.
    fn run_ended(&self, ids: &TraceIds, record: &RunRecord, state: &RunState);
}
