//! The pricing binary: config, telemetry, connections, migrations, serve until SIGTERM/Ctrl-C.

use anyhow::Context;
use booking_core::runtime::{Deps, connect_redis, shutdown_signal, spawn_admin};
use clap::Parser;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = pricing::Config::parse();
    let _telemetry = res_telemetry::init("pricing", "info")?;
    let db = booking_core::db::pool(&cfg.common.database_url()?, cfg.common.db_pool_size)?;
    booking_core::db::migrate(&db).await.context("migrate")?;
    let nats = async_nats::connect(&cfg.common.nats_url).await.context("connect to NATS")?;
    let redis = connect_redis(&cfg.common.redis_url).await.context("connect to Redis")?;
    let mut registry = Registry::default();
    let refresh = Duration::from_secs(cfg.price_refresh_secs);
    let running = pricing::start(Deps { nats, db, redis }, refresh, cfg.common.max_concurrency, &mut registry).await?;
    let health = res_telemetry::admin::Health::new(true);
    let cancel = tokio_util::sync::CancellationToken::new();
    let admin = spawn_admin(cfg.common.admin_addr, Arc::new(registry), health.clone(), cancel.clone()).await?;
    tracing::info!("pricing service running");
    shutdown_signal().await;
    tracing::info!("shutting down");
    health.set(false);
    running.shutdown().await;
    cancel.cancel();
    let _ = admin.await;
    Ok(())
}
