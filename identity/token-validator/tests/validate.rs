//! Token validation against the real local issuer (`identity/oidc-issuer`).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Issuer, b64, fast, split, unb64};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Sha256, Sha384, Sha512};
use token_validator::{RES_ACCESS_DENIED, RES_INTERNAL_ERROR, TokenValidator, ValidationError, ValidatorConfig};

const OLIVIA: &str = "80e2c5ee-9afa-4969-98ba-494f7e4880fd";

fn validator(config: ValidatorConfig) -> TokenValidator {
    TokenValidator::new(config).expect("valid config")
}

fn denied(err: &ValidationError) {
    assert_eq!(err.res_code(), RES_ACCESS_DENIED, "{err:?}");
    assert!(err.is_token_rejected());
}

#[tokio::test]
async fn valid_token_yields_principal_with_realm_and_client_roles() {
    let issuer = Issuer::start().await;
    let v = validator(issuer.config());
    let token = issuer.mint(json!({ "username": "olivia" })).await;
    let p = v.validate(&token).await.expect("valid token");
    assert_eq!(p.subject, OLIVIA);
    assert_eq!(p.name.as_deref(), Some("Olivia Ortega"));
    assert_eq!(p.email.as_deref(), Some("olivia@example.com"));
    assert_eq!(p.preferred_username.as_deref(), Some("olivia"));
    let expected: BTreeSet<String> =
        ["customer", "default-roles-booking", "offline_access", "operator", "schedule-admin", "uma_authorization"]
            .map(String::from)
            .into();
    assert_eq!(p.roles, expected);
    let (_, claims, _) = split(&token);
    assert_eq!(p.expires_at, UNIX_EPOCH + Duration::from_secs(claims["exp"].as_u64().unwrap()));
    assert!(p.expires_at > SystemTime::now());
    assert_eq!(p.token_id.as_deref(), claims["jti"].as_str());

    let bob = v.validate(&issuer.mint(json!({ "username": "bob" })).await).await.unwrap();
    assert!(bob.has_role("customer") && !bob.has_role("operator"));
    assert_eq!(v.fetch_count(), 1, "keys fetched once and cached");
}

#[tokio::test]
async fn expired_and_not_yet_valid_tokens_are_refused_outside_the_skew() {
    let issuer = Issuer::start().await;
    let v = validator(issuer.config());

    let err = v.validate(&issuer.mint(json!({ "ttl": -120 })).await).await.unwrap_err();
    assert_eq!(err, ValidationError::Expired);
    assert_eq!(err.to_string(), "token expired");
    denied(&err);
    // 10 s past exp is inside the default 30 s skew.
    v.validate(&issuer.mint(json!({ "ttl": -10 })).await).await.unwrap();

    let err = v.validate(&issuer.mint(json!({ "nbf_offset": 300 })).await).await.unwrap_err();
    assert_eq!(err, ValidationError::NotYetValid);
    assert_eq!(err.to_string(), "token not yet valid");
    denied(&err);
    v.validate(&issuer.mint(json!({ "nbf_offset": 10 })).await).await.unwrap();

    let mut strict = issuer.config();
    strict.leeway = Duration::ZERO;
    let err = validator(strict).validate(&issuer.mint(json!({ "ttl": -10 })).await).await.unwrap_err();
    assert_eq!(err, ValidationError::Expired);
}

#[tokio::test]
async fn issuer_audience_and_authorized_party_must_match() {
    let issuer = Issuer::start().await;
    let v = validator(issuer.config());

    for iss in [
        "https://evil.example/realms/booking".to_owned(),
        format!("{}/", issuer.issuer),
        issuer.issuer.replace("/realms/booking", "/realms/master"),
    ] {
        let err = v.validate(&issuer.mint(json!({ "iss": iss })).await).await.unwrap_err();
        assert_eq!(err, ValidationError::IssuerMismatch, "{iss}");
        denied(&err);
    }
    let err = v.validate(&issuer.mint(json!({ "aud": "account" })).await).await.unwrap_err();
    assert_eq!(err, ValidationError::AudienceMismatch);
    assert_eq!(err.to_string(), "token audience mismatch");
    let err = v.validate(&issuer.mint(json!({ "omit": ["aud"] })).await).await.unwrap_err();
    assert_eq!(err, ValidationError::MissingClaim("aud"));
    v.validate(&issuer.mint(json!({ "aud": ["account", "booking-api"] })).await)
        .await
        .expect("aud array containing booking-api");

    let err = v.validate(&issuer.mint(json!({ "azp": "some-other-client" })).await).await.unwrap_err();
    assert_eq!(err, ValidationError::AuthorizedPartyMismatch);
    v.validate(&issuer.mint(json!({ "omit": ["azp"] })).await).await.expect("azp only checked where present");

    let err = v.validate(&issuer.mint(json!({ "extra": { "typ": "ID" } })).await).await.unwrap_err();
    assert_eq!(err, ValidationError::NotAccessToken);
}

