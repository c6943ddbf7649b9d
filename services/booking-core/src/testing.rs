//! Test support (feature `testing`): real nats-server, PostgreSQL and Redis on loopback, a small
//! departure, and a seat-map subscriber that behaves like the gateway's cache (get, then apply the
//! change events in arrival order).

use crate::runtime::{Deps, connect_redis};
use futures_util::StreamExt;
use res_protocol::service::decode_change_event;
use res_protocol::value::ResourceData;
use res_testkit::{NatsServer, PostgresServer, RedisServer};
use std::collections::BTreeMap;
use std::time::Duration;

/// One set of servers and a migrated database.
pub struct Env {
    pub nats: NatsServer,
    pub pg: PostgresServer,
    pub redis: RedisServer,
    pub db_url: String,
}

impl Env {
    pub async fn start() -> Env {
        let (nats, pg, redis) = tokio::task::spawn_blocking(|| {
            (NatsServer::start_jetstream(), PostgresServer::start(), RedisServer::start())
        })
        .await
        .expect("start servers");
        let db_url = pg.create_database();
        let env = Env { nats, pg, redis, db_url };
        crate::db::migrate(&env.pool()).await.expect("migrate");
        env
    }

    pub fn pool(&self) -> deadpool_postgres::Pool {
        crate::db::pool(&self.db_url, 24).expect("pool")
    }

    pub async fn nats_client(&self) -> async_nats::Client {
        async_nats::connect(self.nats.url()).await.expect("connect to nats")
    }

    /// Fresh connections, as one service instance has.
    pub async fn deps(&self) -> Deps {
        Deps {
            nats: self.nats_client().await,
            db: self.pool(),
            redis: connect_redis(&self.redis.url()).await.expect("connect to redis"),
            events: crate::config::EventsConfig::default(),
        }
    }

    /// Adds a departure in two days with one car of `rows` × 4 second-class seats (and its
    /// stations, layout and train) and returns its ID.
    pub async fn small_departure(&self, id: i64, rows: i32) -> i64 {
        let client = self.pool().get().await.expect("db");
        let layout = format!("test-{id}");
        client
            .batch_execute(&format!(
                "INSERT INTO stations (id, name, lat, lon) VALUES ('TA1', 'Testheim', 50.0, 8.0), ('TB1', 'Probestadt', 50.5, 8.5)
                   ON CONFLICT DO NOTHING;
                 INSERT INTO layouts (id, name) VALUES ('{layout}', 'test');
                 INSERT INTO trains (id, name, kind, layout_id) VALUES ('T-{id}', 'T {id}', 'RE', '{layout}');
                 INSERT INTO departures (id, train_id, service_date, origin_id, destination_id, departs_at, arrives_at, distance_km)
                   VALUES ({id}, 'T-{id}', (now() + interval '2 days')::date, 'TA1', 'TB1', now() + interval '2 days',
                           now() + interval '2 days 1 hour', 120);
                 INSERT INTO departure_stops (departure_id, seq, station_id, arrives_at, departs_at, km) VALUES
                   ({id}, 0, 'TA1', NULL, now() + interval '2 days', 0),
                   ({id}, 1, 'TB1', now() + interval '2 days 1 hour', NULL, 120);"
            ))
            .await
            .expect("insert departure");
        for row in 1..=rows {
            for letter in ['A', 'B', 'C', 'D'] {
                let seat = crate::seed::seat_id(1, row, letter);
                client
                    .execute(
                        "INSERT INTO layout_seats (layout_id, seat_id, car, seat_row, letter, class) VALUES ($1, $2, 1, $3, $4, 2)",
                        &[&layout, &seat, &row, &letter.to_string()],
                    )
                    .await
                    .expect("insert seat");
            }
        }
        id
    }

    /// Waits (bounded) until the seat store has nothing in flight ([`crate::seatmap::in_flight`]):
    /// after that nothing adds to the outbox until a client acts again. A hold whose reply was
    /// lost (NATS killed) expires later and records a `seats.changed` event then.
    pub async fn holds_settled(&self, within: Duration) {
        use crate::seatmap::{InFlight, in_flight};
        let mut redis = connect_redis(&self.redis.url()).await.expect("connect to redis");
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let work = in_flight(&mut redis).await.expect("read what is in flight");
            if work == (InFlight { holds: 0, purchases: 0, unpublished: 0 }) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{work:?} still after {within:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Seats sold according to PostgreSQL, sorted.
    pub async fn sold_seats(&self, dep: i64) -> Vec<String> {
        let client = self.pool().get().await.expect("db");
        let rows = client
            .query(
                "SELECT seat_id FROM tickets WHERE departure_id = $1 AND status = 'active' ORDER BY seat_id",
                &[&dep],
            )
            .await
            .expect("query");
        rows.iter().map(|r| r.get(0)).collect()
    }
}

/// A token as the identity service sets it.
pub fn token(sub: &str, roles: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "sub": sub, "name": sub, "email": format!("{sub}@example.test"), "preferred_username": sub,
        "roles": roles, "exp": chrono::Utc::now().timestamp() + 3600,
    })
}

