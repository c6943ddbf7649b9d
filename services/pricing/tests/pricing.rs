//! Live prices with two pricing instances: prices move when occupancy crosses a step, one event
//! per move, and the subscriber's copy equals a fresh get.

use booking_core::testing::{Env, ModelSubscriber, call, get, token};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[tokio::test]
async fn price_follows_occupancy_once_per_move_with_two_instances() {
    let env = Env::start().await;
    let dep = env.small_departure(5001, 5).await; // 20 seats, 120 km, two days out
    let seats = seats::start(env.deps().await, Default::default(), 64, &mut Registry::default()).await.unwrap();
    let a = pricing::start(env.deps().await, Duration::from_secs(3600), 64, &mut Registry::default()).await.unwrap();
    let b = pricing::start(env.deps().await, Duration::from_secs(3600), 64, &mut Registry::default()).await.unwrap();
    let c = env.nats_client().await;
    let rid = format!("pricing.departure.{dep}");
    let mut sub = ModelSubscriber::start(&c, &rid).await;
    assert_eq!(sub.model["secondCents"], 2410);
    assert_eq!(sub.model["firstCents"], 3860);
    assert_eq!(sub.model["currency"], "EUR");
    let initial = sub.model.clone();

    // 2 of 20 seats: 10 %, no demand surcharge, no event.
    let map = format!("seats.departure.{dep}");
    let u = token("p", &["customer"]);
    let small = call(&c, &map, "hold", Some(&u), serde_json::json!({"seats": ["1-01A", "1-01B"]})).await.unwrap();
    // 12 of 20: 60 % → demand 116 %.
    let mut holds = Vec::new();
    // Other customers (one customer may hold at most 8 seats).
    for row in 2..=3 {
        let seats: Vec<String> = ['A', 'B', 'C', 'D'].iter().map(|l| format!("1-0{row}{l}")).collect();
        let other = token(&format!("p{row}"), &["customer"]);
        holds.push(call(&c, &map, "hold", Some(&other), serde_json::json!({ "seats": seats })).await.unwrap());
    }
    call(&c, &map, "hold", Some(&u), serde_json::json!({"seats": ["1-01C", "1-01D"]})).await.unwrap();
    assert!(sub.wait_for(Duration::from_secs(5), |m| m["secondCents"] == 2800).await, "{:?}", sub.model);
    assert_eq!(sub.model["demandPct"], 116);
    call(&c, &map, "release", Some(&u), serde_json::json!({"holdId": small["holdId"]})).await.unwrap();
    assert!(sub.wait_for(Duration::from_secs(5), |m| m["secondCents"] == 2410).await, "{:?}", sub.model);
    sub.settle(Duration::from_millis(500)).await;
    // Occupancy steps may coalesce (a refresh reads the latest state), but the price itself moved
    // exactly twice, and no event repeats a value the subscriber already had.
    let moves = sub.log.iter().filter(|e| e.contains_key("secondCents")).count();
    assert_eq!(moves, 2, "one event per price move: {:?}", sub.log);
    let mut replay = initial;
    for e in &sub.log {
        assert!(!e.is_empty());
        for (k, v) in e {
            assert_ne!(replay.insert(k.clone(), v.clone()).as_ref(), Some(v), "event repeats {k}={v}");
        }
    }
    assert_eq!(serde_json::to_value(&sub.model).unwrap(), get(&c, &rid).await.unwrap());
    assert_eq!(get(&c, "pricing.departure.999999").await.unwrap_err().code, "system.notFound");
    a.shutdown().await;
    b.shutdown().await;
    seats.shutdown().await;
}
