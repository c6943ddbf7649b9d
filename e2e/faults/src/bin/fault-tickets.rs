//! The tickets binary (same `run` as `services/tickets`), built here for the fault tests.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tickets::run(tickets::Config::parse()).await
}
