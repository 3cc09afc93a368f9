//! W3C trace context over NATS (DESIGN §3): every publish, JetStream message and request
//! carries `traceparent`/`tracestate` headers, so one trace runs from a client's send through
//! the gateway, the stream, persistence and out through every delivering gateway.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, global};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct Inject<'a>(&'a mut HeaderMap);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct Extract<'a>(&'a HeaderMap);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Headers carrying the current span's context.
pub fn headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    inject(&tracing::Span::current(), &mut headers);
    headers
}

/// Adds `span`'s context to `headers`.
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        global::get_text_map_propagator(|p| p.inject_context(&cx, &mut Inject(headers)));
    }
}

/// The remote context in `headers`, if any.
pub fn extract(headers: Option<&HeaderMap>) -> Option<Context> {
    let headers = headers?;
    let cx = global::get_text_map_propagator(|p| p.extract(&Extract(headers)));
    cx.span().span_context().is_valid().then_some(cx)
}

/// Makes `span` (not yet entered) a child of the context in `headers`, when there is one.
pub fn continue_from(span: &tracing::Span, headers: Option<&HeaderMap>) {
    if let Some(cx) = extract(headers) {
        let _ = span.set_parent(cx);
    }
}

/// Makes `span` (not yet entered) a child of a client's `traceparent` (and `tracestate`).
pub fn continue_from_client(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", traceparent);
    continue_from(span, Some(&headers));
}

/// Links `span` to the context in `headers` (a batch to each of its messages' traces).
pub fn link(span: &tracing::Span, headers: Option<&HeaderMap>) {
    if let Some(cx) = extract(headers) {
        span.add_link(cx.span().span_context().clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_through_nats_headers() {
        global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        let cx = extract(Some(&h)).expect("a valid context");
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let mut bad = HeaderMap::new();
        bad.insert("traceparent", "garbage");
        assert!(extract(Some(&bad)).is_none());
        assert!(extract(None).is_none());
    }
}
