//! The seats binary: config, telemetry, connections, migrations, serve until SIGTERM/Ctrl-C.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    seats::run(seats::Config::parse()).await
}
