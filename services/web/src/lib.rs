//! The booking web app's server: the built front end (static files), its runtime configuration
//! (`GET /config.json`) and `GET /healthz`, with security headers.
//!
//! The front end is read from a directory at run time (`WEB_STATIC_DIR`, by default the
//! `app/dist` folder of this crate) rather than embedded into the binary: the production image
//! copies `dist/` next to the distroless binary, so the Rust build does not depend on Node/npm and
//! a front-end change does not rebuild the Rust crate. Files are read per request (they are small
//! and the OS caches them); the hashed `/assets/*` are served as immutable.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Default location of the built front end (this crate's `app/dist`).
pub const DEFAULT_STATIC_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/app/dist");

/// Configuration of the web binary (`WEB_*` environment variables or flags).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "web", about = "Serves the booking web app and its runtime configuration")]
pub struct Config {
    /// Listen address.
    #[arg(long, env = "WEB_ADDR", default_value = "127.0.0.1:8000")]
    pub addr: SocketAddr,
    /// WebSocket URL of the RES gateway, as the browser reaches it.
    #[arg(long, env = "WEB_GATEWAY_URL", default_value = "ws://127.0.0.1:8080")]
    pub gateway_url: String,
    /// OpenID Connect issuer (Keycloak realm URL or the local issuer).
    #[arg(long, env = "WEB_OIDC_ISSUER", default_value = "http://127.0.0.1:8180/realms/booking")]
    pub oidc_issuer: String,
    /// Public OIDC client of the app (Authorization Code + PKCE).
    #[arg(long, env = "WEB_OIDC_CLIENT_ID", default_value = "booking-web")]
    pub oidc_client_id: String,
    /// RES resource of the identity service's auth methods (`login`, `logout`).
    #[arg(long, env = "WEB_AUTH_RID", default_value = "identity.session")]
    pub auth_rid: String,
    /// Directory of the built front end (index.html, assets/).
    #[arg(long, env = "WEB_STATIC_DIR", default_value = DEFAULT_STATIC_DIR)]
    pub static_dir: PathBuf,
    /// Milliseconds open connections get to finish after SIGTERM.
    #[arg(long, env = "WEB_SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000)]
    pub shutdown_timeout_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} must be an absolute {schemes} URL, got {value:?}")]
    BadUrl { name: &'static str, schemes: &'static str, value: String },
}

/// The origin (`scheme://host[:port]`) of an absolute URL with one of `schemes`.
fn origin(url: &str, schemes: &[&str]) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if !schemes.contains(&scheme) {
        return None;
    }
    let host = rest.split(['/', '?', '#']).next()?;
    if host.is_empty() || host.contains(['@', ' ', '\'', '"', ';']) {
        return None;
    }
    Some(format!("{scheme}://{host}"))
}

/// What the server answers with; built once from the configuration.
#[derive(Debug)]
pub struct App {
    static_dir: PathBuf,
    config_json: Bytes,
    csp: HeaderValue,
}

impl App {
    pub fn new(cfg: &Config) -> Result<App, ConfigError> {
        let gateway = origin(&cfg.gateway_url, &["ws", "wss"]).ok_or_else(|| ConfigError::BadUrl {
            name: "WEB_GATEWAY_URL",
            schemes: "ws:// or wss://",
            value: cfg.gateway_url.clone(),
        })?;
        let issuer = origin(&cfg.oidc_issuer, &["http", "https"]).ok_or_else(|| ConfigError::BadUrl {
            name: "WEB_OIDC_ISSUER",
            schemes: "http:// or https://",
            value: cfg.oidc_issuer.clone(),
        })?;
        let config_json = serde_json::to_vec(&serde_json::json!({
            "gatewayUrl": cfg.gateway_url,
            "authRid": cfg.auth_rid,
            "oidc": { "issuer": cfg.oidc_issuer.trim_end_matches('/'), "clientId": cfg.oidc_client_id },
        }))
        .expect("serialize config");
        // The app talks to the gateway (WebSocket) and the issuer (discovery, token, JWKS via
        // fetch); the issuer may also be framed for silent renew. Nothing inline.
        let csp = format!(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; \
             connect-src 'self' {gateway} {issuer}; frame-src {issuer}; form-action 'self' {issuer}; \
             base-uri 'self'; object-src 'none'; frame-ancestors 'none'"
        );
        Ok(App {
            static_dir: cfg.static_dir.clone(),
            config_json: Bytes::from(config_json),
            csp: HeaderValue::from_str(&csp).expect("CSP is a valid header (origins were checked)"),
        })
    }

