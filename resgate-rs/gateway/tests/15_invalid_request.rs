//! Malformed client methods are answered with `system.invalidRequest` and never reach NATS.

mod common;

use common::*;
use serde_json::json;

const INVALID: &[&str] = &[
    "",
    "test",
    "new",
    "unknown.test",
    "call.test",
    "call.test.methöd",
    "call.test?foo",
    "call.test.method?foo",
    "auth.test",
    "subscribe..test.model",
    "subscribe.test..model",
    "subscribe.test.model.",
    ".subscribe.test.model",
    "subscribe?foo=bar",
    "subscribe.test\tmodel",
    "subscribe.test\nmodel",
    "subscribe.test\rmodel",
    "subscribe.test model",
    "subscribe.test\u{fffd}model",
    "subscribe.täst.model",
    "subscribe.test.*.model",
    "subscribe.test.>.model",
    "subscribe.test.model.>",
    "subscribe",
    "get",
    "unsubscribe",
    "subscribe.",
    "subscribe.?q=1",
    "subscribe.test.?q=1",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_methods_are_invalid_requests() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let mut failures = Vec::new();
    for m in INVALID {
        let r = c.request(m, json!(null)).await;
        if r.0.get("error") != Some(&err("system.invalidRequest", "Invalid request")) {
            failures.push(format!("{m:?}: {}", r.0));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} methods not rejected as invalidRequest:\n{}",
        failures.len(),
        INVALID.len(),
        failures.join("\n")
    );
    env.service.assert_no_request(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_or_missing_method_is_invalid_request_with_id() {
    // Resgate decodes a null/missing method as "" and answers invalidRequest to that id.
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    c.send_text(r#"{"id":78,"method":null}"#).await;
    c.send_text(r#"{"id":79}"#).await;
    for id in [78, 79] {
        assert_eq!(c.response(id).await.error(), err("system.invalidRequest", "Invalid request"), "id {id}");
    }
    env.service.assert_no_request(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_request_gets_an_error_frame_without_id() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    c.send_text(r#"{"id":77,"method":42}"#).await;
    let e = c.expect_idless().await;
    assert_eq!(e["error"]["code"], json!("system.invalidRequest"), "{e}");
    c.request("version", json!(null)).await.result();
    env.service.assert_no_request(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_stays_usable_after_invalid_requests() {
    let env = TestEnv::start().await;
    let mut c = env.client().await;
    c.request("nonsense", json!(null)).await.assert_error("system.invalidRequest");
    c.request("version", json!(null)).await.assert_result(json!({"protocol": "1.2.3"}));
}
