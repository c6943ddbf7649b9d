//! The seats binary: configured from `BOOKING_*`, serves RES and the admin endpoint, stops
//! cleanly on SIGTERM.

use booking_core::testing::{Binary, Env, call, get, token};

#[tokio::test]
async fn binary_serves_and_stops_on_sigterm() {
    let env = Env::start().await;
    let dep = env.small_departure(9100, 1).await;
    let bin = Binary::start(env!("CARGO_BIN_EXE_seats"), &env, &[("BOOKING_MAX_SEATS_PER_HOLD", "1")]);
    let c = env.nats_client().await;
    let rid = format!("seats.departure.{dep}");
    assert_eq!(get(&c, &rid).await.unwrap()["1-01A"], "free");
    let e = call(&c, &rid, "hold", Some(&token("u", &[])), serde_json::json!({"seats": ["1-01A", "1-01B"]}))
        .await
        .unwrap_err();
    assert_eq!(e.code, "booking.tooManySeats", "BOOKING_MAX_SEATS_PER_HOLD applies");
    call(&c, &rid, "hold", Some(&token("u", &[])), serde_json::json!({"seats": ["1-01A"]})).await.unwrap();
    assert_eq!(bin.admin_get("/healthz").0, "HTTP/1.0 200 OK");
    let (_, metrics) = bin.admin_get("/metrics");
    assert!(metrics.contains("booking_holds_created_total 1"), "{metrics}");
    assert!(metrics.contains(r#"res_service_requests_total{service="seats",kind="call",result="ok"} 1"#), "{metrics}");
    assert!(bin.terminate().success());
}
