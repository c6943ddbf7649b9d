//! Checkout as users expect it, against real PostgreSQL, Redis and nats-server with the seats
//! service running: holds belong to the user (a live `seats.user.<sub>.holds`), several holds are
//! one order and one charge (all or nothing, never a double sale), a cap on held seats per user
//! across holds, departures and instances, payment keys that identify the attempt, and the
//! operator-only resources refused to customers.

use booking_core::BookingError;
use booking_core::config::HoldConfig;
use booking_core::lock::unattended;
use booking_core::metrics::BookingMetrics;
use booking_core::seatmap::SeatStore;
use booking_core::testing::{Env, ModelSubscriber, call, get, token};
use futures_util::StreamExt;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tickets::payment::TestProvider;

const APPROVE: &str = "4242424242424242";
const DECLINE: &str = "4000000000000002";
const PROVIDER_ERROR: &str = "4000000000000119";
const INVALID: &str = "4242424242424241";

fn holds(cap: usize) -> HoldConfig {
    HoldConfig {
        hold_ttl_secs: 600,
        max_seats_per_hold: 4,
        max_held_seats_per_user: cap,
        purchase_timeout_secs: 30,
        sweep_interval_ms: 100,
        ..HoldConfig::default()
    }
}

struct Platform {
    seats: seats::Running,
    tickets: tickets::Running,
    pay: Arc<TestProvider>,
    _reg: Registry,
}

async fn start(env: &Env, cap: usize) -> Platform {
    let mut reg = Registry::default();
    let seats = seats::start(env.deps().await, holds(cap), 64, &mut reg).await.unwrap();
    let pay = Arc::new(TestProvider::default());
    let tickets = tickets::start(env.deps().await, holds(cap), pay.clone(), 64, None, &mut reg).await.unwrap();
    Platform { seats, tickets, pay, _reg: reg }
}

impl Platform {
    async fn shutdown(self) {
        self.tickets.shutdown().await;
        self.seats.shutdown().await;
    }
}

async fn hold(c: &async_nats::Client, dep: i64, who: &Value, seats: &[&str]) -> String {
    let h = call(c, &format!("seats.departure.{dep}"), "hold", Some(who), json!({ "seats": seats })).await.unwrap();
    h["holdId"].as_str().unwrap().to_owned()
}

async fn buy(
    c: &async_nats::Client,
    who: &Value,
    dep: i64,
    holds: &[&str],
    card: &str,
    key: &str,
) -> Result<Value, res_protocol::ResError> {
    let params = json!({ "departureId": dep, "holdIds": holds, "cardNumber": card, "idempotencyKey": key });
    call(c, "tickets.orders", "purchase", Some(who), params).await
}

async fn access(c: &async_nats::Client, rid: &str, tok: Option<&Value>) -> res_protocol::service::Access {
    let body = json!({ "cid": "c", "token": tok });
    let m = c.request(format!("access.{rid}"), body.to_string().into()).await.unwrap();
    res_protocol::service::decode_access(&m.payload).0.unwrap_or_default()
}

