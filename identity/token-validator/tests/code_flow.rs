//! End to end: a token from a real browser-style Authorization Code + PKCE flow (not the test
//! minting endpoint) validates, and the claims the platform relies on are present.

mod common;

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{Issuer, b64};
use openidconnect::reqwest::{self, Response};
use openidconnect::url::Url;
use sha2::{Digest, Sha256};
use token_validator::TokenValidator;

const REDIRECT_URI: &str = "http://localhost:8000/callback";

/// Minimal cookie jar: the issuer's cookies are path-scoped, sending all of them is harmless.
#[derive(Default)]
struct Jar(BTreeMap<String, String>);

impl Jar {
    fn store(&mut self, res: &Response) {
        for value in res.headers().get_all("set-cookie") {
            let line = value.to_str().unwrap();
            let pair = line.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || line.to_ascii_lowercase().contains("expires=thu, 01 jan 1970") {
                self.0.remove(name);
            } else {
                self.0.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    fn header(&self) -> String {
        self.0.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }
}

async fn get(http: &reqwest::Client, jar: &mut Jar, url: &str) -> Response {
    let res = http.get(url).header("cookie", jar.header()).send().await.unwrap();
    jar.store(&res);
    res
}

fn location(res: &Response, base: &str) -> String {
    assert!(res.status().is_redirection(), "expected redirect, got {}", res.status());
    let loc = res.headers()["location"].to_str().unwrap();
    Url::parse(base).unwrap().join(loc).unwrap().to_string()
}

#[tokio::test]
async fn token_from_authorization_code_flow_validates() {
    let issuer = Issuer::start().await;
    let http = &issuer.http;
    let mut jar = Jar::default();

    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let verifier = b64(Sha256::digest(format!("verifier-{nanos}")));
    let challenge = b64(Sha256::digest(&verifier));
    let auth = Url::parse_with_params(
        &format!("{}/protocol/openid-connect/auth", issuer.issuer),
        [
            ("client_id", "booking-web"),
            ("response_type", "code"),
            ("redirect_uri", REDIRECT_URI),
            ("scope", "openid profile email"),
            ("state", "st"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    )
    .unwrap();

    // Authorization request -> login interaction page.
    let res = get(http, &mut jar, auth.as_str()).await;
    let login_page = location(&res, &issuer.issuer);
    let res = get(http, &mut jar, &login_page).await;
    let html = res.text().await.unwrap();
    for id in ["id=\"username\"", "id=\"password\"", "id=\"login\""] {
        assert!(html.contains(id), "login form lacks {id}");
    }
    let action = html.split("action=\"").nth(1).and_then(|s| s.split('"').next()).expect("form action");

    // Submit credentials, follow the redirects back to the client.
    let res = http
        .post(Url::parse(&issuer.issuer).unwrap().join(action).unwrap())
        .header("cookie", jar.header())
        .form(&[("username", "olivia"), ("password", "olivia")])
        .send()
        .await
        .unwrap();
    jar.store(&res);
    let mut next = location(&res, &issuer.issuer);
    while next.starts_with(&issuer.issuer) {
        let res = get(http, &mut jar, &next).await;
        next = location(&res, &issuer.issuer);
    }
    let callback = Url::parse(&next).unwrap();
    assert!(next.starts_with(REDIRECT_URI), "{next}");
    let code = callback.query_pairs().find(|(k, _)| k == "code").map(|(_, v)| v.into_owned()).expect("code");

    // Code exchange with the PKCE verifier.
    let res = http
        .post(format!("{}/protocol/openid-connect/token", issuer.issuer))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", "booking-web"),
            ("code", &code),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", &verifier),
        ])
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let body: serde_json::Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    let access = body["access_token"].as_str().unwrap();

    let v = TokenValidator::new(issuer.config()).unwrap();
    let p = v.validate(access).await.expect("access token from the real flow");
    assert_eq!(p.preferred_username.as_deref(), Some("olivia"));
    assert!(p.has_role("operator") && p.has_role("customer") && p.has_role("schedule-admin"));
    assert!(p.session_id.is_some(), "flow tokens carry the session id");

    // The ID token is not an access token for the API (its audience is the client).
    let id_token = body["id_token"].as_str().unwrap();
    assert!(v.validate(id_token).await.unwrap_err().is_token_rejected());
}
