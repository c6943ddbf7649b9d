//! The web binary: config from `WEB_*`, serve until SIGTERM/Ctrl-C, then drain connections.

use anyhow::Context;
use clap::Parser;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = web::Config::parse();
    let _telemetry = res_telemetry::init("web", "info")?;
    let app = Arc::new(web::App::new(&cfg)?);
    if !cfg.static_dir.join("index.html").is_file() {
        tracing::warn!(dir = %cfg.static_dir.display(), "no index.html: build the front end (npm run build in services/web/app)");
    }
    let listener =
        tokio::net::TcpListener::bind(cfg.addr).await.with_context(|| format!("listen on {} (WEB_ADDR)", cfg.addr))?;
    tracing::info!(addr = %listener.local_addr()?, gateway = %cfg.gateway_url, issuer = %cfg.oidc_issuer, "web app listening");
    let cancel = CancellationToken::new();
    let server =
        tokio::spawn(web::serve(listener, app, cancel.clone(), Duration::from_millis(cfg.shutdown_timeout_ms)));
    shutdown_signal().await;
    tracing::info!("shutting down");
    cancel.cancel();
    server.await?;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
