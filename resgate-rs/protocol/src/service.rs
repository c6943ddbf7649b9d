//! The service protocol: what the gateway sends to services over NATS and what they answer.
//! Both sides use these types: the gateway encodes requests and decodes responses, a service
//! library decodes requests and encodes responses.

use crate::error::ResError;
use crate::json::write_str;
use crate::value::{Collection, Model, ResourceData, Value};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::time::Duration;

/// Deserializes a present field as `Some(raw)` even when it is JSON `null`, so that
/// `"result": null` (a valid call result) differs from a missing result.
pub fn raw_some<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// HTTP headers as services see them: canonical names mapped to all their values.
pub type Header = BTreeMap<String, Vec<String>>;

/// The HTTP context of an auth request (from the WebSocket upgrade or the HTTP API request).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HttpContext {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub header: Header,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    #[serde(default, rename = "remoteAddr", skip_serializing_if = "String::is_empty")]
    pub remote_addr: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uri: String,
}

/// Fields of an access, call or auth request. Encoded by hand: this runs for every request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFields<'a> {
    pub cid: &'a str,
    /// The connection token; `None` is sent as `"token":null`, which Resgate always includes.
    pub token: Option<&'a RawValue>,
    pub query: Option<&'a str>,
    pub params: Option<&'a RawValue>,
    pub is_http: bool,
}

impl RequestFields<'_> {
    pub fn encode(&self) -> Vec<u8> {
        self.encode_with(None)
    }

    /// Encodes the request; auth requests add the HTTP context.
    pub fn encode_with(&self, http: Option<&HttpContext>) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.params.map_or(0, |p| p.get().len()));
        out.extend_from_slice(b"{\"cid\":");
        write_str(&mut out, self.cid);
        out.extend_from_slice(b",\"token\":");
        out.extend_from_slice(self.token.map_or("null", RawValue::get).as_bytes());
        if let Some(q) = self.query {
            out.extend_from_slice(b",\"query\":");
            write_str(&mut out, q);
        }
        if let Some(p) = self.params {
            out.extend_from_slice(b",\"params\":");
            out.extend_from_slice(p.get().as_bytes());
        }
        if self.is_http {
            out.extend_from_slice(b",\"isHttp\":true");
        }
        if let Some(http) = http {
            let ctx = serde_json::to_vec(http).expect("http context serializes");
            if ctx.len() > 2 {
                out.push(b',');
                out.extend_from_slice(&ctx[1..ctx.len() - 1]);
            }
        }
        out.push(b'}');
        out
    }
}

/// A request as a service receives it (access, call, auth; get requests carry only `query`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct IncomingRequest {
    #[serde(default)]
    pub cid: String,
    #[serde(default, deserialize_with = "raw_some")]
    pub token: Option<Box<RawValue>>,
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default, deserialize_with = "raw_some")]
    pub params: Option<Box<RawValue>>,
    #[serde(default, rename = "isHttp")]
    pub is_http: bool,
    #[serde(flatten)]
    pub http: HttpContext,
}

impl IncomingRequest {
    /// The token, unless absent or null.
    pub fn token(&self) -> Option<&RawValue> {
        self.token.as_deref().filter(|t| t.get() != "null")
    }
}

/// A get request: `{}` or `{"query": "..."}`.
pub fn get_request(query: Option<&str>) -> Vec<u8> {
    match query {
        None => b"{}".to_vec(),
        Some(q) => {
            let mut out = b"{\"query\":".to_vec();
            write_str(&mut out, q);
            out.push(b'}');
            out
        }
    }
}

/// The optional `meta` object of access, call and auth responses (protocol 1.2.3).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<Header>,
}

/// Headers a service may never set through meta.
const PROTECTED_HEADERS: [&str; 5] = [
    "Sec-Websocket-Extensions",
    "Sec-Websocket-Protocol",
    "Access-Control-Allow-Credentials",
    "Access-Control-Allow-Origin",
    "Content-Type",
];

