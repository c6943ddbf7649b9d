//! The admin endpoint: `/metrics` in OpenMetrics text and `/healthz`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;

/// OpenMetrics content type, as Resgate serves it.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Health reported by `/healthz`: 200 while healthy, 503 otherwise.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<AtomicBool>);

impl Health {
    pub fn new(healthy: bool) -> Health {
        Health(Arc::new(AtomicBool::new(healthy)))
    }
    pub fn set(&self, healthy: bool) {
        self.0.store(healthy, Ordering::Relaxed);
    }
    pub fn is_healthy(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Renders a registry as OpenMetrics text.
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(4096);
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String cannot fail");
    out
}

/// Serves the admin endpoint on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
        };
        let registry = registry.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = respond(req.uri().path(), &registry, &health);
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn respond(path: &str, registry: &Registry, health: &Health) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (StatusCode::OK, OPENMETRICS_CONTENT_TYPE, render(registry)),
        "/healthz" | "/readyz" if health.is_healthy() => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/healthz" | "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", "unhealthy\n".to_owned()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".to_owned()),
    };
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}
