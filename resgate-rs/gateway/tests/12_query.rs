//! Query resources: query in payloads, normalised-query caching, query events with events /
//! model / collection / error replies, aliasing of non-query replies.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_is_sent_in_payloads_not_subjects() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("subscribe.test.model?q=foo&f=bar", json!(null)).await;
    let a = env.service.expect("access.test.model").await;
    assert_eq!(a.payload_json(), json!({"cid": a.cid(), "token": null, "query": "q=foo&f=bar"}));
    a.respond_access(true, None).await;
    let g = env.service.expect("get.test.model").await;
    assert_eq!(g.payload_json(), json!({"query": "q=foo&f=bar"}));
    g.respond_result(json!({"model": {"a": 1}, "query": "f=bar&q=foo"})).await;
    c.response(id).await.assert_result(json!({"models": {"test.model?q=foo&f=bar": {"a": 1}}}));
}

async fn sub_query(env: &mut TestEnv, c: &mut WsClient, rid: &str, normalized: &str, model: serde_json::Value) {
    let id = c.send(&format!("subscribe.{rid}"), json!(null)).await;
    let name = rid.split('?').next().unwrap();
    env.service.expect(&format!("access.{name}")).await.respond_access(true, None).await;
    env.service.expect(&format!("get.{name}")).await.respond_result(json!({"model": model, "query": normalized})).await;
    c.response(id).await.result();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_event_with_events_reply() {
    let mut env = TestEnv::start().await;
    env.service.listen("_QUERY.>").await;
    let mut c = env.client().await;
    sub_query(&mut env, &mut c, "test.model?q=foo", "q=foo", json!({"a": 1})).await;
    env.service.publish_event("test.model", "query", json!({"subject": "_QUERY.1"})).await;
    let q = env.service.expect("_QUERY.1").await;
    assert_eq!(q.payload_json(), json!({"query": "q=foo"}));
    q.respond_result(json!({"events": [{"event": "change", "data": {"values": {"a": 2, "b": 3}}}]})).await;
    assert_eq!(c.expect_event("test.model?q=foo.change").await, json!({"values": {"a": 2, "b": 3}}));
    // Ordinary change events do not touch query resources.
    env.service.publish_event("test.model", "change", json!({"values": {"a": 9}})).await;
    c.assert_no_message(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_event_collection_events_and_collection_reply() {
    let mut env = TestEnv::start().await;
    env.service.listen("_QUERY.>").await;
    let mut c = env.client().await;
    let id = c.send("subscribe.test.list?limit=3", json!(null)).await;
    env.service.expect("access.test.list").await.respond_access(true, None).await;
    env.service
        .expect("get.test.list")
        .await
        .respond_result(json!({"collection": [1, 2, 3], "query": "limit=3"}))
        .await;
    c.response(id).await.assert_result(json!({"collections": {"test.list?limit=3": [1, 2, 3]}}));
    env.service.publish_event("test.list", "query", json!({"subject": "_QUERY.a"})).await;
    env.service
        .expect("_QUERY.a")
        .await
        .respond_result(json!({"events": [
            {"event": "remove", "data": {"idx": 0}},
            {"event": "add", "data": {"idx": 2, "value": 4}},
        ]}))
        .await;
    assert_eq!(c.expect_event("test.list?limit=3.remove").await, json!({"idx": 0}));
    assert_eq!(c.expect_event("test.list?limit=3.add").await, json!({"idx": 2, "value": 4}));
    // A collection reply is diffed against [2, 3, 4].
    env.service.publish_event("test.list", "query", json!({"subject": "_QUERY.b"})).await;
    env.service.expect("_QUERY.b").await.respond_result(json!({"collection": [2, 3, 4, 5]})).await;
    assert_eq!(c.expect_event("test.list?limit=3.add").await, json!({"idx": 3, "value": 5}));
    c.assert_no_message(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_event_model_reply_is_diffed_and_not_found_deletes() {
    let mut env = TestEnv::start().await;
    env.service.listen("_QUERY.>").await;
    let mut c = env.client().await;
    sub_query(&mut env, &mut c, "test.model?q=foo", "q=foo", json!({"a": 1, "b": 2})).await;
    env.service.publish_event("test.model", "query", json!({"subject": "_QUERY.m"})).await;
    env.service.expect("_QUERY.m").await.respond_result(json!({"model": {"a": 1, "c": 3}})).await;
    assert_eq!(c.expect_event("test.model?q=foo.change").await, json!({"values": {"b": {"action": "delete"}, "c": 3}}));
    env.service.publish_event("test.model", "query", json!({"subject": "_QUERY.n"})).await;
    env.service.expect("_QUERY.n").await.respond_error("system.notFound", "Not found").await;
    assert_eq!(c.next_event().await, json!({"event": "test.model?q=foo.delete"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_event_without_events_changes_nothing() {
    let mut env = TestEnv::start().await;
    env.service.listen("_QUERY.>").await;
    let mut c = env.client().await;
    sub_query(&mut env, &mut c, "test.model?q=foo", "q=foo", json!({"a": 1})).await;
    env.service.publish_event("test.model", "query", json!({"subject": "_QUERY.e"})).await;
    env.service.expect("_QUERY.e").await.respond_result(json!({})).await;
    c.assert_no_message(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_normalized_queries_share_one_entry() {
    let mut env = TestEnv::start().await;
    env.service.listen("_QUERY.>").await;
    let mut c1 = env.client().await;
    let mut c2 = env.client().await;
    sub_query(&mut env, &mut c1, "test.model?b=2&a=1", "a=1&b=2", json!({"n": 1})).await;
    sub_query(&mut env, &mut c2, "test.model?a=1&b=2", "a=1&b=2", json!({"n": 1})).await;
    env.service.publish_event("test.model", "query", json!({"subject": "_QUERY.s"})).await;
    let q = env.service.expect("_QUERY.s").await;
    assert_eq!(q.payload_json(), json!({"query": "a=1&b=2"}));
    env.service.assert_no_request_on("_QUERY.s", QUIET).await;
    q.respond_result(json!({"events": [{"event": "change", "data": {"values": {"n": 2}}}]})).await;
    assert_eq!(c1.expect_event("test.model?b=2&a=1.change").await, json!({"values": {"n": 2}}));
    assert_eq!(c2.expect_event("test.model?a=1&b=2.change").await, json!({"values": {"n": 2}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_raw_query_is_served_from_cache() {
    let mut env = TestEnv::start().await;
    let mut c1 = env.client().await;
    sub_query(&mut env, &mut c1, "test.model?q=1", "q=1", json!({"n": 1})).await;
    let mut c2 = env.client().await;
    let id = c2.send("subscribe.test.model?q=1", json!(null)).await;
    env.service.expect("access.test.model").await.respond_access(true, None).await;
    c2.response(id).await.assert_result(json!({"models": {"test.model?q=1": {"n": 1}}}));
    env.service.assert_no_request(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_without_query_aliases_the_plain_resource() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("subscribe.test.model?ignored=1", json!(null)).await;
    env.service.expect("access.test.model").await.respond_access(true, None).await;
    env.service.expect("get.test.model").await.respond_model(json!({"a": 1})).await;
    c.response(id).await.assert_result(json!({"models": {"test.model?ignored=1": {"a": 1}}}));
    env.service.publish_event("test.model", "change", json!({"values": {"a": 2}})).await;
    assert_eq!(c.expect_event("test.model?ignored=1.change").await, json!({"values": {"a": 2}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_queue_while_query_requests_are_pending() {
    let mut env = TestEnv::start().await;
    env.service.listen("_QUERY.>").await;
    let mut c = env.client().await;
    sub_query(&mut env, &mut c, "test.model?q=foo", "q=foo", json!({"a": 1})).await;
    let id = c.send("subscribe.test.model", json!(null)).await;
    env.service.expect("access.test.model").await.respond_access(true, None).await;
    env.service.expect("get.test.model").await.respond_model(json!({"plain": 1})).await;
    c.response(id).await.result();
    env.service.publish_event("test.model", "query", json!({"subject": "_QUERY.w"})).await;
    let q = env.service.expect("_QUERY.w").await;
    env.service.publish_event("test.model", "change", json!({"values": {"plain": 2}})).await;
    c.assert_no_message(QUIET).await;
    q.respond_result(json!({"events": [{"event": "change", "data": {"values": {"a": 2}}}]})).await;
    assert_eq!(c.expect_event("test.model?q=foo.change").await, json!({"values": {"a": 2}}));
    assert_eq!(c.expect_event("test.model.change").await, json!({"values": {"plain": 2}}));
}
