//! The catalog binary: config, telemetry, migrations and seed, serve until SIGTERM/Ctrl-C.

use anyhow::Context;
use booking_core::runtime::serve_until_signal;
use clap::Parser;
use prometheus_client::registry::Registry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = catalog::Config::parse();
    let _telemetry = res_telemetry::init("catalog", "info")?;
    let db = booking_core::db::pool(&cfg.common.database_url()?, cfg.common.db_pool_size)?;
    let nats = async_nats::connect(&cfg.common.nats_url).await.context("connect to NATS")?;
    let seed_from = cfg.seed.then(|| cfg.seed_start_date.unwrap_or_else(|| chrono::Utc::now().date_naive()));
    let mut registry = Registry::default();
    let running = catalog::start(nats, db, seed_from, cfg.common.max_concurrency, &mut registry).await?;
    tracing::info!("catalog service running");
    serve_until_signal(cfg.common.admin_addr, registry, || running.shutdown()).await
}
