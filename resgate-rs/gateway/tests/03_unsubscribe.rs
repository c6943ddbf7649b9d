//! Unsubscribe: response shape, `count`, `system.noSubscription`, references and cache eviction.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

async fn subscribe(env: &mut TestEnv, c: &mut WsClient, rid: &str, model: serde_json::Value) {
    let id = c.send(&format!("subscribe.{rid}"), json!(null)).await;
    env.service.serve_model(rid, model).await;
    c.response(id).await.result();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_response_has_no_result_and_stops_events() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    subscribe(&mut env, &mut c, "test.model", json!({"a": 1})).await;
    let r = c.request("unsubscribe.test.model", json!(null)).await;
    assert_eq!(r.0, json!({"id": r.0["id"]}), "unsubscribe success is {{\"id\":N}} only");
    env.service.publish_event("test.model", "custom", json!(1)).await;
    c.assert_no_message(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_without_subscription() {
    let env = TestEnv::start().await;
    let mut c = env.client().await;
    let r = c.request("unsubscribe.test.model", json!(null)).await;
    assert_eq!(r.error(), err("system.noSubscription", "No subscription"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_counts_direct_subscriptions() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    subscribe(&mut env, &mut c, "test.model", json!({"a": 1})).await;
    for _ in 0..2 {
        let id = c.send("subscribe.test.model", json!(null)).await;
        let r = loop {
            tokio::select! {
                r = c.response(id) => break r,
                a = env.service.expect("access.test.model") => a.respond_access(true, None).await,
            }
        };
        r.assert_result(json!({}));
    }
    // Three direct subscriptions now: one unsubscribe keeps the events flowing.
    c.request("unsubscribe.test.model", json!(null)).await.result();
    env.service.publish_event("test.model", "custom", json!("still")).await;
    assert_eq!(c.expect_event("test.model.custom").await, json!("still"));
    // count larger than the subscriptions left is an error and changes nothing.
    c.request("unsubscribe.test.model", json!({"count": 3})).await.assert_error("system.noSubscription");
    c.request("unsubscribe.test.model", json!({"count": 2})).await.result();
    env.service.publish_event("test.model", "custom", json!("gone")).await;
    c.assert_no_message(QUIET).await;
    c.request("unsubscribe.test.model", json!(null)).await.assert_error("system.noSubscription");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_invalid_count_is_invalid_params() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    subscribe(&mut env, &mut c, "test.model", json!({"a": 1})).await;
    for params in [json!({"count": 0}), json!({"count": -1}), json!({"count": "1"}), json!({"count": 1.5}), json!("x")]
    {
        let r = c.request("unsubscribe.test.model", params.clone()).await;
        assert_eq!(r.error_code(), "system.invalidParams", "params {params}: {}", r.0);
    }
    for params in [json!({}), json!({"count": 1})] {
        let id = c.send("subscribe.test.model", json!(null)).await;
        loop {
            tokio::select! {
                r = c.response(id) => { r.result(); break }
                a = env.service.expect("access.test.model") => a.respond_access(true, None).await,
            }
        }
        c.request("unsubscribe.test.model", params).await.result();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribing_parent_drops_indirect_child_unless_direct() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("subscribe.test.parent", json!(null)).await;
    env.service.serve_model("test.parent", json!({"child": {"rid": "test.child"}})).await;
    env.service.expect("get.test.child").await.respond_model(json!({"n": 1})).await;
    c.response(id).await.result();
    let id = c.send("subscribe.test.parent2", json!(null)).await;
    env.service.serve_model("test.parent2", json!({"child": {"rid": "test.child"}})).await;
    c.response(id).await.assert_result(json!({"models": {"test.parent2": {"child": {"rid": "test.child"}}}}));
    c.request("unsubscribe.test.parent", json!(null)).await.result();
    // Still reachable through parent2.
    env.service.publish_event("test.child", "custom", json!(1)).await;
    assert_eq!(c.expect_event("test.child.custom").await, json!(1));
    c.request("unsubscribe.test.parent2", json!(null)).await.result();
    env.service.publish_event("test.child", "custom", json!(2)).await;
    env.service.publish_event("test.parent", "custom", json!(2)).await;
    c.assert_no_message(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribing_indirect_only_resource_is_no_subscription() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("subscribe.test.parent", json!(null)).await;
    env.service.serve_model("test.parent", json!({"child": {"rid": "test.child"}})).await;
    env.service.expect("get.test.child").await.respond_model(json!({"n": 1})).await;
    c.response(id).await.result();
    c.request("unsubscribe.test.child", json!(null)).await.assert_error("system.noSubscription");
    env.service.publish_event("test.child", "custom", json!(1)).await;
    assert_eq!(c.expect_event("test.child.custom").await, json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_is_kept_within_unsubscribe_delay() {
    let mut env = TestEnv::start_with(|c| c.unsubscribe_delay = 5000).await;
    let mut c = env.client().await;
    subscribe(&mut env, &mut c, "test.model", json!({"a": 1})).await;
    c.request("unsubscribe.test.model", json!(null)).await.result();
    let id = c.send("subscribe.test.model", json!(null)).await;
    env.service.expect("access.test.model").await.respond_access(true, None).await;
    c.response(id).await.assert_result(json!({"models": {"test.model": {"a": 1}}}));
    env.service.assert_no_request(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_is_evicted_after_unsubscribe_delay_and_refetched() {
    let mut env = TestEnv::start_with(|c| c.unsubscribe_delay = 100).await;
    let mut c = env.client().await;
    subscribe(&mut env, &mut c, "test.model", json!({"a": 1})).await;
    c.request("unsubscribe.test.model", json!(null)).await.result();
    // Once evicted, a change published now must not survive in the gateway: the next subscribe
    // gets the resource again and serves the new state.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let id = c.send("subscribe.test.model", json!(null)).await;
    env.service.serve_model("test.model", json!({"a": 2})).await;
    c.response(id).await.assert_result(json!({"models": {"test.model": {"a": 2}}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_connection_releases_subscriptions() {
    let mut env = TestEnv::start_with(|c| c.unsubscribe_delay = 100).await;
    let mut c = env.client().await;
    subscribe(&mut env, &mut c, "test.model", json!({"a": 1})).await;
    c.close().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut c2 = env.client().await;
    let id = c2.send("subscribe.test.model", json!(null)).await;
    env.service.serve_model("test.model", json!({"a": 3})).await;
    c2.response(id).await.assert_result(json!({"models": {"test.model": {"a": 3}}}));
}

/// a → b → c → a: a cycle of three lives while a direct subscription reaches it. Cutting b → c
/// leaves c reachable through nothing but the cycle, so c (and its events) go; unsubscribing a
/// then drops the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cycle_is_collected_when_unreachable() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("subscribe.test.a", json!(null)).await;
    env.service.serve_model("test.a", json!({"next": {"rid": "test.b"}})).await;
    env.service.expect("get.test.b").await.respond_model(json!({"next": {"rid": "test.c"}})).await;
    env.service.expect("get.test.c").await.respond_model(json!({"next": {"rid": "test.a"}})).await;
    let set = c.response(id).await.result();
    assert_eq!(set["models"].as_object().unwrap().len(), 3, "{set}");
    for rid in ["test.a", "test.b", "test.c"] {
        env.service.publish_event(rid, "custom", json!(rid)).await;
        assert_eq!(c.next_event().await["event"], json!(format!("{rid}.custom")));
    }
    env.service.publish_event("test.b", "change", json!({"values": {"next": null}})).await;
    assert_eq!(c.next_event().await["event"], json!("test.b.change"));
    env.service.publish_event("test.c", "custom", json!(1)).await;
    c.assert_no_message(QUIET).await;
    c.request("unsubscribe.test.a", json!(null)).await.result_or_error();
    for rid in ["test.a", "test.b"] {
        env.service.publish_event(rid, "custom", json!(1)).await;
    }
    c.assert_no_message(QUIET).await;
    // Nothing is left subscribed: unsubscribing any of them again is an error.
    for rid in ["test.a", "test.b", "test.c"] {
        c.request(&format!("unsubscribe.{rid}"), json!(null)).await.assert_error("system.noSubscription");
    }
}
