//! The NATS side of the gateway: subscriptions that keep NATS' wire order, requests to services
//! with one multiplexed reply inbox, and the connection's lifecycle (reconnect, slow consumers).
//!
//! Order: `res-nats` calls every subscription's handler on one reader task, in wire order. The
//! handlers here only queue, so a subscription's channel holds its messages in that order, and a
//! request made [`Nats::request_via`] a subscription has its reply queued into that same channel:
//! the consumer sees the reply after every message the server sent before it, and before every
//! one sent after it. The cache relies on it for `get` replies and the resource's events, as
//! Resgate does (it reads every subscription through one Go channel).
//!
//! Differences from Resgate, on purpose:
//! - Resgate exits when NATS goes away; here the client reconnects with backoff and the gateway
//!   then re-validates its cache (see `Gateway`), so clients converge without reconnecting.
//! - Resgate subscribes a fresh inbox per request and drops replies past 256 in flight; here one
//!   wildcard inbox subscription routes every reply, with no limit but memory.

use crate::metrics::Metrics;
use bytes::Bytes;
use parking_lot::Mutex;
use res_protocol::ResError;
use res_protocol::service::parse_pre_response;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};
use tracing::Instrument;

use res_nats::Message;

/// NATS' maximum control line; a PUB line longer than this breaks the connection.
const MAX_CONTROL_LINE: usize = 4096;

/// What happened to the NATS connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// Reconnected after a loss: events may have been missed.
    Reconnected,
    /// Messages were dropped for a subscription that could not keep up.
    SlowConsumer,
}

/// What a subscription yields, in NATS wire order.
enum Delivery {
    Message(Message),
    /// The reply to a request made via this subscription, ready to run where it is received.
    Reply(Box<dyn FnOnce() + Send>),
}

/// Runs on the subscription's consumer, in order, when a routed reply arrives.
type OnReply = Box<dyn FnOnce(Result<Bytes, ResError>) -> Result<(), ResError> + Send>;

enum Reply {
    /// A pre-response: extends the deadline.
    Extend(Option<Duration>),
    Final(Result<Bytes, ResError>),
}

enum Pending {
    /// The reply goes straight to the waiting request.
    Direct(mpsc::Sender<Reply>),
    /// The final reply goes through a subscription's channel, and `on_reply` runs there.
    Via { to: mpsc::Sender<Delivery>, waiting: mpsc::Sender<Reply>, on_reply: OnReply },
}

struct Inner {
    client: res_nats::Client,
    inbox_prefix: String,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    timeout: Duration,
    /// Capacity of each subscription's channel; beyond it messages are dropped (slow consumer).
    buffer_size: usize,
    events: broadcast::Sender<ConnectionEvent>,
    /// Set by the first dropped message, cleared when the gateway starts re-validating: a burst
    /// of drops asks for one re-validation (and logs once), not one per message.
    resync_pending: AtomicBool,
    metrics: Arc<Metrics>,
}

/// A cheap handle to the NATS connection.
#[derive(Clone)]
pub struct Nats(Arc<Inner>);

/// A live subscription: its messages (and replies routed to it) in wire order. Dropping it
/// unsubscribes.
pub struct Subscription {
    rx: mpsc::Receiver<Delivery>,
    route: Route,
    _sub: res_nats::Subscription,
}

/// Where to queue replies so that they keep their place among a subscription's messages.
#[derive(Clone)]
pub struct Route(mpsc::Sender<Delivery>);

impl Subscription {
    pub fn route(&self) -> Route {
        self.route.clone()
    }

