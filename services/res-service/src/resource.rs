//! Building get results and call results from serde values.

use res_protocol::ResError;
use res_protocol::value::{Collection, Model, ResourceData, Value};
use serde::Serialize;
use serde_json::value::RawValue;

/// Turns one JSON value into a RES value: `{"rid":..}` is a reference, `{"data":..}` a data value,
/// primitives stay as they are; a bare object or array is an error (wrap it with [`data`]).
pub fn to_value(v: &serde_json::Value) -> Result<Value, ResError> {
    let raw = RawValue::from_string(v.to_string()).map_err(ResError::internal)?;
    Value::from_raw(raw).map_err(ResError::internal)
}

/// A data value wrapping arbitrary JSON (`{"data": ...}`).
pub fn data(v: impl Serialize) -> serde_json::Value {
    serde_json::json!({ "data": v })
}

/// A reference to another resource (`{"rid": ...}`).
pub fn reference(rid: &str) -> serde_json::Value {
    serde_json::json!({ "rid": rid })
}

/// A model from any value serializing to a JSON object.
pub fn model(v: impl Serialize) -> Result<Model, ResError> {
    match serde_json::to_value(v).map_err(ResError::internal)? {
        serde_json::Value::Object(map) => map.iter().map(|(k, v)| Ok((k.clone(), to_value(v)?))).collect(),
        _ => Err(ResError::internal("a model must serialize to a JSON object")),
    }
}

/// A collection from any value serializing to a JSON array.
pub fn collection(v: impl Serialize) -> Result<Collection, ResError> {
    match serde_json::to_value(v).map_err(ResError::internal)? {
        serde_json::Value::Array(items) => items.iter().map(to_value).collect(),
        _ => Err(ResError::internal("a collection must serialize to a JSON array")),
    }
}

/// What a get handler answers: the resource and, for query resources, the normalized query.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub data: ResourceData,
    pub query: Option<String>,
}

impl Resource {
    pub fn model(v: impl Serialize) -> Result<Resource, ResError> {
        Ok(Resource { data: ResourceData::Model(model(v)?), query: None })
    }

    pub fn collection(v: impl Serialize) -> Result<Resource, ResError> {
        Ok(Resource { data: ResourceData::Collection(collection(v)?), query: None })
    }

    /// Marks the result as a query resource, with the normalized query the gateway caches by.
    pub fn with_query(mut self, normalized: impl Into<String>) -> Resource {
        self.query = Some(normalized.into());
        self
    }
}

/// What a call or auth handler answers.
#[derive(Debug, Clone)]
pub enum CallResponse {
    /// A plain result, any JSON.
    Result(serde_json::Value),
    /// A resource response: the client is subscribed to `rid`.
    Resource(String),
}

impl CallResponse {
    pub fn result(v: impl Serialize) -> Result<CallResponse, ResError> {
        serde_json::to_value(v).map(CallResponse::Result).map_err(ResError::internal)
    }

    pub fn null() -> CallResponse {
        CallResponse::Result(serde_json::Value::Null)
    }

    pub fn resource(rid: impl Into<String>) -> CallResponse {
        CallResponse::Resource(rid.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_from_serde() {
        let m = model(serde_json::json!({"a": 1, "r": reference("x.y"), "d": data([1, 2])})).unwrap();
        assert_eq!(m["a"], Value::primitive("1"));
        assert_eq!(m["r"].hard_reference(), Some("x.y"));
        assert!(matches!(m["d"], Value::Data(_)));
        assert!(model(serde_json::json!({"bad": {"x": 1}})).is_err());
        assert!(model(serde_json::json!([1])).is_err());
        assert_eq!(collection(serde_json::json!([1, "a"])).unwrap().len(), 2);
    }
}
