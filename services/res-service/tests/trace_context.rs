//! Trace context in NATS headers (W3C `traceparent`) becomes the parent of the handler's span.
//! A separate test binary: it installs global tracing state.

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use res_service::{Handler, Resource, Service};
use res_testkit::NatsServer;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test]
async fn handler_span_continues_the_callers_trace() {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let nats = NatsServer::start();
    let svc = Service::new("traced").handle(
        "traced.model",
        Handler::new().get(|_req| async move {
            let cx = tracing::Span::current().context();
            let trace_id = cx.span().span_context().trace_id().to_string();
            Resource::model(serde_json::json!({ "traceId": trace_id }))
        }),
    );
    let running = svc.start(async_nats::connect(nats.url()).await.unwrap()).await.unwrap();
    let c = async_nats::connect(nats.url()).await.unwrap();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01").as_str());
    let reply = c.request_with_headers("get.traced.model", headers, "{}".into()).await.unwrap();
    let got = res_protocol::service::decode_get(&reply.payload).unwrap();
    let res_protocol::value::ResourceData::Model(m) = got.data else { panic!("model expected") };
    assert_eq!(m["traceId"].to_string(), format!("\"{trace_id}\""));

    // Without headers the handler gets a fresh trace.
    let reply = c.request("get.traced.model", "{}".into()).await.unwrap();
    let got = res_protocol::service::decode_get(&reply.payload).unwrap();
    let res_protocol::value::ResourceData::Model(m) = got.data else { panic!("model expected") };
    assert_ne!(m["traceId"].to_string(), format!("\"{trace_id}\""));
    running.shutdown().await;
}
