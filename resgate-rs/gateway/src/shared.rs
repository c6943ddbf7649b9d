//! What every connection and HTTP request shares: configuration, cache, NATS, metrics, the live
//! connections; the service requests made on a client's behalf and the HTTP helpers both
//! fronts use.

use crate::cache::Cache;
use crate::config::Config;
use crate::inbox::{ConnMsg, ConnTx};
use crate::metrics::Metrics;
use crate::nats::{Fences, Nats, Route, ServiceReply, WhenFull};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use parking_lot::Mutex;
use res_protocol::ResError;
use res_protocol::rid::split_query;
use res_protocol::service::{self, Access, CallResult, HttpContext, Meta, RequestFields, TokenEvent};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot, watch};

pub type Body = Full<Bytes>;

/// What every connection and request handler shares.
pub struct Shared {
    pub config: Arc<Config>,
    pub cache: Cache,
    pub nats: Nats,
    pub metrics: Arc<Metrics>,
    /// Live connections by connection ID, for `conn.<cid>.*` events and broadcasts.
    pub conns: Mutex<HashMap<Arc<str>, ConnTx>>,
    next_conn: AtomicU64,
    pub shutdown: watch::Receiver<bool>,
    /// The `conn.>` subscription's route: replies to a connection's requests wait behind the
    /// token events NATS delivered before them.
    conn_route: Route,
}

/// A call or auth reply as the service gave it.
pub type CallReply = (Result<CallResult, ResError>, Option<Meta>);

impl Shared {
    pub fn new(
        config: Arc<Config>,
        cache: Cache,
        nats: Nats,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
        conn_route: Route,
    ) -> Shared {
        Shared {
            config,
            cache,
            nats,
            metrics,
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            shutdown,
            conn_route,
        }
    }

    /// An access request for a resource (`key` as services see it).
    pub async fn access(&self, key: &str, payload: Vec<u8>) -> Result<Access, ResError> {
        self.access_meta(key, payload).await.0
    }

    pub async fn access_meta(&self, key: &str, payload: Vec<u8>) -> (Result<Access, ResError>, Option<Meta>) {
        let (name, _) = split_query(key);
        match self.nats.request("access", &format!("access.{name}"), payload).await {
            Ok(p) => service::decode_access(&p),
            Err(e) => (Err(e.into()), None),
        }
    }

    /// A call or auth request on the resource `key` (as services see it). `deliver` takes the
    /// reply exactly once, on whichever task lets it go: never before the events NATS delivered
    /// ahead of it for the called resource and for the resource the reply names, nor, for a
    /// connection, before its token events and the events of every resource it holds. A service
    /// that publishes an event and then replies is therefore seen in that order, as with
    /// Resgate (which orders a reply after the called resource's events only). The request is
    /// published before this returns (requests keep the order they are made in); the future
    /// ends once `deliver` ran.
    pub fn call_ordered(
        &self,
        subject: &str,
        payload: Vec<u8>,
        conn: Option<&ConnTx>,
        key: &str,
        deliver: impl FnOnce(CallReply) + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let kind = if subject.starts_with("auth.") { "auth" } else { "call" };
        let slot = Arc::new(Mutex::new(Some(deliver)));
        let in_order = slot.clone();
        let sent = self.nats.request_ordered(
            kind,
            subject,
            payload,
            self.fences_for(conn, key),
            WhenFull::Pass,
            move |reply| {
                if let Some(deliver) = in_order.lock().take() {
                    deliver(decode_call_reply(reply));
                }
            },
        );
        async move {
            if let Err(e) = sent.await
                && let Some(deliver) = slot.lock().take()
            {
                deliver((Err(e.into()), None));
            }
        }
    }

    /// [`Shared::call_ordered`] for a caller that waits for the reply.
    pub async fn call_waiting(&self, subject: &str, payload: Vec<u8>, conn: Option<&ConnTx>, key: &str) -> CallReply {
        let (tx, rx) = oneshot::channel();
        self.call_ordered(subject, payload, conn, key, move |reply| {
            let _ = tx.send(reply);
        })
        .await;
        rx.await.unwrap_or_else(|_| (Err(ResError::internal("reply lost")), None))
    }

