//! Collection events: add/remove with idx, references in add, out-of-range events dropped.

mod common;

use common::*;
use serde_json::{Value, json};

async fn subscribed(env: &mut TestEnv, rid: &str, col: Value) -> WsClient {
    let mut c = env.client().await;
    let id = c.send(&format!("subscribe.{rid}"), json!(null)).await;
    env.service.serve_collection(rid, col).await;
    c.response(id).await.result();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_and_remove_are_forwarded() {
    let mut env = TestEnv::start().await;
    let mut c = subscribed(&mut env, "test.collection", json!(["foo", 42, true, null])).await;
    env.service.publish_event("test.collection", "add", json!({"idx": 1, "value": "bar"})).await;
    assert_eq!(c.expect_event("test.collection.add").await, json!({"idx": 1, "value": "bar"}));
    env.service.publish_event("test.collection", "remove", json!({"idx": 0})).await;
    assert_eq!(c.expect_event("test.collection.remove").await, json!({"idx": 0}));
    env.service.publish_event("test.collection", "add", json!({"idx": 4, "value": {"data": {"x": 1}}})).await;
    assert_eq!(c.expect_event("test.collection.add").await, json!({"idx": 4, "value": {"data": {"x": 1}}}));
    // The cache now holds ["bar", 42, true, null, {"data":..}].
    let mut c2 = env.client().await;
    let id = c2.send("subscribe.test.collection", json!(null)).await;
    env.service.expect("access.test.collection").await.respond_access(true, None).await;
    c2.response(id)
        .await
        .assert_result(json!({"collections": {"test.collection": ["bar", 42, true, null, {"data": {"x": 1}}]}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_events_are_dropped() {
    let mut env = TestEnv::start().await;
    let mut c = subscribed(&mut env, "test.collection", json!([1, 2])).await;
    env.service.publish_event("test.collection", "add", json!({"idx": 3, "value": 9})).await;
    env.service.publish_event("test.collection", "add", json!({"idx": -1, "value": 9})).await;
    env.service.publish_event("test.collection", "remove", json!({"idx": 2})).await;
    env.service.publish_event("test.collection", "change", json!({"values": {"a": 1}})).await;
    env.service.publish_event("test.collection", "add", json!({"idx": 0, "value": [1]})).await;
    c.assert_no_message(QUIET).await;
    env.service.publish_event("test.collection", "add", json!({"idx": 2, "value": 3})).await;
    assert_eq!(c.expect_event("test.collection.add").await, json!({"idx": 2, "value": 3}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_with_reference_carries_the_resource() {
    let mut env = TestEnv::start().await;
    let mut c = subscribed(&mut env, "test.collection", json!([])).await;
    env.service.publish_event("test.collection", "add", json!({"idx": 0, "value": {"rid": "test.model"}})).await;
    env.service.expect("get.test.model").await.respond_model(json!({"name": "m"})).await;
    assert_eq!(
        c.expect_event("test.collection.add").await,
        json!({"idx": 0, "value": {"rid": "test.model"}, "models": {"test.model": {"name": "m"}}})
    );
    env.service.publish_event("test.model", "change", json!({"values": {"name": "n"}})).await;
    assert_eq!(c.expect_event("test.model.change").await, json!({"values": {"name": "n"}}));
    // Removing the only reference drops the indirect subscription.
    env.service.publish_event("test.collection", "remove", json!({"idx": 0})).await;
    assert_eq!(c.expect_event("test.collection.remove").await, json!({"idx": 0}));
    env.service.publish_event("test.model", "custom", json!(1)).await;
    c.assert_no_message(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_queue_behind_a_loading_reference() {
    let mut env = TestEnv::start().await;
    let mut c = subscribed(&mut env, "test.collection", json!([])).await;
    env.service.publish_event("test.collection", "add", json!({"idx": 0, "value": {"rid": "test.model"}})).await;
    let g = env.service.expect("get.test.model").await;
    env.service.publish_event("test.collection", "add", json!({"idx": 1, "value": "after"})).await;
    c.assert_no_message(QUIET).await;
    g.respond_model(json!({})).await;
    assert_eq!(
        c.expect_event("test.collection.add").await,
        json!({"idx": 0, "value": {"rid": "test.model"}, "models": {"test.model": {}}})
    );
    assert_eq!(c.expect_event("test.collection.add").await, json!({"idx": 1, "value": "after"}));
}

/// The get reply splits the resource's events exactly where NATS put it: an `add` sent just
/// before the reply is already in the collection (and dropped), one sent just after is applied.
/// Repeated over fresh resources, since the two travel on different NATS subscriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_get_reply_splits_events_in_wire_order() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    for i in 0..100 {
        let rid = format!("test.col{i}");
        let id = c.send(&format!("subscribe.{rid}"), json!(null)).await;
        env.service.expect(&format!("access.{rid}")).await.respond_access(true, None).await;
        let get = env.service.expect(&format!("get.{rid}")).await;
        env.service.publish_event_noflush(&rid, "add", &json!({"idx": 1, "value": "early"})).await;
        get.respond_collection(json!(["a", "early"])).await;
        env.service.publish_event_noflush(&rid, "add", &json!({"idx": 2, "value": "late"})).await;
        env.service.flush().await;
        // The late add lands in the response or comes as an event, depending on when the client
        // registered; either way the client ends with each item once.
        let result = c.response(id).await.result();
        let mut items: Vec<Value> = result["collections"][&rid].as_array().expect("collection").clone();
        if items.len() == 2 {
            let ev = c.next_event().await;
            assert_eq!(ev["event"], json!(format!("{rid}.add")), "iteration {i}: {ev}");
            items.insert(ev["data"]["idx"].as_u64().unwrap() as usize, ev["data"]["value"].clone());
        }
        assert_eq!(items, vec![json!("a"), json!("early"), json!("late")], "iteration {i}");
        c.assert_no_message(std::time::Duration::ZERO).await;
    }
}
