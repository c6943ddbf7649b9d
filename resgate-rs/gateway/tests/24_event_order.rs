//! Ordering soak: a service that publishes an event and then replies (go-res' order for `set`,
//! `new`, auth token events) must have the event reach the calling connection before the reply,
//! every time: 1,000 rounds each for call, new, auth and HTTP POST, with other connections
//! subscribed and other traffic in flight. No timing thresholds; every wait is bounded.

mod common;

use common::gores::*;
use common::*;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const ROUNDS: u64 = 1000;

/// The soak service (`soak`): `soak.direct` and `soak.parent` -> `soak.ref` (models changed by
/// `soak.direct.set`), `soak.list` (collection of `soak.item.<n>`, grown by `new`), `soak.noise`
/// (changed by `bump`), `soak.http` (changed by `set`), `auth.soak.user.login` (token event).
#[derive(Default)]
struct Soak {
    n: u64,
    items: Vec<u64>,
    noise: u64,
    http: u64,
    /// (n of the login, token the login request carried).
    logins: Vec<(u64, Value)>,
}

fn values(n: u64) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("n".into(), json!(n));
    m
}

impl Example for Soak {
    type Change = ();
    fn name(&self) -> &'static str {
        "soak"
    }
    fn handles(&self, _rname: &str) -> bool {
        true
    }
    fn get(&mut self, rname: &str, _: &str) -> Value {
        match rname {
            "soak.direct" | "soak.ref" => model(json!({"n": self.n})),
            "soak.parent" => model(json!({"ref": {"rid": "soak.ref"}})),
            "soak.noise" => model(json!({"n": self.noise})),
            "soak.http" => model(json!({"n": self.http})),
            "soak.list" => collection(self.items.iter().map(|i| rref(&format!("soak.item.{i}"))).collect()),
            _ => match rname.strip_prefix("soak.item.").and_then(|n| n.parse::<u64>().ok()) {
                Some(n) if self.items.contains(&n) => model(json!({ "n": n })),
                _ => not_found(),
            },
        }
    }
    fn call(&mut self, rname: &str, method: &str, params: &Value, out: &mut Out<()>) -> Value {
        let n = params["n"].as_u64().unwrap_or(0);
        match (rname, method) {
            ("soak.direct", "set") => {
                self.n = n;
                out.change("soak.direct", values(n));
                out.change("soak.ref", values(n));
                ok()
            }
            ("soak.list", "new") => {
                out.add("soak.list", rref(&format!("soak.item.{n}")), self.items.len());
                self.items.push(n);
                resource(&format!("soak.item.{n}"))
            }
            ("soak.noise", "bump") => {
                self.noise += 1;
                out.change("soak.noise", values(self.noise));
                ok()
            }
            ("soak.http", "set") => {
                self.http = n;
                out.change("soak.http", values(n));
                ok()
            }
            _ => error("system.methodNotFound", "Method not found"),
        }
    }
    fn auth(&mut self, rname: &str, method: &str, req: &Value, out: &mut Out<()>) -> Value {
        if (rname, method) != ("soak.user", "login") {
            return error("system.methodNotFound", "Method not found");
        }
        let n = req["params"]["n"].as_u64().unwrap_or(0);
        self.logins.push((n, req["token"].clone()));
        out.token(req["cid"].as_str().unwrap(), json!({ "n": n }));
        ok()
    }
}

struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    /// Four more connections subscribed to everything the caller holds (their readers drain in
    /// the background) and one that keeps calling `soak.noise.bump`.
    async fn start(env: &TestEnv) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let mut c = env.client().await;
            for rid in ["soak.direct", "soak.parent", "soak.list", "soak.noise", "soak.http"] {
                c.request(&format!("subscribe.{rid}"), json!(null)).await.result();
            }
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    c.clear();
                }
            }));
        }
        let mut noisy = env.client().await;
        let s = stop.clone();
        tasks.push(tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                noisy.request("call.soak.noise.bump", json!(null)).await.result();
                noisy.clear();
            }
        }));
        Traffic { stop, tasks }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("traffic task");
        }
    }
}

