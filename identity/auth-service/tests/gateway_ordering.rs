//! Token ordering through the real gateway: a service publishes `conn.<cid>.token` before replying
//! to the auth request (RES protocol: "Services must publish it before replying"), and NATS
//! delivers the two in that order, on different subscriptions. Resgate applies the token before
//! it handles the reply; so must resgate-rs, or an HTTP API request made with a valid
//! `Authorization: Bearer` runs without a token (401), and a WebSocket call sent after the login
//! reply sees the previous token. Repeated, since the race is narrow.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_header_auth_token_applies_to_every_request() {
    let issuer = Issuer::start().await;
    let env = Env::start(settings(&issuer.url)).await;
    let url = env.http_url("/api/test/private");
    let token = issuer.mint(json!({ "username": "alice" })).await;
    let http = openidconnect::reqwest::Client::new();
    let mut unauthorized = 0;
    for _ in 0..200 {
        let res = http.get(&url).header("authorization", format!("Bearer {token}")).send().await.unwrap();
        if res.status().as_u16() != 200 {
            unauthorized += 1;
        }
    }
    env.stop().await;
    assert_eq!(unauthorized, 0, "expected 200 for all 200 requests, got {unauthorized} answered without the token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_login_token_applies_before_the_reply() {
    let issuer = Issuer::start().await;
    let env = Env::start(settings(&issuer.url)).await;
    let alice = issuer.mint(json!({ "username": "alice" })).await;
    let bob = issuer.mint(json!({ "username": "bob" })).await;
    let mut c = env.ws().await;
    let mut stale = 0;
    for i in 0..500 {
        let (token, sub) = if i % 2 == 0 { (&alice, ALICE) } else { (&bob, BOB) };
        c.login(token).await;
        if c.whoami().await["sub"] != sub {
            stale += 1;
        }
    }
    env.stop().await;
    assert_eq!(stale, 0, "a call sent after the login reply saw the previous token {stale}/500 times");
}
