//! Black-box test harness: a real nats-server, the gateway in-process, a NATS client playing the
//! services, WebSocket clients and a tiny HTTP/1.1 client.
//!
//! Every wait is bounded. Helpers fail the test with what WAS received when an expectation is not met.

#![allow(dead_code, clippy::print_stdout)]

pub mod gores;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use res_testkit::NatsServer;
use resgate::{Config, Gateway};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

/// How long an expected message may take.
pub const WAIT: Duration = Duration::from_secs(2);
/// How long to watch for a message that must not come.
pub const QUIET: Duration = Duration::from_millis(200);

/// The subjects the service client listens on by default.
pub const SERVICE_SUBJECTS: &[&str] = &["access.>", "get.>", "call.>", "auth.>"];

/// A nats-server, a gateway and a service client.
pub struct TestEnv {
    pub nats: NatsServer,
    pub gateway: Option<Gateway>,
    pub service: Service,
    pub config: Config,
}

/// Test configuration: Resgate defaults, loopback, ephemeral ports, no keepalive noise.
pub fn test_config(nats_url: String) -> Config {
    Config {
        nats_url,
        addr: "127.0.0.1".into(),
        port: 0,
        metrics_port: None,
        request_timeout: 1000,
        ping_interval: 0,
        idle_timeout: 600_000,
        drain_timeout: 1000,
        ..Config::default()
    }
}

impl TestEnv {
    pub async fn start() -> TestEnv {
        TestEnv::start_custom(|_| {}, SERVICE_SUBJECTS).await
    }

    pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestEnv {
        TestEnv::start_custom(f, SERVICE_SUBJECTS).await
    }

    /// A gateway with a modified configuration and a service listening only on `subjects`.
    pub async fn start_custom(f: impl FnOnce(&mut Config), subjects: &[&str]) -> TestEnv {
        let nats = NatsServer::start();
        let mut config = test_config(nats.url());
        f(&mut config);
        let service = Service::connect(&nats.url(), subjects).await;
        let gateway = timeout(Duration::from_secs(10), Gateway::start(config.clone()))
            .await
            .expect("gateway start timed out")
            .unwrap_or_else(|e| panic!("gateway failed to start: {e:?}"));
        TestEnv { nats, gateway: Some(gateway), service, config }
    }

    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("gateway running")
    }

    pub fn addr(&self) -> SocketAddr {
        self.gateway().local_addr()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}{}", self.addr(), self.config.ws_path)
    }

    /// A client that sent `version` 1.2.3.
    pub async fn client(&self) -> WsClient {
        let mut c = self.client_without_version().await;
        let r = c.request("version", json!({"protocol": "1.2.3"})).await;
        assert_eq!(r.result(), json!({"protocol": "1.2.3"}), "version handshake");
        c
    }

    pub async fn client_with_version(&self, v: &str) -> WsClient {
        let mut c = self.client_without_version().await;
        let r = c.request("version", json!({ "protocol": v })).await;
        assert_eq!(r.result(), json!({"protocol": "1.2.3"}), "version handshake");
        c
    }

    /// A legacy client (never sends `version`).
    pub async fn client_without_version(&self) -> WsClient {
        WsClient::connect(&self.ws_url(), &[]).await.unwrap_or_else(|e| panic!("WebSocket connect failed: {e}"))
    }

    pub async fn http(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
        http_request(self.addr(), method, path, headers, body).await
    }

    pub async fn metrics(&self) -> String {
        let addr = self.gateway().metrics_addr().expect("metrics listener enabled");
        let r = http_request(addr, "GET", "/metrics", &[], b"").await;
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        r.text()
    }
}

// ------------------------------------------------------------------------------------------------
// Service side
// ------------------------------------------------------------------------------------------------

/// A request the gateway sent over NATS.
#[derive(Clone)]
pub struct ServiceRequest {
    pub subject: String,
    pub payload: Bytes,
    pub reply: Option<String>,
    pub headers: Option<async_nats::HeaderMap>,
    client: async_nats::Client,
}

impl std::fmt::Debug for ServiceRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.subject, String::from_utf8_lossy(&self.payload))
    }
}