/// Sends a RES call like the gateway does; returns the result or the RES error.
pub async fn call(
    client: &async_nats::Client,
    rid: &str,
    method: &str,
    token: Option<&serde_json::Value>,
    params: serde_json::Value,
) -> Result<serde_json::Value, res_protocol::ResError> {
    let body = serde_json::json!({ "cid": "test-cid", "token": token, "params": params });
    let payload = final_reply(client, &format!("call.{rid}.{method}"), body, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("call.{rid}.{method}: {e}"));
    decode_call_result(&payload)
}

/// Sends a request and waits for its final reply, skipping pre-responses (`timeout:"<ms>"`) as
/// the gateway does.
async fn final_reply(
    client: &async_nats::Client,
    subject: &str,
    body: serde_json::Value,
    wait: Duration,
) -> Result<Vec<u8>, String> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.map_err(|e| e.to_string())?;
    client.publish_with_reply(subject.to_owned(), inbox, body.to_string().into()).await.map_err(|e| e.to_string())?;
    tokio::time::timeout(wait, async {
        loop {
            let msg = replies.next().await.ok_or("reply inbox closed")?;
            if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                return Err("no responders".to_owned());
            }
            if res_protocol::service::parse_pre_response(&msg.payload).is_none() {
                return Ok(msg.payload.to_vec());
            }
        }
    })
    .await
    .map_err(|_| "timeout".to_owned())?
}

fn decode_call_result(payload: &[u8]) -> Result<serde_json::Value, res_protocol::ResError> {
    match res_protocol::service::decode_call(payload).0? {
        res_protocol::service::CallResult::Payload(p) => Ok(serde_json::from_str(p.get()).expect("json")),
        res_protocol::service::CallResult::Resource(rid) => Ok(serde_json::json!({ "rid": rid })),
    }
}

/// Sends a get request; returns the resource as JSON.
pub async fn get(client: &async_nats::Client, rid: &str) -> Result<serde_json::Value, res_protocol::ResError> {
    let (name, query) = res_protocol::rid::split_query(rid);
    let msg = tokio::time::timeout(
        Duration::from_secs(30),
        client.request(format!("get.{name}"), res_protocol::service::get_request(query).into()),
    )
    .await
    .expect("reply within 30 s")
    .expect("request");
    let g = res_protocol::service::decode_get(&msg.payload)?;
    let mut out = Vec::new();
    g.data.write_client(&mut out, false);
    Ok(serde_json::from_slice(&out).expect("json"))
}

/// A model subscriber: subscribes to the resource's change events, gets the model, then applies
/// every change event in arrival order.
pub struct ModelSubscriber {
    events: async_nats::Subscriber,
    pub model: BTreeMap<String, serde_json::Value>,
    /// Change events applied so far, in order.
    pub log: Vec<BTreeMap<String, serde_json::Value>>,
}

impl ModelSubscriber {
    pub async fn start(client: &async_nats::Client, rid: &str) -> ModelSubscriber {
        let events = client.subscribe(format!("event.{rid}.change")).await.expect("subscribe");
        client.flush().await.expect("flush");
        let msg = client.request(format!("get.{rid}"), "{}".into()).await.expect("get");
        let g = res_protocol::service::decode_get(&msg.payload).expect("get result");
        let ResourceData::Model(m) = g.data else { panic!("{rid} is not a model") };
        let model = m.iter().map(|(k, v)| (k.clone(), serde_json::from_str(&v.to_string()).expect("json"))).collect();
        ModelSubscriber { events, model, log: Vec::new() }
    }

