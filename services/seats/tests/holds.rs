//! Seat holds against real PostgreSQL, Redis and nats-server: errors as RES errors, live seat
//! map, expiry with two instances (one event per transition), and restarts.

use booking_core::config::HoldConfig;
use booking_core::testing::{Env, ModelSubscriber, call, get, token};
use prometheus_client::registry::Registry;
use std::time::Duration;

fn holds(ttl_secs: u64) -> HoldConfig {
    HoldConfig {
        hold_ttl_secs: ttl_secs,
        max_seats_per_hold: 4,
        purchase_timeout_secs: 30,
        sweep_interval_ms: 100,
        max_held_seats_per_user: 100,
        ..HoldConfig::default()
    }
}

async fn start(env: &Env, cfg: HoldConfig) -> (seats::Running, Registry) {
    let mut registry = Registry::default();
    let r = seats::start(env.deps().await, cfg, 64, &mut registry).await.expect("start seats");
    (r, registry)
}

fn code(r: Result<serde_json::Value, res_protocol::ResError>) -> String {
    r.expect_err("an error").code.into_owned()
}

#[tokio::test]
async fn holds_show_live_and_every_failure_is_a_res_error() {
    let env = Env::start().await;
    let dep = env.small_departure(9001, 3).await;
    let (svc, _reg) = start(&env, holds(600)).await;
    let c = env.nats_client().await;
    let rid = format!("seats.departure.{dep}");
    let mut sub = ModelSubscriber::start(&c, &rid).await;
    assert_eq!(sub.model.len(), 12);
    assert!(sub.model.values().all(|v| v == "free"));
    let (alice, bob) = (token("alice", &["customer"]), token("bob", &["customer"]));

    assert_eq!(
        code(call(&c, &rid, "hold", None, serde_json::json!({"seats": ["1-01A"]})).await),
        "system.accessDenied"
    );
    let hold = call(&c, &rid, "hold", Some(&alice), serde_json::json!({"seats": ["1-01A", "1-01B"]})).await.unwrap();
    assert_eq!(hold["owner"], "alice");
    assert_eq!(hold["seats"], serde_json::json!(["1-01A", "1-01B"]));
    let hold_id = hold["holdId"].as_str().unwrap().to_owned();
    // The change event was published before the reply, so it is already on its way.
    assert!(sub.wait_for(Duration::from_secs(5), |m| m["1-01A"] == "held" && m["1-01B"] == "held").await);

    let taken = call(&c, &rid, "hold", Some(&bob), serde_json::json!({"seats": ["1-01C", "1-01B"]})).await.unwrap_err();
    assert_eq!(taken.code, "booking.seatTaken");
    assert_eq!(taken.data.unwrap()["seats"], serde_json::json!(["1-01B"]));
    let p = |seats: serde_json::Value| serde_json::json!({ "seats": seats });
    assert_eq!(
        code(
            call(&c, &rid, "hold", Some(&bob), p(serde_json::json!(["1-02A", "1-02B", "1-02C", "1-02D", "1-03A"])))
                .await
        ),
        "booking.tooManySeats"
    );
    assert_eq!(code(call(&c, &rid, "hold", Some(&bob), p(serde_json::json!(["9-99Z"]))).await), "booking.unknownSeat");
    assert_eq!(code(call(&c, &rid, "hold", Some(&bob), p(serde_json::json!([]))).await), "system.invalidParams");
    assert_eq!(
        code(call(&c, &rid, "hold", Some(&bob), serde_json::json!({"seat": "1-01A"})).await),
        "system.invalidParams"
    );
    assert_eq!(
        code(call(&c, "seats.departure.424242", "hold", Some(&bob), p(serde_json::json!(["1-01A"]))).await),
        "system.notFound"
    );
    assert_eq!(code(call(&c, &rid, "fly", Some(&bob), serde_json::json!({})).await), "system.methodNotFound");
    let release = |t: &serde_json::Value, id: &str| {
        let (c, rid, t, id) = (c.clone(), rid.clone(), t.clone(), id.to_owned());
        async move { call(&c, &rid, "release", Some(&t), serde_json::json!({ "holdId": id })).await }
    };
    assert_eq!(code(release(&bob, &hold_id).await), "booking.notYourHold");
    assert_eq!(code(release(&bob, "hnothere").await), "booking.holdExpired");

    let avail = get(&c, &format!("{rid}.availability")).await.unwrap();
    assert_eq!(avail, serde_json::json!({"total": 12, "free": 10, "held": 2, "sold": 0}));
    let layout = get(&c, &format!("{rid}.layout")).await.unwrap();
    assert_eq!(layout["seats"]["data"].as_array().unwrap().len(), 12);

    release(&alice, &hold_id).await.unwrap();
    assert!(sub.wait_for(Duration::from_secs(5), |m| m.values().all(|v| v == "free")).await);
    assert_eq!(code(release(&alice, &hold_id).await), "booking.holdExpired");
    sub.settle(Duration::from_millis(200)).await;
    assert_eq!(sub.log.len(), 2, "one change per transition: {:?}", sub.log);
    assert_eq!(serde_json::to_value(&sub.model).unwrap(), get(&c, &rid).await.unwrap());
    svc.shutdown().await;
}

