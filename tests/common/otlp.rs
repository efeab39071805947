//! A real OTLP/HTTP receiver: `POST /v1/traces` with protobuf bodies, decoded with the
//! OpenTelemetry protocol's own message types; the spans are kept for the test.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message;

/// One span as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub trace_id: String,
    pub span_id: String,
    pub parent: String,
    pub name: String,
    pub attributes: BTreeMap<String, String>,
    /// Each event's name and attributes.
    pub events: Vec<(String, BTreeMap<String, String>)>,
    /// 0 unset, 1 ok, 2 error.
    pub status: i32,
    pub service: String,
}

/// The receiver; its spans arrive as the exporter sends them.
pub struct Otlp {
    pub spans: Arc<Mutex<Vec<Received>>>,
    pub addr: std::net::SocketAddr,
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(
    list: &[opentelemetry_proto::tonic::common::v1::KeyValue],
) -> BTreeMap<String, String> {
    list.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

impl Otlp {
    pub fn start() -> Self {
        let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
        let kept = Arc::clone(&spans);
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let kept = Arc::clone(&kept);
                async move {
                    let request = ExportTraceServiceRequest::decode(body.as_ref())
                        .expect("an OTLP protobuf trace request");
                    let mut kept = kept.lock().expect("spans");
                    for resource in request.resource_spans {
                        let service = resource
                            .resource
                            .as_ref()
                            .map(|r| attributes(&r.attributes))
                            .and_then(|a| a.get("service.name").cloned())
                            .unwrap_or_default();
                        for scope in resource.scope_spans {
                            for span in scope.spans {
                                kept.push(Received {
                                    trace_id: hex::encode(&span.trace_id),
                                    span_id: hex::encode(&span.span_id),
                                    parent: hex::encode(&span.parent_span_id),
                                    name: span.name.clone(),
                                    attributes: attributes(&span.attributes),
                                    events: span
                                        .events
                                        .iter()
                                        .map(|e| (e.name.clone(), attributes(&e.attributes)))
                                        .collect(),
                                    status: span.status.as_ref().map_or(0, |s| s.code),
                                    service: service.clone(),
                                });
                            }
                        }
                    }
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }),
        );
        let addr = super::http_server(app);
        Otlp { spans, addr }
    }

    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().expect("spans").clone()
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}
