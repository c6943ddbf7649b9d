//! The client protocol: requests from browsers, and the frames the gateway writes back.

use crate::error::ResError;
use crate::json::{write_str, write_u64};
use crate::rid::{is_valid_rid, is_valid_rid_part};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// A decoded client request. Borrowed from the frame.
#[derive(Debug, Deserialize)]
pub struct Request<'a> {
    pub id: Option<u64>,
    /// Absent or null reads as empty, which is an invalid method (answered, since there is an id).
    #[serde(borrow, default)]
    pub method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub params: Option<&'a RawValue>,
}

/// Why a frame could not be read as a request at all (so there is no id to answer to).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("malformed request: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("request is missing id property")]
    MissingId,
}

/// Decodes a request frame, returning its id with it.
pub fn decode_request(frame: &[u8]) -> Result<(u64, Request<'_>), FrameError> {
    let req: Request<'_> = serde_json::from_slice(frame)?;
    let id = req.id.ok_or(FrameError::MissingId)?;
    Ok((id, req))
}

/// The request's method, split into its type, resource ID and (for call/auth) method name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method<'a> {
    Version,
    Subscribe(&'a str),
    Unsubscribe(&'a str),
    Get(&'a str),
    Call {
        rid: &'a str,
        method: &'a str,
    },
    Auth {
        rid: &'a str,
        method: &'a str,
    },
    /// Deprecated since 1.2.0; forwarded as `call.<rid>.new`.
    New(&'a str),
}

impl<'a> Method<'a> {
    /// Parses `type.rid[.method]`. Anything malformed is `system.invalidRequest`, as in Resgate.
    /// For call and auth the last dot separates the method, so a query may contain dots.
    pub fn parse(method: &'a str) -> Result<Method<'a>, ResError> {
        let Some((kind, rest)) = method.split_once('.') else {
            return if method == "version" { Ok(Method::Version) } else { Err(ResError::invalid_request()) };
        };
        let (rid, name) = match kind {
            "call" | "auth" => {
                let (rid, name) = rest.rsplit_once('.').ok_or_else(ResError::invalid_request)?;
                if !is_valid_rid_part(name) {
                    return Err(ResError::invalid_request());
                }
                (rid, name)
            }
            _ => (rest, ""),
        };
        if !is_valid_rid(rid) {
            return Err(ResError::invalid_request());
        }
        Ok(match kind {
            "subscribe" => Method::Subscribe(rid),
            "unsubscribe" => Method::Unsubscribe(rid),
            "get" => Method::Get(rid),
            "call" => Method::Call { rid, method: name },
            "auth" => Method::Auth { rid, method: name },
            "new" => Method::New(rid),
            _ => return Err(ResError::invalid_request()),
        })
    }

    /// The metric label for the request type (`new` counts as `call`, as in Resgate).
    pub fn label(&self) -> &'static str {
        match self {
            Method::Version => "version",
            Method::Subscribe(_) => "subscribe",
            Method::Unsubscribe(_) => "unsubscribe",
            Method::Get(_) => "get",
            Method::Call { .. } | Method::New(_) => "call",
            Method::Auth { .. } => "auth",
        }
    }
}

impl Request<'_> {
    pub fn method(&self) -> &str {
        self.method.as_deref().unwrap_or("")
    }
}

/// Parses params that must be a JSON object into `T`; anything else is `system.invalidParams`
/// (serde would also read a struct from an array, which Resgate's Go decoding does not).
fn object_params<T: serde::de::DeserializeOwned>(params: &RawValue) -> Result<T, ResError> {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(params.get()).map_err(|_| ResError::invalid_params())?;
    serde_json::from_value(serde_json::Value::Object(map)).map_err(|_| ResError::invalid_params())
}

/// True when params are absent or JSON null.
pub fn params_absent(params: Option<&RawValue>) -> bool {
    params.is_none_or(|p| p.get() == "null")
}

/// Parses the optional `version` request parameters `{"protocol": "x.y.z"}`.
pub fn version_param(params: Option<&RawValue>) -> Result<Option<String>, ResError> {
    #[derive(Deserialize)]
    struct VersionParams {
        #[serde(default)]
        protocol: Option<String>,
    }
    let Some(params) = params.filter(|_| !params_absent(params)) else { return Ok(None) };
    let p: VersionParams = object_params(params)?;
    Ok(p.protocol.filter(|p| !p.is_empty()))
}

/// Parses the optional `unsubscribe` parameters `{"count": n}`; the count defaults to 1 and must
/// be positive.
pub fn unsubscribe_count(params: Option<&RawValue>) -> Result<u32, ResError> {
    #[derive(Deserialize)]
    struct UnsubscribeParams {
        count: Option<i64>,
    }
    let Some(params) = params.filter(|_| !params_absent(params)) else { return Ok(1) };
    let p: UnsubscribeParams = object_params(params)?;
    match p.count {
        None => Ok(1),
        Some(n) if n > 0 => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
        Some(_) => Err(ResError::invalid_params()),
    }
}

/// `{"result":<result>,"id":N}`.
pub fn result_frame(id: u64, result: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(result.len() + 32);
    out.extend_from_slice(b"{\"result\":");
    out.extend_from_slice(result);
    out.extend_from_slice(b",\"id\":");
    write_u64(&mut out, id);
    out.push(b'}');
    out
}

/// `{"id":N}`: Resgate omits a nil result (unsubscribe), and clients rely on nothing more.
pub fn empty_result_frame(id: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    out.extend_from_slice(b"{\"id\":");
    write_u64(&mut out, id);
    out.push(b'}');
    out
}

/// `{"error":{...},"id":N}`; without an id when the frame had none to answer to.
pub fn error_frame(id: Option<u64>, err: &ResError) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"{\"error\":");
    out.extend_from_slice(&err.to_json());
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        write_u64(&mut out, id);
    }
    out.push(b'}');
    out
}

