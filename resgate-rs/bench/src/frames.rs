//! Client request frames, service event payloads, and the cheap scanners the receive path uses.
//!
//! The hot receive path never runs a JSON parser over event frames: it looks for the two integer
//! fields the tool itself put into the event (`t`, `seq`). Responses (setup, request scenarios)
//! are small and parsed with serde.

use res_protocol::json::{write_str, write_u64};
use serde::Deserialize;

/// The client protocol version the tool announces.
pub const CLIENT_PROTOCOL: &str = "1.2.1";

/// `{"id":N,"method":"<method>","params":<params>}`; `params` omitted when `None`.
pub fn request(id: u64, method: &str, params: Option<&str>) -> String {
    let mut out = Vec::with_capacity(method.len() + params.map_or(0, str::len) + 40);
    out.extend_from_slice(b"{\"id\":");
    write_u64(&mut out, id);
    out.extend_from_slice(b",\"method\":");
    write_str(&mut out, method);
    if let Some(p) = params {
        out.extend_from_slice(b",\"params\":");
        out.extend_from_slice(p.as_bytes());
    }
    out.push(b'}');
    String::from_utf8(out).expect("frame is UTF-8: built from str parts")
}

pub fn version_request(id: u64) -> String {
    request(id, "version", Some(&format!("{{\"protocol\":\"{CLIENT_PROTOCOL}\"}}")))
}

/// A change event's payload as the service publishes it: every event changes `t` and `seq`, so
/// no gateway may drop it as a no-op change.
pub fn change_event(t_ns: u64, seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(56);
    out.extend_from_slice(b"{\"values\":{\"t\":");
    write_u64(&mut out, t_ns);
    out.extend_from_slice(b",\"seq\":");
    write_u64(&mut out, seq);
    out.extend_from_slice(b"}}");
    out
}

/// Send time and sequence number found in an event frame the gateway delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub t_ns: u64,
    pub seq: u64,
}

/// Extracts the stamp of a `<rid>.change` event frame, whatever the gateway's key order.
/// Returns `None` for anything else (responses, other events).
pub fn parse_change_stamp(frame: &[u8]) -> Option<Stamp> {
    let ev = find(frame, b"\"event\":\"")?;
    let name_end = ev + frame[ev..].iter().position(|&b| b == b'"')?;
    if !frame[ev..name_end].ends_with(b".change") {
        return None;
    }
    let t_ns = number_after(frame, b"\"t\":")?;
    let seq = number_after(frame, b"\"seq\":")?;
    Some(Stamp { t_ns, seq })
}

/// The index just past the first occurrence of `needle` (non-empty) in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = hay[from..].iter().position(|&b| b == needle[0]) {
        let at = from + p;
        if hay[at..].starts_with(needle) {
            return Some(at + needle.len());
        }
        from = at + 1;
    }
    None
}

fn number_after(frame: &[u8], key: &[u8]) -> Option<u64> {
    let start = find(frame, key)?;
    // Digit by digit: no UTF-8 check and no second pass (this runs once per delivery).
    let mut n = None;
    for &d in frame[start..].iter().take_while(|b| b.is_ascii_digit()) {
        n = Some(n.unwrap_or(0u64).checked_mul(10)?.checked_add(u64::from(d - b'0'))?);
    }
    n
}

/// A response frame: its id and, for an error, the error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub id: u64,
    pub error: Option<String>,
}

#[derive(Deserialize)]
struct RawResponse {
    id: Option<u64>,
    error: Option<RawError>,
}

#[derive(Deserialize)]
struct RawError {
    code: String,
}

/// Parses a response frame; `None` for events and anything without an id.
pub fn parse_response(frame: &[u8]) -> Option<Response> {
    let r: RawResponse = serde_json::from_slice(frame).ok()?;
    Some(Response { id: r.id?, error: r.error.map(|e| e.code) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_frames() {
        assert_eq!(request(7, "subscribe.bench.item.0", None), r#"{"id":7,"method":"subscribe.bench.item.0"}"#);
        assert_eq!(request(1, "call.a.b", Some("{}")), r#"{"id":1,"method":"call.a.b","params":{}}"#);
        assert_eq!(version_request(1), r#"{"id":1,"method":"version","params":{"protocol":"1.2.1"}}"#);
        let v: serde_json::Value = serde_json::from_str(&request(3, "get.x\"y", None)).unwrap();
        assert_eq!(v["method"], "get.x\"y");
    }

    #[test]
    fn change_event_payload_is_valid_json() {
        let p = change_event(123_456_789, 42);
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["values"]["t"], 123_456_789u64);
        assert_eq!(v["values"]["seq"], 42);
    }

    #[test]
    fn stamps_from_event_frames() {
        let f = br#"{"event":"bench.item.3.change","data":{"values":{"t":1000,"seq":9}}}"#;
        assert_eq!(parse_change_stamp(f), Some(Stamp { t_ns: 1000, seq: 9 }));
        // Key order differs between gateways.
        let f = br#"{"data":{"values":{"seq":9,"t":1000}},"event":"bench.item.3.change"}"#;
        assert_eq!(parse_change_stamp(f), Some(Stamp { t_ns: 1000, seq: 9 }));
        // Max u64 parses; other events and responses do not.
        let f = br#"{"event":"a.change","data":{"values":{"t":18446744073709551615,"seq":0}}}"#;
        assert_eq!(parse_change_stamp(f).unwrap().t_ns, u64::MAX);
        let f = br#"{"event":"a.change","data":{"values":{"t":18446744073709551616,"seq":0}}}"#;
        assert_eq!(parse_change_stamp(f), None, "one over u64::MAX");
        assert_eq!(parse_change_stamp(br#"{"event":"a.b.custom","data":{"t":1,"seq":2}}"#), None);
        assert_eq!(parse_change_stamp(br#"{"result":{"models":{"a":{"t":1,"seq":2}}},"id":2}"#), None);
        assert_eq!(parse_change_stamp(br#"{"event":"a.change","data":{"values":{"t":-1,"seq":2}}}"#), None);
    }

    #[test]
    fn substring_search() {
        assert_eq!(find(b"abcabd", b"abd"), Some(6));
        assert_eq!(find(b"aaab", b"ab"), Some(4));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(find(b"", b"a"), None);
    }

    #[test]
    fn responses() {
        assert_eq!(
            parse_response(br#"{"result":{"models":{"a":{"b":1}}},"id":2}"#),
            Some(Response { id: 2, error: None })
        );
        assert_eq!(
            parse_response(br#"{"error":{"code":"system.timeout","message":"Request timeout"},"id":5}"#),
            Some(Response { id: 5, error: Some("system.timeout".into()) })
        );
        assert_eq!(parse_response(br#"{"event":"a.change","data":{}}"#), None);
        assert_eq!(parse_response(b"not json"), None);
    }
}
