//! Values: what a model property or a collection item can hold.

use crate::json::write_str;
use crate::rid::is_valid_rid;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::fmt;

/// A RES value. Primitives and data values keep their JSON text as received, so they are
/// forwarded without re-encoding and compared byte-wise (as Resgate does).
#[derive(Debug, Clone)]
pub enum Value {
    /// A string, number, boolean or null.
    Primitive(Box<RawValue>),
    /// `{"rid": "..."}`, or `{"rid": "...", "soft": true}`. Soft references are not followed.
    Reference { rid: Box<str>, soft: bool },
    /// `{"data": <object or array>}`: arbitrary JSON replaced as a whole. A data value wrapping
    /// a primitive is normalised to that primitive.
    Data(Box<RawValue>),
    /// `{"action": "delete"}`: only valid in change events and `set` parameters.
    Delete,
}

/// Why a JSON text is not a valid value. Messages follow Resgate's, so that services see the same
/// diagnostics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("invalid value: {0}")]
    Json(String),
    #[error(r#"invalid value: resource references requires a non-empty "rid" value"#)]
    EmptyRid,
    #[error(r#"invalid value: resource reference rid "{0}" is invalid"#)]
    InvalidRid(String),
    #[error("invalid value: ambiguous value type")]
    Ambiguous,
    #[error(r#"invalid value: unknown action "{0}""#)]
    UnknownAction(String),
    #[error("invalid value: nested json object must be wrapped as a data value")]
    ObjectNotAllowed,
    #[error("invalid value: nested json array must be wrapped as a data value")]
    ArrayNotAllowed,
}

#[derive(Deserialize)]
struct ValueObject {
    rid: Option<String>,
    #[serde(default)]
    soft: bool,
    action: Option<String>,
    #[serde(default, deserialize_with = "crate::service::raw_some")]
    data: Option<Box<RawValue>>,
}

impl Value {
    /// Parses one value from its JSON text.
    pub fn from_raw(raw: Box<RawValue>) -> Result<Value, ValueError> {
        match raw.get().as_bytes().first() {
            Some(b'{') => {
                let obj: ValueObject = serde_json::from_str(raw.get()).map_err(|e| ValueError::Json(e.to_string()))?;
                if let Some(rid) = obj.rid {
                    if rid.is_empty() {
                        return Err(ValueError::EmptyRid);
                    }
                    if obj.action.is_some() || obj.data.is_some() {
                        return Err(ValueError::Ambiguous);
                    }
                    if !is_valid_rid(&rid) {
                        return Err(ValueError::InvalidRid(rid));
                    }
                    Ok(Value::Reference { rid: rid.into_boxed_str(), soft: obj.soft })
                } else if let Some(action) = obj.action {
                    if obj.data.is_some() {
                        return Err(ValueError::Ambiguous);
                    }
                    if action != "delete" {
                        return Err(ValueError::UnknownAction(action));
                    }
                    Ok(Value::Delete)
                } else if let Some(data) = obj.data {
                    match data.get().as_bytes().first() {
                        Some(b'{' | b'[') => Ok(Value::Data(data)),
                        _ => Ok(Value::Primitive(data)),
                    }
                } else {
                    Err(ValueError::ObjectNotAllowed)
                }
            }
            Some(b'[') => Err(ValueError::ArrayNotAllowed),
            _ => Ok(Value::Primitive(raw)),
        }
    }

    /// Parses a value from a JSON string (convenience for tests and services).
    pub fn parse(json: &str) -> Result<Value, ValueError> {
        let raw: Box<RawValue> = serde_json::from_str(json).map_err(|e| ValueError::Json(e.to_string()))?;
        Value::from_raw(raw)
    }

    pub fn primitive(json: &str) -> Value {
        Value::Primitive(RawValue::from_string(json.to_owned()).expect("valid JSON primitive"))
    }

    pub fn reference(rid: &str) -> Value {
        Value::Reference { rid: rid.into(), soft: false }
    }

    /// A proper value is anything but a delete action: what get responses and add events carry.
    pub fn is_proper(&self) -> bool {
        !matches!(self, Value::Delete)
    }

    /// The referenced resource ID, if this is a hard (followed) reference.
    pub fn hard_reference(&self) -> Option<&str> {
        match self {
            Value::Reference { rid, soft: false } => Some(rid),
            _ => None,
        }
    }

    /// Writes the value as a client sees it. Clients below protocol 1.2.1 know neither soft
    /// references nor data values: they get the rid as a string and `"[Data]"`, as Resgate does.
    pub fn write_client(&self, out: &mut Vec<u8>, legacy: bool) {
        match self {
            Value::Primitive(raw) => out.extend_from_slice(raw.get().as_bytes()),
            Value::Reference { rid, soft: false } => {
                out.extend_from_slice(b"{\"rid\":");
                write_str(out, rid);
                out.push(b'}');
            }
            Value::Reference { rid, soft: true } => {
                if legacy {
                    write_str(out, rid);
                } else {
                    out.extend_from_slice(b"{\"rid\":");
                    write_str(out, rid);
                    out.extend_from_slice(b",\"soft\":true}");
                }
            }
            Value::Data(raw) => {
                if legacy {
                    out.extend_from_slice(b"\"[Data]\"");
                } else {
                    out.extend_from_slice(b"{\"data\":");
                    out.extend_from_slice(raw.get().as_bytes());
                    out.push(b'}');
                }
            }
            Value::Delete => out.extend_from_slice(b"{\"action\":\"delete\"}"),
        }
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Primitive(a), Value::Primitive(b)) | (Value::Data(a), Value::Data(b)) => a.get() == b.get(),
            (Value::Reference { rid: a, soft: sa }, Value::Reference { rid: b, soft: sb }) => a == b && sa == sb,
            (Value::Delete, Value::Delete) => true,
            _ => false,
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        Value::from_raw(raw).map_err(D::Error::custom)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::new();
        self.write_client(&mut out, false);
        f.write_str(&String::from_utf8_lossy(&out))
    }
}

