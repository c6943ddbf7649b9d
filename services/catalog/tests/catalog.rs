//! The catalog against real PostgreSQL and nats-server: deterministic seed, stations, search as a
//! query resource, departure models, and live availability through the seats service.

use booking_core::testing::{Env, ModelSubscriber, call, get, token};
use chrono::{Duration, Utc};
use prometheus_client::registry::Registry;

async fn departure_ids(db_url: &str) -> Vec<i64> {
    let pool = booking_core::db::pool(db_url, 2).unwrap();
    let client = pool.get().await.unwrap();
    client.query("SELECT id FROM departures ORDER BY id", &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
}

#[tokio::test]
async fn seed_search_and_live_availability() {
    let env = Env::start().await;
    let start = Utc::now().date_naive() + Duration::days(1);
    let mut reg = Registry::default();
    let svc = catalog::start(env.nats_client().await, env.pool(), Some(start), 64, &mut reg).await.unwrap();
    let c = env.nats_client().await;

    // Deterministic and idempotent: a second seed adds nothing; another database gets the same IDs.
    assert_eq!(booking_core::seed::seed(&env.pool(), start).await.unwrap(), 0);
    let ids = departure_ids(&env.db_url).await;
    assert_eq!(ids.len(), 32 * 30);
    let other = env.pg.create_database();
    let other_pool = booking_core::db::pool(&other, 2).unwrap();
    booking_core::db::migrate(&other_pool).await.unwrap();
    booking_core::seed::seed(&other_pool, start).await.unwrap();
    assert_eq!(departure_ids(&other).await, ids);

    let stations = get(&c, "catalog.stations").await.unwrap();
    assert_eq!(stations.as_array().unwrap().len(), booking_core::seed::STATIONS.len());
    let hh = get(&c, "catalog.station.AH").await.unwrap();
    assert_eq!(hh["name"], "Hamburg Hbf");
    assert_eq!(get(&c, "catalog.station.NOPE").await.unwrap_err().code, "system.notFound");

    // Hamburg → München on line 1: two runs a day southbound.
    let date = start + Duration::days(3);
    let q = format!("to=MH&from=AH&date={date}");
    let msg = c.request("get.catalog.departures", res_protocol::service::get_request(Some(&q)).into()).await.unwrap();
    let res = res_protocol::service::decode_get(&msg.payload).unwrap();
    assert_eq!(res.query.as_deref(), Some(format!("date={date}&from=AH&to=MH").as_str()));
    let found = get(&c, &format!("catalog.departures?{q}")).await.unwrap();
    let found = found.as_array().unwrap();
    assert_eq!(found.len(), 2);
    let mut last = String::new();
    for r in found {
        let d = get(&c, r["rid"].as_str().unwrap()).await.unwrap();
        assert_eq!(d["date"], date.to_string());
        assert!(d["departsAt"].as_str().unwrap() > last.as_str(), "ordered by time");
        last = d["departsAt"].as_str().unwrap().to_owned();
        let stops: Vec<&str> =
            d["stops"]["data"].as_array().unwrap().iter().map(|s| s["stationId"].as_str().unwrap()).collect();
        let (a, b) = (stops.iter().position(|s| *s == "AH").unwrap(), stops.iter().position(|s| *s == "MH").unwrap());
        assert!(a < b);
        assert_eq!(d["availability"]["rid"], format!("seats.departure.{}.availability", d["id"]));
        assert_eq!(d["seatMap"]["soft"], true);
    }
    // Reverse direction and intermediate stops also match; wrong order does not.
    let mid = get(&c, &format!("catalog.departures?from=FF&to=TS&date={date}")).await.unwrap();
    assert!(mid.as_array().unwrap().len() >= 2);
    let none = get(&c, &format!("catalog.departures?from=MH&to=MH&date={date}")).await.unwrap();
    assert_eq!(none, serde_json::json!([]));
    assert_eq!(get(&c, "catalog.departures?from=AH").await.unwrap_err().code, "system.invalidQuery");
    assert_eq!(get(&c, "catalog.departure.1").await.unwrap_err().code, "system.notFound");
    assert_eq!(get(&c, "catalog.departure.abc").await.unwrap_err().code, "system.notFound");

    // Live availability of a search hit, through the seats service.
    let dep: i64 = found[0]["rid"].as_str().unwrap().rsplit('.').next().unwrap().parse().unwrap();
    let seats = seats::start(env.deps().await, Default::default(), 64, &mut Registry::default()).await.unwrap();
    let mut avail = ModelSubscriber::start(&c, &format!("seats.departure.{dep}.availability")).await;
    assert_eq!(avail.model["total"], 254);
    assert_eq!(avail.model["free"], 254);
    call(
        &c,
        &format!("seats.departure.{dep}"),
        "hold",
        Some(&token("u", &[])),
        serde_json::json!({"seats": ["1-01A", "2-14D"]}),
    )
    .await
    .unwrap();
    assert!(avail.wait_for(std::time::Duration::from_secs(5), |m| m["free"] == 252 && m["held"] == 2).await);
    seats.shutdown().await;
    svc.shutdown().await;
}