    /// Answers one request.
    pub async fn handle(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        let mut res = if method != Method::GET && method != Method::HEAD {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        } else {
            match path {
                "/healthz" => text(StatusCode::OK, "ok\n"),
                "/config.json" => {
                    let mut r = Response::new(Full::new(self.config_json.clone()));
                    set(r.headers_mut(), header::CONTENT_TYPE, "application/json");
                    set(r.headers_mut(), header::CACHE_CONTROL, "no-store");
                    r
                }
                _ => self.static_file(path).await,
            }
        };
        let h = res.headers_mut();
        h.insert(header::CONTENT_SECURITY_POLICY, self.csp.clone());
        set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
        set(h, header::X_FRAME_OPTIONS, "DENY");
        set(h, header::REFERRER_POLICY, "no-referrer");
        set(h, "permissions-policy", "camera=(), microphone=(), geolocation=(), payment=()");
        set(h, "cross-origin-opener-policy", "same-origin");
        if method == Method::HEAD {
            let (parts, _) = res.into_parts();
            return Response::from_parts(parts, Full::new(Bytes::new()));
        }
        res
    }

    async fn static_file(&self, path: &str) -> Response<Full<Bytes>> {
        let Some(rel) = safe_relative(path) else {
            return text(StatusCode::NOT_FOUND, "not found\n");
        };
        let rel = if rel.as_os_str().is_empty() { PathBuf::from("index.html") } else { rel };
        let file = self.static_dir.join(&rel);
        match tokio::fs::read(&file).await {
            Ok(body) => file_response(&rel, body),
            // Client-side routes (no file extension, e.g. /callback) get the app itself.
            Err(_) if rel.extension().is_none() => match tokio::fs::read(self.static_dir.join("index.html")).await {
                Ok(body) => file_response(Path::new("index.html"), body),
                Err(e) => self.missing_build(e),
            },
            Err(_) => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    fn missing_build(&self, e: std::io::Error) -> Response<Full<Bytes>> {
        tracing::error!(dir = %self.static_dir.display(), error = %e, "front end not found; run `npm run build` in services/web/app");
        text(StatusCode::SERVICE_UNAVAILABLE, "the front end is not built (npm run build in services/web/app)\n")
    }
}

/// The URL path as a relative file path: percent-decoded, without `..`, `.` or absolute parts.
fn safe_relative(path: &str) -> Option<PathBuf> {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8().ok()?;
    if decoded.contains(['\0', '\\']) {
        return None;
    }
    let mut out = PathBuf::new();
    for c in Path::new(decoded.trim_start_matches('/')).components() {
        match c {
            Component::Normal(p) if !p.to_string_lossy().starts_with('.') => out.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn file_response(rel: &Path, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    set(r.headers_mut(), header::CONTENT_TYPE, content_type(rel));
    let cache = if rel.starts_with("assets") { "public, max-age=31536000, immutable" } else { "no-cache" };
    set(r.headers_mut(), header::CACHE_CONTROL, cache);
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    set(r.headers_mut(), header::CONTENT_TYPE, "text/plain; charset=utf-8");
    set(r.headers_mut(), header::CACHE_CONTROL, "no-store");
    r
}

fn set(h: &mut HeaderMap, name: impl header::IntoHeaderName, value: &'static str) {
    h.insert(name, HeaderValue::from_static(value));
}

/// Serves HTTP/1.1 on `listener` until `cancel`, then lets open connections finish their
/// current request (at most `grace`).
pub async fn serve(listener: TcpListener, app: Arc<App>, cancel: CancellationToken, grace: Duration) {
    let tracker = TaskTracker::new();
    loop {
        let (stream, remote) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let app = app.clone();
                async move { Ok::<_, std::convert::Infallible>(app.handle(req.method(), req.uri().path()).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(20))
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
        });
    }
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("connections still open after the shutdown grace period; closing");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_confined() {
        assert_eq!(safe_relative("/").unwrap(), PathBuf::new());
        assert_eq!(safe_relative("/assets/a.js").unwrap(), PathBuf::from("assets/a.js"));
        for bad in ["/../etc/passwd", "/assets/%2e%2e/%2e%2e/x", "/a\\b", "/.env", "/%00"] {
            assert!(safe_relative(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn origins() {
        assert_eq!(origin("ws://127.0.0.1:8080/ws", &["ws", "wss"]).unwrap(), "ws://127.0.0.1:8080");
        assert_eq!(origin("https://id.example/realms/booking", &["https"]).unwrap(), "https://id.example");
        assert!(origin("javascript:alert(1)", &["http"]).is_none());
        assert!(origin("http://a b", &["http"]).is_none());
    }
}
