//! Connecting: start, WebSocket upgrade on wsPath, version handshake, Origin check (allowOrigin).

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_starts_and_listens() {
    let env = TestEnv::start().await;
    assert_ne!(env.addr().port(), 0, "an ephemeral port was bound");
    assert!(env.gateway().metrics_addr().is_none(), "metrics off by default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connects_and_gets_version() {
    let env = TestEnv::start().await;
    let mut c = env.client_without_version().await;
    c.request("version", json!({"protocol": "1.2.3"})).await.assert_result(json!({"protocol": "1.2.3"}));
    c.assert_no_message(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_connect_independently() {
    let env = TestEnv::start().await;
    let a = env.client().await;
    let mut b = env.client().await;
    a.close().await;
    b.request("version", json!(null)).await.assert_result(json!({"protocol": "1.2.3"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_ws_path_is_used() {
    let env = TestEnv::start_with(|c| c.ws_path = "/ws".into()).await;
    let mut c = WsClient::connect(&format!("ws://{}/ws", env.addr()), &[]).await.expect("upgrade on /ws");
    c.request("version", json!(null)).await.assert_result(json!({"protocol": "1.2.3"}));
    let other = WsClient::connect(&format!("ws://{}/other", env.addr()), &[]).await;
    assert!(other.is_err(), "upgrade outside wsPath must fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_get_on_ws_path_is_not_an_upgrade() {
    let env = TestEnv::start().await;
    let r = env.http("GET", "/", &[], b"").await;
    assert_eq!(r.status, 400, "non-upgrade request on wsPath: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_target_asterisk_is_bad_request() {
    let env = TestEnv::start().await;
    let r = env.http("GET", "*", &[], b"").await;
    assert_eq!(r.status, 400, "{r:?}");
}

/// (Origin header or "" for none, allowOrigin setting, connects?)
const ORIGIN_CASES: &[(&str, &[&str], bool)] = &[
    ("http://localhost", &["*"], true),
    ("http://localhost", &["http://localhost"], true),
    ("http://localhost:8080", &["http://localhost:8080"], true),
    ("http://localhost", &["http://localhost", "https://resgate.io"], true),
    ("https://resgate.io", &["http://localhost", "https://resgate.io"], true),
    ("", &["*"], true),
    ("", &["https://resgate.io"], true),
    ("http://resgate.io", &["https://resgate.io"], false),
    ("https://resgate.io", &["https://api.resgate.io"], false),
    ("https://resgate.io:8080", &["https://resgate.io"], false),
    ("https://resgate.io", &["https://resgate.io:8080"], false),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_is_checked_against_allow_origin() {
    for (i, (origin, allow, ok)) in ORIGIN_CASES.iter().enumerate() {
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        let env = TestEnv::start_with(|c| c.allow_origin = allow.clone()).await;
        let headers: Vec<(&str, &str)> = if origin.is_empty() { vec![] } else { vec![("Origin", origin)] };
        let res = WsClient::connect(&env.ws_url(), &headers).await;
        match (res, ok) {
            (Ok(mut c), true) => {
                c.request("version", json!(null)).await.assert_result(json!({"protocol": "1.2.3"}));
            }
            (Err(e), false) => match e {
                WsError::Http(resp) => assert_eq!(resp.status().as_u16(), 403, "case #{}: forbidden origin", i + 1),
                other => panic!("case #{}: expected HTTP 403, got {other}", i + 1),
            },
            (Ok(_), false) => panic!("case #{}: origin {origin:?} with allowOrigin {allow:?} must be refused", i + 1),
            (Err(e), true) => panic!("case #{}: origin {origin:?} with allowOrigin {allow:?} refused: {e}", i + 1),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_sends_nothing_to_nats() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    env.service.assert_no_request(QUIET).await;
    c.assert_no_message(QUIET).await;
}
