//! The pricing binary: config, telemetry, connections, migrations, serve until SIGTERM/Ctrl-C.

use booking_core::runtime::{Deps, serve_until_signal};
use clap::Parser;
use prometheus_client::registry::Registry;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = pricing::Config::parse();
    let _telemetry = res_telemetry::init("pricing", "info")?;
    let deps = Deps::connect(&cfg.common).await?;
    let mut registry = Registry::default();
    let refresh = Duration::from_secs(cfg.price_refresh_secs);
    let running = pricing::start(deps, refresh, cfg.common.max_concurrency, &mut registry).await?;
    tracing::info!("pricing service running");
    serve_until_signal(cfg.common.admin_addr, registry, || running.shutdown()).await
}
