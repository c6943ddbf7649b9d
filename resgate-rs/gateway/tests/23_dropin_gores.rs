//! Drop-in tier: the go-res example services (modelled message for message in
//! `common/gores.rs`) behind the gateway, driven over WebSocket, HTTP and the real npm resclient.
//! Expected frames are Resgate v1.8.0's (server/rescache, subscription.go, wsConn.go,
//! apiHandler.go): query resources linked by their normalized query, query events answered per
//! normalized query, resets re-fetching with the normalized query, events before responses.

mod common;

use common::gores::*;
use common::*;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

async fn start<E: Example>(example: E) -> (TestEnv, GoRes<E>) {
    let env = TestEnv::start_custom(|_| {}, &[]).await;
    let svc = GoRes::start(&env.nats.url(), example).await;
    (env, svc)
}

/// Runs `node dropin.js <url> <scenario>` to its end; returns its output lines.
async fn resclient(env: &TestEnv, scenario: &str) -> Vec<Value> {
    let url = env.ws_url();
    let (mut child, mut lines) = spawn_node("dropin.js", &[&url, scenario]);
    let mut got = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("resclient {scenario}: no output for 30 s; so far: {got:?}"))
            .expect("read node stdout");
        let Some(line) = line else { break };
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(v.get("error").is_none(), "resclient {scenario} failed: {v}; before: {got:?}");
        got.push(v);
    }
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("node exits").unwrap();
    assert!(status.success(), "resclient {scenario}: exit status {status}; output {got:?}");
    got
}

/// `/api/a/b/c` for `a.b.c`.
fn href(rid: &str) -> String {
    format!("/api/{}", rid.replace('.', "/"))
}

/// Resgate's `json` HTTP encoding of a collection of model references.
fn http_collection(refs: &[Value], model_of: impl Fn(&Value) -> Value) -> Value {
    Value::Array(refs.iter().map(|r| json!({"href": href(r["rid"].as_str().unwrap()), "model": model_of(r)})).collect())
}

/// The subscribe result for a collection of model references, with the models the connection
/// does not hold yet.
fn sub_result(rid: &str, refs: &[Value], held: &HashSet<String>, model_of: impl Fn(&Value) -> Value) -> Value {
    let mut models = Map::new();
    for r in refs {
        let m = r["rid"].as_str().unwrap();
        if !held.contains(m) {
            models.insert(m.to_owned(), model_of(r));
        }
    }
    let mut res = json!({"collections": {rid: refs}});
    if !models.is_empty() {
        res["models"] = Value::Object(models);
    }
    res
}

fn rids_of(refs: &[Value]) -> HashSet<String> {
    refs.iter().map(|r| r["rid"].as_str().unwrap().to_owned()).collect()
}

/// The client events Resgate sends for a collection going from `old` to `new`: its LCS diff;
/// an add carries the model when the connection does not hold it (`held`: referenced by a
/// collection it holds or subscribed directly, `direct`); a remove releases an indirect model.
fn diff_events(
    rid: &str,
    old: &[Value],
    new: &[Value],
    held: &mut HashSet<String>,
    direct: &HashSet<String>,
    model_of: impl Fn(&Value) -> Value,
) -> Vec<Value> {
    let mut cur = old.to_vec();
    let mut out = Vec::new();
    for (name, mut data) in lcs_events(old, new) {
        if name == "add" {
            let r = data["value"]["rid"].as_str().unwrap().to_owned();
            if held.insert(r.clone()) {
                data["models"] = json!({ r: model_of(&data["value"]) });
            }
        } else {
            let removed = cur[data["idx"].as_u64().unwrap() as usize].clone();
            apply_events(&mut cur, &[(name, data.clone())]);
            let r = removed["rid"].as_str().unwrap();
            if !cur.contains(&removed) && !direct.contains(r) {
                held.remove(r);
            }
            out.push(json!({"event": format!("{rid}.{name}"), "data": data}));
            continue;
        }
        apply_events(&mut cur, &[(name, data.clone())]);
        out.push(json!({"event": format!("{rid}.{name}"), "data": data}));
    }
    out
}

/// Asserts `before` (frames before a response) starts with `required`; returns the rest.
fn after_required(before: Vec<Value>, required: &[Value], what: &str) -> Vec<Value> {
    let n = required.len().min(before.len());
    assert_eq!(&before[..n], required, "{what}: observed (left) vs required first (right); all: {before:?}");
    before[n..].to_vec()
}

