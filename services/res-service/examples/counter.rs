//! A runnable RES service: `example.counter.$name` models with an `increment` method.
//!
//! ```sh
//! nats-server &
//! cargo run -p res-service --example counter -- nats://127.0.0.1:4222
//! nats request get.example.counter.a '{}'
//! nats request call.example.counter.a.increment '{"params":{"by":2}}'
//! ```

use res_service::{CallResponse, Handler, ResError, Resource, Service};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Mutex;

#[derive(Deserialize)]
struct Increment {
    by: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned());
    let client = async_nats::connect(url).await?;
    // One instance: the mutex is held across the publish, so events leave in the order of the
    // updates (two instances would need a shared lock; see the seats service).
    let counters: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let (get_state, call_state) = (counters.clone(), counters.clone());
    let svc = Service::new("example").handle(
        "example.counter.$name",
        Handler::new()
            .access(|_req| async move { Ok::<_, ResError>(res_service::access(true, "increment")) })
            .get(move |req| {
                let state = get_state.clone();
                async move {
                    let value = state.lock().await.get(req.path("name")).copied().unwrap_or(0);
                    Resource::model(serde_json::json!({ "value": value }))
                }
            })
            .call("increment", move |req| {
                let state = call_state.clone();
                async move {
                    let p: Increment = req.params()?;
                    let mut map = state.lock().await;
                    let v = map.entry(req.path("name").to_owned()).or_default();
                    *v += p.by;
                    let value = *v;
                    // The change event goes out before the reply.
                    req.events().change_json(req.rid(), serde_json::json!({ "value": value })).await?;
                    drop(map);
                    CallResponse::result(serde_json::json!({ "value": value }))
                }
            }),
    );
    let running = svc.start(client).await?;
    println!("serving example.counter.* — Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    running.shutdown().await;
    Ok(())
}
