//! W3C trace context over NATS headers.

use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Hands each injected header to a closure, whatever the header type.
struct SetWith<F: FnMut(&str, String)>(F);

impl<F: FnMut(&str, String)> Injector for SetWith<F> {
    fn set(&mut self, key: &str, value: String) {
        (self.0)(key, value)
    }
}

/// Injects the trace context of `span` through `set`; false (nothing set) when the span is not
/// exported, so that the hot path sends plain messages.
fn inject(span: &tracing::Span, set: impl FnMut(&str, String)) -> bool {
    use opentelemetry::trace::TraceContextExt;
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return false;
    }
    let mut injector = SetWith(set);
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut injector));
    true
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

/// The trace context of `span` as async-nats headers (services), or `None` when not exported.
pub fn headers_for(span: &tracing::Span) -> Option<async_nats::HeaderMap> {
    let mut headers = async_nats::HeaderMap::new();
    inject(span, |k, v| headers.insert(k, v.as_str())).then_some(headers)
}

/// The trace context of `span` as headers of the gateway's own NATS client, or `None`.
pub fn nats_headers_for(span: &tracing::Span) -> Option<res_nats::Headers> {
    let mut headers = res_nats::Headers::new();
    inject(span, |k, v| headers.insert(k, v)).then_some(headers)
}

/// Makes `span` a child of the trace context carried in `headers`, if any.
pub fn set_parent_from(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    if let Some(h) = headers {
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(h)));
        let _ = span.set_parent(cx);
    }
}