/// `expected` events, some of which (`already`) came before a response.
async fn expect_rest(c: &mut WsClient, already: Vec<Value>, expected: &[Value], what: &str) {
    let mut got = already;
    got.extend(c.take_events(expected.len().saturating_sub(got.len())).await);
    assert_eq!(got, expected, "{what}: events observed (left) vs expected (right)");
}

async fn expect_events(c: &mut WsClient, expected: &[Value], what: &str) {
    let got = c.take_events(expected.len()).await;
    assert_eq!(got, expected, "{what}: events observed (left) vs expected (right)");
}

/// Receives as many events as `groups` hold and compares them per resource (events of different
/// resources may interleave), ignoring `models` (which subscription carries a model shared by two
/// of them depends on the order the gateway handles them in).
async fn expect_grouped(c: &mut WsClient, groups: Vec<Vec<Value>>, what: &str) {
    let n: usize = groups.iter().map(Vec::len).sum();
    assert_grouped(c.take_events(n).await, groups, what);
}

/// The comparison of [`expect_grouped`] on events already received.
fn assert_grouped(got: Vec<Value>, groups: Vec<Vec<Value>>, what: &str) {
    let strip = |mut e: Value| {
        if let Some(d) = e.get_mut("data").and_then(Value::as_object_mut) {
            d.remove("models");
        }
        e
    };
    let rid_of = |e: &Value| e["event"].as_str().unwrap().rsplit_once('.').unwrap().0.to_owned();
    let got: Vec<Value> = got.into_iter().map(strip).collect();
    for g in groups {
        let Some(first) = g.first() else { continue };
        let rid = rid_of(first);
        let observed: Vec<Value> = got.iter().filter(|e| rid_of(e) == rid).cloned().collect();
        let expected: Vec<Value> = g.into_iter().map(strip).collect();
        assert_eq!(observed, expected, "{what}: events on {rid} observed (left) vs expected (right); all: {got:?}");
    }
}

// ------------------------------------------------------------------------------------------------
// 01 hello-world
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_world_model_over_ws_http_and_resclient() {
    let (env, svc) = start(HelloWorld).await;
    let mut c = env.client().await;
    c.request("subscribe.example.model", json!(null))
        .await
        .assert_result(json!({"models": {"example.model": {"message": "Hello, World!"}}}));
    c.request("get.example.other", json!(null)).await.assert_error("system.notFound");
    c.request("call.example.model.ping", json!(null)).await.assert_error("system.methodNotFound");
    let get = env.http("GET", "/api/example/model", &[], b"").await;
    assert_eq!((get.status, get.json()), (200, json!({"message": "Hello, World!"})));
    let head = env.http("HEAD", "/api/example/model", &[], b"").await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "HEAD body: {:?}", head.text());
    assert_eq!(
        head.header("content-length"),
        Some(get.body.len().to_string().as_str()),
        "HEAD carries the Content-Length of the GET; HEAD headers {:?}",
        head.headers
    );
    let out = resclient(&env, "hello").await;
    assert_eq!(out, vec![json!({"model": {"message": "Hello, World!"}})]);
    // The gateway asked: access + get once (cached afterwards).
    let gets = svc.received().iter().filter(|r| r.subject == "get.example.model").count();
    assert_eq!(gets, 1, "one get for the cached model: {:#?}", svc.received());
}

// ------------------------------------------------------------------------------------------------
// 02 edit-text
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_text_set_change_event_before_response() {
    let (env, svc) = start(EditText::default()).await;
    let mut c1 = env.client().await;
    let mut c2 = env.client().await;
    for c in [&mut c1, &mut c2] {
        c.request("subscribe.text.shared", json!(null))
            .await
            .assert_result(json!({"models": {"text.shared": {"message": "Hello, Go World!"}}}));
    }
    for i in 0..20 {
        let msg = format!("Changed {i}");
        let id = c1.send("call.text.shared.set", json!({ "message": msg })).await;
        let (before, resp) = c1.frames_until_response(id).await;
        let change = json!({"event": "text.shared.change", "data": {"values": {"message": msg}}});
        assert_eq!(
            before,
            vec![change.clone()],
            "round {i}: frames before the set response (observed, left) vs the change event (right); response {resp:?}"
        );
        resp.assert_result(json!({ "payload": null }));
        assert_eq!(c2.next_event().await, change);
    }
    // Same value: go-res sends no event.
    let id = c1.send("call.text.shared.set", json!({"message": "Changed 19"})).await;
    let (before, resp) = c1.frames_until_response(id).await;
    assert!(before.is_empty(), "{before:?}");
    resp.assert_result(json!({ "payload": null }));
    c2.assert_no_message(QUIET).await;
    // HTTP POST, then GET: the new state.
    for i in 0..20 {
        let msg = format!("Via HTTP {i}");
        let body = serde_json::to_vec(&json!({ "message": msg })).unwrap();
        let r = env.http("POST", "/api/text/shared/set", &[("Content-Type", "application/json")], &body).await;
        assert_eq!(r.status, 204, "{}", r.text());
        let g = env.http("GET", "/api/text/shared", &[], b"").await;
        assert_eq!((g.status, g.json()), (200, json!({ "message": msg })), "GET right after POST {i}");
        assert_eq!(c2.next_event().await, json!({"event": "text.shared.change", "data": {"values": {"message": msg}}}));
    }
    let out = resclient(&env, "edittext").await;
    assert_eq!(out[0], json!({"model": {"message": "Via HTTP 19"}}));
    for line in &out[1..] {
        assert_eq!(line["seen"], line["set"], "resclient: `await model.set()` resolved before the change: {line}");
    }
    assert_eq!(out.len(), 51);
    assert_eq!(svc.with(|s| s.message.clone()), "resclient 49");
}

