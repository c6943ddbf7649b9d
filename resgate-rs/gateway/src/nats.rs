//! The NATS side of the gateway: requests to services with one multiplexed reply inbox, and the
//! connection's lifecycle (reconnect, slow consumers).
//!
//! Differences from Resgate, on purpose:
//! - Resgate exits when NATS goes away; here the client reconnects with backoff and the gateway
//!   then re-validates its cache (see `Gateway`), so clients converge without reconnecting.
//! - Resgate subscribes a fresh inbox per request and drops replies past 256 in flight; here one
//!   wildcard inbox subscription routes every reply, with no limit but memory.

use crate::metrics::Metrics;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use res_protocol::ResError;
use res_protocol::service::parse_pre_response;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};
use tracing::Instrument;

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

enum Reply {
    /// A pre-response: extends the deadline.
    Extend(Option<Duration>),
    Final(Result<Bytes, ResError>),
}

struct Inner {
    client: async_nats::Client,
    inbox_prefix: String,
    pending: Mutex<HashMap<u64, mpsc::Sender<Reply>>>,
    next_id: AtomicU64,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

/// A cheap handle to the NATS connection.
#[derive(Clone)]
pub struct Nats(Arc<Inner>);

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("connecting to NATS at {url}: {source}")]
    Connect { url: String, source: async_nats::ConnectError },
    #[error("reading NATS credentials: {0}")]
    Credentials(std::io::Error),
    #[error("subscribing on NATS: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
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
        let (events_tx, _) = broadcast::channel(16);
        let tx = events_tx.clone();
        let m = metrics.clone();
        // The first Connected event is the initial connection, not a reconnect.
        let was_disconnected = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut opts = async_nats::ConnectOptions::new()
            .name("resgate-rs")
            .no_echo()
            .subscription_capacity(settings.buffer_size.max(1024))
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                // 0, 100 ms, 200 ms, 400 ms ... capped at 2 s: fast first retries, then backoff.
                let ms = if attempts == 0 { 0 } else { (100u64 << attempts.min(5).saturating_sub(1)).min(2000) };
                Duration::from_millis(ms)
            })
            .event_callback(move |event| {
                let tx = tx.clone();
                let m = m.clone();
                let was_disconnected = was_disconnected.clone();
                async move { on_event(event, &tx, &m, &was_disconnected) }
            });
        if let Some(creds) = settings.creds {
            opts = opts.credentials_file(creds).await.map_err(NatsError::Credentials)?;
        }
        if let Some((cert, key)) = settings.cert {
            opts = opts.add_client_certificate(cert.to_path_buf(), key.to_path_buf());
        }
        for ca in settings.root_cas {
            opts = opts.add_root_certificates(ca.clone());
        }
        let client = opts
            .connect(settings.url)
            .await
            .map_err(|source| NatsError::Connect { url: settings.url.to_owned(), source })?;
        metrics.nats_connected.set(1);
        let inbox_prefix = client.new_inbox();
        let sub = client.subscribe(format!("{inbox_prefix}.*")).await?;
        let inner = Arc::new(Inner {
            client,
            inbox_prefix,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            timeout: settings.request_timeout,
            metrics,
        });
        tokio::spawn(route_replies(Arc::downgrade(&inner), sub));
        Ok((Nats(inner), events_tx))
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.0.client
    }

    /// Whether a request on `subject` fits NATS' control line (with the reply inbox).
    pub fn subject_fits(&self, subject_len: usize) -> bool {
        subject_len + self.0.inbox_prefix.len() + 24 + 32 <= MAX_CONTROL_LINE
    }

    /// Sends a request and waits for its reply, honouring pre-responses that extend the timeout.
    /// `kind` labels the latency metric (access, get, call, auth, query).
    pub async fn request(&self, kind: &'static str, subject: &str, payload: Vec<u8>) -> Result<Bytes, ResError> {
        let inner = &self.0;
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        if !self.subject_fits(subject.len()) {
            return Err(ResError::subject_too_long());
        }
        let reply = format!("{}.{id}", inner.inbox_prefix);
        let (tx, mut rx) = mpsc::channel(4);
        inner.pending.lock().insert(id, tx);
        let started = Instant::now();
        tracing::trace!(subject, payload = %String::from_utf8_lossy(&payload), "nats request");
        // A child of the client request's span; its context travels in the headers, so the
        // service's handler span becomes its child.
        let span = if res_telemetry::traces_exported() {
            tracing::info_span!("nats.request", kind, subject)
        } else {
            tracing::Span::none()
        };
        let headers = res_telemetry::trace_context::headers_for(&span);
        let sent = match headers {
            Some(h) => inner.client.publish_with_reply_and_headers(subject.to_owned(), reply, h, payload.into()).await,
            None => inner.client.publish_with_reply(subject.to_owned(), reply, payload.into()).await,
        };
        let result = match sent {
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

    pub async fn subscribe(&self, subject: String) -> Result<async_nats::Subscriber, NatsError> {
        Ok(self.0.client.subscribe(subject).await?)
    }
}

fn on_event(
    event: async_nats::Event,
    tx: &broadcast::Sender<ConnectionEvent>,
    metrics: &Metrics,
    was_disconnected: &std::sync::atomic::AtomicBool,
) {
    match event {
        async_nats::Event::Connected if !was_disconnected.swap(false, Ordering::Relaxed) => {
            metrics.nats_connected.set(1);
        }
        async_nats::Event::Connected => {
            metrics.nats_connected.set(1);
            metrics.nats_reconnects.inc();
            tracing::info!("reconnected to NATS; re-validating the cache");
            let _ = tx.send(ConnectionEvent::Reconnected);
        }
        async_nats::Event::Disconnected => {
            was_disconnected.store(true, Ordering::Relaxed);
            metrics.nats_connected.set(0);
            tracing::warn!("lost the NATS connection; reconnecting");
        }
        async_nats::Event::SlowConsumer(sid) => {
            metrics.nats_slow_consumer.inc();
            tracing::error!(sid, "NATS slow consumer: messages were dropped; re-validating the cache");
            let _ = tx.send(ConnectionEvent::SlowConsumer);
        }
        other => tracing::warn!(event = %other, "NATS event"),
    }
}

async fn route_replies(inner: std::sync::Weak<Inner>, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        let Some(inner) = inner.upgrade() else { return };
        let Some(id) = msg.subject.rsplit('.').next().and_then(|s| s.parse::<u64>().ok()) else { continue };
        let Some(tx) = inner.pending.lock().get(&id).cloned() else { continue };
        let reply = if msg.payload.is_empty() && msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            // Resgate >= 1.7.5: nobody listens on the subject, so fail at once.
            Reply::Final(Err(ResError::not_found()))
        } else if let Some(timeout) = parse_pre_response(&msg.payload) {
            Reply::Extend(timeout)
        } else {
            Reply::Final(Ok(msg.payload))
        };
        let _ = tx.try_send(reply);
    }
}
