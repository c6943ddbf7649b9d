//! The booking services' operator-only resources and calls behind the real gateway and this
//! identity service, with tokens of the real local issuer: a customer is refused each of them over
//! WebSocket and over HTTP (header auth), the operator is not. Real nats-server, PostgreSQL and
//! Redis; seats and tickets in-process.

mod common;

use booking_core::config::HoldConfig;
use common::{BOB, Client, Issuer, err_code, settings};
use identity_auth::IdentityAuth;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use std::sync::Arc;

/// `GET`/`POST` on the gateway's HTTP API with a bearer token: (status, body).
async fn http(gateway: &resgate::Gateway, token: &str, rid: &str, method: Option<&str>) -> (u16, Value) {
    let mut url = format!("http://{}/api/{}", gateway.local_addr(), rid.replace('.', "/"));
    let client = openidconnect::reqwest::Client::new();
    let req = match method {
        Some(m) => {
            url.push('/');
            url.push_str(m);
            client.post(url).body("{}")
        }
        None => client.get(url),
    };
    let res = req.bearer_auth(token).send().await.expect("HTTP request");
    let status = res.status().as_u16();
    (status, serde_json::from_str(&res.text().await.unwrap()).unwrap_or(Value::Null))
}

async fn hold(c: &mut Client, map: &str, seat: &str) -> Value {
    c.request(&format!("call.{map}.hold"), Some(json!({ "seats": [seat] }))).await["result"]["payload"]["holdId"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_only_booking_resources_and_calls_are_refused_to_customers_over_ws_and_http() {
    let issuer = Issuer::start().await;
    let env = booking_core::testing::Env::start().await;
    let dep = env.small_departure(8301, 2).await;
    let auth = IdentityAuth::start(env.nats_client().await, settings(&issuer.url), &mut Registry::default())
        .await
        .expect("identity-auth starts");
    let seats = seats::start(env.deps().await, HoldConfig::default(), 64, &mut Registry::default()).await.unwrap();
    let pay = Arc::new(tickets::payment::TestProvider::default());
    let tickets =
        tickets::start(env.deps().await, HoldConfig::default(), pay, 64, None, &mut Registry::default()).await.unwrap();
    let gateway = resgate::Gateway::start(resgate::Config {
        nats_url: env.nats.url(),
        addr: "127.0.0.1".into(),
        port: 0,
        header_auth: Some(identity_auth::HEADER_AUTH.into()),
        request_timeout: 10_000,
        ..Default::default()
    })
    .await
    .unwrap();
    let ws_url = format!("ws://{}/", gateway.local_addr());
    let [customer, operator, owner] = [
        issuer.mint(json!({ "username": "alice" })).await,
        issuer.mint(json!({ "username": "olivia" })).await,
        issuer.mint(json!({ "username": "bob" })).await,
    ];

    // Bob's order and hold: what the others try to see and act on.
    let mut bob = Client::connect(&ws_url, &[]).await;
    assert_eq!(err_code(&bob.login(&owner).await), "");
    let map = format!("seats.departure.{dep}");
    let bought = hold(&mut bob, &map, "1-01A").await;
    let order = bob
        .request(
            "call.tickets.orders.purchase",
            Some(json!({ "departureId": dep, "holdId": bought, "cardNumber": "4242424242424242", "idempotencyKey": "k" })),
        )
        .await["result"]["payload"]["orderId"]
        .as_str()
        .expect("order placed")
        .to_owned();
    let held = hold(&mut bob, &map, "1-02A").await;
    assert!(held.is_string(), "bob holds 1-02A");

    let resources = [
        "tickets.orders".to_owned(),
        format!("seats.departure.{dep}.holds"),
        format!("tickets.user.{BOB}"),
        format!("seats.user.{BOB}.holds"),
        format!("tickets.order.{order}"),
    ];
    let mut alice = Client::connect(&ws_url, &[]).await;
    assert_eq!(err_code(&alice.login(&customer).await), "");
    let mut olivia = Client::connect(&ws_url, &[]).await;
    assert_eq!(err_code(&olivia.login(&operator).await), "");
    for rid in &resources {
        let r = alice.request(&format!("subscribe.{rid}"), None).await;
        assert_eq!(err_code(&r), "system.accessDenied", "WS subscribe {rid} as a customer: {r}");
        let (status, body) = http(&gateway, &customer, rid, None).await;
        assert_eq!((status, body["code"].as_str()), (401, Some("system.accessDenied")), "HTTP GET {rid} as a customer");
        let r = olivia.request(&format!("subscribe.{rid}"), None).await;
        assert_eq!(err_code(&r), "", "WS subscribe {rid} as the operator: {r}");
        assert_eq!(http(&gateway, &operator, rid, None).await.0, 200, "HTTP GET {rid} as the operator");
    }

    // Calls on bob's hold and order: refused to the customer (WS and HTTP), done by the operator.
    let release = json!({ "holdId": held });
    let r = alice.request(&format!("call.{map}.release"), Some(release.clone())).await;
    assert_eq!(err_code(&r), "booking.notYourHold", "{r}");
    let cancel = format!("tickets.order.{order}");
    let r = alice.request(&format!("call.{cancel}.cancel"), None).await;
    assert_eq!(err_code(&r), "system.accessDenied", "{r}");
    let (status, body) = http(&gateway, &customer, &cancel, Some("cancel")).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("system.accessDenied")));
    let url = format!("http://{}/api/{}/release", gateway.local_addr(), map.replace('.', "/"));
    let post = |token: &str| {
        openidconnect::reqwest::Client::new().post(url.clone()).bearer_auth(token).body(release.to_string()).send()
    };
    let refused = post(&customer).await.unwrap();
    assert_eq!(refused.status().as_u16(), 400);
    assert_eq!(serde_json::from_str::<Value>(&refused.text().await.unwrap()).unwrap()["code"], "booking.notYourHold");
    assert_eq!(post(&operator).await.unwrap().status().as_u16(), 200, "the operator releases any hold");
    let r = olivia.request(&format!("call.{cancel}.cancel"), None).await;
    assert_eq!(r["result"]["payload"]["status"], "cancelled", "the operator cancels any order: {r}");
    assert_eq!(env.sold_seats(dep).await, Vec::<String>::new());

    gateway.shutdown().await;
    tickets.shutdown().await;
    seats.shutdown().await;
    auth.shutdown().await;
}