// ------------------------------------------------------------------------------------------------
// 03 book-collection
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn book_collection_new_set_delete() {
    let (env, svc) = start(BookCollection::default()).await;
    let mut c1 = env.client().await;
    let mut c2 = env.client().await;
    let (refs, models) = svc.with(|s| {
        let refs = s.collection_json();
        let models: BTreeMap<String, Value> = s.books.iter().map(|r| (r.clone(), s.book_json(r))).collect();
        (refs, models)
    });
    for c in [&mut c1, &mut c2] {
        c.request("subscribe.library.books", json!(null))
            .await
            .assert_result(json!({"collections": {"library.books": refs}, "models": models}));
    }
    // new: add event (with the new model), then the resource response (model already sent).
    let id = c1.send("call.library.books.new", json!({"title": " Dune ", "author": "Frank Herbert"})).await;
    let (before, resp) = c1.frames_until_response(id).await;
    let book4 = json!({"id": 4, "title": "Dune", "author": "Frank Herbert"});
    let add = json!({"event": "library.books.add", "data": {
        "idx": 3, "value": {"rid": "library.book.4"}, "models": {"library.book.4": book4},
    }});
    assert_eq!(before, vec![add.clone()], "frames before the `new` response (observed, left); response {resp:?}");
    resp.assert_result(json!({"rid": "library.book.4"}));
    assert_eq!(c2.next_event().await, add);
    // set: change event, then the response.
    let id = c1.send("call.library.book.4.set", json!({"title": "Dune Messiah"})).await;
    let (before, resp) = c1.frames_until_response(id).await;
    let change = json!({"event": "library.book.4.change", "data": {"values": {"title": "Dune Messiah"}}});
    assert_eq!(before, vec![change.clone()], "frames before the `set` response; response {resp:?}");
    resp.assert_result(json!({ "payload": null }));
    assert_eq!(c2.next_event().await, change);
    c1.request("call.library.book.4.set", json!({"title": "  "})).await.assert_error("system.invalidParams");
    c1.request("call.library.books.new", json!({"title": "x"})).await.assert_error("system.invalidParams");
    // delete: remove event, then the response.
    let id = c1.send("call.library.books.delete", json!({"id": 4})).await;
    let (before, resp) = c1.frames_until_response(id).await;
    let remove = json!({"event": "library.books.remove", "data": {"idx": 3}});
    assert_eq!(before, vec![remove.clone()], "frames before the `delete` response; response {resp:?}");
    resp.assert_result(json!({ "payload": null }));
    assert_eq!(c2.next_event().await, remove);
    c2.assert_no_message(QUIET).await;
    let g = env.http("GET", "/api/library/books", &[], b"").await;
    let truth = svc.with(|s| {
        let refs: Vec<Value> = s.collection_json().as_array().unwrap().clone();
        http_collection(&refs, |r| s.book_json(r["rid"].as_str().unwrap()))
    });
    assert_eq!((g.status, g.json()), (200, truth));
    // resclient: the created book resolves and is already in the collection.
    let out = resclient(&env, "books").await;
    let initial = json!(["library.book.1", "library.book.2", "library.book.3"]);
    assert_eq!(out[0], json!({ "books": initial }));
    assert_eq!(out[1]["created"], json!("library.book.5"), "{out:?}");
    assert_eq!(out[1]["books"], json!(["library.book.1", "library.book.2", "library.book.3", "library.book.5"]));
    assert_eq!(out[2], json!({ "books": initial }));
}

