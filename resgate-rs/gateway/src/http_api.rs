//! The HTTP API: resources over GET/HEAD, calls over POST (and PUT/DELETE/PATCH when mapped),
//! CORS, header authentication and Resgate's status-code mapping.

use crate::cache::Graph;
use crate::config::ApiEncoding;
use crate::inbox::ConnTx;
use crate::shared::{Body, Shared, http_context, new_cid, simple};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use res_protocol::json::write_str;
use res_protocol::service::{self, CallResult, Meta, RequestFields, TokenEvent};
use res_protocol::value::{ResourceData, Value};
use res_protocol::{ResError, code};
use serde_json::value::RawValue;
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::Instrument;

/// Characters Go's `url.PathEscape` leaves alone, which Resgate uses to build hrefs.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b':')
    .remove(b'=')
    .remove(b'@');

/// Resgate's error → HTTP status mapping.
pub fn status_of(err: &ResError) -> StatusCode {
    match err.code.as_ref() {
        code::NOT_FOUND | code::METHOD_NOT_FOUND | code::TIMEOUT => StatusCode::NOT_FOUND,
        code::ACCESS_DENIED => StatusCode::UNAUTHORIZED,
        code::METHOD_NOT_ALLOWED => StatusCode::METHOD_NOT_ALLOWED,
        code::INTERNAL_ERROR => StatusCode::INTERNAL_SERVER_ERROR,
        code::SERVICE_UNAVAILABLE => StatusCode::SERVICE_UNAVAILABLE,
        code::FORBIDDEN => StatusCode::FORBIDDEN,
        code::SUBJECT_TOO_LONG => StatusCode::URI_TOO_LONG,
        code::NOT_IMPLEMENTED => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// The error a meta status stands for when the service gave none.
fn error_for_status(status: u16) -> ResError {
    match status {
        401 | 402 | 407 => ResError::access_denied(),
        403 | 451 => ResError::forbidden(),
        404 | 410 => ResError::not_found(),
        405 => ResError::method_not_allowed(),
        408 | 504 => ResError::timeout(),
        501 => ResError::not_implemented(),
        503 => ResError::service_unavailable(),
        400..=499 => ResError::bad_request(),
        _ => ResError::internal_error(),
    }
}

/// `a.b?x=1` → `/api/a/b%3Fx=1`, as Resgate renders hrefs and Location headers.
pub fn rid_to_path(api_path: &str, rid: &str) -> String {
    let escaped = utf8_percent_encode(rid, PATH_SEGMENT).to_string().replace('.', "/");
    format!("{api_path}{escaped}")
}

/// The resource ID for a path below the API prefix, with the URL query as RES query. Like
/// Resgate, a literal `.` in the raw path is refused (an escaped one is a part character); unlike
/// Resgate, the result must be a valid resource ID, since anything else would not be a valid NATS
/// subject.
fn path_to_rid(rest: &str, query: Option<&str>) -> Option<String> {
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains('.') {
        return None;
    }
    let mut rid = String::with_capacity(rest.len() + 8);
    for (i, part) in rest.split('/').enumerate() {
        let part = percent_decode_str(part).decode_utf8().ok()?;
        if i > 0 {
            rid.push('.');
        }
        rid.push_str(&part);
    }
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        rid.push('?');
        rid.push_str(q);
    }
    res_protocol::is_valid_rid(&rid).then_some(rid)
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    r
}

pub fn error_response(_shared: &Shared, err: &ResError, meta: Option<&Meta>) -> Response<Body> {
    let mut r = json_response(status_of(err), err.to_json());
    if let Some(h) = meta.and_then(|m| m.header.as_ref()) {
        apply_meta_headers(r.headers_mut(), h);
    }
    r
}

/// A response decided by a meta status (3xx..5xx).
pub fn meta_response(shared: &Shared, meta: &Meta, err: Option<&ResError>, location: Option<String>) -> Response<Body> {
    let status = meta.status.and_then(|s| u16::try_from(s).ok()).unwrap_or(500);
    let mut r = if status >= 400 {
        let synthesized;
        let err = match err {
            Some(e) => e,
            None => {
                synthesized = error_for_status(status);
                &synthesized
            }
        };
        error_response(shared, err, None)
    } else {
        Response::new(Full::new(Bytes::new()))
    };
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(h) = &meta.header {
        apply_meta_headers(r.headers_mut(), h);
    }
    if let Some(loc) = location.filter(|_| (300..400).contains(&status))
        && let Ok(v) = HeaderValue::from_str(&loc)
    {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Adds service-set headers; `Set-Cookie` appends, others replace (protected ones were already
/// filtered out when metas were merged).
pub fn apply_meta_headers(h: &mut HeaderMap, extra: &service::Header) {
    for (k, values) in extra {
        let Ok(name) = HeaderName::from_bytes(k.as_bytes()) else { continue };
        if matches!(
            k.as_str(),
            "Sec-Websocket-Extensions"
                | "Sec-Websocket-Protocol"
                | "Access-Control-Allow-Credentials"
                | "Access-Control-Allow-Origin"
                | "Content-Type"
        ) {
            continue;
        }
        if name != header::SET_COOKIE {
            h.remove(&name);
        }
        for v in values {
            if let Ok(v) = HeaderValue::from_str(v) {
                h.append(name.clone(), v);
            }
        }
    }
}

fn merge(a: Option<Meta>, b: Option<Meta>) -> Option<Meta> {
    match (a, b) {
        (None, b) => b,
        (a, None) => a,
        (Some(a), Some(b)) => Some(a.merge(b)),
    }
}

/// Handles a request under the API path.
pub async fn handle(req: Request<Incoming>, remote: SocketAddr, shared: Arc<Shared>) -> Response<Body> {
    let method = req.method().clone();
    let label: &'static str = match method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    };
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allowed = shared.origin_allowed(origin.as_ref());
    // As Resgate: preflights always answer 200 with the CORS headers; other requests from a
    // forbidden origin get 403.
    let mut resp = if method == Method::OPTIONS {
        preflight(&shared, &req)
    } else if !allowed {
        error_response(&shared, &ResError::forbidden_origin(), None)
    } else {
        if label != "OTHER" {
            shared.metrics.http_requests.get_or_create(&crate::metrics::MethodLabel { method: label }).inc();
        }
        let started = std::time::Instant::now();
        let span = if res_telemetry::traces_exported() {
            tracing::info_span!(parent: None, "http.request", method = label, path = %req.uri().path())
        } else {
            tracing::Span::none()
        };
        let r = serve(req, remote, &shared, method.clone()).instrument(span).await;
        shared.metrics.observe_request(label, started.elapsed().as_secs_f64());
        r
    };
    cors(&shared, resp.headers_mut(), origin.as_ref(), allowed);
    if method == Method::HEAD {
        // As Resgate (Go's net/http): the headers of the GET, its Content-Length included.
        let len = hyper::body::Body::size_hint(resp.body()).exact().unwrap_or(0);
        resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        *resp.body_mut() = Full::new(Bytes::new());
    }
    resp
}

fn cors(shared: &Shared, h: &mut HeaderMap, origin: Option<&HeaderValue>, allowed: bool) {
    let allow = &shared.config.allow_origin;
    if shared.config.header_auth.is_some() {
        h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    }
    if allow.iter().any(|o| o == "*") {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        return;
    }
    let Some(o) = origin.filter(|o| o.as_bytes() != b"null") else { return };
    // A forbidden origin is told the first allowed one, as Resgate does.
    let value = if allowed { Some(o.clone()) } else { allow.first().and_then(|a| HeaderValue::from_str(a).ok()) };
    if let Some(v) = value {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
}

fn preflight(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    let mut methods = String::from("GET, HEAD, OPTIONS, POST");
    for (m, name) in [
        (&shared.config.put_method, ", PUT"),
        (&shared.config.delete_method, ", DELETE"),
        (&shared.config.patch_method, ", PATCH"),
    ] {
        if m.is_some() {
            methods.push_str(name);
        }
    }
    let mut r = Response::new(Full::new(Bytes::new()));
    r.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_str(&methods).expect("ascii"));
    if let Some(h) = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        r.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_HEADERS, h.clone());
    }
    r
}

/// One HTTP request's temporary connection: its own cid and the token headerAuth set.
struct HttpConn {
    cid: Arc<str>,
    token: Option<Box<RawValue>>,
    meta: Option<Meta>,
}

async fn http_conn(shared: &Shared, http: &service::HttpContext) -> HttpConn {
    let cid = new_cid();
    let Some(method) = shared.config.header_auth.clone() else {
        return HttpConn { cid, token: None, meta: None };
    };
    let (tx, mut rx) = ConnTx::new(usize::MAX);
    shared.conns.lock().insert(cid.clone(), tx.clone());
    let ((result, meta), token) = shared.header_auth(&method, &cid, http, &tx, &mut rx).await;
    if let Err(e) = &result {
        tracing::debug!(%cid, error = %e, "headerAuth failed; continuing without token");
    }
    let token = token.and_then(TokenEvent::into_token);
    shared.conns.lock().remove(&cid);
    let meta = meta.filter(|m| {
        let ok = m.has_valid_status();
        if !ok {
            tracing::error!(status = ?m.status, "headerAuth meta status outside 300..599 ignored");
        }
        ok
    });
    HttpConn { cid, token, meta }
}

async fn serve(req: Request<Incoming>, remote: SocketAddr, shared: &Shared, method: Method) -> Response<Body> {
    let api_path = shared.config.api_path.clone();
    let http = http_context(&req, remote);
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let rest = &path[api_path.len()..];
    let (rid_path, call_method) = match method {
        Method::GET | Method::HEAD => (rest, None),
        Method::POST => match rest.rsplit_once('/') {
            Some((r, m)) => (r, Some(percent_decode_str(m).decode_utf8_lossy().into_owned())),
            None => return error_response(shared, &ResError::not_found(), None),
        },
        Method::PUT | Method::DELETE | Method::PATCH => {
            let mapped = match method {
                Method::PUT => &shared.config.put_method,
                Method::DELETE => &shared.config.delete_method,
                _ => &shared.config.patch_method,
            };
            match mapped {
                Some(m) => (rest, Some(m.clone())),
                None => return error_response(shared, &ResError::method_not_allowed(), None),
            }
        }
        _ => return error_response(shared, &ResError::method_not_allowed(), None),
    };
    let Some(rid) = path_to_rid(rid_path, query.as_deref()) else {
        return error_response(shared, &ResError::not_found(), None);
    };
    if let Some(m) = &call_method {
        if !res_protocol::is_valid_rid_part(m) {
            return error_response(shared, &ResError::not_found(), None);
        }
        let (name, _) = res_protocol::rid::split_query(&rid);
        if !shared.nats.subject_fits("call.".len() + name.len() + 1 + m.len()) {
            return error_response(shared, &ResError::subject_too_long(), None);
        }
    }
    let params = match &call_method {
        None => None,
        Some(_) => {
            // Bounded in time (idleTimeout) as in size: a body trickled slowly would pin its
            // buffer forever.
            let read = Limited::new(req.into_body(), shared.config.max_inbound_frame).collect();
            let limit = std::time::Duration::from_millis(shared.config.idle_timeout.max(1));
            let body = match tokio::time::timeout(limit, read).await {
                Ok(Ok(b)) => b.to_bytes(),
                Ok(Err(_)) => return error_response(shared, &ResError::bad_request(), None),
                Err(_) => return simple(StatusCode::REQUEST_TIMEOUT, "408 Request Timeout\n"),
            };
            if body.iter().all(u8::is_ascii_whitespace) {
                None
            } else {
                match serde_json::from_slice::<Box<RawValue>>(&body) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        return error_response(
                            shared,
                            &ResError::new(code::BAD_REQUEST, format!("Error decoding request body: {e}")),
                            None,
                        );
                    }
                }
            }
        }
    };
    let conn = http_conn(shared, &http).await;
    if let Some(meta) = conn.meta.as_ref().filter(|m| m.is_direct_response_status()) {
        return meta_response(shared, meta, None, None);
    }
    let key = res_protocol::rid::replace_cid(&rid, &conn.cid).into_owned();
    let (_, q) = res_protocol::rid::split_query(&key);
    let fields = RequestFields { cid: &conn.cid, token: conn.token.as_deref(), query: q, params: None, is_http: true };
    let (access, access_meta) = shared.access_meta(&key, fields.encode()).await;
    let meta = merge(conn.meta.clone(), access_meta);
    if let Some(m) = meta.as_ref().filter(|m| m.is_direct_response_status()) {
        return meta_response(shared, m, access.as_ref().err(), None);
    }
    let access = match access {
        Ok(a) => a,
        Err(e) => return error_response(shared, &e, meta.as_ref()),
    };
    match call_method {
        None => {
            if !access.get {
                return error_response(shared, &ResError::access_denied(), meta.as_ref());
            }
            match shared.cache.load_graph(&key).await {
                Ok(graph) => {
                    let mut body = Vec::with_capacity(256);
                    encode_resource(&mut body, &graph, &key, &api_path, shared.config.api_encoding, &mut Vec::new());
                    let mut r = json_response(StatusCode::OK, body);
                    if let Some(h) = meta.as_ref().and_then(|m| m.header.as_ref()) {
                        apply_meta_headers(r.headers_mut(), h);
                    }
                    r
                }
                Err(e) => error_response(shared, &e, meta.as_ref()),
            }
        }
        Some(m) => {
            if !access.can_call(&m) {
                return error_response(shared, &ResError::access_denied(), meta.as_ref());
            }
            let (name, _) = res_protocol::rid::split_query(&key);
            let payload = RequestFields { params: params.as_deref(), ..fields }.encode();
            // Ordered like a connection's call: a GET right after sees what the service
            // published before replying.
            let (result, call_meta) = shared.call_waiting(&format!("call.{name}.{m}"), payload, None, &key).await;
            let meta = merge(meta, call_meta);
            if let Some(mm) = meta.as_ref().filter(|mm| mm.is_direct_response_status()) {
                let location = match &result {
                    Ok(CallResult::Resource(r)) => Some(rid_to_path(&api_path, r)),
                    _ => None,
                };
                return meta_response(shared, mm, result.as_ref().err(), location);
            }
            let mut r = match result {
                Err(e) if e.code == code::METHOD_NOT_FOUND && method != Method::POST => {
                    error_response(shared, &ResError::method_not_allowed(), None)
                }
                Err(e) => error_response(shared, &e, None),
                Ok(CallResult::Payload(p)) if p.get() == "null" => {
                    let mut r = Response::new(Full::new(Bytes::new()));
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    r
                }
                Ok(CallResult::Payload(p)) => json_response(StatusCode::OK, p.get().as_bytes().to_vec()),
                Ok(CallResult::Resource(r)) => {
                    let mut resp = Response::new(Full::new(Bytes::new()));
                    if let Ok(v) = HeaderValue::from_str(&rid_to_path(&api_path, &r)) {
                        resp.headers_mut().insert(header::LOCATION, v);
                    }
                    resp
                }
            };
            if let Some(h) = meta.as_ref().and_then(|m| m.header.as_ref()) {
                apply_meta_headers(r.headers_mut(), h);
            }
            r
        }
    }
}

