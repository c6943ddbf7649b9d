//! The NATS side of the gateway: subscriptions that keep NATS' wire order, requests to services
//! with one multiplexed reply inbox, and the connection's lifecycle (reconnect, slow consumers).
//!
//! Order: `res-nats` calls every subscription's handler on one reader task, in wire order. The
//! handlers here only queue, so a subscription's channel holds its messages in that order.
//! A request made [`Nats::request_ordered`] has its final reply held back behind *fences*: when
//! the reply arrives, a fence is queued on each route the caller names (the subscriptions whose
//! earlier messages must be handled first), and the reply is handed over once every fence has
//! been reached by its consumer. So the reply never overtakes a message NATS delivered before
//! it on those subscriptions. The cache uses it for `get` replies among a resource's events, the
//! connections for call/auth replies behind the events of every resource they hold and their
//! token events. Resgate gets a weaker form of this by running a reply in the worker of the
//! called resource's name only.
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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    /// A reply waiting behind this point of the subscription's messages.
    Fence(Fence),
}

/// Why a request got no reply from a service.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// NATS said nobody listens on the subject (a 503 status message).
    #[error("no service is listening")]
    NoResponders,
    #[error(transparent)]
    Res(#[from] ResError),
}

impl From<RequestError> for ResError {
    fn from(e: RequestError) -> ResError {
        match e {
            // As Resgate >= 1.7.5 answers clients.
            RequestError::NoResponders => ResError::not_found(),
            RequestError::Res(e) => e,
        }
    }
}

/// A service's reply, or why there is none.
pub type ServiceReply = Result<Bytes, RequestError>;

/// Takes an ordered request's final reply once every fence has been passed.
type OnReply = Box<dyn FnOnce(ServiceReply) + Send>;

/// Chooses, when the reply arrives, the routes it must wait behind.
type PickFences = Box<dyn FnOnce(&ServiceReply) -> Fences + Send>;

/// Where a reply waits: behind every route's earlier messages; and, with a primary route, it is
/// handed over *at* its place there, as Resgate hands a reply over in the called resource's
/// worker — so that resource's events sent after the reply come after it too.
#[derive(Default)]
pub struct Fences {
    pub primary: Option<Route>,
    pub others: Vec<Route>,
}

/// What to do when a fence cannot be queued because its subscription's channel is full (the
/// subscription is dropping messages, and a re-validation will follow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Fail the reply: handling it out of place would be wrong (a `get` reply among events).
    Fail,
    /// Hand the reply over anyway: the service acted on the request, so the outcome is true.
    Pass,
}

/// How a request's waiting side is reached from the reader.
struct Waiting {
    /// Pre-responses: each extends the deadline (dropped when the waiter is behind on them).
    extend: mpsc::Sender<Option<Duration>>,
    done: tokio::sync::oneshot::Sender<ServiceReply>,
}

/// A reply held behind fences. Every fence holds a share, and so does the reader while it
/// places them. Without a primary fence the reply is let go when the last share is dropped — a
/// fence reached by its consumer, dropped with its channel when the subscription goes away, or
/// one that could not be queued. A primary fence, once reached, holds its consumer until it is
/// the last share, then lets the reply go right there.
struct Release {
    shares: AtomicUsize,
    /// Wakes the consumer waiting at the primary fence as the other shares go.
    passed: tokio::sync::Notify,
    /// A fence could not be queued on a full channel and the reply must then fail.
    failed: AtomicBool,
    run: Mutex<Option<ReleaseRun>>,
}

/// What a release runs, told whether a fence failed.
type ReleaseRun = Box<dyn FnOnce(bool) + Send>;

impl Release {
    fn run(&self) {
        let run = self.run.lock().take();
        if let Some(run) = run {
            run(self.failed.load(Ordering::Acquire));
        }
    }
}

/// One share of a held reply.
pub struct Fence {
    release: Arc<Release>,
    primary: bool,
}

impl Fence {
    fn new(release: &Arc<Release>, primary: bool) -> Fence {
        release.shares.fetch_add(1, Ordering::AcqRel);
        Fence { release: release.clone(), primary }
    }

    /// The consumer reached the fence: a primary one waits for the others, then lets the reply
    /// go here.
    async fn reached(self) {
        if self.primary {
            while self.release.shares.load(Ordering::Acquire) > 1 {
                self.release.passed.notified().await;
            }
            self.release.run();
        }
    }
}