// ------------------------------------------------------------------------------------------------
// 04 book-collection-store
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn book_collection_store_follows_store_resets() {
    let (env, mut svc) = start(BookStore::default()).await;
    let truth =
        |svc: &GoRes<BookStore>| -> Vec<Value> { svc.with(|s| s.collection_json().as_array().unwrap().clone()) };
    let model_of = |svc: &GoRes<BookStore>, r: &Value| -> Value {
        let rid = r["rid"].as_str().unwrap();
        svc.with(|s| s.book_json(&rid["library.book.".len()..]))
    };
    let mut c1 = env.client().await;
    let mut c2 = env.client().await;
    let refs0 = truth(&svc);
    let mut held1 = HashSet::new();
    let mut held2 = HashSet::new();
    c1.request("subscribe.library.books", json!(null)).await.assert_result(sub_result(
        "library.books",
        &refs0,
        &held1,
        |r| model_of(&svc, r),
    ));
    c2.request("subscribe.library.books", json!(null)).await.assert_result(sub_result(
        "library.books",
        &refs0,
        &held2,
        |r| model_of(&svc, r),
    ));
    held1.extend(rids_of(&refs0));
    held2.extend(rids_of(&refs0));

    // new: create event (nobody holds the book), the resource response, then (index task) a
    // system.reset of library.books: the gateway re-gets it and sends the diff. The gateway
    // subscribes the caller to the new book before answering, so the reset's add event may come
    // first; whichever comes first carries the model.
    let id =
        c1.send("call.library.books.new", json!({"title": "A Tale of Two Cities", "author": "Charles Dickens"})).await;
    let (before, resp) = c1.frames_until_response(id).await;
    let new_rid = resp.result()["rid"].as_str().expect("rid in the new response").to_owned();
    let new_model = model_of(&svc, &json!({ "rid": new_rid }));
    let add = json!({"event": "library.books.add", "data": {"idx": 0, "value": {"rid": new_rid}}});
    let mut add_with_model = add.clone();
    add_with_model["data"]["models"] = json!({ new_rid.clone(): new_model.clone() });
    if before.is_empty() {
        resp.assert_result(json!({"rid": new_rid, "models": {new_rid.clone(): new_model}}));
        assert_eq!(c1.take_events(1).await, vec![add.clone()], "c1: the reset's add after the new response");
    } else {
        assert_eq!(before, vec![add_with_model], "c1: frames before the new response");
        resp.assert_result(json!({ "rid": new_rid }));
    }
    held1.insert(new_rid.clone());
    let mut direct1 = HashSet::from([new_rid.clone()]);
    let refs1 = truth(&svc);
    let ev2 = diff_events("library.books", &refs0, &refs1, &mut held2, &HashSet::new(), |r| model_of(&svc, r));
    expect_events(&mut c2, &ev2, "c2 after reset (new)").await;
    svc.wait_for("get.library.books after the reset", |l| l.iter().any(|r| r.subject == "get.library.books")).await;

    // set: the change event before the response; the re-sort comes with the reset, which go-res
    // sends after the reply (it may still overtake the reply on the client: not ordered).
    let id = c1.send(&format!("call.{new_rid}.set"), json!({"title": "Zen and the Art"})).await;
    let (before, resp) = c1.frames_until_response(id).await;
    let change = json!({"event": format!("{new_rid}.change"), "data": {"values": {"title": "Zen and the Art"}}});
    resp.assert_result(json!({ "payload": null }));
    let refs2 = truth(&svc);
    let ev1 = diff_events("library.books", &refs1, &refs2, &mut held1, &direct1, |r| model_of(&svc, r));
    let rest = after_required(before, std::slice::from_ref(&change), "frames before the `set` response");
    expect_rest(&mut c1, rest, &ev1, "c1 after reset (set)").await;
    assert_eq!(c2.next_event().await, change);
    let ev2 = diff_events("library.books", &refs1, &refs2, &mut held2, &HashSet::new(), |r| model_of(&svc, r));
    expect_events(&mut c2, &ev2, "c2 after reset (set)").await;

    // delete: the book's delete event (c1 also holds it directly: unsubscribe), the response,
    // then the reset's remove.
    let id_str = &new_rid["library.book.".len()..];
    let id = c1.send("call.library.books.delete", json!({ "id": id_str })).await;
    let (before, resp) = c1.frames_until_response(id).await;
    let required = [
        json!({"event": format!("{new_rid}.delete"), "data": null}),
        json!({"event": format!("{new_rid}.unsubscribe"), "data": {"reason": err("system.deleted", "Deleted")}}),
    ];
    resp.assert_result(json!({ "payload": null }));
    let refs3 = truth(&svc);
    let rest = after_required(before, &required, "frames before the `delete` response");
    let remove = json!({"event": "library.books.remove", "data": {"idx": 3}});
    expect_rest(&mut c1, rest, std::slice::from_ref(&remove), "c1 after reset (delete)").await;
    assert_eq!(c2.next_event().await, json!({"event": format!("{new_rid}.delete"), "data": null}));
    assert_eq!(c2.next_event().await, remove);
    held1.remove(&new_rid);
    direct1.clear();

    // Restart with a book added meanwhile: system.reset on start; the gateway re-gets.
    let silent = svc.with(|s| s.insert_silently("Beloved", "Toni Morrison"));
    svc.clear();
    svc.restart().await;
    let refs4 = truth(&svc);
    let ev = diff_events("library.books", &refs3, &refs4, &mut held1, &direct1, |r| model_of(&svc, r));
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["data"]["value"], json!({ "rid": format!("library.book.{silent}") }));
    expect_events(&mut c1, &ev, "c1 after the start-up reset").await;
    let g = env.http("GET", "/api/library/books", &[], b"").await;
    assert_eq!((g.status, g.json()), (200, http_collection(&refs4, |r| model_of(&svc, r))));
}

