//! Durable domain events against real nats-server (JetStream), PostgreSQL and Redis: NATS killed
//! in the middle of purchases and cancellations, the tickets process aborted between commit and
//! publish, and every published payload checked against its JSON Schema in `docs/events/`.

use booking_core::config::HoldConfig;
use booking_core::testing::{Binary, Env, ShopLog, call, deal_seats, shop, stream_events, token};
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tickets::payment::TestProvider;

fn holds() -> HoldConfig {
    HoldConfig {
        hold_ttl_secs: 10,
        max_seats_per_hold: 4,
        purchase_timeout_secs: 30,
        sweep_interval_ms: 100,
        max_held_seats_per_user: 100,
        ..HoldConfig::default()
    }
}

/// Waits (bounded) until the outbox has no unpublished row.
async fn outbox_drained(env: &Env, within: Duration) {
    let db = env.pool().get().await.unwrap();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let n: i64 = db.query_one("SELECT count(*) FROM outbox WHERE published_at IS NULL", &[]).await.unwrap().get(0);
        if n == 0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{n} outbox rows still unpublished after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The JSON Schema of a subject, from `docs/events/<subject>.schema.json`.
fn schema(subject: &str) -> serde_json::Value {
    let path = format!("{}/../../docs/events/{subject}.schema.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&text).expect("schema is JSON")
}

/// Checks `v` against the subset of JSON Schema the event schemas use (type, const, enum,
/// required, properties, additionalProperties: false, items, minItems, minimum, minLength,
/// format date-time); returns the first violation.
fn validate(schema: &serde_json::Value, v: &serde_json::Value, at: &str) -> Result<(), String> {
    use serde_json::Value as J;
    let fail = |what: &str| Err(format!("{at}: {what} (value {v})"));
    if let Some(t) = schema.get("type").and_then(J::as_str) {
        let ok = match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            other => return fail(&format!("schema type {other} not supported by this checker")),
        };
        if !ok {
            return fail(&format!("not of type {t}"));
        }
    }
    if let Some(c) = schema.get("const")
        && c != v
    {
        return fail(&format!("not the constant {c}"));
    }
    if let Some(e) = schema.get("enum").and_then(J::as_array)
        && !e.contains(v)
    {
        return fail("not one of the enum values");
    }
    if let Some(min) = schema.get("minimum").and_then(J::as_i64)
        && v.as_i64().is_some_and(|n| n < min)
    {
        return fail(&format!("below the minimum {min}"));
    }
    if let Some(min) = schema.get("minLength").and_then(J::as_u64)
        && v.as_str().is_some_and(|s| (s.chars().count() as u64) < min)
    {
        return fail(&format!("shorter than {min}"));
    }
    if schema.get("format").and_then(J::as_str) == Some("date-time")
        && v.as_str().is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_err())
    {
        return fail("not an RFC 3339 date-time");
    }
    if let Some(obj) = v.as_object() {
        let props = schema.get("properties").and_then(J::as_object);
        for r in schema.get("required").and_then(J::as_array).into_iter().flatten() {
            let r = r.as_str().unwrap_or_default();
            if !obj.contains_key(r) {
                return fail(&format!("missing required {r}"));
            }
        }
        for (k, val) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => validate(s, val, &format!("{at}.{k}"))?,
                None if schema.get("additionalProperties") == Some(&J::Bool(false)) => {
                    return fail(&format!("property {k} not in the schema"));
                }
                None => {}
            }
        }
    }
    if let Some(items) = v.as_array() {
        if let Some(min) = schema.get("minItems").and_then(J::as_u64)
            && (items.len() as u64) < min
        {
            return fail(&format!("fewer than {min} items"));
        }
        if let Some(s) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                validate(s, item, &format!("{at}[{i}]"))?;
            }
        }
    }
    Ok(())
}