impl ServiceRequest {
    pub fn payload_json(&self) -> Value {
        serde_json::from_slice(&self.payload)
            .unwrap_or_else(|e| panic!("payload of {} is not JSON ({e}): {:?}", self.subject, self.payload))
    }

    /// The cid in an access/call/auth payload.
    pub fn cid(&self) -> String {
        self.payload_json()["cid"].as_str().unwrap_or_else(|| panic!("no cid in {self:?}")).to_owned()
    }

    pub async fn respond_raw(&self, bytes: impl Into<Bytes>) {
        let reply = self.reply.clone().unwrap_or_else(|| panic!("{} has no reply subject", self.subject));
        self.client.publish(reply, bytes.into()).await.expect("publish reply");
        self.client.flush().await.expect("flush reply");
    }

    /// Sends `v` as the whole response envelope.
    pub async fn respond_json(&self, v: Value) {
        self.respond_raw(serde_json::to_vec(&v).unwrap()).await
    }

    pub async fn respond_result(&self, result: Value) {
        self.respond_json(json!({ "result": result })).await
    }

    pub async fn respond_model(&self, model: Value) {
        self.respond_result(json!({ "model": model })).await
    }

    pub async fn respond_collection(&self, collection: Value) {
        self.respond_result(json!({ "collection": collection })).await
    }

    pub async fn respond_access(&self, get: bool, call: Option<&str>) {
        match call {
            Some(c) => self.respond_result(json!({"get": get, "call": c})).await,
            None => self.respond_result(json!({ "get": get })).await,
        }
    }

    pub async fn respond_error(&self, code: &str, message: &str) {
        self.respond_json(json!({"error": {"code": code, "message": message}})).await
    }

    pub async fn respond_resource(&self, rid: &str) {
        self.respond_json(json!({"resource": {"rid": rid}})).await
    }
}

/// The NATS client playing the services.
pub struct Service {
    pub client: async_nats::Client,
    tx: mpsc::UnboundedSender<ServiceRequest>,
    rx: mpsc::UnboundedReceiver<ServiceRequest>,
    pending: VecDeque<ServiceRequest>,
}

impl Service {
    pub async fn connect(url: &str, subjects: &[&str]) -> Service {
        let client = async_nats::ConnectOptions::new()
            .max_reconnects(None)
            .reconnect_delay_callback(|_| Duration::from_millis(50))
            .connect(url)
            .await
            .expect("service connects to NATS");
        let (tx, rx) = mpsc::unbounded_channel();
        let mut s = Service { client, tx, rx, pending: VecDeque::new() };
        for subj in subjects {
            s.listen(subj).await;
        }
        s
    }