impl Meta {
    /// Canonicalises header names as Go's `CanonicalMIMEHeaderKey` does (Resgate compares them
    /// canonically), merging duplicates.
    pub fn canonicalize(&mut self) {
        if let Some(h) = self.header.take() {
            let mut out = Header::new();
            for (k, v) in h {
                out.entry(canonical_header_key(&k)).or_default().extend(v);
            }
            self.header = Some(out);
        }
    }

    /// A status from 300 to 599 answers an HTTP request directly.
    pub fn is_direct_response_status(&self) -> bool {
        self.status.is_some_and(|s| (300..600).contains(&s))
    }

    /// Statuses outside 300..=599 are ignored (Resgate logs them).
    pub fn has_valid_status(&self) -> bool {
        self.status.is_none_or(|s| (300..600).contains(&s))
    }

    /// Merges `other` over `self`: its status wins, `Set-Cookie` values are appended, other
    /// headers replaced, protected headers ignored.
    pub fn merge(mut self, other: Meta) -> Meta {
        if other.status.is_some() {
            self.status = other.status;
        }
        if let Some(oh) = other.header {
            let h = self.header.get_or_insert_with(Header::new);
            for (k, v) in oh {
                if PROTECTED_HEADERS.contains(&k.as_str()) {
                    continue;
                }
                if k == "Set-Cookie" {
                    h.entry(k).or_default().extend(v);
                } else {
                    h.insert(k, v);
                }
            }
        }
        self
    }
}

/// Go's canonical MIME header key: `content-type` → `Content-Type`. Keys with characters outside
/// the token set are left unchanged, as Go does.
pub fn canonical_header_key(k: &str) -> String {
    let valid = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        return k.to_owned();
    }
    let mut upper = true;
    k.chars()
        .map(|c| {
            let out = if upper { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() };
            upper = c == '-';
            out
        })
        .collect()
}

#[derive(Deserialize)]
struct RawResponse {
    #[serde(default, deserialize_with = "raw_some")]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    resource: Option<ResourceRef>,
    #[serde(default, deserialize_with = "crate::error::de_error_object")]
    error: Option<ResError>,
    #[serde(default)]
    meta: Option<Meta>,
}

#[derive(Debug, Deserialize, Serialize)]
struct ResourceRef {
    rid: String,
}

fn missing_result() -> ResError {
    ResError::internal("response missing result")
}

fn invalid_response() -> ResError {
    ResError::internal("invalid service response")
}

fn decode_raw(payload: &[u8]) -> Result<RawResponse, ResError> {
    let mut r: RawResponse = serde_json::from_slice(payload).map_err(ResError::internal)?;
    if let Some(m) = r.meta.as_mut() {
        m.canonicalize();
    }
    Ok(r)
}

/// An access result: read access and the callable methods.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    #[serde(default)]
    pub get: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub call: String,
}

impl Access {
    /// Whether `method` is in the comma-separated `call` list (or the list is `*`).
    pub fn can_call(&self, method: &str) -> bool {
        self.call.split(',').any(|m| m == "*" || m == method)
    }
}

/// Decodes an access response. Meta is returned even alongside an error.
pub fn decode_access(payload: &[u8]) -> (Result<Access, ResError>, Option<Meta>) {
    let r = match decode_raw(payload) {
        Ok(r) => r,
        Err(e) => return (Err(e), None),
    };
    let access = match (r.error, r.result) {
        (Some(e), _) => Err(e),
        (None, None) => Err(missing_result()),
        (None, Some(raw)) if raw.get() == "null" => Err(missing_result()),
        (None, Some(raw)) => serde_json::from_str::<Access>(raw.get()).map_err(ResError::internal),
    };
    (access, r.meta)
}

/// A get result.
#[derive(Debug, Clone, PartialEq)]
pub struct GetResult {
    pub data: ResourceData,
    /// The normalised query, for query resources.
    pub query: Option<String>,
}

#[derive(Deserialize)]
struct RawGetResult {
    model: Option<Model>,
    collection: Option<Collection>,
    #[serde(default)]
    query: String,
}