    /// Applies events until none arrives for `quiet`.
    pub async fn settle(&mut self, quiet: Duration) {
        while let Ok(Some(msg)) = tokio::time::timeout(quiet, self.events.next()).await {
            let values = decode_change_event(&msg.payload).expect("change event");
            let mut applied = BTreeMap::new();
            for (k, v) in values {
                let v: serde_json::Value = serde_json::from_str(&v.to_string()).expect("json");
                self.model.insert(k.clone(), v.clone());
                applied.insert(k, v);
            }
            self.log.push(applied);
        }
    }

    /// Waits (bounded) until `pred` holds for the model.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&BTreeMap<String, serde_json::Value>) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !pred(&self.model) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let Ok(Some(msg)) = tokio::time::timeout(left, self.events.next()).await else { return pred(&self.model) };
            let values = decode_change_event(&msg.payload).expect("change event");
            let mut applied = BTreeMap::new();
            for (k, v) in values {
                let v: serde_json::Value = serde_json::from_str(&v.to_string()).expect("json");
                self.model.insert(k.clone(), v.clone());
                applied.insert(k, v);
            }
            self.log.push(applied);
        }
        true
    }
}

/// A service binary started against the test servers, with its admin endpoint on a free port.
pub struct Binary {
    pub child: std::process::Child,
    pub admin_port: u16,
}