    /// Also hands requests on `subject` (e.g. a query-event inbox) to the test.
    pub async fn listen(&mut self, subject: &str) {
        let mut sub = self.client.subscribe(subject.to_owned()).await.expect("subscribe");
        synced_with_server(&self.client).await;
        let tx = self.tx.clone();
        let client = self.client.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let req = ServiceRequest {
                    subject: m.subject.to_string(),
                    payload: m.payload,
                    reply: m.reply.map(|r| r.to_string()),
                    headers: m.headers,
                    client: client.clone(),
                };
                if tx.send(req).is_err() {
                    break;
                }
            }
        });
    }

    fn drain(&mut self) {
        while let Ok(r) = self.rx.try_recv() {
            self.pending.push_back(r);
        }
    }

    /// The first request on `subject` (requests on other subjects stay queued).
    pub async fn expect(&mut self, subject: &str) -> ServiceRequest {
        self.expect_within(subject, WAIT).await
    }

    /// The first request whose subject satisfies `pred` (e.g. a subject carrying a cid).
    pub async fn expect_where(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> ServiceRequest {
        let deadline = Instant::now() + WAIT;
        loop {
            self.drain();
            if let Some(i) = self.pending.iter().position(|r| pred(&r.subject)) {
                return self.pending.remove(i).unwrap();
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(r)) => self.pending.push_back(r),
                Ok(None) => panic!("service channel closed"),
                Err(_) => panic!("expected a NATS request ({what}); received instead: {:?}", self.pending),
            }
        }
    }

    /// The next request on any subject, or `None` after `wait`.
    pub async fn next_request(&mut self, wait: Duration) -> Option<ServiceRequest> {
        self.drain();
        if let Some(r) = self.pending.pop_front() {
            return Some(r);
        }
        timeout(wait, self.rx.recv()).await.ok().flatten()
    }

    /// Waits until `n` requests are queued, then returns them all (in arrival order).
    pub async fn expect_n(&mut self, n: usize) -> Vec<ServiceRequest> {
        let deadline = Instant::now() + WAIT;
        loop {
            self.drain();
            if self.pending.len() >= n {
                return self.pending.drain(..n).collect();
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(r)) => self.pending.push_back(r),
                Ok(None) => panic!("service channel closed"),
                Err(_) => panic!("expected {n} NATS requests; received: {:?}", self.pending),
            }
        }
    }

    pub async fn expect_within(&mut self, subject: &str, wait: Duration) -> ServiceRequest {
        let deadline = Instant::now() + wait;
        loop {
            self.drain();
            if let Some(i) = self.pending.iter().position(|r| r.subject == subject) {
                return self.pending.remove(i).unwrap();
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(r)) => self.pending.push_back(r),
                Ok(None) => panic!("service channel closed"),
                Err(_) => panic!("expected a NATS request on {subject}; received instead: {:?}", self.pending),
            }
        }
    }

    /// Asserts that no request arrives (on any subject) for `d`; fails on queued ones too.
    pub async fn assert_no_request(&mut self, d: Duration) {
        self.drain();
        assert!(self.pending.is_empty(), "unexpected NATS requests: {:?}", self.pending);
        if let Ok(Some(r)) = timeout(d, self.rx.recv()).await {
            panic!("unexpected NATS request: {r:?}");
        }
    }

    /// Asserts that no request on `subject` arrives for `d`.
    pub async fn assert_no_request_on(&mut self, subject: &str, d: Duration) {
        let deadline = Instant::now() + d;
        loop {
            self.drain();
            if let Some(r) = self.pending.iter().find(|r| r.subject == subject) {
                panic!("unexpected NATS request: {r:?}");
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(r)) => self.pending.push_back(r),
                _ => return,
            }
        }
    }

    /// Requests received and not yet taken.
    pub fn take_pending(&mut self) -> Vec<ServiceRequest> {
        self.drain();
        self.pending.drain(..).collect()
    }

    pub async fn publish_raw(&self, subject: &str, bytes: impl Into<Bytes>) {
        self.client.publish(subject.to_owned(), bytes.into()).await.expect("publish");
        self.client.flush().await.expect("flush");
    }

    /// Publishes `event.<rid>.<event>`.
    pub async fn publish_event(&self, rid: &str, event: &str, payload: Value) {
        self.publish_raw(&format!("event.{rid}.{event}"), serde_json::to_vec(&payload).unwrap()).await
    }

    /// Publishes without flushing (for bursts); call `flush` after.
    pub async fn publish_event_noflush(&self, rid: &str, event: &str, payload: &Value) {
        self.publish_json_noflush(&format!("event.{rid}.{event}"), payload).await
    }

    /// Publishes without flushing, so the next publish follows it closely on the wire.
    pub async fn publish_json_noflush(&self, subject: &str, payload: &Value) {
        self.client.publish(subject.to_owned(), serde_json::to_vec(payload).unwrap().into()).await.expect("publish");
    }

    pub async fn flush(&self) {
        self.client.flush().await.expect("flush");
    }

    pub async fn publish_json(&self, subject: &str, payload: Value) {
        self.publish_raw(subject, serde_json::to_vec(&payload).unwrap()).await
    }

    /// Answers the access and get requests of a first subscribe to `rid`: full access, `model`.
    /// Returns the cid from the access request.
    pub async fn serve_model(&mut self, rid: &str, model: Value) -> String {
        let access = self.expect(&format!("access.{rid}")).await;
        access.respond_access(true, Some("*")).await;
        self.expect(&format!("get.{rid}")).await.respond_model(model).await;
        access.cid()
    }

    pub async fn serve_collection(&mut self, rid: &str, collection: Value) -> String {
        let access = self.expect(&format!("access.{rid}")).await;
        access.respond_access(true, Some("*")).await;
        self.expect(&format!("get.{rid}")).await.respond_collection(collection).await;
        access.cid()
    }
}

