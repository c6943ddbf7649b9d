//! The seats binary: config, telemetry, connections, migrations, serve until SIGTERM/Ctrl-C.

use booking_core::runtime::{Deps, serve_until_signal};
use clap::Parser;
use prometheus_client::registry::Registry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = seats::Config::parse();
    let _telemetry = res_telemetry::init("seats", "info")?;
    let deps = Deps::connect(&cfg.common).await?;
    let mut registry = Registry::default();
    let running = seats::start(deps, cfg.holds.clone(), cfg.common.max_concurrency, &mut registry).await?;
    tracing::info!("seats service running");
    serve_until_signal(cfg.common.admin_addr, registry, || running.shutdown()).await
}
