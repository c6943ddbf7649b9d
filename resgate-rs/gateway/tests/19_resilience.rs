//! resgate-rs improvements over Resgate: NATS reconnect with re-validation, slow-client
//! disconnect, inbound frame limit, malformed frames, keepalive, going-away on shutdown, event
//! order under bursts.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;

async fn sub_model(env: &mut TestEnv, c: &mut WsClient, rid: &str, m: Value) {
    let id = c.send(&format!("subscribe.{rid}"), json!(null)).await;
    env.service.serve_model(rid, m).await;
    c.response(id).await.result();
}

/// Waits for `get.<rid>` for up to `wait`, granting any access request that comes meanwhile.
async fn await_get_granting_access(env: &mut TestEnv, rid: &str, wait: Duration) -> ServiceRequest {
    let deadline = Instant::now() + wait;
    let subject = format!("get.{rid}");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {subject} within {wait:?}; pending: {:?}", env.service.take_pending());
        let r = env.service.expect_where(&subject, |s| s == subject || s.starts_with("access.")).await_or(left).await;
        match r {
            Some(r) if r.subject == subject => return r,
            Some(r) => r.respond_access(true, Some("*")).await,
            None => {}
        }
    }
}

trait AwaitOr: std::future::Future + Sized {
    async fn await_or(self, d: Duration) -> Option<Self::Output> {
        timeout(d, self).await.ok()
    }
}
impl<F: std::future::Future> AwaitOr for F {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_revalidates_cached_resources() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    sub_model(&mut env, &mut c, "test.model", json!({"a": 1, "b": "same"})).await;
    env.nats.stop();
    // The service's state changes while NATS is down.
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.nats.restart();
    let get = await_get_granting_access(&mut env, "test.model", Duration::from_secs(20)).await;
    get.respond_model(json!({"a": 2, "b": "same"})).await;
    assert_eq!(c.expect_event_within("test.model.change", Duration::from_secs(5)).await, json!({"values": {"a": 2}}));
    // Events flow again after the reconnect.
    env.service.publish_event("test.model", "change", json!({"values": {"a": 3}})).await;
    assert_eq!(c.expect_event("test.model.change").await, json!({"values": {"a": 3}}));
    // New requests work.
    let id = c.send("call.test.model.method", json!(null)).await;
    loop {
        let r =
            env.service.expect_where("access or call", |s| s.starts_with("access.") || s.starts_with("call.")).await;
        if r.subject.starts_with("access.") {
            r.respond_access(true, Some("*")).await;
        } else {
            r.respond_result(json!("ok")).await;
            break;
        }
    }
    c.response(id).await.assert_result(json!({"payload": "ok"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_resource_deleted_meanwhile() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    sub_model(&mut env, &mut c, "test.model", json!({"a": 1})).await;
    env.nats.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.nats.restart();
    let get = await_get_granting_access(&mut env, "test.model", Duration::from_secs(20)).await;
    get.respond_error("system.notFound", "Not found").await;
    assert_eq!(c.next_event().await, json!({"event": "test.model.delete", "data": null}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_is_disconnected_while_others_keep_receiving() {
    const EVENTS: usize = 3000;
    let mut env = TestEnv::start_with(|c| c.max_outbound_bytes = 64 * 1024).await;
    let mut fast = env.client().await;
    sub_model(&mut env, &mut fast, "test.model", json!({"n": 0})).await;
    // The slow client subscribes, then never reads again.
    let mut slow = ws_connect_raw(&env.ws_url(), &[]).await.unwrap();
    slow.send(Message::text(r#"{"id":1,"method":"version","params":{"protocol":"1.2.3"}}"#)).await.unwrap();
    slow.send(Message::text(r#"{"id":2,"method":"subscribe.test.model"}"#)).await.unwrap();
    env.service.expect("access.test.model").await.respond_access(true, None).await;
    let filler = "x".repeat(8 * 1024);
    // Paced: the fast client reads each batch (well under the limit) before the next is sent,
    // while the slow client's backlog only grows.
    for batch in 0..EVENTS / 4 {
        for k in 1..=4 {
            let n = batch * 4 + k;
            let p = json!({"values": {"n": n, "filler": format!("{n}{filler}")}});
            env.service.publish_event_noflush("test.model", "change", &p).await;
        }
        env.service.flush().await;
        for k in 1..=4 {
            let ev = fast.expect_event_within("test.model.change", Duration::from_secs(10)).await;
            assert_eq!(ev["values"]["n"], json!(batch * 4 + k), "fast client sees every event in order");
        }
    }
    // Now drain what the slow client's socket holds: it must end (close frame or TCP close)
    // before all events, rather than stay open.
    let mut got = 0usize;
    let ended = timeout(Duration::from_secs(15), async {
        while let Some(m) = slow.next().await {
            match m {
                Ok(Message::Text(_)) => got += 1,
                Ok(Message::Close(_)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "slow client still connected after receiving {got} messages");
    assert!(got < EVENTS + 2, "slow client received everything ({got}); it was never cut off");
}

/// A client that stops reading mid-fan-out (its socket fills: events written straight from the
/// fan-out stop part-way and the connection task takes over) and then reads again gets every
/// event once, in order, as does a client reading all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_pauses_mid_fan_out_gets_every_event_in_order() {
    const EVENTS: u64 = 1500;
    let mut env = TestEnv::start_with(|c| {
        c.max_outbound_bytes = 1 << 30;
        c.metrics_port = Some(0);
    })
    .await;
    let mut fast = env.client().await;
    sub_model(&mut env, &mut fast, "test.model", json!({"n": 0})).await;
    let mut paused = ws_connect_raw(&env.ws_url(), &[]).await.unwrap();
    paused.send(Message::text(r#"{"id":1,"method":"version","params":{"protocol":"1.2.3"}}"#)).await.unwrap();
    paused.send(Message::text(r#"{"id":2,"method":"subscribe.test.model"}"#)).await.unwrap();
    env.service.expect("access.test.model").await.respond_access(true, None).await;
    let mut replies = 0;
    while replies < 2 {
        if let Some(Ok(Message::Text(_))) = timeout(WAIT, paused.next()).await.expect("replies") {
            replies += 1;
        }
    }
    // ~6 MB of events while `paused` reads nothing: more than its socket buffers hold.
    let filler = "x".repeat(4 * 1024);
    for n in 1..=EVENTS {
        let p = json!({"values": {"n": n, "filler": format!("{n}{filler}")}});
        env.service.publish_event_noflush("test.model", "change", &p).await;
        if n % 50 == 0 {
            env.service.flush().await;
            for k in n - 49..=n {
                let ev = fast.expect_event_within("test.model.change", Duration::from_secs(10)).await;
                assert_eq!(ev["values"]["n"], json!(k));
            }
        }
    }
    let mut next = 1;
    while next <= EVENTS {
        let m = timeout(Duration::from_secs(10), paused.next()).await.expect("events keep coming");
        let Some(Ok(Message::Text(t))) = m else { panic!("connection ended at event {next}: {m:?}") };
        let v: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v["data"]["values"]["n"], json!(next), "event {next} in order, once");
        next += 1;
    }
    // Both paths were taken: written by the fan-out, and cut short for the task to finish.
    let m = env.metrics().await;
    let count = |name: &str| metric_value(&m, name, "").unwrap_or(0.0);
    assert!(count("resgate_direct_deliveries_total") > 0.0, "no direct delivery happened");
    assert!(count("resgate_direct_partial_writes_total") > 0.0, "no direct write was cut short");
}

/// A connection the gateway closes ends at the TCP level at once, though one of its requests is
/// still out (its task holds the connection's sending side) and another client keeps the entry
/// it took events from directly: direct delivery holds the socket only while the connection's
/// task runs. The other client's events go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_lets_go_of_its_socket_while_a_request_is_out() {
    let mut env = TestEnv::start_with(|c| {
        c.max_inbound_frame = 1024;
        c.request_timeout = 60_000;
    })
    .await;
    let mut other = env.client().await;
    sub_model(&mut env, &mut other, "test.model", json!({"n": 0})).await;
    let mut ws = ws_connect_raw(&env.ws_url(), &[]).await.unwrap();
    let next_text = async |ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>| -> Value {
        loop {
            match timeout(WAIT, ws.next()).await.expect("a frame") {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
                Some(Ok(_)) => {}
                m => panic!("connection ended: {m:?}"),
            }
        }
    };
    ws.send(Message::text(r#"{"id":1,"method":"subscribe.test.model"}"#)).await.unwrap();
    env.service.expect("access.test.model").await.respond_access(true, Some("*")).await;
    assert_eq!(next_text(&mut ws).await["id"], json!(1), "subscribed");
    // Events once the connection is idle are written by the fan-out itself.
    for n in 1..=3 {
        env.service.publish_event("test.model", "change", json!({"values": {"n": n}})).await;
        assert_eq!(other.expect_event("test.model.change").await["values"]["n"], json!(n));
        assert_eq!(next_text(&mut ws).await["data"]["values"]["n"], json!(n));
    }
    // A call the service leaves unanswered (the request timeout is a minute).
    ws.send(Message::text(r#"{"id":2,"method":"call.test.model.wait"}"#)).await.unwrap();
    let _unanswered = env.service.expect("call.test.model.wait").await;
    let big = format!(r#"{{"id":3,"method":"version","params":{{"x":"{}"}}}}"#, "y".repeat(2048));
    ws.send(Message::text(big)).await.unwrap();
    let close = timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                m => panic!("connection ended without a close frame: {m:?}"),
            }
        }
    })
    .await
    .expect("a close frame");
    assert_eq!(close, Some(1009));
    // Past the close frame, the socket itself ends: end of file or a reset, not silence.
    let mut buf = [0u8; 64];
    let tail = timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(ws.get_mut(), &mut buf)).await;
    assert!(matches!(tail, Ok(Ok(0)) | Ok(Err(_))), "the closed connection's socket is still open: {tail:?}");
    env.service.publish_event("test.model", "change", json!({"values": {"n": 4}})).await;
    assert_eq!(other.expect_event("test.model.change").await["values"]["n"], json!(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_that_connection_only() {
    let env = TestEnv::start_with(|c| c.max_inbound_frame = 1024).await;
    let mut other = env.client().await;
    let mut c = env.client().await;
    let big = format!(r#"{{"id":9,"method":"version","params":{{"x":"{}"}}}}"#, "y".repeat(2048));
    c.send_text(&big).await;
    assert_eq!(c.expect_close(Duration::from_secs(3)).await, Some(1009), "close code 1009 (message too big)");
    other.request("version", json!(null)).await.assert_result(json!({"protocol": "1.2.3"}));
    // A frame just under the limit is fine.
    let ok = format!(r#"{{"id":10,"method":"version","params":{{"x":"{}"}}}}"#, "y".repeat(900));
    other.send_text(&ok).await;
    other.response(10).await.assert_result(json!({"protocol": "1.2.3"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_gets_error_frame_and_connection_stays() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    for raw in ["not json", "{", "[1,2", "\"str\"", "42", "{\"id\":\"x\",\"method\":\"version\"}"] {
        c.send_text(raw).await;
        let e = c.expect_idless().await;
        assert!(e.get("id").is_none(), "{raw}: {e}");
        assert_eq!(e["error"]["code"], json!("system.invalidRequest"), "{raw}: {e}");
        c.request("version", json!(null)).await.assert_result(json!({"protocol": "1.2.3"}));
    }
    env.service.assert_no_request(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_without_id_is_ignored() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    c.send_text(r#"{"method":"version","params":{"protocol":"1.2.3"}}"#).await;
    c.send_text(r#"{"method":"subscribe.test.model"}"#).await;
    c.assert_no_message(QUIET).await;
    env.service.assert_no_request(QUIET).await;
    c.request("version", json!(null)).await.assert_result(json!({"protocol": "1.2.3"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frame_does_not_kill_the_connection() {
    let env = TestEnv::start().await;
    let mut c = env.client().await;
    c.send_message(Message::binary(vec![0u8, 159, 146, 150])).await.unwrap();
    let deadline = Instant::now() + QUIET;
    // Either ignored or answered with an id-less error; the connection must stay open.
    let _ = timeout(deadline - Instant::now(), c.expect_idless()).await;
    c.request("version", json!(null)).await.assert_result(json!({"protocol": "1.2.3"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_sent_at_ping_interval() {
    let env = TestEnv::start_with(|c| {
        c.ping_interval = 100;
        c.idle_timeout = 5000;
    })
    .await;
    let mut c = env.client().await;
    let start = Instant::now();
    c.expect_pings(3, Duration::from_secs(2)).await;
    assert!(start.elapsed() >= Duration::from_millis(150), "pings spaced by the interval");
    c.request("version", json!(null)).await.result();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_pings_when_disabled() {
    let env = TestEnv::start_with(|c| c.ping_interval = 0).await;
    let mut c = env.client().await;
    c.assert_no_message(Duration::from_millis(400)).await;
    assert_eq!(c.pings, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_closed_after_idle_timeout() {
    let env = TestEnv::start_with(|c| {
        c.ping_interval = 100;
        c.idle_timeout = 500;
    })
    .await;
    // A raw stream nobody polls: pings are never answered.
    let mut silent = ws_connect_raw(&env.ws_url(), &[]).await.unwrap();
    let mut alive = env.client().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ended = timeout(Duration::from_secs(5), async {
        while let Some(m) = silent.next().await {
            if matches!(m, Ok(Message::Close(_)) | Err(_)) {
                return;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "idle client was not closed");
    alive.request("version", json!(null)).await.result();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_going_away() {
    let mut env = TestEnv::start().await;
    let mut c1 = env.client().await;
    let mut c2 = env.client().await;
    let url = env.ws_url();
    let gw = env.gateway.take().unwrap();
    let h = tokio::spawn(async move { gw.shutdown().await });
    assert_eq!(c1.expect_close(Duration::from_secs(5)).await, Some(1001));
    assert_eq!(c2.expect_close(Duration::from_secs(5)).await, Some(1001));
    timeout(Duration::from_secs(10), h).await.expect("shutdown finishes").unwrap();
    assert!(WsClient::connect(&url, &[]).await.is_err(), "listener closed after shutdown");
}

/// Found by the scale benchmark: NATS gone in the middle of a drain left gateways reconnecting
/// for minutes instead of exiting. Shutdown must end (drain timeout plus a bounded flush).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_when_nats_is_gone() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    sub_model(&mut env, &mut c, "test.model", json!({"a": 1})).await;
    env.nats.stop();
    let gw = env.gateway.take().unwrap();
    timeout(Duration::from_secs(10), gw.shutdown()).await.expect("shutdown finishes without NATS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_1000_events_reaches_two_clients_in_order() {
    let mut env = TestEnv::start().await;
    let mut c1 = env.client().await;
    sub_model(&mut env, &mut c1, "test.model", json!({"n": 0})).await;
    let mut c2 = env.client().await;
    let id = c2.send("subscribe.test.model", json!(null)).await;
    env.service.expect("access.test.model").await.respond_access(true, None).await;
    c2.response(id).await.result();
    for n in 1..=1000 {
        env.service.publish_event_noflush("test.model", "change", &json!({"values": {"n": n}})).await;
    }
    env.service.flush().await;
    for c in [&mut c1, &mut c2] {
        for n in 1..=1000 {
            assert_eq!(c.expect_event("test.model.change").await, json!({"values": {"n": n}}));
        }
        c.assert_no_message(QUIET).await;
    }
}

/// A burst that overflows a subscription's buffer (slow consumer) is healed by re-validating the
/// cache after the burst, not once per dropped message (20 times for ~50,000 drops before), and
/// the client ends in the service's final state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_buffer_overflow_revalidates_after_the_burst_and_converges() {
    const EVENTS: u64 = 100_000;
    let mut env = TestEnv::start_with(|c| {
        c.buffer_size = 1024;
        c.metrics_port = Some(0);
        c.max_outbound_bytes = 1 << 30; // the client reads only after the burst
    })
    .await;
    let mut c = env.client().await;
    // Wide change events take the event task longer to apply than the reader to queue.
    let wide =
        |n: u64| -> Value { (0..20).map(|k| (format!("f{k}"), json!(n))).collect::<serde_json::Map<_, _>>().into() };
    sub_model(&mut env, &mut c, "test.model", wide(0)).await;
    for n in 1..=EVENTS {
        env.service.publish_event_noflush("test.model", "change", &json!({ "values": wide(n) })).await;
    }
    env.service.flush().await;
    // Every re-fetch gets the final state (the service published it all before answering); each
    // re-validation also re-checks the client's access.
    let mut gets = 0;
    let subjects = |s: &str| s == "get.test.model" || s == "access.test.model";
    while let Some(r) = env.service.expect_where("get.test.model", subjects).await_or(Duration::from_millis(1500)).await
    {
        if r.subject.starts_with("get.") {
            r.respond_model(wide(EVENTS)).await;
            gets += 1;
        } else {
            r.respond_access(true, None).await;
        }
    }
    let dropped: u64 = env
        .metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix("resgate_nats_slow_consumer_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("slow-consumer counter");
    assert!(dropped > 0, "the burst never overflowed the buffer: the test proves nothing (gets: {gets})");
    assert!(gets >= 1, "{dropped} messages dropped but no re-validation");
    eprintln!("{dropped} messages dropped, {gets} re-validations");
    // A handful here (a reset that comes while a re-fetch is in flight asks for one more, since
    // that reply may predate it); tens of thousands if every drop asked for one.
    assert!(gets <= 10, "{gets} re-validations for one burst ({dropped} messages dropped)");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "the client never reached the final state");
        let ev = c.next_event().await;
        if ev["data"]["values"]["f19"] == json!(EVENTS) {
            break;
        }
    }
}