#[test]
fn the_schema_checker_refuses_what_it_should() {
    let s = schema("booking.events.order.placed");
    let good = serde_json::json!({"version": 1, "eventId": "e1", "departureSeq": 1, "orderId": "o1", "userId": "u",
        "departureId": 1, "seats": ["1-01A"], "totalCents": 100, "currency": "EUR", "status": "placed",
        "at": "2026-01-01T00:00:00.5Z"});
    validate(&s, &good, "$").unwrap();
    for (field, bad) in [
        ("version", serde_json::json!(2)),
        ("status", serde_json::json!("cancelled")),
        ("seats", serde_json::json!([])),
        ("totalCents", serde_json::json!("100")),
        ("at", serde_json::json!("yesterday")),
        ("extra", serde_json::json!(1)),
    ] {
        let mut v = good.clone();
        v[field] = bad;
        assert!(validate(&s, &v, "$").is_err(), "{field} accepted");
    }
    let mut v = good.clone();
    v.as_object_mut().unwrap().remove("orderId");
    assert!(validate(&s, &v, "$").is_err(), "missing orderId accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_during_purchases_and_cancellations_every_committed_event_once_in_commit_order() {
    const BUYERS: usize = 20;
    const PER_BUYER: usize = 50; // 1,000 purchases
    let mut env = Env::start().await;
    let mut deps = Vec::new();
    for i in 0..10 {
        deps.push(env.small_departure(8100 + i, 30).await); // 10 × 120 seats
    }
    let mut regs = vec![Registry::default(), Registry::default()];
    let mut seats_run = Vec::new();
    let mut tickets_run = Vec::new();
    for reg in &mut regs {
        seats_run.push(seats::start(env.deps().await, holds(), 256, reg).await.unwrap());
        let pay = Arc::new(TestProvider::default());
        tickets_run.push(tickets::start(env.deps().await, holds(), pay, 256, None, reg).await.unwrap());
    }

    // A purchase whose transaction rolls back: the seat is sold behind the services' back, so the
    // insert hits the one-active-sale index after the order row and its outbox row were written.
    let db = env.pool().get().await.unwrap();
    let c = env.nats_client().await;
    let thief = token("thief", &["customer"]);
    let mut rolled_back = Vec::new();
    for (i, &dep) in deps.iter().enumerate() {
        let seat = format!("1-30{}", ['A', 'B', 'C', 'D'][i % 4]);
        let map = format!("seats.departure.{dep}");
        let hold = call(&c, &map, "hold", Some(&thief), serde_json::json!({ "seats": [seat] })).await.unwrap();
        db.batch_execute(&format!(
            "INSERT INTO orders (id, user_id, departure_id, hold_id, status, total_cents, currency, payment_ref, idempotency_key, settled_at)
               VALUES ('oside{i}', 'side', {dep}, 'hside{i}', 'placed', 1, 'EUR', 'p', 'k{i}', now());
             INSERT INTO tickets (id, order_id, departure_id, seat_id, class, price_cents, status)
               VALUES ('tside{i}', 'oside{i}', {dep}, '{seat}', 2, 1, 'active');"
        ))
        .await
        .unwrap();
        let params = serde_json::json!({ "departureId": dep, "holdId": hold["holdId"],
            "cardNumber": "4242424242424242", "idempotencyKey": "steal" });
        let e = call(&c, "tickets.orders", "purchase", Some(&thief), params).await.unwrap_err();
        assert_eq!(e.code, "booking.seatTaken");
        rolled_back.push(hold["holdId"].as_str().unwrap().to_owned());
    }
    // The side orders are not the services' (no event): leave them out of what follows.
    let mine = "user_id <> 'side'";

    // The workload, with NATS killed (SIGKILL) and restarted once a third of it committed.
    let seat_lists = deal_seats(&deps, 29, BUYERS);
    let mut shoppers = tokio::task::JoinSet::new();
    for (i, seats) in seat_lists.into_iter().enumerate() {
        let c = env.nats_client().await;
        shoppers.spawn(async move { shop(&c, &format!("buyer{i}"), seats, PER_BUYER, 3, 10, i as u64).await });
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let n: i64 = db.query_one(&format!("SELECT count(*) FROM orders WHERE {mine}"), &[]).await.unwrap().get(0);
        if n >= (BUYERS * PER_BUYER / 3) as i64 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "workload stalled at {n} orders");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.nats.stop();
    tokio::time::sleep(Duration::from_secs(1)).await; // the outage itself
    tokio::task::block_in_place(|| env.nats.restart());
    let mut logs: Vec<ShopLog> = Vec::new();
    while let Some(r) = shoppers.join_next().await {
        logs.push(r.expect("shopper"));
    }
    // Holds whose replies the outage lost, and the thief's, expire after the workload and record
    // events of their own: wait for them before comparing the stream with the outbox.
    env.holds_settled(Duration::from_secs(60)).await;
    outbox_drained(&env, Duration::from_secs(60)).await;

    let events = stream_events(&c).await;
    // Exactly once: every outbox row is in the stream once, nothing else is.
    let rows = db.query("SELECT event_id, departure_id, departure_seq FROM outbox ORDER BY seq", &[]).await.unwrap();
    let ids: Vec<&str> = events.iter().map(|(_, p)| p["eventId"].as_str().expect("eventId")).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an event is in the stream twice");
    let recorded: HashSet<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    assert_eq!(unique, recorded.iter().map(String::as_str).collect::<HashSet<_>>(), "stream ≠ outbox");

    // Every committed order and cancellation, and nothing for a rolled-back purchase.
    let orders: HashMap<String, String> = db
        .query(&format!("SELECT id, status FROM orders WHERE {mine}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let of = |subject: &str| -> Vec<String> {
        events.iter().filter(|(s, _)| s == subject).map(|(_, p)| p["orderId"].as_str().unwrap().to_owned()).collect()
    };
    let (placed, cancelled) = (of("booking.events.order.placed"), of("booking.events.order.cancelled"));
    assert_eq!(placed.len(), orders.len(), "one order.placed per committed order");
    assert_eq!(placed.iter().collect::<HashSet<_>>(), orders.keys().collect::<HashSet<_>>());
    let cancelled_in_db: HashSet<&String> = orders.iter().filter(|(_, s)| *s == "cancelled").map(|(k, _)| k).collect();
    assert_eq!(cancelled.len(), cancelled_in_db.len(), "one order.cancelled per cancellation");
    assert_eq!(cancelled.iter().collect::<HashSet<_>>(), cancelled_in_db);
    for hold in &rolled_back {
        let n: i64 = db.query_one("SELECT count(*) FROM orders WHERE hold_id = $1", &[hold]).await.unwrap().get(0);
        assert_eq!(n, 0, "the rolled-back purchase left no order");
    }
    let client_placed: usize = logs.iter().map(|l| l.placed.len()).sum();
    let client_cancelled: usize = logs.iter().map(|l| l.cancelled.len()).sum();
    assert_eq!(client_placed, BUYERS * PER_BUYER);
    assert_eq!((client_placed, client_cancelled), (orders.len(), cancelled_in_db.len()), "success ⇔ committed");

    // Commit order per departure: the stream has each departure's events as 1, 2, 3, … — the
    // numbers the commits took in turn on the departure's head row — and each order's placed
    // before its cancelled.
    let mut next: BTreeMap<i64, i64> = BTreeMap::new();
    let mut seen_placed = HashSet::new();
    for (subject, p) in &events {
        let dep = p["departureId"].as_i64().unwrap();
        let seq = p["departureSeq"].as_i64().unwrap();
        let want = next.entry(dep).or_insert(1);
        assert_eq!(seq, *want, "departure {dep}: event {seq} where {want} was due ({subject})");
        *want += 1;
        match subject.as_str() {
            "booking.events.order.placed" => {
                seen_placed.insert(p["orderId"].as_str().unwrap().to_owned());
            }
            "booking.events.order.cancelled" => {
                assert!(seen_placed.contains(p["orderId"].as_str().unwrap()), "cancelled before placed");
            }
            _ => {}
        }
    }
    let db_last: BTreeMap<i64, i64> = db
        .query("SELECT departure_id, last_seq FROM outbox_departures", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get::<_, i64>(1) + 1))
        .collect();
    assert_eq!(next, db_last, "every departure's events, none missing at the end");

    // What the services publish matches the documented schemas.
    for (subject, p) in &events {
        validate(&schema(subject), p, subject).unwrap_or_else(|e| panic!("{e}"));
    }
    for s in seats_run {
        s.shutdown().await;
    }
    for t in tickets_run {
        t.shutdown().await;
    }
}

/// Waits (bounded) until `sql` returns true.
async fn until(env: &Env, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)], what: &str) {
    let db = env.pool().get().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !db.query_one(sql, params).await.unwrap().get::<_, bool>(0) {
        assert!(tokio::time::Instant::now() < deadline, "not within 30 s: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (bounded) for the process to die; returns its exit status.
fn died(bin: &mut Binary) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = bin.child.try_wait().expect("wait") {
            return st;
        }
        assert!(std::time::Instant::now() < deadline, "the process did not die within 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn a_process_killed_between_commit_and_publish_publishes_after_restart_once() {
    use std::os::unix::process::ExitStatusExt;
    let env = Env::start().await;
    let dep = env.small_departure(8200, 2).await;
    let c = env.nats_client().await;
    // Holds through the library (no service, so no relay but the tickets process's).
    let d = env.deps().await;
    let store = booking_core::seatmap::SeatStore::new(
        d.db,
        d.redis,
        res_service::Events::new(d.nats),
        HoldConfig::default(),
        Default::default(),
    );
    let hold = store
        .hold(dep, "alice", vec!["1-01A".into(), "1-01B".into()], None, &booking_core::lock::unattended())
        .await
        .unwrap();
    let alice = token("alice", &["customer"]);
    let bin = |hook: Option<&str>| {
        let mut extra = vec![("BOOKING_SWEEP_INTERVAL_MS", "100")];
        if let Some(h) = hook {
            extra.push(("BOOKING_TEST_ABORT_AFTER_COMMIT", h));
        }
        Binary::start(env!("CARGO_BIN_EXE_tickets"), &env, &extra)
    };
    let placed_in_stream = |order: String, subject: &'static str| {
        let c = c.clone();
        async move { stream_events(&c).await.iter().filter(|(s, p)| s == subject && p["orderId"] == order.as_str()).count() }
    };

    // Purchase: the process aborts right after the commit.
    let mut crashing = bin(Some("purchase"));
    let params = serde_json::json!({ "departureId": dep, "holdId": hold.hold_id,
        "cardNumber": "4242424242424242", "idempotencyKey": "k1" });
    let r = booking_core::testing::try_call(&c, "tickets.orders", "purchase", &alice, params.clone()).await;
    assert!(!matches!(r, Ok(Ok(_))), "no reply from an aborted process: {r:?}");
    assert_eq!(died(&mut crashing).signal(), Some(6), "aborted (SIGABRT) right after the commit");
    let db = env.pool().get().await.unwrap();
    let order: String =
        db.query_one("SELECT id FROM orders WHERE hold_id = $1", &[&hold.hold_id]).await.unwrap().get(0);
    let pending: i64 = db
        .query_one("SELECT count(*) FROM outbox WHERE payload->>'orderId' = $1 AND published_at IS NULL", &[&order])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 1, "committed with its event, not published");
    assert_eq!(placed_in_stream(order.clone(), "booking.events.order.placed").await, 0);
    drop(crashing);

    let normal = bin(None);
    outbox_drained(&env, Duration::from_secs(30)).await;
    assert_eq!(placed_in_stream(order.clone(), "booking.events.order.placed").await, 1, "published once");
    // The settler finishes the purchase: the hold ends, the seats show sold; the client's retry
    // with its key learns the order.
    until(&env, "SELECT settled_at IS NOT NULL FROM orders WHERE id = $1", &[&order], "purchase settled").await;
    let map = store.snapshot(dep).await.unwrap();
    assert_eq!((map.states["1-01A"], map.states["1-01B"]), ("sold", "sold"));
    let again = call(&c, "tickets.orders", "purchase", Some(&alice), params).await.unwrap();
    assert_eq!(again["orderId"], order.as_str());
    drop(normal);

    // Cancel: the process aborts right after the cancellation commits.
    let mut crashing = bin(Some("cancel"));
    let rid = format!("tickets.order.{order}");
    let r = booking_core::testing::try_call(&c, &rid, "cancel", &alice, serde_json::Value::Null).await;
    assert!(!matches!(r, Ok(Ok(_))), "no reply from an aborted process: {r:?}");
    assert_eq!(died(&mut crashing).signal(), Some(6));
    drop(crashing);
    let _normal = bin(None);
    outbox_drained(&env, Duration::from_secs(30)).await;
    assert_eq!(placed_in_stream(order.clone(), "booking.events.order.cancelled").await, 1, "published once");
    assert_eq!(placed_in_stream(order.clone(), "booking.events.order.placed").await, 1, "still once");
    until(&env, "SELECT settled_at IS NOT NULL FROM orders WHERE id = $1", &[&order], "cancel settled (refund)").await;
    let map = store.snapshot(dep).await.unwrap();
    assert_eq!((map.states["1-01A"], map.states["1-01B"]), ("free", "free"));
    let e = call(&c, &rid, "cancel", Some(&alice), serde_json::Value::Null).await.unwrap_err();
    assert_eq!(e.code, "booking.alreadyCancelled");
}

#[tokio::test]
async fn published_rows_older_than_the_retention_are_purged_and_no_others() {
    let env = Env::start().await;
    let db = env.pool().get().await.unwrap();
    for (event, published) in [("old", Some("3 hours")), ("recent", Some("10 minutes")), ("unpublished", None)] {
        let published_at = published.map(|ago| format!("now() - interval '{ago}'")).unwrap_or("NULL".into());
        db.execute(
            &format!(
                "INSERT INTO outbox (event_id, subject, departure_id, departure_seq, payload, published_at)
                 VALUES ($1, 'booking.events.test', 999001, (SELECT count(*) + 1 FROM outbox WHERE departure_id = 999001), '{{}}', {published_at})"
            ),
            &[&format!("purge-{event}")],
        )
        .await
        .unwrap();
    }
    let purged = booking_core::outbox::purge_published(&**db, Duration::from_secs(3600)).await.unwrap();
    assert_eq!(purged, 1);
    let left: Vec<String> = db
        .query("SELECT event_id FROM outbox WHERE departure_id = 999001 ORDER BY departure_seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, ["purge-recent", "purge-unpublished"]);
}
