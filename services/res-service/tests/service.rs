//! The service library against a real nats-server: routing, replies for every failure, events
//! ordered before replies, queue groups, query events, metrics and graceful shutdown.

use futures_util::StreamExt;
use prometheus_client::registry::Registry;
use res_protocol::code;
use res_protocol::service::{CallResult, decode_access, decode_call, decode_get};
use res_protocol::value::ResourceData;
use res_service::{CallResponse, Handler, QueryEventItem, QueryReply, ResError, Resource, Service};
use res_testkit::NatsServer;
use serde::Deserialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Deserialize)]
struct Token {
    sub: String,
}

#[derive(Deserialize)]
struct SetParams {
    value: i64,
}

fn example(counter: Arc<AtomicUsize>) -> Service {
    Service::new("example")
        .handle(
            "example.model.$id",
            Handler::new()
                .get(|req| async move {
                    if req.path("id") == "missing" {
                        return Err(ResError::not_found());
                    }
                    Resource::model(
                        serde_json::json!({ "id": req.path("id"), "ref": res_service::reference("example.other") }),
                    )
                })
                .access(|req| async move {
                    let tok: Option<Token> = req.token()?;
                    Ok::<_, ResError>(res_service::access(true, if tok.is_some() { "set,boom,slow" } else { "" }))
                })
                .call("set", move |req| {
                    let counter = counter.clone();
                    async move {
                        let tok: Token = req.require_token()?;
                        let p: SetParams = req.params()?;
                        counter.fetch_add(1, Ordering::SeqCst);
                        req.events().change_json(req.rid(), serde_json::json!({ "value": p.value })).await?;
                        CallResponse::result(serde_json::json!({ "by": tok.sub, "value": p.value }))
                    }
                })
                .call("boom", |_req| async move {
                    if std::hint::black_box(true) {
                        panic!("handler bug");
                    }
                    Ok::<_, ResError>(CallResponse::null())
                })
                .call("slow", |_req| async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, ResError>(CallResponse::resource("example.model.done"))
                }),
        )
        .handle(
            "example.items",
            Handler::new().get(|req| async move {
                // A query resource: normalize by sorting the pairs.
                let mut pairs: Vec<&str> = req.query().unwrap_or("").split('&').filter(|s| !s.is_empty()).collect();
                pairs.sort_unstable();
                Resource::collection(serde_json::json!([1, 2, 3])).map(|r| r.with_query(pairs.join("&")))
            }),
        )
        .handle(
            "example.tail.>",
            Handler::new()
                .get_model(|req| async move { Ok::<_, ResError>(serde_json::json!({ "tail": req.path(">") })) }),
        )
}

async fn connect(nats: &NatsServer) -> async_nats::Client {
    async_nats::connect(nats.url()).await.expect("connect to nats")
}

async fn request(c: &async_nats::Client, subject: &str, body: serde_json::Value) -> Vec<u8> {
    let msg = tokio::time::timeout(Duration::from_secs(5), c.request(subject.to_owned(), body.to_string().into()))
        .await
        .expect("reply within 5 s")
        .expect("request");
    msg.payload.to_vec()
}

fn call_err(payload: &[u8]) -> String {
    decode_call(payload).0.expect_err("an error reply").code.into_owned()
}