    /// The next message, running routed replies as they come.
    pub async fn next_message(&mut self) -> Option<Message> {
        loop {
            match self.rx.recv().await? {
                Delivery::Message(m) => return Some(m),
                Delivery::Reply(run) => run(),
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("connecting to NATS: {0}")]
    Connect(#[from] res_nats::ConnectError),
    #[error("subscribing on NATS: {0}")]
    Subscribe(#[from] res_nats::Error),
}

/// Connection settings taken from the gateway configuration.
pub struct NatsSettings<'a> {
    pub url: &'a str,
    pub creds: Option<&'a std::path::Path>,
    pub cert: Option<(&'a std::path::Path, &'a std::path::Path)>,
    pub root_cas: &'a [std::path::PathBuf],
    pub request_timeout: Duration,
    pub buffer_size: usize,
}

impl Nats {
    /// Connects (retrying until NATS is there) and starts routing replies. Connection events are
    /// published on the returned channel.
    pub async fn connect(
        settings: NatsSettings<'_>,
        metrics: Arc<Metrics>,
    ) -> Result<(Nats, broadcast::Sender<ConnectionEvent>), NatsError> {
        let mut opts = res_nats::Options::new(settings.url);
        opts.name = "resgate-rs".into();
        opts.no_echo = true;
        opts.creds = settings.creds.map(ToOwned::to_owned);
        opts.client_cert = settings.cert.map(|(c, k)| (c.to_owned(), k.to_owned()));
        opts.root_cas = settings.root_cas.to_vec();
        let (client, client_events) = res_nats::Client::connect(opts).await?;
        metrics.nats_connected.set(1);
        let (events, _) = broadcast::channel(16);
        let inbox_prefix = client.new_inbox();
        let nats = Nats(Arc::new(Inner {
            client,
            inbox_prefix: inbox_prefix.clone(),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            timeout: settings.request_timeout,
            buffer_size: settings.buffer_size.max(1024),
            events: events.clone(),
            resync_pending: AtomicBool::new(false),
            metrics: metrics.clone(),
        }));
        let inbox = nats.subscribe_raw(&format!("{inbox_prefix}.*"), {
            let weak = Arc::downgrade(&nats.0);
            Arc::new(move |msg: Message| {
                if let Some(inner) = weak.upgrade() {
                    inner.route_reply(msg);
                }
            })
        })?;
        tokio::spawn(watch_connection(client_events, events.clone(), metrics, inbox));
        Ok((nats, events))
    }

    /// Whether a request on `subject` fits NATS' control line (with the reply inbox).
    pub fn subject_fits(&self, subject_len: usize) -> bool {
        subject_len + self.0.inbox_prefix.len() + 24 + 32 <= MAX_CONTROL_LINE
    }

    /// Sends a request and waits for its reply, honouring pre-responses that extend the timeout.
    /// `kind` labels the latency metric (access, get, call, auth, query).
    pub async fn request(&self, kind: &'static str, subject: &str, payload: Vec<u8>) -> Result<Bytes, ResError> {
        self.send_request(kind, subject, payload, Pending::Direct).await
    }

    /// Sends a request whose final reply is queued into `route`'s subscription, in wire order
    /// among its messages, and handed to `on_reply` by whoever consumes it. Returns once
    /// `on_reply` ran, with its result; or with a timeout, in which case it never runs.
    pub async fn request_via(
        &self,
        kind: &'static str,
        subject: &str,
        payload: Vec<u8>,
        route: &Route,
        on_reply: impl FnOnce(Result<Bytes, ResError>) -> Result<(), ResError> + Send + 'static,
    ) -> Result<(), ResError> {
        let to = route.0.clone();
        let on_reply: OnReply = Box::new(on_reply);
        self.send_request(kind, subject, payload, move |waiting| Pending::Via { to, waiting, on_reply }).await.map(drop)
    }

    async fn send_request(
        &self,
        kind: &'static str,
        subject: &str,
        payload: Vec<u8>,
        pending: impl FnOnce(mpsc::Sender<Reply>) -> Pending,
    ) -> Result<Bytes, ResError> {
        let inner = &self.0;
        if !self.subject_fits(subject.len()) {
            return Err(ResError::subject_too_long());
        }
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let reply = format!("{}.{id}", inner.inbox_prefix);
        let (tx, mut rx) = mpsc::channel(4);
        inner.pending.lock().insert(id, pending(tx));
        let started = Instant::now();
        tracing::trace!(subject, payload = %String::from_utf8_lossy(&payload), "nats request");
        // A child of the client request's span; its context travels in the headers, so the
        // service's handler span becomes its child.
        let span = if res_telemetry::traces_exported() {
            tracing::info_span!("nats.request", kind, subject)
        } else {
            tracing::Span::none()
        };
        let headers = res_telemetry::trace_context::nats_headers_for(&span);
        let result = match inner.client.publish(subject, Some(&reply), headers.as_ref(), payload.into()) {
            Err(e) => Err(ResError::internal(format!("publishing request: {e}"))),
            Ok(()) => {
                let wait = async {
                    let mut deadline = tokio::time::Instant::now() + inner.timeout;
                    loop {
                        match tokio::time::timeout_at(deadline, rx.recv()).await {
                            Ok(Some(Reply::Extend(Some(d)))) => deadline = tokio::time::Instant::now() + d,
                            Ok(Some(Reply::Extend(None))) => {}
                            Ok(Some(Reply::Final(r))) => break r,
                            Ok(None) | Err(_) => break Err(ResError::timeout()),
                        }
                    }
                };
                wait.instrument(span).await
            }
        };
        inner.pending.lock().remove(&id);
        inner
            .metrics
            .nats_request_duration
            .get_or_create(&crate::metrics::KindLabel { kind })
            .observe(started.elapsed().as_secs_f64());
        if let Ok(p) = &result {
            tracing::trace!(subject, reply = %String::from_utf8_lossy(p), "nats response");
        }
        result
    }

    /// Subscribes to `subject`; see [`Subscription`].
    pub fn subscribe(&self, subject: &str) -> Result<Subscription, NatsError> {
        let (tx, rx) = mpsc::channel(self.0.buffer_size);
        let weak = Arc::downgrade(&self.0);
        let queue = tx.clone();
        let sub = self.subscribe_raw(
            subject,
            Arc::new(move |msg: Message| {
                if queue.try_send(Delivery::Message(msg)).is_err()
                    && let Some(inner) = weak.upgrade()
                {
                    inner.slow_consumer();
                }
            }),
        )?;
        Ok(Subscription { rx, route: Route(tx), _sub: sub })
    }

    fn subscribe_raw(&self, subject: &str, handler: res_nats::Handler) -> Result<res_nats::Subscription, NatsError> {
        Ok(self.0.client.subscribe(subject, handler)?)
    }

    /// Marks the start of a re-validation: messages dropped from now on ask for another one.
    pub fn resync_started(&self) {
        self.0.resync_pending.store(false, Ordering::Release);
    }

    /// Whether a message was dropped since [`Nats::resync_started`].
    pub fn dropped_since_resync(&self) -> bool {
        self.0.resync_pending.load(Ordering::Acquire)
    }

    /// Waits until everything published so far reached the server.
    pub async fn flush(&self) {
        let _ = self.0.client.flush().await;
    }
}

impl Inner {
    /// Runs on the NATS reader task: hands a reply to its request, or queues it on its route.
    fn route_reply(&self, msg: Message) {
        let Some(id) = msg.subject.rsplit('.').next().and_then(|s| s.parse::<u64>().ok()) else { return };
        let reply = if msg.payload.is_empty() && msg.status == Some(503) {
            // Resgate >= 1.7.5: nobody listens on the subject, so fail at once.
            Reply::Final(Err(ResError::not_found()))
        } else if let Some(timeout) = parse_pre_response(&msg.payload) {
            Reply::Extend(timeout)
        } else {
            Reply::Final(Ok(msg.payload))
        };
        let mut pending = self.pending.lock();
        match (pending.get(&id), reply) {
            (None, _) => {}
            (Some(Pending::Direct(waiting) | Pending::Via { waiting, .. }), Reply::Extend(t)) => {
                let _ = waiting.try_send(Reply::Extend(t));
            }
            (Some(Pending::Direct(waiting)), Reply::Final(r)) => {
                let _ = waiting.try_send(Reply::Final(r));
            }
            (Some(Pending::Via { .. }), Reply::Final(r)) => {
                let Some(Pending::Via { to, waiting, on_reply }) = pending.remove(&id) else { unreachable!() };
                drop(pending);
                let requester = waiting.clone();
                let run = Box::new(move || {
                    let done = on_reply(r).map(|()| Bytes::new());
                    let _ = waiting.try_send(Reply::Final(done));
                });
                if to.try_send(Delivery::Reply(run)).is_err() {
                    // Dropped like any message of a full subscription: the request fails now
                    // (not at its timeout), and the resync after a slow consumer repairs the rest.
                    let _ = requester
                        .try_send(Reply::Final(Err(ResError::internal("reply dropped: subscription buffer full"))));
                    self.slow_consumer();
                }
            }
        }
    }

    fn slow_consumer(&self) {
        self.metrics.nats_slow_consumer.inc();
        if !self.resync_pending.swap(true, Ordering::AcqRel) {
            tracing::error!("NATS slow consumer: messages were dropped; re-validating the cache");
            let _ = self.events.send(ConnectionEvent::SlowConsumer);
        }
    }
}

/// Follows the client's connection events (and keeps the reply inbox subscribed).
async fn watch_connection(
    mut client_events: broadcast::Receiver<res_nats::Event>,
    events: broadcast::Sender<ConnectionEvent>,
    metrics: Arc<Metrics>,
    _inbox: res_nats::Subscription,
) {
    loop {
        match client_events.recv().await {
            Ok(res_nats::Event::Connected) => {
                metrics.nats_connected.set(1);
            }
            Ok(res_nats::Event::Reconnected) => {
                metrics.nats_connected.set(1);
                metrics.nats_reconnects.inc();
                tracing::info!("reconnected to NATS; re-validating the cache");
                let _ = events.send(ConnectionEvent::Reconnected);
            }
            Ok(res_nats::Event::Disconnected) => {
                metrics.nats_connected.set(0);
                tracing::warn!("lost the NATS connection; reconnecting");
            }
            Ok(res_nats::Event::ServerError(e)) => tracing::warn!(error = %e, "NATS server error"),
            Ok(res_nats::Event::LameDuck) => tracing::warn!("NATS server entering lame duck mode"),
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