#[tokio::test]
async fn several_holds_are_one_order_one_charge_all_or_nothing() {
    let env = Env::start().await;
    let dep = env.small_departure(8101, 3).await;
    let p = start(&env, 8).await;
    let c = env.nats_client().await;
    let (alice, bob) = (token("alice", &["customer"]), token("bob", &["customer"]));

    // Two seats held one after the other (two taps): one checkout, one order, one charge.
    let (h1, h2) = (hold(&c, dep, &alice, &["1-01A"]).await, hold(&c, dep, &alice, &["1-01B"]).await);
    let order = buy(&c, &alice, dep, &[&h1, &h2], APPROVE, "k1").await.unwrap();
    let seats: Vec<&str> = order["tickets"].as_array().unwrap().iter().map(|t| t["seat"].as_str().unwrap()).collect();
    assert_eq!(seats, ["1-01A", "1-01B"], "one ticket per seat");
    let prices: i64 = order["tickets"].as_array().unwrap().iter().map(|t| t["priceCents"].as_i64().unwrap()).sum();
    assert_eq!(order["totalCents"].as_i64().unwrap(), prices);
    assert_eq!(p.pay.approved_charges(), 1, "one payment for the checkout");
    let n: i64 = env.pool().get().await.unwrap().query_one("SELECT count(*) FROM orders", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    assert_eq!(env.sold_seats(dep).await, ["1-01A", "1-01B"]);
    // A repeat with the same key is the same order, not a second charge.
    assert_eq!(buy(&c, &alice, dep, &[&h2, &h1], APPROVE, "k1").await.unwrap()["orderId"], order["orderId"]);
    assert_eq!(p.pay.approved_charges(), 1);
    // The key belongs to that checkout.
    let h3 = hold(&c, dep, &alice, &["1-02A"]).await;
    assert_eq!(buy(&c, &alice, dep, &[&h3], APPROVE, "k1").await.unwrap_err().code, "system.invalidParams");

    // All or nothing: one hold of the checkout is someone else's, or gone.
    let hb = hold(&c, dep, &bob, &["1-02B"]).await;
    assert_eq!(buy(&c, &alice, dep, &[&h3, &hb], APPROVE, "k2").await.unwrap_err().code, "booking.notYourHold");
    assert_eq!(buy(&c, &alice, dep, &[&h3, "hgone"], APPROVE, "k3").await.unwrap_err().code, "booking.holdExpired");
    // ... and h3 is untouched: still active (releasable), nothing sold, nothing charged.
    assert_eq!(env.sold_seats(dep).await, ["1-01A", "1-01B"]);
    assert_eq!(p.pay.approved_charges(), 1);
    let mine = get(&c, "seats.user.alice.holds").await.unwrap();
    assert_eq!(mine["holds"]["data"][0]["state"], "active", "{mine}");

    // No double sale: one seat of a two-hold checkout is sold behind the services' back; the
    // order rolls back whole and the charge is refunded.
    let h4 = hold(&c, dep, &alice, &["1-03A"]).await;
    env.pool()
        .get()
        .await
        .unwrap()
        .batch_execute(&format!(
            "INSERT INTO orders (id, user_id, departure_id, hold_id, status, total_cents, currency, payment_ref, idempotency_key, settled_at)
               VALUES ('oside', 'side', {dep}, 'hside', 'placed', 1, 'EUR', 'p', 'k', now());
             INSERT INTO tickets (id, order_id, departure_id, seat_id, class, price_cents, status)
               VALUES ('tside', 'oside', {dep}, '1-03A', 2, 1, 'active');"
        ))
        .await
        .unwrap();
    let e = buy(&c, &alice, dep, &[&h3, &h4], APPROVE, "k4").await.unwrap_err();
    assert_eq!(e.code, "booking.seatTaken");
    assert_eq!(env.sold_seats(dep).await, ["1-01A", "1-01B", "1-03A"], "1-02A not sold on its own");
    let alice_orders: i64 = env
        .pool()
        .get()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM orders WHERE user_id = 'alice'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(alice_orders, 1);
    p.shutdown().await;
}

#[tokio::test]
async fn my_holds_are_live_per_user_and_come_before_the_seat_map() {
    let env = Env::start().await;
    let dep = env.small_departure(8102, 2).await;
    let p = start(&env, 8).await;
    let c = env.nats_client().await;
    let alice = token("alice", &["customer"]);
    let mut events = c.subscribe("event.seats.>").await.unwrap();
    let mut mine = ModelSubscriber::start(&c, "seats.user.alice.holds").await;
    assert_eq!(mine.model["holds"], json!({"data": []}));

    // A hold made "in one tab" shows in the user's list, which any tab reads; a release from
    // "another tab" (another connection, same user) works and empties it.
    let h = hold(&c, dep, &alice, &["1-01A", "1-01B"]).await;
    assert!(
        mine.wait_for(Duration::from_secs(5), |m| m["holds"]["data"].as_array().is_some_and(|a| a.len() == 1)).await
    );
    let listed = &mine.model["holds"]["data"][0];
    assert_eq!((listed["holdId"].as_str(), &listed["seats"]), (Some(h.as_str()), &json!(["1-01A", "1-01B"])));
    let other_tab = env.nats_client().await;
    call(&other_tab, &format!("seats.departure.{dep}"), "release", Some(&alice), json!({ "holdId": h })).await.unwrap();
    assert!(mine.wait_for(Duration::from_secs(5), |m| m["holds"]["data"] == json!([])).await);

    // Order on the wire: a new hold is the user's before the seat shows held; an ended one
    // shows free before it leaves the user's list (never someone else's seat in between).
    let mut subjects = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), events.next()).await {
        subjects.push(m.subject.to_string());
    }
    let pos = |s: &str, from: usize| subjects.iter().skip(from).position(|x| x == s).map(|i| i + from);
    let user = "event.seats.user.alice.holds.change";
    let map = format!("event.seats.departure.{dep}.change");
    let (u1, m1) = (pos(user, 0).unwrap(), pos(&map, 0).unwrap());
    assert!(u1 < m1, "hold: my holds before the seat map: {subjects:?}");
    let (u2, m2) = (pos(user, u1 + 1).unwrap(), pos(&map, m1 + 1).unwrap());
    assert!(m2 < u2, "release: the seat map before my holds: {subjects:?}");
    p.shutdown().await;
}

