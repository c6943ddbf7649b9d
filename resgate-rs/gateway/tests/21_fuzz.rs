//! Property tests: thousands of generated client frames never panic or wedge the gateway; random
//! service replies always end in a client response.

mod common;

use common::*;
use futures_util::StreamExt;
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestRunner};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone)]
enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        ".{0,16}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{0,6}|rid|data|count|protocol|values", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn method() -> impl Strategy<Value = String> {
    let kind = prop::sample::select(vec![
        "subscribe",
        "unsubscribe",
        "get",
        "call",
        "auth",
        "new",
        "version",
        "",
        "x",
        "event",
    ]);
    (kind, "[a-z]{0,6}(\\.[a-z{}?*>=& \\t]{0,6}){0,4}", prop::option::of("[a-zA-Z.?]{0,6}")).prop_map(|(k, rid, m)| {
        let mut s = format!("{k}.fuzz.{rid}");
        if let Some(m) = m {
            s.push('.');
            s.push_str(&m);
        }
        s
    })
}

fn request() -> impl Strategy<Value = Value> {
    let id = prop_oneof![(0u64..1_000_000_000_000).prop_map(Value::from), json_value()];
    let method = prop_oneof![4 => method().prop_map(Value::from), 1 => json_value()];
    (prop::option::of(id), prop::option::of(method), prop::option::of(json_value())).prop_map(|(id, m, p)| {
        let mut o = serde_json::Map::new();
        if let Some(id) = id {
            o.insert("id".into(), id);
        }
        if let Some(m) = m {
            o.insert("method".into(), m);
        }
        if let Some(p) = p {
            o.insert("params".into(), p);
        }
        Value::Object(o)
    })
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Frame::Binary),
        1 => ".{0,64}".prop_map(Frame::Text),
        2 => json_value().prop_map(|v| Frame::Text(v.to_string())),
        6 => request().prop_map(|v| Frame::Text(v.to_string())),
    ]
}

