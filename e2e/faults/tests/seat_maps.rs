//! Seat maps stay true through faults: a service instance crashing mid-transition, Redis losing
//! its last writes, a service absent while its resources are reset. Every subscriber's view must
//! equal a fresh read of PostgreSQL and Redis within 5 s, and nobody is told a live map is gone.

use platform_faults::{Platform, Setup, binaries};
use serde_json::json;
use std::time::Duration;

/// What an instance of seats has done when it dies between changing Redis and publishing: it
/// took the departure's lock (leaving the doubt marker) and ran the hold script.
async fn crash_mid_hold(p: &Platform, dep: i64, seat: &str) {
    let mut r = p.redis().await;
    let hold = "hcrashed000000000000000000";
    let expires = chrono_ms() + 600_000;
    let () = redis::pipe()
        .cmd("SET")
        .arg(format!("booking:lock:departure:{dep}:pending"))
        .arg("crashed-holder")
        .ignore()
        .cmd("HSET")
        .arg(format!("booking:held:{dep}"))
        .arg(seat)
        .arg(hold)
        .ignore()
        .cmd("HSET")
        .arg(format!("booking:hold:{hold}"))
        .arg(&[
            "owner",
            "ghost",
            "dep",
            &dep.to_string(),
            "seats",
            seat,
            "expires",
            &expires.to_string(),
            "state",
            "active",
        ])
        .ignore()
        .cmd("ZADD")
        .arg("booking:holds:expiry")
        .arg(expires)
        .arg(hold)
        .ignore()
        .query_async(&mut r)
        .await
        .unwrap();
}

