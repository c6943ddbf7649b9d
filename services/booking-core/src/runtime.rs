//! Process plumbing shared by the service binaries: connections, the admin endpoint, signals.

use crate::config::{CommonConfig, EventsConfig};
use anyhow::Context;
use prometheus_client::registry::Registry;
use redis::aio::ConnectionManager;
use res_telemetry::admin::Health;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub async fn connect_redis(url: &str) -> Result<ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(url)?;
    ConnectionManager::new(client).await
}

/// Binds and serves `/metrics` and `/healthz` until `cancel` fires.
pub async fn spawn_admin(
    addr: SocketAddr,
    registry: Arc<Registry>,
    health: Health,
    cancel: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "admin endpoint listening");
    Ok(tokio::spawn(res_telemetry::admin::serve(listener, registry, health, async move { cancel.cancelled().await })))
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The connections a service runs on, and where its domain events go.
#[derive(Clone)]
pub struct Deps {
    pub nats: async_nats::Client,
    pub db: deadpool_postgres::Pool,
    pub redis: ConnectionManager,
    pub events: EventsConfig,
}

/// Why a booking service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Service(#[from] res_service::StartError),
    #[error(transparent)]
    Events(#[from] crate::outbox::OutboxError),
}

impl Deps {
    /// Connects to PostgreSQL (and applies the migrations), NATS and Redis as `common` says.
    pub async fn connect(common: &CommonConfig) -> anyhow::Result<Deps> {
        let db = crate::db::pool(&common.database_url()?, common.db_pool_size)?;
        crate::db::migrate(&db).await.context("migrate")?;
        let nats = async_nats::connect(&common.nats_url).await.context("connect to NATS")?;
        let redis = connect_redis(&common.redis_url).await.context("connect to Redis")?;
        Ok(Deps { nats, db, redis, events: common.events.clone() })
    }
}

/// Serves `/metrics` (from `registry`) and `/healthz` on `admin_addr` until SIGTERM or Ctrl-C;
/// then reports unhealthy, runs `drain` (the service's own shutdown) and stops the endpoint.
pub async fn serve_until_signal<F: Future<Output = ()>>(
    admin_addr: SocketAddr,
    registry: Registry,
    drain: impl FnOnce() -> F,
) -> anyhow::Result<()> {
    let health = Health::new(true);
    let cancel = CancellationToken::new();
    let admin = spawn_admin(admin_addr, Arc::new(registry), health.clone(), cancel.clone()).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    health.set(false);
    drain().await;
    cancel.cancel();
    let _ = admin.await;
    Ok(())
}
