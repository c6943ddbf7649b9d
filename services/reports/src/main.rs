//! The reports binary: config, telemetry, connections, migrations, serve until SIGTERM/Ctrl-C.

use anyhow::Context;
use booking_core::runtime::serve_until_signal;
use clap::Parser;
use prometheus_client::registry::Registry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = reports::Config::parse();
    let _telemetry = res_telemetry::init("reports", "info")?;
    let db = booking_core::db::pool(&cfg.common.database_url()?, cfg.common.db_pool_size)?;
    booking_core::db::migrate(&db).await.context("migrate")?;
    let nats = async_nats::connect(&cfg.common.nats_url).await.context("connect to NATS")?;
    let mut registry = Registry::default();
    let running = reports::start(db, nats, &cfg, &mut registry).await?;
    tracing::info!("reports service running");
    serve_until_signal(cfg.common.admin_addr, registry, || running.shutdown()).await
}
