//! Logs and traces. Logs go to stderr, human-readable or JSON (`--log-format json`).
//! When `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are also exported with OTLP/gRPC
//! (otherwise there is no exporter at all).
//!
//! Spans follow a delivery through the cluster: `webhook` (gateway) → `raft.write`
//! (propose / forward, until commit) → `job` (a worker running its lease) →
//! complete. The W3C `traceparent` of the `webhook` span is stored with the event and
//! handed out in every `Lease`, so external workers can continue the trace.

use std::collections::HashMap;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Keeps the trace exporter alive; flushes it when dropped.
#[derive(Default)]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Install the global subscriber: `RUST_LOG` (else `level`) filters; `json` picks the
/// log format; an OTLP exporter is added when `otlp_endpoint` (normally
/// `OTEL_EXPORTER_OTLP_ENDPOINT`) is given. Does nothing if a subscriber is set.
pub fn init(level: &str, json: bool, otlp_endpoint: Option<&str>) -> Telemetry {
    use std::io::IsTerminal as _;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let fmt = if json { fmt.json().boxed() } else { fmt.boxed() };
    let mut telemetry = Telemetry::default();
    let otel = otlp_endpoint.filter(|e| !e.is_empty()).and_then(|endpoint| {
        let exporter = match opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint).build() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}: cannot build the exporter ({e}); traces are not exported");
                return None;
            }
        };
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(opentelemetry_sdk::Resource::builder().with_service_name("aof-cluster").build())
            .build();
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        let tracer = provider.tracer("aof-cluster");
        telemetry.provider = Some(provider);
        Some(tracing_opentelemetry::layer().with_tracer(tracer))
    });
    let _ = tracing_subscriber::registry().with(filter).with(fmt).with(otel).try_init();
    telemetry
}

/// The W3C `traceparent` of the current span, if it is being traced.
pub fn current_traceparent() -> String {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return String::new();
    }
    format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8())
}

/// Make `span` a child of the remote context in `traceparent` (if any).
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    let _ = span.set_parent(parent);
}
