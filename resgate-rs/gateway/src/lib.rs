//! `resgate-rs`: a RES protocol gateway.
//!
//! Browsers connect over WebSocket (or plain HTTP); the gateway turns their requests into RES
//! service requests over NATS, caches the resources services return, keeps them current with
//! the services' events and fans those events out to every subscribed client.
//!
//! Map of the crate:
//! - [`config`]: Resgate's settings and flags.
//! - `nats`: requests to services (one multiplexed inbox, pre-response timeouts), reconnects.
//! - `event`: applied resource events and the outlet they reach connections through.
//! - `diff`: the events between two states of a resource.
//! - `cache`: the shared resource cache, event application, eviction.
//! - `inbox`: a connection's inbox and the routes its replies wait behind.
//! - `shared`: what connections and HTTP requests share; service requests on a client's behalf.
//! - `conn`: one client connection's state machine.
//! - `http_api`: the REST mapping.
//! - `server`: listener, WebSocket upgrade, the connection task loop.
//! - `ws`: WebSocket framing of upgraded connections.
//!
//! Imports go one way, down this list (`nats`, `metrics`, `config` and `ws` sit below all).

pub mod config;

mod cache;
mod conn;
mod diff;
mod event;
mod http_api;
mod inbox;
mod metrics;
mod nats;
mod server;
mod shared;
mod ws;

pub use config::{ApiEncoding, Config, ConfigError};

/// What the criterion benchmarks (`benches/hot_paths.rs`) drive; not an API.
#[doc(hidden)]
pub mod hot_paths;

use crate::cache::Cache;
use crate::inbox::ConnMsg;
use crate::metrics::Metrics;
use crate::nats::{ConnectionEvent, Nats, NatsSettings};
use crate::shared::Shared;
use res_protocol::pattern::ResourcePattern;
use res_protocol::service::{SystemReset, SystemTokenReset};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Nats(#[from] nats::NatsError),
    #[error("binding {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("loading TLS certificate: {0}")]
    Tls(String),
}

/// A running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Gateway {
    /// Connects to NATS, binds the HTTP/WebSocket listener (and the metrics listener) and starts
    /// serving.
    pub async fn start(mut config: Config) -> Result<Gateway, GatewayError> {
        config.prepare()?;
        let config = Arc::new(config);
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry));
        let registry = Arc::new(registry);

        let tls = match config.tls {
            true => Some(tls_acceptor(&config)?),
            false => None,
        };
        let bind_addr = if config.addr.is_empty() { "[::]".to_owned() } else { bracket(&config.addr) };
        let addr = format!("{bind_addr}:{}", config.port);
        let listener =
            TcpListener::bind(&addr).await.map_err(|source| GatewayError::Bind { addr: addr.clone(), source })?;
        let local_addr = listener.local_addr().map_err(|source| GatewayError::Bind { addr, source })?;
        let metrics_listener = match config.metrics_port {
            Some(p) => {
                let addr = format!("{bind_addr}:{p}");
                Some(TcpListener::bind(&addr).await.map_err(|source| GatewayError::Bind { addr, source })?)
            }
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());

        let (nats, conn_events) = Nats::connect(
            NatsSettings {
                url: &config.nats_url,
                creds: config.nats_creds.as_deref(),
                cert: config.nats_cert.as_deref().zip(config.nats_key.as_deref()),
                root_cas: &config.nats_root_cas,
                request_timeout: config.request_timeout(),
                buffer_size: config.buffer_size,
            },
            metrics.clone(),
        )
        .await?;
        let cache = Cache::new(
            nats.clone(),
            metrics.clone(),
            Duration::from_millis(config.unsubscribe_delay),
            config.reference_throttle,
            config.reset_throttle,
        );
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let conns = nats.subscribe("conn.>")?;
        let shared = Arc::new(Shared::new(
            config.clone(),
            cache,
            nats.clone(),
            metrics.clone(),
            shutdown_rx.clone(),
            conns.route(),
        ));

        let mut tasks = Vec::new();
        let system = nats.subscribe("system.>")?;
        tasks.push(tokio::spawn(system_events(shared.clone(), system)));
        tasks.push(tokio::spawn(conn_events_task(shared.clone(), conns)));
        tasks.push(tokio::spawn(resync_on_reconnect(shared.clone(), conn_events.subscribe())));
        tasks.push(tokio::spawn(update_gauges(shared.clone())));
        tasks.push(tokio::spawn(server::accept_loop(listener, shared.clone(), tls)));
        if let Some(l) = metrics_listener {
            let health = res_telemetry::admin::Health::new(true);
            let mut rx = shutdown_rx.clone();
            tasks.push(tokio::spawn(res_telemetry::admin::serve(l, registry, health, async move {
                let _ = rx.changed().await;
            })));
        }
        tracing::info!(%local_addr, ?metrics_addr, nats = %config.nats_url, "resgate-rs listening");
        Ok(Gateway { shared, local_addr, metrics_addr, shutdown_tx, tasks })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Stops accepting, closes every client with "going away", waits (up to the drain timeout)
    /// for them to go, then stops.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.shared.config.drain_timeout);
        while !self.shared.conns.lock().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for t in &self.tasks {
            t.abort();
        }
        // Bounded: a NATS server that went away (or stopped answering) must not hold the exit.
        if tokio::time::timeout(Duration::from_secs(2), self.shared.nats.flush()).await.is_err() {
            tracing::warn!("NATS did not confirm the last messages before shutdown");
        }
        tracing::info!("resgate-rs stopped");
    }
}

