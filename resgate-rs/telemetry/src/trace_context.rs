//! W3C trace context over NATS headers.

use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderInjector<'a>(&'a mut async_nats::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct HeaderExtractor<'a>(&'a async_nats::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// The trace context of `span` as NATS headers, or `None` when tracing export is off (so that the
/// hot path sends plain messages).
pub fn headers_for(span: &tracing::Span) -> Option<async_nats::HeaderMap> {
    let cx = span.context();
    use opentelemetry::trace::TraceContextExt;
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut headers = async_nats::HeaderMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderInjector(&mut headers)));
    Some(headers)
}

struct NatsHeaderInjector<'a>(&'a mut res_nats::Headers);

impl Injector for NatsHeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

/// [`headers_for`] for the gateway's own NATS client.
pub fn nats_headers_for(span: &tracing::Span) -> Option<res_nats::Headers> {
    let cx = span.context();
    use opentelemetry::trace::TraceContextExt;
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut headers = res_nats::Headers::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut NatsHeaderInjector(&mut headers)));
    Some(headers)
}

/// Makes `span` a child of the trace context carried in `headers`, if any.
pub fn set_parent_from(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    if let Some(h) = headers {
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(h)));
        let _ = span.set_parent(cx);
    }
}