fn chrono_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_service_corrects_what_its_crashed_predecessor_left_unpublished() {
    let mut p = Platform::start(Setup { tickets: 0, ..Setup::new(binaries!()) }).await;
    let dep = p.env.small_departure(8101, 2).await;
    let w = p.client("watcher").await;
    w.subscribe(&format!("seats.departure.{dep}")).await;
    p.kill_service("seats0");
    crash_mid_hold(&p, dep, "1-01A").await;
    p.start_service("seats0");
    // Nobody touches the departure: only the restarted service can correct the cache.
    p.assert_converged(dep, &[&w]).await;
    assert_eq!(w.model(&format!("seats.departure.{dep}"))["1-01A"], "held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_transition_after_a_crash_mid_transition_resets_the_map() {
    let p = Platform::start(Setup { tickets: 0, seats: 2, ..Setup::new(binaries!()) }).await;
    let dep = p.env.small_departure(8102, 2).await;
    let rid = format!("seats.departure.{dep}");
    let w = p.client("watcher").await;
    w.subscribe(&rid).await;
    // Another instance crashed mid-hold; the surviving ones go on.
    crash_mid_hold(&p, dep, "1-01A").await;
    let u = p.client("ursula").await;
    u.request(&format!("call.{rid}.hold"), json!({ "seats": ["1-02B"] })).await.unwrap();
    p.assert_converged(dep, &[&w]).await;
    assert_eq!((w.model(&rid)["1-01A"].clone(), w.model(&rid)["1-02B"].clone()), (json!("held"), json!("held")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_transition_after_a_crash_mid_transition_still_resets_the_map() {
    let p = Platform::start(Setup { tickets: 0, seats: 2, ..Setup::new(binaries!()) }).await;
    let dep = p.env.small_departure(8104, 2).await;
    let rid = format!("seats.departure.{dep}");
    let w = p.client("watcher").await;
    w.subscribe(&rid).await;
    crash_mid_hold(&p, dep, "1-01A").await;
    // The next holder of the lock refuses (there is no such hold) and so changes nothing itself:
    // it must still correct what the crashed holder left unpublished before releasing cleanly.
    let u = p.client("ursula").await;
    let release = json!({ "holdId": "h000000000000000000000000" });
    let refused = u.request(&format!("call.{rid}.release"), release).await.unwrap_err();
    assert_eq!(refused.code, "booking.holdExpired");
    p.assert_converged(dep, &[&w]).await;
    assert_eq!(w.model(&rid)["1-01A"], "held");
}

/// Waits until Redis has rewritten its append-only file (so it holds everything so far).
async fn aof_rewritten(p: &Platform) {
    let mut r = p.redis().await;
    let _: String = redis::cmd("BGREWRITEAOF").query_async(&mut r).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = redis::cmd("INFO").arg("persistence").query_async(&mut r).await.unwrap();
        if info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0") {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "AOF rewrite did not finish: {info}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_loses_its_last_writes_maps_show_what_survived_and_the_first_command_works() {
    let mut p = Platform::start(Setup::new(binaries!())).await;
    let dep = p.env.small_departure(8103, 2).await;
    let rid = format!("seats.departure.{dep}");
    let w = p.client("watcher").await;
    w.subscribe(&rid).await;
    let u = p.client("ulla").await;
    let kept = u.request(&format!("call.{rid}.hold"), json!({ "seats": ["1-01A"] })).await.unwrap();
    aof_rewritten(&p).await;
    let aof = p.env.redis.data_dir().join("appendonlydir");
    let saved = p.env.redis.data_dir().join("saved");
    copy_dir(&aof, &saved);
    // Written after the last fsync of an `everysec` Redis that then crashes: lost.
    let lost = u.request(&format!("call.{rid}.hold"), json!({ "seats": ["1-02A"] })).await.unwrap();
    p.env.redis.kill();
    std::fs::remove_dir_all(&aof).unwrap();
    copy_dir(&saved, &aof);
    p.env.redis.restart();

    // The first command of each service on its broken connection must not fail the request.
    let after = u.request(&format!("call.{rid}.hold"), json!({ "seats": ["1-02B"] })).await;
    assert!(after.is_ok(), "first hold after the Redis restart: {after:?}");
    p.assert_converged(dep, &[&w]).await;
    let m = w.model(&rid);
    assert_eq!((&m["1-01A"], &m["1-02A"], &m["1-02B"]), (&json!("held"), &json!("free"), &json!("held")));
    // The lost hold cannot be bought; the surviving one can.
    let buy = |hold: &serde_json::Value, key: &str| json!({ "departureId": dep, "holdId": hold["holdId"], "cardNumber": "4242424242424242", "idempotencyKey": key });
    let e = u.request("call.tickets.orders.purchase", buy(&lost, "a")).await.unwrap_err();
    assert_eq!(e.code, "booking.holdExpired");
    u.request("call.tickets.orders.purchase", buy(&kept, "b")).await.unwrap();
    p.assert_converged(dep, &[&w]).await;
}

/// Finding 1 of the faults issue (the gateway's part): an absent service is an outage, not a
/// deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_while_the_service_is_down_deletes_nothing_and_the_map_converges_after() {
    let mut p = Platform::start(Setup { tickets: 0, ..Setup::new(binaries!()) }).await;
    let dep = p.env.small_departure(8104, 2).await;
    let rid = format!("seats.departure.{dep}");
    let watchers = [p.client("w1").await, p.client("w2").await];
    for w in &watchers {
        w.subscribe(&rid).await;
    }
    p.kill_service("seats0");
    p.system_reset(&["seats.>"]).await;
    // A delete would come within the gateway's request timeout (no responders is immediate).
    tokio::time::sleep(Duration::from_millis(500)).await;
    for w in &watchers {
        assert!(w.lost().is_empty(), "told a live seat map is gone: {:?}", w.lost());
    }
    p.start_service("seats0");
    let u = p.client("u").await;
    u.request(&format!("call.{rid}.hold"), json!({ "seats": ["1-01C"] })).await.unwrap();
    p.assert_converged(dep, &[&watchers[0], &watchers[1]]).await;
    for w in &watchers {
        assert!(w.lost().is_empty(), "told a live seat map is gone: {:?}", w.lost());
    }
}
