//! go-res, modelled: a service runtime that puts on NATS exactly the messages go-res v0.5.1
//! (github.com/jirenius/go-res, the Go service library by Resgate's author) puts there, and the
//! five example services of its repository (`examples/01`–`05`) written on it, handler for handler.
//!
//! What the runtime reproduces (service.go, request.go, resource.go, queryevent.go, codec.go):
//! - start: subscribe `access|get.<name>` and `access|get|call|auth.<name>.>`, then publish
//!   `system.reset` `{"resources":[name, name.>],"access":[name, name.>]}` (`ResetAll`);
//! - a request for a resource without a handler: `system.notFound`; access: `AccessGranted`;
//! - a handler's events go out before its reply, on the same connection, in the order sent;
//! - store changes (go-res `store/badgerstore`): the model event (change/create/delete) comes from
//!   the store's change callback inside the request, the collection's reaction (a `system.reset` of
//!   a plain collection, a query event of a query collection) from its index task queue, which
//!   runs after the request (modelled: right after the reply);
//! - query events: a fresh inbox is subscribed, `event.<rname>.query` `{"subject":inbox}` is
//!   published, and query requests on the inbox are answered for 3 s (go-res' default duration)
//!   with the change's result: a collection (badgerstore: "affected, reset") or `{"events":[..]}`
//!   (a store whose `QueryChange.Events` returns the diff; `{"events":[]}` when unaffected).
//!
//! Every message the service receives is logged for the tests. The state sits behind a mutex the
//! test can read (the service's truth) and change silently (as if changed while the service was
//! down); `restart` reconnects and sends the start-up `system.reset` again.

use super::WAIT;
use futures_util::StreamExt;
use futures_util::stream::{AbortHandle, SelectAll, abortable};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

/// go-res' default query event duration (`defaultQueryEventDuration`).
const QUERY_EVENT_DURATION: Duration = Duration::from_secs(3);

/// A go-res service: its resources and handlers.
pub trait Example: Send + 'static {
    /// What a query event hands to its query requests (the store change).
    type Change: Send + Sync + 'static;
    /// `res.NewService(name)`.
    fn name(&self) -> &'static str;
    /// Whether a handler pattern matches `rname` (go-res replies `system.notFound` otherwise).
    fn handles(&self, rname: &str) -> bool;
    /// A get request; `query` is the request's `query` ("" when absent).
    fn get(&mut self, rname: &str, query: &str) -> Value;
    /// A call request; events go to `out`, the returned reply follows them.
    fn call(&mut self, rname: &str, method: &str, params: &Value, out: &mut Out<Self::Change>) -> Value;
    /// An auth request; go-res' default without auth handlers: `system.methodNotFound`.
    fn auth(&mut self, _rname: &str, _method: &str, _req: &Value, _out: &mut Out<Self::Change>) -> Value {
        error("system.methodNotFound", "Method not found")
    }
    /// A query request of a query event sent for `change`; `None` = no events added.
    fn query(&mut self, _rname: &str, _change: &Self::Change, _query: &str) -> Option<Value> {
        None
    }
}

/// What a handler sends besides its reply.
pub struct Out<C> {
    events: Vec<(String, Vec<u8>)>,
    after: Vec<After<C>>,
}

enum After<C> {
    Reset(Vec<String>),
    Query(String, Arc<C>),
}

impl<C> Out<C> {
    fn new() -> Out<C> {
        Out { events: Vec::new(), after: Vec::new() }
    }

    /// `ChangeEvent`: nothing when `values` is empty.
    pub fn change(&mut self, rid: &str, values: Map<String, Value>) {
        if !values.is_empty() {
            self.json(format!("event.{rid}.change"), json!({ "values": values }));
        }
    }

    /// `AddEvent`.
    pub fn add(&mut self, rid: &str, value: Value, idx: usize) {
        self.json(format!("event.{rid}.add"), json!({"value": value, "idx": idx}));
    }

    /// `RemoveEvent`.
    pub fn remove(&mut self, rid: &str, idx: usize) {
        self.json(format!("event.{rid}.remove"), json!({ "idx": idx }));
    }

    /// `CreateEvent` / `DeleteEvent`: published without payload (`rawEvent(subj, nil)`).
    pub fn empty(&mut self, rid: &str, event: &str) {
        self.events.push((format!("event.{rid}.{event}"), Vec::new()));
    }

    /// `Service.TokenEvent`.
    pub fn token(&mut self, cid: &str, token: Value) {
        self.json(format!("conn.{cid}.token"), json!({ "token": token }));
    }

    /// `Resource.ResetEvent` from the store's index task: after the reply.
    pub fn reset_after(&mut self, resources: Vec<String>) {
        self.after.push(After::Reset(resources));
    }

    /// `Resource.QueryEvent` from the query store's index task: after the reply.
    pub fn query_event_after(&mut self, rname: &str, change: C) {
        self.after.push(After::Query(rname.to_owned(), Arc::new(change)));
    }

    fn json(&mut self, subject: String, v: Value) {
        self.events.push((subject, serde_json::to_vec(&v).unwrap()));
    }
}

