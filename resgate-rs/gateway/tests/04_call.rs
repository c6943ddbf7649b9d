//! Call: access `call` lists, NATS payload, `{"payload":..}` wrapper vs legacy raw results,
//! resource responses, errors, pre-response timeout extension.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// (params, access reply, call reply (None = no call request expected), expected result / error code)
type CallRow = (Value, &'static str, Option<&'static str>, Result<Value, &'static str>);

const FULL: &str = r#"{"result":{"get":true,"call":"*"}}"#;

/// Client calls `call.test.model.method`, access is answered with `access`, then (if
/// `call_reply` is Some) the call request with that raw reply. Returns the client response.
async fn call(env: &mut TestEnv, c: &mut WsClient, params: Value, access: &str, call_reply: Option<&str>) -> Response {
    let id = c.send("call.test.model.method", params.clone()).await;
    let a = env.service.expect("access.test.model").await;
    assert_eq!(a.payload_json(), json!({"cid": a.cid(), "token": null}));
    a.respond_raw(access.as_bytes().to_vec()).await;
    match call_reply {
        Some(reply) => {
            let req = env.service.expect("call.test.model.method").await;
            let mut expected = json!({"cid": a.cid(), "token": null});
            if !params.is_null() {
                expected["params"] = params;
            }
            let mut got = req.payload_json();
            if got.get("params") == Some(&Value::Null) && expected.get("params").is_none() {
                got.as_object_mut().unwrap().remove("params");
            }
            assert_eq!(got, expected, "call payload");
            req.respond_raw(reply.as_bytes().to_vec()).await;
        }
        None => env.service.assert_no_request_on("call.test.model.method", QUIET).await,
    }
    c.response(id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_matrix_unsubscribed() {
    let mut env = TestEnv::start_with(|c| c.request_timeout = 300).await;
    let ok = r#"{"result":{"foo":"bar"}}"#;
    let payload = json!({"payload": {"foo": "bar"}});
    let rows: Vec<CallRow> = vec![
        (Value::Null, FULL, Some(ok), Ok(payload.clone())),
        (json!({"value": 42}), FULL, Some(ok), Ok(payload.clone())),
        (Value::Null, r#"{"result":{"get":true,"call":"method"}}"#, Some(ok), Ok(payload.clone())),
        (Value::Null, r#"{"result":{"get":true,"call":"foo,method"}}"#, Some(ok), Ok(payload.clone())),
        (Value::Null, r#"{"result":{"get":false,"call":"method"}}"#, Some(ok), Ok(payload.clone())),
        (Value::Null, r#"{"result":{"get":true,"call":"foo,bar"}}"#, None, Err("system.accessDenied")),
        (Value::Null, r#"{"result":{"get":true}}"#, None, Err("system.accessDenied")),
        (Value::Null, r#"{"result":{"get":true,"call":""}}"#, None, Err("system.accessDenied")),
        (
            Value::Null,
            r#"{"error":{"code":"system.accessDenied","message":"Access denied"}}"#,
            None,
            Err("system.accessDenied"),
        ),
        (Value::Null, r#"{"result":{"get":"invalid"}}"#, None, Err("system.internalError")),
        (Value::Null, r#"{"broken":JSON}"#, None, Err("system.internalError")),
        (
            Value::Null,
            FULL,
            Some(r#"{"error":{"code":"system.invalidParams","message":"Invalid parameters"}}"#),
            Err("system.invalidParams"),
        ),
        (Value::Null, FULL, Some(r#"{"result":null}"#), Ok(json!({"payload": null}))),
        (Value::Null, FULL, Some(r#"{"result":42}"#), Ok(json!({"payload": 42}))),
        (Value::Null, FULL, Some(r#"{"broken":JSON}"#), Err("system.internalError")),
        (Value::Null, FULL, Some(r#"{}"#), Err("system.internalError")),
        (Value::Null, "\r\n\t {\"result\":{\"get\":\r\n\t true,\"call\":\"*\"}}\r\n\t ", Some(ok), Ok(payload.clone())),
        (
            Value::Null,
            FULL,
            Some(r#"{"result":{"foo":"bar"},"error":{"code":"system.custom","message":"Custom"}}"#),
            Err("system.custom"),
        ),
        (Value::Null, FULL, Some(r#"{"error":[]}"#), Err("system.internalError")),
        (Value::Null, FULL, Some(r#"{"error":{"message":"missing code"}}"#), Err("")),
        (Value::Null, FULL, Some(r#"{"error":{"code":12,"message":"integer code"}}"#), Err("system.internalError")),
        (Value::Null, FULL, Some(r#"{"resource":"test.model"}"#), Err("system.internalError")),
        (Value::Null, FULL, Some(r#"{"resource":{}}"#), Err("system.internalError")),
        (Value::Null, FULL, Some(r#"{"resource":{"rid":42}}"#), Err("system.internalError")),
        (Value::Null, FULL, Some(r#"{"resource":{"rid":"test..model"}}"#), Err("system.internalError")),
    ];
    let mut failures = Vec::new();
    let n = rows.len();
    for (i, (params, access, reply, expected)) in rows.into_iter().enumerate() {
        let mut c = env.client().await;
        let r = call(&mut env, &mut c, params, access, reply).await;
        let ok = match &expected {
            Ok(v) => r.0.get("result") == Some(v),
            Err(code) => r.0["error"]["code"] == json!(code),
        };
        if !ok {
            failures.push(format!("row #{} ({access} / {reply:?}): expected {expected:?}, got {}", i + 1, r.0));
        }
        c.close().await;
    }
    assert!(failures.is_empty(), "{} of {n} rows failed:\n{}", failures.len(), failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_access_timeout() {
    let mut env = TestEnv::start_with(|c| c.request_timeout = 300).await;
    let mut c = env.client().await;
    let id = c.send("call.test.model.method", json!(null)).await;
    let _a = env.service.expect("access.test.model").await;
    assert_eq!(c.response(id).await.error(), err("system.timeout", "Request timeout"));
    env.service.assert_no_request_on("call.test.model.method", QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_on_subscribed_resource_reuses_access() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("subscribe.test.model", json!(null)).await;
    let a = env.service.expect("access.test.model").await;
    a.respond_access(true, Some("method")).await;
    env.service.expect("get.test.model").await.respond_model(json!({"a": 1})).await;
    c.response(id).await.result();
    let id = c.send("call.test.model.method", json!({"value": 42})).await;
    let req = env.service.expect("call.test.model.method").await;
    assert_eq!(req.payload_json(), json!({"cid": a.cid(), "token": null, "params": {"value": 42}}));
    req.respond_result(json!("done")).await;
    c.response(id).await.assert_result(json!({"payload": "done"}));
    env.service.assert_no_request(QUIET).await;
    // A method not in the list is denied without a call request.
    c.request("call.test.model.other", json!(null)).await.assert_error("system.accessDenied");
    env.service.assert_no_request(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribed_calls_ask_access_each_time() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    for n in 0..2 {
        let r = call(&mut env, &mut c, json!(n), FULL, Some(r#"{"result":"ok"}"#)).await;
        r.assert_result(json!({"payload": "ok"}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_client_gets_raw_results() {
    let mut env = TestEnv::start().await;
    let rows: Vec<(&str, Result<Value, &str>)> = vec![
        (r#"{"result":{"foo":"bar"}}"#, Ok(json!({"foo": "bar"}))),
        (r#"{"result":{"rid":"test.model"}}"#, Ok(json!({"rid": "test.model"}))),
        (r#"{"result":null}"#, Ok(Value::Null)),
        (r#"{"resource":{"rid":"test.model"}}"#, Ok(json!({"rid": "test.model"}))),
        (r#"{"resource":"test.model"}"#, Err("system.internalError")),
        (r#"{"resource":{"rid":"test..model"}}"#, Err("system.internalError")),
    ];
    for (i, (reply, expected)) in rows.into_iter().enumerate() {
        let mut c = env.client_without_version().await;
        let r = call(&mut env, &mut c, json!({"value": 42}), FULL, Some(reply)).await;
        match expected {
            Ok(v) => assert_eq!(r.result(), v, "row #{}: {}", i + 1, r.0),
            Err(code) => assert_eq!(r.error_code(), code, "row #{}", i + 1),
        }
        // A legacy resource response subscribes nothing.
        env.service.assert_no_request(QUIET).await;
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_response_subscribes_and_returns_the_set() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("call.test.collection.create", json!({"value": 42})).await;
    env.service.expect("access.test.collection").await.respond_access(true, Some("*")).await;
    env.service.expect("call.test.collection.create").await.respond_resource("test.model").await;
    env.service.serve_model("test.model", json!({"a": 1})).await;
    c.response(id).await.assert_result(json!({"rid": "test.model", "models": {"test.model": {"a": 1}}}));
    env.service.publish_event("test.model", "custom", json!("hi")).await;
    assert_eq!(c.expect_event("test.model.custom").await, json!("hi"));
    c.request("unsubscribe.test.model", json!(null)).await.result();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_response_errors_go_into_errors() {
    let mut env = TestEnv::start_with(|c| c.request_timeout = 300).await;
    let custom = err("custom.error", "Custom error");
    // (get reply, access reply, expected error)
    let rows: Vec<(Option<Value>, Option<Value>, Value)> = vec![
        (Some(json!({"error": custom})), Some(json!({"result": {"get": true}})), custom.clone()),
        (None, Some(json!({"result": {"get": true}})), err("system.timeout", "Request timeout")),
        (
            Some(json!({"result": {"model": {}}})),
            Some(json!({"result": {"get": false}})),
            err("system.accessDenied", "Access denied"),
        ),
        (Some(json!({"result": {"model": {}}})), Some(json!({"error": custom})), custom.clone()),
        (Some(json!({"result": {"model": {}}})), None, err("system.timeout", "Request timeout")),
    ];
    for (i, (get, access, expected)) in rows.into_iter().enumerate() {
        let rid = format!("test.new{i}");
        let mut c = env.client().await;
        let id = c.send("call.test.collection.create", json!(null)).await;
        env.service.expect("access.test.collection").await.respond_access(true, Some("*")).await;
        env.service.expect("call.test.collection.create").await.respond_resource(&rid).await;
        let a = env.service.expect(&format!("access.{rid}")).await;
        let g = env.service.expect(&format!("get.{rid}")).await;
        if let Some(v) = get {
            g.respond_json(v).await;
        }
        if let Some(v) = access {
            a.respond_json(v).await;
        }
        c.response(id).await.assert_result(json!({"rid": rid, "errors": {rid.clone(): expected}}));
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_with_cid_tag() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("call.test.{cid}.model.method", json!({"foo": "bar"})).await;
    let a = env.service.expect_where("access.test.<cid>.model", |s| s.starts_with("access.test.")).await;
    let cid = a.cid();
    assert_eq!(a.subject, format!("access.test.{cid}.model"));
    a.respond_access(true, Some("*")).await;
    let req = env.service.expect(&format!("call.test.{cid}.model.method")).await;
    assert_eq!(req.payload_json()["params"], json!({"foo": "bar"}));
    req.respond_result(json!("zoo")).await;
    c.response(id).await.assert_result(json!({"payload": "zoo"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_with_query_rid_splits_at_last_dot() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("call.test.list?q=a.b.method", json!(null)).await;
    let a = env.service.expect("access.test.list").await;
    assert_eq!(a.payload_json()["query"], json!("q=a.b"));
    a.respond_access(true, Some("*")).await;
    let req = env.service.expect("call.test.list.method").await;
    assert_eq!(req.payload_json()["query"], json!("q=a.b"));
    req.respond_result(json!(1)).await;
    c.response(id).await.assert_result(json!({"payload": 1}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_response_extends_the_timeout() {
    let mut env = TestEnv::start_with(|c| c.request_timeout = 300).await;
    let mut c = env.client().await;
    let id = c.send("call.test.model.method", json!(null)).await;
    env.service.expect("access.test.model").await.respond_access(true, Some("*")).await;
    let req = env.service.expect("call.test.model.method").await;
    let start = Instant::now();
    req.respond_raw(&b"timeout:\"2000\""[..]).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    req.respond_result(json!("late")).await;
    c.response(id).await.assert_result(json!({"payload": "late"}));
    assert!(start.elapsed() >= Duration::from_millis(700));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pre_response_a_slow_call_times_out() {
    let mut env = TestEnv::start_with(|c| c.request_timeout = 300).await;
    let mut c = env.client().await;
    let id = c.send("call.test.model.method", json!(null)).await;
    env.service.expect("access.test.model").await.respond_access(true, Some("*")).await;
    let _req = env.service.expect("call.test.model.method").await;
    assert_eq!(c.response(id).await.error(), err("system.timeout", "Request timeout"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_response_with_shorter_timeout_times_out() {
    let mut env = TestEnv::start_with(|c| c.request_timeout = 3000).await;
    let mut c = env.client().await;
    let id = c.send("call.test.model.method", json!(null)).await;
    env.service.expect("access.test.model").await.respond_access(true, Some("*")).await;
    let req = env.service.expect("call.test.model.method").await;
    let start = Instant::now();
    req.respond_raw(&b"timeout:\"200\""[..]).await;
    c.response(id).await.assert_error("system.timeout");
    assert!(start.elapsed() < Duration::from_millis(1500), "the pre-response replaces the remaining timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_method_or_rid_is_subject_too_long() {
    let env = TestEnv::start().await;
    let mut c = env.client().await;
    c.request(&format!("call.test.model.{}", "m".repeat(10_000)), json!(null))
        .await
        .assert_error("system.subjectTooLong");
    c.request(&format!("call.test.{}.method", "r".repeat(10_000)), json!(null))
        .await
        .assert_error("system.subjectTooLong");
}

/// A service that publishes an event and then replies (go-res's `set`): the caller sees the event
/// before the reply, every time — on the called resource, on a resource it holds through a
/// reference, and with another client subscribed too. Structural (the reply waits behind the
/// events NATS delivered before it), so no attempt may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_published_before_the_reply_reaches_the_caller_first() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let mut watcher = env.client().await;
    let id = c.send("subscribe.test.parent", json!(null)).await;
    env.service.expect("access.test.parent").await.respond_access(true, Some("*")).await;
    env.service.expect("get.test.parent").await.respond_model(json!({"child": {"rid": "test.child"}, "n": 0})).await;
    env.service.expect("get.test.child").await.respond_model(json!({"n": 0})).await;
    c.response(id).await.result();
    let id = watcher.send("subscribe.test.child", json!(null)).await;
    env.service.expect("access.test.child").await.respond_access(true, None).await;
    watcher.response(id).await.result();
    for n in 1..=300 {
        // Alternate the resource whose event precedes the reply.
        let rid = if n % 2 == 0 { "test.parent" } else { "test.child" };
        let id = c.send("call.test.parent.set", json!({ "n": n })).await;
        let req = env.service.expect("call.test.parent.set").await;
        env.service.publish_event_noflush(rid, "change", &json!({"values": {"n": n}})).await;
        req.respond_result(json!(null)).await;
        let first = c.next_message().await;
        assert_eq!(first, json!({"event": format!("{rid}.change"), "data": {"values": {"n": n}}}), "call {n}");
        assert_eq!(c.next_message().await, json!({"id": id, "result": {"payload": null}}), "call {n}");
        if rid == "test.child" {
            assert_eq!(watcher.expect_event("test.child.change").await, json!({"values": {"n": n}}));
        }
    }
}

/// `new`: the add event on the collection the caller holds comes before the resource reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_event_before_new_reply() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("subscribe.test.items", json!(null)).await;
    env.service.serve_collection("test.items", json!([])).await;
    c.response(id).await.result();
    for n in 0..50 {
        let rid = format!("test.item.{n}");
        let id = c.send("new.test.items", json!({ "n": n })).await;
        let req = env.service.expect("call.test.items.new").await;
        env.service.publish_event_noflush("test.items", "add", &json!({"idx": n, "value": {"rid": rid}})).await;
        req.respond_json(json!({"resource": {"rid": rid}})).await;
        // The event's reference is loaded (the connection holds the reply back meanwhile); then
        // the reply's resource is access-checked.
        env.service.expect(&format!("get.{rid}")).await.respond_model(json!({ "n": n })).await;
        env.service.expect(&format!("access.{rid}")).await.respond_access(true, None).await;
        let ev = c.next_message().await;
        assert_eq!(ev["event"], json!("test.items.add"), "new {n}: {ev}");
        assert_eq!(ev["data"]["idx"], json!(n));
        // The event carried the new model; the reply names it, already sent.
        assert_eq!(ev["data"]["models"][&rid], json!({ "n": n }), "{ev}");
        assert_eq!(c.next_message().await, json!({"id": id, "result": {"rid": rid}}), "new {n}");
    }
}

/// Over HTTP: a GET right after a POST whose service changed the resource and then replied sees
/// the change (the POST's reply waited behind the event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_get_after_post_sees_the_change_published_before_the_reply() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("subscribe.test.model", json!(null)).await;
    env.service.serve_model("test.model", json!({"n": 0})).await;
    c.response(id).await.result();
    for n in 1..=50 {
        let post = {
            let addr = env.addr();
            tokio::spawn(async move { http_request(addr, "POST", "/api/test/model/set", &[], b"{}").await })
        };
        env.service.expect("access.test.model").await.respond_access(true, Some("*")).await;
        let req = env.service.expect("call.test.model.set").await;
        env.service.publish_event_noflush("test.model", "change", &json!({"values": {"n": n}})).await;
        req.respond_result(json!(null)).await;
        assert_eq!(post.await.unwrap().status, 204);
        let get = {
            let addr = env.addr();
            tokio::spawn(async move { http_request(addr, "GET", "/api/test/model", &[], b"").await })
        };
        env.service.expect("access.test.model").await.respond_access(true, None).await;
        assert_eq!(get.await.unwrap().json(), json!({ "n": n }), "GET after POST {n}");
    }
}

/// A service that deletes the resource and then replies (the gateway stops listening to a
/// deleted resource's events): the reply still comes, after the delete, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_after_a_delete_event_is_not_lost() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    for n in 0..100 {
        let rid = format!("test.model.{n}");
        let id = c.send(&format!("subscribe.{rid}"), json!(null)).await;
        env.service.serve_model(&rid, json!({ "n": n })).await;
        c.response(id).await.result();
        let id = c.send(&format!("call.{rid}.remove"), json!(null)).await;
        let req = env.service.expect(&format!("call.{rid}.remove")).await;
        env.service.publish_event_noflush(&rid, "delete", &json!(null)).await;
        req.respond_result(json!(null)).await;
        assert_eq!(c.next_message().await, json!({"event": format!("{rid}.delete"), "data": null}), "{n}");
        let unsub = c.next_message().await;
        assert_eq!(unsub["event"], json!(format!("{rid}.unsubscribe")), "{n}: {unsub}");
        assert_eq!(c.next_message().await, json!({"id": id, "result": {"payload": null}}), "{n}");
    }
}

/// Calls made back to back reach the service in the order the client made them, subscribed
/// (cached access) or not (one access check, then the calls in order), and their replies come
/// back in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_calls_keep_their_order() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    for subscribed in [false, true] {
        if subscribed {
            let id = c.send("subscribe.test.model", json!(null)).await;
            env.service.serve_model("test.model", json!({})).await;
            c.response(id).await.result();
        }
        let mut sent = Vec::new();
        for n in 0..20 {
            sent.push(c.send("call.test.model.set", json!({ "n": n })).await);
        }
        // Unsubscribed, the calls wait for an access check, made again for calls that come after
        // it was answered (as Resgate checks each call of an unsubscribed resource).
        let mut n = 0;
        while n < 20 {
            let req = env
                .service
                .expect_where("a call or access", |s| s.ends_with("test.model.set") || s.starts_with("access."))
                .await;
            if req.subject.starts_with("access.") {
                assert!(!subscribed, "access cached while subscribed");
                req.respond_access(true, Some("*")).await;
                continue;
            }
            assert_eq!(req.payload_json()["params"], json!({ "n": n }), "subscribed: {subscribed}");
            req.respond_result(json!(n)).await;
            n += 1;
        }
        for (n, id) in sent.into_iter().enumerate() {
            assert_eq!(c.next_message().await, json!({"id": id, "result": {"payload": n}}));
        }
        env.service.assert_no_request(QUIET).await;
    }
}
