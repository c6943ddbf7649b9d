//! The fault-injection tier's harness: real nats-server, PostgreSQL and Redis (res-testkit), the
//! gateway in-process, the seats and tickets binaries as child processes (so a test can
//! `kill -9` them), WebSocket RES clients that keep their own copy of what they subscribed to,
//! and the truth read straight from PostgreSQL and Redis to compare it with.
//!
//! Signing in: the clients call `auth.faults.login` with the user to be; the harness answers it as
//! an auth service does (sets the connection token the services read, then replies), so the
//! tests need no OpenID Provider.

use booking_core::testing::{Binary, Env, token};
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// How long every subscriber may take to show the truth again after a fault.
pub const CONVERGE: Duration = Duration::from_secs(5);

/// A service binary the harness can kill and start again.
struct Proc {
    path: &'static str,
    extra: Vec<(String, String)>,
    running: Option<Binary>,
}

/// The servers, the gateway and the services.
pub struct Platform {
    pub env: Env,
    pub gateway: Option<resgate::Gateway>,
    gateway_config: resgate::Config,
    /// The harness's own NATS connection (auth answers, domain events).
    pub nats: async_nats::Client,
    procs: HashMap<String, Proc>,
    /// One platform at a time: on two cores, parallel ones would starve each other's deadlines.
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The service binaries of this crate, for [`Setup`] (`env!` of them works only in its tests).
#[macro_export]
macro_rules! binaries {
    () => {
        $crate::Binaries { seats: env!("CARGO_BIN_EXE_fault-seats"), tickets: env!("CARGO_BIN_EXE_fault-tickets") }
    };
}

/// Paths of the service binaries.
#[derive(Debug, Clone, Copy)]
pub struct Binaries {
    pub seats: &'static str,
    pub tickets: &'static str,
}

/// What a test starts.
pub struct Setup {
    pub binaries: Binaries,
    /// The gateway's `requestTimeout` (and the services' `BOOKING_REQUEST_TIMEOUT_MS`).
    pub request_timeout_ms: u64,
    pub seats: usize,
    pub tickets: usize,
    /// Extra environment for every service.
    pub service_env: Vec<(&'static str, String)>,
}

impl Setup {
    pub fn new(binaries: Binaries) -> Setup {
        Setup { binaries, request_timeout_ms: 3000, seats: 1, tickets: 1, service_env: Vec::new() }
    }
}

impl Platform {
    pub async fn start(setup: Setup) -> Platform {
        let serial = SERIAL.lock().await;
        let env = Env::start().await;
        let nats = env.nats_client().await;
        let mut gateway_config = resgate::Config {
            nats_url: env.nats.url(),
            addr: "127.0.0.1".into(),
            port: 0,
            request_timeout: setup.request_timeout_ms,
            ping_interval: 0,
            idle_timeout: 600_000,
            drain_timeout: 1000,
            ..resgate::Config::default()
        };
        gateway_config.unsubscribe_delay = 60_000;
        let mut p = Platform { env, gateway: None, gateway_config, nats, procs: HashMap::new(), _serial: serial };
        p.serve_logins().await;
        let common = vec![
            ("BOOKING_REQUEST_TIMEOUT_MS".to_owned(), setup.request_timeout_ms.to_string()),
            ("BOOKING_SWEEP_INTERVAL_MS".to_owned(), "100".to_owned()),
            // The safety-net resync would hide a missing precise reset: off here.
            ("BOOKING_RESYNC_SECS".to_owned(), "0".to_owned()),
            ("BOOKING_PURCHASE_TIMEOUT_SECS".to_owned(), "10".to_owned()),
        ];
        let with = |extra: &[(&'static str, String)]| {
            let mut e = common.clone();
            e.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
            e
        };
        for i in 0..setup.seats {
            p.add(&format!("seats{i}"), setup.binaries.seats, with(&setup.service_env));
        }
        for i in 0..setup.tickets {
            p.add(&format!("tickets{i}"), setup.binaries.tickets, with(&setup.service_env));
        }
        p.gateway = Some(
            tokio::time::timeout(Duration::from_secs(10), resgate::Gateway::start(p.gateway_config.clone()))
                .await
                .expect("gateway start within 10 s")
                .expect("gateway start"),
        );
        p
    }

    fn add(&mut self, name: &str, path: &'static str, extra: Vec<(String, String)>) {
        self.procs.insert(name.to_owned(), Proc { path, extra, running: None });
        self.start_service(name);
    }

    /// Starts a service (again) and waits until it serves.
    pub fn start_service(&mut self, name: &str) {
        let p = self.procs.get_mut(name).unwrap_or_else(|| panic!("no service {name}"));
        let extra: Vec<(&str, &str)> = p.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        p.running = Some(Binary::start(p.path, &self.env, &extra));
    }

    /// `kill -9` of a service instance.
    pub fn kill_service(&mut self, name: &str) {
        let p = self.procs.get_mut(name).unwrap_or_else(|| panic!("no service {name}"));
        drop(p.running.take());
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/", self.gateway.as_ref().expect("gateway").local_addr())
    }

    /// A signed-in client (`user` is the token's `sub`).
    pub async fn client(&self, user: &str) -> WsClient {
        let c = WsClient::connect(&self.ws_url()).await;
        c.request("auth.faults.login", json!({ "sub": user })).await.expect("login");
        c
    }

    /// Answers `auth.faults.login` as an auth service: the token first, then the reply.
    async fn serve_logins(&self) {
        let mut sub = self.nats.subscribe("auth.faults.login").await.expect("subscribe auth");
        let c = self.nats.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let req: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
                let (cid, user) =
                    (req["cid"].as_str().unwrap_or_default(), req["params"]["sub"].as_str().unwrap_or("x"));
                let body = json!({ "token": token(user, &["customer"]) });
                let _ = c.publish(format!("conn.{cid}.token"), body.to_string().into()).await;
                if let Some(reply) = m.reply {
                    let _ = c.publish(reply, r#"{"result":null}"#.into()).await;
                }
            }
        });
        // The gateway asks from another connection: the server must have the subscription first.
        res_service::Events::new(self.nats.clone()).flush().await.expect("subscription confirmed");
    }

