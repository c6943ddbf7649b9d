//! OpenMetrics endpoint: content type, connection/request counters, cache gauges, durations,
//! NATS reconnects.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;

async fn metrics_env() -> TestEnv {
    TestEnv::start_with(|c| c.metrics_port = Some(0)).await
}

/// Polls /metrics until `name{labels}` equals `expected` (bounded: 3 s).
async fn wait_metric(env: &TestEnv, name: &str, labels: &str, expected: f64) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let text = env.metrics().await;
        let v = metric_value(&text, name, labels);
        if v == Some(expected) {
            return;
        }
        if Instant::now() > deadline {
            panic!("{name}{{{labels}}} = {v:?}, expected {expected}\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_serves_openmetrics() {
    let env = metrics_env().await;
    let addr = env.gateway().metrics_addr().expect("metrics listener");
    assert_ne!(addr.port(), 0);
    assert_ne!(addr.port(), env.addr().port());
    let r = http_request(addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    assert!(r.text().trim_end().ends_with("# EOF"), "{}", r.text());
    for name in [
        "resgate_ws_current_connections",
        "resgate_ws_connections_total",
        "resgate_cache_resources",
        "resgate_cache_subscriptions",
    ] {
        assert!(metric_value(&r.text(), name, "").is_some(), "{name} missing:\n{}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_connection_metrics() {
    let env = metrics_env().await;
    wait_metric(&env, "resgate_ws_current_connections", "", 0.0).await;
    let c1 = env.client().await;
    let c2 = env.client().await;
    wait_metric(&env, "resgate_ws_current_connections", "", 2.0).await;
    wait_metric(&env, "resgate_ws_connections_total", "", 2.0).await;
    c1.close().await;
    wait_metric(&env, "resgate_ws_current_connections", "", 1.0).await;
    wait_metric(&env, "resgate_ws_connections_total", "", 2.0).await;
    c2.close().await;
    wait_metric(&env, "resgate_ws_current_connections", "", 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_request_counters_by_method() {
    let mut env = metrics_env().await;
    let mut c = env.client().await;
    let id = c.send("subscribe.test.model", json!(null)).await;
    env.service.serve_model("test.model", json!({})).await;
    c.response(id).await.result();
    let id = c.send("get.test.other", json!(null)).await;
    env.service.serve_model("test.other", json!({})).await;
    c.response(id).await.result();
    c.request("unsubscribe.test.model", json!(null)).await.result();
    let id = c.send("call.test.model.method", json!(null)).await;
    env.service.expect("access.test.model").await.respond_access(true, Some("*")).await;
    env.service.expect("call.test.model.method").await.respond_result(json!(1)).await;
    c.response(id).await.result();
    let id = c.send("new.test.model", json!(null)).await;
    env.service.expect("access.test.model").await.respond_access(true, Some("*")).await;
    env.service.expect("call.test.model.new").await.respond_error("system.invalidParams", "x").await;
    c.response(id).await.error();
    let id = c.send("auth.test.model.login", json!(null)).await;
    env.service.expect("auth.test.model.login").await.respond_result(json!(null)).await;
    c.response(id).await.result();
    wait_metric(&env, "resgate_ws_requests_total", r#"method="subscribe""#, 1.0).await;
    wait_metric(&env, "resgate_ws_requests_total", r#"method="get""#, 1.0).await;
    wait_metric(&env, "resgate_ws_requests_total", r#"method="unsubscribe""#, 1.0).await;
    wait_metric(&env, "resgate_ws_requests_total", r#"method="call""#, 2.0).await;
    wait_metric(&env, "resgate_ws_requests_total", r#"method="auth""#, 1.0).await;
    let text = env.metrics().await;
    assert!(text.contains("resgate_client_request_duration_seconds"), "{text}");
    assert!(text.contains("resgate_nats_request_duration_seconds"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_request_counters_by_method() {
    let mut env = metrics_env().await;
    let addr = env.addr();
    let h = tokio::spawn(async move { http_request(addr, "GET", "/api/test/model", &[], b"").await });
    env.service.serve_model("test.model", json!({})).await;
    assert_eq!(h.await.unwrap().status, 200);
    let h = tokio::spawn(async move { http_request(addr, "POST", "/api/test/model/m", &[], b"").await });
    env.service.expect("access.test.model").await.respond_access(true, Some("*")).await;
    env.service.expect("call.test.model.m").await.respond_result(json!(null)).await;
    assert_eq!(h.await.unwrap().status, 204);
    wait_metric(&env, "resgate_http_requests_total", r#"method="GET""#, 1.0).await;
    wait_metric(&env, "resgate_http_requests_total", r#"method="POST""#, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_gauges_follow_subscriptions_and_eviction() {
    let mut env = TestEnv::start_with(|c| {
        c.metrics_port = Some(0);
        c.unsubscribe_delay = 100;
    })
    .await;
    wait_metric(&env, "resgate_cache_resources", "", 0.0).await;
    let mut c = env.client().await;
    let id = c.send("subscribe.test.parent", json!(null)).await;
    env.service.serve_model("test.parent", json!({"c": {"rid": "test.child"}})).await;
    env.service.expect("get.test.child").await.respond_model(json!({})).await;
    c.response(id).await.result();
    wait_metric(&env, "resgate_cache_resources", "", 2.0).await;
    wait_metric(&env, "resgate_cache_subscriptions", "", 2.0).await;
    c.request("unsubscribe.test.parent", json!(null)).await.result();
    wait_metric(&env, "resgate_cache_subscriptions", "", 0.0).await;
    wait_metric(&env, "resgate_cache_resources", "", 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_reconnects_are_counted() {
    let mut env = metrics_env().await;
    wait_metric(&env, "resgate_nats_reconnects_total", "", 0.0).await;
    env.nats.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = env.metrics().await;
        if metric_value(&text, "resgate_nats_reconnects_total", "").unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no reconnect counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut c = env.client().await;
    c.request("version", json!(null)).await.result();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_disconnects_are_counted() {
    let mut env = TestEnv::start_with(|c| {
        c.metrics_port = Some(0);
        c.max_outbound_bytes = 48 * 1024;
    })
    .await;
    wait_metric(&env, "resgate_slow_client_disconnects_total", "", 0.0).await;
    let mut c = env.client().await;
    let id = c.send("subscribe.test.model", json!(null)).await;
    env.service.serve_model("test.model", json!({"n": 0})).await;
    c.response(id).await.result();
    // A raw subscriber that never reads.
    use futures_util::SinkExt;
    let mut slow = ws_connect_raw(&env.ws_url(), &[]).await.unwrap();
    slow.send(tokio_tungstenite::tungstenite::Message::text(r#"{"id":1,"method":"subscribe.test.model"}"#))
        .await
        .unwrap();
    env.service.expect("access.test.model").await.respond_access(true, None).await;
    let filler = "z".repeat(6 * 1024);
    for n in 1..=2500 {
        env.service
            .publish_event_noflush("test.model", "change", &json!({"values": {"n": n, "f": format!("{n}{filler}")}}))
            .await;
        if n % 4 == 0 {
            env.service.flush().await;
            for _ in 0..4 {
                c.expect_event("test.model.change").await;
            }
        }
    }
    wait_metric(&env, "resgate_slow_client_disconnects_total", "", 1.0).await;
    drop(slow);
}
