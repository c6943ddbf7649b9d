//! system.reset (resources: re-get and diff; notFound -> delete; access: re-access) and
//! system.tokenReset.

mod common;

use common::*;
use serde_json::{Value, json};

async fn sub_model(env: &mut TestEnv, c: &mut WsClient, rid: &str, m: Value) {
    let id = c.send(&format!("subscribe.{rid}"), json!(null)).await;
    env.service.serve_model(rid, m).await;
    c.response(id).await.result();
}

async fn sub_collection(env: &mut TestEnv, c: &mut WsClient, rid: &str, col: Value) {
    let id = c.send(&format!("subscribe.{rid}"), json!(null)).await;
    env.service.serve_collection(rid, col).await;
    c.response(id).await.result();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_model_is_refetched_and_diffed() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    sub_model(&mut env, &mut c, "test.model", json!({"string": "foo", "int": 42, "gone": true})).await;
    env.service.publish_json("system.reset", json!({"resources": ["test.>"]})).await;
    let g = env.service.expect("get.test.model").await;
    assert_eq!(g.payload_json(), json!({}));
    g.respond_model(json!({"string": "bar", "int": 42, "new": null})).await;
    assert_eq!(
        c.expect_event("test.model.change").await,
        json!({"values": {"string": "bar", "gone": {"action": "delete"}, "new": null}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_without_changes_sends_no_event() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    sub_model(&mut env, &mut c, "test.model", json!({"a": 1})).await;
    env.service.publish_json("system.reset", json!({"resources": ["test.model"]})).await;
    env.service.expect("get.test.model").await.respond_model(json!({"a": 1})).await;
    c.assert_no_message(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_collection_emits_remove_and_add() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    sub_collection(&mut env, &mut c, "test.collection", json!([1, 2, 3])).await;
    env.service.publish_json("system.reset", json!({"resources": ["test.*"]})).await;
    env.service.expect("get.test.collection").await.respond_collection(json!([1, 3, 4])).await;
    assert_eq!(c.expect_event("test.collection.remove").await, json!({"idx": 1}));
    assert_eq!(c.expect_event("test.collection.add").await, json!({"idx": 2, "value": 4}));
    c.assert_no_message(QUIET).await;
}

/// Applies add/remove events to a local copy: whatever sequence the gateway picks, the client
/// must end in the service's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_collection_events_reach_the_new_state() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let old = json!(["a", "b", "c", "d", "e", "f"]);
    let new = json!(["x", "b", "d", "c", "f", "y", "a"]);
    sub_collection(&mut env, &mut c, "test.collection", old.clone()).await;
    env.service.publish_json("system.reset", json!({"resources": ["test.collection"]})).await;
    env.service.expect("get.test.collection").await.respond_collection(new.clone()).await;
    let mut local = old.as_array().unwrap().clone();
    while local != *new.as_array().unwrap() {
        let ev = c.next_event().await;
        let idx = ev["data"]["idx"].as_u64().unwrap() as usize;
        match ev["event"].as_str().unwrap() {
            "test.collection.add" => local.insert(idx, ev["data"]["value"].clone()),
            "test.collection.remove" => {
                local.remove(idx);
            }
            other => panic!("unexpected event {other}"),
        }
    }
    c.assert_no_message(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_not_found_becomes_delete() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    sub_model(&mut env, &mut c, "test.model", json!({"a": 1})).await;
    env.service.publish_json("system.reset", json!({"resources": ["test.model"]})).await;
    env.service.expect("get.test.model").await.respond_error("system.notFound", "Not found").await;
    assert_eq!(c.next_event().await, json!({"event": "test.model.delete", "data": null}));
    assert_eq!(c.expect_event("test.model.unsubscribe").await, json!({"reason": err("system.deleted", "Deleted")}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_other_error_keeps_the_resource() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    sub_model(&mut env, &mut c, "test.model", json!({"a": 1})).await;
    env.service.publish_json("system.reset", json!({"resources": ["test.model"]})).await;
    env.service.expect("get.test.model").await.respond_error("system.internalError", "Internal error").await;
    c.assert_no_message(QUIET).await;
    env.service.publish_event("test.model", "change", json!({"values": {"a": 2}})).await;
    assert_eq!(c.expect_event("test.model.change").await, json!({"values": {"a": 2}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_patterns_that_do_not_match_send_nothing() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    sub_model(&mut env, &mut c, "test.model", json!({"a": 1})).await;
    for p in ["test", "test.model.>", "other.>", "test.*.x", "*"] {
        env.service.publish_json("system.reset", json!({ "resources": [p] })).await;
    }
    env.service.assert_no_request(QUIET).await;
    env.service.publish_json("system.reset", json!({"resources": ["*.model"]})).await;
    env.service.expect("get.test.model").await.respond_model(json!({"a": 1})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_access_rechecks_and_denial_unsubscribes() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    sub_model(&mut env, &mut c, "test.model", json!({"a": 1})).await;
    env.service.publish_json("system.reset", json!({"access": ["test.>"]})).await;
    let a = env.service.expect("access.test.model").await;
    env.service.assert_no_request_on("get.test.model", QUIET).await;
    a.respond_access(false, None).await;
    assert_eq!(
        c.expect_event("test.model.unsubscribe").await,
        json!({"reason": err("system.accessDenied", "Access denied")})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_throttle_limits_parallel_gets() {
    let mut env = TestEnv::start_with(|c| c.reset_throttle = 2).await;
    let mut c = env.client().await;
    for i in 0..5 {
        sub_model(&mut env, &mut c, &format!("test.m{i}"), json!({"i": i})).await;
    }
    env.service.publish_json("system.reset", json!({"resources": ["test.>"]})).await;
    let mut inflight = env.service.expect_n(2).await;
    env.service.assert_no_request(QUIET).await;
    let mut served = 0;
    while let Some(r) = inflight.pop() {
        let rid = r.subject.trim_start_matches("get.").to_owned();
        let i: u64 = rid.trim_start_matches("test.m").parse().unwrap();
        r.respond_model(json!({ "i": i })).await;
        served += 1;
        if served + inflight.len() < 5 {
            inflight.extend(env.service.expect_n(1).await);
        }
    }
    c.assert_no_message(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_reset_sends_auth_for_matching_tids() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("auth.test.auth.login", json!(null)).await;
    let req = env.service.expect("auth.test.auth.login").await;
    let cid = req.cid();
    env.service.publish_json(&format!("conn.{cid}.token"), json!({"token": {"user": "foo"}, "tid": "t1"})).await;
    req.respond_result(json!(null)).await;
    c.response(id).await.result();
    env.service.publish_json("system.tokenReset", json!({"tids": ["other"], "subject": "auth.test.refresh"})).await;
    env.service.assert_no_request(QUIET).await;
    env.service.publish_json("system.tokenReset", json!({"tids": ["x", "t1"], "subject": "auth.test.refresh"})).await;
    let r = env.service.expect("auth.test.refresh").await;
    let p = r.payload_json();
    assert_eq!(p["cid"], json!(cid));
    assert_eq!(p["token"], json!({"user": "foo"}));
    assert!(p.get("params").is_none(), "no params: {p}");
    r.respond_result(json!(null)).await;
    c.assert_no_message(QUIET).await;
}

/// The re-fetch's reply keeps its place among the resource's events, as the first get's does: an
/// add the service sends just before replying is already in the reply (so not applied twice), and
/// one sent just after is applied after the diff (so not reverted by it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_reply_splits_events_in_wire_order() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    for i in 0..100 {
        let rid = format!("test.col{i}");
        sub_collection(&mut env, &mut c, &rid, json!(["a"])).await;
        env.service.publish_json("system.reset", json!({"resources": [rid]})).await;
        let get = env.service.expect(&format!("get.{rid}")).await;
        let reply = get.reply.clone().expect("get has a reply subject");
        env.service.publish_event_noflush(&rid, "add", &json!({"idx": 1, "value": "early"})).await;
        env.service.publish_json_noflush(&reply, &json!({"result": {"collection": ["a", "early"]}})).await;
        env.service.publish_event_noflush(&rid, "add", &json!({"idx": 2, "value": "late"})).await;
        env.service.flush().await;
        let mut local = vec![json!("a")];
        while local.len() < 3 {
            let ev = c.next_event().await;
            let idx = ev["data"]["idx"].as_u64().unwrap() as usize;
            match ev["event"].as_str().unwrap() {
                e if e == format!("{rid}.add") => local.insert(idx, ev["data"]["value"].clone()),
                e if e == format!("{rid}.remove") => {
                    local.remove(idx);
                }
                other => panic!("iteration {i}: unexpected event {other}"),
            }
        }
        assert_eq!(local, vec![json!("a"), json!("early"), json!("late")], "iteration {i}");
        c.assert_no_message(std::time::Duration::from_millis(20)).await;
    }
}

/// A reset re-fetches a query resource with the normalised query the service gave, not the
/// client's spelling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_refetches_query_resources_with_the_normalized_query() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("subscribe.test.list?B=2&a=1", json!(null)).await;
    env.service.expect("access.test.list").await.respond_access(true, None).await;
    env.service.expect("get.test.list").await.respond_result(json!({"collection": [1], "query": "a=1&b=2"})).await;
    c.response(id).await.result();
    env.service.publish_json("system.reset", json!({"resources": ["test.>"]})).await;
    let g = env.service.expect("get.test.list").await;
    assert_eq!(g.payload_json(), json!({"query": "a=1&b=2"}));
    g.respond_result(json!({"collection": [1, 2], "query": "a=1&b=2"})).await;
    assert_eq!(c.expect_event("test.list?B=2&a=1.add").await, json!({"idx": 1, "value": 2}));
}

/// A re-fetch nobody answers (the service is down: NATS says no responders) is an outage, not
/// a deletion: subscribers keep the resource, and the re-fetch is retried until the service is
/// back, whose state then reaches them. (Resgate deletes the resource here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_while_the_service_is_down_keeps_the_resource_and_converges() {
    let mut env = TestEnv::start_custom(|_| {}, &["access.>", "call.>", "auth.>"]).await;
    let mut c = env.client().await;
    // A second service client answers gets; it goes away and comes back.
    let mut getter = Service::connect(&env.nats.url(), &["get.>"]).await;
    let id = c.send("subscribe.test.model", json!(null)).await;
    env.service.expect("access.test.model").await.respond_access(true, None).await;
    getter.expect("get.test.model").await.respond_model(json!({"n": 1})).await;
    c.response(id).await.result();
    drop(getter);
    env.service.publish_json("system.reset", json!({"resources": ["test.>"]})).await;
    // Retried with backoff; the client is told nothing meanwhile.
    c.assert_no_message(std::time::Duration::from_millis(700)).await;
    let mut getter = Service::connect(&env.nats.url(), &["get.>"]).await;
    getter
        .expect_within("get.test.model", std::time::Duration::from_secs(15))
        .await
        .respond_model(json!({"n": 2}))
        .await;
    assert_eq!(c.expect_event("test.model.change").await, json!({"values": {"n": 2}}));
    c.assert_no_message(QUIET).await;
}

/// A re-fetch reply that events came before may predate them (a service whose get and change
/// race, e.g. two instances): it is not diffed — that would revert the event — but asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_reply_that_events_came_before_is_asked_again_not_diffed() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    sub_model(&mut env, &mut c, "test.model", json!({"n": 0})).await;
    env.service.publish_json("system.reset", json!({"resources": ["test.>"]})).await;
    let stale = env.service.expect("get.test.model").await;
    env.service.publish_event("test.model", "change", json!({"values": {"n": 1}})).await;
    stale.respond_model(json!({"n": 0})).await;
    assert_eq!(c.expect_event("test.model.change").await, json!({"values": {"n": 1}}));
    env.service.expect("get.test.model").await.respond_model(json!({"n": 1})).await;
    c.assert_no_message(QUIET).await;
}