fn bracket(addr: &str) -> String {
    if addr.contains(':') { format!("[{addr}]") } else { addr.to_owned() }
}

fn tls_acceptor(config: &Config) -> Result<tokio_rustls::TlsAcceptor, GatewayError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Err(GatewayError::Tls("certificate and key files are required".into()));
    };
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| GatewayError::Tls(format!("{}: {e}", p.display())));
    let certs = rustls_pemfile::certs(&mut &read(cert)?[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| GatewayError::Tls(e.to_string()))?;
    let key = rustls_pemfile::private_key(&mut &read(key)?[..])
        .map_err(|e| GatewayError::Tls(e.to_string()))?
        .ok_or_else(|| GatewayError::Tls("no private key found".into()))?;
    let cfg = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| GatewayError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| GatewayError::Tls(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

fn patterns(list: &[String]) -> Vec<ResourcePattern> {
    list.iter()
        .filter_map(|p| {
            let parsed = ResourcePattern::parse(p);
            if parsed.is_none() {
                tracing::error!(pattern = %p, "invalid pattern in system.reset");
            }
            parsed
        })
        .collect()
}

/// `system.reset` and `system.tokenReset`.
async fn system_events(shared: Arc<Shared>, mut sub: nats::Subscription) {
    while let Some(msg) = sub.next_message().await {
        match &*msg.subject {
            "system.reset" => {
                let reset: SystemReset = if msg.payload.is_empty() {
                    SystemReset::default()
                } else {
                    match serde_json::from_slice(&msg.payload) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::error!(error = %e, "malformed system.reset");
                            continue;
                        }
                    }
                };
                let resources = patterns(&reset.resources);
                let access = Arc::new(patterns(&reset.access));
                if !access.is_empty() {
                    shared.broadcast(|| ConnMsg::AccessReset(access.clone()));
                }
                if !resources.is_empty() {
                    let cache = shared.cache.clone();
                    tokio::spawn(async move { cache.reset(&resources).await });
                }
            }
            "system.tokenReset" => match serde_json::from_slice::<SystemTokenReset>(&msg.payload) {
                Ok(r) => {
                    let r = Arc::new(r);
                    shared.broadcast(|| ConnMsg::TokenReset(r.clone()));
                }
                Err(e) => tracing::error!(error = %e, "malformed system.tokenReset"),
            },
            _ => {}
        }
    }
}

/// Routes `conn.<cid>.*` events to their connections (replies waiting behind them are let go
/// as their fences pass here).
async fn conn_events_task(shared: Arc<Shared>, mut sub: nats::Subscription) {
    while let Some(msg) = sub.next_message().await {
        server::conn_event(&shared, &msg.subject, &msg.payload);
    }
}

/// A re-validation after dropped messages waits for this long without drops, up to the maximum.
const RESYNC_SETTLE: Duration = Duration::from_millis(50);
const RESYNC_SETTLE_MAX: Duration = Duration::from_secs(2);

/// After a NATS reconnect or dropped messages, events may be lost: re-fetch every cached
/// resource and re-check every client's access, as a `system.reset` of everything would.
async fn resync_on_reconnect(shared: Arc<Shared>, mut events: tokio::sync::broadcast::Receiver<ConnectionEvent>) {
    use tokio::sync::broadcast::error::TryRecvError;
    loop {
        match events.recv().await {
            Ok(ConnectionEvent::Reconnected | ConnectionEvent::SlowConsumer)
            | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                // Let a burst of drops end first (bounded): a re-validation that starts while
                // messages are still being dropped has to be repeated. Events queued so far are
                // covered by the re-validation below, so they are taken before the drop flag is
                // cleared; a drop after that queues a new event (and so a new re-validation).
                let settle_until = tokio::time::Instant::now() + RESYNC_SETTLE_MAX;
                loop {
                    while !matches!(events.try_recv(), Err(TryRecvError::Empty | TryRecvError::Closed)) {}
                    shared.nats.resync_started();
                    tokio::time::sleep(RESYNC_SETTLE).await;
                    if !shared.nats.dropped_since_resync() || tokio::time::Instant::now() >= settle_until {
                        break;
                    }
                }
                let all = vec![ResourcePattern::parse(">").expect("valid pattern")];
                shared.cache.reset(&all).await;
                let all = Arc::new(all);
                shared.broadcast(|| ConnMsg::AccessReset(all.clone()));
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn update_gauges(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        shared.metrics.cache_subscriptions.set(shared.cache.subscription_count() as i64);
    }
}
