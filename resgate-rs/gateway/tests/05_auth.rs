//! Auth: no access check; the NATS payload carries the WebSocket upgrade's HTTP context.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_goes_straight_to_the_service_with_http_context() {
    let mut env = TestEnv::start().await;
    let mut c = WsClient::connect(&env.ws_url(), &[("X-Custom", "foo"), ("Cookie", "session=abc")]).await.unwrap();
    c.request("version", json!({"protocol": "1.2.3"})).await.result();
    let id = c.send("auth.test.model.login", json!({"user": "a"})).await;
    let req = env.service.expect("auth.test.model.login").await;
    let p = req.payload_json();
    assert!(p["cid"].is_string(), "{p}");
    assert_eq!(p["token"], json!(null));
    assert_eq!(p["params"], json!({"user": "a"}));
    assert!(p.get("isHttp").is_none(), "isHttp only for HTTP requests: {p}");
    assert_eq!(p["header"]["X-Custom"], json!(["foo"]), "canonical header keys: {p}");
    assert_eq!(p["header"]["Cookie"], json!(["session=abc"]));
    assert_eq!(p["host"], json!(env.addr().to_string()));
    let remote = p["remoteAddr"].as_str().expect("remoteAddr");
    assert!(remote.starts_with("127.0.0.1:"), "{remote}");
    assert_eq!(p["uri"], json!("/"));
    req.respond_result(json!({"ok": true})).await;
    c.response(id).await.assert_result(json!({"payload": {"ok": true}}));
    env.service.assert_no_request(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_errors_pass_through_and_legacy_gets_raw_result() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("auth.test.model.login", json!(null)).await;
    let e = json!({"code": "custom.error", "message": "Custom", "data": [1]});
    env.service.expect("auth.test.model.login").await.respond_json(json!({ "error": e })).await;
    assert_eq!(c.response(id).await.error(), e);
    let mut legacy = env.client_without_version().await;
    let id = legacy.send("auth.test.model.login", json!(null)).await;
    env.service.expect("auth.test.model.login").await.respond_result(json!("raw")).await;
    legacy.response(id).await.assert_result(json!("raw"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_resource_response_subscribes() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("auth.test.model.login", json!(null)).await;
    env.service.expect("auth.test.model.login").await.respond_resource("test.user").await;
    env.service.serve_model("test.user", json!({"name": "u"})).await;
    c.response(id).await.assert_result(json!({"rid": "test.user", "models": {"test.user": {"name": "u"}}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_with_cid_tag_and_long_names() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("auth.test.{cid}.login", json!(null)).await;
    let req = env.service.expect_where("auth.test.<cid>.login", |s| s.starts_with("auth.test.")).await;
    assert_eq!(req.subject, format!("auth.test.{}.login", req.cid()));
    req.respond_result(json!(null)).await;
    c.response(id).await.assert_result(json!({"payload": null}));
    c.request(&format!("auth.test.{}.login", "a".repeat(10_000)), json!(null))
        .await
        .assert_error("system.subjectTooLong");
}
