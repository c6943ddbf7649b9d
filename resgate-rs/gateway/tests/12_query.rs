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
    assert_eq!(c.next_event().await, json!({"event": "test.model?q=foo.delete", "data": null}));
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
    // The normalised spelling is served from the cache, as Resgate does
    // (TestQueryModelIsFetchedFromCacheAfterQueryNormalization): an access request only.
    let id = c2.send("subscribe.test.model?a=1&b=2", json!(null)).await;
    env.service.expect("access.test.model").await.respond_access(true, None).await;
    c2.response(id).await.assert_result(json!({"models": {"test.model?a=1&b=2": {"n": 1}}}));
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

/// go-res's query handlers answer a get without a query with the normalised (empty-filter)
/// query: the resource is a query resource, as in Resgate. Query events reach it (over
/// WebSocket and in the HTTP cache), plain events do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_without_query_answered_as_query_resource_takes_query_events() {
    let mut env = TestEnv::start().await;
    env.service.listen("_QUERY.>").await;
    let mut c = env.client().await;
    let id = c.send("subscribe.test.list", json!(null)).await;
    env.service.expect("access.test.list").await.respond_access(true, None).await;
    let g = env.service.expect("get.test.list").await;
    assert_eq!(g.payload_json(), json!({}));
    g.respond_result(json!({"collection": ["a"], "query": "limit=10"})).await;
    c.response(id).await.assert_result(json!({"collections": {"test.list": ["a"]}}));
    env.service.publish_event("test.list", "add", json!({"idx": 0, "value": "plain"})).await;
    env.service.publish_event("test.list", "query", json!({"subject": "_QUERY.1"})).await;
    let q = env.service.expect("_QUERY.1").await;
    assert_eq!(q.payload_json(), json!({"query": "limit=10"}));
    q.respond_result(json!({"events": [{"event": "add", "data": {"idx": 1, "value": "b"}}]})).await;
    assert_eq!(c.next_message().await, json!({"event": "test.list.add", "data": {"idx": 1, "value": "b"}}));
    let get = {
        let addr = env.addr();
        tokio::spawn(async move { http_request(addr, "GET", "/api/test/list", &[], b"").await })
    };
    env.service.expect("access.test.list").await.respond_access(true, None).await;
    assert_eq!(get.await.unwrap().json(), json!(["a", "b"]));
}

/// Two spellings of one query on one connection are two subscriptions of one cache entry, each
/// sent in full and evented under its own resource ID (Resgate keys subscriptions by the
/// client's resource ID); over HTTP the second spelling gets the body too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_spellings_of_one_query_each_get_the_data() {
    let mut env = TestEnv::start().await;
    env.service.listen("_QUERY.>").await;
    let mut c = env.client().await;
    sub_query(&mut env, &mut c, "test.model?country=France&name=al", "country=france&name=al", json!({"n": 1})).await;
    let id = c.send("subscribe.test.model?name=AL&country=France", json!(null)).await;
    env.service.expect("access.test.model").await.respond_access(true, None).await;
    env.service
        .expect("get.test.model")
        .await
        .respond_result(json!({"model": {"n": 1}, "query": "country=france&name=al"}))
        .await;
    c.response(id).await.assert_result(json!({"models": {"test.model?name=AL&country=France": {"n": 1}}}));
    // One query request for the one normalised query; the change goes out under both IDs.
    env.service.publish_event("test.model", "query", json!({"subject": "_QUERY.2"})).await;
    let q = env.service.expect("_QUERY.2").await;
    assert_eq!(q.payload_json(), json!({"query": "country=france&name=al"}));
    env.service.assert_no_request_on("_QUERY.2", QUIET).await;
    q.respond_result(json!({"events": [{"event": "change", "data": {"values": {"n": 2}}}]})).await;
    let mut got = vec![c.next_message().await, c.next_message().await];
    got.sort_by_key(|v| v["event"].to_string());
    assert_eq!(
        got,
        vec![
            json!({"event": "test.model?country=France&name=al.change", "data": {"values": {"n": 2}}}),
            json!({"event": "test.model?name=AL&country=France.change", "data": {"values": {"n": 2}}}),
        ]
    );
    // Unsubscribing one spelling keeps the other.
    c.request("unsubscribe.test.model?name=AL&country=France", json!(null)).await.result();
    env.service.publish_event("test.model", "query", json!({"subject": "_QUERY.3"})).await;
    env.service
        .expect("_QUERY.3")
        .await
        .respond_result(json!({"events": [{"event": "change", "data": {"values": {"n": 3}}}]}))
        .await;
    assert_eq!(c.expect_event("test.model?country=France&name=al.change").await, json!({"values": {"n": 3}}));
    c.assert_no_message(QUIET).await;
    // HTTP, a third spelling: served from the cache entry, under the requested path.
    let get = {
        let addr = env.addr();
        tokio::spawn(async move { http_request(addr, "GET", "/api/test/model?NAME=al&country=FRANCE", &[], b"").await })
    };
    env.service.expect("access.test.model").await.respond_access(true, None).await;
    env.service
        .expect("get.test.model")
        .await
        .respond_result(json!({"model": {"n": 3}, "query": "country=france&name=al"}))
        .await;
    let r = get.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"n": 3}));
}

/// Two query resources of one name with different normalised queries: one query event, one
/// query request each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_query_request_per_normalized_query() {
    let mut env = TestEnv::start().await;
    env.service.listen("_QUERY.>").await;
    let mut c = env.client().await;
    sub_query(&mut env, &mut c, "test.model?q=a", "q=a", json!({"n": 1})).await;
    sub_query(&mut env, &mut c, "test.model?q=b", "q=b", json!({"n": 1})).await;
    sub_query(&mut env, &mut c, "test.model?q=A", "q=a", json!({"n": 1})).await;
    env.service.publish_event("test.model", "query", json!({"subject": "_QUERY.x"})).await;
    let mut queries: Vec<String> =
        env.service.expect_n(2).await.iter().map(|r| r.payload_json()["query"].as_str().unwrap().to_owned()).collect();
    queries.sort();
    assert_eq!(queries, ["q=a", "q=b"]);
    env.service.assert_no_request(QUIET).await;
}
