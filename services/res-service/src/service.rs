//! The service: routes, the NATS subscription loops, request dispatch, replies and metrics.

use crate::deadline::Deadline;
use crate::events::Events;
use crate::request::{AfterReply, Kind, Request};
use crate::resource::{CallResponse, Resource};
use crate::router::Pattern;
use futures_util::{FutureExt, StreamExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use res_protocol::ResError;
use res_protocol::service::{Access, IncomingRequest, reply};
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type HandlerFn<T> = Arc<dyn Fn(Request) -> BoxFuture<Result<T, ResError>> + Send + Sync>;

fn boxed<T, F, Fut, E>(f: F) -> HandlerFn<T>
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    E: Into<ResError>,
    T: 'static,
{
    Arc::new(move |req| {
        let fut = f(req);
        Box::pin(async move { fut.await.map_err(Into::into) })
    })
}

/// The handlers of one resource pattern.
#[derive(Clone, Default)]
pub struct Handler {
    get: Option<HandlerFn<Resource>>,
    access: Option<HandlerFn<Access>>,
    calls: HashMap<String, HandlerFn<CallResponse>>,
    auths: HashMap<String, HandlerFn<CallResponse>>,
}

impl Handler {
    pub fn new() -> Handler {
        Handler::default()
    }

    /// Answers get requests with a model or a collection.
    pub fn get<F, Fut, E>(mut self, f: F) -> Handler
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resource, E>> + Send + 'static,
        E: Into<ResError>,
    {
        self.get = Some(boxed(f));
        self
    }

    /// Answers get requests with a model built from any value serializing to a JSON object.
    pub fn get_model<F, Fut, E, T>(self, f: F) -> Handler
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<ResError>,
        T: serde::Serialize,
    {
        let f = Arc::new(f);
        self.get(move |req| {
            let f = f.clone();
            async move { Resource::model(f(req).await.map_err(Into::into)?) }
        })
    }

    /// Answers get requests with a collection built from any value serializing to a JSON array.
    pub fn get_collection<F, Fut, E, T>(self, f: F) -> Handler
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<ResError>,
        T: serde::Serialize,
    {
        let f = Arc::new(f);
        self.get(move |req| {
            let f = f.clone();
            async move { Resource::collection(f(req).await.map_err(Into::into)?) }
        })
    }

    /// Answers access requests. Without an access handler the service denies access to the
    /// resource, so that the gateway never waits for an answer that does not come.
    pub fn access<F, Fut, E>(mut self, f: F) -> Handler
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Access, E>> + Send + 'static,
        E: Into<ResError>,
    {
        self.access = Some(boxed(f));
        self
    }

    /// Answers `call.<rid>.<method>`.
    pub fn call<F, Fut, E>(mut self, method: &str, f: F) -> Handler
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<CallResponse, E>> + Send + 'static,
        E: Into<ResError>,
    {
        assert!(res_protocol::is_valid_rid_part(method), "invalid method name {method:?}");
        self.calls.insert(method.to_owned(), boxed(f));
        self
    }

    /// Answers `auth.<rid>.<method>`.
    pub fn auth<F, Fut, E>(mut self, method: &str, f: F) -> Handler
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<CallResponse, E>> + Send + 'static,
        E: Into<ResError>,
    {
        assert!(res_protocol::is_valid_rid_part(method), "invalid method name {method:?}");
        self.auths.insert(method.to_owned(), boxed(f));
        self
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: String,
    kind: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    service: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    service: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    service: String,
    kind: &'static str,
    code: String,
}

#[derive(Clone)]
struct Metrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<DurationLabels, Histogram, fn() -> Histogram>,
    calls: Family<CallLabels, Histogram, fn() -> Histogram>,
    errors: Family<ErrorLabels, Counter>,
}

/// The method label of a call: the method, unless the reply says there is no such method or
/// resource (a client must not be able to create label values).
fn method_label(method: &str, error_code: Option<&str>) -> String {
    use res_protocol::code::{INVALID_REQUEST, METHOD_NOT_FOUND, NOT_FOUND};
    let unknown = error_code.is_some_and(|c| [METHOD_NOT_FOUND, NOT_FOUND, INVALID_REQUEST].contains(&c));
    if unknown { "unknown".to_owned() } else { method.to_owned() }
}

impl Metrics {
    fn register(registry: &mut Registry) -> Metrics {
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<DurationLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        registry.register("res_service_requests", "RES requests handled, by kind and result", requests.clone());
        registry.register(
            "res_service_request_duration_seconds",
            "Time from receiving a RES request to publishing its reply",
            duration.clone(),
        );
        let calls = Family::<CallLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        registry.register(
            "res_service_call_duration_seconds",
            "Time from receiving a call to publishing its reply, by method",
            calls.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register("res_service_errors", "Error replies by RES error code (refusals included)", errors.clone());
        Metrics { requests, duration, calls, errors }
    }
}

/// Resgate's default `requestTimeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

fn duration_histogram() -> Histogram {
    // 0.5 ms .. 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// A RES service: a name (the first part of its resource IDs) and routes.
pub struct Service {
    name: String,
    routes: Vec<(Pattern, Handler)>,
    max_concurrency: usize,
    shutdown_timeout: Duration,
    request_timeout: Duration,
    metrics: Option<Metrics>,
}

/// How long the final flush of a shutdown may take: NATS may be gone.
const FINAL_FLUSH: Duration = Duration::from_secs(2);
/// How often a running service looks at its NATS connection to notice a reconnect.
const RECONNECT_POLL: Duration = Duration::from_millis(250);

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("subscribe {subject}: {source}")]
    Subscribe { subject: String, source: async_nats::SubscribeError },
    #[error("confirm subscriptions: {0}")]
    Confirm(#[from] crate::events::EventError),
}

impl Service {
    /// `name` is the service name: it handles `get.<name>.>`, `call.<name>.>`, `access.<name>.>`
    /// and `auth.<name>.>`, in a queue group of that name.
    pub fn new(name: &str) -> Service {
        assert!(res_protocol::is_valid_rid_part(name), "invalid service name {name:?}");
        Service {
            name: name.to_owned(),
            routes: Vec::new(),
            max_concurrency: 256,
            shutdown_timeout: Duration::from_secs(10),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            metrics: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds the handlers of a resource pattern. Patterns are full resource names starting with the
    /// service name: `seats.departure.$id`. Panics on an invalid pattern (a programming error).
    pub fn handle(mut self, pattern: &str, handler: Handler) -> Service {
        let p = Pattern::parse(pattern).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            pattern.starts_with(&format!("{}.", self.name)),
            "pattern {pattern:?} is outside service {:?}",
            self.name
        );
        self.routes.push((p, handler));
        // Most specific first, so that `a.b` wins over `a.$x`.
        self.routes.sort_by_key(|(p, _)| std::cmp::Reverse(p.specificity()));
        self
    }

    /// At most `n` requests are handled at once; further ones wait in NATS' buffers.
    pub fn max_concurrency(mut self, n: usize) -> Service {
        self.max_concurrency = n.max(1);
        self
    }

    /// How long callers wait for a reply (the gateway's request timeout; Resgate's default is
    /// 3 s): each request's [`Deadline`] is counted from when it reached this service. A request
    /// still waiting for a free handler at its deadline is answered `system.timeout` unhandled.
    pub fn request_timeout(mut self, d: Duration) -> Service {
        self.request_timeout = d.max(Duration::from_millis(100));
        self
    }

    /// How long [`Running::shutdown`] waits for handlers in flight.
    pub fn shutdown_timeout(mut self, d: Duration) -> Service {
        self.shutdown_timeout = d;
        self
    }

    /// Registers `res_service_requests_total{service,kind,result}`,
    /// `res_service_request_duration_seconds{service,kind}`,
    /// `res_service_call_duration_seconds{service,method}` and
    /// `res_service_errors_total{service,kind,code}`.
    pub fn with_metrics(mut self, registry: &mut Registry) -> Service {
        self.metrics = Some(Metrics::register(registry));
        self
    }

    /// Subscribes and starts serving on `client`.
    pub async fn start(self, client: async_nats::Client) -> Result<Running, StartError> {
        let mut subs = Vec::new();
        for kind in ["get", "call", "access", "auth"] {
            let subject = format!("{kind}.{}.>", self.name);
            let sub = client
                .queue_subscribe(subject.clone(), self.name.clone())
                .await
                .map_err(|source| StartError::Subscribe { subject, source })?;
            subs.push(sub);
        }
        // Requests sent right after start (from any connection) must find the subscriptions
        // registered on the server, not just written to the socket.
        crate::events::server_barrier(&client).await?;
        let events = Events::new(client.clone());
        let owned = format!("{}.>", self.name);
        let reset = OwnedResources {
            resources: self.routes.iter().any(|(_, h)| h.get.is_some()).then(|| owned.clone()),
            access: self.routes.iter().any(|(_, h)| h.access.is_some()).then_some(owned),
        };
        let shared = Arc::new(Shared {
            name: self.name,
            routes: self.routes,
            metrics: self.metrics,
            client: client.clone(),
            events: events.clone(),
            request_timeout: self.request_timeout,
        });
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let limit = Arc::new(Semaphore::new(self.max_concurrency));
        let mut loops = Vec::new();
        for mut sub in subs {
            let (shared, cancel, tracker, limit) = (shared.clone(), cancel.clone(), tracker.clone(), limit.clone());
            loops.push(tokio::spawn(async move {
                let mut draining = false;
                loop {
                    let msg = tokio::select! {
                        m = sub.next() => match m { Some(m) => m, None => break },
                        _ = cancel.cancelled(), if !draining => {
                            // Drain: stop receiving, but handle what the server already sent.
                            draining = true;
                            let _ = sub.drain().await;
                            continue;
                        }
                    };
                    // Taken off the subscription at once (waiting for a handler happens in the
                    // task), so the deadline counts from when the request arrived, not from when
                    // a busy service got round to it.
                    let deadline = shared.deadline(&msg);
                    let (shared, limit) = (shared.clone(), limit.clone());
                    tracker.spawn(async move {
                        match tokio::time::timeout_at(deadline.at(), limit.acquire_owned()).await {
                            Ok(Ok(permit)) => {
                                shared.dispatch(msg, deadline).await;
                                drop(permit);
                            }
                            Ok(Err(_)) => {}
                            Err(_) => shared.expired(msg).await,
                        }
                    });
                }
            }));
        }
        let running = Running {
            cancel,
            tracker,
            loops,
            events,
            client,
            shutdown_timeout: self.shutdown_timeout,
            owned: Arc::new(reset),
        };
        // As go-res: whatever a previous instance left in the gateways' caches (it may have died
        // between changing state and publishing the change) is fetched again.
        running.reset_all().await?;
        running.watch_reconnects();
        Ok(running)
    }
}

/// The patterns of a service's `system.reset`: its resources if it serves get requests, their
/// access if it answers access requests.
#[derive(Debug)]
struct OwnedResources {
    resources: Option<String>,
    access: Option<String>,
}

impl OwnedResources {
    async fn reset(&self, events: &Events) -> Result<(), crate::events::EventError> {
        if self.resources.is_none() && self.access.is_none() {
            return Ok(());
        }
        events
            .reset(
                &self.resources.as_deref().into_iter().collect::<Vec<_>>(),
                &self.access.as_deref().into_iter().collect::<Vec<_>>(),
            )
            .await
    }
}

/// A started service.
pub struct Running {
    cancel: CancellationToken,
    tracker: TaskTracker,
    loops: Vec<tokio::task::JoinHandle<()>>,
    events: Events,
    client: async_nats::Client,
    shutdown_timeout: Duration,
    owned: Arc<OwnedResources>,
}

impl Running {
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Publishes `system.reset` for everything the service owns (`<name>.>`): gateways fetch
    /// their cached copies again and re-check access. Done at start and after every NATS
    /// reconnect (events published while disconnected may have reached no gateway).
    pub async fn reset_all(&self) -> Result<(), crate::events::EventError> {
        self.owned.reset(&self.events).await
    }

    fn watch_reconnects(&self) {
        let (client, events, owned, cancel) =
            (self.client.clone(), self.events.clone(), self.owned.clone(), self.cancel.clone());
        self.tracker.spawn(async move {
            let mut was_connected = true;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(RECONNECT_POLL) => {}
                }
                let connected = client.connection_state() == async_nats::connection::State::Connected;
                if connected && !was_connected {
                    tracing::info!("reconnected to NATS; resetting the service's resources");
                    if let Err(e) = owned.reset(&events).await {
                        tracing::warn!(error = %e, "reset after reconnect failed");
                    }
                }
                was_connected = connected;
            }
        });
    }

    /// Drains the subscriptions, waits (bounded) for handlers in flight and flushes their replies.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let timeout = self.shutdown_timeout;
        let wait = async {
            for l in self.loops {
                let _ = l.await;
            }
            self.tracker.close();
            self.tracker.wait().await;
        };
        if tokio::time::timeout(timeout, wait).await.is_err() {
            tracing::warn!("shutdown timed out with requests in flight");
        }
        if tokio::time::timeout(FINAL_FLUSH, self.client.flush()).await.is_err() {
            tracing::warn!("final NATS flush timed out (NATS unreachable?); replies may be lost");
        }
    }
}

