//! RES error objects and the predefined error codes.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;

/// Predefined error codes. Services may use codes of their own; these are the ones the gateway
/// produces or interprets.
pub mod code {
    pub const ACCESS_DENIED: &str = "system.accessDenied";
    pub const INTERNAL_ERROR: &str = "system.internalError";
    pub const INVALID_PARAMS: &str = "system.invalidParams";
    pub const INVALID_QUERY: &str = "system.invalidQuery";
    pub const METHOD_NOT_FOUND: &str = "system.methodNotFound";
    pub const NO_SUBSCRIPTION: &str = "system.noSubscription";
    pub const NOT_FOUND: &str = "system.notFound";
    pub const TIMEOUT: &str = "system.timeout";
    pub const INVALID_REQUEST: &str = "system.invalidRequest";
    pub const UNSUPPORTED_PROTOCOL: &str = "system.unsupportedProtocol";
    // Not in the specification, but produced by Resgate; kept for drop-in compatibility.
    pub const SUBJECT_TOO_LONG: &str = "system.subjectTooLong";
    pub const DELETED: &str = "system.deleted";
    pub const SUBSCRIPTION_LIMIT_EXCEEDED: &str = "system.subscriptionLimitExceeded";
    // HTTP API only.
    pub const BAD_REQUEST: &str = "system.badRequest";
    pub const METHOD_NOT_ALLOWED: &str = "system.methodNotAllowed";
    pub const SERVICE_UNAVAILABLE: &str = "system.serviceUnavailable";
    pub const FORBIDDEN: &str = "system.forbidden";
    pub const NOT_IMPLEMENTED: &str = "system.notImplemented";
}

/// A RES error: `{"code": "...", "message": "...", "data": ...}`.
///
/// Codes and messages are mostly static, so they are `Cow` to keep the predefined errors free of
/// allocation on the hot path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResError {
    /// A service error without a code is passed on with an empty code, as Resgate does.
    #[serde(default)]
    pub code: Cow<'static, str>,
    #[serde(default)]
    pub message: Cow<'static, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl ResError {
    pub const fn new_static(code: &'static str, message: &'static str) -> Self {
        ResError { code: Cow::Borrowed(code), message: Cow::Borrowed(message), data: None }
    }

    pub fn new(code: impl Into<Cow<'static, str>>, message: impl Into<Cow<'static, str>>) -> Self {
        ResError { code: code.into(), message: message.into(), data: None }
    }

    pub fn with_data(mut self, data: serde_json::Value) -> Self {
        self.data = Some(data);
        self
    }

    /// `system.internalError` with a detail, in Resgate's message format.
    pub fn internal(detail: impl fmt::Display) -> Self {
        ResError::new(code::INTERNAL_ERROR, format!("Internal error: {detail}"))
    }

    pub fn is(&self, code: &str) -> bool {
        self.code == code
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("error serialization cannot fail")
    }
}

macro_rules! predefined {
    ($($fn_name:ident => $code:ident, $msg:literal;)*) => {
        impl ResError {
            $(
                pub const fn $fn_name() -> Self {
                    ResError::new_static(code::$code, $msg)
                }
            )*
        }
    };
}

predefined! {
    access_denied => ACCESS_DENIED, "Access denied";
    internal_error => INTERNAL_ERROR, "Internal error";
    invalid_params => INVALID_PARAMS, "Invalid parameters";
    invalid_query => INVALID_QUERY, "Invalid query";
    method_not_found => METHOD_NOT_FOUND, "Method not found";
    no_subscription => NO_SUBSCRIPTION, "No subscription";
    not_found => NOT_FOUND, "Not found";
    timeout => TIMEOUT, "Request timeout";
    invalid_request => INVALID_REQUEST, "Invalid request";
    unsupported_protocol => UNSUPPORTED_PROTOCOL, "Unsupported protocol";
    subject_too_long => SUBJECT_TOO_LONG, "Subject too long";
    deleted => DELETED, "Deleted";
    subscription_limit_exceeded => SUBSCRIPTION_LIMIT_EXCEEDED, "Subscription limit exceeded";
    bad_request => BAD_REQUEST, "Bad request";
    method_not_allowed => METHOD_NOT_ALLOWED, "Method not allowed";
    service_unavailable => SERVICE_UNAVAILABLE, "Service unavailable";
    forbidden_origin => FORBIDDEN, "Forbidden origin";
    forbidden => FORBIDDEN, "Forbidden";
    not_implemented => NOT_IMPLEMENTED, "Not implemented";
}

/// Deserializes an optional error object. Only a JSON object (or null) is an error object: serde
/// would otherwise also read a struct from an array, which Go (and so Resgate) does not.
pub fn de_error_object<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<ResError>, D::Error> {
    use serde::de::Error as _;
    match Option::<serde_json::Map<String, serde_json::Value>>::deserialize(d)? {
        None => Ok(None),
        Some(map) => serde_json::from_value(serde_json::Value::Object(map)).map(Some).map_err(D::Error::custom),
    }
}

impl fmt::Display for ResError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ResError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_without_data() {
        let e = ResError::not_found();
        assert_eq!(String::from_utf8(e.to_json()).unwrap(), r#"{"code":"system.notFound","message":"Not found"}"#);
    }

    #[test]
    fn deserializes_custom_code_and_data() {
        let e: ResError =
            serde_json::from_str(r#"{"code":"booking.seatTaken","message":"Seat taken","data":{"seat":"1A"}}"#)
                .unwrap();
        assert_eq!(e.code, "booking.seatTaken");
        assert_eq!(e.data.unwrap()["seat"], "1A");
    }

    #[test]
    fn rejects_non_string_code() {
        assert!(serde_json::from_str::<ResError>(r#"{"code":42,"message":"x"}"#).is_err());
    }
}
