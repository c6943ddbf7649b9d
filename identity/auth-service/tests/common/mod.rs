//! Test harness: the real local issuer (Node), a real nats-server, the real gateway in-process,
//! identity-auth, a tiny RES service whose access depends on the connection token, and a
//! WebSocket RES client.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::{SinkExt, StreamExt};
use identity_auth::{IdentityAuth, Settings};
use openidconnect::reqwest;
use prometheus_client::registry::Registry;
use res_service::{CallResponse, Handler, ResError, Resource, Service};
use serde_json::{Value, json};
use token_validator::ValidatorConfig;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const ALICE: &str = "29711168-854e-43ec-a642-ba896ebb378f";
pub const BOB: &str = "389195a8-0c57-4500-9686-ca76b9656147";
pub const OLIVIA: &str = "80e2c5ee-9afa-4969-98ba-494f7e4880fd";

const WAIT: Duration = Duration::from_secs(10);

/// `node identity/oidc-issuer/bin/oidc-issuer.js --port 0 --test-admin`, killed on drop.
pub struct Issuer {
    pub url: String,
    http: reqwest::Client,
    _child: Child,
    // Kept open: the issuer must not get EPIPE on stdout.
    _stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Issuer {
    pub async fn start() -> Issuer {
        // Each issuer generates RSA keys at start; ten at once on two shared cores can take
        // longer than any sensible timeout, so at most two start together.
        static STARTING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
        let _permit = STARTING.acquire().await.unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../oidc-issuer");
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "run `npm ci --prefix identity/oidc-issuer` (Node.js 20+) before these tests"
        );
        // A Node start occasionally never reports ready in full workspace runs (cause not yet
        // known); a fresh process then starts normally, so retry a few times.
        for _ in 0..3 {
            let mut child = Command::new("node")
                .arg(dir.join("bin/oidc-issuer.js"))
                .args(["--port", "0", "--host", "127.0.0.1", "--test-admin"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("run node (Node.js 20+ on PATH)");
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let ready = tokio::time::timeout(Duration::from_secs(30), async {
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(url) = line.strip_prefix("OIDC_ISSUER_READY ") {
                        return Some(url.to_owned());
                    }
                }
                None
            })
            .await;
            match ready {
                Ok(Some(url)) => {
                    let http = reqwest::Client::builder().timeout(WAIT).build().unwrap();
                    return Issuer { url, http, _child: child, _stdout: lines };
                }
                Ok(None) => panic!("oidc-issuer exited before OIDC_ISSUER_READY"),
                Err(_) => continue,
            }
        }
        panic!("oidc-issuer did not report ready within 30 s in 3 attempts");
    }

    async fn admin(&self, path: &str, body: Value) -> Value {
        let res = self
            .http
            .post(format!("{}/__test/{path}", self.url))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// An access token from `POST /__test/token` with the given overrides.
    pub async fn mint(&self, options: Value) -> String {
        self.admin("token", options).await["access_token"].as_str().unwrap().to_owned()
    }

    /// Rotates the signing key; returns the new kid.
    pub async fn rotate(&self) -> String {
        self.admin("rotate-keys", json!({})).await["kid"].as_str().unwrap().to_owned()
    }

    pub async fn public_keys(&self) -> Vec<Value> {
        let res = self.http.get(format!("{}/__test/keys", self.url)).send().await.unwrap();
        let v: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
        v["keys"].as_array().unwrap().clone()
    }
}

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn unb64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).unwrap()
}

/// Test settings: no clock skew (expiry tests run on seconds), fast JWKS refresh.
pub fn settings(issuer: &str) -> Settings {
    let mut v = ValidatorConfig::booking(issuer);
    v.leeway = Duration::ZERO;
    v.refresh_min_interval = Duration::from_millis(500);
    v.http_timeout = Duration::from_secs(2);
    Settings::new(v)
}

/// Everything but the issuer.
pub struct Env {
    pub nats: res_testkit::NatsServer,
    pub gateway: resgate::Gateway,
    pub auth: Option<IdentityAuth>,
    pub registry: Registry,
    pub client: async_nats::Client,
    test_service: Option<res_service::Running>,
}

#[derive(Default)]
pub struct GatewayOptions {
    pub ws_header_auth: bool,
}

impl Env {
    pub async fn start(settings: Settings) -> Env {
        Env::start_with(settings, GatewayOptions::default()).await
    }