/// `{"result":null}` (`OK(nil)`).
pub fn ok() -> Value {
    json!({ "result": null })
}

pub fn error(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message}})
}

pub fn not_found() -> Value {
    error("system.notFound", "Not found")
}

pub fn invalid_params(message: &str) -> Value {
    error("system.invalidParams", message)
}

pub fn model(m: Value) -> Value {
    json!({"result": {"model": m}})
}

pub fn collection(c: Value) -> Value {
    json!({"result": {"collection": c}})
}

/// `Resource(rid)`.
pub fn resource(rid: &str) -> Value {
    json!({"resource": {"rid": rid}})
}

/// A resource reference (`res.Ref`).
pub fn rref(rid: &str) -> Value {
    json!({ "rid": rid })
}

/// A message the service received.
#[derive(Clone, Debug)]
pub struct Received {
    pub subject: String,
    /// The payload as JSON (`Null` when empty).
    pub payload: Value,
}

type Tagged = Pin<Box<dyn futures_util::Stream<Item = (Option<u64>, async_nats::Message)> + Send>>;

/// A running go-res service.
pub struct GoRes<E: Example> {
    pub state: Arc<Mutex<E>>,
    log: Arc<(Mutex<Vec<Received>>, Notify)>,
    url: String,
    task: JoinHandle<()>,
}

impl<E: Example> Drop for GoRes<E> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<E: Example> GoRes<E> {
    /// Connects, subscribes, sends the start-up `system.reset` and serves.
    pub async fn start(url: &str, example: E) -> GoRes<E> {
        let state = Arc::new(Mutex::new(example));
        let log = Arc::new((Mutex::new(Vec::new()), Notify::new()));
        let task = serve(url, state.clone(), log.clone()).await;
        GoRes { state, log, url: url.to_owned(), task }
    }

    /// Stops serving (the connection closes) and starts again with the same state.
    pub async fn restart(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        self.task = serve(&self.url, self.state.clone(), self.log.clone()).await;
    }

    /// Reads or changes the service's state (no events: a change "while the service was down").
    pub fn with<T>(&self, f: impl FnOnce(&mut E) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.log.0.lock().unwrap().clone()
    }

    /// Forgets what was received so far.
    pub fn clear(&self) {
        self.log.0.lock().unwrap().clear();
    }

    /// Waits (bounded) until `pred` holds for the log; returns the log.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.log.1.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let log = self.log.0.lock().unwrap();
                if pred(&log) {
                    return log.clone();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("service: waited for {what}; received: {:#?}", self.received());
            }
        }
    }
}

async fn serve<E: Example>(
    url: &str,
    state: Arc<Mutex<E>>,
    log: Arc<(Mutex<Vec<Received>>, Notify)>,
) -> JoinHandle<()> {
    let client = async_nats::connect(url).await.expect("go-res service connects to NATS");
    let name = state.lock().unwrap().name();
    let mut streams: SelectAll<Tagged> = SelectAll::new();
    for pattern in [
        format!("access.{name}"),
        format!("access.{name}.>"),
        format!("get.{name}"),
        format!("get.{name}.>"),
        format!("call.{name}.>"),
        format!("auth.{name}.>"),
    ] {
        let sub = client.subscribe(pattern).await.expect("subscribe");
        streams.push(Box::pin(sub.map(|m| (None, m))));
    }
    let patterns = json!([name, format!("{name}.>")]);
    let reset = json!({"resources": patterns, "access": patterns});
    client.publish("system.reset", serde_json::to_vec(&reset).unwrap().into()).await.expect("publish reset");
    super::synced_with_server(&client).await;
    tokio::spawn(async move {
        let (expire_tx, mut expire_rx) = mpsc::unbounded_channel::<u64>();
        let mut queries: HashMap<u64, (String, Arc<E::Change>, AbortHandle)> = HashMap::new();
        let mut next_query = 0u64;
        loop {
            let (tag, msg) = tokio::select! {
                Some(m) = streams.next() => m,
                Some(id) = expire_rx.recv() => {
                    if let Some((_, _, abort)) = queries.remove(&id) {
                        abort.abort();
                    }
                    continue;
                }
                else => return,
            };
            let payload: Value = serde_json::from_slice(&msg.payload).unwrap_or(Value::Null);
            {
                let mut l = log.0.lock().unwrap();
                l.push(Received { subject: msg.subject.to_string(), payload: payload.clone() });
                log.1.notify_waiters();
            }
            let Some(reply) = msg.reply.clone() else { continue };
            let mut out = Out::new();
            let response = match tag {
                Some(id) => match queries.get(&id) {
                    Some((rname, change, _)) => {
                        let query = payload["query"].as_str().unwrap_or("");
                        if query.is_empty() {
                            Some(error("system.internalError", "Internal error: missing query"))
                        } else {
                            let r = state.lock().unwrap().query(rname, change, query);
                            Some(r.unwrap_or_else(|| json!({"result": {"events": []}})))
                        }
                    }
                    None => None,
                },
                None => handle_request(&state, &msg.subject, &payload, &mut out),
            };
            for (subject, bytes) in out.events {
                client.publish(subject, bytes.into()).await.expect("publish event");
            }
            if let Some(r) = response {
                client.publish(reply, serde_json::to_vec(&r).unwrap().into()).await.expect("publish reply");
            }
            for after in out.after {
                match after {
                    After::Reset(resources) => {
                        let v = json!({ "resources": resources });
                        client.publish("system.reset", serde_json::to_vec(&v).unwrap().into()).await.expect("reset");
                    }
                    After::Query(rname, change) => {
                        let inbox = client.new_inbox();
                        let sub = client.subscribe(inbox.clone()).await.expect("subscribe query inbox");
                        let id = next_query;
                        next_query += 1;
                        let (stream, abort) = abortable(sub);
                        streams.push(Box::pin(stream.map(move |m| (Some(id), m))));
                        queries.insert(id, (rname.clone(), change, abort));
                        let ev = serde_json::to_vec(&json!({ "subject": inbox })).unwrap();
                        client.publish(format!("event.{rname}.query"), ev.into()).await.expect("query event");
                        let tx = expire_tx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(QUERY_EVENT_DURATION).await;
                            let _ = tx.send(id);
                        });
                    }
                }
            }
            let _ = client.flush().await;
        }
    })
}