/// Decodes a get response: exactly one of model and collection, with proper values only.
pub fn decode_get(payload: &[u8]) -> Result<GetResult, ResError> {
    #[derive(Deserialize)]
    struct R {
        result: Option<RawGetResult>,
        #[serde(default, deserialize_with = "crate::error::de_error_object")]
        error: Option<ResError>,
    }
    let r: R = serde_json::from_slice(payload).map_err(ResError::internal)?;
    if let Some(e) = r.error {
        return Err(e);
    }
    let res = r.result.ok_or_else(missing_result)?;
    let data = match (res.model, res.collection) {
        (Some(m), None) if m.values().all(Value::is_proper) => ResourceData::Model(m),
        (None, Some(c)) if c.iter().all(Value::is_proper) => ResourceData::Collection(c),
        _ => return Err(invalid_response()),
    };
    Ok(GetResult { data, query: (!res.query.is_empty()).then_some(res.query) })
}

/// A call or auth result.
#[derive(Debug, Clone)]
pub enum CallResult {
    /// A plain result (possibly `null`).
    Payload(Box<RawValue>),
    /// A resource response: the client gets subscribed to this resource.
    Resource(String),
}

/// Decodes a call or auth response. Meta is returned even alongside an error.
pub fn decode_call(payload: &[u8]) -> (Result<CallResult, ResError>, Option<Meta>) {
    let r = match decode_raw(payload) {
        Ok(r) => r,
        Err(e) => return (Err(e), None),
    };
    let res = match (r.error, r.resource, r.result) {
        (Some(e), _, _) => Err(e),
        (None, Some(rr), _) => {
            if crate::rid::is_valid_rid(&rr.rid) {
                Ok(CallResult::Resource(rr.rid))
            } else {
                Err(invalid_response())
            }
        }
        (None, None, Some(raw)) => Ok(CallResult::Payload(raw)),
        (None, None, None) => Err(missing_result()),
    };
    (res, r.meta)
}

/// Reads a pre-response: a reply starting with an ASCII letter, in Go struct-tag syntax
/// (`timeout:"15000"`). Returns `None` when `payload` is a real response, `Some(None)` for a
/// pre-response without a usable timeout.
pub fn parse_pre_response(payload: &[u8]) -> Option<Option<Duration>> {
    let first = *payload.first()?;
    if !first.is_ascii_alphabetic() {
        return None;
    }
    let text = std::str::from_utf8(payload).ok()?;
    Some(struct_tag_lookup(text, "timeout").and_then(|v| v.parse::<u64>().ok()).map(Duration::from_millis))
}

/// Looks a key up in a Go struct tag: space-separated `key:"value"` pairs.
fn struct_tag_lookup(tag: &str, key: &str) -> Option<String> {
    let mut rest = tag;
    loop {
        rest = rest.trim_start_matches(' ');
        let colon = rest.find(':')?;
        let name = &rest[..colon];
        let after = rest[colon + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => value.push(chars.next()?.1),
                (_, c) => value.push(c),
            }
        };
        if name == key {
            return Some(value);
        }
        rest = &after[end + 1..];
    }
}

/// A decoded model change event: properties to set (delete actions included).
pub fn decode_change_event(payload: &[u8]) -> Result<Model, ResError> {
    #[derive(Deserialize)]
    struct Change {
        values: Model,
    }
    if is_legacy_change_event(payload) {
        // Protocol 1.0 put the properties at the top level; Resgate still accepts it.
        return serde_json::from_slice::<Model>(payload).map_err(ResError::internal);
    }
    serde_json::from_slice::<Change>(payload).map(|c| c.values).map_err(ResError::internal)
}

/// Whether a change event uses the 1.0 format: anything but exactly one `values` object.
pub fn is_legacy_change_event(payload: &[u8]) -> bool {
    let Ok(map) = serde_json::from_slice::<BTreeMap<String, Box<RawValue>>>(payload) else {
        return false;
    };
    map.len() != 1 || map.get("values").is_none_or(|v| !v.get().starts_with('{'))
}

/// A collection add event.
#[derive(Debug, Clone, Deserialize)]
pub struct AddEvent {
    pub idx: i64,
    pub value: Value,
}

pub fn decode_add_event(payload: &[u8]) -> Result<AddEvent, ResError> {
    let ev: AddEvent = serde_json::from_slice(payload).map_err(ResError::internal)?;
    if !ev.value.is_proper() {
        return Err(ResError::internal("invalid value"));
    }
    Ok(ev)
}