#[tokio::test]
async fn tampered_tokens_fail_signature_verification() {
    let issuer = Issuer::start().await;
    let v = validator(issuer.config());
    let token = issuer.mint(json!({ "username": "bob" })).await;
    let (h, mut payload, sig) = split(&token);
    let parts: Vec<&str> = token.split('.').collect();

    // One flipped bit in the signature.
    let mut raw = unb64(&sig);
    raw[10] ^= 0x01;
    let err = v.validate(&format!("{}.{}.{}", parts[0], parts[1], b64(&raw))).await.unwrap_err();
    assert_eq!(err, ValidationError::InvalidSignature);
    assert_eq!(err.to_string(), "invalid token signature");
    denied(&err);

    // Privilege escalation attempt: payload edited, original signature kept.
    payload["realm_access"]["roles"] = json!(["customer", "operator"]);
    let forged = format!("{}.{}.{sig}", parts[0], b64(serde_json::to_vec(&payload).unwrap()));
    assert_eq!(v.validate(&forged).await.unwrap_err(), ValidationError::InvalidSignature);

    // Signature of another valid token.
    let other = issuer.mint(json!({ "username": "olivia" })).await;
    let other_sig = other.rsplit('.').next().unwrap();
    let spliced = format!("{}.{}.{other_sig}", parts[0], parts[1]);
    assert_eq!(v.validate(&spliced).await.unwrap_err(), ValidationError::InvalidSignature);

    // Header edited to another allowed algorithm with the same key.
    let mut h2: Value = h.clone();
    h2["alg"] = json!("PS256");
    let alg_swapped = format!("{}.{}.{sig}", b64(serde_json::to_vec(&h2).unwrap()), parts[1]);
    assert_eq!(v.validate(&alg_swapped).await.unwrap_err(), ValidationError::InvalidSignature);
    v.validate(&token).await.expect("the original still verifies");
}

#[tokio::test]
async fn alg_none_is_refused() {
    let issuer = Issuer::start().await;
    let v = validator(issuer.config());
    let token = issuer.mint(json!({})).await;
    let parts: Vec<&str> = token.split('.').collect();
    for alg in ["none", "None", "NONE"] {
        let header = b64(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
        for sig in ["", parts[2]] {
            let err = v.validate(&format!("{header}.{}.{sig}", parts[1])).await.unwrap_err();
            assert_eq!(err, ValidationError::AlgorithmNotAllowed(alg.to_owned()));
            assert_eq!(err.to_string(), format!("token algorithm not allowed: {alg}"));
            denied(&err);
        }
    }
}

fn hmac_token(alg: &str, kid: &str, payload: &str, secret: &[u8]) -> String {
    let header = b64(format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"{kid}"}}"#));
    let input = format!("{header}.{payload}");
    let sig = match alg {
        "HS256" => {
            let mut m = Hmac::<Sha256>::new_from_slice(secret).unwrap();
            m.update(input.as_bytes());
            m.finalize().into_bytes().to_vec()
        }
        "HS384" => {
            let mut m = Hmac::<Sha384>::new_from_slice(secret).unwrap();
            m.update(input.as_bytes());
            m.finalize().into_bytes().to_vec()
        }
        _ => {
            let mut m = Hmac::<Sha512>::new_from_slice(secret).unwrap();
            m.update(input.as_bytes());
            m.finalize().into_bytes().to_vec()
        }
    };
    format!("{input}.{}", b64(sig))
}

