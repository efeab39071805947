//! OpenTelemetry traces of runs, exported over OTLP/HTTP (protobuf) when an endpoint is
//! configured: `[telemetry] otlp_endpoint`, or the standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (with the other standard `OTEL_*` variables:
//! headers, timeout, service name, batch delay). Unset, nothing is built and nothing is
//! exported.
//!
//! One trace per run: the run span (its id journaled with the trace id when the run was
//! created) is the parent of a span per step, each the parent of a span per attempt. The
//! step and attempt spans are the engine's `tracing` spans, turned into OpenTelemetry spans
//! by tracing-opentelemetry; the run span is sent when the run ends, by whichever process
//! ends it, from the run's creation — so a run killed and resumed elsewhere is still one
//! trace.

use std::cell::Cell;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider, Tracer};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::engine::records::RunRecord;
use crate::engine::state::RunState;
use crate::engine::trace::{RunTracer, TRACE_TARGET, TraceIds};

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("OpenTelemetry: {0}")]
pub struct TelemetryError(String);

/// The configured exporter, for the life of the process.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: Tracer,
}

static INSTALLED: OnceLock<Arc<Telemetry>> = OnceLock::new();

thread_local! {
    /// Ids the next span built on this thread must have (the journaled run span's).
    static FIXED_IDS: Cell<Option<TraceIds>> = const { Cell::new(None) };
}

/// Random ids, except for the run span, whose ids were journaled when the run was created.
#[derive(Debug, Default)]
struct JournaledIds(RandomIdGenerator);

impl IdGenerator for JournaledIds {
    fn new_trace_id(&self) -> TraceId {
        match FIXED_IDS.with(Cell::get) {
            Some(ids) => TraceId::from_bytes(ids.trace_id),
            None => self.0.new_trace_id(),
        }
    }

    fn new_span_id(&self) -> SpanId {
        match FIXED_IDS.with(Cell::get) {
            Some(ids) => SpanId::from_bytes(ids.span_id),
            None => self.0.new_span_id(),
        }
    }
}

/// The endpoint the configuration or the environment names, if any (and telemetry is not
/// switched off with `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`).
fn wanted(configured: Option<&str>) -> Option<Option<String>> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return None;
    }
    if let Some(endpoint) = configured.map(str::trim).filter(|e| !e.is_empty()) {
        return Some(Some(traces_url(endpoint)));
    }
    // The exporter reads these itself (adding /v1/traces to the general one).
    (env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some())
    .then_some(None)
}

/// `http://collector:4318` → `http://collector:4318/v1/traces`, as the standard variable
/// is read; a URL with a path is used as written.
fn traces_url(endpoint: &str) -> String {
    let after_scheme = endpoint.find("://").map_or(0, |i| i + 3);
    match endpoint[after_scheme..].find('/') {
        Some(i) if after_scheme + i + 1 < endpoint.len() => endpoint.to_string(),
        _ => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
    }
}

impl Telemetry {
    /// Sets up the exporter when an endpoint is configured; `Ok(None)` when none is.
    pub fn from_config(otlp_endpoint: Option<&str>) -> Result<Option<Self>, TelemetryError> {
        let Some(endpoint) = wanted(otlp_endpoint) else {
            return Ok(None);
        };
        let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
        if let Some(endpoint) = endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let exporter = builder
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build()
            .map_err(|e| TelemetryError(e.to_string()))?;
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("lazarus");
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_id_generator(JournaledIds::default())
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("lazarus");
        Ok(Some(Self { provider, tracer }))
    }

    /// The `tracing` layer that exports the engine's step and attempt spans (and nothing
    /// else: the process's logs stay logs).
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use tracing_subscriber::Layer as _;
        tracing_opentelemetry::layer()
            .with_tracer(self.tracer.clone())
            .with_location(false)
            .with_threads(false)
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target(TRACE_TARGET, tracing::Level::INFO),
            )
    }

    /// Makes this the process's telemetry, for owners to hand to their engines.
    pub fn install(self) -> Arc<Self> {
        let me = Arc::new(self);
        let _ = INSTALLED.set(Arc::clone(&me));
        me
    }

    /// Sends what is still queued and stops the exporter (at the end of the process).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            eprintln!("warning: OpenTelemetry spans may not all have been sent: {e}");
        }
    }
}

/// The process's telemetry as the engine's tracer, if it was installed.
pub fn installed() -> Option<Arc<dyn RunTracer>> {
    INSTALLED.get().map(|t| Arc::clone(t) as Arc<dyn RunTracer>)
}

fn run_context(ids: &TraceIds) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_bytes(ids.trace_id),
        SpanId::from_bytes(ids.span_id),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

fn system_time(us: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

impl RunTracer for Telemetry {
    fn adopt(&self, span: &tracing::Span, ids: &TraceIds) {
        if span.is_disabled() {
            return;
        }
        if let Err(e) = span.set_parent(run_context(ids)) {
            tracing::debug!(error = %e, "a step span could not join its run's trace");
        }
    }

    fn run_ended(&self, ids: &TraceIds, record: &RunRecord, state: &RunState) {
        let status = state.status.as_str();
        let mut attributes = vec![
            KeyValue::new("lazarus.run", record.id.clone()),
            KeyValue::new("lazarus.workflow", record.workflow_name.clone()),
            KeyValue::new("lazarus.outcome", status),
            KeyValue::new("lazarus.operator", record.operator.clone()),
        ];
        if let Some(target) = &record.target {
            attributes.push(KeyValue::new("lazarus.target", target.clone()));
        }
        let ended = state.ended_us.unwrap_or_else(crate::engine::clock::now_us);
        FIXED_IDS.with(|f| f.set(Some(*ids)));
        let mut span = self
            .tracer
            .span_builder(format!("run {}", record.workflow_name))
            .with_kind(SpanKind::Internal)
            .with_start_time(system_time(record.created_at_us))
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &Context::new());
        FIXED_IDS.with(|f| f.set(None));
        if let Some(error) = &state.error {
            span.set_status(Status::error(error.clone()));
        }
        span.end_with_timestamp(system_time(ended));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_endpoint_gets_the_traces_path() {
        assert_eq!(
            traces_url("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://otel.example/custom/traces"),
            "https://otel.example/custom/traces"
        );
    }

    #[test]
    fn the_run_span_gets_its_journaled_ids_and_nothing_else_does() {
        let ids = TraceIds::random();
        let generator = JournaledIds::default();
        FIXED_IDS.with(|f| f.set(Some(ids)));
        assert_eq!(generator.new_trace_id(), TraceId::from_bytes(ids.trace_id));
        assert_eq!(generator.new_span_id(), SpanId::from_bytes(ids.span_id));
        FIXED_IDS.with(|f| f.set(None));
        assert_ne!(generator.new_span_id(), SpanId::from_bytes(ids.span_id));
    }
}
