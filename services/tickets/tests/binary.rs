//! The tickets binary: configured from `BOOKING_*`, serves RES and the admin endpoint, stops
//! cleanly on SIGTERM.

use booking_core::testing::{Binary, Env, call, token};

#[tokio::test]
async fn binary_serves_and_stops_on_sigterm() {
    let env = Env::start().await;
    let bin = Binary::start(env!("CARGO_BIN_EXE_tickets"), &env, &[]);
    let c = env.nats_client().await;
    let params = serde_json::json!({"departureId": 1, "holdId": "hnone", "cardNumber": "4242424242424242", "idempotencyKey": "k"});
    let e = call(&c, "tickets.orders", "purchase", Some(&token("u", &[])), params).await.unwrap_err();
    assert_eq!(e.code, "booking.holdExpired");
    assert_eq!(bin.admin_get("/healthz").0, "HTTP/1.0 200 OK");
    assert!(bin.admin_get("/metrics").1.contains("booking_payment_failures_total 0"));
    assert!(bin.terminate().success());
}
