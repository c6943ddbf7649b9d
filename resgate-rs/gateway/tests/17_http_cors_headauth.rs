//! CORS (OPTIONS preflight, allowOrigin echo + Vary, forbidden origin), headerAuth before HTTP
//! requests, wsHeaderAuth before the upgrade, and `meta` status/headers.

mod common;

use common::*;
use serde_json::json;

fn origins(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_allow_origin_table() {
    // (Origin, allowOrigin, expected Allow-Origin (None = absent), Vary: Origin expected)
    let rows: &[(&str, &[&str], Option<&str>, bool)] = &[
        ("http://localhost", &["*"], Some("*"), false),
        ("http://localhost", &["http://localhost"], Some("http://localhost"), true),
        ("https://resgate.io", &["http://localhost", "https://resgate.io"], Some("https://resgate.io"), true),
        ("http://example.com", &["http://localhost", "https://resgate.io"], Some("http://localhost"), true),
        ("", &["*"], Some("*"), false),
        ("", &["http://localhost"], None, false),
    ];
    for (i, (origin, allow, expected, vary)) in rows.iter().enumerate() {
        let env = TestEnv::start_with(|c| c.allow_origin = origins(allow)).await;
        let headers: Vec<(&str, &str)> = if origin.is_empty() { vec![] } else { vec![("Origin", origin)] };
        let r = env.http("OPTIONS", "/api/test/model", &headers, b"").await;
        assert_eq!(r.status, 200, "row #{}", i + 1);
        assert_eq!(r.header("access-control-allow-origin"), *expected, "row #{}: {:?}", i + 1, r.headers);
        assert_eq!(r.header("vary") == Some("Origin"), *vary, "row #{}: {:?}", i + 1, r.headers);
        assert!(r.header("access-control-allow-credentials").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_methods_and_request_headers() {
    let env = TestEnv::start().await;
    let r = env
        .http(
            "OPTIONS",
            "/api/test/model",
            &[("Origin", "http://a"), ("Access-Control-Request-Headers", "X-PINGOTHER, Content-Type")],
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, HEAD, OPTIONS, POST"));
    assert_eq!(r.header("access-control-allow-headers"), Some("X-PINGOTHER, Content-Type"));
    let r = env.http("OPTIONS", "/api/test/model", &[], b"").await;
    assert!(r.header("access-control-allow-headers").is_none(), "{:?}", r.headers);

    let env = TestEnv::start_with(|c| {
        c.put_method = Some("put".into());
        c.delete_method = Some("delete".into());
        c.patch_method = Some("patch".into());
    })
    .await;
    let r = env.http("OPTIONS", "/api/test/model", &[], b"").await;
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, HEAD, OPTIONS, POST, PUT, DELETE, PATCH"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_origin_is_403_without_nats_requests() {
    let mut env = TestEnv::start_with(|c| c.allow_origin = origins(&["http://localhost", "https://resgate.io"])).await;
    for (m, path) in [("GET", "/api/test/model"), ("POST", "/api/test/model/method"), ("HEAD", "/api/test/model")] {
        let r = env.http(m, path, &[("Origin", "http://example.com")], b"").await;
        assert_eq!(r.status, 403, "{m}");
        assert_eq!(r.header("access-control-allow-origin"), Some("http://localhost"), "{m}");
        assert_eq!(r.header("vary"), Some("Origin"));
        if m != "HEAD" {
            assert_eq!(r.json(), err("system.forbidden", "Forbidden origin"));
        }
    }
    env.service.assert_no_request(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_origin_is_echoed_on_get() {
    let mut env = TestEnv::start_with(|c| c.allow_origin = origins(&["https://resgate.io"])).await;
    let addr = env.addr();
    let h = tokio::spawn(async move {
        http_request(addr, "GET", "/api/test/model", &[("Origin", "https://resgate.io")], b"").await
    });
    env.service.serve_model("test.model", json!({"a": 1})).await;
    let r = h.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://resgate.io"));
    assert_eq!(r.header("vary"), Some("Origin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_auth_runs_before_http_requests_and_sets_the_token() {
    let mut env = TestEnv::start_with(|c| c.header_auth = Some("test.auth.header".into())).await;
    let addr = env.addr();
    let h = tokio::spawn(async move {
        http_request(
            addr,
            "GET",
            "/api/test/model?x=1",
            &[("Authorization", "Bearer abc"), ("Origin", "http://o")],
            b"",
        )
        .await
    });
    let auth = env.service.expect("auth.test.auth.header").await;
    let p = auth.payload_json();
    assert_eq!(p["isHttp"], json!(true), "{p}");
    assert_eq!(p["token"], json!(null));
    assert!(p.get("params").is_none() || p["params"].is_null(), "no params: {p}");
    assert_eq!(p["header"]["Authorization"], json!(["Bearer abc"]));
    assert_eq!(p["host"], json!(addr.to_string()));
    assert!(p["remoteAddr"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(p["uri"], json!("/api/test/model?x=1"));
    let cid = auth.cid();
    env.service.publish_json(&format!("conn.{cid}.token"), json!({"token": {"user": "abc"}})).await;
    auth.respond_result(json!(null)).await;
    let a = env.service.expect("access.test.model").await;
    assert_eq!(a.payload_json(), json!({"cid": cid, "token": {"user": "abc"}, "query": "x=1", "isHttp": true}));
    a.respond_access(true, None).await;
    env.service.expect("get.test.model").await.respond_result(json!({"model": {"a": 1}, "query": "x=1"})).await;
    let r = h.await.unwrap();
    assert_eq!((r.status, r.json()), (200, json!({"a": 1})));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_auth_error_is_ignored() {
    let mut env = TestEnv::start_with(|c| c.header_auth = Some("test.auth.header".into())).await;
    let addr = env.addr();
    let h = tokio::spawn(async move { http_request(addr, "POST", "/api/test/model/method", &[], b"").await });
    env.service.expect("auth.test.auth.header").await.respond_error("system.accessDenied", "Access denied").await;
    let a = env.service.expect("access.test.model").await;
    assert_eq!(a.payload_json()["token"], json!(null));
    a.respond_access(false, Some("method")).await;
    env.service.expect("call.test.model.method").await.respond_result(json!(7)).await;
    let r = h.await.unwrap();
    assert_eq!((r.status, r.json()), (200, json!(7)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_auth_meta_status_aborts_the_request() {
    let mut env = TestEnv::start_with(|c| c.header_auth = Some("test.auth.header".into())).await;
    let addr = env.addr();
    let h = tokio::spawn(async move { http_request(addr, "GET", "/api/test/model", &[], b"").await });
    env.service
        .expect("auth.test.auth.header")
        .await
        .respond_json(json!({"result": null, "meta": {"status": 401, "header": {"Www-Authenticate": ["Basic"]}}}))
        .await;
    let r = h.await.unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Basic"));
    assert_eq!(r.json(), err("system.accessDenied", "Access denied"));
    env.service.assert_no_request(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_headers_and_status_on_http_calls() {
    let mut env = TestEnv::start().await;
    let addr = env.addr();
    let h = tokio::spawn(async move { http_request(addr, "POST", "/api/test/model/method", &[], b"").await });
    env.service
        .expect("access.test.model")
        .await
        .respond_json(
            json!({"result": {"call": "*"}, "meta": {"header": {"Set-Cookie": ["a=1"], "X-Access": ["yes"]}}}),
        )
        .await;
    env.service
        .expect("call.test.model.method")
        .await
        .respond_json(
            json!({"result": {"ok": true}, "meta": {"header": {"Set-Cookie": ["b=2"], "Content-Type": ["text/evil"]}}}),
        )
        .await;
    let r = h.await.unwrap();
    assert_eq!(r.status, 200);
    let mut cookies = r.headers_all("set-cookie");
    cookies.sort();
    assert_eq!(cookies, vec!["a=1", "b=2"], "Set-Cookie values are appended");
    assert_eq!(r.header("x-access"), Some("yes"));
    assert!(r.header("content-type").unwrap().starts_with("application/json"), "Content-Type is protected");
    assert_eq!(r.json(), json!({"ok": true}));

    let h = tokio::spawn(async move { http_request(addr, "POST", "/api/test/model/method", &[], b"").await });
    env.service.expect("access.test.model").await.respond_access(false, Some("*")).await;
    env.service
        .expect("call.test.model.method")
        .await
        .respond_json(json!({"result": null, "meta": {"status": 403}}))
        .await;
    let r = h.await.unwrap();
    assert_eq!((r.status, r.json()), (403, err("system.forbidden", "Forbidden")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_is_ignored_for_websocket_requests() {
    let mut env = TestEnv::start().await;
    let mut c = env.client().await;
    let id = c.send("call.test.model.method", json!(null)).await;
    env.service.expect("access.test.model").await.respond_access(true, Some("*")).await;
    env.service
        .expect("call.test.model.method")
        .await
        .respond_json(json!({"result": 1, "meta": {"status": 404}}))
        .await;
    c.response(id).await.assert_result(json!({"payload": 1}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_header_auth_runs_before_upgrade() {
    let mut env = TestEnv::start_with(|c| c.ws_header_auth = Some("test.auth.ws".into())).await;
    let url = env.ws_url();
    let h = tokio::spawn(async move { ws_connect_with_response(&url, &[("Cookie", "s=1")]).await });
    let auth = env.service.expect("auth.test.auth.ws").await;
    let p = auth.payload_json();
    assert_eq!(p["isHttp"], json!(true), "{p}");
    assert_eq!(p["header"]["Cookie"], json!(["s=1"]));
    assert_eq!(p["uri"], json!("/"));
    let cid = auth.cid();
    env.service.publish_json(&format!("conn.{cid}.token"), json!({"token": "ws-token"})).await;
    auth.respond_json(json!({"result": null, "meta": {"header": {"Set-Cookie": ["t=2"]}}})).await;
    let (mut c, resp) = h.await.unwrap().expect("upgrade");
    assert_eq!(resp.status().as_u16(), 101);
    assert_eq!(resp.headers().get("set-cookie").map(|v| v.to_str().unwrap()), Some("t=2"));
    let id = c.send("subscribe.test.model", json!(null)).await;
    let a = env.service.expect("access.test.model").await;
    assert_eq!(
        a.payload_json(),
        json!({"cid": cid, "token": "ws-token"}),
        "the WebSocket connection keeps the cid and token"
    );
    a.respond_access(true, None).await;
    env.service.expect("get.test.model").await.respond_model(json!({})).await;
    c.response(id).await.result();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_header_auth_meta_status_refuses_upgrade() {
    let mut env = TestEnv::start_with(|c| c.ws_header_auth = Some("test.auth.ws".into())).await;
    let url = env.ws_url();
    let h = tokio::spawn(async move { ws_connect_with_response(&url, &[]).await });
    env.service.expect("auth.test.auth.ws").await.respond_json(json!({"result": null, "meta": {"status": 401}})).await;
    match h.await.unwrap() {
        Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 401),
        Err(e) => panic!("expected HTTP 401, got {e}"),
        Ok(_) => panic!("upgrade must be refused"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_header_auth_not_called_for_forbidden_origin() {
    let mut env = TestEnv::start_with(|c| {
        c.ws_header_auth = Some("test.auth.ws".into());
        c.allow_origin = origins(&["https://resgate.io"]);
    })
    .await;
    let r = WsClient::connect(&env.ws_url(), &[("Origin", "http://evil")]).await;
    assert!(r.is_err());
    env.service.assert_no_request(QUIET).await;
}
