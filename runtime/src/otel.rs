//! OpenTelemetry traces of an event's journey (docs/observability.md): off unless `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, then exported over OTLP HTTP/protobuf with the standard
//! `OTEL_*` variables. Trace context crosses process boundaries as a W3C `traceparent`: a Kafka record header into
//! ingest, the envelope into the edge.
//!
//! With tracing off, [`enabled`] is one relaxed atomic load and nothing else runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

pub use opentelemetry::KeyValue;
use opentelemetry::propagation::TextMapPropagator as _;
pub use opentelemetry::trace::SpanKind;
use opentelemetry::trace::{TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, global};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;

use crate::Error;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";

/// Whether spans are recorded in this process.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Turns tracing on when an OTLP endpoint is configured, exporting as `service` (unless `OTEL_SERVICE_NAME` says
/// otherwise). Returns the provider, to flush and shut it down at exit.
pub fn init_from_env(service: &'static str) -> Result<Option<SdkTracerProvider>, Error> {
    let configured = |key: &str| std::env::var(key).is_ok_and(|v| !v.trim().is_empty());
    if !configured("OTEL_EXPORTER_OTLP_ENDPOINT")
        && !configured("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    {
        return Ok(None);
    }
    let named = configured("OTEL_SERVICE_NAME");
    // The blocking HTTP client must not be built on an async runtime's thread.
    let provider = std::thread::spawn(move || {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| Error::Telemetry(format!("OTLP exporter: {e}")))?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if !named {
            resource = resource.with_service_name(service);
        }
        Ok::<_, Error>(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource.build())
                .build(),
        )
    })
    .join()
    .map_err(|_| Error::Telemetry("OTLP exporter set-up panicked".into()))??;
    install(provider.clone());
    Ok(Some(provider))
}

/// Records spans with `provider` from now on (also how tests install an in-memory exporter).
pub fn install(provider: SdkTracerProvider) {
    global::set_text_map_propagator(TraceContextPropagator::new());
    global::set_tracer_provider(provider);
    ENABLED.store(true, Ordering::Relaxed);
}

/// One event's span in this process, or nothing when tracing is off. Spans are bookkeeping, not content: any two
/// compare equal, so values that carry one keep their equality.
#[derive(Clone, Default)]
pub struct EventSpan(Option<Context>);

impl std::fmt::Debug for EventSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(cx) => write!(f, "EventSpan({})", cx.span().span_context().trace_id()),
            None => f.write_str("EventSpan(off)"),
        }
    }
}

impl PartialEq for EventSpan {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for EventSpan {}

impl EventSpan {
    /// Starts span `name` (of `kind`) as a child of the W3C `traceparent` given (a new trace when it is absent or
    /// invalid). Nothing when tracing is off.
    pub fn start(
        name: &'static str,
        kind: SpanKind,
        traceparent: Option<&str>,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Self {
        if !enabled() {
            return Self(None);
        }
        let parent = match traceparent {
            Some(tp) => {
                let carrier = HashMap::from([(TRACEPARENT.to_owned(), tp.to_owned())]);
                TraceContextPropagator::new().extract(&carrier)
            }
            None => Context::new(),
        };
        let tracer = global::tracer("ces");
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes())
            .start_with_context(&tracer, &parent);
        Self(Some(parent.with_span(span)))
    }

    /// The span's `traceparent`, to pass on; empty when tracing is off.
    pub fn traceparent(&self) -> String {
        let Some(cx) = &self.0 else {
            return String::new();
        };
        let mut carrier: HashMap<String, String> = HashMap::new();
        TraceContextPropagator::new().inject_context(cx, &mut carrier);
        carrier.remove(TRACEPARENT).unwrap_or_default()
    }

    /// Ends the span, adding `attributes` first.
    pub fn end(&self, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if let Some(cx) = &self.0 {
            let span = cx.span();
            for attribute in attributes() {
                span.set_attribute(attribute);
            }
            span.end();
        }
    }
}

/// The trace id of a `traceparent` (`00-<trace id>-<span id>-<flags>`), if it is well-formed.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_version, trace_id) = (parts.next()?, parts.next()?);
    (trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(trace_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_are_read_only_from_well_formed_traceparents() {
        assert_eq!(
            trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id_of("00-xyz-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id_of(""), None);
    }
}
