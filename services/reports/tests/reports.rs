//! The reports service against real nats-server (JetStream), PostgreSQL and Redis, with seats and
//! tickets running: it catches up on what happened while it was down, two instances together
//! count every event once, and the numbers are live RES resources only operators may read.

use booking_core::config::HoldConfig;
use booking_core::testing::{Env, deal_seats, get, shop, token};
use clap::Parser;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tickets::payment::TestProvider;

fn holds() -> HoldConfig {
    HoldConfig {
        hold_ttl_secs: 60,
        max_seats_per_hold: 4,
        purchase_timeout_secs: 30,
        sweep_interval_ms: 200,
        max_held_seats_per_user: 100,
        ..HoldConfig::default()
    }
}

fn config() -> reports::Config {
    reports::Config::parse_from(["reports", "--database-url", "unused", "--reports-ack-wait-secs", "2"])
}

/// Runs `per_buyer` purchases for each of `buyers` over `seats` (cancelling about one in four).
async fn workload(env: &Env, seats: Vec<Vec<(i64, String)>>, per_buyer: usize, tag: &str) {
    let mut set = tokio::task::JoinSet::new();
    for (i, s) in seats.into_iter().enumerate() {
        let c = env.nats_client().await;
        let user = format!("{tag}{i}");
        set.spawn(async move { shop(&c, &user, s, per_buyer, 4, 0, i as u64).await });
    }
    while let Some(r) = set.join_next().await {
        r.expect("shopper");
    }
}

/// The read model and the same numbers computed from the orders table: (per departure, per day).
async fn model_and_truth(env: &Env) -> [(Vec<Vec<i64>>, Vec<Vec<i64>>); 2] {
    let db = env.pool().get().await.unwrap();
    let counters = "orders_placed, seats_sold, revenue_cents, cancellations, seats_cancelled, refunds_cents";
    let rows = |sql: String| {
        let db = &db;
        async move {
            db.query(&sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| (0..7).map(|i| r.get::<_, i64>(i)).collect::<Vec<i64>>())
                .collect::<Vec<_>>()
        }
    };
    let per_order =
        "WITH o AS (SELECT o.*, (SELECT count(*) FROM tickets t WHERE t.order_id = o.id) AS n FROM orders o)";
    let dep_model = rows(format!("SELECT departure_id, {counters} FROM report_departures ORDER BY 1")).await;
    let dep_truth = rows(format!(
        "{per_order} SELECT departure_id, count(*), sum(n)::int8, sum(total_cents)::int8,
                count(*) FILTER (WHERE status = 'cancelled'),
                COALESCE(sum(n) FILTER (WHERE status = 'cancelled'), 0)::int8,
                COALESCE(sum(total_cents) FILTER (WHERE status = 'cancelled'), 0)::int8
         FROM o GROUP BY departure_id ORDER BY 1"
    ))
    .await;
    // Days as UTC dates in days since the epoch, so every column is an integer.
    let day_model =
        rows(format!("SELECT (day - DATE '1970-01-01')::int8, {counters} FROM report_days ORDER BY 1")).await;
    let day_truth = rows(format!(
        "{per_order}, e AS (
             SELECT (created_at AT TIME ZONE 'UTC')::date AS day, 1 AS placed, n AS sold, total_cents AS revenue,
                    0 AS cancellations, 0 AS seats_cancelled, 0 AS refunds FROM o
             UNION ALL
             SELECT (cancelled_at AT TIME ZONE 'UTC')::date, 0, 0, 0, 1, n, total_cents FROM o WHERE status = 'cancelled')
         SELECT (day - DATE '1970-01-01')::int8, sum(placed)::int8, sum(sold)::int8, sum(revenue)::int8,
                sum(cancellations)::int8, sum(seats_cancelled)::int8, sum(refunds)::int8
         FROM e GROUP BY day ORDER BY 1"
    ))
    .await;
    [(dep_model, dep_truth), (day_model, day_truth)]
}

