//! The HTTP/WebSocket front: accepting connections, upgrades, and each connection's task loop.

use crate::conn::Conn;
use crate::http_api;
use crate::inbox::{ConnMsg, ConnTx};
use crate::shared::{Body, Shared, http_context, new_cid, simple};
use crate::ws::{self, WsStream};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use res_protocol::service::{CallResult, HttpContext, TokenEvent};
use res_protocol::{ProtocolVersion, ResError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tracing::Instrument;

/// Accepts connections until shutdown.
pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tls: Option<tokio_rustls::TlsAcceptor>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        match tls.clone() {
            None => {
                tokio::spawn(serve_io(stream, remote, shared));
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => serve_io(tls_stream, remote, shared).await,
                        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

async fn serve_io<I>(io: I, remote: SocketAddr, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        async move { Ok::<_, std::convert::Infallible>(route(req, remote, shared).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(%remote, error = %e, "http connection ended with an error");
    }
}

async fn route(req: Request<Incoming>, remote: SocketAddr, shared: Arc<Shared>) -> Response<Body> {
    let path = req.uri().path();
    if !path.starts_with('/') {
        // e.g. `OPTIONS * HTTP/1.1`: not a resource path.
        return simple(StatusCode::BAD_REQUEST, "400 Bad Request\n");
    }
    if path == shared.config.ws_path {
        return ws_upgrade(req, remote, shared).await;
    }
    if path.starts_with(&shared.config.api_path) {
        return http_api::handle(req, remote, shared).await;
    }
    simple(StatusCode::NOT_FOUND, "404 page not found\n")
}

async fn ws_upgrade(req: Request<Incoming>, remote: SocketAddr, shared: Arc<Shared>) -> Response<Body> {
    let headers = req.headers();
    let is_upgrade =
        headers.get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let deflate = shared.config.ws_compression
        && headers.get(header::SEC_WEBSOCKET_EXTENSIONS).and_then(|v| v.to_str().ok()).is_some_and(ws::accepts_deflate);
    let Some(key) = key.filter(|_| is_upgrade && req.method() == http::Method::GET) else {
        return simple(StatusCode::BAD_REQUEST, "Bad Request\n");
    };
    if headers.get(header::SEC_WEBSOCKET_VERSION).and_then(|v| v.to_str().ok()) != Some("13") {
        let mut r = simple(StatusCode::BAD_REQUEST, "Unsupported WebSocket version\n");
        r.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return r;
    }
    if !shared.origin_allowed(headers.get(header::ORIGIN)) {
        return http_api::error_response(&shared, &ResError::forbidden_origin(), None);
    }
    if *shared.shutdown.borrow() {
        return simple(StatusCode::SERVICE_UNAVAILABLE, "Shutting down\n");
    }

    let cid = new_cid();
    let http = http_context(&req, remote);
    let (tx, rx) = ConnTx::new(shared.config.max_outbound_bytes);
    // Registered before wsHeaderAuth, so the token event the auth service sends reaches it.
    shared.conns.lock().insert(cid.clone(), tx.clone());
    let mut extra_headers = None;
    let mut rx = rx;
    let mut initial_token = None;
    if let Some(method) = shared.config.ws_header_auth.clone() {
        let ((result, meta), token) = shared.header_auth(&method, &cid, &http, &tx, &mut rx).await;
        if let Some(meta) = meta {
            if !meta.has_valid_status() {
                tracing::error!(status = ?meta.status, "wsHeaderAuth meta status outside 300..599 ignored");
            } else if meta.is_direct_response_status() {
                shared.conns.lock().remove(&cid);
                let location = match &result {
                    Ok(CallResult::Resource(rid)) => Some(http_api::rid_to_path(&shared.config.api_path, rid)),
                    _ => None,
                };
                return http_api::meta_response(&shared, &meta, result.as_ref().err(), location);
            }
            extra_headers = meta.header;
        }
        if let Err(e) = result {
            tracing::debug!(%cid, error = %e, "wsHeaderAuth failed; connecting without token");
        }
        initial_token = token;
    }

    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    if let Some(extra) = extra_headers {
        http_api::apply_meta_headers(h, &extra);
    }
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, HeaderValue::from_str(&accept).expect("base64 is a valid header"));
    if deflate {
        h.insert(header::SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_static(ws::DEFLATE_RESPONSE));
    }

    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let span = tracing::debug_span!("conn", %cid, remote = %http.remote_addr);
                let max = shared.config.max_inbound_frame;
                // Plain TCP (the usual case) is taken back out of hyper's boxed I/O, so reads and
                // writes go straight to the socket.
                match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
                    Ok(parts) => {
                        let socket = Arc::new(parts.io.into_inner());
                        // Deflated frames are per connection; direct writes are the shared bytes.
                        let _direct_off = (!deflate)
                            .then(|| tx.enable_direct(&socket, ProtocolVersion::LEGACY_DEFAULT.is_legacy_values()));
                        let ws = WsStream::new(ws::SharedTcp(socket), max, deflate, &parts.read_buf);
                        // `read_buf` shares hyper's whole HTTP read buffer (8 KiB), even when
                        // empty: dropped now, not when the connection ends.
                        drop(parts.read_buf);
                        run_connection(ws, shared, cid, tx, rx, http, initial_token).instrument(span).await;
                    }
                    Err(upgraded) => {
                        let ws = WsStream::new(TokioIo::new(upgraded), max, deflate, &[]);
                        run_connection(ws, shared, cid, tx, rx, http, initial_token).instrument(span).await;
                    }
                }
            }
            Err(e) => {
                shared.conns.lock().remove(&cid);
                tracing::debug!(error = %e, "websocket upgrade failed");
            }
        }
    });
    resp
}

