//! Get: like subscribe (access + get + references) but no subscription is kept.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_sends_access_and_get_and_returns_the_set() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("get.test.model", json!(null)).await;
    let a = env.service.expect("access.test.model").await;
    let g = env.service.expect("get.test.model").await;
    assert_eq!(a.payload_json(), json!({"cid": a.cid(), "token": null}));
    assert_eq!(g.payload_json(), json!({}));
    a.respond_access(true, None).await;
    g.respond_model(json!({"foo": "bar"})).await;
    c.response(id).await.assert_result(json!({"models": {"test.model": {"foo": "bar"}}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_keeps_no_subscription() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("get.test.parent", json!(null)).await;
    env.service.serve_model("test.parent", json!({"child": {"rid": "test.child"}})).await;
    env.service.expect("get.test.child").await.respond_model(json!({"n": 1})).await;
    c.response(id).await.assert_result(json!({"models": {
        "test.parent": {"child": {"rid": "test.child"}}, "test.child": {"n": 1}}}));
    env.service.publish_event("test.parent", "custom", json!({"a": 1})).await;
    env.service.publish_event("test.child", "change", json!({"values": {"n": 2}})).await;
    c.assert_no_message(QUIET).await;
    c.request("unsubscribe.test.parent", json!(null)).await.assert_error("system.noSubscription");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_with_cid_tag() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("get.test.{cid}.model", json!(null)).await;
    let a = env.service.expect_where("access.test.<cid>.model", |s| s.starts_with("access.test.")).await;
    let cid = a.cid();
    assert_eq!(a.subject, format!("access.test.{cid}.model"));
    a.respond_access(true, None).await;
    env.service.expect(&format!("get.test.{cid}.model")).await.respond_model(json!({"x": 1})).await;
    c.response(id).await.assert_result(json!({"models": {"test.{cid}.model": {"x": 1}}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_errors() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("get.test.denied", json!(null)).await;
    env.service.expect("access.test.denied").await.respond_error("system.accessDenied", "Access denied").await;
    env.service.expect("get.test.denied").await.respond_model(json!({})).await;
    assert_eq!(c.response(id).await.error(), err("system.accessDenied", "Access denied"));
    let id = c.send("get.test.missing", json!(null)).await;
    env.service.expect("access.test.missing").await.respond_access(true, None).await;
    env.service.expect("get.test.missing").await.respond_error("system.notFound", "Not found").await;
    assert_eq!(c.response(id).await.error(), err("system.notFound", "Not found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_long_rid_is_subject_too_long() {
    let env = TestEnv::start().await;
    let mut c = env.client().await;
    c.request(&format!("get.test.{}", "y".repeat(10_000)), json!(null)).await.assert_error("system.subjectTooLong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_after_get_uses_the_cache_until_eviction() {
    let mut env = TestEnv::start_with(|c| c.unsubscribe_delay = 5000).await;
    let mut c1 = env.client().await;
    let id = c1.send("get.test.model", json!(null)).await;
    env.service.serve_model("test.model", json!({"a": 1})).await;
    c1.response(id).await.result();
    let mut c2 = env.client().await;
    let id = c2.send("get.test.model", json!(null)).await;
    env.service.expect("access.test.model").await.respond_access(true, None).await;
    c2.response(id).await.assert_result(json!({"models": {"test.model": {"a": 1}}}));
    env.service.assert_no_request(QUIET).await;
}