#[tokio::test]
async fn routes_get_access_and_calls_with_errors_as_replies() {
    let nats = NatsServer::start();
    let mut registry = Registry::default();
    let counter = Arc::new(AtomicUsize::new(0));
    let running = example(counter.clone()).with_metrics(&mut registry).start(connect(&nats).await).await.unwrap();
    let c = connect(&nats).await;

    let g = decode_get(&request(&c, "get.example.model.7", serde_json::json!({})).await).unwrap();
    let ResourceData::Model(m) = g.data else { panic!("model expected") };
    assert_eq!(m["id"].to_string(), "\"7\"");
    assert_eq!(m["ref"].hard_reference(), Some("example.other"));

    let e = decode_get(&request(&c, "get.example.model.missing", serde_json::json!({})).await).unwrap_err();
    assert_eq!(e.code, code::NOT_FOUND);
    let e = decode_get(&request(&c, "get.example.nothing", serde_json::json!({})).await).unwrap_err();
    assert_eq!(e.code, code::NOT_FOUND);

    let g = decode_get(&request(&c, "get.example.items", serde_json::json!({"query": "b=2&a=1"})).await).unwrap();
    assert_eq!(g.query.as_deref(), Some("a=1&b=2"));
    let g = decode_get(&request(&c, "get.example.tail.x.y", serde_json::json!({})).await).unwrap();
    let ResourceData::Model(m) = g.data else { panic!("model expected") };
    assert_eq!(m["tail"].to_string(), "\"x.y\"");

    let (a, _) =
        decode_access(&request(&c, "access.example.model.1", serde_json::json!({"cid": "c1", "token": null})).await);
    assert_eq!(a.unwrap().call, "");
    let (a, _) = decode_access(
        &request(&c, "access.example.model.1", serde_json::json!({"cid": "c1", "token": {"sub": "u1"}})).await,
    );
    assert!(a.unwrap().can_call("set"));
    // No access handler: denied rather than left unanswered.
    let (a, _) = decode_access(&request(&c, "access.example.items", serde_json::json!({"cid": "c1"})).await);
    assert_eq!(a.unwrap_err().code, code::ACCESS_DENIED);

    let tok = serde_json::json!({"sub": "u1"});
    let ok =
        request(&c, "call.example.model.1.set", serde_json::json!({"cid": "c1", "token": tok, "params": {"value": 5}}))
            .await;
    match decode_call(&ok).0.unwrap() {
        CallResult::Payload(p) => assert_eq!(p.get(), r#"{"by":"u1","value":5}"#),
        other => panic!("unexpected {other:?}"),
    }
    let bad = request(
        &c,
        "call.example.model.1.set",
        serde_json::json!({"cid": "c1", "token": tok, "params": {"value": "x"}}),
    )
    .await;
    assert_eq!(call_err(&bad), code::INVALID_PARAMS);
    let anon = request(
        &c,
        "call.example.model.1.set",
        serde_json::json!({"cid": "c1", "token": null, "params": {"value": 1}}),
    )
    .await;
    assert_eq!(call_err(&anon), code::ACCESS_DENIED);
    let nm = request(&c, "call.example.model.1.nope", serde_json::json!({"cid": "c1"})).await;
    assert_eq!(call_err(&nm), code::METHOD_NOT_FOUND);
    let boom = request(&c, "call.example.model.1.boom", serde_json::json!({"cid": "c1"})).await;
    assert_eq!(call_err(&boom), code::INTERNAL_ERROR);
    let slow = request(&c, "call.example.model.1.slow", serde_json::json!({"cid": "c1"})).await;
    assert!(matches!(decode_call(&slow).0.unwrap(), CallResult::Resource(r) if r == "example.model.done"));
    let garbage = c.request("call.example.model.1.set", "not json".into()).await.unwrap();
    assert_eq!(call_err(&garbage.payload), code::INVALID_REQUEST);
    assert_eq!(counter.load(Ordering::SeqCst), 1);

    let text = res_telemetry::admin::render(&registry);
    assert!(text.contains(r#"res_service_requests_total{service="example",kind="call",result="error"} 5"#), "{text}");
    assert!(text.contains(r#"res_service_requests_total{service="example",kind="get",result="ok"} 3"#), "{text}");
    assert!(text.contains(r#"res_service_request_duration_seconds_count{service="example",kind="call"} 7"#), "{text}");
    // Per method; a method or resource that does not exist is "unknown", so clients cannot make labels.
    assert!(text.contains(r#"res_service_call_duration_seconds_count{service="example",method="set"} 3"#), "{text}");
    assert!(
        text.contains(r#"res_service_call_duration_seconds_count{service="example",method="unknown"} 2"#),
        "{text}"
    );
    assert!(!text.contains(r#"method="nope""#), "{text}");
    let errors = |code: &str| format!(r#"res_service_errors_total{{service="example",kind="call",code="{code}"}} 1"#);
    for code in [code::INVALID_PARAMS, code::ACCESS_DENIED, code::METHOD_NOT_FOUND, code::INTERNAL_ERROR] {
        assert!(text.contains(&errors(code)), "{code}: {text}");
    }
    running.shutdown().await;
}

#[tokio::test]
async fn change_event_is_published_before_the_reply() {
    let nats = NatsServer::start();
    let running = example(Arc::new(AtomicUsize::new(0))).start(connect(&nats).await).await.unwrap();
    let c = connect(&nats).await;
    let mut all = c.subscribe(">").await.unwrap();
    c.flush().await.unwrap();
    let body = serde_json::json!({"cid": "c1", "token": {"sub": "u"}, "params": {"value": 9}});
    c.publish_with_reply("call.example.model.3.set", "reply.t1", body.to_string().into()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(5), all.next()).await.unwrap().unwrap();
        if m.subject.as_str() != "call.example.model.3.set" {
            seen.push((m.subject.to_string(), String::from_utf8(m.payload.to_vec()).unwrap()));
        }
    }
    assert_eq!(seen[0], ("event.example.model.3.change".to_owned(), r#"{"values":{"value":9}}"#.to_owned()));
    assert_eq!(seen[1].0, "reply.t1");
    running.shutdown().await;
}

#[tokio::test]
async fn instances_share_requests_and_handlers_run_concurrently() {
    let nats = NatsServer::start();
    let a_count = Arc::new(AtomicUsize::new(0));
    let b_count = Arc::new(AtomicUsize::new(0));
    let a = example(a_count.clone()).start(connect(&nats).await).await.unwrap();
    let b = example(b_count.clone()).start(connect(&nats).await).await.unwrap();
    let c = connect(&nats).await;
    let mut calls = Vec::new();
    for i in 0..60 {
        let c = c.clone();
        calls.push(tokio::spawn(async move {
            let body = serde_json::json!({"cid": "c", "token": {"sub": "u"}, "params": {"value": i}});
            request(&c, &format!("call.example.model.{i}.set"), body).await
        }));
    }
    for call in calls {
        assert!(decode_call(&call.await.unwrap()).0.is_ok());
    }
    let (na, nb) = (a_count.load(Ordering::SeqCst), b_count.load(Ordering::SeqCst));
    assert_eq!(na + nb, 60, "each request handled exactly once");
    assert!(na > 0 && nb > 0, "queue group spreads the load: {na}/{nb}");

    // Ten 300 ms handlers on two instances finish far below 10 × 300 ms.
    let started = Instant::now();
    let slow: Vec<_> = (0..10)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { request(&c, "call.example.model.1.slow", serde_json::json!({})).await })
        })
        .collect();
    for s in slow {
        assert!(decode_call(&s.await.unwrap()).0.is_ok());
    }
    assert!(started.elapsed() < Duration::from_millis(1500), "took {:?}", started.elapsed());
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn shutdown_answers_requests_in_flight_then_stops_serving() {
    let nats = NatsServer::start();
    let running = example(Arc::new(AtomicUsize::new(0))).start(connect(&nats).await).await.unwrap();
    let c = connect(&nats).await;
    let pending = {
        let c = c.clone();
        tokio::spawn(async move { request(&c, "call.example.model.1.slow", serde_json::json!({})).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    running.shutdown().await;
    assert!(decode_call(&pending.await.unwrap()).0.is_ok(), "in-flight request answered");
    let after = tokio::time::timeout(Duration::from_secs(2), c.request("get.example.model.1", "{}".into())).await;
    assert!(!matches!(after, Ok(Ok(_))), "no reply after shutdown");
}

#[tokio::test]
async fn query_event_round_trip_reset_and_token() {
    let nats = NatsServer::start();
    let svc_client = connect(&nats).await;
    let events = res_service::Events::new(svc_client);
    let gw = connect(&nats).await;
    let mut query_events = gw.subscribe("event.example.items.query").await.unwrap();
    let mut system = gw.subscribe("system.reset").await.unwrap();
    let mut tokens = gw.subscribe("conn.*.token").await.unwrap();
    // Another connection publishes next: the server must have the subscriptions first.
    res_service::Events::new(gw.clone()).flush().await.unwrap();

    let publisher = tokio::spawn(async move {
        let n = events
            .query_event("example.items", Duration::from_millis(500), |q| {
                if q == "bad" {
                    return Err(ResError::invalid_query());
                }
                Ok(QueryReply::Events(vec![QueryEventItem {
                    event: "add".into(),
                    data: serde_json::json!({"idx": 0, "value": q}),
                }]))
            })
            .await
            .unwrap();
        events.reset(&["example.>"], &[]).await.unwrap();
        events.set_token("cid1", Some(serde_json::json!({"sub": "u"}))).await.unwrap();
        // The client is dropped with this task: make sure the server has both messages.
        events.flush().await.unwrap();
        n
    });
    let ev = tokio::time::timeout(Duration::from_secs(5), query_events.next()).await.unwrap().unwrap();
    let subject =
        serde_json::from_slice::<serde_json::Value>(&ev.payload).unwrap()["subject"].as_str().unwrap().to_owned();
    let r = gw.request(subject.clone(), r#"{"query":"a=1"}"#.into()).await.unwrap();
    let parsed = res_protocol::service::decode_query_response(&r.payload).unwrap();
    assert!(matches!(parsed, res_protocol::service::QueryResult::Events(e) if e.len() == 1 && e[0].event == "add"));
    let r = gw.request(subject, r#"{"query":"bad"}"#.into()).await.unwrap();
    assert!(String::from_utf8_lossy(&r.payload).contains(code::INVALID_QUERY));
    assert_eq!(publisher.await.unwrap(), 2);
    let reset = tokio::time::timeout(Duration::from_secs(5), system.next()).await.unwrap().unwrap();
    assert_eq!(&reset.payload[..], br#"{"resources":["example.>"]}"#);
    let tok = tokio::time::timeout(Duration::from_secs(5), tokens.next()).await.unwrap().unwrap();
    assert_eq!(tok.subject.as_str(), "conn.cid1.token");
    assert_eq!(&tok.payload[..], br#"{"token":{"sub":"u"}}"#);
}

#[tokio::test]
async fn requests_right_after_start_and_events_after_flush_are_never_lost() {
    let nats = NatsServer::start();
    let c = connect(&nats).await;
    for i in 0..20 {
        // Subscriptions are confirmed by the server before start returns.
        let running = example(Arc::new(AtomicUsize::new(0))).start(connect(&nats).await).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(2), c.request("get.example.model.1", "{}".into())).await;
        assert!(matches!(r, Ok(Ok(_))), "round {i}: {r:?}");
        running.shutdown().await;

        // A subscription confirmed with Events::flush sees another connection's next publish.
        let listener = connect(&nats).await;
        let mut sub = listener.subscribe(format!("event.example.m{i}.change")).await.unwrap();
        res_service::Events::new(listener.clone()).flush().await.unwrap();
        let events = res_service::Events::new(connect(&nats).await);
        events.change_json(&format!("example.m{i}"), serde_json::json!({"n": i})).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), sub.next()).await;
        assert!(matches!(got, Ok(Some(_))), "round {i}: event lost");
    }
}

#[tokio::test]
async fn work_after_a_reply_runs_once_the_reply_is_out_and_never_after_a_failure() {
    let nats = NatsServer::start();
    let svc = connect(&nats).await;
    let after = |name: &'static str, client: async_nats::Client| async move {
        let _ = client.publish(format!("after.{name}"), name.into()).await;
        let _ = client.flush().await;
    };
    let (c1, c2) = (svc.clone(), svc.clone());
    let running = Service::new("late")
        .handle(
            "late.ok",
            Handler::new().get(move |req| {
                let c = c1.clone();
                async move {
                    req.after_reply(after("ok", c));
                    Resource::model(serde_json::json!({ "a": 1 }))
                }
            }),
        )
        .handle(
            "late.failed",
            Handler::new().get(move |req| {
                let c = c2.clone();
                async move {
                    req.after_reply(after("failed", c));
                    Err::<Resource, _>(ResError::not_found())
                }
            }),
        )
        .start(svc)
        .await
        .unwrap();
    // One subscription receives both the replies (to `after.reply`) and what the work publishes,
    // in the order the server routed them. Two subscriptions merged with `select` would not keep
    // that order: it takes from either side when both hold a message.
    let c = connect(&nats).await;
    let mut both = c.subscribe("after.>").await.unwrap();
    res_service::Events::new(c.clone()).flush().await.unwrap();
    let inbox = "after.reply".to_owned();
    let mut seen = Vec::new();
    // A failed get first, then two successful ones, each after the previous one's work is out.
    c.publish_with_reply("get.late.failed", inbox.clone(), "{}".into()).await.unwrap();
    let failed = tokio::time::timeout(Duration::from_secs(5), both.next()).await.expect("in time").unwrap();
    assert!(decode_get(&failed.payload).is_err(), "the failed get's reply comes first");
    for _ in 0..2 {
        c.publish_with_reply("get.late.ok", inbox.clone(), "{}".into()).await.unwrap();
        while seen.last().map(String::as_str) != Some("ok") {
            let m = tokio::time::timeout(Duration::from_secs(5), both.next()).await.expect("in time").unwrap();
            let body = String::from_utf8(m.payload.to_vec()).unwrap();
            let item = if m.subject.as_str() == inbox {
                decode_get(body.as_bytes()).map_or("error", |_| "reply").to_owned()
            } else {
                body
            };
            seen.push(item);
        }
        // Each successful get's work comes after its reply.
        assert_eq!(seen[seen.len() - 2], "reply", "{seen:?}");
        seen.push(String::new());
    }
    seen.retain(|s| !s.is_empty());
    assert_eq!(seen, ["reply", "ok", "reply", "ok"], "no work after a failed get");
    running.shutdown().await;
}