impl Binary {
    /// Starts `path` with the `BOOKING_*` variables pointing at `env` plus `extra`, and waits
    /// until its admin endpoint listens (it starts after the RES subscriptions).
    pub fn start(path: &str, env: &Env, extra: &[(&str, &str)]) -> Binary {
        let admin_port = res_testkit::free_port();
        let child = std::process::Command::new(path)
            .env("BOOKING_NATS_URL", env.nats.url())
            .env("BOOKING_DATABASE_URL", &env.db_url)
            .env("BOOKING_REDIS_URL", env.redis.url())
            .env("BOOKING_ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
            .env("RUST_LOG", "warn")
            .envs(extra.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start the service binary");
        assert!(res_testkit::wait_for_port(admin_port, Duration::from_secs(30)), "admin endpoint did not listen");
        Binary { child, admin_port }
    }

    /// A plain HTTP/1.0 GET on the admin endpoint: (status line, body).
    pub fn admin_get(&self, path: &str) -> (String, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.admin_port)).expect("connect admin");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("write");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read");
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (head.lines().next().unwrap_or("").to_owned(), body.to_owned())
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            assert!(std::time::Instant::now() < deadline, "no exit within 20 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A RES call like [`call`], but a transport failure (timeout, no responders, NATS down) is
/// `Err(description)` instead of a panic: for workloads that run through faults.
pub async fn try_call(
    client: &async_nats::Client,
    rid: &str,
    method: &str,
    token: &serde_json::Value,
    params: serde_json::Value,
) -> Result<Result<serde_json::Value, res_protocol::ResError>, String> {
    let body = serde_json::json!({ "cid": "test-cid", "token": token, "params": params });
    let payload = final_reply(client, &format!("call.{rid}.{method}"), body, Duration::from_secs(10)).await?;
    Ok(decode_call_result(&payload))
}

/// What a [`shop`] workload did, as its client saw it.
#[derive(Debug, Default)]
pub struct ShopLog {
    pub placed: Vec<String>,
    pub cancelled: Vec<String>,
    pub declined: usize,
}

/// Whether a failed call may be retried: the request or reply was lost, or the service had a
/// fault (the call is idempotent: purchases carry their key, a repeated cancel is refused).
fn transient(r: &Result<Result<serde_json::Value, res_protocol::ResError>, String>) -> bool {
    match r {
        Err(_) => true,
        // `purchaseInProgress`: a retry that arrived while the try whose reply was lost still runs.
        Ok(Err(e)) => matches!(
            e.code.as_ref(),
            "system.internalError" | "system.timeout" | "booking.busy" | "booking.purchaseInProgress"
        ),
        Ok(Ok(_)) => false,
    }
}

/// Retries `f` while its outcome is transient, for at most 90 s.
async fn retried<F, Fut>(mut f: F) -> Result<Result<serde_json::Value, res_protocol::ResError>, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Result<serde_json::Value, res_protocol::ResError>, String>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let r = f().await;
        if !transient(&r) || tokio::time::Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One customer buying `purchases` single seats from `seats` (theirs alone, so buyers never
/// collide), cancelling about one order in `cancel_one_in` (its seat goes back to the list) and
/// paying with a declined card about one time in `decline_one_in` (then paying again). Transient
/// failures are retried with the same idempotency key; the run is bounded by the retries.
pub async fn shop(
    client: &async_nats::Client,
    user: &str,
    seats: Vec<(i64, String)>,
    purchases: usize,
    cancel_one_in: u32,
    decline_one_in: u32,
    seed: u64,
) -> ShopLog {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tok = token(user, &["customer"]);
    let mut free: std::collections::VecDeque<(i64, String)> = seats.into();
    let mut log = ShopLog::default();
    let mut attempts = 0;
    while log.placed.len() < purchases {
        attempts += 1;
        assert!(attempts < purchases * 20, "{user}: too many failed attempts");
        let (dep, seat) = free.pop_front().expect("enough seats for the workload");
        let map = format!("seats.departure.{dep}");
        let hold = retried(|| try_call(client, &map, "hold", &tok, serde_json::json!({ "seats": [seat] }))).await;
        let hold = match hold {
            Ok(Ok(h)) => h,
            // An earlier attempt's hold whose reply was lost: try the seat again after it expires.
            Ok(Err(e)) if e.code == "booking.seatTaken" => {
                free.push_back((dep, seat));
                continue;
            }
            other => panic!("{user}: hold {dep}/{seat}: {other:?}"),
        };
        let key = format!("{user}-{attempts}");
        if decline_one_in > 0 && rng.random_range(0..decline_one_in) == 0 {
            let params = serde_json::json!({ "departureId": dep, "holdId": hold["holdId"],
                "cardNumber": "4000000000000002", "idempotencyKey": format!("{key}-declined") });
            match retried(|| try_call(client, "tickets.orders", "purchase", &tok, params.clone())).await {
                Ok(Err(e)) if e.code == "booking.paymentDeclined" => log.declined += 1,
                // The hold expired while NATS was down: the seat is free again soon.
                Ok(Err(e)) if e.code == "booking.holdExpired" => {
                    free.push_back((dep, seat));
                    continue;
                }
                other => panic!("{user}: declined purchase: {other:?}"),
            }
        }
        let params = serde_json::json!({ "departureId": dep, "holdId": hold["holdId"],
            "cardNumber": "4242424242424242", "idempotencyKey": key });
        let order = match retried(|| try_call(client, "tickets.orders", "purchase", &tok, params.clone())).await {
            Ok(Ok(o)) => o,
            // The hold expired while NATS was down: the seat is free again soon.
            Ok(Err(e)) if e.code == "booking.holdExpired" => {
                free.push_back((dep, seat));
                continue;
            }
            other => panic!("{user}: purchase: {other:?}"),
        };
        let id = order["orderId"].as_str().expect("orderId").to_owned();
        log.placed.push(id.clone());
        if cancel_one_in > 0 && rng.random_range(0..cancel_one_in) == 0 {
            let rid = format!("tickets.order.{id}");
            match retried(|| try_call(client, &rid, "cancel", &tok, serde_json::Value::Null)).await {
                Ok(Ok(_)) => {}
                // A retry of a cancel whose reply was lost.
                Ok(Err(e)) if e.code == "booking.alreadyCancelled" => {}
                other => panic!("{user}: cancel: {other:?}"),
            }
            log.cancelled.push(id);
            free.push_back((dep, seat));
        }
    }
    log
}

/// The seats of `deps` (each with `rows` rows, see [`Env::small_departure`]) dealt round-robin to
/// `buyers` lists.
pub fn deal_seats(deps: &[i64], rows: i32, buyers: usize) -> Vec<Vec<(i64, String)>> {
    let mut out = vec![Vec::new(); buyers];
    let mut i = 0;
    for &dep in deps {
        for row in 1..=rows {
            for letter in ['A', 'B', 'C', 'D'] {
                out[i % buyers].push((dep, crate::seed::seat_id(1, row, letter)));
                i += 1;
            }
        }
    }
    out
}

/// Every message of the `BOOKING_EVENTS` stream, in stream order: (subject, payload).
pub async fn stream_events(c: &async_nats::Client) -> Vec<(String, serde_json::Value)> {
    use async_nats::jetstream;
    let js = jetstream::new(c.clone());
    let mut stream = js.get_stream(crate::outbox::STREAM).await.expect("stream");
    let total = stream.info().await.expect("stream info").state.messages as usize;
    let consumer =
        stream.create_consumer(jetstream::consumer::pull::OrderedConfig::default()).await.expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("stream delivers within 10 s")
            .expect("message")
            .expect("message");
        out.push((m.subject.to_string(), serde_json::from_slice(&m.payload).expect("json payload")));
    }
    out
}