/// A model: properties in key order (Resgate marshals Go maps, which also sorts keys).
pub type Model = BTreeMap<String, Value>;
/// A collection: ordered values.
pub type Collection = Vec<Value>;

/// The data of a resource.
#[derive(Debug, Clone, PartialEq)]
pub enum ResourceData {
    Model(Model),
    Collection(Collection),
}

impl ResourceData {
    /// Writes the model object or collection array as a client sees it.
    pub fn write_client(&self, out: &mut Vec<u8>, legacy: bool) {
        match self {
            ResourceData::Model(m) => write_model(out, m.iter(), legacy),
            ResourceData::Collection(c) => {
                out.push(b'[');
                for (i, v) in c.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    v.write_client(out, legacy);
                }
                out.push(b']');
            }
        }
    }

    /// Every hard reference in the resource, in order (duplicates included).
    pub fn hard_references(&self) -> impl Iterator<Item = &str> {
        let values: Box<dyn Iterator<Item = &Value>> = match self {
            ResourceData::Model(m) => Box::new(m.values()),
            ResourceData::Collection(c) => Box::new(c.iter()),
        };
        values.filter_map(Value::hard_reference)
    }

    pub fn is_model(&self) -> bool {
        matches!(self, ResourceData::Model(_))
    }
}

/// Writes `{"key":value,...}` for a sequence of properties.
pub fn write_model<'a>(out: &mut Vec<u8>, props: impl Iterator<Item = (&'a String, &'a Value)>, legacy: bool) {
    out.push(b'{');
    for (i, (k, v)) in props.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, k);
        out.push(b':');
        v.write_client(out, legacy);
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(v: &Value, legacy: bool) -> String {
        let mut out = Vec::new();
        v.write_client(&mut out, legacy);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn primitives() {
        for json in ["\"foo\"", "42", "-1.5e3", "true", "false", "null"] {
            let v = Value::parse(json).unwrap();
            assert!(matches!(v, Value::Primitive(_)));
            assert_eq!(client(&v, false), json);
        }
    }

    #[test]
    fn references() {
        let v = Value::parse(r#"{"rid":"a.b"}"#).unwrap();
        assert_eq!(v.hard_reference(), Some("a.b"));
        let soft = Value::parse(r#"{"rid":"a.b?q=1","soft":true}"#).unwrap();
        assert_eq!(soft.hard_reference(), None);
        assert_eq!(client(&soft, false), r#"{"rid":"a.b?q=1","soft":true}"#);
        assert_eq!(client(&soft, true), r#""a.b?q=1""#);
        assert_ne!(v, Value::parse(r#"{"rid":"a.b","soft":true}"#).unwrap());
    }

    #[test]
    fn data_values() {
        let v = Value::parse(r#"{"data":{"x":[1,2]}}"#).unwrap();
        assert!(matches!(v, Value::Data(_)));
        assert_eq!(client(&v, false), r#"{"data":{"x":[1,2]}}"#);
        assert_eq!(client(&v, true), r#""[Data]""#);
        assert_eq!(Value::parse(r#"{"data":12}"#).unwrap(), Value::primitive("12"));
        assert_eq!(Value::parse(r#"{"data":null}"#).unwrap(), Value::primitive("null"));
    }

    #[test]
    fn delete_action() {
        let v = Value::parse(r#"{"action":"delete"}"#).unwrap();
        assert!(!v.is_proper());
    }

    #[test]
    fn invalid_values() {
        assert_eq!(Value::parse(r#"{"foo":1}"#), Err(ValueError::ObjectNotAllowed));
        assert_eq!(Value::parse(r#"[1]"#), Err(ValueError::ArrayNotAllowed));
        assert_eq!(Value::parse(r#"{"rid":""}"#), Err(ValueError::EmptyRid));
        assert_eq!(Value::parse(r#"{"rid":"a","data":1}"#), Err(ValueError::Ambiguous));
        assert_eq!(Value::parse(r#"{"action":"delete","data":1}"#), Err(ValueError::Ambiguous));
        assert_eq!(Value::parse(r#"{"action":"x"}"#), Err(ValueError::UnknownAction("x".into())));
        assert_eq!(Value::parse(r#"{"rid":"a..b"}"#), Err(ValueError::InvalidRid("a..b".into())));
        assert!(Value::parse("{").is_err());
    }

    #[test]
    fn model_encoding_sorted() {
        let data: Model = serde_json::from_str(r#"{"b":1,"a":{"rid":"x"},"c":{"data":[1]}}"#).unwrap();
        let mut out = Vec::new();
        ResourceData::Model(data).write_client(&mut out, false);
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"a":{"rid":"x"},"b":1,"c":{"data":[1]}}"#);
    }
}