impl Drop for Fence {
    fn drop(&mut self) {
        if self.release.shares.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.release.run();
        } else {
            self.release.passed.notify_one();
        }
    }
}

enum Pending {
    /// The reply goes straight to the waiting request.
    Direct(Waiting),
    /// The final reply waits behind fences, then `on_reply` takes it and the request returns.
    Ordered { fences: PickFences, when_full: WhenFull, waiting: Waiting, on_reply: OnReply },
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

/// A published request, waiting for its reply.
struct Sent {
    nats: Nats,
    id: u64,
    kind: &'static str,
    started: Instant,
    span: tracing::Span,
    extended: mpsc::Receiver<Option<Duration>>,
    finished: tokio::sync::oneshot::Receiver<ServiceReply>,
}

impl Sent {
    async fn wait(mut self) -> ServiceReply {
        let inner = self.nats.0.clone();
        let span = self.span.clone();
        let wait = async {
            let mut deadline = tokio::time::Instant::now() + inner.timeout;
            loop {
                tokio::select! {
                    r = &mut self.finished => break r.unwrap_or_else(|_| Err(ResError::timeout().into())),
                    Some(extend) = self.extended.recv() => {
                        if let Some(d) = extend {
                            deadline = tokio::time::Instant::now() + d;
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => {
                        // Still pending: no reply came in time. Gone from `pending`: the reply
                        // came and waits behind its fences; wait until it is let go.
                        if inner.pending.lock().remove(&self.id).is_some() {
                            break Err(ResError::timeout().into());
                        }
                        break (&mut self.finished).await.unwrap_or_else(|_| Err(ResError::timeout().into()));
                    }
                }
            }
        };
        let result = wait.instrument(span).await;
        inner
            .metrics
            .nats_request_duration
            .get_or_create(&crate::metrics::KindLabel { kind: self.kind })
            .observe(self.started.elapsed().as_secs_f64());
        if let Ok(p) = &result {
            tracing::trace!(reply = %String::from_utf8_lossy(p), "nats response");
        }
        result
    }
}

impl Drop for Sent {
    fn drop(&mut self) {
        // However it ended (reply, timeout, publish failure, or its caller gone): no reply is
        // routed to it any more.
        self.nats.0.pending.lock().remove(&self.id);
    }
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

/// Where to queue fences so that replies keep their place among a subscription's messages.
#[derive(Clone)]
pub struct Route(mpsc::Sender<Delivery>);

impl Subscription {
    pub fn route(&self) -> Route {
        self.route.clone()
    }

    /// The next message, letting replies go as their fences are reached.
    pub async fn next_message(&mut self) -> Option<Message> {
        loop {
            match self.rx.recv().await? {
                Delivery::Message(m) => return Some(m),
                Delivery::Fence(fence) => fence.reached().await,
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
    pub async fn request(&self, kind: &'static str, subject: &str, payload: Vec<u8>) -> ServiceReply {
        self.send_request(kind, subject, payload, Pending::Direct).await
    }

    /// Sends a request whose final reply is held behind fences on the routes `fences` picks when
    /// the reply arrives (see the module comment), then handed to `on_reply` by whichever
    /// consumer passes the last fence. The request is published before this returns, so
    /// requests made one after the other reach NATS in that order. The future ends once
    /// `on_reply` ran; or with the error that kept it from running (timeout, publish failure),
    /// in which case it never runs. Once the reply has arrived the request no longer times out:
    /// what remains is local work.
    pub fn request_ordered(
        &self,
        kind: &'static str,
        subject: &str,
        payload: Vec<u8>,
        fences: impl FnOnce(&ServiceReply) -> Fences + Send + 'static,
        when_full: WhenFull,
        on_reply: impl FnOnce(ServiceReply) + Send + 'static,
    ) -> impl Future<Output = Result<(), RequestError>> + Send + 'static {
        let fences: PickFences = Box::new(fences);
        let on_reply: OnReply = Box::new(on_reply);
        let sent = self.publish_request(kind, subject, payload, move |waiting| Pending::Ordered {
            fences,
            when_full,
            waiting,
            on_reply,
        });
        async move { sent?.wait().await.map(drop) }
    }

    async fn send_request(
        &self,
        kind: &'static str,
        subject: &str,
        payload: Vec<u8>,
        pending: impl FnOnce(Waiting) -> Pending,
    ) -> ServiceReply {
        self.publish_request(kind, subject, payload, pending)?.wait().await
    }

    /// Registers and publishes a request; the returned [`Sent`] waits for its reply.
    fn publish_request(
        &self,
        kind: &'static str,
        subject: &str,
        payload: Vec<u8>,
        pending: impl FnOnce(Waiting) -> Pending,
    ) -> Result<Sent, RequestError> {
        let inner = &self.0;
        if !self.subject_fits(subject.len()) {
            return Err(ResError::subject_too_long().into());
        }
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let reply = format!("{}.{id}", inner.inbox_prefix);
        let (extend, extended) = mpsc::channel(4);
        let (done, finished) = tokio::sync::oneshot::channel();
        inner.pending.lock().insert(id, pending(Waiting { extend, done }));
        tracing::trace!(subject, payload = %String::from_utf8_lossy(&payload), "nats request");
        // A child of the client request's span; its context travels in the headers, so the
        // service's handler span becomes its child.
        let span = if res_telemetry::traces_exported() {
            tracing::info_span!("nats.request", kind, subject)
        } else {
            tracing::Span::none()
        };
        let headers = res_telemetry::trace_context::nats_headers_for(&span);
        let sent = Sent { nats: self.clone(), id, kind, started: Instant::now(), span, extended, finished };
        match inner.client.publish(subject, Some(&reply), headers.as_ref(), payload.into()) {
            Ok(()) => Ok(sent),
            // `sent` is dropped: the request leaves `pending`.
            Err(e) => Err(ResError::internal(format!("publishing request: {e}")).into()),
        }
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
    /// Runs on the NATS reader task: hands a reply to its request, or fences it in.
    fn route_reply(&self, msg: Message) {
        let Some(id) = msg.subject.rsplit('.').next().and_then(|s| s.parse::<u64>().ok()) else { return };
        let reply: ServiceReply = if msg.payload.is_empty() && msg.status == Some(503) {
            Err(RequestError::NoResponders)
        } else if let Some(timeout) = parse_pre_response(&msg.payload) {
            if let Some(Pending::Direct(w) | Pending::Ordered { waiting: w, .. }) = self.pending.lock().get(&id) {
                let _ = w.extend.try_send(timeout);
            }
            return;
        } else {
            Ok(msg.payload)
        };
        let Some(pending) = self.pending.lock().remove(&id) else { return };
        match pending {
            Pending::Direct(waiting) => {
                let _ = waiting.done.send(reply);
            }
            Pending::Ordered { fences, when_full, waiting, on_reply } => {
                self.fence(reply, fences, when_full, waiting.done, on_reply);
            }
        }
    }

    /// Queues a fence on every route the reply must wait behind; the reader holds a share of
    /// its own until all are queued, so the reply cannot be let go before.
    fn fence(
        &self,
        reply: ServiceReply,
        fences: PickFences,
        when_full: WhenFull,
        done: tokio::sync::oneshot::Sender<ServiceReply>,
        on_reply: OnReply,
    ) {
        let Fences { primary, others } = fences(&reply);
        let run = move |failed: bool| {
            let reply = match failed {
                true => Err(ResError::internal("reply dropped: subscription buffer full").into()),
                false => reply,
            };
            on_reply(reply);
            let _ = done.send(Ok(Bytes::new()));
        };
        let release = Arc::new(Release {
            shares: AtomicUsize::new(0),
            passed: tokio::sync::Notify::new(),
            failed: AtomicBool::new(false),
            run: Mutex::new(Some(Box::new(run))),
        });
        let reader = Fence::new(&release, false);
        let routes = others.into_iter().map(|r| (r, false)).chain(primary.map(|r| (r, true)));
        for (route, primary) in routes {
            // A fence that cannot be queued is dropped here, and its share with it.
            if let Err(mpsc::error::TrySendError::Full(_)) =
                route.0.try_send(Delivery::Fence(Fence::new(&release, primary)))
            {
                // Dropped like any message of a full subscription; the re-validation after a
                // slow consumer repairs the rest.
                if when_full == WhenFull::Fail {
                    release.failed.store(true, Ordering::Release);
                }
                self.slow_consumer();
            }
        }
        drop(reader);
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
