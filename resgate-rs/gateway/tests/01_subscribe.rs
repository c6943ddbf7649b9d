//! Subscribe: access + get to NATS, the resource-set response, the error matrix, references,
//! soft references, data values, the `{cid}` tag, the shared cache and repeated subscribes.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn model() -> Value {
    json!({"string": "foo", "int": 42, "bool": true, "null": null})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_sends_access_and_get_with_exact_payloads() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("subscribe.test.model", json!(null)).await;
    let access = env.service.expect("access.test.model").await;
    let get = env.service.expect("get.test.model").await;
    assert_eq!(get.payload_json(), json!({}), "get payload carries no cid/token");
    let p = access.payload_json();
    let cid = p["cid"].as_str().expect("cid is a string").to_owned();
    assert!(!cid.is_empty());
    assert_eq!(p, json!({"cid": cid, "token": null}), "access payload: cid and null token, no isHttp");
    access.respond_access(true, None).await;
    get.respond_model(model()).await;
    c.response(id).await.assert_result(json!({"models": {"test.model": model()}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_collection_response_shape() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("subscribe.test.collection", json!(null)).await;
    env.service.serve_collection("test.collection", json!(["foo", 42, true, null])).await;
    c.response(id).await.assert_result(json!({"collections": {"test.collection": ["foo", 42, true, null]}}));
}

#[derive(Clone, Copy, Debug)]
enum Reply {
    Raw(&'static str),
    Timeout,
}
use Reply::*;

const MODEL_GET: Reply = Raw(r#"{"result":{"model":{"string":"foo","int":42,"bool":true,"null":null}}}"#);
const FULL: Reply = Raw(r#"{"result":{"get":true}}"#);
const NO_ACCESS: Reply = Raw(r#"{"result":{"get":false}}"#);
const DENIED: Reply = Raw(r#"{"error":{"code":"system.accessDenied","message":"Access denied"}}"#);
const INTERNAL: Reply = Raw(r#"{"error":{"code":"system.internalError","message":"Internal error"}}"#);
const NOT_FOUND: Reply = Raw(r#"{"error":{"code":"system.notFound","message":"Not found"}}"#);
const BROKEN_ACCESS: Reply = Raw(r#"{"result":{"get":"foo"}}"#);
const BROKEN_MODEL: Reply = Raw(r#"{"result":{"foo":"bar"}}"#);

/// Expected: `Ok(())` = the model, `Err(code)` = an error with that code.
fn matrix() -> Vec<(Reply, Reply, Result<(), &'static str>)> {
    let mut rows = Vec::new();
    for (get, get_err) in [
        (MODEL_GET, None),
        (NOT_FOUND, Some("system.notFound")),
        (INTERNAL, Some("system.internalError")),
        (Timeout, Some("system.timeout")),
        (BROKEN_MODEL, Some("system.internalError")),
    ] {
        for (access, access_err) in [
            (FULL, None),
            (NO_ACCESS, Some("system.accessDenied")),
            (DENIED, Some("system.accessDenied")),
            (INTERNAL, Some("system.internalError")),
            (Timeout, Some("system.timeout")),
            (BROKEN_ACCESS, Some("system.internalError")),
        ] {
            let expected = match (access_err, get_err) {
                (Some(a), _) => Err(a),
                (None, Some(g)) => Err(g),
                (None, None) => Ok(()),
            };
            rows.push((get, access, expected));
        }
    }
    let ok = Ok(());
    let ie = Err("system.internalError");
    rows.extend([
        (Raw("\r\n \t{ \"result\":{\"model\":\t{\"a\":1}}\t} \t\n"), FULL, Err("untrimmed")),
        (MODEL_GET, Raw("\r\n \t{\"result\":{\"get\":\ttrue}}\n"), ok),
        (Raw(r#"{"invalid":JSON}"#), FULL, ie),
        (Raw(""), FULL, ie),
        (Raw(r#"{"invalid":"response"}"#), FULL, ie),
        (MODEL_GET, Raw(r#"{"invalid":JSON}"#), ie),
        (MODEL_GET, Raw(""), ie),
        (MODEL_GET, Raw(r#"{"invalid":"response"}"#), ie),
        (Raw(r#"{"result":{"model":["with","array"]}}"#), FULL, ie),
        (Raw(r#"{"result":{"collection":{"with":"model"}}}"#), FULL, ie),
        (Raw(r#"{"result":{"model":{"array":[1,2]}}}"#), FULL, ie),
        (Raw(r#"{"result":{"model":{"prop":{"action":"delete"}}}}"#), FULL, ie),
        (Raw(r#"{"result":{"model":{"prop":{"action":"unknown"}}}}"#), FULL, ie),
        (Raw(r#"{"result":{"model":{"prop":{"unknown":"property"}}}}"#), FULL, ie),
        (Raw(r#"{"result":{"model":{"child":{"rid":false}}}}"#), FULL, ie),
        (Raw(r#"{"result":{"collection":["array",[1,2]]}}"#), FULL, ie),
        (Raw(r#"{"result":{"collection":["prop",{"action":"delete"}]}}"#), FULL, ie),
        (Raw(r#"{"result":{"collection":["prop",{"unknown":"property"}]}}"#), FULL, ie),
        (Raw(r#"{"result":{"model":{"foo":"bar"},"collection":[1,2,3]}}"#), FULL, ie),
        (Raw(r#"{"error":[]}"#), FULL, ie),
        (Raw(r#"{"error":{"message":"missing code"}}"#), FULL, Err("")),
        (Raw(r#"{"error":{"code":12,"message":"integer code"}}"#), FULL, ie),
        (Raw(r#"{"error":{"code":"custom.error","message":"Custom"}}"#), FULL, Err("custom.error")),
    ]);
    rows
}

async fn reply(req: &ServiceRequest, r: Reply) {
    if let Raw(s) = r {
        req.respond_raw(s.as_bytes().to_vec()).await;
    }
}

/// Every get × access outcome, for both `get` and `subscribe`, in both reply orders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_matrix_for_get_and_subscribe() {
    let mut env = TestEnv::start_with(|c| c.request_timeout = 300).await;
    let mut n = 0;
    let mut failures = Vec::new();
    for (i, (get, access, expected)) in matrix().into_iter().enumerate() {
        for method in ["get", "subscribe"] {
            for get_first in [true, false] {
                n += 1;
                let rid = format!("test.m{n}");
                let what = format!("row #{} {method} get_first={get_first} ({get:?} / {access:?})", i + 1);
                let mut c = env.client().await;
                let id = c.send(&format!("{method}.{rid}"), json!(null)).await;
                let a = env.service.expect(&format!("access.{rid}")).await;
                let g = env.service.expect(&format!("get.{rid}")).await;
                if get_first {
                    reply(&g, get).await;
                    reply(&a, access).await;
                } else {
                    reply(&a, access).await;
                    reply(&g, get).await;
                }
                let r = c.response(id).await;
                let ok = match expected {
                    Ok(()) => r.0.get("result") == Some(&json!({"models": {rid.clone(): model()}})),
                    Err("untrimmed") => r.0.get("result") == Some(&json!({"models": {rid.clone(): {"a": 1}}})),
                    Err(code) => r.0["error"]["code"] == json!(code),
                };
                if !ok {
                    failures.push(format!("{what}: expected {expected:?}, got {}", r.0));
                }
                c.close().await;
            }
        }
    }
    println!("{n} matrix cases run");
    assert!(failures.is_empty(), "{} of {n} cases failed:\n{}", failures.len(), failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predefined_error_messages() {
    let mut env = TestEnv::start_with(|c| c.request_timeout = 300).await;
    let mut c = env.client().await;
    // Timeout on get, full access.
    let id = c.send("subscribe.test.slow", json!(null)).await;
    env.service.expect("access.test.slow").await.respond_access(true, None).await;
    let _g = env.service.expect("get.test.slow").await;
    assert_eq!(c.response(id).await.error(), err("system.timeout", "Request timeout"));
    // Access denied by get:false.
    let id = c.send("subscribe.test.denied", json!(null)).await;
    env.service.expect("access.test.denied").await.respond_access(false, None).await;
    env.service.expect("get.test.denied").await.respond_model(json!({})).await;
    assert_eq!(c.response(id).await.error(), err("system.accessDenied", "Access denied"));
    // A service error with data passes through exactly.
    let id = c.send("subscribe.test.custom", json!(null)).await;
    env.service.expect("access.test.custom").await.respond_access(true, None).await;
    let e = json!({"code": "test.custom", "message": "Custom error", "data": {"foo": ["bar"]}});
    env.service.expect("get.test.custom").await.respond_json(json!({ "error": e })).await;
    assert_eq!(c.response(id).await.error(), e);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_responders_is_an_immediate_not_found() {
    // The service answers access only: nobody listens on get.>.
    let mut env = TestEnv::start_custom(|c| c.request_timeout = 5000, &["access.>"]).await;
    let mut c = env.client().await;
    let start = Instant::now();
    let id = c.send("subscribe.test.model", json!(null)).await;
    env.service.expect("access.test.model").await.respond_access(true, None).await;
    let r = c.response(id).await;
    assert_eq!(r.error(), err("system.notFound", "Not found"));
    assert!(start.elapsed() < Duration::from_millis(2000), "no-responders must not wait for the timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_responders_on_access_is_not_found() {
    let mut env = TestEnv::start_custom(|c| c.request_timeout = 5000, &["get.>"]).await;
    let mut c = env.client().await;
    let start = Instant::now();
    let id = c.send("subscribe.test.model", json!(null)).await;
    env.service.expect("get.test.model").await.respond_model(model()).await;
    c.response(id).await.assert_error("system.notFound");
    assert!(start.elapsed() < Duration::from_millis(2000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_are_followed_without_access_checks() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("subscribe.test.parent", json!(null)).await;
    let parent = json!({"name": "parent", "child": {"rid": "test.child"}});
    env.service.serve_model("test.parent", parent.clone()).await;
    env.service.expect("get.test.child").await.respond_model(json!({"name": "child"})).await;
    c.response(id).await.assert_result(json!({"models": {"test.parent": parent, "test.child": {"name": "child"}}}));
    env.service.assert_no_request(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_references_and_grandchildren() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("subscribe.test.gp", json!(null)).await;
    env.service.serve_collection("test.gp", json!(["gp", {"rid": "test.p"}])).await;
    env.service.expect("get.test.p").await.respond_collection(json!(["p", {"rid": "test.c"}])).await;
    env.service.expect("get.test.c").await.respond_collection(json!(["c", 1])).await;
    c.response(id).await.assert_result(json!({"collections": {
        "test.gp": ["gp", {"rid": "test.p"}],
        "test.p": ["p", {"rid": "test.c"}],
        "test.c": ["c", 1],
    }}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cyclic_references_resolve() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("subscribe.test.a", json!(null)).await;
    env.service.serve_model("test.a", json!({"b": {"rid": "test.b"}})).await;
    env.service.expect("get.test.b").await.respond_model(json!({"a": {"rid": "test.a"}, "b": {"rid": "test.b"}})).await;
    c.response(id).await.assert_result(json!({"models": {
        "test.a": {"b": {"rid": "test.b"}},
        "test.b": {"a": {"rid": "test.a"}, "b": {"rid": "test.b"}},
    }}));
    env.service.assert_no_request(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_reference_goes_into_errors() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("subscribe.test.parent", json!(null)).await;
    let parent = json!({"name": "broken", "child": {"rid": "test.missing"}});
    env.service.serve_model("test.parent", parent.clone()).await;
    env.service.expect("get.test.missing").await.respond_error("system.notFound", "Not found").await;
    c.response(id).await.assert_result(json!({
        "models": {"test.parent": parent},
        "errors": {"test.missing": err("system.notFound", "Not found")},
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_references_are_not_followed() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("subscribe.test.soft", json!(null)).await;
    let m = json!({"name": "soft", "child": {"rid": "test.model", "soft": true}});
    env.service.serve_model("test.soft", m.clone()).await;
    c.response(id).await.assert_result(json!({"models": {"test.soft": m}}));
    env.service.assert_no_request(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_values_are_passed_and_primitive_data_is_unwrapped() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("subscribe.test.data", json!(null)).await;
    env.service
        .serve_model(
            "test.data",
            json!({"name": "data", "primitive": {"data": 12}, "object": {"data": {"foo": ["bar"]}}, "array": {"data": [{"foo": "bar"}]}}),
        )
        .await;
    c.response(id).await.assert_result(json!({"models": {"test.data":
        {"name": "data", "primitive": 12, "object": {"data": {"foo": ["bar"]}}, "array": {"data": [{"foo": "bar"}]}}}}));
    let id = c.send("subscribe.test.cdata", json!(null)).await;
    env.service.serve_collection("test.cdata", json!(["data", 12, {"data": {"foo": ["bar"]}}, {"data": [1]}])).await;
    c.response(id).await.assert_result(json!({"collections": {"test.cdata":
        ["data", 12, {"data": {"foo": ["bar"]}}, {"data": [1]}]}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cid_tag_is_replaced_towards_nats_only() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    // Learn the cid from a first access request.
    let id = c.send("subscribe.test.first", json!(null)).await;
    let cid = env.service.serve_model("test.first", json!({})).await;
    c.response(id).await.result();
    let id = c.send("subscribe.test.{cid}.model", json!(null)).await;
    let a = env.service.expect(&format!("access.test.{cid}.model")).await;
    assert_eq!(a.payload_json(), json!({"cid": cid, "token": null}));
    a.respond_access(true, None).await;
    env.service.expect(&format!("get.test.{cid}.model")).await.respond_model(model()).await;
    c.response(id).await.assert_result(json!({"models": {"test.{cid}.model": model()}}));
    env.service.publish_event(&format!("test.{cid}.model"), "custom", json!({"foo": "bar"})).await;
    assert_eq!(c.expect_event("test.{cid}.model.custom").await, json!({"foo": "bar"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_client_is_served_from_cache() {
    for (rid, collection) in [("test.model", false), ("test.collection", true)] {
        let mut env = TestEnv::start().await;
        let mut c1 = env.client().await;
        let id = c1.send(&format!("subscribe.{rid}"), json!(null)).await;
        let expected = if collection {
            env.service.serve_collection(rid, json!([1, 2])).await;
            json!({"collections": {rid: [1, 2]}})
        } else {
            env.service.serve_model(rid, model()).await;
            json!({"models": {rid: model()}})
        };
        c1.response(id).await.assert_result(expected.clone());
        let mut c2 = env.client().await;
        let id = c2.send(&format!("subscribe.{rid}"), json!(null)).await;
        env.service.expect(&format!("access.{rid}")).await.respond_access(true, None).await;
        c2.response(id).await.assert_result(expected);
        env.service.assert_no_request(QUIET).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_subscribes_share_one_get() {
    let mut env = TestEnv::start().await;
    let mut c1 = env.client().await;
    let mut c2 = env.client().await;
    let id1 = c1.send("subscribe.test.model", json!(null)).await;
    let id2 = c2.send("subscribe.test.model", json!(null)).await;
    let a1 = env.service.expect("access.test.model").await;
    let a2 = env.service.expect("access.test.model").await;
    assert_ne!(a1.cid(), a2.cid(), "each connection has its own cid");
    let g = env.service.expect("get.test.model").await;
    env.service.assert_no_request_on("get.test.model", QUIET).await;
    a1.respond_access(true, None).await;
    a2.respond_access(true, None).await;
    g.respond_model(model()).await;
    c1.response(id1).await.assert_result(json!({"models": {"test.model": model()}}));
    c2.response(id2).await.assert_result(json!({"models": {"test.model": model()}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_again_returns_an_empty_set() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("subscribe.test.model", json!(null)).await;
    env.service.serve_model("test.model", model()).await;
    c.response(id).await.result();
    let id = c.send("subscribe.test.model", json!(null)).await;
    // The access already granted for this subscription is reused; answer one if it is asked again.
    let r = loop {
        tokio::select! {
            r = c.response(id) => break r,
            a = env.service.expect("access.test.model") => a.respond_access(true, None).await,
        }
    };
    r.assert_result(json!({}));
    env.service.assert_no_request_on("get.test.model", QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_already_sent_are_left_out() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("subscribe.test.model", json!(null)).await;
    env.service.serve_model("test.model", model()).await;
    c.response(id).await.result();
    let id = c.send("subscribe.test.parent", json!(null)).await;
    let parent = json!({"child": {"rid": "test.model"}});
    env.service.serve_model("test.parent", parent.clone()).await;
    c.response(id).await.assert_result(json!({"models": {"test.parent": parent}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_resource_id_is_subject_too_long() {
    let env = TestEnv::start().await;
    let mut c = env.client().await;
    let rid = format!("test.{}", "x".repeat(10_000));
    c.request(&format!("subscribe.{rid}"), json!(null)).await.assert_error("system.subjectTooLong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_throttle_limits_parallel_gets() {
    let mut env = TestEnv::start_with(|c| c.reference_throttle = 3).await;
    let mut c = env.client().await;
    let refs: Vec<Value> = (1..=10).map(|i| json!({"rid": format!("test.model.{i}")})).collect();
    let id = c.send("subscribe.test.collection", json!(null)).await;
    env.service.serve_collection("test.collection", Value::Array(refs.clone())).await;
    let mut inflight = env.service.expect_n(3).await;
    env.service.assert_no_request(QUIET).await;
    let mut served = 0;
    let mut expected = serde_json::Map::new();
    while let Some(r) = inflight.pop() {
        let n: u64 = r.subject.rsplit('.').next().unwrap().parse().expect("get.test.model.<n>");
        r.respond_model(json!({ "id": n })).await;
        expected.insert(format!("test.model.{n}"), json!({ "id": n }));
        served += 1;
        if served + inflight.len() < 10 {
            inflight.extend(env.service.expect_n(1).await);
        }
        assert!(inflight.len() <= 3);
    }
    assert_eq!(served, 10);
    let r = c.response(id).await.result();
    assert_eq!(r["models"], Value::Object(expected));
    assert_eq!(r["collections"], json!({"test.collection": refs}));
}

/// Pipelined subscribes and gets of one resource on one connection share one access check and
/// load, and are answered in request order: the first with the resource, the rest with nothing
/// more to send (as Resgate answers the callbacks queued on one subscription).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_for_one_resource_share_access_and_keep_order() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let a = c.send("subscribe.test.model", json!(null)).await;
    let b = c.send("subscribe.test.model", json!(null)).await;
    let g = c.send("get.test.model", json!(null)).await;
    // A request the gateway makes only after handling the three: then they are all pending.
    let marker = c.send("call.test.marker.ping", json!(null)).await;
    let mut reqs = env.service.expect_n(3).await;
    reqs.sort_by(|x, y| x.subject.cmp(&y.subject));
    let subjects: Vec<&str> = reqs.iter().map(|r| r.subject.as_str()).collect();
    assert_eq!(subjects, ["access.test.marker", "access.test.model", "get.test.model"]);
    reqs[0].respond_access(false, None).await;
    reqs[1].respond_access(true, None).await;
    reqs[2].respond_model(json!({"n": 1})).await;
    c.response(marker).await.assert_error("system.accessDenied");
    env.service.assert_no_request(QUIET).await;
    let got = [c.next_message().await, c.next_message().await, c.next_message().await];
    assert_eq!(
        got,
        [
            json!({"id": a, "result": {"models": {"test.model": {"n": 1}}}}),
            json!({"id": b, "result": {}}),
            json!({"id": g, "result": {}}),
        ]
    );
    // Two direct subscriptions: one unsubscribe keeps the events coming.
    c.request("unsubscribe.test.model", json!(null)).await.result();
    env.service.publish_event("test.model", "change", json!({"values": {"n": 2}})).await;
    assert_eq!(c.expect_event("test.model.change").await, json!({"values": {"n": 2}}));
    c.request("unsubscribe.test.model", json!(null)).await.result();
    c.request("unsubscribe.test.model", json!(null)).await.assert_error("system.noSubscription");
}