    /// Picks, when a reply arrives, the routes it must wait behind (see `call_ordered`): it is
    /// handed over at its place among the called resource's events.
    fn fences_for(&self, conn: Option<&ConnTx>, key: &str) -> impl FnOnce(&ServiceReply) -> Fences + Send + 'static {
        let cache = self.cache.clone();
        let conn = conn.map(|c| (c.clone(), self.conn_route.clone()));
        let name = split_query(key).0.to_owned();
        move |reply| {
            let mut others = Vec::new();
            if let Some((conn, conn_route)) = conn {
                others.push(conn_route);
                conn.held_routes(&mut others);
            }
            if let Ok(p) = reply
                && let (Ok(CallResult::Resource(rid)), _) = service::decode_call(p)
            {
                others.extend(cache.route_of_name(split_query(&rid).0));
            }
            Fences { primary: cache.route_of_name(&name), others }
        }
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues a message to every connection.
    pub fn broadcast(&self, make: impl Fn() -> ConnMsg) {
        for tx in self.conns.lock().values() {
            tx.send(make());
        }
    }

    /// Whether the request's Origin is allowed (no Origin, or `null`, always is).
    pub fn origin_allowed(&self, origin: Option<&HeaderValue>) -> bool {
        let allow = &self.config.allow_origin;
        match origin.and_then(|o| o.to_str().ok()) {
            None | Some("null") => true,
            Some(o) => allow.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(o)),
        }
    }

    /// Calls a header-auth method (headerAuth / wsHeaderAuth) for a connection being set up,
    /// registered under `cid` with inbox `tx`/`rx`; returns the reply and the last token the
    /// service set before replying.
    pub async fn header_auth(
        &self,
        method: &str,
        cid: &str,
        http: &HttpContext,
        tx: &ConnTx,
        rx: &mut mpsc::UnboundedReceiver<ConnMsg>,
    ) -> (CallReply, Option<TokenEvent>) {
        let (rid, m) = method.rsplit_once('.').expect("validated at start");
        let rid = res_protocol::rid::replace_cid(rid, cid);
        let (name, query) = split_query(&rid);
        let payload = RequestFields { cid, token: None, query, params: None, is_http: true }.encode_with(Some(http));
        let reply = self.call_waiting(&format!("auth.{name}.{m}"), payload, Some(tx), &rid).await;
        // The reply waited behind the connection's token events: they are all queued by now.
        let mut token = None;
        while let Ok(msg) = rx.try_recv() {
            if let ConnMsg::Token(t) = msg {
                token = Some(*t);
            }
        }
        (reply, token)
    }
}

fn decode_call_reply(reply: ServiceReply) -> CallReply {
    match reply {
        Ok(p) => service::decode_call(&p),
        Err(e) => (Err(e.into()), None),
    }
}

/// A connection ID: 20 characters of base32hex, like Resgate's xid-based IDs.
pub fn new_cid() -> Arc<str> {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
    let mut bits: u128 = rand::random();
    let mut s = String::with_capacity(20);
    for _ in 0..20 {
        s.push(ALPHABET[(bits & 31) as usize] as char);
        bits >>= 5;
    }
    Arc::from(s)
}

pub fn simple(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// The HTTP context services see in auth requests.
pub fn http_context<B>(req: &Request<B>, remote: SocketAddr) -> HttpContext {
    let mut header: service::Header = service::Header::new();
    for (name, value) in req.headers() {
        if let Ok(v) = value.to_str() {
            header.entry(service::canonical_header_key(name.as_str())).or_default().push(v.to_owned());
        }
    }
    HttpContext {
        header,
        host: req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default().to_owned(),
        remote_addr: remote.to_string(),
        uri: req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into()),
    }
}