struct Shared {
    name: String,
    routes: Vec<(Pattern, Handler)>,
    metrics: Option<Metrics>,
    client: async_nats::Client,
    events: Events,
    request_timeout: Duration,
}

impl Shared {
    fn deadline(&self, msg: &async_nats::Message) -> Deadline {
        let reply = msg.reply.clone().map(|r| (self.client.clone(), r));
        Deadline::new(tokio::time::Instant::now(), self.request_timeout, reply)
    }

    /// A request whose caller gave up before a handler was free: answered, never handled.
    async fn expired(&self, msg: async_nats::Message) {
        let Some((kind, _)) = split_kind(msg.subject.as_str()) else { return };
        tracing::debug!(subject = %msg.subject, "request expired before a handler was free");
        if let Some(reply_to) = msg.reply {
            let body = reply::error(&ResError::new(res_protocol::code::TIMEOUT, "Request timeout"));
            let _ = self.client.publish(reply_to, body.into()).await;
        }
        if let Some(m) = &self.metrics {
            m.requests
                .get_or_create(&RequestLabels { service: self.name.clone(), kind: kind.as_str(), result: "expired" })
                .inc();
            m.errors
                .get_or_create(&ErrorLabels {
                    service: self.name.clone(),
                    kind: kind.as_str(),
                    code: res_protocol::code::TIMEOUT.to_owned(),
                })
                .inc();
        }
    }