    pub async fn start_with(settings: Settings, opts: GatewayOptions) -> Env {
        let nats = res_testkit::NatsServer::start();
        let client = async_nats::connect(nats.url()).await.unwrap();
        let mut registry = Registry::default();
        let auth = IdentityAuth::start(client.clone(), settings, &mut registry).await.expect("identity-auth starts");
        let test_service = test_service().start(client.clone()).await.unwrap();
        let gateway = resgate::Gateway::start(resgate::Config {
            nats_url: nats.url(),
            addr: "127.0.0.1".into(),
            port: 0,
            header_auth: Some(identity_auth::HEADER_AUTH.into()),
            ws_header_auth: opts.ws_header_auth.then(|| identity_auth::WS_HEADER_AUTH.into()),
            // Two cores shared by parallel tests, a Node issuer and nats-server: be patient.
            request_timeout: 10_000,
            ..Default::default()
        })
        .await
        .unwrap();
        Env { nats, gateway, auth: Some(auth), registry, client, test_service: Some(test_service) }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/", self.gateway.local_addr())
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.local_addr())
    }

    pub async fn ws(&self) -> Client {
        Client::connect(&self.ws_url(), &[]).await
    }

    pub fn metrics(&self) -> String {
        res_telemetry::admin::render(&self.registry)
    }

    /// The value of one sample line (`name{labels}`), 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')).map(|v| v.parse().unwrap()))
            .unwrap_or(0.0)
    }

    pub fn tracked(&self) -> usize {
        self.auth.as_ref().unwrap().tracked_connections()
    }

    pub async fn stop(mut self) {
        if let Some(a) = self.auth.take() {
            a.shutdown().await;
        }
        if let Some(t) = self.test_service.take() {
            t.shutdown().await;
        }
        self.gateway.shutdown().await;
    }
}

/// The protected test service:
/// - `test.open`: anyone may get it and call `whoami` (echoes the connection token); `ping` only
///   with role `customer` in the token.
/// - `test.private`: get only with a token.
fn test_service() -> Service {
    #[derive(serde::Deserialize)]
    struct Token {
        sub: String,
        roles: Vec<String>,
    }
    Service::new("test")
        .handle(
            "test.open",
            Handler::new()
                .access(|req| async move {
                    let token: Option<Token> = req.token()?;
                    let customer = token.is_some_and(|t| t.roles.iter().any(|r| r == "customer"));
                    Ok::<_, ResError>(res_service::access(true, if customer { "*" } else { "whoami" }))
                })
                .get(|_req| async move { Resource::model(json!({ "open": true })) })
                .call("whoami", |req| async move {
                    let raw: Value = req.raw_token().map_or(Value::Null, |t| serde_json::from_str(t).unwrap());
                    CallResponse::result(raw)
                })
                .call("ping", |req| async move {
                    let t: Token = req.require_token()?;
                    CallResponse::result(json!({ "pong": t.sub }))
                }),
        )
        .handle(
            "test.private",
            Handler::new()
                .access(|req| async move {
                    let _: Token = req.require_token()?;
                    Ok::<_, ResError>(res_service::access(true, ""))
                })
                .get(|_req| async move { Resource::model(json!({ "secret": 42 })) }),
        )
}

/// A RES WebSocket client: requests by id, events queued.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    events: VecDeque<Value>,
}

impl Client {
    pub async fn connect(url: &str, headers: &[(&str, &str)]) -> Client {
        let mut req = url.into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut()
                .insert(http_name(k), tokio_tungstenite::tungstenite::http::HeaderValue::from_str(v).unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await.expect("websocket connects");
        let mut c = Client { ws, next_id: 1, events: VecDeque::new() };
        let v = c.request("version", Some(json!({ "protocol": "1.2.3" }))).await;
        assert!(v.get("result").is_some(), "{v}");
        c
    }

    async fn read(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next()).await.expect("message in time").unwrap().unwrap();
            if let Message::Text(t) = m {
                return serde_json::from_str(&t).unwrap();
            }
        }
    }

    /// Sends a request and returns its whole response (`{"result":..}` or `{"error":..}`).
    pub async fn request(&mut self, method: &str, params: Option<Value>) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "id": id, "method": method });
        if let Some(p) = params {
            msg["params"] = p;
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        loop {
            let v = self.read().await;
            if v.get("id") == Some(&json!(id)) {
                return v;
            }
            self.events.push_back(v);
        }
    }

    /// The next event named `name`, waiting up to `within`.
    pub async fn event(&mut self, name: &str, within: Duration) -> Option<Value> {
        if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
            return self.events.remove(i);
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()??.ok()?;
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["event"] == name {
                    return Some(v);
                }
                self.events.push_back(v);
            }
        }
    }

    pub async fn login(&mut self, token: &str) -> Value {
        self.request("auth.identity.session.login", Some(json!({ "token": token }))).await
    }

    /// The connection token as services see it (`null` without one).
    pub async fn whoami(&mut self) -> Value {
        let r = self.request("call.test.open.whoami", None).await;
        r["result"]["payload"].clone()
    }

    pub async fn ping(&mut self) -> Value {
        self.request("call.test.open.ping", None).await
    }
}

fn http_name(k: &str) -> tokio_tungstenite::tungstenite::http::HeaderName {
    tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap()
}

/// The error code of a response, or "" when it succeeded.
pub fn err_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

pub fn err_message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or("")
}
