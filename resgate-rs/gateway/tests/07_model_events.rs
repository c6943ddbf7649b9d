//! Model events: change (values wrapper, no-op filtering, delete action, references), custom,
//! delete, events before the get response, legacy change format.

mod common;

use common::*;
use serde_json::{Value, json};

fn model() -> Value {
    json!({"string": "foo", "int": 42, "bool": true, "null": null})
}

async fn subscribed(env: &mut TestEnv, rid: &str, m: Value) -> WsClient {
    let mut c = env.client().await;
    let id = c.send(&format!("subscribe.{rid}"), json!(null)).await;
    env.service.serve_model(rid, m).await;
    c.response(id).await.result();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_event_is_forwarded_with_values() {
    let mut env = TestEnv::start().await;
    let mut c = subscribed(&mut env, "test.model", model()).await;
    env.service.publish_event("test.model", "change", json!({"values": {"string": "bar", "int": -12}})).await;
    assert_eq!(c.expect_event("test.model.change").await, json!({"values": {"string": "bar", "int": -12}}));
    env.service
        .publish_event("test.model", "change", json!({"values": {"string": {"action": "delete"}, "new": 1}}))
        .await;
    assert_eq!(
        c.expect_event("test.model.change").await,
        json!({"values": {"string": {"action": "delete"}, "new": 1}})
    );
    c.assert_no_message(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_op_changes_are_dropped() {
    let mut env = TestEnv::start().await;
    let mut c = subscribed(&mut env, "test.model", model()).await;
    env.service.publish_event("test.model", "change", json!({"values": {"string": "foo", "int": 42}})).await;
    env.service.publish_event("test.model", "change", json!({"values": {"missing": {"action": "delete"}}})).await;
    env.service.publish_event("test.model", "change", json!({"values": {}})).await;
    c.assert_no_message(QUIET).await;
    env.service.publish_event("test.model", "change", json!({"values": {"string": "foo", "int": 43}})).await;
    assert_eq!(c.expect_event("test.model.change").await, json!({"values": {"int": 43}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_is_applied_to_the_cache() {
    let mut env = TestEnv::start().await;
    let mut c1 = subscribed(&mut env, "test.model", model()).await;
    env.service
        .publish_event("test.model", "change", json!({"values": {"string": "bar", "null": {"action": "delete"}}}))
        .await;
    c1.expect_event("test.model.change").await;
    let mut c2 = env.client().await;
    let id = c2.send("subscribe.test.model", json!(null)).await;
    env.service.expect("access.test.model").await.respond_access(true, None).await;
    c2.response(id).await.assert_result(json!({"models": {"test.model": {"string": "bar", "int": 42, "bool": true}}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_before_the_get_response_are_discarded() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("subscribe.test.model", json!(null)).await;
    env.service.expect("access.test.model").await.respond_access(true, None).await;
    let g = env.service.expect("get.test.model").await;
    env.service.publish_event("test.model", "change", json!({"values": {"string": "bar"}})).await;
    env.service.publish_event("test.model", "custom", json!({"early": true})).await;
    g.respond_model(model()).await;
    c.response(id).await.assert_result(json!({"models": {"test.model": model()}}));
    c.assert_no_message(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_events_are_forwarded_verbatim() {
    let mut env = TestEnv::start().await;
    let mut c = subscribed(&mut env, "test.model", model()).await;
    for payload in [json!({"foo": ["bar", 1]}), json!(42), json!("text"), json!(null), json!([1, {"a": 2}])] {
        env.service.publish_event("test.model", "custom", payload.clone()).await;
        let ev = c.next_event().await;
        assert_eq!(ev["event"], json!("test.model.custom"));
        assert_eq!(ev.get("data").cloned().unwrap_or(Value::Null), payload, "{ev}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_on_unsubscribed_resources_are_not_sent() {
    let mut env = TestEnv::start().await;
    let mut c = subscribed(&mut env, "test.model", model()).await;
    env.service.publish_event("test.other", "custom", json!(1)).await;
    env.service.publish_event("test.model.child", "custom", json!(1)).await;
    c.assert_no_message(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_on_collection_or_add_on_model_is_dropped() {
    let mut env = TestEnv::start().await;
    let mut c = subscribed(&mut env, "test.model", model()).await;
    env.service.publish_event("test.model", "add", json!({"idx": 0, "value": 1})).await;
    env.service.publish_event("test.model", "remove", json!({"idx": 0})).await;
    env.service.publish_event("test.model", "change", json!({"values": {"x": [1, 2]}})).await;
    c.assert_no_message(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_change_format_is_detected() {
    let mut env = TestEnv::start().await;
    let mut c = subscribed(&mut env, "test.model", model()).await;
    env.service.publish_event("test.model", "change", json!({"string": "bar", "int": -12})).await;
    assert_eq!(c.expect_event("test.model.change").await, json!({"values": {"string": "bar", "int": -12}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_adding_a_reference_carries_the_resource() {
    let mut env = TestEnv::start().await;
    let mut c = subscribed(&mut env, "test.model", model()).await;
    env.service.publish_event("test.model", "change", json!({"values": {"ref": {"rid": "test.child"}}})).await;
    env.service.expect("get.test.child").await.respond_model(json!({"name": "child", "gc": {"rid": "test.gc"}})).await;
    env.service.expect("get.test.gc").await.respond_collection(json!([1])).await;
    assert_eq!(
        c.expect_event("test.model.change").await,
        json!({
            "values": {"ref": {"rid": "test.child"}},
            "models": {"test.child": {"name": "child", "gc": {"rid": "test.gc"}}},
            "collections": {"test.gc": [1]},
        })
    );
    env.service.publish_event("test.child", "custom", json!("x")).await;
    assert_eq!(c.expect_event("test.child.custom").await, json!("x"));
    // Replacing the reference with a primitive drops the indirect subscription.
    env.service.publish_event("test.model", "change", json!({"values": {"ref": null}})).await;
    assert_eq!(c.expect_event("test.model.change").await, json!({"values": {"ref": null}}));
    env.service.publish_event("test.child", "custom", json!("y")).await;
    c.assert_no_message(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_to_an_already_sent_reference_carries_nothing_extra() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("subscribe.test.model", json!(null)).await;
    env.service.serve_model("test.model", json!({"a": {"rid": "test.child"}})).await;
    env.service.expect("get.test.child").await.respond_model(json!({"n": 1})).await;
    c.response(id)
        .await
        .assert_result(json!({"models": {"test.model": {"a": {"rid": "test.child"}}, "test.child": {"n": 1}}}));
    // A second reference to a resource the client already has:
    env.service.publish_event("test.model", "change", json!({"values": {"b": {"rid": "test.child"}}})).await;
    assert_eq!(c.expect_event("test.model.change").await, json!({"values": {"b": {"rid": "test.child"}}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_to_soft_reference_is_not_followed() {
    let mut env = TestEnv::start().await;
    let mut c = subscribed(&mut env, "test.model", model()).await;
    env.service
        .publish_event("test.model", "change", json!({"values": {"ref": {"rid": "test.child", "soft": true}}}))
        .await;
    assert_eq!(
        c.expect_event("test.model.change").await,
        json!({"values": {"ref": {"rid": "test.child", "soft": true}}})
    );
    env.service.assert_no_request(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_with_broken_reference_carries_the_error() {
    let mut env = TestEnv::start().await;
    let mut c = subscribed(&mut env, "test.model", model()).await;
    env.service.publish_event("test.model", "change", json!({"values": {"ref": {"rid": "test.missing"}}})).await;
    env.service.expect("get.test.missing").await.respond_error("system.notFound", "Not found").await;
    assert_eq!(
        c.expect_event("test.model.change").await,
        json!({"values": {"ref": {"rid": "test.missing"}}, "errors": {"test.missing": err("system.notFound", "Not found")}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_event_then_unsubscribe_and_nothing_after() {
    let mut env = TestEnv::start().await;
    let mut c = subscribed(&mut env, "test.model", model()).await;
    env.service.publish_raw("event.test.model.delete", &b""[..]).await;
    let ev = c.next_event().await;
    // As Resgate encodes a delete without payload.
    assert_eq!(ev, json!({"event": "test.model.delete", "data": null}));
    assert_eq!(c.expect_event("test.model.unsubscribe").await, json!({"reason": err("system.deleted", "Deleted")}));
    env.service.publish_event("test.model", "custom", json!(1)).await;
    c.assert_no_message(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_order_per_resource_is_kept() {
    let mut env = TestEnv::start().await;
    let mut c = subscribed(&mut env, "test.model", json!({"n": 0})).await;
    for n in 1..=50 {
        env.service.publish_event("test.model", "change", json!({"values": {"n": n}})).await;
    }
    for n in 1..=50 {
        assert_eq!(c.expect_event("test.model.change").await, json!({"values": {"n": n}}));
    }
}
