//! The catalog binary: migrates and seeds from a fixed start date, serves RES and the admin
//! endpoint, stops cleanly on SIGTERM.

use booking_core::testing::{Binary, Env, get};

#[tokio::test]
async fn binary_seeds_serves_and_stops_on_sigterm() {
    let env = Env::start().await;
    let bin = Binary::start(env!("CARGO_BIN_EXE_catalog"), &env, &[("BOOKING_SEED_START_DATE", "2030-01-01")]);
    let c = env.nats_client().await;
    let found = get(&c, "catalog.departures?from=BL&to=AH&date=2030-01-15").await.unwrap();
    assert_eq!(found.as_array().unwrap().len(), 2, "line 6 runs twice a day");
    assert_eq!(bin.admin_get("/healthz").0, "HTTP/1.0 200 OK");
    assert!(bin.terminate().success());
}