/// Waits (bounded) until the consumer has nothing pending or unacked and the model equals the
/// truth; asserts equality at the end.
async fn caught_up(env: &Env) {
    let js = async_nats::jetstream::new(env.nats_client().await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        // The service creates its durable consumer as it starts: absent is "not caught up yet".
        let consumer: Result<async_nats::jetstream::consumer::PullConsumer, _> =
            js.get_consumer_from_stream(reports::consumer::CONSUMER, booking_core::outbox::STREAM).await;
        let idle = match consumer {
            Ok(mut c) => {
                let info = c.info().await.expect("consumer info");
                info.num_pending == 0 && info.num_ack_pending == 0
            }
            Err(_) => false,
        };
        let [deps, days] = model_and_truth(env).await;
        if idle && deps.0 == deps.1 && days.0 == days.1 {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            assert_eq!(deps.0, deps.1, "per departure: read model vs orders");
            assert_eq!(days.0, days.1, "per day: read model vs orders");
            panic!("the consumer did not catch up within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_model_catches_up_and_two_instances_count_every_event_once() {
    let env = Env::start().await;
    let mut deps = Vec::new();
    for i in 0..6 {
        deps.push(env.small_departure(9100 + i, 30).await);
    }
    let mut reg = Registry::default();
    let seats = seats::start(env.deps().await, holds(), 256, &mut reg).await.unwrap();
    let pay = Arc::new(TestProvider::default());
    let tickets = tickets::start(env.deps().await, holds(), pay, 256, None, &mut reg).await.unwrap();
    let mut lists = deal_seats(&deps, 29, 20); // row 30 stays for the live sale below
    let later: Vec<Vec<(i64, String)>> = lists.iter_mut().map(|l| l.split_off(l.len() - 8)).collect();

    // Reports down: 500 purchases (20 buyers × 25), about a quarter cancelled.
    workload(&env, lists, 25, "early").await;
    let sold: i64 = env.pool().get().await.unwrap().query_one("SELECT count(*) FROM orders", &[]).await.unwrap().get(0);
    assert_eq!(sold, 500);
    let mut r1 = Registry::default();
    let a = reports::start(env.pool(), env.nats_client().await, &config(), &mut r1).await.unwrap();
    caught_up(&env).await;

    // Two instances at once, with more sales and cancellations while they run.
    let mut r2 = Registry::default();
    let b = reports::start(env.pool(), env.nats_client().await, &config(), &mut r2).await.unwrap();
    workload(&env, later, 5, "late").await;
    caught_up(&env).await;
    let applied = |r: &Registry| {
        res_telemetry::admin::render(r)
            .lines()
            .find_map(|l| l.strip_prefix("reports_events_applied_total ").map(|v| v.trim().parse::<u64>().unwrap()))
            .unwrap()
    };
    let events: i64 = env
        .pool()
        .get()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM outbox WHERE subject LIKE 'booking.events.order.%'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied(&r1) + applied(&r2), events as u64, "every order event applied once across instances");

    // Live RES resources, operators only.
    let c = env.nats_client().await;
    let dep = deps[0];
    let rid = format!("reports.departure.{dep}");
    let access = |tok: serde_json::Value| {
        let (c, rid) = (c.clone(), rid.clone());
        async move {
            let body = serde_json::json!({ "cid": "c", "token": tok });
            let m = c.request(format!("access.{rid}"), body.to_string().into()).await.unwrap();
            res_protocol::service::decode_access(&m.payload).0.unwrap_or_default().get
        }
    };
    assert!(access(token("olga", &["operator"])).await);
    assert!(!access(token("alice", &["customer"])).await);
    assert!(!access(serde_json::Value::Null).await);
    let model = get(&c, &rid).await.unwrap();
    let [deps_now, _] = model_and_truth(&env).await;
    let truth = deps_now.1.iter().find(|r| r[0] == dep).unwrap();
    assert_eq!(
        [&model["ordersPlaced"], &model["seatsSold"], &model["revenueCents"], &model["cancellations"]],
        [truth[1], truth[2], truth[3], truth[4]].map(serde_json::Value::from).each_ref()
    );
    assert_eq!(model["capacity"], 120);
    assert_eq!(model["seatsOccupied"], truth[2] - truth[5]);
    let today = chrono::Utc::now().format("%Y-%m-%d");
    assert_eq!(get(&c, &format!("reports.day.{today}")).await.unwrap()["day"], today.to_string());
    assert_eq!(get(&c, "reports.day.2026-13-01").await.unwrap_err().code, "system.notFound");
    assert_eq!(get(&c, "reports.departure.999999").await.unwrap_err().code, "system.notFound");

    // Live: a new sale changes the model the gateway would re-fetch (a reset arrives).
    let mut resets = c.subscribe("system.reset").await.unwrap();
    res_service::Events::new(c.clone()).flush().await.unwrap();
    workload(&env, vec![vec![(dep, "1-30A".to_owned())]], 1, "live").await;
    let reset = tokio::time::timeout(Duration::from_secs(10), futures_util::StreamExt::next(&mut resets))
        .await
        .expect("a reset within 10 s")
        .unwrap();
    let reset: serde_json::Value = serde_json::from_slice(&reset.payload).unwrap();
    assert!(reset["resources"].as_array().unwrap().iter().any(|r| r == rid.as_str()), "{reset}");
    caught_up(&env).await;

    a.shutdown().await;
    b.shutdown().await;
    tickets.shutdown().await;
    seats.shutdown().await;
}