    /// Order IDs of the domain events in the durable stream on `subject` (a subscriber's own
    /// connection may be down while NATS restarts; the stream is what consumers read).
    pub async fn domain_events(&self, subject: &str) -> Vec<String> {
        booking_core::testing::stream_events(&self.nats)
            .await
            .into_iter()
            .filter(|(s, _)| s == subject)
            .filter_map(|(_, v)| v["orderId"].as_str().map(str::to_owned))
            .collect()
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.env.redis.url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis")
    }

    /// The seat map as PostgreSQL (sold) and Redis (held) say it is now.
    pub async fn truth(&self, dep: i64) -> BTreeMap<String, Value> {
        let db = self.env.pool().get().await.expect("db");
        let seats: Vec<String> = db
            .query(
                "SELECT ls.seat_id FROM departures d JOIN trains t ON t.id = d.train_id
                   JOIN layout_seats ls ON ls.layout_id = t.layout_id WHERE d.id = $1",
                &[&dep],
            )
            .await
            .expect("seats")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let held: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("booking:held:{dep}"))
            .query_async(&mut self.redis().await)
            .await
            .expect("held seats");
        let sold: BTreeSet<String> = self.env.sold_seats(dep).await.into_iter().collect();
        seats
            .into_iter()
            .map(|s| {
                let st = if sold.contains(&s) {
                    "sold"
                } else if held.contains_key(&s) {
                    "held"
                } else {
                    "free"
                };
                (s, json!(st))
            })
            .collect()
    }