    async fn dispatch(&self, msg: async_nats::Message, deadline: Deadline) {
        let started = Instant::now();
        let subject = msg.subject.as_str();
        let Some((kind, rest)) = split_kind(subject) else { return };
        let span = tracing::info_span!("res.request", service = %self.name, kind = kind.as_str(), subject = %subject);
        res_telemetry::trace_context::set_parent_from(&span, msg.headers.as_ref());
        let after_reply = AfterReply::default();
        let result = AssertUnwindSafe(self.handle(kind, rest, &msg.payload, deadline, after_reply.clone()))
            .catch_unwind()
            .instrument(span.clone())
            .await;
        let result = match result {
            Ok(r) => r,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                span.in_scope(|| tracing::error!(panic = %what, "handler panicked"));
                Err(ResError::internal_error())
            }
        };
        let error_code = result.as_ref().err().map(|e| e.code.to_string());
        let after_reply = result.is_ok().then(|| after_reply.take()).flatten();
        let (label, body) = match result {
            Ok(body) => ("ok", Some(body)),
            Err(e) => {
                if e.is(res_protocol::code::INTERNAL_ERROR) {
                    span.in_scope(|| tracing::warn!(error = %e, "request failed"));
                } else {
                    span.in_scope(|| tracing::debug!(error = %e, "request refused"));
                }
                ("error", Some(reply::error(&e)))
            }
        };
        if let (Some(reply_to), Some(body)) = (msg.reply, body)
            && let Err(e) = self.client.publish(reply_to, body.into()).await
        {
            span.in_scope(|| tracing::warn!(error = %e, "publish reply failed"));
        }
        if let Some(work) = after_reply {
            let client = self.client.clone();
            tokio::spawn(
                async move {
                    match crate::events::server_barrier(&client).await {
                        Ok(()) => work.await,
                        Err(e) => tracing::warn!(error = %e, "the reply was not confirmed; skipping the work after it"),
                    }
                }
                .instrument(span.clone()),
            );
        }
        if let Some(m) = &self.metrics {
            m.requests
                .get_or_create(&RequestLabels { service: self.name.clone(), kind: kind.as_str(), result: label })
                .inc();
            let elapsed = started.elapsed().as_secs_f64();
            m.duration
                .get_or_create(&DurationLabels { service: self.name.clone(), kind: kind.as_str() })
                .observe(elapsed);
            if let (Kind::Call, Some((_, method))) = (kind, rest.rsplit_once('.')) {
                let method = method_label(method, error_code.as_deref());
                m.calls.get_or_create(&CallLabels { service: self.name.clone(), method }).observe(elapsed);
            }
            if let Some(code) = error_code {
                m.errors.get_or_create(&ErrorLabels { service: self.name.clone(), kind: kind.as_str(), code }).inc();
            }
        }
    }

    fn route(&self, name: &str) -> Option<(&Handler, crate::router::PathParams)> {
        self.routes.iter().find_map(|(p, h)| p.matches(name).map(|params| (h, params)))
    }

    async fn handle(
        &self,
        kind: Kind,
        rest: &str,
        payload: &[u8],
        deadline: Deadline,
        after_reply: AfterReply,
    ) -> Result<Vec<u8>, ResError> {
        let (rid, method) = match kind {
            Kind::Get | Kind::Access => (rest, None),
            Kind::Call | Kind::Auth => match rest.rsplit_once('.') {
                Some((rid, m)) => (rid, Some(m.to_owned())),
                None => return Err(ResError::invalid_request()),
            },
        };
        let inner: IncomingRequest = if payload.is_empty() {
            IncomingRequest::default()
        } else {
            serde_json::from_slice(payload).map_err(|_| ResError::invalid_request())?
        };
        let Some((handler, path)) = self.route(rid) else {
            return Err(ResError::not_found());
        };
        let req = Request {
            kind,
            rid: rid.to_owned(),
            method: method.clone(),
            path,
            inner,
            events: self.events.clone(),
            deadline,
            after_reply,
        };
        match kind {
            Kind::Get => {
                let f = handler.get.as_ref().ok_or_else(ResError::not_found)?;
                let res = f(req).await?;
                Ok(reply::get(&res.data, res.query.as_deref()))
            }
            Kind::Access => {
                let Some(f) = handler.access.as_ref() else {
                    return Err(ResError::access_denied());
                };
                Ok(reply::access(&f(req).await?))
            }
            Kind::Call | Kind::Auth => {
                let table = if kind == Kind::Call { &handler.calls } else { &handler.auths };
                let m = method.as_deref().unwrap_or_default();
                let f = table.get(m).ok_or_else(ResError::method_not_found)?;
                Ok(match f(req).await? {
                    CallResponse::Result(v) => reply::result(&serde_json::to_vec(&v).map_err(ResError::internal)?),
                    CallResponse::Resource(rid) => reply::resource(&rid),
                })
            }
        }
    }
}

fn split_kind(subject: &str) -> Option<(Kind, &str)> {
    let (k, rest) = subject.split_once('.')?;
    let kind = match k {
        "get" => Kind::Get,
        "call" => Kind::Call,
        "auth" => Kind::Auth,
        "access" => Kind::Access,
        _ => return None,
    };
    Some((kind, rest))
}