/// go-res' `handleRequest` + `processRequest` + `executeHandler` for one request.
fn handle_request<E: Example>(state: &Mutex<E>, subject: &str, req: &Value, out: &mut Out<E::Change>) -> Option<Value> {
    let (rtype, rest) = subject.split_once('.')?;
    let (rname, method) = match rtype {
        "call" | "auth" => rest.rsplit_once('.')?,
        _ => (rest, ""),
    };
    let mut s = state.lock().unwrap();
    if !s.handles(rname) {
        return Some(not_found());
    }
    Some(match rtype {
        "access" => json!({"result": {"get": true, "call": "*"}}),
        "get" => s.get(rname, req["query"].as_str().unwrap_or("")),
        "call" => s.call(rname, method, &req["params"], out),
        "auth" => s.auth(rname, method, req, out),
        _ => return None,
    })
}

// ------------------------------------------------------------------------------------------------
// Go's net/url, as the examples use it
// ------------------------------------------------------------------------------------------------

/// `url.QueryEscape`: space as `+`, everything but `A-Za-z0-9-_.~` percent-encoded.
pub fn query_escape(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => o.push(b as char),
            b' ' => o.push('+'),
            _ => o.push_str(&format!("%{b:02X}")),
        }
    }
    o
}

/// `url.QueryUnescape`; `None` on a malformed escape.
fn query_unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut o = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                o.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                o.push(b' ');
                i += 1;
            }
            c => {
                o.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(o).ok()
}

/// `url.ParseQuery` with its errors discarded (`Resource.ParseQuery`): malformed pairs and keys
/// with `;` are skipped. Returns the first value of each key (`Values.Get`).
pub fn parse_query(q: &str) -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    for pair in q.split('&') {
        if pair.is_empty() || pair.contains(';') {
            continue;
        }
        let (k, val) = pair.split_once('=').unwrap_or((pair, ""));
        if let (Some(k), Some(val)) = (query_unescape(k), query_unescape(val)) {
            v.entry(k).or_insert(val);
        }
    }
    v
}

/// go-res' (and Resgate's) LCS diff of two collections: remove events (descending), then add
/// events, as `store.collectionDiff` and Resgate's `rescache.lcs` emit them.
pub fn lcs_events(a: &[Value], b: &[Value]) -> Vec<(&'static str, Value)> {
    let mut s = 0;
    let (mut m, mut n) = (a.len(), b.len());
    while s < m && s < n && a[s] == b[s] {
        s += 1;
    }
    if s == m && s == n {
        return Vec::new();
    }
    while s < m && s < n && a[m - 1] == b[n - 1] {
        m -= 1;
        n -= 1;
    }
    let (aa, bb) = (&a[s..m], &b[s..n]);
    let (m, n) = (aa.len(), bb.len());
    let w = m + 1;
    let mut c = vec![0usize; w * (n + 1)];
    for i in 0..m {
        for j in 0..n {
            c[(i + 1) + w * (j + 1)] =
                if aa[i] == bb[j] { c[i + w * j] + 1 } else { c[(i + 1) + w * j].max(c[i + w * (j + 1)]) };
        }
    }
    let mut steps = Vec::new();
    let mut idx = m + s;
    let (mut i, mut j) = (m, n);
    let mut r = 0usize;
    let mut adds: Vec<[usize; 3]> = Vec::new();
    loop {
        if i > 0 && j > 0 && aa[i - 1] == bb[j - 1] {
            idx -= 1;
            i -= 1;
            j -= 1;
        } else if j > 0 && (i == 0 || c[i + w * (j - 1)] >= c[(i - 1) + w * j]) {
            adds.push([j - 1, idx, r]);
            j -= 1;
        } else if i > 0 && (j == 0 || c[i + w * (j - 1)] < c[(i - 1) + w * j]) {
            idx -= 1;
            steps.push(("remove", json!({ "idx": idx })));
            r += 1;
            i -= 1;
        } else {
            break;
        }
    }
    let l = adds.len();
    for (k, add) in adds.iter().enumerate().rev() {
        // Go: add[1] - r + add[2] + l - i, with i counting down from l-1.
        let at = add[1] + add[2] + (l - 1 - k) - r;
        steps.push(("add", json!({"value": bb[add[0]], "idx": at})));
    }
    steps
}

