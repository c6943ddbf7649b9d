//! The real npm `resclient` (Node.js + `ws`) against the gateway: get a model, receive a change
//! through the live model, call a method. Needs `node` and `tests/node/node_modules` (`./setup.sh`).

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resclient_gets_model_receives_change_and_calls() {
    resclient_round(false).await;
}

/// The same with `wsCompression`: `ws` offers permessage-deflate, the gateway agrees, and every
/// frame both ways (the call's params are big enough for `ws` to compress them) is deflated by one
/// implementation and inflated by the other (zlib in Node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resclient_over_permessage_deflate() {
    resclient_round(true).await;
}

async fn resclient_round(compression: bool) {
    let mut env = TestEnv::start_with(|c| c.ws_compression = compression).await;
    let url = env.ws_url();
    let (mut child, mut lines) = spawn_node("script.js", &[&url, if compression { "big" } else { "small" }]);
    let mut next_line = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("node printed nothing for 10 s")
            .expect("read node stdout")
            .expect("node exited early");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(v.get("error").is_none(), "resclient failed: {v}");
        v
    };

    // resclient subscribes: access + get.
    let a = env.service.expect("access.example.model").await;
    a.respond_access(true, Some("*")).await;
    env.service.expect("get.example.model").await.respond_model(json!({"message": "Hello", "n": 1})).await;
    let got = next_line().await;
    assert_eq!(got["model"], json!({"message": "Hello", "n": 1}), "{got}");
    let extensions = got["extensions"].as_str().expect("extensions string");
    assert_eq!(extensions.contains("permessage-deflate"), compression, "agreed extensions: {extensions:?}");
    assert_eq!(next_line().await, json!({"step": "listening"}));

    env.service.publish_event("example.model", "change", json!({"values": {"message": "Changed"}})).await;
    assert_eq!(next_line().await, json!({"step": "change", "model": {"message": "Changed", "n": 1}}));

    let call = env.service.expect("call.example.model.ping").await;
    let p = call.payload_json();
    assert_eq!(p["params"]["n"], json!(1));
    assert_eq!(p["params"]["pad"].as_str().map(str::len), compression.then_some(4000));
    assert_eq!(p["cid"], json!(a.cid()));
    call.respond_result(json!({"pong": 1})).await;
    assert_eq!(next_line().await, json!({"step": "call", "result": {"pong": 1}}));

    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("node exits").unwrap();
    assert!(status.success(), "node exit status {status}");
}