/// The connection task: reads requests, drains the inbox, writes frames, keeps the socket alive.
async fn run_connection<S>(
    mut ws: WsStream<S>,
    shared: Arc<Shared>,
    cid: Arc<str>,
    tx: ConnTx,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<ConnMsg>,
    http: HttpContext,
    initial_token: Option<TokenEvent>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let id = shared.next_conn_id();
    shared.metrics.ws_connections.inc();
    shared.metrics.ws_current_connections.inc();
    tracing::debug!("connected");
    let mut conn = Conn::new(id, cid.clone(), shared.clone(), tx.clone(), http);
    if let Some(t) = initial_token {
        conn.set_initial_token(t);
    }
    let cfg = &shared.config;
    let idle = Duration::from_millis(cfg.idle_timeout.max(1));
    let ping_every = Duration::from_millis(if cfg.ping_interval == 0 { 3_600_000 } else { cfg.ping_interval });
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut last_seen = Instant::now();
    let mut ping_due = false;
    // Control frames to answer (pongs), written with the next batch.
    let mut control: Vec<u8> = Vec::new();
    // What a direct write left for this task to write first (see `inbox`).
    let mut unwritten: Vec<u8> = Vec::new();
    let mut shutdown_rx = shared.shutdown.clone();
    // Made once, not per loop turn: each new one would register with (and leave) its notifier
    // under a lock.
    let killed = tx.killed();
    let shutdown = shutdown_rx.changed();
    tokio::pin!(killed, shutdown);
    // Tokens set before the connection existed (wsHeaderAuth) are already in the inbox.
    let close: Option<(u16, &str)> = 'conn: loop {
        tokio::select! {
            biased;
            _ = &mut killed => {
                shared.metrics.slow_client_disconnects.inc();
                tracing::warn!(%cid, limit = cfg.max_outbound_bytes, "slow client disconnected: outbound queue exceeded");
                break Some((ws::CLOSE_AGAIN, "slow client: outbound queue exceeded"));
            }
            _ = &mut shutdown => break Some((ws::CLOSE_AWAY, "server shutting down")),
            msg = rx.recv() => {
                let Some(msg) = msg else { break None };
                unwritten.append(&mut tx.begin_turn());
                tx.taken();
                conn.handle_msg(msg);
                // Drain what is already queued so the writes below batch into one write.
                for _ in 0..256 {
                    match rx.try_recv() {
                        Ok(m) => {
                            tx.taken();
                            conn.handle_msg(m);
                        }
                        Err(_) => break,
                    }
                }
            }
            read = ws.read() => match read {
                Ok(0) => break None,
                Ok(_) => {
                    unwritten.append(&mut tx.begin_turn());
                    // Every complete request of this read is handled before the replies are
                    // written, so they go out together. Only complete messages and control
                    // frames count as activity: a frame trickled a byte at a time does not keep
                    // the connection (and the frame's buffer) alive past the idle timeout.
                    let mut closing = None;
                    let parsed = ws.decoder.parse(|m| {
                        last_seen = Instant::now();
                        match m {
                        ws::Incoming::Text(t) if std::str::from_utf8(t).is_err() => {
                            closing = Some((ws::CLOSE_INVALID_PAYLOAD, "text frame not UTF-8"));
                            false
                        }
                        ws::Incoming::Text(b) | ws::Incoming::Binary(b) => {
                            conn.handle_frame(b);
                            true
                        }
                        ws::Incoming::Ping(p) => {
                            ws::encode_frame(&mut control, ws::OP_PONG, p);
                            true
                        }
                        ws::Incoming::Pong => true,
                        ws::Incoming::Close(code) => {
                            // Answered with the client's own code, as the RFC asks.
                            closing = Some((code.unwrap_or(ws::CLOSE_NORMAL), ""));
                            false
                        }
                    }});
                    if let Err(e) = parsed {
                        if let ws::ReadError::TooBig(_) = e {
                            tracing::info!(%cid, error = %e, "client message too large");
                        } else {
                            tracing::debug!(%cid, error = %e, "websocket read error");
                        }
                        break 'conn Some((e.close_code(), e.close_reason()));
                    }
                    if closing.is_some() {
                        break closing;
                    }
                }
                Err(e) => {
                    tracing::debug!(%cid, error = %e, "websocket read error");
                    break None;
                }
            },
            _ = ping.tick() => {
                unwritten.append(&mut tx.begin_turn());
                if last_seen.elapsed() > idle {
                    tracing::info!(%cid, "idle timeout");
                    break Some((ws::CLOSE_AWAY, "idle timeout"));
                }
                ping_due = cfg.ping_interval > 0;
            }
        }
        if !conn.out.is_empty() || ping_due || !control.is_empty() || !unwritten.is_empty() {
            // Every frame due goes out in one buffer and one write (after what a direct write
            // left unwritten); the buffers are freed after, so an idle connection holds none.
            let mut batch = ws::encode_batch(&mut control, &mut conn.out, std::mem::take(&mut ping_due), ws.deflate);
            if !unwritten.is_empty() {
                unwritten.append(&mut batch);
                batch = std::mem::take(&mut unwritten);
            }
            let result = tokio::select! {
                r = ws.write(&batch) => r,
                _ = &mut killed => {
                    shared.metrics.slow_client_disconnects.inc();
                    tracing::warn!(%cid, "slow client disconnected while writing");
                    break None;
                }
            };
            if let Err(e) = result {
                tracing::debug!(%cid, error = %e, "websocket write error");
                break None;
            }
        }
        tx.end_turn(conn.is_settled());
    };
    tx.close_direct();
    if let Some((code, reason)) = close {
        let mut frame = Vec::new();
        ws::encode_frame(&mut frame, ws::OP_CLOSE, &ws::close_payload(code, reason));
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.write(&frame)).await;
    }
    shared.conns.lock().remove(&cid);
    conn.dispose();
    shared.metrics.ws_current_connections.dec();
    tracing::debug!("disconnected");
}

/// Routes `conn.<cid>.<event>` messages to the connection.
pub fn conn_event(shared: &Shared, subject: &str, payload: &[u8]) {
    let mut parts = subject.splitn(3, '.');
    let (Some("conn"), Some(cid), Some(event)) = (parts.next(), parts.next(), parts.next()) else { return };
    if event != "token" {
        return;
    }
    let Some(tx) = shared.conns.lock().get(cid).cloned() else { return };
    match serde_json::from_slice::<TokenEvent>(payload) {
        Ok(ev) => {
            tx.send(ConnMsg::Token(Box::new(ev)));
        }
        Err(e) => tracing::warn!(cid, error = %e, "malformed token event"),
    }
}
