//! `.creds` authentication against a real nats-server in operator (JWT) mode, with an operator,
//! account and user made up per test.

use base64::Engine as _;
use nkeys::KeyPair;
use res_nats::{Client, Event, Options};
use res_testkit::NatsServer;
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// A JWT as nats-io/jwt v2 encodes it: ed25519-nkey signature over `header.claims`.
fn jwt(issuer: &KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = json!({
        "jti": format!("{subject}-{name}"),
        "iat": 1_700_000_000,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let claims = b64(claims.to_string().as_bytes());
    let signed = format!("{header}.{claims}");
    let sig = b64(&issuer.sign(signed.as_bytes()).unwrap());
    format!("{signed}.{sig}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticates_with_a_creds_file_by_signing_the_nonce() {
    let (operator, account, user) = (KeyPair::new_operator(), KeyPair::new_account(), KeyPair::new_user());
    let unlimited = json!({"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1});
    let operator_jwt = jwt(&operator, &operator.public_key(), "op", json!({"type": "operator", "version": 2}));
    let account_jwt =
        jwt(&operator, &account.public_key(), "acc", json!({"limits": unlimited, "type": "account", "version": 2}));
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        "gateway",
        json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}),
    );

    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "operator: {operator_jwt}\nresolver: MEMORY\nresolver_preload: {{ {}: {account_jwt} }}\n",
            account.public_key()
        ),
    )
    .unwrap();
    let creds = dir.path().join("user.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    let server = NatsServer::start_with(&["-c", conf.to_str().unwrap()]);

    let mut opts = Options::new(server.url());
    opts.creds = Some(creds);
    let (client, mut events) =
        tokio::time::timeout(WAIT, Client::connect(opts)).await.expect("connect in time").unwrap();
    assert_eq!(events.recv().await.unwrap(), Event::Connected);
    client.flush().await.unwrap();

    // Without credentials the same server refuses us.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), Client::connect(Options::new(server.url()))).await.is_err()
    );
}