/// Applies add/remove events to a collection (as a client or cache does).
pub fn apply_events(c: &mut Vec<Value>, events: &[(&str, Value)]) {
    for (name, data) in events {
        let idx = data["idx"].as_u64().unwrap() as usize;
        match *name {
            "add" => c.insert(idx, data["value"].clone()),
            "remove" => {
                c.remove(idx);
            }
            other => panic!("not a collection event: {other}"),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// 01 hello-world
// ------------------------------------------------------------------------------------------------

/// `examples/01-hello-world`: service `example`, model `example.model`.
pub struct HelloWorld;

impl Example for HelloWorld {
    type Change = ();
    fn name(&self) -> &'static str {
        "example"
    }
    fn handles(&self, rname: &str) -> bool {
        rname == "example.model"
    }
    fn get(&mut self, _rname: &str, _query: &str) -> Value {
        model(json!({"message": "Hello, World!"}))
    }
    fn call(&mut self, _: &str, _: &str, _: &Value, _: &mut Out<()>) -> Value {
        error("system.methodNotFound", "Method not found")
    }
}

// ------------------------------------------------------------------------------------------------
// 02 edit-text
// ------------------------------------------------------------------------------------------------

/// `examples/02-edit-text`: service `text`, model `text.shared` with `set`.
pub struct EditText {
    pub message: String,
}

impl Default for EditText {
    fn default() -> EditText {
        EditText { message: "Hello, Go World!".into() }
    }
}

impl Example for EditText {
    type Change = ();
    fn name(&self) -> &'static str {
        "text"
    }
    fn handles(&self, rname: &str) -> bool {
        rname == "text.shared"
    }
    fn get(&mut self, _: &str, _: &str) -> Value {
        model(json!({"message": self.message}))
    }
    fn call(&mut self, rname: &str, method: &str, params: &Value, out: &mut Out<()>) -> Value {
        if method != "set" {
            return error("system.methodNotFound", "Method not found");
        }
        if let Some(m) = params["message"].as_str()
            && m != self.message
        {
            self.message = m.to_owned();
            let mut ch = Map::new();
            ch.insert("message".into(), json!(m));
            out.change(rname, ch);
        }
        ok()
    }
}

// ------------------------------------------------------------------------------------------------
// 03 book-collection
// ------------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
pub struct Book {
    pub title: String,
    pub author: String,
}

/// `examples/03-book-collection`: service `library`, `library.books` (collection of references)
/// with `new` and `delete`, `library.book.$id` (numeric ids) with `set`.
pub struct BookCollection {
    pub models: BTreeMap<String, (i64, Book)>,
    pub books: Vec<String>,
    pub next_id: i64,
}

fn seed_books() -> Vec<Book> {
    [("Animal Farm", "George Orwell"), ("Brave New World", "Aldous Huxley"), ("Coraline", "Neil Gaiman")]
        .into_iter()
        .map(|(t, a)| Book { title: t.into(), author: a.into() })
        .collect()
}

impl Default for BookCollection {
    fn default() -> BookCollection {
        let mut models = BTreeMap::new();
        let mut books = Vec::new();
        for (i, b) in seed_books().into_iter().enumerate() {
            let rid = format!("library.book.{}", i + 1);
            models.insert(rid.clone(), (i as i64 + 1, b));
            books.push(rid);
        }
        BookCollection { models, books, next_id: 4 }
    }
}

impl BookCollection {
    pub fn book_json(&self, rid: &str) -> Value {
        let (id, b) = &self.models[rid];
        json!({"id": id, "title": b.title, "author": b.author})
    }

    pub fn collection_json(&self) -> Value {
        Value::Array(self.books.iter().map(|r| rref(r)).collect())
    }
}

/// `strings.TrimSpace` of an optional string param; `Err` when present but empty after trimming.
fn trimmed(params: &Value, key: &str, msg: &str) -> Result<Option<String>, Value> {
    match params[key].as_str() {
        None => Ok(None),
        Some(s) if s.trim().is_empty() => Err(invalid_params(msg)),
        Some(s) => Ok(Some(s.trim().to_owned())),
    }
}

impl Example for BookCollection {
    type Change = ();
    fn name(&self) -> &'static str {
        "library"
    }
    fn handles(&self, rname: &str) -> bool {
        rname == "library.books" || rname.strip_prefix("library.book.").is_some_and(|id| !id.contains('.'))
    }
    fn get(&mut self, rname: &str, _: &str) -> Value {
        if rname == "library.books" {
            return collection(self.collection_json());
        }
        if self.models.contains_key(rname) { model(self.book_json(rname)) } else { not_found() }
    }
    fn call(&mut self, rname: &str, method: &str, params: &Value, out: &mut Out<()>) -> Value {
        match (rname, method) {
            ("library.books", "new") => {
                let title = params["title"].as_str().unwrap_or("").trim().to_owned();
                let author = params["author"].as_str().unwrap_or("").trim().to_owned();
                if title.is_empty() || author.is_empty() {
                    return invalid_params("Must provide both title and author");
                }
                let rid = format!("library.book.{}", self.next_id);
                self.models.insert(rid.clone(), (self.next_id, Book { title, author }));
                self.next_id += 1;
                out.add("library.books", rref(&rid), self.books.len());
                self.books.push(rid.clone());
                resource(&rid)
            }
            ("library.books", "delete") => {
                let rname = format!("library.book.{}", params["id"].as_i64().unwrap_or(0));
                if self.models.remove(&rname).is_some()
                    && let Some(i) = self.books.iter().position(|r| *r == rname)
                {
                    self.books.remove(i);
                    out.remove("library.books", i);
                }
                ok()
            }
            ("library.books", _) => error("system.methodNotFound", "Method not found"),
            (_, "set") => {
                if !self.models.contains_key(rname) {
                    return not_found();
                }
                let title = match trimmed(params, "title", "Title must not be empty") {
                    Ok(t) => t,
                    Err(e) => return e,
                };
                let author = match trimmed(params, "author", "Author must not be empty") {
                    Ok(a) => a,
                    Err(e) => return e,
                };
                let book = &mut self.models.get_mut(rname).unwrap().1;
                let mut changed = Map::new();
                if let Some(t) = title
                    && t != book.title
                {
                    changed.insert("title".into(), json!(t));
                    book.title = t;
                }
                if let Some(a) = author
                    && a != book.author
                {
                    changed.insert("author".into(), json!(a));
                    book.author = a;
                }
                out.change(rname, changed);
                ok()
            }
            _ => error("system.methodNotFound", "Method not found"),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// 04 book-collection-store
// ------------------------------------------------------------------------------------------------

/// `examples/04-book-collection-store`: the same API on a badgerstore: books with xid-like ids,
/// `library.books` is the title index (lower-case title, then id), maintained by the query store's
/// task queue, which answers a change of the index with a `system.reset` of `library.books`
/// (badgerstore's `QueryChange.Events` reports "reset" for every affected query).
pub struct BookStore {
    pub books: BTreeMap<String, Book>,
    next_id: u64,
}

impl Default for BookStore {
    fn default() -> BookStore {
        let mut s = BookStore { books: BTreeMap::new(), next_id: 0 };
        for b in seed_books() {
            let id = s.new_id();
            s.books.insert(id, b);
        }
        s
    }
}

/// An id shaped like an xid (20 characters of base32hex), increasing.
fn xid(n: u64) -> String {
    format!("cv{n:018}")
}

fn index_order(entries: &mut [(Vec<u8>, String)]) {
    // Badger keys `<index>:<key>\x00<id>`, compared as bytes.
    entries.sort_by(|a, b| {
        let ka = [a.0.as_slice(), b"\0", a.1.as_bytes()].concat();
        let kb = [b.0.as_slice(), b"\0", b.1.as_bytes()].concat();
        ka.cmp(&kb)
    });
}

impl BookStore {
    fn new_id(&mut self) -> String {
        self.next_id += 1;
        xid(self.next_id)
    }

    pub fn book_json(&self, id: &str) -> Value {
        let b = &self.books[id];
        json!({"id": id, "title": b.title, "author": b.author})
    }

    /// `library.books`: every book by lower-case title (`booksByTitleIndexQuery`, limit -1).
    pub fn collection_json(&self) -> Value {
        let mut entries: Vec<(Vec<u8>, String)> =
            self.books.iter().map(|(id, b)| (b.title.to_lowercase().into_bytes(), id.clone())).collect();
        index_order(&mut entries);
        Value::Array(entries.into_iter().map(|(_, id)| rref(&format!("library.book.{id}"))).collect())
    }

    /// Adds a book without events (as if added while the service was down).
    pub fn insert_silently(&mut self, title: &str, author: &str) -> String {
        let id = self.new_id();
        self.books.insert(id.clone(), Book { title: title.into(), author: author.into() });
        id
    }
}

impl Example for BookStore {
    type Change = ();
    fn name(&self) -> &'static str {
        "library"
    }
    fn handles(&self, rname: &str) -> bool {
        rname == "library.books" || rname.strip_prefix("library.book.").is_some_and(|id| !id.contains('.'))
    }
    fn get(&mut self, rname: &str, _: &str) -> Value {
        if rname == "library.books" {
            return collection(self.collection_json());
        }
        let id = &rname["library.book.".len()..];
        if self.books.contains_key(id) { model(self.book_json(id)) } else { not_found() }
    }
    fn call(&mut self, rname: &str, method: &str, params: &Value, out: &mut Out<()>) -> Value {
        match (rname, method) {
            ("library.books", "new") => {
                let title = params["title"].as_str().unwrap_or("").trim().to_owned();
                let author = params["author"].as_str().unwrap_or("").trim().to_owned();
                if title.is_empty() || author.is_empty() {
                    return invalid_params("Must provide both title and author");
                }
                let id = self.new_id();
                self.books.insert(id.clone(), Book { title, author });
                let rid = format!("library.book.{id}");
                // store.Handler: CreateEvent; the index task: reset of the collection.
                out.empty(&rid, "create");
                out.reset_after(vec!["library.books".into()]);
                resource(&rid)
            }
            ("library.books", "delete") => {
                let id = params["id"].as_str().unwrap_or("").to_owned();
                if self.books.remove(&id).is_none() {
                    return not_found();
                }
                out.empty(&format!("library.book.{id}"), "delete");
                out.reset_after(vec!["library.books".into()]);
                ok()
            }
            ("library.books", _) => error("system.methodNotFound", "Method not found"),
            (_, "set") => {
                let id = rname["library.book.".len()..].to_owned();
                let Some(before) = self.books.get(&id).cloned() else { return not_found() };
                let mut after = before.clone();
                match trimmed(params, "title", "Title must not be empty") {
                    Ok(Some(t)) => after.title = t,
                    Ok(None) => {}
                    Err(e) => return e,
                }
                match trimmed(params, "author", "Author must not be empty") {
                    Ok(Some(a)) => after.author = a,
                    Ok(None) => {}
                    Err(e) => return e,
                }
                self.books.insert(id.clone(), after.clone());
                // store.Handler's modelDiff.
                let mut changed = Map::new();
                if after.title != before.title {
                    changed.insert("title".into(), json!(after.title));
                }
                if after.author != before.author {
                    changed.insert("author".into(), json!(after.author));
                }
                out.change(rname, changed);
                if after.title.to_lowercase() != before.title.to_lowercase() {
                    out.reset_after(vec!["library.books".into()]);
                }
                ok()
            }
            _ => error("system.methodNotFound", "Method not found"),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// 05 search-query
// ------------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
pub struct Customer {
    pub name: String,
    pub email: String,
    pub country: String,
}

/// `Countries`.
pub const COUNTRIES: [&str; 4] = ["France", "Germany", "Sweden", "United Kingdom"];

/// How query requests are answered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum QueryReplies {
    /// badgerstore: an affected query gets its whole current collection.
    Collection,
    /// A store whose `QueryChange.Events` returns the diff: `{"events":[..]}`.
    Events,
}

/// A store change, as the query store hands it to query requests.
pub struct CustomerChange {
    before: Option<Customer>,
    after: Option<Customer>,
    /// The store before and after the change (for the events a diffing store returns).
    store_before: BTreeMap<String, Customer>,
    store_after: BTreeMap<String, Customer>,
}

/// `examples/05-search-query`: service `search`: `search.customers` (query collection of
/// customer references, `newCustomer`), `search.customer.$id` (`set`, `delete`),
/// `search.countries`. Queries normalise to `name=<lower>&country=<c>&from=<n>&limit=<n>`.
pub struct SearchQuery {
    pub customers: BTreeMap<String, Customer>,
    pub replies: QueryReplies,
    next_id: u64,
}

/// `customersIndexQuery`'s result.
#[derive(Clone, Debug)]
struct IndexQuery {
    by_country: bool,
    prefix: String,
    offset: usize,
    limit: usize,
}

/// `parseQuery`: (name lower-cased, country, from, limit) or the invalidQuery error.
fn parse_customer_query(q: &BTreeMap<String, String>) -> Result<(String, String, usize, usize), Value> {
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let name = get("name").to_lowercase();
    let country = get("country");
    let from: i64 = get("from").parse().unwrap_or(0);
    let limit: i64 = get("limit").parse().unwrap_or(-1);
    let from = from.max(0) as usize;
    let limit = if limit < 0 { 10 } else { limit as usize };
    if limit > 50 {
        return Err(error("system.invalidQuery", "Limit must be 50 or less."));
    }
    Ok((name, country, from, limit))
}

fn customers_index_query(q: &BTreeMap<String, String>) -> Result<IndexQuery, Value> {
    let (name, country, offset, limit) = parse_customer_query(q)?;
    Ok(if !country.is_empty() {
        IndexQuery { by_country: true, prefix: format!("{country}_{name}"), offset, limit }
    } else {
        IndexQuery { by_country: false, prefix: name, offset, limit }
    })
}

fn index_key(by_country: bool, c: &Customer) -> Vec<u8> {
    if by_country {
        format!("{}_{}", c.country, c.name.to_lowercase()).into_bytes()
    } else {
        c.name.to_lowercase().into_bytes()
    }
}

/// `IndexQuery.FetchCollection` over `store`: ids in index order from the prefix, offset, limit.
fn fetch(store: &BTreeMap<String, Customer>, iq: &IndexQuery) -> Vec<String> {
    if iq.limit == 0 {
        return Vec::new();
    }
    let mut entries: Vec<(Vec<u8>, String)> =
        store.iter().map(|(id, c)| (index_key(iq.by_country, c), id.clone())).collect();
    index_order(&mut entries);
    entries
        .into_iter()
        .filter(|(k, _)| k.starts_with(iq.prefix.as_bytes()))
        .skip(iq.offset)
        .take(iq.limit)
        .map(|(_, id)| id)
        .collect()
}

fn seed_customers() -> Vec<Customer> {
    // A slice of the example's mock_customers.json (ASCII names), plus names around "al" so that
    // filters match several customers in several countries.
    [
        ("Maxime Garnier", "France"),
        ("Jerome Guy", "United Kingdom"),
        ("Nevada Rich", "United Kingdom"),
        ("Alice Martin", "France"),
        ("alban Petit", "France"),
        ("Albert Fischer", "Germany"),
        ("Alma Svensson", "Sweden"),
        ("Bertrand Roux", "France"),
        ("Brenda Becker", "Germany"),
        ("Carl Lindqvist", "Sweden"),
        ("Alain Dubois", "France"),
        ("Dorothy Evans", "United Kingdom"),
        ("Emil Braun", "Germany"),
        ("Frida Holm", "Sweden"),
    ]
    .into_iter()
    .map(|(n, c)| Customer {
        name: n.into(),
        email: format!("{}@example.com", n.to_lowercase().replace(' ', ".")),
        country: c.into(),
    })
    .collect()
}

impl SearchQuery {
    pub fn new(replies: QueryReplies) -> SearchQuery {
        let mut s = SearchQuery { customers: BTreeMap::new(), replies, next_id: 0 };
        for c in seed_customers() {
            let id = s.new_id();
            s.customers.insert(id, c);
        }
        s
    }

    fn new_id(&mut self) -> String {
        self.next_id += 1;
        xid(self.next_id)
    }

    /// `queryRequestHandler`: the query values and the normalized query string.
    pub fn normalize(raw: &str) -> Result<(BTreeMap<String, String>, String), Value> {
        let (name, country, from, limit) = parse_customer_query(&parse_query(raw))?;
        let norm = format!("name={}&country={}&from={from}&limit={limit}", query_escape(&name), query_escape(&country));
        let mut cq = BTreeMap::new();
        cq.insert("name".to_owned(), name);
        cq.insert("country".to_owned(), country);
        cq.insert("from".to_owned(), from.to_string());
        cq.insert("limit".to_owned(), limit.to_string());
        Ok((cq, norm))
    }

    fn refs(ids: Vec<String>) -> Vec<Value> {
        ids.into_iter().map(|id| rref(&format!("search.customer.{id}"))).collect()
    }

    /// The service's truth: the collection for a (raw) query.
    pub fn query_result(&self, raw: &str) -> Vec<Value> {
        let (cq, _) = SearchQuery::normalize(raw).expect("valid query");
        SearchQuery::refs(fetch(&self.customers, &customers_index_query(&cq).unwrap()))
    }

    pub fn customer_json(&self, id: &str) -> Value {
        let c = &self.customers[id];
        json!({"id": id, "name": c.name, "email": c.email, "country": c.country})
    }

    /// The model of a `search.customer.<id>` reference.
    pub fn model_of(&self, reference: &Value) -> Value {
        let rid = reference["rid"].as_str().unwrap();
        self.customer_json(&rid["search.customer.".len()..])
    }

    /// Adds a customer without events (as if added while the service was down).
    pub fn insert_silently(&mut self, name: &str, country: &str) -> String {
        let id = self.new_id();
        let email = format!("{}@example.com", name.to_lowercase().replace(' ', "."));
        self.customers.insert(id.clone(), Customer { name: name.into(), email, country: country.into() });
        id
    }

    /// `TrimAndValidate`.
    fn trim_and_validate(c: &mut Customer) -> Result<(), Value> {
        c.name = c.name.trim().to_owned();
        if c.name.is_empty() {
            return Err(invalid_params("Name must not be empty."));
        }
        c.email = c.email.trim().to_owned();
        if !c.email.is_empty() && !c.email.contains('@') {
            return Err(invalid_params("Invalid email address."));
        }
        c.country = c.country.trim().to_owned();
        if !c.country.is_empty() && !COUNTRIES.contains(&c.country.as_str()) {
            return Err(invalid_params(&format!(
                "Country must be empty or one of the following: {}.",
                COUNTRIES.join(", ")
            )));
        }
        Ok(())
    }

    /// The store's write: `store.Handler`'s model event now; the query store's index task (a
    /// query event, when an index key changed) after the reply.
    fn write(&mut self, id: &str, after: Option<Customer>, out: &mut Out<CustomerChange>) {
        let store_before = self.customers.clone();
        let before = match &after {
            Some(c) => self.customers.insert(id.to_owned(), c.clone()),
            None => self.customers.remove(id),
        };
        let rid = format!("search.customer.{id}");
        match (&before, &after) {
            (None, Some(_)) => out.empty(&rid, "create"),
            (Some(_), None) => out.empty(&rid, "delete"),
            (Some(b), Some(a)) => {
                let (bj, aj) = (customer_value(id, b), customer_value(id, a));
                let changed: Map<String, Value> = aj
                    .as_object()
                    .unwrap()
                    .iter()
                    .filter(|(k, v)| bj.get(k.as_str()) != Some(v))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                out.change(&rid, changed);
            }
            (None, None) => return,
        }
        let index_changed = [false, true].iter().any(|&by_country| {
            before.as_ref().map(|c| index_key(by_country, c)) != after.as_ref().map(|c| index_key(by_country, c))
        });
        if index_changed {
            let store_after = self.customers.clone();
            out.query_event_after("search.customers", CustomerChange { before, after, store_before, store_after });
        }
    }

    /// badgerstore's `queryChange.affectsQuery`.
    fn affects(change: &CustomerChange, iq: &IndexQuery) -> bool {
        let bk = change.before.as_ref().map(|c| index_key(iq.by_country, c));
        let ak = change.after.as_ref().map(|c| index_key(iq.by_country, c));
        if bk == ak {
            return false;
        }
        let p = iq.prefix.as_bytes();
        bk.is_some_and(|k| k.starts_with(p)) || ak.is_some_and(|k| k.starts_with(p))
    }
}

fn customer_value(id: &str, c: &Customer) -> Value {
    json!({"id": id, "name": c.name, "email": c.email, "country": c.country})
}

impl Example for SearchQuery {
    type Change = CustomerChange;
    fn name(&self) -> &'static str {
        "search"
    }
    fn handles(&self, rname: &str) -> bool {
        matches!(rname, "search.customers" | "search.countries")
            || rname.strip_prefix("search.customer.").is_some_and(|id| !id.contains('.'))
    }
    fn get(&mut self, rname: &str, query: &str) -> Value {
        match rname {
            "search.countries" => collection(json!(COUNTRIES)),
            "search.customers" => match SearchQuery::normalize(query) {
                Ok((cq, norm)) => {
                    let ids = fetch(&self.customers, &customers_index_query(&cq).unwrap());
                    json!({"result": {"collection": SearchQuery::refs(ids), "query": norm}})
                }
                Err(e) => e,
            },
            _ => {
                let id = &rname["search.customer.".len()..];
                if self.customers.contains_key(id) { model(self.customer_json(id)) } else { not_found() }
            }
        }
    }
    fn call(&mut self, rname: &str, method: &str, params: &Value, out: &mut Out<CustomerChange>) -> Value {
        let s = |k: &str| params[k].as_str().map(str::to_owned);
        match (rname, method) {
            ("search.customers", "newCustomer") => {
                let mut c = Customer {
                    name: s("name").unwrap_or_default(),
                    email: s("email").unwrap_or_default(),
                    country: s("country").unwrap_or_default(),
                };
                if let Err(e) = SearchQuery::trim_and_validate(&mut c) {
                    return e;
                }
                let id = self.new_id();
                self.write(&id, Some(c), out);
                resource(&format!("search.customer.{id}"))
            }
            ("search.customers" | "search.countries", _) => error("system.methodNotFound", "Method not found"),
            (_, "set") => {
                let id = rname["search.customer.".len()..].to_owned();
                let Some(mut c) = self.customers.get(&id).cloned() else { return not_found() };
                if let Some(v) = s("name") {
                    c.name = v;
                }
                if let Some(v) = s("email") {
                    c.email = v;
                }
                if let Some(v) = s("country") {
                    c.country = v;
                }
                if let Err(e) = SearchQuery::trim_and_validate(&mut c) {
                    return e;
                }
                self.write(&id, Some(c), out);
                ok()
            }
            (_, "delete") => {
                let id = rname["search.customer.".len()..].to_owned();
                if !self.customers.contains_key(&id) {
                    return not_found();
                }
                self.write(&id, None, out);
                ok()
            }
            _ => error("system.methodNotFound", "Method not found"),
        }
    }
    fn query(&mut self, _rname: &str, change: &CustomerChange, query: &str) -> Option<Value> {
        let (cq, _) = match SearchQuery::normalize(query) {
            Ok(v) => v,
            Err(e) => return Some(e),
        };
        let iq = customers_index_query(&cq).unwrap();
        match self.replies {
            QueryReplies::Collection => SearchQuery::affects(change, &iq)
                .then(|| collection(Value::Array(SearchQuery::refs(fetch(&self.customers, &iq))))),
            QueryReplies::Events => {
                let before = SearchQuery::refs(fetch(&change.store_before, &iq));
                let after = SearchQuery::refs(fetch(&change.store_after, &iq));
                let events: Vec<Value> =
                    lcs_events(&before, &after).into_iter().map(|(e, d)| json!({"event": e, "data": d})).collect();
                (!events.is_empty()).then(|| json!({"result": {"events": events}}))
            }
        }
    }
}