/// Replies a service may give, raw; `None` = never answer.
fn reply() -> impl Strategy<Value = Option<Vec<u8>>> {
    let fixed: Vec<Option<&'static str>> = vec![
        None,
        Some(r#"{"result":{"get":true,"call":"*"}}"#),
        Some(r#"{"result":{"get":false}}"#),
        Some(r#"{"result":{"model":{"a":1,"b":"x"}}}"#),
        Some(r#"{"result":{"collection":[1,"x",null]}}"#),
        Some(r#"{"result":{"model":{"r":{"rid":"fuzz.ref"}}}}"#),
        Some(r#"{"result":null}"#),
        Some(r#"{"resource":{"rid":"fuzz.res"}}"#),
        Some(r#"{"error":{"code":"system.notFound","message":"Not found"}}"#),
        Some(r#"{"error":{"message":"no code"}}"#),
        Some(r#"{"error":42}"#),
        Some(r#"{"result":{"model":{"a":1},"query":"x"}}"#),
        Some(r#"timeout:"100""#),
        Some(""),
        Some("\u{0}\u{7f}garbage"),
    ];
    prop_oneof![
        3 => prop::sample::select(fixed).prop_map(|o| o.map(|s| s.as_bytes().to_vec())),
        1 => json_value().prop_map(|v| Some(json!({ "result": v }).to_string().into_bytes())),
        1 => json_value().prop_map(|v| Some(v.to_string().into_bytes())),
        1 => prop::collection::vec(any::<u8>(), 0..32).prop_map(Some),
    ]
}

/// A service answering every request with a random canned reply (or not at all).
async fn random_service(url: &str) {
    let client = async_nats::connect(url).await.unwrap();
    let mut subs = Vec::new();
    for s in SERVICE_SUBJECTS {
        subs.push(client.subscribe(s.to_string()).await.unwrap());
    }
    synced_with_server(&client).await;
    let mut all = futures_util::stream::select_all(subs);
    let replies: Vec<&[u8]> = vec![
        br#"{"result":{"get":true,"call":"*"}}"#,
        br#"{"result":{"model":{"a":1}}}"#,
        br#"{"result":{"collection":[1,2]}}"#,
        br#"{"result":null}"#,
        br#"{"error":{"code":"system.notFound","message":"Not found"}}"#,
        br#"{"resource":{"rid":"fuzz.res"}}"#,
        b"\xff\x00",
        b"",
        br#"{"result":{"model":{"r":{"rid":"fuzz.ref"}}}}"#,
    ];
    tokio::spawn(async move {
        let mut n: usize = 0;
        while let Some(m) = all.next().await {
            n = n.wrapping_mul(31).wrapping_add(7);
            let Some(reply) = m.reply else { continue };
            // Access requests mostly succeed so that deeper paths are exercised.
            let r = if m.subject.starts_with("access.") && !n.is_multiple_of(3) {
                replies[0]
            } else {
                replies[n % replies.len()]
            };
            if n.is_multiple_of(11) {
                continue; // never answered: the gateway must time out
            }
            let _ = client.publish(reply, r.to_vec().into()).await;
        }
    });
}

#[test]
fn generated_client_frames_never_wedge_the_gateway() {
    const CASES: u32 = 500;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let env = rt.block_on(TestEnv::start_custom(|c| c.request_timeout = 200, &[]));
    rt.block_on(random_service(&env.nats.url()));
    let client = Mutex::new(rt.block_on(env.client()));
    let frames_sent = Arc::new(AtomicU64::new(0));
    let probe = AtomicU64::new(1 << 50);
    let mut runner = TestRunner::new(PtConfig {
        cases: CASES,
        max_shrink_iters: 20,
        failure_persistence: None,
        ..PtConfig::default()
    });
    runner
        .run(&prop::collection::vec(frame(), 1..30), |frames| {
            rt.block_on(async {
                let mut c = client.lock().await;
                for f in &frames {
                    let m = match f {
                        Frame::Text(t) => Message::text(t.clone()),
                        Frame::Binary(b) => Message::binary(b.clone()),
                    };
                    c.send_message(m).await.map_err(|e| TestCaseError::fail(format!("send failed: {e}")))?;
                    frames_sent.fetch_add(1, Ordering::Relaxed);
                }
                c.clear();
                prop_assert!(c.closed.is_none(), "connection closed by {:?} after {frames:?}", c.closed);
                let id = probe.fetch_add(1, Ordering::Relaxed);
                c.send_text(&json!({"id": id, "method": "version"}).to_string()).await;
                let r = c.response_within(id, Duration::from_secs(5)).await;
                prop_assert_eq!(r.result(), json!({"protocol": "1.2.3"}));
                c.clear();
                Ok(())
            })
        })
        .unwrap();
    // After the barrage: the same connection and a new one still answer.
    rt.block_on(async {
        let mut c = client.lock().await;
        c.clear();
        let id = probe.fetch_add(1, Ordering::Relaxed);
        c.send_text(&json!({"id": id, "method": "version"}).to_string()).await;
        c.response_within(id, Duration::from_secs(5)).await.result();
        let mut fresh = env.client().await;
        fresh.request("version", json!(null)).await.assert_result(json!({"protocol": "1.2.3"}));
    });
    println!("{CASES} cases, {} generated client frames sent", frames_sent.load(Ordering::Relaxed));
}

#[derive(Debug, Clone)]
struct ServiceCase {
    op: &'static str,
    access: Option<Vec<u8>>,
    get: Option<Vec<u8>>,
    call: Option<Vec<u8>>,
    params: Option<Value>,
}

fn service_case() -> impl Strategy<Value = ServiceCase> {
    (
        prop::sample::select(vec!["subscribe", "get", "call", "auth", "new"]),
        reply(),
        reply(),
        reply(),
        prop::option::of(json_value()),
    )
        .prop_map(|(op, access, get, call, params)| ServiceCase { op, access, get, call, params })
}

#[test]
fn random_service_replies_always_answer_the_client() {
    const CASES: u32 = 150;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let env = Mutex::new(rt.block_on(TestEnv::start_with(|c| c.request_timeout = 150)));
    let client = Mutex::new(rt.block_on(async { env.lock().await.client().await }));
    let n = AtomicU64::new(0);
    let mut runner = TestRunner::new(PtConfig {
        cases: CASES,
        max_shrink_iters: 10,
        failure_persistence: None,
        ..PtConfig::default()
    });
    runner
        .run(&service_case(), |case| {
            rt.block_on(async {
                let mut env = env.lock().await;
                let mut c = client.lock().await;
                let k = n.fetch_add(1, Ordering::Relaxed);
                let rid = format!("fuzz.r{k}");
                let method = match case.op {
                    "call" | "auth" => format!("{}.{rid}.m", case.op),
                    op => format!("{op}.{rid}"),
                };
                let id = c.send(&method, case.params.clone().unwrap_or(Value::Null)).await;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                let resp = loop {
                    tokio::select! {
                        r = c.response_within(id, Duration::from_secs(5)) => break r,
                        Some(req) = env.service.next_request(Duration::from_secs(5)) => {
                            let reply = if req.subject == format!("access.{rid}") {
                                &case.access
                            } else if req.subject == format!("get.{rid}") {
                                &case.get
                            } else if req.subject.starts_with(&format!("call.{rid}.")) || req.subject.starts_with(&format!("auth.{rid}.")) {
                                &case.call
                            } else {
                                &None
                            };
                            if let (Some(bytes), Some(_)) = (reply, &req.reply) {
                                req.respond_raw(bytes.clone()).await;
                            }
                        }
                        _ = tokio::time::sleep_until(deadline) => break Response(Value::Null),
                    }
                };
                prop_assert!(
                    resp.0.get("result").is_some() || resp.0.get("error").is_some() || resp.0.get("id").is_some(),
                    "no response for {case:?}: {}", resp.0
                );
                c.clear();
                let _ = env.service.take_pending();
                Ok(())
            })
        })
        .unwrap();
    println!("{CASES} random service-reply cases run");
}