// ------------------------------------------------------------------------------------------------
// WebSocket client
// ------------------------------------------------------------------------------------------------

/// What the reader task saw.
#[derive(Debug, Clone)]
pub enum Incoming {
    Json(Value),
    /// A text frame that is not JSON, or a binary frame.
    Other(String),
    Ping,
    Close(Option<(u16, String)>),
    /// The stream ended or failed without a close frame.
    Ended(String),
}

/// `node <script> <args…>` in `tests/node` (the real npm resclient over `ws`), killed on drop,
/// and its stdout lines. Fails with what to run when node or the npm dependencies are missing.
pub fn spawn_node(
    script: &str,
    args: &[&str],
) -> (tokio::process::Child, tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>) {
    use tokio::io::AsyncBufReadExt;
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    assert!(
        std::process::Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success()),
        "`node` not found: run ./setup.sh (installs nodejs and the npm dependencies)"
    );
    assert!(
        dir.join("node_modules/resclient").is_dir() && dir.join("node_modules/ws").is_dir(),
        "{}/node_modules missing: run ./setup.sh (npm ci in tests/node)",
        dir.display()
    );
    let mut child = tokio::process::Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node");
    let lines = tokio::io::BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    (child, lines)
}

/// Returns once the server has processed everything this client sent before (subscriptions
/// included): a flush only hands the bytes to the socket, and a request another connection
/// sends right after could otherwise meet no interest yet ("no responders").
pub async fn synced_with_server(client: &async_nats::Client) {
    let probe = client.new_inbox();
    let mut sub = client.subscribe(probe.clone()).await.expect("subscribe probe");
    client.publish(probe, Bytes::new()).await.expect("publish probe");
    timeout(WAIT, sub.next()).await.expect("the server echoes the probe").expect("probe subscription open");
}

/// A RES client over tokio-tungstenite; a reader task queues everything it receives.
pub struct WsClient {
    sink: futures_util::stream::SplitSink<WebSocketStream<TcpStream>, Message>,
    rx: mpsc::UnboundedReceiver<Incoming>,
    /// Responses and events received and not yet taken.
    queue: VecDeque<Value>,
    pub pings: u64,
    pub closed: Option<Incoming>,
    next_id: Arc<AtomicU64>,
}

pub type WsError = tokio_tungstenite::tungstenite::Error;

/// Opens a WebSocket with extra request headers; returns the raw stream.
pub async fn ws_connect_raw(url: &str, headers: &[(&str, &str)]) -> Result<WebSocketStream<TcpStream>, WsError> {
    let mut req = url.into_client_request()?;
    for (k, v) in headers {
        req.headers_mut().insert(
            http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::header::HeaderValue::from_str(v).unwrap(),
        );
    }
    let host = req.uri().host().unwrap().to_owned();
    let port = req.uri().port_u16().unwrap();
    let tcp = TcpStream::connect((host.as_str(), port)).await.map_err(WsError::Io)?;
    let config = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
    let (ws, _resp) = timeout(WAIT, client_async_with_config(req, tcp, Some(config)))
        .await
        .map_err(|_| WsError::Io(std::io::Error::other("WebSocket handshake timed out")))??;
    Ok(ws)
}

