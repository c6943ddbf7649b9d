//! The `resgate-rs` binary: configuration, telemetry, serve, graceful shutdown on SIGTERM.

use clap::Parser;
use resgate::{Gateway, config::Cli};
use std::process::ExitCode;

// Measured with resbench against glibc malloc (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.version {
        println!("resgate-rs v{}\nprotocol v{}", env!("CARGO_PKG_VERSION"), res_protocol::ProtocolVersion::CURRENT);
        return ExitCode::SUCCESS;
    }
    let config = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("resgate-rs: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = match (config.trace, config.debug) {
        (true, _) => "trace",
        (_, true) => "debug",
        _ => "info",
    };
    let _telemetry = match res_telemetry::init("resgate-rs", filter) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("resgate-rs: telemetry: {e}");
            return ExitCode::FAILURE;
        }
    };
    let gateway = match Gateway::start(config).await {
        Ok(g) => g,
        Err(e) => {
            tracing::error!(error = %e, "failed to start");
            eprintln!("resgate-rs: {e}");
            return ExitCode::FAILURE;
        }
    };
    shutdown_signal().await;
    tracing::info!("shutting down");
    gateway.shutdown().await;
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