/// A collection remove event.
#[derive(Debug, Clone, Deserialize)]
pub struct RemoveEvent {
    pub idx: i64,
}

pub fn decode_remove_event(payload: &[u8]) -> Result<RemoveEvent, ResError> {
    serde_json::from_slice(payload).map_err(ResError::internal)
}

/// A query event: the gateway sends each of its queries of the resource to `subject`.
#[derive(Debug, Clone, Deserialize)]
pub struct QueryEvent {
    pub subject: String,
}

/// One event in a query response.
#[derive(Debug, Clone, Deserialize)]
pub struct QueryResponseEvent {
    pub event: String,
    #[serde(default, deserialize_with = "raw_some")]
    pub data: Option<Box<RawValue>>,
}

/// The result of a query request.
#[derive(Debug, Clone)]
pub enum QueryResult {
    /// Events to apply, in order.
    Events(Vec<QueryResponseEvent>),
    /// The whole new state (protocol 1.2.0); the gateway computes the events.
    Data(ResourceData),
}

pub fn decode_query_response(payload: &[u8]) -> Result<QueryResult, ResError> {
    #[derive(Deserialize)]
    struct R {
        result: Option<RawQueryResult>,
        #[serde(default, deserialize_with = "crate::error::de_error_object")]
        error: Option<ResError>,
    }
    #[derive(Deserialize)]
    struct RawQueryResult {
        events: Option<Vec<QueryResponseEvent>>,
        model: Option<Model>,
        collection: Option<Collection>,
    }
    let r: R = serde_json::from_slice(payload).map_err(ResError::internal)?;
    if let Some(e) = r.error {
        return Err(e);
    }
    let res = r.result.ok_or_else(missing_result)?;
    match (res.events, res.model, res.collection) {
        (Some(events), None, None) => Ok(QueryResult::Events(events)),
        (None, Some(m), None) if m.values().all(Value::is_proper) => Ok(QueryResult::Data(ResourceData::Model(m))),
        (None, None, Some(c)) if c.iter().all(Value::is_proper) => Ok(QueryResult::Data(ResourceData::Collection(c))),
        (None, None, None) => Ok(QueryResult::Events(Vec::new())),
        _ => Err(invalid_response()),
    }
}

/// `conn.<cid>.token`: the new token (null clears it) and its optional token ID.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenEvent {
    #[serde(default, deserialize_with = "raw_some")]
    pub token: Option<Box<RawValue>>,
    #[serde(default)]
    pub tid: Option<String>,
}

impl TokenEvent {
    /// The token, unless null.
    pub fn into_token(self) -> Option<Box<RawValue>> {
        self.token.filter(|t| t.get() != "null")
    }
}

/// `system.reset`: resource and access patterns.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct SystemReset {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access: Vec<String>,
}

/// `system.tokenReset`: token IDs and the subject to send auth requests to.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct SystemTokenReset {
    #[serde(default)]
    pub tids: Vec<String>,
    #[serde(default)]
    pub subject: String,
}

/// Service-side encoders.
pub mod reply {
    use super::*;

    /// `{"result": <result>}`.
    pub fn result(result: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(result.len() + 12);
        out.extend_from_slice(b"{\"result\":");
        out.extend_from_slice(result);
        out.push(b'}');
        out
    }

    pub fn error(err: &ResError) -> Vec<u8> {
        let mut out = b"{\"error\":".to_vec();
        out.extend_from_slice(&err.to_json());
        out.push(b'}');
        out
    }

    /// A resource response to a call or auth request.
    pub fn resource(rid: &str) -> Vec<u8> {
        let mut out = b"{\"resource\":{\"rid\":".to_vec();
        write_str(&mut out, rid);
        out.extend_from_slice(b"}}");
        out
    }

