//! End-to-end smoke test of the main client flow (the full conformance suite lives in
//! the numbered test files).

mod common;

use futures_util::{SinkExt, StreamExt};
use resgate::{Config, Gateway};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

async fn next_json(
    ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> Value {
    loop {
        let m =
            tokio::time::timeout(Duration::from_secs(3), ws.next()).await.expect("message in time").unwrap().unwrap();
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_event_call() {
    let nats = res_testkit::NatsServer::start();
    let gw = Gateway::start(Config { nats_url: nats.url(), addr: "127.0.0.1".into(), port: 0, ..Config::default() })
        .await
        .unwrap();
    let svc = async_nats::connect(nats.url()).await.unwrap();
    let mut reqs = svc.subscribe("*.test.>").await.unwrap();
    let svc2 = svc.clone();
    tokio::spawn(async move {
        while let Some(m) = reqs.next().await {
            let Some(reply) = m.reply.clone() else { continue };
            let body = match m.subject.as_str() {
                s if s.starts_with("access.") => json!({"result":{"get":true,"call":"*"}}),
                "get.test.model" => json!({"result":{"model":{"name":"foo","child":{"rid":"test.child"}}}}),
                "get.test.child" => json!({"result":{"collection":[1,2]}}),
                "call.test.model.set" => json!({"result":{"ok":true}}),
                _ => json!({"error":{"code":"system.notFound","message":"Not found"}}),
            };
            svc2.publish(reply, serde_json::to_vec(&body).unwrap().into()).await.unwrap();
        }
    });
    // A flush only empties the socket buffer: without a round trip the gateway's first request
    // can reach the server before the subscription and meet "no responders".
    common::synced_with_server(&svc).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/", gw.local_addr())).await.unwrap();
    ws.send(Message::text(r#"{"id":1,"method":"version","params":{"protocol":"1.2.3"}}"#)).await.unwrap();
    assert_eq!(next_json(&mut ws).await, json!({"result":{"protocol":"1.2.3"},"id":1}));
    ws.send(Message::text(r#"{"id":2,"method":"subscribe.test.model"}"#)).await.unwrap();
    assert_eq!(
        next_json(&mut ws).await,
        json!({"result":{"models":{"test.model":{"name":"foo","child":{"rid":"test.child"}}},"collections":{"test.child":[1,2]}},"id":2})
    );
    svc.publish("event.test.model.change", r#"{"values":{"name":"bar"}}"#.into()).await.unwrap();
    assert_eq!(next_json(&mut ws).await, json!({"event":"test.model.change","data":{"values":{"name":"bar"}}}));
    svc.publish("event.test.child.add", r#"{"idx":2,"value":3}"#.into()).await.unwrap();
    assert_eq!(next_json(&mut ws).await, json!({"event":"test.child.add","data":{"idx":2,"value":3}}));
    ws.send(Message::text(r#"{"id":3,"method":"call.test.model.set","params":{"name":"x"}}"#)).await.unwrap();
    assert_eq!(next_json(&mut ws).await, json!({"result":{"payload":{"ok":true}},"id":3}));
    ws.send(Message::text(r#"{"id":4,"method":"unsubscribe.test.model"}"#)).await.unwrap();
    assert_eq!(next_json(&mut ws).await, json!({"id":4}));
    ws.send(Message::text(r#"{"id":5,"method":"subscribe.test.missing"}"#)).await.unwrap();
    assert_eq!(next_json(&mut ws).await, json!({"error":{"code":"system.notFound","message":"Not found"},"id":5}));
    gw.shutdown().await;
}