// ------------------------------------------------------------------------------------------------
// 05 search-query
// ------------------------------------------------------------------------------------------------

const ALL: &str = "name=&country=&from=0&limit=10";
const AL_FR: &str = "name=al&country=France&from=0&limit=10";
const DE: &str = "name=&country=Germany&from=0&limit=10";

fn truth(svc: &GoRes<SearchQuery>, raw: &str) -> Vec<Value> {
    svc.with(|s| s.query_result(raw))
}

fn cust(svc: &GoRes<SearchQuery>) -> impl Fn(&Value) -> Value + '_ {
    move |r| svc.with(|s| s.model_of(r))
}

async fn subscribe_query(c: &mut WsClient, svc: &GoRes<SearchQuery>, rid: &str, held: &mut HashSet<String>) {
    let raw = rid.split_once('?').map(|(_, q)| q).unwrap_or("");
    let refs = truth(svc, raw);
    let r = c.request(&format!("subscribe.{rid}"), json!(null)).await;
    assert_eq!(r.result(), sub_result(rid, &refs, held, cust(svc)), "subscribe {rid}");
    held.extend(rids_of(&refs));
}

async fn new_customer(c: &mut WsClient, name: &str, country: &str) -> String {
    new_customer_result(c, name, country).await["rid"].as_str().expect("newCustomer rid").to_owned()
}

/// The resource result of a `newCustomer` call (`rid`, and the models the reply carried).
async fn new_customer_result(c: &mut WsClient, name: &str, country: &str) -> Value {
    let r =
        c.request("call.search.customers.newCustomer", json!({"name": name, "email": "", "country": country})).await;
    let result = r.result();
    assert!(result["rid"].is_string(), "newCustomer result: {r:?}");
    result
}