    /// Hold IDs in Redis for the departure.
    pub async fn holds_in_redis(&self, dep: i64) -> BTreeSet<String> {
        let held: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("booking:held:{dep}"))
            .query_async(&mut self.redis().await)
            .await
            .expect("held seats");
        held.into_values().collect()
    }

    /// Waits (up to [`CONVERGE`]) until every client's copy of the departure's seat map equals
    /// a fresh read of PostgreSQL and Redis; panics with the differences otherwise.
    pub async fn assert_converged(&self, dep: i64, clients: &[&WsClient]) {
        let rid = format!("seats.departure.{dep}");
        let deadline = Instant::now() + CONVERGE;
        loop {
            let truth = self.truth(dep).await;
            let wrong: Vec<(usize, Vec<String>)> = clients
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    let view = c.model(&rid);
                    let diff: Vec<String> = truth
                        .iter()
                        .filter(|(k, v)| view.get(*k) != Some(*v))
                        .map(|(k, v)| format!("{k}: shown {:?}, truth {v}", view.get(k)))
                        .collect();
                    (!diff.is_empty()).then_some((i, diff))
                })
                .collect();
            if wrong.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "views differ from the truth after {CONVERGE:?}: {wrong:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Publishes `system.reset` as a service would.
    pub async fn system_reset(&self, resources: &[&str]) {
        let body = json!({ "resources": resources });
        self.nats.publish("system.reset", body.to_string().into()).await.expect("publish reset");
        self.nats.flush().await.expect("flush");
    }
}

/// A RES error as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub code: String,
    pub message: String,
}

#[derive(Default)]
struct State {
    models: HashMap<String, BTreeMap<String, Value>>,
    /// `delete` and `unsubscribe` events received (the resource was said to be gone).
    lost: Vec<String>,
}

/// A WebSocket RES client that applies the events of what it subscribed to.
pub struct WsClient {
    out: mpsc::UnboundedSender<Message>,
    next_id: AtomicU64,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>,
    state: Arc<Mutex<State>>,
}

impl WsClient {
    pub async fn connect(url: &str) -> WsClient {
        let (ws, _) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(url))
            .await
            .expect("connect within 10 s")
            .expect("WebSocket connect");
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>> = Arc::default();
        let state: Arc<Mutex<State>> = Arc::default();
        {
            let (pending, state) = (pending.clone(), state.clone());
            tokio::spawn(async move {
                while let Some(Ok(m)) = stream.next().await {
                    let Message::Text(t) = m else { continue };
                    let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else { continue };
                    if let Some(id) = v["id"].as_u64() {
                        if let Some(tx) = pending.lock().remove(&id) {
                            let _ = tx.send(v);
                        }
                    } else if let Some(ev) = v["event"].as_str() {
                        apply_event(&mut state.lock(), ev, &v["data"]);
                    }
                }
            });
        }
        let c = WsClient { out, next_id: AtomicU64::new(1), pending, state };
        c.request("version", json!({ "protocol": "1.2.3" })).await.expect("version");
        c
    }

    /// Sends a request and waits (30 s at most) for its result or error.
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id, tx);
        let msg = json!({ "id": id, "method": method, "params": params });
        self.out.send(Message::text(msg.to_string())).expect("connection open");
        let v = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .unwrap_or_else(|_| panic!("no answer to {method} within 30 s"))
            .expect("reader alive");
        if let Some(e) = v.get("error") {
            return Err(ClientError {
                code: e["code"].as_str().unwrap_or_default().to_owned(),
                message: e["message"].as_str().unwrap_or_default().to_owned(),
            });
        }
        // Clients of protocol 1.2 get a call's or auth's result under `payload`.
        if method.starts_with("call.") || method.starts_with("auth.") {
            return Ok(v["result"]["payload"].clone());
        }
        if let Some(models) = v["result"]["models"].as_object() {
            let mut st = self.state.lock();
            for (rid, m) in models {
                let model = m.as_object().map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
                st.models.insert(rid.clone(), model.unwrap_or_default());
            }
        }
        Ok(v["result"].clone())
    }

    pub async fn subscribe(&self, rid: &str) {
        self.request(&format!("subscribe.{rid}"), Value::Null)
            .await
            .unwrap_or_else(|e| panic!("subscribe {rid}: {e:?}"));
    }

    /// This client's copy of a model.
    pub fn model(&self, rid: &str) -> BTreeMap<String, Value> {
        self.state.lock().models.get(rid).cloned().unwrap_or_default()
    }

    /// The resources this client was told were deleted or unsubscribed, with the event.
    pub fn lost(&self) -> Vec<String> {
        self.state.lock().lost.clone()
    }
}