/// Writes a resource for the HTTP API: references inlined (json: with an `href` wrapper; jsonflat:
/// directly), soft references and references back up the current path as `{"href": ...}`.
fn encode_resource(
    out: &mut Vec<u8>,
    graph: &Graph,
    key: &str,
    api_path: &str,
    enc: ApiEncoding,
    path: &mut Vec<Arc<str>>,
) {
    let Some((key, entry)) = graph.entries.get_key_value(key) else { return };
    let Some(data) = entry.data() else {
        out.extend_from_slice(b"null");
        return;
    };
    path.push(key.clone());
    match &data {
        ResourceData::Model(m) => {
            out.push(b'{');
            for (i, (k, v)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, k);
                out.push(b':');
                encode_value(out, v, graph, api_path, enc, path);
            }
            out.push(b'}');
        }
        ResourceData::Collection(c) => {
            out.push(b'[');
            for (i, v) in c.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                encode_value(out, v, graph, api_path, enc, path);
            }
            out.push(b']');
        }
    }
    path.pop();
}

fn write_href(out: &mut Vec<u8>, api_path: &str, rid: &str) {
    out.extend_from_slice(b"\"href\":");
    write_str(out, &rid_to_path(api_path, rid));
}

fn encode_value(
    out: &mut Vec<u8>,
    v: &Value,
    graph: &Graph,
    api_path: &str,
    enc: ApiEncoding,
    path: &mut Vec<Arc<str>>,
) {
    match v {
        Value::Primitive(raw) | Value::Data(raw) => out.extend_from_slice(raw.get().as_bytes()),
        Value::Delete => out.extend_from_slice(b"null"),
        Value::Reference { rid, soft } => {
            let back = path.iter().any(|p| **p == **rid);
            if *soft || back {
                out.push(b'{');
                write_href(out, api_path, rid);
                out.push(b'}');
                return;
            }
            if let Some(err) = graph.errors.get(&**rid) {
                match enc {
                    ApiEncoding::JsonFlat => out.extend_from_slice(&err.to_json()),
                    ApiEncoding::Json => {
                        out.push(b'{');
                        write_href(out, api_path, rid);
                        out.extend_from_slice(b",\"error\":");
                        out.extend_from_slice(&err.to_json());
                        out.push(b'}');
                    }
                }
                return;
            }
            match enc {
                ApiEncoding::JsonFlat => encode_resource(out, graph, rid, api_path, enc, path),
                ApiEncoding::Json => {
                    let is_model = graph.entries.get(&**rid).and_then(|e| e.data()).is_some_and(|d| d.is_model());
                    out.push(b'{');
                    write_href(out, api_path, rid);
                    out.extend_from_slice(if is_model { b",\"model\":" } else { b",\"collection\":" });
                    encode_resource(out, graph, rid, api_path, enc, path);
                    out.push(b'}');
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_rids() {
        assert_eq!(path_to_rid("a/b/c", None).as_deref(), Some("a.b.c"));
        assert_eq!(path_to_rid("a/b", Some("x=1")).as_deref(), Some("a.b?x=1"));
        assert_eq!(path_to_rid("a/b%20c", None), None);
        assert_eq!(path_to_rid("a.b", None), None);
        assert_eq!(path_to_rid("a/b%2Ec", None).as_deref(), Some("a.b.c"));
        assert_eq!(path_to_rid("a//b", None), None);
        assert_eq!(path_to_rid("a/", None), None);
        assert_eq!(path_to_rid("", None), None);
        assert_eq!(rid_to_path("/api/", "a.b.c"), "/api/a/b/c");
        assert_eq!(rid_to_path("/api/", "a.b?x=1"), "/api/a/b%3Fx=1");
    }

    #[test]
    fn status_mapping() {
        assert_eq!(status_of(&ResError::not_found()), StatusCode::NOT_FOUND);
        assert_eq!(status_of(&ResError::timeout()), StatusCode::NOT_FOUND);
        assert_eq!(status_of(&ResError::access_denied()), StatusCode::UNAUTHORIZED);
        assert_eq!(status_of(&ResError::invalid_params()), StatusCode::BAD_REQUEST);
        assert_eq!(status_of(&ResError::new("custom.x", "x")), StatusCode::BAD_REQUEST);
        assert_eq!(status_of(&ResError::subject_too_long()), StatusCode::URI_TOO_LONG);
        assert_eq!(error_for_status(401).code, code::ACCESS_DENIED);
        assert_eq!(error_for_status(418).code, code::BAD_REQUEST);
        assert_eq!(error_for_status(599).code, code::INTERNAL_ERROR);
    }
}
