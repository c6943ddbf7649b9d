//! The `version` request and per-connection protocol levels (legacy encodings).

mod common;

use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_request_table() {
    let env = TestEnv::start().await;
    let ok = Ok(json!({"protocol": "1.2.3"}));
    let rows: Vec<(Option<&str>, Result<Value, &str>)> = vec![
        (None, ok.clone()),
        (Some("{}"), ok.clone()),
        (Some(r#"{"foo":"bar"}"#), ok.clone()),
        (Some(r#"{"protocol":""}"#), ok.clone()),
        (Some(r#"{"protocol":null}"#), ok.clone()),
        (Some(r#"{"protocol":"1.0.0"}"#), ok.clone()),
        (Some(r#"{"protocol":"1.1.0"}"#), ok.clone()),
        (Some(r#"{"protocol":"1.0.1"}"#), ok.clone()),
        (Some(r#"{"protocol":"1.999.999"}"#), ok.clone()),
        (Some(r#""""#), Err("system.invalidParams")),
        (Some(r#""1.0.0""#), Err("system.invalidParams")),
        (Some(r#"["1.0.0"]"#), Err("system.invalidParams")),
        (Some(r#"{"protocol":1.0}"#), Err("system.invalidParams")),
        (Some(r#"{"protocol":"1.0"}"#), Err("system.invalidParams")),
        (Some(r#"{"protocol":"1.2.3.4"}"#), Err("system.invalidParams")),
        (Some(r#"{"protocol":"v1.0.0"}"#), Err("system.invalidParams")),
        (Some(r#"{"protocol":"1.0.1000"}"#), Err("system.invalidParams")),
        (Some(r#"{"protocol":"1.1000.0"}"#), Err("system.invalidParams")),
        (Some(r#"{"protocol":"0.0.0"}"#), Err("system.unsupportedProtocol")),
        (Some(r#"{"protocol":"2.0.0"}"#), Err("system.unsupportedProtocol")),
        (Some(r#"{"protocol":"0.999.999"}"#), Err("system.unsupportedProtocol")),
        (Some(r#"{"protocol":"3.2.1"}"#), Err("system.unsupportedProtocol")),
    ];
    let mut failures = Vec::new();
    for (i, (params, expected)) in rows.iter().enumerate() {
        let mut c = env.client_without_version().await;
        let id = 100 + i as u64;
        let frame = match params {
            Some(p) => format!(r#"{{"id":{id},"method":"version","params":{p}}}"#),
            None => format!(r#"{{"id":{id},"method":"version"}}"#),
        };
        c.send_text(&frame).await;
        let r = c.response(id).await;
        let good = match expected {
            Ok(v) => r.0.get("result") == Some(v),
            Err(code) => r.0["error"]["code"] == json!(code),
        };
        if !good {
            failures.push(format!("row #{} {params:?}: expected {expected:?}, got {}", i + 1, r.0));
        }
        c.close().await;
    }
    assert!(failures.is_empty(), "{} rows failed:\n{}", failures.len(), failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_messages() {
    let env = TestEnv::start().await;
    let mut c = env.client_without_version().await;
    assert_eq!(
        c.request("version", json!({"protocol": "2.0.0"})).await.error(),
        err("system.unsupportedProtocol", "Unsupported protocol")
    );
    assert_eq!(c.request("version", json!("x")).await.error(), err("system.invalidParams", "Invalid parameters"));
}

async fn soft_and_data(env: &mut TestEnv, c: &mut WsClient) -> Value {
    let id = c.send("subscribe.test.model", json!(null)).await;
    env.service
        .serve_model("test.model", json!({"soft": {"rid": "test.other", "soft": true}, "obj": {"data": {"a": 1}}, "arr": {"data": [1]}, "prim": {"data": 5}}))
        .await;
    c.response(id).await.result()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_1_2_0_gets_legacy_soft_references_and_data() {
    let mut env = TestEnv::start().await;
    let mut c = env.client_with_version("1.2.0").await;
    assert_eq!(
        soft_and_data(&mut env, &mut c).await,
        json!({"models": {"test.model": {"soft": "test.other", "obj": "[Data]", "arr": "[Data]", "prim": 5}}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_1_2_1_gets_current_encoding() {
    let mut env = TestEnv::start().await;
    let mut c = env.client_with_version("1.2.1").await;
    assert_eq!(
        soft_and_data(&mut env, &mut c).await,
        json!({"models": {"test.model": {"soft": {"rid": "test.other", "soft": true}, "obj": {"data": {"a": 1}}, "arr": {"data": [1]}, "prim": 5}}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_change_events_use_legacy_encoding() {
    let mut env = TestEnv::start().await;
    let mut c = env.client_with_version("1.2.0").await;
    soft_and_data(&mut env, &mut c).await;
    env.service
        .publish_event(
            "test.model",
            "change",
            json!({"values": {"soft": {"rid": "test.x", "soft": true}, "obj": {"data": {"b": 2}}}}),
        )
        .await;
    assert_eq!(c.expect_event("test.model.change").await, json!({"values": {"soft": "test.x", "obj": "[Data]"}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_can_be_sent_after_other_requests() {
    let env = TestEnv::start().await;
    let mut c = env.client_without_version().await;
    c.request("nonsense", json!(null)).await.assert_error("system.invalidRequest");
    c.request("version", json!({"protocol": "1.2.3"})).await.assert_result(json!({"protocol": "1.2.3"}));
}