fn apply_event(st: &mut State, event: &str, data: &Value) {
    let Some((rid, name)) = event.rsplit_once('.') else { return };
    match name {
        "change" => {
            let model = st.models.entry(rid.to_owned()).or_default();
            for (k, v) in data["values"].as_object().into_iter().flatten() {
                if v.get("action").and_then(Value::as_str) == Some("delete") {
                    model.remove(k);
                } else {
                    model.insert(k.clone(), v.clone());
                }
            }
        }
        "delete" | "unsubscribe" => st.lost.push(format!("{event} {data}")),
        _ => {}
    }
}

/// What the buyers of a workload were told.
#[derive(Debug, Default)]
pub struct Told {
    /// Holds reported made, and not reported released or bought.
    pub open_holds: BTreeSet<String>,
    /// Every hold reported made.
    pub holds: BTreeSet<String>,
    /// Orders reported placed, with the status last reported (`placed` or `cancelled`).
    pub orders: BTreeMap<String, String>,
    /// Refusals and failures by code.
    pub errors: BTreeMap<String, usize>,
}

/// Codes after which a client tries the same request again (with the same idempotency key).
fn retryable(code: &str) -> bool {
    matches!(code, "system.internalError" | "system.timeout" | "booking.busy" | "booking.purchaseInProgress")
}

/// `buyers` signed-in clients each make `rounds` rounds on the departure: hold a seat, then buy it
/// (some cancel afterwards) or release it. A failed request is retried as an app would (same
/// idempotency key), a bounded number of times. Runs in the background (so a test can break
/// things meanwhile); the handle yields what the buyers were told.
pub async fn spawn_workload(p: &Platform, dep: i64, buyers: usize, rounds: usize) -> tokio::task::JoinHandle<Told> {
    let seats: Vec<String> = p.truth(dep).await.into_keys().collect();
    let mut tasks = Vec::new();
    for b in 0..buyers {
        let c = p.client(&format!("buyer{b}")).await;
        let seats = seats.clone();
        tasks.push(tokio::spawn(async move { buyer(c, dep, b, rounds, seats).await }));
    }
    tokio::spawn(async move {
        let mut told = Told::default();
        for t in tasks {
            let t = t.await.expect("buyer task");
            told.open_holds.extend(t.open_holds);
            told.holds.extend(t.holds);
            told.orders.extend(t.orders);
            for (k, v) in t.errors {
                *told.errors.entry(k).or_default() += v;
            }
        }
        told
    })
}

