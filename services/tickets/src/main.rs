//! The tickets binary: config, telemetry, connections, migrations, serve until SIGTERM/Ctrl-C.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tickets::run(tickets::Config::parse()).await
}