    /// A get response with a model or collection, and the normalised query for query resources.
    pub fn get(data: &ResourceData, query: Option<&str>) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(if data.is_model() {
            b"{\"result\":{\"model\":"
        } else {
            b"{\"result\":{\"collection\":"
        });
        data.write_client(&mut out, false);
        if let Some(q) = query {
            out.extend_from_slice(b",\"query\":");
            write_str(&mut out, q);
        }
        out.extend_from_slice(b"}}");
        out
    }

    pub fn access(access: &Access) -> Vec<u8> {
        result(&serde_json::to_vec(access).expect("access serializes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code;

    #[test]
    fn request_encoding() {
        let params = RawValue::from_string(r#"{"a":1}"#.into()).unwrap();
        let req = RequestFields { cid: "c1", token: None, query: Some("q=1"), params: Some(&params), is_http: true };
        assert_eq!(
            String::from_utf8(req.encode()).unwrap(),
            r#"{"cid":"c1","token":null,"query":"q=1","params":{"a":1},"isHttp":true}"#
        );
        let http = HttpContext {
            header: [("Authorization".to_owned(), vec!["Bearer x".to_owned()])].into(),
            host: "h".into(),
            remote_addr: "1.2.3.4:5".into(),
            uri: "/".into(),
        };
        let req = RequestFields { cid: "c1", token: None, query: None, params: None, is_http: false };
        let v: serde_json::Value = serde_json::from_slice(&req.encode_with(Some(&http))).unwrap();
        assert_eq!(v["header"]["Authorization"][0], "Bearer x");
        assert_eq!(v["remoteAddr"], "1.2.3.4:5");
        let back: IncomingRequest = serde_json::from_slice(&req.encode_with(Some(&http))).unwrap();
        assert_eq!(back.cid, "c1");
        assert!(back.token().is_none());
        assert_eq!(back.http.host, "h");
    }

    #[test]
    fn access_responses() {
        let (a, _) = decode_access(br#"{"result":{"get":true,"call":"set,foo"}}"#);
        let a = a.unwrap();
        assert!(a.get && a.can_call("foo") && !a.can_call("bar"));
        assert!(Access { get: false, call: "*".into() }.can_call("x"));
        let (a, _) = decode_access(br#"{"error":{"code":"system.accessDenied","message":"Access denied"}}"#);
        assert_eq!(a.unwrap_err().code, code::ACCESS_DENIED);
        let (a, _) = decode_access(b"{}");
        assert_eq!(a.unwrap_err().code, code::INTERNAL_ERROR);
        let (a, _) = decode_access(b"");
        assert_eq!(a.unwrap_err().code, code::INTERNAL_ERROR);
        let (_, meta) =
            decode_access(br#"{"result":{"get":true},"meta":{"status":401,"header":{"set-cookie":["a=1"]}}}"#);
        let meta = meta.unwrap();
        assert_eq!(meta.status, Some(401));
        assert_eq!(meta.header.unwrap()["Set-Cookie"], vec!["a=1"]);
    }

    #[test]
    fn get_responses() {
        let g = decode_get(br#"{"result":{"model":{"a":1,"b":{"rid":"x"}}}}"#).unwrap();
        assert!(g.data.is_model());
        assert_eq!(g.data.hard_references().collect::<Vec<_>>(), vec!["x"]);
        let g = decode_get(br#"{"result":{"collection":[1,2],"query":"q=1"}}"#).unwrap();
        assert_eq!(g.query.as_deref(), Some("q=1"));
        for bad in [
            &br#"{"result":{"model":{},"collection":[]}}"#[..],
            br#"{"result":{}}"#,
            br#"{}"#,
            br#"{"result":{"model":{"a":{"action":"delete"}}}}"#,
            br#"{"result":{"model":{"a":{"b":1}}}}"#,
            b"",
        ] {
            assert_eq!(decode_get(bad).unwrap_err().code, code::INTERNAL_ERROR);
        }
        assert_eq!(
            decode_get(br#"{"error":{"code":"system.notFound","message":"Not found"}}"#).unwrap_err().code,
            code::NOT_FOUND
        );
    }

    #[test]
    fn call_responses() {
        let (r, _) = decode_call(br#"{"result":null}"#);
        assert!(matches!(r.unwrap(), CallResult::Payload(p) if p.get() == "null"));
        let (r, _) = decode_call(br#"{"resource":{"rid":"a.b"}}"#);
        assert!(matches!(r.unwrap(), CallResult::Resource(rid) if rid == "a.b"));
        let (r, _) = decode_call(br#"{"resource":{"rid":"a..b"}}"#);
        assert_eq!(r.unwrap_err().code, code::INTERNAL_ERROR);
        let (r, _) = decode_call(br#"{"error":{"code":"custom.x","message":"X"},"result":1}"#);
        assert_eq!(r.unwrap_err().code, "custom.x");
        let (r, _) = decode_call(br#"{}"#);
        assert_eq!(r.unwrap_err().code, code::INTERNAL_ERROR);
        let (r, _) = decode_call(br#"{"error":[]}"#);
        assert_eq!(r.unwrap_err().code, code::INTERNAL_ERROR);
        let (r, _) = decode_call(br#"{"error":{"message":"no code"}}"#);
        assert_eq!(r.unwrap_err().code, "");
    }

    #[test]
    fn pre_responses() {
        assert_eq!(parse_pre_response(br#"timeout:"15000""#), Some(Some(Duration::from_millis(15000))));
        assert_eq!(parse_pre_response(br#"foo:"x" timeout:"20""#), Some(Some(Duration::from_millis(20))));
        assert_eq!(parse_pre_response(br#"timeout:"abc""#), Some(None));
        assert_eq!(parse_pre_response(br#"x"#), Some(None));
        assert_eq!(parse_pre_response(br#"{"result":1}"#), None);
        assert_eq!(parse_pre_response(b""), None);
    }

    #[test]
    fn change_events() {
        let m = decode_change_event(br#"{"values":{"a":1,"b":{"action":"delete"}}}"#).unwrap();
        assert_eq!(m.len(), 2);
        assert!(!m["b"].is_proper());
        let legacy = decode_change_event(br#"{"a":1}"#).unwrap();
        assert_eq!(legacy["a"], Value::primitive("1"));
        assert!(is_legacy_change_event(br#"{"values":1}"#));
        assert!(!is_legacy_change_event(br#"{"values":{}}"#));
    }

    #[test]
    fn query_responses() {
        let r =
            decode_query_response(br#"{"result":{"events":[{"event":"add","data":{"idx":0,"value":1}}]}}"#).unwrap();
        assert!(matches!(r, QueryResult::Events(e) if e.len() == 1 && e[0].event == "add"));
        let r = decode_query_response(br#"{"result":{"collection":[1]}}"#).unwrap();
        assert!(matches!(r, QueryResult::Data(ResourceData::Collection(_))));
        assert!(decode_query_response(br#"{"result":{"events":[],"model":{}}}"#).is_err());
    }

    #[test]
    fn meta_merge() {
        let a = Meta { status: Some(401), header: Some([("Set-Cookie".into(), vec!["a".into()])].into()) };
        let b = Meta {
            status: None,
            header: Some(
                [
                    ("Set-Cookie".into(), vec!["b".into()]),
                    ("Content-Type".into(), vec!["x".into()]),
                    ("X-Foo".into(), vec!["1".into()]),
                ]
                .into(),
            ),
        };
        let m = a.merge(b);
        assert_eq!(m.status, Some(401));
        let h = m.header.unwrap();
        assert_eq!(h["Set-Cookie"], vec!["a", "b"]);
        assert!(!h.contains_key("Content-Type"));
        assert_eq!(h["X-Foo"], vec!["1"]);
        assert_eq!(canonical_header_key("x-foo-bar"), "X-Foo-Bar");
        assert_eq!(canonical_header_key("bad key"), "bad key");
    }

    #[test]
    fn replies_round_trip() {
        let data = ResourceData::Model(serde_json::from_str(r#"{"a":1}"#).unwrap());
        let g = decode_get(&reply::get(&data, Some("q"))).unwrap();
        assert_eq!(g.data, data);
        assert_eq!(g.query.as_deref(), Some("q"));
        let (r, _) = decode_call(&reply::resource("x.y"));
        assert!(matches!(r.unwrap(), CallResult::Resource(rid) if rid == "x.y"));
        let (r, _) = decode_call(&reply::error(&ResError::invalid_params()));
        assert_eq!(r.unwrap_err().code, code::INVALID_PARAMS);
    }
}
