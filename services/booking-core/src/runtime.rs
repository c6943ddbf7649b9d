//! Process plumbing shared by the service binaries: connections, the admin endpoint, signals.

use prometheus_client::registry::Registry;
use redis::aio::ConnectionManager;
use res_telemetry::admin::Health;
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

/// The connections a service runs on.
#[derive(Clone)]
pub struct Deps {
    pub nats: async_nats::Client,
    pub db: deadpool_postgres::Pool,
    pub redis: ConnectionManager,
}