/// The query requests the service received on query-event inboxes.
fn query_requests(svc: &GoRes<SearchQuery>) -> Vec<String> {
    svc.received()
        .iter()
        .filter(|r| r.subject.starts_with("_INBOX."))
        .map(|r| r.payload["query"].as_str().unwrap_or("<none>").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_unqueried_collection_gets_query_events() {
    let (env, svc) = start(SearchQuery::new(QueryReplies::Collection)).await;
    let mut c1 = env.client().await;
    let mut c2 = env.client().await;
    let mut held = HashSet::new();
    let old = truth(&svc, "");
    subscribe_query(&mut c1, &svc, "search.customers", &mut held).await;
    let g = svc.wait_for("get.search.customers", |l| l.iter().any(|r| r.subject == "get.search.customers")).await;
    assert_eq!(g.iter().find(|r| r.subject == "get.search.customers").unwrap().payload, json!({}));

    let rid = new_customer(&mut c2, "Alby Aaron", "France").await;
    svc.wait_for("a query request", |l| l.iter().any(|r| r.subject.starts_with("_INBOX."))).await;
    let new = truth(&svc, "");
    assert!(new.contains(&json!({ "rid": rid })), "the new customer is in the first 10");
    let expected = diff_events("search.customers", &old, &new, &mut held, &HashSet::new(), cust(&svc));
    expect_events(&mut c1, &expected, "c1 on search.customers after newCustomer").await;
    c1.assert_no_message(QUIET).await;
    assert_eq!(query_requests(&svc), vec![ALL.to_owned()], "query requests: {:#?}", svc.received());
    let h = env.http("GET", "/api/search/customers", &[], b"").await;
    assert_eq!((h.status, h.json()), (200, http_collection(&new, cust(&svc))), "HTTP GET after the query event");

    // Delete it: c1 holds it through the collection. The service publishes the customer's delete
    // event, then the query event; the collection's remove comes after a query round trip. Two
    // resources' events are applied by two tasks (by two workers in Resgate), so the delete
    // usually comes first; when the remove wins, the reference is gone and with it the
    // subscription, so no delete follows. Either way c1 ends in the service's state.
    svc.clear();
    c2.request(&format!("call.{rid}.delete"), json!(null)).await.assert_result(json!({ "payload": null }));
    let after = truth(&svc, "");
    let mut expected = diff_events("search.customers", &new, &after, &mut held, &HashSet::new(), cust(&svc));
    let first = c1.next_event().await;
    if first == json!({"event": format!("{rid}.delete"), "data": null}) {
        expect_events(&mut c1, &expected, "c1 after delete").await;
    } else {
        assert_eq!(first, expected.remove(0), "c1 after delete: first event");
        expect_events(&mut c1, &expected, "c1 after delete").await;
        c1.assert_no_message(QUIET).await;
    }
    assert_eq!(query_requests(&svc), vec![ALL.to_owned()]);
    let h = env.http("GET", "/api/search/customers", &[], b"").await;
    assert_eq!((h.status, h.json()), (200, http_collection(&after, cust(&svc))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_two_spellings_of_one_query() {
    let (env, svc) = start(SearchQuery::new(QueryReplies::Collection)).await;
    let rid_a = "search.customers?country=France&name=al";
    let rid_b = "search.customers?name=AL&country=France";
    let refs = truth(&svc, "country=France&name=al");
    assert_eq!(refs.len(), 3, "three French customers named al*");
    assert_eq!(refs, truth(&svc, "name=AL&country=France"));
    // One connection, both spellings: each gets the collection under its own rid.
    let mut c1 = env.client().await;
    let mut held1 = HashSet::new();
    subscribe_query(&mut c1, &svc, rid_a, &mut held1).await;
    subscribe_query(&mut c1, &svc, rid_b, &mut held1).await;
    // Another connection, the second spelling.
    let mut c2 = env.client().await;
    let mut held2 = HashSet::new();
    subscribe_query(&mut c2, &svc, rid_b, &mut held2).await;
    // The get requests carried the client's spellings; the service answered the normalized query.
    let gets: Vec<Value> =
        svc.received().iter().filter(|r| r.subject == "get.search.customers").map(|r| r.payload.clone()).collect();
    assert!(gets.iter().all(|p| p["query"] != json!(AL_FR)), "{gets:?}");
    // HTTP: both spellings, 200 with the body; HEAD with the GET's Content-Length.
    for path in ["/api/search/customers?country=France&name=al", "/api/search/customers?name=AL&country=France"] {
        let g = env.http("GET", path, &[], b"").await;
        assert_eq!((g.status, g.text()), (200, http_collection(&refs, cust(&svc)).to_string()), "GET {path}");
        let h = env.http("HEAD", path, &[], b"").await;
        assert_eq!(h.status, 200);
        assert_eq!(h.header("content-length"), Some(g.body.len().to_string().as_str()), "HEAD {path}: {:?}", h.headers);
    }
    // A new matching customer: one query request, an add on every subscription.
    svc.clear();
    let reply = new_customer_result(&mut c2, "Alex Bernard", "France").await;
    let rid = reply["rid"].as_str().unwrap().to_owned();
    let new = truth(&svc, "country=France&name=al");
    let idx = new.iter().position(|r| r["rid"] == json!(rid)).expect("matches");
    let mut got = vec![c1.next_event().await, c1.next_event().await];
    got.sort_by_key(|e| e["event"].as_str().unwrap().to_owned());
    assert_eq!(got[0]["event"], json!(format!("{rid_a}.add")));
    assert_eq!(got[1]["event"], json!(format!("{rid_b}.add")));
    for e in &got {
        assert_eq!((&e["data"]["idx"], &e["data"]["value"]), (&json!(idx), &json!({ "rid": rid })), "{e}");
    }
    // The model travels once on the connection.
    let with_models: Vec<&Value> = got.iter().filter(|e| e["data"].get("models").is_some()).collect();
    assert_eq!(with_models.len(), 1, "{got:?}");
    // c2 made the call: the customer reaches it once, with the resource reply or with the add
    // event, whichever the gateway produced first (the query round trip races the reply's
    // access check; Resgate's order depends on the same race).
    let add = c2.next_event().await;
    assert_eq!(add["event"], json!(format!("{rid_b}.add")));
    assert_eq!((&add["data"]["idx"], &add["data"]["value"]), (&json!(idx), &json!({ "rid": rid })), "{add}");
    let in_event = add["data"]["models"].get(&rid).is_some();
    let in_reply = reply["models"].get(&rid).is_some();
    assert!(in_event != in_reply, "the customer must travel exactly once: reply {reply}, event {add}");
    assert_eq!(query_requests(&svc), vec![AL_FR.to_owned()]);
    // resclient: both spellings resolve to the collection.
    let out = resclient(&env, "spellings").await;
    let ids: Vec<Value> = new.iter().map(|r| r["rid"].clone()).collect();
    assert_eq!(out, vec![json!({"a": ids, "b": ids})]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_system_reset_refetches_with_the_normalized_query() {
    let (env, mut svc) = start(SearchQuery::new(QueryReplies::Collection)).await;
    let mut c1 = env.client().await;
    let mut c2 = env.client().await;
    let mut c3 = env.client().await;
    let (mut h1, mut h2, mut h3) = (HashSet::new(), HashSet::new(), HashSet::new());
    subscribe_query(&mut c1, &svc, "search.customers?name=AL&country=France", &mut h1).await;
    subscribe_query(&mut c2, &svc, "search.customers", &mut h2).await;
    subscribe_query(&mut c3, &svc, "search.customers?country=France&name=al", &mut h3).await;
    let (old_fr, old_all) = (truth(&svc, AL_FR), truth(&svc, ""));
    svc.with(|s| s.insert_silently("Alan Turing", "France"));
    svc.clear();
    svc.restart().await;
    let (new_fr, new_all) = (truth(&svc, AL_FR), truth(&svc, ""));
    let e1 =
        diff_events("search.customers?name=AL&country=France", &old_fr, &new_fr, &mut h1, &HashSet::new(), cust(&svc));
    let e2 = diff_events("search.customers", &old_all, &new_all, &mut h2, &HashSet::new(), cust(&svc));
    let e3 =
        diff_events("search.customers?country=France&name=al", &old_fr, &new_fr, &mut h3, &HashSet::new(), cust(&svc));
    assert!(!e1.is_empty() && !e2.is_empty());
    expect_events(&mut c1, &e1, "c1 after system.reset").await;
    expect_events(&mut c2, &e2, "c2 after system.reset").await;
    expect_events(&mut c3, &e3, "c3 after system.reset").await;
    tokio::time::sleep(QUIET).await;
    let mut queries: Vec<Value> =
        svc.received().iter().filter(|r| r.subject == "get.search.customers").map(|r| r.payload.clone()).collect();
    queries.sort_by_key(|v| v.to_string());
    assert_eq!(
        queries,
        vec![json!({ "query": ALL }), json!({ "query": AL_FR })],
        "re-fetches of search.customers after the reset: one per normalized query, with it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_query_event_answered_with_events_keeps_the_cache_true() {
    let (env, svc) = start(SearchQuery::new(QueryReplies::Events)).await;
    let rid_b = "search.customers?name=AL&country=France";
    let mut c1 = env.client().await;
    let mut h1 = HashSet::new();
    subscribe_query(&mut c1, &svc, rid_b, &mut h1).await;
    subscribe_query(&mut c1, &svc, "search.customers", &mut h1).await;
    let mut c2 = env.client().await;
    let (old_fr, old_all) = (truth(&svc, AL_FR), truth(&svc, ""));
    new_customer(&mut c2, "Alan Turing", "France").await;
    let (fr1, all1) = (truth(&svc, AL_FR), truth(&svc, ""));
    let mut h = h1.clone();
    let none = HashSet::new();
    let groups = vec![
        diff_events(rid_b, &old_fr, &fr1, &mut h, &none, cust(&svc)),
        diff_events("search.customers", &old_all, &all1, &mut h, &none, cust(&svc)),
    ];
    expect_grouped(&mut c1, groups, "c1 after newCustomer (query event answered with events)").await;
    // Rename a matching customer out of the filter: its change event, then the query event's.
    let alice =
        svc.with(|s| s.customers.iter().find(|(_, c)| c.name == "Alice Martin").map(|(id, _)| id.clone()).unwrap());
    c2.request(&format!("call.search.customer.{alice}.set"), json!({"name": "Zoe Martin"}))
        .await
        .assert_result(json!({ "payload": null }));
    let (fr2, all2) = (truth(&svc, AL_FR), truth(&svc, ""));
    let queries = vec![
        diff_events(rid_b, &fr1, &fr2, &mut h, &none, cust(&svc)),
        diff_events("search.customers", &all1, &all2, &mut h, &none, cust(&svc)),
    ];
    // The customer's change event and the collections' removes race (two resources, two tasks;
    // two workers in Resgate), as the delete does in `search_unqueried_collection_gets_query_events`:
    // the change usually comes first; when the removes win, c1 no longer holds the customer and
    // gets no change. Either way c1 ends in the service's state.
    let change =
        json!({"event": format!("search.customer.{alice}.change"), "data": {"values": {"name": "Zoe Martin"}}});
    let n: usize = queries.iter().map(Vec::len).sum();
    let mut got = c1.take_events(n).await;
    if got.contains(&change) {
        got.extend(c1.take_events(1).await);
    }
    got.extend(c1.events_within(QUIET).await);
    let changes: Vec<&Value> = got.iter().filter(|e| e["event"] == change["event"]).collect();
    assert!(changes.is_empty() || changes == [&change], "c1 after set: the customer's change events {changes:?}");
    assert_eq!(got.len(), n + changes.len(), "c1 after set: nothing but the expected events; all: {got:?}");
    assert_grouped(got, queries, "c1 after set (query event answered with events)");
    // A fresh connection and HTTP must see exactly the service's truth under every spelling.
    for rid in [rid_b, "search.customers?country=France&name=al", "search.customers", "search.customers?limit=10"] {
        let raw = rid.split_once('?').map(|(_, q)| q).unwrap_or("");
        let mut c3 = env.client().await;
        let r = c3.request(&format!("get.{rid}"), json!(null)).await;
        let expected = sub_result(rid, &truth(&svc, raw), &HashSet::new(), cust(&svc));
        assert_eq!(r.result(), expected, "a new connection's get {rid} vs the service's truth");
        let path = format!("/api/search/customers{}", rid.find('?').map(|i| &rid[i..]).unwrap_or(""));
        let g = env.http("GET", &path, &[], b"").await;
        assert_eq!((g.status, g.json()), (200, http_collection(&truth(&svc, raw), cust(&svc))), "HTTP GET {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_one_query_request_per_normalized_query() {
    let (env, svc) = start(SearchQuery::new(QueryReplies::Collection)).await;
    let mut c1 = env.client().await;
    let mut c2 = env.client().await;
    let mut c3 = env.client().await;
    // (What the subscribes return is 23's two-spellings test; here only the query requests.)
    for (c, rid) in [
        (&mut c1, "search.customers?name=AL&country=France"),
        (&mut c2, "search.customers?country=Germany"),
        (&mut c3, "search.customers"),
    ] {
        c.request(&format!("subscribe.{rid}"), json!(null)).await.result();
    }
    c1.request("subscribe.search.customers?country=France&name=al", json!(null)).await.result();
    c3.request("subscribe.search.customers?limit=10", json!(null)).await.result();
    svc.clear();
    new_customer(&mut c2, "Alan Turing", "France").await;
    svc.wait_for("3 query requests", |l| l.iter().filter(|r| r.subject.starts_with("_INBOX.")).count() >= 3).await;
    tokio::time::sleep(QUIET).await;
    let mut q = query_requests(&svc);
    q.sort();
    let mut expected = vec![AL_FR.to_owned(), ALL.to_owned(), DE.to_owned()];
    expected.sort();
    assert_eq!(q, expected, "one query request per normalized query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_with_resclient() {
    let (env, svc) = start(SearchQuery::new(QueryReplies::Collection)).await;
    let before_all = truth(&svc, "");
    let before_fr = truth(&svc, AL_FR);
    let out = resclient(&env, "search").await;
    let ids = |v: &[Value]| -> Value { v.iter().map(|r| r["rid"].clone()).collect() };
    assert_eq!(out[0], json!({"all": ids(&before_all), "fr": ids(&before_fr)}));
    let created = out[1]["created"].as_str().expect("created rid").to_owned();
    let (after_all, after_fr) = (truth(&svc, ""), truth(&svc, AL_FR));
    assert!(after_fr.contains(&json!({ "rid": created })));
    assert_eq!(out[2], json!({"all": ids(&after_all), "fr": ids(&after_fr)}), "resclient's views vs the service");
}
