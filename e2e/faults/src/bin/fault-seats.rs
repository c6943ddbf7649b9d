//! The seats binary (same `run` as `services/seats`), built here for the fault tests.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    seats::run(seats::Config::parse()).await
}
