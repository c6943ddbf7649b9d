//! The pricing binary: configured from `BOOKING_*`, serves RES and the admin endpoint, stops
//! cleanly on SIGTERM.

use booking_core::testing::{Binary, Env, get};

#[tokio::test]
async fn binary_serves_and_stops_on_sigterm() {
    let env = Env::start().await;
    let dep = env.small_departure(5100, 1).await;
    let bin = Binary::start(env!("CARGO_BIN_EXE_pricing"), &env, &[]);
    let c = env.nats_client().await;
    assert_eq!(get(&c, &format!("pricing.departure.{dep}")).await.unwrap()["secondCents"], 2410);
    assert_eq!(bin.admin_get("/healthz").0, "HTTP/1.0 200 OK");
    assert!(bin.terminate().success());
}
