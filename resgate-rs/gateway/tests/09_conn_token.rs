//! Connection token: `conn.<cid>.token` sets the token carried by later access requests; a change
//! of a non-null token re-checks access of every subscription.

mod common;

use common::*;
use serde_json::{Value, json};

/// Client calls `auth.test.auth.login`; the service publishes the token event, then replies.
/// Returns the cid.
async fn login(env: &mut TestEnv, c: &mut WsClient, token: Value) -> String {
    let id = c.send("auth.test.auth.login", json!(null)).await;
    let req = env.service.expect("auth.test.auth.login").await;
    let cid = req.cid();
    env.service.publish_json(&format!("conn.{cid}.token"), json!({ "token": token })).await;
    req.respond_result(json!(null)).await;
    c.response(id).await.result();
    cid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_sent_in_access_and_call_requests() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let token = json!({"user": "foo"});
    let cid = login(&mut env, &mut c, token.clone()).await;
    let id = c.send("subscribe.test.model", json!(null)).await;
    let a = env.service.expect("access.test.model").await;
    assert_eq!(a.payload_json(), json!({"cid": cid, "token": token}));
    a.respond_access(true, None).await;
    env.service.expect("get.test.model").await.respond_model(json!({})).await;
    c.response(id).await.result();
    let id = c.send("call.test.other.method", json!(null)).await;
    let a = env.service.expect("access.test.other").await;
    assert_eq!(a.payload_json()["token"], token);
    a.respond_access(true, Some("*")).await;
    let call = env.service.expect("call.test.other.method").await;
    assert_eq!(call.payload_json()["token"], token);
    call.respond_result(json!(1)).await;
    c.response(id).await.result();
    // The auth request also carries the current token.
    let id = c.send("auth.test.auth.check", json!(null)).await;
    let req = env.service.expect("auth.test.auth.check").await;
    assert_eq!(req.payload_json()["token"], token);
    req.respond_result(json!(null)).await;
    c.response(id).await.result();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_token_wins_and_null_clears() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    for token in [json!({"user": "foo", "n": 1}), json!("plain"), json!(null)] {
        login(&mut env, &mut c, token.clone()).await;
        let id = c.send("call.test.model.method", json!(null)).await;
        let a = env.service.expect("access.test.model").await;
        assert_eq!(a.payload_json()["token"], token);
        a.respond_access(false, None).await;
        c.response(id).await.assert_error("system.accessDenied");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_of_one_connection_is_not_used_by_another() {
    let mut env = TestEnv::start().await;
    let mut c1 = env.client().await;
    login(&mut env, &mut c1, json!("secret")).await;
    let mut c2 = env.client().await;
    let id = c2.send("call.test.model.method", json!(null)).await;
    let a = env.service.expect("access.test.model").await;
    assert_eq!(a.payload_json()["token"], json!(null));
    a.respond_access(false, None).await;
    c2.response(id).await.result_or_error();
}

async fn subscribe_parent_and_collection(env: &mut TestEnv, c: &mut WsClient) {
    let id = c.send("subscribe.test.parent", json!(null)).await;
    env.service.serve_model("test.parent", json!({"child": {"rid": "test.model"}})).await;
    env.service.expect("get.test.model").await.respond_model(json!({"a": 1})).await;
    c.response(id).await.result();
    let id = c.send("subscribe.test.collection", json!(null)).await;
    env.service.serve_collection("test.collection", json!([1])).await;
    c.response(id).await.result();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_change_rechecks_access_and_keeps_granted_subscriptions() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let cid = login(&mut env, &mut c, json!({"user": "foo"})).await;
    subscribe_parent_and_collection(&mut env, &mut c).await;
    env.service.publish_json(&format!("conn.{cid}.token"), json!({"token": {"user": "bar"}})).await;
    let a1 = env.service.expect("access.test.parent").await;
    let a2 = env.service.expect("access.test.collection").await;
    assert_eq!(a1.payload_json()["token"], json!({"user": "bar"}));
    env.service.assert_no_request_on("access.test.model", QUIET).await;
    a1.respond_access(true, None).await;
    a2.respond_access(true, None).await;
    for rid in ["test.model", "test.parent", "test.collection"] {
        env.service.publish_event(rid, "custom", json!({"foo": "bar"})).await;
        assert_eq!(c.expect_event(&format!("{rid}.custom")).await, json!({"foo": "bar"}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_change_denied_unsubscribes() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let cid = login(&mut env, &mut c, json!({"user": "foo"})).await;
    subscribe_parent_and_collection(&mut env, &mut c).await;
    env.service.publish_json(&format!("conn.{cid}.token"), json!({"token": {"user": "bar"}})).await;
    env.service.expect("access.test.parent").await.respond_access(false, None).await;
    env.service.expect("access.test.collection").await.respond_error("system.accessDenied", "Access denied").await;
    let reason = json!({"reason": err("system.accessDenied", "Access denied")});
    let mut got = vec![c.next_event().await, c.next_event().await];
    got.sort_by_key(|e| e["event"].as_str().unwrap().to_owned());
    assert_eq!(
        got,
        vec![
            json!({"event": "test.collection.unsubscribe", "data": reason}),
            json!({"event": "test.parent.unsubscribe", "data": reason}),
        ]
    );
    for rid in ["test.model", "test.parent", "test.collection"] {
        env.service.publish_event(rid, "custom", json!(1)).await;
    }
    c.assert_no_message(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_token_on_a_tokenless_connection_does_not_recheck() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("subscribe.test.model", json!(null)).await;
    env.service.serve_model("test.model", json!({})).await;
    c.response(id).await.result();
    login(&mut env, &mut c, json!("first")).await;
    env.service.assert_no_request(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_conn_events_are_ignored() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let cid = login(&mut env, &mut c, json!("t")).await;
    env.service.publish_json(&format!("conn.{cid}.reaccess"), json!({})).await;
    env.service.publish_raw(&format!("conn.{cid}.token"), &b"not json"[..]).await;
    c.assert_no_message(QUIET).await;
    c.request("version", json!(null)).await.result();
}

/// The token event and the auth reply arrive on different NATS subscriptions; the reply must not
/// overtake the token, or the client's next request runs with the previous one. Repeated, since
/// the race is narrow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_sent_before_the_auth_reply_applies_to_the_next_request() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    for n in 0..1000 {
        let token = json!({ "n": n });
        let id = c.send("auth.test.auth.login", json!(null)).await;
        let req = env.service.expect("auth.test.auth.login").await;
        let cid = req.cid();
        env.service.publish_json_noflush(&format!("conn.{cid}.token"), &json!({ "token": token })).await;
        req.respond_result(json!(null)).await;
        c.response(id).await.result();
        let id = c.send("call.test.model.method", json!(null)).await;
        let a = env.service.expect("access.test.model").await;
        assert_eq!(a.payload_json()["token"], token, "iteration {n}");
        a.respond_access(false, None).await;
        c.response(id).await.assert_error("system.accessDenied");
    }
}
