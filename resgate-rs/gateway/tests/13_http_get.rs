//! HTTP GET/HEAD: path → rid mapping, json and jsonflat encodings, status mapping.

mod common;

use common::*;
use resgate::ApiEncoding;
use serde_json::{Value, json};

/// Spawns the HTTP request; plays access + get for `rid`; returns the HTTP response.
async fn get_with(env: &mut TestEnv, method: &str, path: &str, rid: &str, access: Value, get: Value) -> HttpResponse {
    let addr = env.addr();
    let (m, p) = (method.to_owned(), path.to_owned());
    let h = tokio::spawn(async move { http_request(addr, &m, &p, &[], b"").await });
    let name = rid.split('?').next().unwrap();
    let a = env.service.expect(&format!("access.{name}")).await;
    let ap = a.payload_json();
    assert_eq!(ap["isHttp"], json!(true), "{ap}");
    assert_eq!(ap["token"], json!(null));
    a.respond_json(access).await;
    if let Ok(g) = tokio::time::timeout(QUIET, env.service.expect(&format!("get.{name}"))).await {
        g.respond_json(get).await;
    }
    h.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_model_as_json() {
    let mut env = TestEnv::start().await;
    let r = get_with(
        &mut env,
        "GET",
        "/api/test/model",
        "test.model",
        json!({"result": {"get": true}}),
        json!({"result": {"model": {"string": "foo", "int": 42}}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("content-type").unwrap().starts_with("application/json"), "{:?}", r.headers);
    assert_eq!(r.json(), json!({"string": "foo", "int": 42}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_with_query_and_escaped_parts() {
    let mut env = TestEnv::start().await;
    let addr = env.addr();
    let h = tokio::spawn(async move { http_request(addr, "GET", "/api/test/my%2Dmodel/x?q=1&b=2", &[], b"").await });
    let a = env.service.expect("access.test.my-model.x").await;
    assert_eq!(a.payload_json()["query"], json!("q=1&b=2"));
    a.respond_access(true, None).await;
    let g = env.service.expect("get.test.my-model.x").await;
    assert_eq!(g.payload_json(), json!({"query": "q=1&b=2"}));
    g.respond_result(json!({"collection": [1, 2], "query": "b=2&q=1"})).await;
    let r = h.await.unwrap();
    assert_eq!((r.status, r.json()), (200, json!([1, 2])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_are_inlined_with_href() {
    let mut env = TestEnv::start().await;
    let addr = env.addr();
    let h = tokio::spawn(async move { http_request(addr, "GET", "/api/test/parent", &[], b"").await });
    env.service
        .serve_model(
            "test.parent",
            json!({
                "name": "parent", "child": {"rid": "test.model"}, "soft": {"rid": "test.soft", "soft": true},
                "data": {"data": {"foo": ["bar"]}}, "broken": {"rid": "test.err"}, "self": {"rid": "test.parent"},
                "list": {"rid": "test.list"},
            }),
        )
        .await;
    let mut gets = Vec::new();
    for _ in 0..3 {
        gets.push(env.service.expect_where("get of a reference", |s| s.starts_with("get.")).await);
    }
    for g in gets {
        match g.subject.as_str() {
            "get.test.model" => g.respond_model(json!({"a": 1})).await,
            "get.test.err" => g.respond_error("system.notFound", "Not found").await,
            "get.test.list" => g.respond_collection(json!(["x"])).await,
            other => panic!("unexpected {other}"),
        }
    }
    let r = h.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({
            "name": "parent",
            "child": {"href": "/api/test/model", "model": {"a": 1}},
            "soft": {"href": "/api/test/soft"},
            "data": {"foo": ["bar"]},
            "broken": {"href": "/api/test/err", "error": err("system.notFound", "Not found")},
            "self": {"href": "/api/test/parent"},
            "list": {"href": "/api/test/list", "collection": ["x"]},
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_are_inlined_flat_with_jsonflat() {
    let mut env = TestEnv::start_with(|c| c.api_encoding = ApiEncoding::JsonFlat).await;
    let addr = env.addr();
    let h = tokio::spawn(async move { http_request(addr, "GET", "/api/test/parent", &[], b"").await });
    env.service
        .serve_model(
            "test.parent",
            json!({
                "child": {"rid": "test.model"}, "soft": {"rid": "test.soft", "soft": true},
                "data": {"data": [1]}, "broken": {"rid": "test.err"}, "self": {"rid": "test.parent"},
            }),
        )
        .await;
    let mut gets = Vec::new();
    for _ in 0..2 {
        gets.push(env.service.expect_where("get of a reference", |s| s.starts_with("get.")).await);
    }
    for g in gets {
        match g.subject.as_str() {
            "get.test.model" => g.respond_model(json!({"a": 1})).await,
            "get.test.err" => g.respond_error("system.notFound", "Not found").await,
            other => panic!("unexpected {other}"),
        }
    }
    let r = h.await.unwrap();
    assert_eq!(
        r.json(),
        json!({
            "child": {"a": 1},
            "soft": {"href": "/api/test/soft"},
            "data": [1],
            "broken": err("system.notFound", "Not found"),
            "self": {"href": "/api/test/parent"},
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_status_mapping() {
    let mut env = TestEnv::start_with(|c| c.request_timeout = 300).await;
    let full = json!({"result": {"get": true}});
    let rows: Vec<(Value, Value, u16, Value)> = vec![
        (
            json!({"result": {"get": false}}),
            json!({"result": {"model": {}}}),
            401,
            err("system.accessDenied", "Access denied"),
        ),
        (
            json!({"error": err("system.accessDenied", "Access denied")}),
            json!({"result": {"model": {}}}),
            401,
            err("system.accessDenied", "Access denied"),
        ),
        (full.clone(), json!({"error": err("system.notFound", "Not found")}), 404, err("system.notFound", "Not found")),
        (
            full.clone(),
            json!({"error": err("system.internalError", "Internal error")}),
            500,
            err("system.internalError", "Internal error"),
        ),
        (
            full.clone(),
            json!({"error": err("system.invalidQuery", "Invalid query")}),
            400,
            err("system.invalidQuery", "Invalid query"),
        ),
        (full.clone(), json!({"error": err("custom.error", "Custom")}), 400, err("custom.error", "Custom")),
        (
            full.clone(),
            json!({"error": err("system.methodNotFound", "Method not found")}),
            404,
            err("system.methodNotFound", "Method not found"),
        ),
    ];
    for (i, (access, get, status, body)) in rows.into_iter().enumerate() {
        let rid = format!("test.m{i}");
        let r = get_with(&mut env, "GET", &format!("/api/test/m{i}"), &rid, access, get).await;
        assert_eq!((r.status, r.json()), (status, body), "row #{}", i + 1);
    }
    // Timeout on get → 404 with system.timeout.
    let addr = env.addr();
    let h = tokio::spawn(async move { http_request(addr, "GET", "/api/test/slow", &[], b"").await });
    env.service.expect("access.test.slow").await.respond_access(true, None).await;
    let _g = env.service.expect("get.test.slow").await;
    let r = h.await.unwrap();
    assert_eq!((r.status, r.json()), (404, err("system.timeout", "Request timeout")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_paths_are_not_found_without_nats_requests() {
    let mut env = TestEnv::start().await;
    for path in [
        "/api/test/my%20model",
        "/api/",
        "/api/test/model/",
        "/api/test//model",
        "/api/test.model",
        "/api/test/mo%2Adel",
        "/api/test/*/x",
    ] {
        let r = env.http("GET", path, &[], b"").await;
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert_eq!(r.json(), err("system.notFound", "Not found"), "{path}");
    }
    env.service.assert_no_request(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_has_status_and_headers_but_no_body() {
    let mut env = TestEnv::start().await;
    let r = get_with(
        &mut env,
        "HEAD",
        "/api/test/model",
        "test.model",
        json!({"result": {"get": true}}),
        json!({"result": {"model": {"a": 1}}}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("application/json"));
    assert!(r.body.is_empty(), "HEAD body: {:?}", r.text());
    // The length the GET's body has, as Resgate (Go's net/http) tells it.
    assert_eq!(r.header("content-length"), Some(r#"{"a":1}"#.len().to_string().as_str()));
    let r =
        get_with(&mut env, "HEAD", "/api/test/other", "test.other", json!({"result": {"get": false}}), json!({})).await;
    assert_eq!(r.status, 401);
    assert!(r.body.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_rid_is_uri_too_long() {
    let mut env = TestEnv::start().await;
    let r = env.http("GET", &format!("/api/test/{}", "x".repeat(10_000)), &[], b"").await;
    assert_eq!(r.status, 414, "{}", r.text());
    assert_eq!(r.json(), err("system.subjectTooLong", "Subject too long"));
    env.service.assert_no_request(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_api_path() {
    let mut env = TestEnv::start_with(|c| c.api_path = "/rest/".into()).await;
    let r = get_with(
        &mut env,
        "GET",
        "/rest/test/model",
        "test.model",
        json!({"result": {"get": true}}),
        json!({"result": {"model": {"a": 1}}}),
    )
    .await;
    assert_eq!((r.status, r.json()), (200, json!({"a": 1})));
}