/// `{"event":"<rid>.<name>","data":<data>}`; `data` omitted when there is none.
pub fn event_frame(rid: &str, event: &str, data: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(rid.len() + event.len() + data.map_or(0, <[u8]>::len) + 24);
    out.extend_from_slice(b"{\"event\":");
    let mut name = String::with_capacity(rid.len() + event.len() + 1);
    name.push_str(rid);
    name.push('.');
    name.push_str(event);
    write_str(&mut out, &name);
    if let Some(data) = data {
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(data);
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code;

    #[test]
    fn methods() {
        assert_eq!(Method::parse("version").unwrap(), Method::Version);
        assert_eq!(Method::parse("subscribe.a.b").unwrap(), Method::Subscribe("a.b"));
        assert_eq!(Method::parse("call.a.b.set").unwrap(), Method::Call { rid: "a.b", method: "set" });
        assert_eq!(
            Method::parse("call.svc.list?q=a.b.method").unwrap(),
            Method::Call { rid: "svc.list?q=a.b", method: "method" }
        );
        assert_eq!(Method::parse("auth.a.login").unwrap(), Method::Auth { rid: "a", method: "login" });
        assert_eq!(Method::parse("new.a.b").unwrap(), Method::New("a.b"));
    }

    #[test]
    fn invalid_methods() {
        for m in [
            "",
            "foo",
            "foo.bar",
            "subscribe",
            "subscribe.",
            "subscribe.a..b",
            "call.a",
            "call.a.",
            "call..x",
            "get.a.*",
            "unsubscribe.a b",
            "auth.a.b?",
            "call.a.>",
            "version.x",
        ] {
            assert_eq!(Method::parse(m).unwrap_err().code, code::INVALID_REQUEST, "{m:?}");
        }
    }

    #[test]
    fn decode() {
        let (id, r) = decode_request(br#"{"id":7,"method":"get.a","params":{"x":1}}"#).unwrap();
        assert_eq!(id, 7);
        assert_eq!(r.method(), "get.a");
        assert_eq!(r.params.unwrap().get(), r#"{"x":1}"#);
        assert!(matches!(decode_request(br#"{"method":"get.a"}"#), Err(FrameError::MissingId)));
        assert!(decode_request(br#"{"id":-1,"method":"get.a"}"#).is_err());
        assert!(decode_request(b"not json").is_err());
        let (_, r) = decode_request(br#"{"id":1,"method":"get.a\u002eb"}"#).unwrap();
        assert_eq!(r.method(), "get.a.b");
        let (_, r) = decode_request(br#"{"id":1,"method":null}"#).unwrap();
        assert_eq!(r.method(), "");
    }

    #[test]
    fn params() {
        let raw = |s: &str| RawValue::from_string(s.to_owned()).unwrap();
        assert_eq!(unsubscribe_count(None).unwrap(), 1);
        assert_eq!(unsubscribe_count(Some(&raw("null"))).unwrap(), 1);
        assert_eq!(unsubscribe_count(Some(&raw(r#"{"count":3}"#))).unwrap(), 3);
        for bad in [r#"{"count":0}"#, r#"{"count":-2}"#, r#"{"count":"x"}"#, "5", r#"{"count":1.5}"#] {
            assert_eq!(unsubscribe_count(Some(&raw(bad))).unwrap_err().code, code::INVALID_PARAMS, "{bad}");
        }
        assert_eq!(version_param(Some(&raw(r#"{"protocol":"1.2.0"}"#))).unwrap().as_deref(), Some("1.2.0"));
        assert_eq!(version_param(Some(&raw(r#"{}"#))).unwrap(), None);
        assert!(version_param(Some(&raw(r#"{"protocol":12}"#))).is_err());
        assert!(version_param(Some(&raw(r#"["1.0.0"]"#))).is_err());
        assert_eq!(version_param(Some(&raw(r#"{"protocol":null}"#))).unwrap(), None);
    }

    #[test]
    fn frames() {
        assert_eq!(result_frame(3, b"{}"), br#"{"result":{},"id":3}"#);
        assert_eq!(empty_result_frame(4), br#"{"id":4}"#);
        assert_eq!(
            error_frame(Some(5), &ResError::not_found()),
            br#"{"error":{"code":"system.notFound","message":"Not found"},"id":5}"#
        );
        assert_eq!(
            event_frame("a.b", "change", Some(br#"{"values":{}}"#)),
            br#"{"event":"a.b.change","data":{"values":{}}}"#
        );
        assert_eq!(event_frame("a.b", "delete", None), br#"{"event":"a.b.delete"}"#);
    }
}