#[tokio::test]
async fn the_cap_on_held_seats_spans_holds_departures_and_instances() {
    let env = Env::start().await;
    let deps = [env.small_departure(8103, 3).await, env.small_departure(8104, 3).await];
    let cap = 5;
    // Two instances (own Redis, PostgreSQL and NATS connections), as two seats processes.
    let mut stores = Vec::new();
    for _ in 0..2 {
        let d = env.deps().await;
        stores.push(SeatStore::new(
            d.db,
            d.redis,
            res_service::Events::new(d.nats),
            holds(cap),
            BookingMetrics::default(),
        ));
    }
    // Twelve one-seat holds at once from "several tabs", over both departures and instances.
    let mut tries = tokio::task::JoinSet::new();
    for i in 0..12 {
        let store = stores[i % 2].clone();
        let dep = deps[i / 2 % 2];
        let seat = booking_core::seed::seat_id(1, 1 + (i / 4) as i32, ['A', 'B', 'C', 'D'][i % 4]);
        tries.spawn(async move { store.hold(dep, "carol", vec![seat], None, &unattended()).await });
    }
    let (mut held, mut capped) = (Vec::new(), 0);
    while let Some(r) = tries.join_next().await {
        match r.unwrap() {
            Ok(h) => held.push(h),
            Err(BookingError::TooManyHeld { cap: c, .. }) => {
                assert_eq!(c, cap);
                capped += 1;
            }
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!((held.len(), capped), (cap, 12 - cap), "exactly the cap held");
    // Another user is not affected; a multi-seat hold over the cap is refused whole.
    stores[0].hold(deps[0], "dave", vec!["1-01C".into(), "1-01D".into()], None, &unattended()).await.unwrap();
    let over = stores[1].hold(deps[0], "carol", vec!["1-02C".into()], None, &unattended()).await;
    assert!(matches!(over, Err(BookingError::TooManyHeld { held: 5, .. })), "{over:?}");
    // A released hold frees its share of the cap.
    let h = &held[0];
    stores[1].release(h.departure_id, &h.hold_id, Some("carol"), &unattended()).await.unwrap();
    stores[0].hold(deps[0], "carol", vec!["1-02D".into()], None, &unattended()).await.unwrap();
    assert_eq!(stores[0].user_holds("carol").await.unwrap().len(), cap);
}

#[tokio::test]
async fn payment_keys_identify_the_attempt_for_every_error_class() {
    let env = Env::start().await;
    let dep = env.small_departure(8105, 3).await;
    let p = start(&env, 8).await;
    let c = env.nats_client().await;
    let alice = token("alice", &["customer"]);

    // The defect: an invalid number, then a valid card under the client's same key.
    let h = hold(&c, dep, &alice, &["1-01A"]).await;
    let e = buy(&c, &alice, dep, &[&h], INVALID, "same").await.unwrap_err();
    assert_eq!(e.code, "system.invalidParams");
    // A decline, then another card: a new attempt, not the stored decline.
    assert_eq!(buy(&c, &alice, dep, &[&h], DECLINE, "same").await.unwrap_err().code, "booking.paymentDeclined");
    // The same declined card again is the same attempt: declined again, no charge.
    assert_eq!(buy(&c, &alice, dep, &[&h], DECLINE, "same").await.unwrap_err().code, "booking.paymentDeclined");
    // A provider error is not final: the same attempt may be retried.
    assert_eq!(buy(&c, &alice, dep, &[&h], PROVIDER_ERROR, "same").await.unwrap_err().code, "system.internalError");
    assert_eq!(buy(&c, &alice, dep, &[&h], PROVIDER_ERROR, "same").await.unwrap_err().code, "system.internalError");
    assert_eq!(p.pay.approved_charges(), 0);
    let order = buy(&c, &alice, dep, &[&h], "4242 4242 4242 4242", "same").await.unwrap();
    assert_eq!(order["status"], "placed");
    assert_eq!(p.pay.approved_charges(), 1);
    // A retry of that attempt (its reply lost to a timeout) is the same order, charged once.
    assert_eq!(buy(&c, &alice, dep, &[&h], APPROVE, "same").await.unwrap()["orderId"], order["orderId"]);
    assert_eq!(p.pay.approved_charges(), 1);
    // A hold that expired (here: released) is not charged, whatever the card.
    let h2 = hold(&c, dep, &alice, &["1-01B"]).await;
    call(&c, &format!("seats.departure.{dep}"), "release", Some(&alice), json!({ "holdId": h2 })).await.unwrap();
    assert_eq!(buy(&c, &alice, dep, &[&h2], APPROVE, "other").await.unwrap_err().code, "booking.holdExpired");
    assert_eq!(p.pay.approved_charges(), 1);
    p.shutdown().await;
}

#[tokio::test]
async fn operator_resources_and_calls_are_refused_to_customers() {
    let env = Env::start().await;
    let dep = env.small_departure(8106, 2).await;
    let p = start(&env, 8).await;
    let c = env.nats_client().await;
    let (alice, bob, olivia) =
        (token("alice", &["customer"]), token("bob", &["customer"]), token("olivia", &["customer", "operator"]));
    let h = hold(&c, dep, &alice, &["1-01A"]).await;
    let o = buy(&c, &alice, dep, &[&h], APPROVE, "k").await.unwrap();
    let order = format!("tickets.order.{}", o["orderId"].as_str().unwrap());
    let hb = hold(&c, dep, &alice, &["1-02A"]).await;

    for rid in [
        "tickets.orders".to_owned(),
        format!("seats.departure.{dep}.holds"),
        "seats.user.alice.holds".to_owned(),
        "tickets.user.alice".to_owned(),
        order.clone(),
    ] {
        assert!(!access(&c, &rid, Some(&bob)).await.get, "{rid}: a customer may not read it");
        assert!(!access(&c, &rid, None).await.get, "{rid}: anonymous");
        assert!(access(&c, &rid, Some(&olivia)).await.get, "{rid}: the operator may");
    }
    assert!(access(&c, "seats.user.alice.holds", Some(&alice)).await.get, "own holds");
    assert!(!access(&c, &format!("seats.departure.{dep}.holds"), Some(&alice)).await.get);
    let holds = get(&c, &format!("seats.departure.{dep}.holds")).await.unwrap();
    assert_eq!(holds["holds"]["data"][0]["owner"], "alice");

    // Calls: another user's hold and order are refused to a customer, allowed to the operator.
    let map = format!("seats.departure.{dep}");
    let e = call(&c, &map, "release", Some(&bob), json!({ "holdId": hb })).await.unwrap_err();
    assert_eq!(e.code, "booking.notYourHold");
    assert_eq!(call(&c, &order, "cancel", Some(&bob), Value::Null).await.unwrap_err().code, "system.accessDenied");
    call(&c, &map, "release", Some(&olivia), json!({ "holdId": hb })).await.unwrap();
    let cancelled = call(&c, &order, "cancel", Some(&olivia), Value::Null).await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    p.shutdown().await;
}
