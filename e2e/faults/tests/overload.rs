//! Overload: requests that wait longer than the gateway does must leave nothing behind. Holds
//! queue for their departure's lock; a caller that was told "timeout" must not own a hold it
//! does not know of (it would block the seat until the hold expires).

use platform_faults::{Platform, Setup, binaries};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_queued_past_the_callers_timeout_leave_no_orphans() {
    let p = Platform::start(Setup { tickets: 0, request_timeout_ms: 1000, ..Setup::new(binaries!()) }).await;
    let dep = p.env.small_departure(8301, 8).await;
    let rid = format!("seats.departure.{dep}");
    let seats: Vec<String> = p.truth(dep).await.into_keys().collect();
    let mut clients = Vec::new();
    for i in 0..seats.len() {
        clients.push(p.client(&format!("c{i}")).await);
    }
    // Another holder keeps the departure busy for longer than the gateway waits.
    let _: () = redis::cmd("SET")
        .arg(format!("booking:lock:departure:{dep}"))
        .arg("someone-slow")
        .arg("PX")
        .arg(2500)
        .query_async(&mut p.redis().await)
        .await
        .unwrap();
    let replies = futures_util::future::join_all(clients.iter().zip(&seats).map(|(c, seat)| {
        let m = format!("call.{rid}.hold");
        async move { c.request(&m, json!({ "seats": [seat] })).await }
    }))
    .await;
    let told: BTreeSet<String> =
        replies.iter().filter_map(|r| r.as_ref().ok()).map(|h| h["holdId"].as_str().unwrap().to_owned()).collect();
    let codes: BTreeSet<String> = replies.iter().filter_map(|r| r.as_ref().err()).map(|e| e.code.clone()).collect();
    // Whatever the service would still do (it waited up to 8 s for a lock before), give it time.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = p.holds_in_redis(dep).await;
    let orphans: Vec<&String> = held.difference(&told).collect();
    assert!(orphans.is_empty(), "holds whose callers were told {codes:?}: {orphans:?}");
    let w = p.client("watcher").await;
    w.subscribe(&rid).await;
    p.assert_converged(dep, &[&w]).await;
}
