//! identity-auth end to end: real tokens from the Node issuer, real nats-server, the real gateway
//! in-process, a WebSocket client and the HTTP API.

mod common;

use std::time::Duration;

use common::*;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_sets_the_connection_token_that_access_checks_see() {
    let issuer = Issuer::start().await;
    let env = Env::start(settings(&issuer.url)).await;
    let mut c = env.ws().await;

    assert_eq!(c.whoami().await, Value::Null);
    let denied = c.ping().await;
    assert_eq!(err_code(&denied), "system.accessDenied", "{denied}");

    let r = c.login(&issuer.mint(json!({ "username": "bob" })).await).await;
    let principal = r["result"]["payload"].clone();
    assert_eq!(principal["sub"], BOB, "{r}");
    assert_eq!(principal["name"], "Bob Baker");
    assert_eq!(principal["preferred_username"], "bob");
    // Composite realm roles come expanded.
    assert_eq!(principal["roles"], json!(["customer", "default-roles-booking", "offline_access", "uma_authorization"]));
    assert!(principal["exp"].as_u64().unwrap() > 1_700_000_000);
    // The connection token is exactly what login answered.
    assert_eq!(c.whoami().await, principal);
    assert_eq!(c.ping().await["result"]["payload"], json!({ "pong": BOB }));

    // A valid token without the customer role: logged in, but the service refuses the call.
    let mut other = env.ws().await;
    let r = other.login(&issuer.mint(json!({ "username": "alice", "omit": ["realm_access"] })).await).await;
    assert_eq!(r["result"]["payload"]["roles"], json!([]), "{r}");
    assert_eq!(err_code(&other.ping().await), "system.accessDenied");
    assert_eq!(other.whoami().await["sub"], ALICE);

    assert_eq!(env.metric(r#"identity_auth_requests_total{method="login",result="ok"}"#), 2.0);
    assert!(env.metric("identity_jwks_refresh_total") >= 1.0, "{}", env.metrics());
    assert_eq!(env.metric("identity_auth_tracked_connections"), 2.0);
    env.stop().await;
}

fn hs256(header: &str, payload: &str, secret: &[u8]) -> String {
    let input = format!("{header}.{payload}");
    let mut m = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    m.update(input.as_bytes());
    format!("{input}.{}", b64(m.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_get_clear_errors_and_leave_the_token_unchanged() {
    let issuer = Issuer::start().await;
    let env = Env::start(settings(&issuer.url)).await;
    let mut fresh = env.ws().await;
    let mut c = env.ws().await;
    let r = c.login(&issuer.mint(json!({ "username": "olivia" })).await).await;
    let before = r["result"]["payload"].clone();
    assert_eq!(before["sub"], OLIVIA, "{r}");

    let good = issuer.mint(json!({ "username": "bob" })).await;
    let parts: Vec<&str> = good.split('.').collect();
    let mut sig = unb64(parts[2]);
    sig[7] ^= 0x20;
    let mut payload: Value = serde_json::from_slice(&unb64(parts[1])).unwrap();
    payload["realm_access"]["roles"] = json!(["customer", "operator"]);
    let escalated = format!("{}.{}.{}", parts[0], b64(payload.to_string()), parts[2]);
    let none_header = b64(r#"{"alg":"none","typ":"JWT"}"#);
    let key = issuer.public_keys().await.remove(0);
    let hmac_header = b64(json!({ "alg": "HS256", "typ": "JWT", "kid": key["kid"] }).to_string());
    let hmac_forged = hs256(&hmac_header, parts[1], key["pem"].as_str().unwrap().as_bytes());

    let cases: Vec<(&str, String, &str)> = vec![
        ("expired", issuer.mint(json!({ "ttl": -120 })).await, "token expired"),
        ("not yet valid", issuer.mint(json!({ "nbf_offset": 300 })).await, "token not yet valid"),
        (
            "wrong issuer",
            issuer.mint(json!({ "iss": "https://evil.example/realms/booking" })).await,
            "token issuer mismatch",
        ),
        ("wrong audience", issuer.mint(json!({ "aud": "account" })).await, "token audience mismatch"),
        ("wrong client", issuer.mint(json!({ "azp": "other-client" })).await, "token authorized party mismatch"),
        ("tampered signature", format!("{}.{}.{}", parts[0], parts[1], b64(&sig)), "invalid token signature"),
        ("escalated roles", escalated, "invalid token signature"),
        ("alg none", format!("{none_header}.{}.", parts[1]), "token algorithm not allowed: none"),
        ("HMAC with the public key", hmac_forged, "token algorithm not allowed: HS256"),
        ("unknown kid", issuer.mint(json!({ "unpublished_key": true })).await, "unknown token signing key"),
        ("garbage", "not-a-jwt".to_owned(), "malformed token: not a compact JWS"),
        ("empty", String::new(), "malformed token"),
    ];
    for (what, token, message) in &cases {
        for conn in [&mut c, &mut fresh] {
            let r = conn.login(token).await;
            assert_eq!(err_code(&r), "system.accessDenied", "{what}: {r}");
            assert!(err_message(&r).starts_with(message), "{what}: {r}");
        }
        assert_eq!(c.whoami().await, before, "{what}: token unchanged");
        assert_eq!(fresh.whoami().await, Value::Null, "{what}: still no token");
    }
    for bad_params in [json!({}), json!({ "token": 42 }), Value::Null] {
        let r = c.request("auth.identity.session.login", Some(bad_params.clone())).await;
        assert_eq!(err_code(&r), "system.invalidParams", "{bad_params}: {r}");
    }
    assert_eq!(c.whoami().await, before);
    assert_eq!(c.ping().await["result"]["payload"], json!({ "pong": OLIVIA }));
    assert_eq!(env.metric(r#"identity_auth_requests_total{method="login",result="expired"}"#), 2.0);
    assert_eq!(
        env.metric(r#"identity_auth_requests_total{method="login",result="invalid"}"#),
        ((cases.len() - 1) * 2 + 3) as f64
    );
    assert_eq!(env.tracked(), 1);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_issuer_is_reported_as_such() {
    let issuer = Issuer::start().await;
    let token = issuer.mint(json!({})).await;
    // The service knows the issuer by a URL where nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dead = format!("http://127.0.0.1:{port}/realms/booking");
    let env = Env::start(settings(&dead)).await;
    let mut c = env.ws().await;
    let r = c.login(&token).await;
    assert_eq!(err_code(&r), "identity.issuerUnavailable", "{r}");
    assert_eq!(err_message(&r), "identity issuer unavailable");
    assert_eq!(c.whoami().await, Value::Null);
    assert_eq!(env.metric(r#"identity_auth_requests_total{method="login",result="error"}"#), 1.0);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_are_picked_up_without_a_restart() {
    let issuer = Issuer::start().await;
    let env = Env::start(settings(&issuer.url)).await;
    let mut c = env.ws().await;
    let old = issuer.mint(json!({ "username": "alice" })).await;
    assert_eq!(c.login(&old).await["result"]["payload"]["sub"], ALICE);
    let refreshes = env.metric("identity_jwks_refresh_total");

    let kid = issuer.rotate().await;
    let new = issuer.mint(json!({ "username": "bob" })).await;
    let header: Value = serde_json::from_slice(&unb64(new.split('.').next().unwrap())).unwrap();
    assert_eq!(header["kid"], kid);
    // Past the refresh interval (500 ms in the test settings), the unknown kid triggers a refetch.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = c.login(&new).await;
    assert_eq!(r["result"]["payload"]["sub"], BOB, "{r}");
    assert_eq!(c.whoami().await["sub"], BOB);
    assert!(env.metric("identity_jwks_refresh_total") > refreshes);
    // Tokens signed with the old key stay valid while it is published.
    assert_eq!(c.login(&old).await["result"]["payload"]["sub"], ALICE);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_again_on_the_same_connection_replaces_token_and_expiry() {
    let issuer = Issuer::start().await;
    let env = Env::start(settings(&issuer.url)).await;
    let mut c = env.ws().await;
    let first = c.login(&issuer.mint(json!({ "username": "alice", "ttl": 2 })).await).await;
    assert_eq!(first["result"]["payload"]["sub"], ALICE, "{first}");
    // The browser refreshed its token and authenticates in-band again (here as another user, to
    // see the replacement).
    let second = c.login(&issuer.mint(json!({ "username": "bob", "ttl": 300 })).await).await;
    assert_eq!(c.whoami().await, second["result"]["payload"]);
    assert_eq!(env.tracked(), 1, "one entry per connection");
    // The first token's expiry was replaced: nothing clears the refreshed token.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(c.whoami().await["sub"], BOB);
    assert_eq!(c.ping().await["result"]["payload"], json!({ "pong": BOB }));
    assert_eq!(env.tracked(), 1);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_clears_the_token_and_access_is_checked_again() {
    let issuer = Issuer::start().await;
    let env = Env::start(settings(&issuer.url)).await;
    let mut c = env.ws().await;
    let r = c.request("subscribe.test.private", None).await;
    assert_eq!(err_code(&r), "system.accessDenied", "{r}");
    c.login(&issuer.mint(json!({ "username": "bob" })).await).await;
    let r = c.request("subscribe.test.private", None).await;
    assert_eq!(r["result"]["models"]["test.private"], json!({ "secret": 42 }), "{r}");

    let r = c.request("auth.identity.session.logout", None).await;
    assert_eq!(r["result"]["payload"], Value::Null, "{r}");
    let ev = c.event("test.private.unsubscribe", Duration::from_secs(5)).await.expect("access re-checked");
    assert_eq!(ev["data"]["reason"]["code"], "system.accessDenied");
    assert_eq!(c.whoami().await, Value::Null);
    assert_eq!(err_code(&c.ping().await), "system.accessDenied");
    assert_eq!(env.tracked(), 0, "logout removes the expiry");
    // Logging out twice is harmless.
    assert!(c.request("auth.identity.session.logout", None).await.get("result").is_some());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_reset_by_subject_logs_a_user_out_everywhere() {
    let issuer = Issuer::start().await;
    let env = Env::start(settings(&issuer.url)).await;
    let (mut bob1, mut bob2, mut alice) = (env.ws().await, env.ws().await, env.ws().await);
    bob1.login(&issuer.mint(json!({ "username": "bob" })).await).await;
    bob2.login(&issuer.mint(json!({ "username": "bob" })).await).await;
    alice.login(&issuer.mint(json!({ "username": "alice" })).await).await;

    // tid is the subject, so one tokenReset reaches every connection of that user.
    let reset = json!({ "tids": [BOB], "subject": "auth.identity.session.logout" });
    env.client.publish("system.tokenReset", reset.to_string().into()).await.unwrap();
    env.client.flush().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while bob2.whoami().await != Value::Null {
        assert!(tokio::time::Instant::now() < deadline, "tokenReset did not clear bob's token");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(bob1.whoami().await, Value::Null);
    assert_eq!(alice.whoami().await["sub"], ALICE);
    assert_eq!(env.tracked(), 1, "only alice's expiry remains");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_cleared_from_the_connection() {
    let issuer = Issuer::start().await;
    let env = Env::start(settings(&issuer.url)).await;
    let mut c = env.ws().await;
    let r = c.login(&issuer.mint(json!({ "username": "bob", "ttl": 2 })).await).await;
    let exp = r["result"]["payload"]["exp"].as_u64().expect("login ok");
    let r = c.request("subscribe.test.private", None).await;
    assert_eq!(r["result"]["models"]["test.private"], json!({ "secret": 42 }), "{r}");
    assert_eq!(env.tracked(), 1);

    // At exp the service clears the token; the gateway re-checks access and drops the
    // subscription.
    let ev = c.event("test.private.unsubscribe", Duration::from_secs(6)).await.expect("token cleared at expiry");
    assert_eq!(ev["data"]["reason"]["code"], "system.accessDenied");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(now >= exp, "not cleared before exp ({now} < {exp})");
    assert_eq!(c.whoami().await, Value::Null);
    assert_eq!(err_code(&c.ping().await), "system.accessDenied");
    assert_eq!(env.tracked(), 0);
    // The same socket logs in again with a fresh token.
    c.login(&issuer.mint(json!({ "username": "bob" })).await).await;
    assert_eq!(c.ping().await["result"]["payload"], json!({ "pong": BOB }));
    env.stop().await;
}

async fn http_get(url: &str, bearer: Option<&str>) -> (u16, Value) {
    let http = openidconnect::reqwest::Client::new();
    let mut req = http.get(url);
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let body = res.text().await.unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

/// GET with a valid bearer token. Retries on 401 only because resgate-rs sometimes handles the
/// headerAuth reply before the token event (see `tests/gateway_ordering.rs`); returns the tries.
async fn http_get_authenticated(url: &str, token: &str) -> (u16, Value, usize) {
    for tries in 1..=20 {
        let (status, body) = http_get(url, Some(token)).await;
        if status != 401 {
            return (status, body, tries);
        }
    }
    panic!("20 GETs with a valid bearer token were all refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_auth_authenticates_http_api_requests() {
    let issuer = Issuer::start().await;
    let env = Env::start(settings(&issuer.url)).await;
    let url = env.http_url("/api/test/private");

    let (status, body) = http_get(&url, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "system.accessDenied");

    let token = issuer.mint(json!({ "username": "alice" })).await;
    let (status, body, tries) = http_get_authenticated(&url, &token).await;
    assert_eq!((status, &body), (200, &json!({ "secret": 42 })));

    // A bad bearer token is refused by the auth method; the request goes on without a token.
    for bad in [issuer.mint(json!({ "ttl": -120 })).await, "garbage".to_owned()] {
        let (status, body) = http_get(&url, Some(&bad)).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["code"], "system.accessDenied");
    }
    assert_eq!(env.metric(r#"identity_auth_requests_total{method="header",result="ok"}"#), tries as f64);
    assert_eq!(env.metric(r#"identity_auth_requests_total{method="header",result="none"}"#), 1.0);
    assert_eq!(env.metric(r#"identity_auth_requests_total{method="header",result="expired"}"#), 1.0);
    assert_eq!(env.metric(r#"identity_auth_requests_total{method="header",result="invalid"}"#), 1.0);
    assert_eq!(env.tracked(), 0, "HTTP API connections last one request: no expiry tracked");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_header_auth_sets_the_token_at_upgrade_and_expires_it() {
    let issuer = Issuer::start().await;
    let env = Env::start_with(settings(&issuer.url), GatewayOptions { ws_header_auth: true }).await;

    let token = issuer.mint(json!({ "username": "bob", "ttl": 2 })).await;
    let mut c = Client::connect(&env.ws_url(), &[("authorization", &format!("Bearer {token}"))]).await;
    assert_eq!(c.whoami().await["sub"], BOB);
    assert_eq!(c.ping().await["result"]["payload"], json!({ "pong": BOB }));
    assert_eq!(env.tracked(), 1, "a WebSocket's token is tracked for expiry");

    // No header, or a bad one: the socket still opens, without a token.
    let mut anon = env.ws().await;
    assert_eq!(anon.whoami().await, Value::Null);
    let mut bad = Client::connect(&env.ws_url(), &[("authorization", "Bearer nonsense")]).await;
    assert_eq!(bad.whoami().await, Value::Null);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    while c.whoami().await != Value::Null {
        assert!(tokio::time::Instant::now() < deadline, "header-auth token not cleared at expiry");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(err_code(&c.ping().await), "system.accessDenied");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_keep_one_expiry_per_connection() {
    let issuer = Issuer::start().await;
    let env = Env::start(settings(&issuer.url)).await;
    // A second instance in the same queue group, on its own NATS connection.
    let client = async_nats::connect(env.nats.url()).await.unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let second = identity_auth::IdentityAuth::start(client, settings(&issuer.url), &mut registry).await.unwrap();
    let tracked = || (env.tracked(), second.tracked_connections());

    let mut c = env.ws().await;
    c.login(&issuer.mint(json!({ "username": "alice", "ttl": 2 })).await).await;
    // Whichever instance answered, the other learnt the deadline from the token event.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while tracked() != (1, 1) {
        assert!(tokio::time::Instant::now() < deadline, "both instances track the connection: {:?}", tracked());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Refreshed several times, so both instances are likely to have answered one of them: no
    // instance may clear the refreshed token at the first token's expiry.
    for _ in 0..4 {
        let r = c.login(&issuer.mint(json!({ "username": "bob", "ttl": 300 })).await).await;
        assert_eq!(r["result"]["payload"]["sub"], BOB, "{r}");
    }
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(c.whoami().await["sub"], BOB);
    assert_eq!(tracked(), (1, 1));

    c.request("auth.identity.session.logout", None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while tracked() != (0, 0) {
        assert!(tokio::time::Instant::now() < deadline, "logout cancels the expiry everywhere: {:?}", tracked());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second.shutdown().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_fill_the_session_table_and_lock_others_out() {
    let issuer = Issuer::start().await;
    let mut s = settings(&issuer.url);
    (s.max_sessions, s.max_sessions_per_user) = (4, 2);
    let env = Env::start(s).await;
    let bob = issuer.mint(json!({ "username": "bob" })).await;
    // Connection after connection, each closed again: RES does not tell services about it.
    for _ in 0..8 {
        let mut c = env.ws().await;
        assert!(c.login(&bob).await.get("result").is_some());
    }
    // HTTP API requests claiming to upgrade are one request each: never tracked.
    let http = openidconnect::reqwest::Client::new();
    for _ in 0..8 {
        let res = http
            .get(env.http_url("/api/test/private"))
            .header("authorization", format!("Bearer {bob}"))
            .header("upgrade", "websocket")
            .send()
            .await
            .unwrap();
        assert_ne!(res.status().as_u16(), 500);
    }
    assert!(env.tracked() <= 2, "one user holds {} of 4 entries", env.tracked());
    let alice = issuer.mint(json!({ "username": "alice" })).await;
    let mut a = env.ws().await;
    let r = a.login(&alice).await;
    assert!(r.get("result").is_some(), "another user is locked out: {r}");
    assert_eq!(a.whoami().await["sub"], ALICE);
    env.stop().await;
}
