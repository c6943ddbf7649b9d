//! The tickets binary: config, telemetry, connections, migrations, serve until SIGTERM/Ctrl-C.

use booking_core::runtime::{Deps, serve_until_signal};
use clap::Parser;
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = tickets::Config::parse();
    let _telemetry = res_telemetry::init("tickets", "info")?;
    let deps = Deps::connect(&cfg.common).await?;
    // `test` is the only provider built in (the value parser rejects others).
    let payments = Arc::new(tickets::payment::TestProvider::default());
    let mut registry = Registry::default();
    let running = tickets::start(
        deps,
        cfg.holds.clone(),
        payments,
        cfg.common.max_concurrency,
        cfg.test_abort_after_commit,
        &mut registry,
    )
    .await?;
    tracing::info!(provider = %cfg.payment_provider, "tickets service running");
    serve_until_signal(cfg.common.admin_addr, registry, || running.shutdown()).await
}