#[tokio::test]
async fn expired_holds_free_seats_once_with_two_instances() {
    let env = Env::start().await;
    let dep = env.small_departure(9002, 4).await;
    let (a, reg_a) = start(&env, holds(1)).await;
    let (b, reg_b) = start(&env, holds(1)).await;
    let c = env.nats_client().await;
    let rid = format!("seats.departure.{dep}");
    let mut sub = ModelSubscriber::start(&c, &rid).await;
    let user = token("carol", &["customer"]);
    for row in 1..=4 {
        let seats: Vec<String> = ['A', 'B'].iter().map(|l| format!("1-0{row}{l}")).collect();
        call(&c, &rid, "hold", Some(&user), serde_json::json!({ "seats": seats })).await.unwrap();
    }
    assert!(sub.wait_for(Duration::from_secs(5), |m| m.values().filter(|v| *v == "held").count() == 8).await);
    // TTL 1 s, sweeps every 100 ms on both instances.
    assert!(sub.wait_for(Duration::from_secs(5), |m| m.values().all(|v| v == "free")).await, "holds expired");
    sub.settle(Duration::from_millis(500)).await;
    let frees = sub.log.iter().filter(|e| e.values().all(|v| v == "free")).count();
    assert_eq!(frees, 4, "exactly one change event per expired hold: {:?}", sub.log);
    assert_eq!(sub.log.len(), 8);
    let expired = |r: &Registry| {
        let text = res_telemetry::admin::render(r);
        text.lines().find_map(|l| l.strip_prefix("booking_holds_expired_total ")).unwrap().parse::<u64>().unwrap()
    };
    assert_eq!(expired(&reg_a) + expired(&reg_b), 4);
    assert!(res_telemetry::admin::render(&reg_a).contains("booking_active_holds 0"));
    assert_eq!(serde_json::to_value(&sub.model).unwrap(), get(&c, &rid).await.unwrap());
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_restart_loses_no_hold() {
    let env = Env::start().await;
    let dep = env.small_departure(9003, 2).await;
    let (first, _r) = start(&env, holds(600)).await;
    let c = env.nats_client().await;
    let rid = format!("seats.departure.{dep}");
    let dave = token("dave", &["customer"]);
    let hold = call(&c, &rid, "hold", Some(&dave), serde_json::json!({"seats": ["1-02D"]})).await.unwrap();
    first.shutdown().await;
    let (second, _r) = start(&env, holds(600)).await;
    assert_eq!(get(&c, &rid).await.unwrap()["1-02D"], "held");
    let err =
        call(&c, &rid, "hold", Some(&token("erin", &[])), serde_json::json!({"seats": ["1-02D"]})).await.unwrap_err();
    assert_eq!(err.code, "booking.seatTaken");
    // An operator may release anyone's hold.
    call(&c, &rid, "release", Some(&token("op", &["operator"])), serde_json::json!({"holdId": hold["holdId"]}))
        .await
        .unwrap();
    assert_eq!(get(&c, &rid).await.unwrap()["1-02D"], "free");
    second.shutdown().await;
}

#[tokio::test]
async fn purchases_interrupted_by_a_crash_are_settled_by_the_sweeper() {
    use booking_core::lock::unattended;
    use booking_core::metrics::BookingMetrics;
    use booking_core::seatmap::SeatStore;
    let env = Env::start().await;
    let dep = env.small_departure(9004, 1).await;
    let cfg = HoldConfig {
        hold_ttl_secs: 1,
        max_seats_per_hold: 4,
        purchase_timeout_secs: 3,
        sweep_interval_ms: 100,
        max_held_seats_per_user: 100,
        ..HoldConfig::default()
    };
    // The seats service runs throughout: its sweeper settles what the crashed instance left.
    let (svc, _reg) = start(&env, cfg.clone()).await;
    let c = env.nats_client().await;
    let rid = format!("seats.departure.{dep}");
    let mut sub = ModelSubscriber::start(&c, &rid).await;

    // A tickets instance that "crashes" after starting two purchases: one before committing the
    // order (the hold must come back and expire), one after (the seats must end sold).
    let deps = env.deps().await;
    let crashed = SeatStore::new(
        deps.db,
        deps.redis,
        res_service::Events::new(deps.nats),
        cfg.clone(),
        BookingMetrics::default(),
    );
    let unpaid = crashed.hold(dep, "ann", vec!["1-01A".into()], None, &unattended()).await.unwrap();
    let paid = crashed.hold(dep, "ann", vec!["1-01B".into()], None, &unattended()).await.unwrap();
    crashed.begin_purchase(dep, std::slice::from_ref(&unpaid.hold_id), "ann", &unattended()).await.unwrap();
    crashed.begin_purchase(dep, std::slice::from_ref(&paid.hold_id), "ann", &unattended()).await.unwrap();
    let db = env.pool().get().await.unwrap();
    db.batch_execute(&format!(
        "INSERT INTO orders (id, user_id, departure_id, hold_id, status, total_cents, currency, payment_ref, idempotency_key)
           VALUES ('ocrash', 'ann', {dep}, '{0}', 'placed', 2410, 'EUR', 'test_ch_x', 'k');
         INSERT INTO order_holds (hold_id, order_id) VALUES ('{0}', 'ocrash');
         INSERT INTO tickets (id, order_id, departure_id, seat_id, class, price_cents, status)
           VALUES ('tcrash', 'ocrash', {dep}, '1-01B', 2, 2410, 'active');",
        paid.hold_id
    ))
    .await
    .unwrap();
    drop(crashed);
    // While the purchase deadline runs, the holds do not expire even past their TTL.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get(&c, &rid).await.unwrap()["1-01A"], "held");
    assert!(
        sub.wait_for(Duration::from_secs(10), |m| m["1-01A"] == "free" && m["1-01B"] == "sold").await,
        "settled: {:?}",
        sub.model
    );
    sub.settle(Duration::from_millis(300)).await;
    assert_eq!(serde_json::to_value(&sub.model).unwrap(), get(&c, &rid).await.unwrap());
    // Nothing left in Redis: the seat can be held again, and the sold one cannot.
    let t = token("ben", &[]);
    call(&c, &rid, "hold", Some(&t), serde_json::json!({"seats": ["1-01A"]})).await.unwrap();
    assert_eq!(
        code(call(&c, &rid, "hold", Some(&t), serde_json::json!({"seats": ["1-01B"]})).await),
        "booking.seatTaken"
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn a_read_overtaken_by_a_change_is_followed_by_a_reset_and_only_then() {
    use booking_core::metrics::BookingMetrics;
    use booking_core::seatmap::SeatStore;
    use futures_util::StreamExt;
    let env = Env::start().await;
    let dep = env.small_departure(9005, 1).await;
    let (svc, _reg) = start(&env, holds(600)).await;
    let c = env.nats_client().await;
    let mut resets = c.subscribe("system.reset").await.unwrap();
    res_service::Events::new(c.clone()).flush().await.unwrap();
    // Another instance serving gets: it takes the versions before reading and checks them once
    // its reply is out (the seats service does so through `Request::after_reply`).
    let deps = env.deps().await;
    let reader =
        SeatStore::new(deps.db, deps.redis, res_service::Events::new(deps.nats), holds(600), BookingMetrics::default());
    let rid = format!("seats.departure.{dep}");
    let seen = reader.departure_version(dep).await.unwrap();
    let seen_mine = reader.user_holds_version("alice").await.unwrap();
    let alice = token("alice", &["customer"]);
    call(&c, &rid, "hold", Some(&alice), serde_json::json!({"seats": ["1-01A"]})).await.unwrap();
    assert!(reader.reset_departure_if_changed(dep, seen).await.unwrap(), "the map changed after it was read");
    assert!(reader.reset_user_holds_if_changed("alice", seen_mine).await.unwrap(), "alice's holds changed");
    let mut named = Vec::new();
    let operators = format!("{rid}.holds");
    while !(named.contains(&rid) && named.contains(&operators) && named.iter().any(|r| r == "seats.user.alice.holds")) {
        let m = tokio::time::timeout(Duration::from_secs(5), resets.next()).await.expect("a reset in time").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        named.extend(v["resources"].as_array().into_iter().flatten().filter_map(|r| r.as_str().map(str::to_owned)));
    }
    // A refused hold changes nothing, and neither does a read: no reset.
    let (seen, seen_mine) =
        (reader.departure_version(dep).await.unwrap(), reader.user_holds_version("alice").await.unwrap());
    let bob = token("bob", &["customer"]);
    assert_eq!(
        code(call(&c, &rid, "hold", Some(&bob), serde_json::json!({"seats": ["1-01A"]})).await),
        "booking.seatTaken"
    );
    get(&c, &rid).await.unwrap();
    assert!(!reader.reset_departure_if_changed(dep, seen).await.unwrap());
    assert!(!reader.reset_user_holds_if_changed("alice", seen_mine).await.unwrap());
    svc.shutdown().await;
}

#[tokio::test]
async fn holds_queued_together_are_published_as_one_batch_and_each_reply_follows_its_event() {
    use booking_core::metrics::BookingMetrics;
    use booking_core::seatmap::{Change, SeatStore};
    use futures_util::{FutureExt, StreamExt};
    let env = Env::start().await;
    let dep = env.small_departure(9006, 6).await;
    let (svc, reg) = start(&env, holds(600)).await;
    let c = env.nats_client().await;
    let rid = format!("seats.departure.{dep}");
    let mut sub = ModelSubscriber::start(&c, &rid).await;
    // Another instance holds the departure's lock while the holds arrive: they all queue here.
    let deps = env.deps().await;
    let other =
        SeatStore::new(deps.db, deps.redis, res_service::Events::new(deps.nats), holds(600), BookingMetrics::default());
    let (locked, is_locked) = tokio::sync::oneshot::channel();
    let (let_go, go) = tokio::sync::oneshot::channel::<()>();
    let blocker = tokio::spawn(async move {
        other
            .transition(dep, &booking_core::lock::unattended(), || async {
                locked.send(()).unwrap();
                go.await.unwrap();
                Ok(((), Change::default()))
            })
            .await
    });
    is_locked.await.unwrap();
    let buyers = 12;
    let mut calls = Vec::new();
    for i in 0..buyers {
        // Each caller has its own connection and watches the map on it: a reply on a connection
        // comes after every event the service published before it, so once the reply is here the
        // event of this hold must already be (no waiting).
        let client = env.nats_client().await;
        let mut events = client.subscribe(format!("event.{rid}.change")).await.unwrap();
        res_service::Events::new(client.clone()).flush().await.unwrap();
        let rid = rid.clone();
        calls.push(tokio::spawn(async move {
            let letters = if i % 2 == 0 { ['A', 'B'] } else { ['C', 'D'] };
            let seats: Vec<String> = letters.iter().map(|l| format!("1-0{}{l}", i / 2 + 1)).collect();
            let user = token(&format!("buyer{i}"), &["customer"]);
            call(&client, &rid, "hold", Some(&user), serde_json::json!({ "seats": seats })).await.unwrap();
            let mut shown = std::collections::BTreeSet::new();
            while let Some(Some(msg)) = events.next().now_or_never() {
                let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
                shown.extend(
                    v["values"].as_object().unwrap().iter().filter(|(_, s)| *s == "held").map(|(k, _)| k.clone()),
                );
            }
            for s in &seats {
                assert!(shown.contains(s), "buyer{i}'s reply came before the event of {s}: saw {shown:?}");
            }
            seats.len()
        }));
    }
    // Give every request time to reach the service's queue, then let the other instance go.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let_go.send(()).unwrap();
    blocker.await.unwrap().unwrap();
    let mut held = 0;
    for call in calls {
        held += call.await.unwrap();
    }
    assert!(sub.wait_for(Duration::from_secs(5), |m| m.values().filter(|v| *v == "held").count() == held).await);
    sub.settle(Duration::from_millis(300)).await;
    assert_eq!(serde_json::to_value(&sub.model).unwrap(), get(&c, &rid).await.unwrap());
    let text = res_telemetry::admin::render(&reg);
    let metric = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {text}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(metric("booking_transition_batch_size_sum "), buyers as f64, "every hold is in a batch");
    assert!(
        metric("booking_transition_batch_size_count ") < buyers as f64,
        "holds that queued together were published together ({} batches)",
        metric("booking_transition_batch_size_count ")
    );
    svc.shutdown().await;
}