async fn setup() -> (TestEnv, GoRes<Soak>, WsClient, Traffic) {
    let env = TestEnv::start_custom(|_| {}, &[]).await;
    let svc = GoRes::start(&env.nats.url(), Soak::default()).await;
    let mut c = env.client().await;
    for rid in ["soak.direct", "soak.parent", "soak.list", "soak.noise"] {
        c.request(&format!("subscribe.{rid}"), json!(null)).await.result();
    }
    let traffic = Traffic::start(&env).await;
    (env, svc, c, traffic)
}

fn has_event(frames: &[Value], expected: &Value) -> bool {
    frames.iter().any(|f| f == expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_change_events_precede_the_response() {
    let (_env, _svc, mut c, traffic) = setup().await;
    let mut late = Vec::new();
    for n in 1..=ROUNDS {
        let id = c.send("call.soak.direct.set", json!({ "n": n })).await;
        let (before, resp) = c.frames_until_response(id).await;
        resp.assert_result(json!({ "payload": null }));
        let direct = json!({"event": "soak.direct.change", "data": {"values": {"n": n}}});
        let reference = json!({"event": "soak.ref.change", "data": {"values": {"n": n}}});
        if !has_event(&before, &direct) || !has_event(&before, &reference) {
            late.push((n, before));
        }
    }
    traffic.stop().await;
    assert!(
        late.is_empty(),
        "{} of {ROUNDS} set responses came before their change events (direct + through the reference); \
         (round, frames before its response) {:?}",
        late.len(),
        &late[..late.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_add_event_precedes_the_resource_response() {
    let (_env, _svc, mut c, traffic) = setup().await;
    let mut late = Vec::new();
    for n in 0..ROUNDS {
        let id = c.send("call.soak.list.new", json!({ "n": n })).await;
        let (before, resp) = c.frames_until_response(id).await;
        let rid = format!("soak.item.{n}");
        let add = json!({"event": "soak.list.add", "data": {
            "idx": n, "value": {"rid": rid}, "models": {rid.clone(): {"n": n}},
        }});
        if !has_event(&before, &add) {
            late.push((n, before));
        }
        assert_eq!(resp.result()["rid"], json!(rid), "{resp:?}");
    }
    traffic.stop().await;
    assert!(
        late.is_empty(),
        "{} of {ROUNDS} `new` responses came before their add event; (round, frames before its response) {:?}",
        late.len(),
        &late[..late.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_token_event_precedes_the_auth_response() {
    let (_env, svc, mut c, traffic) = setup().await;
    for n in 1..=ROUNDS + 1 {
        c.request("auth.soak.user.login", json!({ "n": n })).await.assert_result(json!({ "payload": null }));
    }
    traffic.stop().await;
    let logins = svc.with(|s| s.logins.clone());
    let stale: Vec<&(u64, Value)> = logins.iter().filter(|(n, t)| *n > 1 && *t != json!({"n": n - 1})).collect();
    assert_eq!(logins.len() as u64, ROUNDS + 1);
    assert!(
        stale.is_empty(),
        "{} of {ROUNDS} requests after an auth response did not carry the token set before it: (n, token) {:?}",
        stale.len(),
        &stale[..stale.len().min(20)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_post_then_get_returns_the_new_state() {
    let (env, _svc, mut c, traffic) = setup().await;
    // Held by WebSocket clients, so the GET is answered from the cache.
    c.request("subscribe.soak.http", json!(null)).await.result();
    let mut stale = Vec::new();
    for n in 1..=ROUNDS {
        let body = serde_json::to_vec(&json!({ "n": n })).unwrap();
        let r = env.http("POST", "/api/soak/http/set", &[("Content-Type", "application/json")], &body).await;
        assert_eq!(r.status, 204, "{}", r.text());
        let g = env.http("GET", "/api/soak/http", &[], b"").await;
        assert_eq!(g.status, 200, "{}", g.text());
        if g.json() != json!({ "n": n }) {
            stale.push((n, g.json()));
        }
        c.clear();
    }
    traffic.stop().await;
    assert!(
        stale.is_empty(),
        "{} of {ROUNDS} GETs right after the POST returned the old state: (n, body) {:?}",
        stale.len(),
        &stale[..stale.len().min(20)]
    );
}
