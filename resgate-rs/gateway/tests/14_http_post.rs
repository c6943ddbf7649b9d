//! HTTP POST calls, 204 on null, Location on resource responses, PUT/DELETE/PATCH mapping, 405.

mod common;

use common::*;
use serde_json::{Value, json};

/// Runs an HTTP request that maps to `call.<rid>.<method>`; the service grants access and answers
/// the call with `reply` (raw). Returns the response and the call payload.
async fn call_with(
    env: &mut TestEnv,
    method: &str,
    path: &str,
    body: &'static [u8],
    rid: &str,
    call_method: &str,
    reply: &str,
) -> (HttpResponse, Value) {
    let addr = env.addr();
    let (m, p) = (method.to_owned(), path.to_owned());
    let h =
        tokio::spawn(async move { http_request(addr, &m, &p, &[("Content-Type", "application/json")], body).await });
    let a = env.service.expect(&format!("access.{rid}")).await;
    assert_eq!(a.payload_json()["isHttp"], json!(true));
    a.respond_access(false, Some(call_method)).await;
    let c = env.service.expect(&format!("call.{rid}.{call_method}")).await;
    let payload = c.payload_json();
    c.respond_raw(reply.as_bytes().to_vec()).await;
    (h.await.unwrap(), payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_calls_the_method_with_params() {
    let mut env = TestEnv::start().await;
    let (r, p) = call_with(
        &mut env,
        "POST",
        "/api/test/model/method",
        br#"{"value":42}"#,
        "test.model",
        "method",
        r#"{"result":{"foo":"bar"}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"foo": "bar"}));
    assert_eq!(p, json!({"cid": p["cid"], "token": null, "params": {"value": 42}, "isHttp": true}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_without_body_sends_no_params_and_null_is_204() {
    let mut env = TestEnv::start().await;
    let (r, p) =
        call_with(&mut env, "POST", "/api/test/model/method", b"", "test.model", "method", r#"{"result":null}"#).await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert!(p.get("params").is_none() || p["params"].is_null(), "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_resource_response_sets_location() {
    let mut env = TestEnv::start().await;
    let (r, _) = call_with(
        &mut env,
        "POST",
        "/api/test/collection/create",
        b"{}",
        "test.collection",
        "create",
        r#"{"resource":{"rid":"test.model.42"}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("location"), Some("/api/test/model/42"));
    assert!(r.body.is_empty(), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_errors_map_to_status() {
    let mut env = TestEnv::start().await;
    let rows = [
        (r#"{"error":{"code":"system.invalidParams","message":"Invalid parameters"}}"#, 400),
        (r#"{"error":{"code":"system.methodNotFound","message":"Method not found"}}"#, 404),
        (r#"{"error":{"code":"system.internalError","message":"Internal error"}}"#, 500),
        (r#"{"error":{"code":"custom.x","message":"X"}}"#, 400),
        (r#"{"broken":JSON}"#, 500),
    ];
    for (reply, status) in rows {
        let (r, _) = call_with(&mut env, "POST", "/api/test/model/method", b"", "test.model", "method", reply).await;
        assert_eq!(r.status, status, "{reply}: {}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_bad_json_is_bad_request() {
    let mut env = TestEnv::start().await;
    let r = env.http("POST", "/api/test/model/method", &[], b"{not json").await;
    assert_eq!(r.status, 400);
    // Resgate: "Error decoding request body: <detail>".
    assert_eq!(r.json()["code"], json!("system.badRequest"), "{}", r.text());
    env.service.assert_no_request(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_without_call_access_is_401() {
    let mut env = TestEnv::start().await;
    let addr = env.addr();
    let h = tokio::spawn(async move { http_request(addr, "POST", "/api/test/model/method", &[], b"").await });
    env.service.expect("access.test.model").await.respond_access(true, Some("other")).await;
    let r = h.await.unwrap();
    assert_eq!((r.status, r.json()), (401, err("system.accessDenied", "Access denied")));
    env.service.assert_no_request(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_delete_patch_map_to_configured_methods() {
    let mut env = TestEnv::start_with(|c| {
        c.put_method = Some("replace".into());
        c.delete_method = Some("remove".into());
        c.patch_method = Some("update".into());
    })
    .await;
    for (m, call) in [("PUT", "replace"), ("DELETE", "remove"), ("PATCH", "update")] {
        let (r, p) =
            call_with(&mut env, m, "/api/test/model", br#"{"x":1}"#, "test.model", call, r#"{"result":{"ok":1}}"#)
                .await;
        assert_eq!((r.status, r.json()), (200, json!({"ok": 1})), "{m}");
        assert_eq!(p["params"], json!({"x": 1}), "{m}");
    }
    // methodNotFound from the service becomes 405 methodNotAllowed.
    let (r, _) = call_with(
        &mut env,
        "PUT",
        "/api/test/model",
        b"",
        "test.model",
        "replace",
        r#"{"error":{"code":"system.methodNotFound","message":"Method not found"}}"#,
    )
    .await;
    assert_eq!((r.status, r.json()), (405, err("system.methodNotAllowed", "Method not allowed")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmapped_methods_are_405() {
    let mut env = TestEnv::start().await;
    for m in ["PUT", "DELETE", "PATCH"] {
        let r = env.http(m, "/api/test/model", &[], b"").await;
        assert_eq!(r.status, 405, "{m}: {}", r.text());
        assert_eq!(r.json(), err("system.methodNotAllowed", "Method not allowed"), "{m}");
    }
    env.service.assert_no_request(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_method_is_414() {
    let mut env = TestEnv::start().await;
    let r = env.http("POST", &format!("/api/test/model/{}", "m".repeat(10_000)), &[], b"").await;
    assert_eq!(r.status, 414, "{}", r.text());
    env.service.assert_no_request(QUIET).await;
}
