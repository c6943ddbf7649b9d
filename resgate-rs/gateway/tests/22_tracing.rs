//! Trace context: with trace export on, every client request is a trace of its own, and each NATS
//! request it makes carries a W3C `traceparent` header so the service's span joins that trace.

mod common;

use common::*;
use serde_json::json;

/// The trace id and parent span id of a `traceparent` header (`00-<trace>-<span>-<flags>`).
fn trace_parent(req: &ServiceRequest) -> (String, String) {
    let h = req.headers.as_ref().unwrap_or_else(|| panic!("{} carries no headers", req.subject));
    let tp = h.get("traceparent").unwrap_or_else(|| panic!("{} carries no traceparent", req.subject)).as_str();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "malformed traceparent {tp}");
    assert_eq!(parts[1].len(), 32, "trace id in {tp}");
    assert_ne!(parts[1], "0".repeat(32), "invalid trace id in {tp}");
    (parts[1].to_owned(), parts[2].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_carry_their_trace_to_the_services() {
    // An exporter endpoint nobody listens on: spans are made and propagated, export just fails.
    let _telemetry =
        res_telemetry::init_with("resgate-rs-test", "error", Some("http://127.0.0.1:9")).expect("telemetry");
    assert!(res_telemetry::traces_exported());
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;

    // One client call: its access and call requests belong to one trace, as two NATS spans.
    let id = c.send("call.test.model.method", json!(null)).await;
    let access = env.service.expect("access.test.model").await;
    access.respond_access(true, Some("*")).await;
    let call = env.service.expect("call.test.model.method").await;
    call.respond_result(json!(1)).await;
    c.response(id).await.result();
    let (access_trace, access_span) = trace_parent(&access);
    let (call_trace, call_span) = trace_parent(&call);
    assert_eq!(access_trace, call_trace, "access and call of one request are one trace");
    assert_ne!(access_span, call_span, "each NATS request is a span of its own");

    // The next request is another trace.
    let id = c.send("get.test.model", json!(null)).await;
    env.service.expect("access.test.model").await.respond_access(true, None).await;
    let get = env.service.expect("get.test.model").await;
    get.respond_model(json!({ "a": 1 })).await;
    c.response(id).await.result();
    assert_ne!(trace_parent(&get).0, call_trace, "a new request starts a new trace");

    // HTTP API requests too.
    let http = tokio::spawn({
        let addr = env.addr();
        async move { http_request(addr, "POST", "/api/test/model/method", &[], b"{}").await }
    });
    let access = env.service.expect("access.test.model").await;
    access.respond_access(true, Some("*")).await;
    let call = env.service.expect("call.test.model.method").await;
    let (http_trace, _) = trace_parent(&call);
    assert_eq!(trace_parent(&access).0, http_trace);
    assert_ne!(http_trace, call_trace);
    call.respond_result(json!(2)).await;
    assert_eq!(http.await.unwrap().status, 200);
}