/// Opens a WebSocket and returns the handshake response too (status and headers of the 101).
pub async fn ws_connect_with_response(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(WsClient, http::Response<Option<Vec<u8>>>), WsError> {
    let mut req = url.into_client_request()?;
    for (k, v) in headers {
        req.headers_mut().insert(
            http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::header::HeaderValue::from_str(v).unwrap(),
        );
    }
    let host = req.uri().host().unwrap().to_owned();
    let port = req.uri().port_u16().unwrap();
    let tcp = TcpStream::connect((host.as_str(), port)).await.map_err(WsError::Io)?;
    let (ws, resp) = timeout(WAIT, client_async_with_config(req, tcp, None))
        .await
        .map_err(|_| WsError::Io(std::io::Error::other("WebSocket handshake timed out")))??;
    Ok((WsClient::from_stream(ws), resp))
}

impl WsClient {
    pub async fn connect(url: &str, headers: &[(&str, &str)]) -> Result<WsClient, WsError> {
        let ws = ws_connect_raw(url, headers).await?;
        Ok(WsClient::from_stream(ws))
    }

    pub fn from_stream(ws: WebSocketStream<TcpStream>) -> WsClient {
        let (sink, mut stream) = ws.split();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let item = match stream.next().await {
                    Some(Ok(Message::Text(t))) => match serde_json::from_str::<Value>(&t) {
                        Ok(v) => Incoming::Json(v),
                        Err(_) => Incoming::Other(t.to_string()),
                    },
                    Some(Ok(Message::Binary(b))) => Incoming::Other(format!("binary {b:?}")),
                    Some(Ok(Message::Ping(_))) => Incoming::Ping,
                    Some(Ok(Message::Pong(_))) | Some(Ok(Message::Frame(_))) => continue,
                    Some(Ok(Message::Close(f))) => {
                        let _ = tx.send(Incoming::Close(f.map(|f| (u16::from(f.code), f.reason.to_string()))));
                        break;
                    }
                    Some(Err(e)) => {
                        let _ = tx.send(Incoming::Ended(e.to_string()));
                        break;
                    }
                    None => {
                        let _ = tx.send(Incoming::Ended("end of stream".into()));
                        break;
                    }
                };
                if tx.send(item).is_err() {
                    break;
                }
            }
        });
        WsClient { sink, rx, queue: VecDeque::new(), pings: 0, closed: None, next_id: Arc::new(AtomicU64::new(1)) }
    }

    /// Waits for the next incoming item until `deadline`; false on timeout or after close.
    async fn pump(&mut self, deadline: Instant) -> bool {
        if self.closed.is_some() {
            return false;
        }
        match tokio::time::timeout_at(deadline, self.rx.recv()).await {
            Ok(Some(Incoming::Json(v))) => {
                self.queue.push_back(v);
                true
            }
            Ok(Some(Incoming::Ping)) => {
                self.pings += 1;
                true
            }
            Ok(Some(Incoming::Other(s))) => panic!("client received a non-JSON message: {s:?}"),
            Ok(Some(c @ (Incoming::Close(_) | Incoming::Ended(_)))) => {
                self.closed = Some(c);
                false
            }
            Ok(None) => {
                self.closed = Some(Incoming::Ended("reader stopped".into()));
                false
            }
            Err(_) => false,
        }
    }

    pub async fn send_text(&mut self, raw: &str) {
        self.sink.send(Message::text(raw.to_owned())).await.expect("send text frame");
    }

    pub async fn send_message(&mut self, m: Message) -> Result<(), WsError> {
        self.sink.send(m).await
    }

    /// Everything that arrives before the response to `id`, in order, and the response.
    pub async fn frames_until_response(&mut self, id: u64) -> (Vec<Value>, Response) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(i) = self.queue.iter().position(|v| v.get("id") == Some(&json!(id))) {
                let before: Vec<Value> = self.queue.drain(..i).collect();
                return (before, Response(self.queue.pop_front().unwrap()));
            }
            if !self.pump(deadline).await {
                panic!(
                    "no response to request {id} within {WAIT:?}; received: {:?}; closed: {:?}",
                    self.queue, self.closed
                );
            }
        }
    }

    /// The next `n` events, or fewer if they do not come within `WAIT` (the caller compares).
    pub async fn take_events(&mut self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        let mut got = Vec::new();
        while got.len() < n {
            if let Some(i) = self.queue.iter().position(|v| v.get("event").is_some()) {
                got.push(self.queue.remove(i).unwrap());
            } else if !self.pump(deadline).await {
                break;
            }
        }
        got
    }

    /// Events received so far and the ones that arrive within `d` (responses stay queued).
    pub async fn events_within(&mut self, d: Duration) -> Vec<Value> {
        let deadline = Instant::now() + d;
        while self.pump(deadline).await {}
        let (events, rest): (Vec<Value>, Vec<Value>) = self.queue.drain(..).partition(|v| v.get("event").is_some());
        self.queue.extend(rest);
        events
    }

    /// Sends a request; `params` is omitted when `Value::Null`. Returns the id.
    pub async fn send(&mut self, method: &str, params: Value) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let req = if params.is_null() {
            json!({"id": id, "method": method})
        } else {
            json!({"id": id, "method": method, "params": params})
        };
        self.send_text(&req.to_string()).await;
        id
    }

    /// The response to request `id`.
    pub async fn response(&mut self, id: u64) -> Response {
        self.response_within(id, WAIT).await
    }

    pub async fn response_within(&mut self, id: u64, wait: Duration) -> Response {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(i) = self.queue.iter().position(|v| v.get("id") == Some(&json!(id))) {
                return Response(self.queue.remove(i).unwrap());
            }
            if !self.pump(deadline).await {
                panic!(
                    "no response to request {id} within {wait:?}; received instead: {:?}; closed: {:?}",
                    self.queue, self.closed
                );
            }
        }
    }

    /// The next message of any kind (response or event), in the order the gateway sent it.
    pub async fn next_message(&mut self) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = self.queue.pop_front() {
                return v;
            }
            if !self.pump(deadline).await {
                panic!("no message within {WAIT:?}; closed: {:?}", self.closed);
            }
        }
    }

    pub async fn request(&mut self, method: &str, params: Value) -> Response {
        let id = self.send(method, params).await;
        self.response(id).await
    }

    /// The next event (in arrival order); must be named `name` (e.g. `test.model.change`). Returns
    /// its data (`Value::Null` when absent).
    pub async fn expect_event(&mut self, name: &str) -> Value {
        self.expect_event_within(name, WAIT).await
    }

    pub async fn expect_event_within(&mut self, name: &str, wait: Duration) -> Value {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(i) = self.queue.iter().position(|v| v.get("event").is_some()) {
                let ev = self.queue.remove(i).unwrap();
                assert_eq!(ev["event"], json!(name), "expected event {name}, got {ev}");
                return ev.get("data").cloned().unwrap_or(Value::Null);
            }
            if !self.pump(deadline).await {
                panic!("expected event {name}; received instead: {:?}; closed: {:?}", self.queue, self.closed);
            }
        }
    }

    /// The next message that is neither a response with an id nor an event (an error frame
    /// for a malformed request).
    pub async fn expect_idless(&mut self) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(i) = self.queue.iter().position(|v| v.get("id").is_none() && v.get("event").is_none()) {
                return self.queue.remove(i).unwrap();
            }
            if !self.pump(deadline).await {
                panic!("expected an error frame without id; received: {:?}; closed: {:?}", self.queue, self.closed);
            }
        }
    }

    /// The next event, whole (`{"event":..,"data":..}`).
    pub async fn next_event(&mut self) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(i) = self.queue.iter().position(|v| v.get("event").is_some()) {
                return self.queue.remove(i).unwrap();
            }
            if !self.pump(deadline).await {
                panic!("expected an event; received instead: {:?}; closed: {:?}", self.queue, self.closed);
            }
        }
    }

    /// Nothing (no response, no event) arrives for `d`.
    pub async fn assert_no_message(&mut self, d: Duration) {
        assert!(self.queue.is_empty(), "unexpected messages: {:?}", self.queue);
        let deadline = Instant::now() + d;
        while self.pump(deadline).await {
            assert!(self.queue.is_empty(), "unexpected message: {:?}", self.queue);
        }
        assert!(self.closed.is_none(), "connection closed: {:?}", self.closed);
    }

    /// Waits until the server closes the connection; returns the close code if a close frame came.
    pub async fn expect_close(&mut self, wait: Duration) -> Option<u16> {
        let deadline = Instant::now() + wait;
        while self.closed.is_none() {
            if !self.pump(deadline).await && self.closed.is_none() {
                panic!("connection not closed within {wait:?}; received: {:?}", self.queue);
            }
        }
        match &self.closed {
            Some(Incoming::Close(Some((code, _)))) => Some(*code),
            _ => None,
        }
    }

    /// Waits for `n` pings (counted since connect).
    pub async fn expect_pings(&mut self, n: u64, wait: Duration) {
        let deadline = Instant::now() + wait;
        while self.pings < n {
            if !self.pump(deadline).await {
                panic!("received {} pings, expected {n}; closed: {:?}", self.pings, self.closed);
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.sink.send(Message::Close(None)).await;
        let _ = self.sink.close().await;
    }

    /// Drops everything received so far (noting a close).
    pub fn clear(&mut self) {
        while let Ok(item) = self.rx.try_recv() {
            match item {
                c @ (Incoming::Close(_) | Incoming::Ended(_)) => self.closed = Some(c),
                Incoming::Ping => self.pings += 1,
                _ => {}
            }
        }
        self.queue.clear();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }
}

/// A client response: `{"id":..,"result":..}` or `{"id":..,"error":..}`.
#[derive(Debug, Clone)]
pub struct Response(pub Value);

impl Response {
    pub fn result(&self) -> Value {
        assert!(self.0.get("error").is_none(), "expected a result, got {}", self.0);
        self.0.get("result").cloned().unwrap_or(Value::Null)
    }

    pub fn error(&self) -> Value {
        self.0.get("error").cloned().unwrap_or_else(|| panic!("expected an error, got {}", self.0))
    }

    pub fn error_code(&self) -> String {
        self.error()["code"].as_str().unwrap_or_else(|| panic!("error without string code: {}", self.0)).to_owned()
    }

    /// Either; for requests whose outcome the test does not care about.
    pub fn result_or_error(&self) -> Value {
        self.0.get("result").or(self.0.get("error")).cloned().unwrap_or(Value::Null)
    }

    pub fn assert_result(&self, expected: Value) {
        assert_eq!(self.result(), expected, "response {}", self.0);
    }

    pub fn assert_error(&self, code: &str) {
        assert_eq!(self.error_code(), code, "response {}", self.0);
    }
}

/// `{"code":..,"message":..}` of a predefined error.
pub fn err(code: &str, message: &str) -> Value {
    json!({"code": code, "message": message})
}

// ------------------------------------------------------------------------------------------------
// HTTP client (HTTP/1.1 over TCP, Connection: close)
// ------------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn headers_all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("HTTP body is not JSON ({e}): status {} {:?}", self.status, self.text()))
    }
}

pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    timeout(Duration::from_secs(5), http_request_inner(addr, method, path, headers, body))
        .await
        .unwrap_or_else(|_| panic!("HTTP {method} {path} timed out"))
}

async fn http_request_inner(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut s = TcpStream::connect(addr).await.expect("HTTP connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("HTTP write");
    s.write_all(body).await.expect("HTTP write body");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("HTTP read");
    parse_http_response(&buf, method == "HEAD")
}

fn parse_http_response(buf: &[u8], head: bool) -> HttpResponse {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("incomplete HTTP response: {:?}", String::from_utf8_lossy(buf)));
    let head_text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))).collect();
    let raw = &buf[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked"));
    let body = if head {
        raw.to_vec()
    } else if chunked {
        decode_chunked(raw)
    } else {
        raw.to_vec()
    };
    HttpResponse { status, headers, body }
}

fn decode_chunked(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..nl]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).expect("chunk size");
        raw = &raw[nl + 2..];
        if size == 0 {
            break;
        }
        out.extend_from_slice(&raw[..size.min(raw.len())]);
        raw = &raw[(size + 2).min(raw.len())..];
    }
    out
}

// ------------------------------------------------------------------------------------------------
// Metrics
// ------------------------------------------------------------------------------------------------

/// The value of a metric line `name{labels} value` (labels as written, e.g. `method="get"`).
pub fn metric_value(text: &str, name: &str, labels: &str) -> Option<f64> {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.rsplit_once(' ') else { continue };
        let (n, l) = match key.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (key, ""),
        };
        if n == name && (labels.is_empty() || l.split(',').any(|p| p == labels)) {
            return value.parse().ok();
        }
    }
    None
}
