//! Reaccess events: access re-requested for direct subscriptions; denial unsubscribes.

mod common;

use common::*;
use serde_json::json;

async fn setup(env: &mut TestEnv) -> WsClient {
    let mut c = env.client().await;
    let id = c.send("subscribe.test.parent", json!(null)).await;
    env.service.serve_model("test.parent", json!({"child": {"rid": "test.model"}})).await;
    env.service.expect("get.test.model").await.respond_model(json!({"a": 1})).await;
    c.response(id).await.result();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaccess_granted_keeps_subscription() {
    let mut env = TestEnv::start().await;
    let mut c = setup(&mut env).await;
    env.service.publish_raw("event.test.parent.reaccess", &b""[..]).await;
    let a = env.service.expect("access.test.parent").await;
    assert_eq!(a.payload_json(), json!({"cid": a.cid(), "token": null}));
    a.respond_access(true, None).await;
    c.assert_no_message(QUIET).await;
    env.service.publish_event("test.parent", "custom", json!(1)).await;
    assert_eq!(c.expect_event("test.parent.custom").await, json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaccess_denied_sends_unsubscribe_and_stops_events() {
    let mut env = TestEnv::start().await;
    let mut c = setup(&mut env).await;
    env.service.publish_raw("event.test.parent.reaccess", &b""[..]).await;
    env.service.expect("access.test.parent").await.respond_access(false, None).await;
    assert_eq!(
        c.expect_event("test.parent.unsubscribe").await,
        json!({"reason": err("system.accessDenied", "Access denied")})
    );
    env.service.publish_event("test.parent", "custom", json!(1)).await;
    env.service.publish_event("test.model", "custom", json!(1)).await;
    c.assert_no_message(QUIET).await;
    c.request("unsubscribe.test.parent", json!(null)).await.assert_error("system.noSubscription");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaccess_error_response_unsubscribes() {
    let mut env = TestEnv::start().await;
    let mut c = setup(&mut env).await;
    env.service.publish_raw("event.test.parent.reaccess", &b""[..]).await;
    env.service.expect("access.test.parent").await.respond_error("system.accessDenied", "Access denied").await;
    assert_eq!(
        c.expect_event("test.parent.unsubscribe").await,
        json!({"reason": err("system.accessDenied", "Access denied")})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaccess_on_indirect_resource_asks_nothing() {
    let mut env = TestEnv::start().await;
    let mut c = setup(&mut env).await;
    env.service.publish_raw("event.test.model.reaccess", &b""[..]).await;
    env.service.assert_no_request(QUIET).await;
    c.assert_no_message(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaccess_is_per_connection() {
    let mut env = TestEnv::start().await;
    let mut c1 = setup(&mut env).await;
    let mut c2 = env.client().await;
    let id = c2.send("subscribe.test.parent", json!(null)).await;
    env.service.expect("access.test.parent").await.respond_access(true, None).await;
    c2.response(id).await.result();
    env.service.publish_raw("event.test.parent.reaccess", &b""[..]).await;
    let a1 = env.service.expect("access.test.parent").await;
    let a2 = env.service.expect("access.test.parent").await;
    assert_ne!(a1.cid(), a2.cid());
    // Deny only the first connection to answer.
    a1.respond_access(false, None).await;
    a2.respond_access(true, None).await;
    let denied = tokio::select! {
        e = c1.expect_event("test.parent.unsubscribe") => { assert_eq!(e["reason"]["code"], "system.accessDenied"); 1 }
        e = c2.expect_event("test.parent.unsubscribe") => { assert_eq!(e["reason"]["code"], "system.accessDenied"); 2 }
    };
    let (other, _) = if denied == 1 { (&mut c2, &mut c1) } else { (&mut c1, &mut c2) };
    other.assert_no_message(QUIET).await;
    env.service.publish_event("test.parent", "custom", json!("x")).await;
    assert_eq!(other.expect_event("test.parent.custom").await, json!("x"));
}
