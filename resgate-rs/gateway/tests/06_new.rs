//! Legacy `new`: sent as `call.<rid>.new`; only resource responses (or legacy `{"rid":..}`) are valid.

mod common;

use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_is_a_call_to_the_new_method_and_subscribes() {
    let mut env = TestEnv::start().await;
    let params = json!({"value": 42});
    let model = json!({"name": "created"});
    for (i, reply) in [r#"{"resource":{"rid":"test.model"}}"#, r#"{"result":{"rid":"test.model"}}"#].iter().enumerate()
    {
        let mut c = env.client().await;
        let id = c.send("new.test.collection", params.clone()).await;
        let a = env.service.expect("access.test.collection").await;
        assert!(a.payload_json().get("isHttp").is_none());
        a.respond_access(true, Some("new")).await;
        let req = env.service.expect("call.test.collection.new").await;
        assert_eq!(req.payload_json()["params"], params);
        req.respond_raw(reply.as_bytes().to_vec()).await;
        if i == 0 {
            env.service.serve_model("test.model", model.clone()).await;
        } else {
            // Cached from the first row; only access is asked.
            env.service.expect("access.test.model").await.respond_access(true, None).await;
        }
        c.response(id).await.assert_result(json!({"rid": "test.model", "models": {"test.model": model}}));
        env.service.publish_event("test.model", "custom", json!(i)).await;
        assert_eq!(c.expect_event("test.model.custom").await, json!(i));
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_invalid_replies() {
    let mut env = TestEnv::start().await;
    let rows: Vec<(&str, &str)> = vec![
        (r#"{"error":{"code":"system.invalidParams","message":"Invalid parameters"}}"#, "system.invalidParams"),
        (r#"{"broken":JSON}"#, "system.internalError"),
        ("42", "system.internalError"),
        ("{}", "system.internalError"),
        (r#"{"result":{"foo":"bar"},"error":{"code":"system.custom","message":"Custom"}}"#, "system.custom"),
        (r#"{"result":{}}"#, "system.internalError"),
        (r#"{"result":{"rid":""}}"#, "system.internalError"),
        (r#"{"result":{"rid":"?q=foo"}}"#, "system.internalError"),
        (r#"{"result":{"rid":"test model"}}"#, "system.internalError"),
        (r#"{"result":{"rid":42}}"#, "system.internalError"),
        (r#"{"result":{"rid":"test.model","foo":42}}"#, "system.internalError"),
        (r#"{"error":[]}"#, "system.internalError"),
        (r#"{"error":{"message":"missing code"}}"#, ""),
        (r#"{"error":{"code":12,"message":"integer code"}}"#, "system.internalError"),
    ];
    let mut failures = Vec::new();
    for (i, (reply, code)) in rows.into_iter().enumerate() {
        let mut c = env.client().await;
        let id = c.send("new.test.collection", Value::Null).await;
        env.service.expect("access.test.collection").await.respond_access(true, Some("*")).await;
        env.service.expect("call.test.collection.new").await.respond_raw(reply.as_bytes().to_vec()).await;
        let r = c.response(id).await;
        if r.0["error"]["code"] != json!(code) {
            failures.push(format!("row #{} ({reply}): expected error {code:?}, got {}", i + 1, r.0));
        }
        c.close().await;
    }
    assert!(failures.is_empty(), "{} rows failed:\n{}", failures.len(), failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_requires_the_new_method_in_access() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("new.test.collection", json!({})).await;
    env.service.expect("access.test.collection").await.respond_access(true, Some("set")).await;
    c.response(id).await.assert_error("system.accessDenied");
    env.service.assert_no_request(QUIET).await;
}