#[tokio::test]
async fn hmac_signed_with_the_public_key_is_refused() {
    let issuer = Issuer::start().await;
    let v = validator(issuer.config());
    let token = issuer.mint(json!({ "username": "olivia" })).await;
    let payload = token.split('.').nth(1).unwrap().to_owned();
    let key = issuer.public_keys().await.remove(0);
    let kid = key["kid"].as_str().unwrap();
    let pem = key["pem"].as_str().unwrap().to_owned();
    let mut jwk = key.clone();
    jwk.as_object_mut().unwrap().remove("pem");
    let secrets: Vec<Vec<u8>> = vec![
        pem.clone().into_bytes(),
        pem.trim_end().as_bytes().to_vec(),
        serde_json::to_vec(&jwk).unwrap(),
        key["n"].as_str().unwrap().as_bytes().to_vec(),
    ];
    for secret in &secrets {
        for alg in ["HS256", "HS384", "HS512"] {
            let err = v.validate(&hmac_token(alg, kid, &payload, secret)).await.unwrap_err();
            assert_eq!(err, ValidationError::AlgorithmNotAllowed(alg.to_owned()));
            denied(&err);
        }
    }
    assert_eq!(v.fetch_count(), 0, "refused before any key was even looked up");
}

#[tokio::test]
async fn garbage_is_refused_as_access_denied() {
    let issuer = Issuer::start().await;
    let v = validator(issuer.config());
    let valid = issuer.mint(json!({})).await;
    let huge = "a".repeat(100_000);
    let inputs = [
        "",
        " ",
        "null",
        "Bearer abc",
        "a.b.c",
        "a.b",
        "....",
        "eyJ.eyJ.eyJ",
        "\u{0000}.\u{0000}.\u{0000}",
        "ünïcödé.ünïcödé.ünïcödé",
        &huge,
        &valid[..valid.len() / 2],
        &format!("{valid}.extra"),
        &format!(" {valid}"),
        &format!("Bearer {valid}"),
    ];
    for input in inputs {
        let err = v.validate(input).await.unwrap_err();
        denied(&err);
        assert!(
            matches!(
                err,
                ValidationError::Malformed(_)
                    | ValidationError::AlgorithmNotAllowed(_)
                    | ValidationError::InvalidSignature
            ),
            "{input:.40}: {err:?}"
        );
    }
    // Structurally a JWS, valid signature, but the payload is not a claims object.
    let (h, _, _) = split(&valid);
    let err = v.validate(&format!("{}.{}.sig", b64(h.to_string()), b64("[1,2,3]"))).await.unwrap_err();
    assert_eq!(err, ValidationError::InvalidSignature);
}

#[tokio::test]
async fn rotated_key_is_picked_up_by_one_rate_limited_refresh() {
    let issuer = Issuer::start().await;
    // Long enough that rotating and minting surely happen inside the first interval.
    let interval = Duration::from_secs(3);
    let v = TokenValidator::discover(fast(issuer.config(), interval)).await.unwrap();
    let old = issuer.mint(json!({})).await;
    v.validate(&old).await.unwrap();
    assert_eq!(v.fetch_count(), 1);

    let new_kid = issuer.rotate().await;
    let new = issuer.mint(json!({})).await;
    assert_eq!(split(&new).0["kid"], json!(new_kid));

    // Straight after the initial fetch the limiter holds: no second fetch yet.
    let err = v.validate(&new).await.unwrap_err();
    assert_eq!(err, ValidationError::UnknownKey { kid: Some(new_kid.clone()) });
    assert_eq!(err.to_string(), "unknown token signing key");
    denied(&err);
    assert_eq!(v.fetch_count(), 1);

    tokio::time::sleep(interval).await;
    let before = issuer.jwks_requests().await;
    let p = v.validate(&new).await.expect("new key found after one refresh");
    assert_eq!(p.preferred_username.as_deref(), Some("alice"));
    assert_eq!(v.fetch_count(), 2);
    assert_eq!(issuer.jwks_requests().await, before + 1);
    // Tokens signed before the rotation stay valid (the old key is still published).
    v.validate(&old).await.unwrap();
    assert_eq!(v.fetch_count(), 2);
}

