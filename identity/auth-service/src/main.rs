//! `identity-auth`: configuration, telemetry, admin endpoint, run until SIGTERM.

use std::sync::Arc;

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use identity_auth::IdentityAuth;
use identity_auth::config::Config;
use prometheus_client::registry::Registry;
use res_telemetry::admin::Health;
use tokio_util::sync::CancellationToken;

/// The most a shutdown may take: with NATS unreachable, nothing it waits for may ever come.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(8);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = res_telemetry::init("identity-auth", "info")?;

    // Bound first: a taken port should fail the start before anything connects.
    let admin = tokio::net::TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("bind admin address {}", config.admin_addr))?;
    let health = Health::new(false);

    let nats_health = health.clone();
    let mut options = async_nats::ConnectOptions::new()
        .name("identity-auth")
        .retry_on_initial_connect()
        .event_callback(move |event| {
            let health = nats_health.clone();
            async move {
                match event {
                    async_nats::Event::Connected => health.set(true),
                    async_nats::Event::Disconnected | async_nats::Event::Closed => health.set(false),
                    other => tracing::info!(event = %other, "nats"),
                }
            }
        });
    if let Some(creds) = &config.nats_creds {
        options = options.credentials_file(creds).await.with_context(|| format!("read {}", creds.display()))?;
    }
    // SIGTERM is honoured from here on, even while start-up waits for an unreachable NATS.
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let start = async {
        let client = options.connect(&config.nats_url).await.with_context(|| format!("connect {}", config.nats_url))?;
        let mut registry = Registry::default();
        let service = IdentityAuth::start(client.clone(), config.settings(), &mut registry).await?;
        anyhow::Ok((client, registry, service))
    };
    let (client, registry, service) = tokio::select! {
        started = start => started?,
        _ = &mut signal => {
            tracing::info!("stopped before start-up finished");
            return Ok(());
        }
    };
    health.set(true);

    let stop_admin = CancellationToken::new();
    let admin_task = tokio::spawn(res_telemetry::admin::serve(
        admin,
        Arc::new(registry),
        health.clone(),
        stop_admin.clone().cancelled_owned(),
    ));
    tracing::info!(admin = %config.admin_addr, issuer = %config.issuer_url, "identity-auth started");

    signal.await;
    tracing::info!("shutting down");
    // Unhealthy first, so the orchestrator stops routing while requests in flight finish.
    health.set(false);
    let drain = async {
        service.shutdown().await;
        let _ = client.flush().await;
    };
    if tokio::time::timeout(SHUTDOWN_LIMIT, drain).await.is_err() {
        tracing::warn!(limit = ?SHUTDOWN_LIMIT, "shutdown did not finish (NATS unreachable?); exiting anyway");
    }
    stop_admin.cancel();
    let _ = admin_task.await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
