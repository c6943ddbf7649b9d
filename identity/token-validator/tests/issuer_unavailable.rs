//! An unreachable or silent issuer yields a clear error within a bounded time, never a hang.

use std::time::{Duration, Instant};

use token_validator::{RES_INTERNAL_ERROR, RES_ISSUER_UNAVAILABLE, TokenValidator, ValidationError, ValidatorConfig};

// Shape-valid RS256 token; it never gets past key loading here.
const TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";

fn config(issuer: String) -> ValidatorConfig {
    let mut c = ValidatorConfig::booking(issuer);
    c.http_timeout = Duration::from_millis(800);
    c
}

#[tokio::test]
async fn closed_port_fails_fast_with_issuer_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // The listener is dropped: nothing listens on the port any more.
    let v = TokenValidator::new(config(format!("http://127.0.0.1:{port}/realms/booking"))).unwrap();
    let started = Instant::now();
    let err = v.validate(TOKEN).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(matches!(err, ValidationError::IssuerUnavailable { .. }), "{err:?}");
    assert_eq!(err.res_code(), RES_ISSUER_UNAVAILABLE);
    assert!(!err.is_token_rejected());
    assert_eq!(err.to_string(), "identity issuer unavailable");
    assert!(err.detail().contains(&port.to_string()), "detail names the URL: {}", err.detail());

    // Within the refresh interval the failure is answered from memory, without a new attempt.
    let again = v.validate(TOKEN).await.unwrap_err();
    assert_eq!(again, err);
    assert_eq!(v.fetch_count(), 1);

    let discover = TokenValidator::discover(config(format!("http://127.0.0.1:{port}/realms/booking"))).await;
    assert!(matches!(discover, Err(ValidationError::IssuerUnavailable { .. })));
}

#[tokio::test]
async fn silent_issuer_times_out_instead_of_hanging() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let v = TokenValidator::new(config(format!("http://127.0.0.1:{port}/realms/booking"))).unwrap();
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), v.validate(TOKEN))
        .await
        .expect("validate must not hang")
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(700) && elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert!(matches!(err, ValidationError::IssuerUnavailable { .. }), "{err:?}");
    hold.abort();
}

#[test]
fn invalid_configuration_is_reported_as_internal_error() {
    for bad in [
        ValidatorConfig::booking("not a url"),
        ValidatorConfig::new("https://id.example.com/realms/booking", ""),
        ValidatorConfig { algorithms: vec![], ..ValidatorConfig::booking("https://id.example.com/realms/booking") },
    ] {
        let err = TokenValidator::new(bad).unwrap_err();
        assert!(matches!(err, ValidationError::Config(_)), "{err:?}");
        assert_eq!(err.res_code(), RES_INTERNAL_ERROR);
    }
}