#[tokio::test]
async fn concurrent_callers_share_a_single_refresh() {
    let issuer = Issuer::start().await;
    let interval = Duration::from_millis(500);
    let v = TokenValidator::discover(fast(issuer.config(), interval)).await.unwrap();
    tokio::time::sleep(interval).await;
    issuer.rotate().await;
    let token = issuer.mint(json!({ "username": "bob" })).await;
    let before = issuer.jwks_requests().await;

    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let v = v.clone();
            let token = token.clone();
            tokio::spawn(async move { v.validate(&token).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().expect("every caller gets the rotated key");
    }
    assert_eq!(v.fetch_count(), 2, "one discovery + one shared refresh");
    assert_eq!(issuer.jwks_requests().await, before + 1);
}

#[tokio::test]
async fn key_missing_from_jwks_is_refused_and_refreshes_are_rate_limited() {
    let issuer = Issuer::start().await;
    let interval = Duration::from_secs(2);
    let v = TokenValidator::discover(fast(issuer.config(), interval)).await.unwrap();
    // Mint first (each unpublished key is a fresh RSA key, slow to generate), so the burst below
    // surely falls inside one refresh interval.
    let mut forged = Vec::new();
    for _ in 0..6 {
        forged.push(issuer.mint(json!({ "unpublished_key": true })).await);
    }
    tokio::time::sleep(interval).await;
    let before = issuer.jwks_requests().await;

    let err = v.validate(&forged.pop().unwrap()).await.unwrap_err();
    assert!(matches!(err, ValidationError::UnknownKey { .. }), "{err:?}");
    denied(&err);
    assert_eq!(v.fetch_count(), 2, "one refresh for the unknown kid");

    // A burst of unknown kids within the interval causes no further fetches.
    let tasks: Vec<_> = forged
        .into_iter()
        .map(|t| {
            let v = v.clone();
            tokio::spawn(async move { v.validate(&t).await })
        })
        .collect();
    for t in tasks {
        assert!(matches!(t.await.unwrap(), Err(ValidationError::UnknownKey { .. })));
    }
    assert_eq!(v.fetch_count(), 2);
    assert_eq!(issuer.jwks_requests().await, before + 1);

    // A token naming a real kid but signed by another key is a signature failure, not a refresh.
    let real_kid = issuer.public_keys().await[0]["kid"].as_str().unwrap().to_owned();
    let spoofed = issuer.mint(json!({ "unpublished_key": true, "kid": real_kid })).await;
    assert_eq!(v.validate(&spoofed).await.unwrap_err(), ValidationError::InvalidSignature);
    // And without any kid, the published keys are tried and none verifies.
    let no_kid = issuer.mint(json!({ "unpublished_key": true, "kid": null })).await;
    assert_eq!(v.validate(&no_kid).await.unwrap_err(), ValidationError::InvalidSignature);
    v.validate(&issuer.mint(json!({ "kid": null })).await).await.expect("kid-less token from the real key");
    assert_eq!(v.fetch_count(), 2);
}

#[tokio::test]
async fn algorithm_allow_list_is_configurable() {
    let issuer = Issuer::start().await;
    let mut config = issuer.config();
    config.algorithms = vec![token_validator::Algorithm::Es256];
    let err = validator(config).validate(&issuer.mint(json!({})).await).await.unwrap_err();
    assert_eq!(err, ValidationError::AlgorithmNotAllowed("RS256".into()));
}

#[tokio::test]
async fn discovery_from_an_internal_url_still_requires_the_public_issuer() {
    // Reserve a port, then let the issuer bind it with a public --issuer (proxy deployment).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let public = "https://booking.example.com/realms/booking";
    let issuer = Issuer::start_with(&["--port", &port, "--issuer", public]).await;
    assert_eq!(issuer.issuer, public);

    let mut config = ValidatorConfig::booking(public);
    config.discovery_url = Some(issuer.local.clone());
    let v = validator(config);
    let p = v.validate(&issuer.mint(json!({ "username": "olivia" })).await).await.unwrap();
    assert_eq!(p.subject, OLIVIA);

    // The document fetched internally names another issuer than configured: refused.
    let mut wrong = ValidatorConfig::booking("https://other.example.com/realms/booking");
    wrong.discovery_url = Some(issuer.local.clone());
    let err = validator(wrong).validate(&issuer.mint(json!({})).await).await.unwrap_err();
    assert!(matches!(err, ValidationError::IssuerMisconfigured { .. }), "{err:?}");
    assert_eq!(err.res_code(), RES_INTERNAL_ERROR);
    assert!(err.detail().contains("booking.example.com"), "{}", err.detail());
}