async fn retrying<Fut>(told: &mut Told, mut f: impl FnMut() -> Fut) -> Result<Value, ClientError>
where
    Fut: std::future::Future<Output = Result<Value, ClientError>>,
{
    let mut last = None;
    for _ in 0..40 {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                *told.errors.entry(e.code.clone()).or_default() += 1;
                if !retryable(&e.code) {
                    return Err(e);
                }
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    Err(last.expect("at least one attempt"))
}

async fn buyer(c: WsClient, dep: i64, n: usize, rounds: usize, seats: Vec<String>) -> Told {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(n as u64);
    let mut t = Told::default();
    let map = format!("seats.departure.{dep}");
    for round in 0..rounds {
        let seat = seats[rng.random_range(0..seats.len())].clone();
        let (hold_m, release_m) = (format!("call.{map}.hold"), format!("call.{map}.release"));
        let hold_params = json!({ "seats": [seat], "idempotencyKey": format!("h{n}-{round}") });
        let hold = retrying(&mut t, || c.request(&hold_m, hold_params.clone())).await;
        let Ok(hold) = hold else { continue };
        let hold_id = hold["holdId"].as_str().expect("holdId").to_owned();
        t.holds.insert(hold_id.clone());
        t.open_holds.insert(hold_id.clone());
        if rng.random_range(0..4) == 0 {
            let r = retrying(&mut t, || c.request(&release_m, json!({ "holdId": hold_id }))).await;
            if r.is_ok() {
                t.open_holds.remove(&hold_id);
            }
            continue;
        }
        let key = format!("k{n}-{round}");
        let params =
            json!({ "departureId": dep, "holdId": hold_id, "cardNumber": "4242424242424242", "idempotencyKey": key });
        let Ok(order) = retrying(&mut t, || c.request("call.tickets.orders.purchase", params.clone())).await else {
            continue;
        };
        t.open_holds.remove(&hold_id);
        let id = order["orderId"].as_str().expect("orderId").to_owned();
        t.orders.insert(id.clone(), "placed".into());
        if rng.random_range(0..3) == 0 {
            let cancel_m = format!("call.tickets.order.{id}.cancel");
            let cancel = retrying(&mut t, || c.request(&cancel_m, Value::Null)).await;
            match cancel {
                Ok(_) => {
                    t.orders.insert(id, "cancelled".into());
                }
                // A retry of a cancel that went through the first time.
                Err(e) if e.code == "booking.alreadyCancelled" => {
                    t.orders.insert(id, "cancelled".into());
                }
                Err(_) => {}
            }
        }
    }
    t
}

impl Platform {
    /// Every order in PostgreSQL for the departure, with its status.
    pub async fn committed_orders(&self, dep: i64) -> BTreeMap<String, String> {
        let db = self.env.pool().get().await.expect("db");
        db.query("SELECT id, status FROM orders WHERE departure_id = $1", &[&dep])
            .await
            .expect("orders")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// After a workload: what buyers were told succeeded is exactly what was committed; no hold
    /// exists that no buyer was told of; every subscriber's map converges on the truth; nobody
    /// was told a seat map was deleted.
    pub async fn assert_invariants(&self, dep: i64, told: &Told, watchers: &[&WsClient]) {
        let committed = self.committed_orders(dep).await;
        assert_eq!(
            told.orders, committed,
            "orders told (left) must be the orders committed (right); errors: {:?}",
            told.errors
        );
        let orphans: Vec<String> = self.holds_in_redis(dep).await.difference(&told.holds).cloned().collect();
        assert!(orphans.is_empty(), "holds nobody was told of: {orphans:?}");
        for (i, w) in watchers.iter().enumerate() {
            assert!(w.lost().is_empty(), "watcher {i} was told a live resource is gone: {:?}", w.lost());
        }
        self.assert_converged(dep, watchers).await;
    }

    /// Every committed order has its `order.placed` event, and every cancelled one its
    /// `order.cancelled` event, within [`CONVERGE`].
    pub async fn assert_events(&self, dep: i64) {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let committed = self.committed_orders(dep).await;
            let placed: BTreeSet<String> =
                self.domain_events("booking.events.order.placed").await.into_iter().collect();
            let cancelled: BTreeSet<String> =
                self.domain_events("booking.events.order.cancelled").await.into_iter().collect();
            let missing: Vec<String> = committed
                .iter()
                .filter(|(id, st)| !placed.contains(*id) || (*st == "cancelled" && !cancelled.contains(*id)))
                .map(|(id, st)| format!("{id} ({st})"))
                .collect();
            if missing.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "committed orders without their events: {missing:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
