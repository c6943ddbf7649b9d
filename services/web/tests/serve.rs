//! The server over real TCP: config.json, static files, SPA fallback, headers, confinement.

use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

async fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> Reply {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await.unwrap().unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    Reply { status, headers, body: body.to_owned() }
}

#[tokio::test]
async fn serves_config_static_files_and_security_headers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("assets")).unwrap();
    std::fs::write(dir.path().join("index.html"), "<!doctype html><title>app</title>").unwrap();
    std::fs::write(dir.path().join("assets/app-1234.js"), "console.log(1)").unwrap();
    std::fs::write(dir.path().join(".secret"), "no").unwrap();
    let cfg = web::Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        gateway_url: "wss://gw.example:8443/".into(),
        oidc_issuer: "https://id.example/realms/booking/".into(),
        oidc_client_id: "booking-web".into(),
        auth_rid: "identity.session".into(),
        static_dir: dir.path().to_owned(),
        shutdown_timeout_ms: 1000,
    };
    let app = Arc::new(web::App::new(&cfg).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let server = tokio::spawn(web::serve(listener, app, cancel.clone(), Duration::from_secs(1)));

    let r = request(addr, "GET", "/config.json").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let json: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "gatewayUrl": "wss://gw.example:8443/",
            "authRid": "identity.session",
            "oidc": { "issuer": "https://id.example/realms/booking", "clientId": "booking-web" }
        })
    );
    let csp = r.header("content-security-policy").unwrap();
    assert!(csp.contains("connect-src 'self' wss://gw.example:8443 https://id.example;"), "{csp}");
    assert!(csp.contains("script-src 'self';") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));

    let r = request(addr, "GET", "/").await;
    assert_eq!((r.status, r.body.as_str()), (200, "<!doctype html><title>app</title>"));
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("cache-control"), Some("no-cache"));

    let r = request(addr, "GET", "/assets/app-1234.js").await;
    assert_eq!((r.status, r.body.as_str()), (200, "console.log(1)"));
    assert_eq!(r.header("content-type"), Some("text/javascript; charset=utf-8"));
    assert!(r.header("cache-control").unwrap().contains("immutable"));

    // Client-side routes get the app; missing files with an extension are 404.
    let r = request(addr, "GET", "/callback?code=x&state=y").await;
    assert_eq!((r.status, r.body.as_str()), (200, "<!doctype html><title>app</title>"));
    assert_eq!(request(addr, "GET", "/assets/missing.js").await.status, 404);
    // Outside the directory and dotfiles: not served.
    assert_eq!(request(addr, "GET", "/.secret").await.status, 404);
    assert_eq!(request(addr, "GET", "/assets/%2e%2e/%2e%2e/etc/passwd").await.status, 404);

    assert_eq!(request(addr, "GET", "/healthz").await.body, "ok\n");
    let r = request(addr, "HEAD", "/config.json").await;
    assert_eq!((r.status, r.body.as_str()), (200, ""));
    assert_eq!(request(addr, "POST", "/config.json").await.status, 405);

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "listener closed after shutdown");
}

#[test]
fn rejects_bad_urls() {
    let mut cfg = web::Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        gateway_url: "http://not-a-websocket".into(),
        oidc_issuer: "http://127.0.0.1:8180/realms/booking".into(),
        oidc_client_id: "booking-web".into(),
        auth_rid: "identity.session".into(),
        static_dir: ".".into(),
        shutdown_timeout_ms: 0,
    };
    assert!(web::App::new(&cfg).unwrap_err().to_string().contains("WEB_GATEWAY_URL"));
    cfg.gateway_url = "ws://127.0.0.1:8080".into();
    cfg.oidc_issuer = "127.0.0.1:8180".into();
    assert!(web::App::new(&cfg).unwrap_err().to_string().contains("WEB_OIDC_ISSUER"));
}
