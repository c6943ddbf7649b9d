//! Protocol versions, as integers `major * 1_000_000 + minor * 1_000 + patch`.

use crate::error::ResError;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion(pub u32);

impl ProtocolVersion {
    /// The version this implementation speaks.
    pub const CURRENT: ProtocolVersion = ProtocolVersion(1_002_003);
    /// What a client that never sends a `version` request is taken to speak.
    pub const LEGACY_DEFAULT: ProtocolVersion = ProtocolVersion(1_001_001);
    /// Call/auth results wrapped in `payload`, resource responses subscribed.
    pub const V1_2_0: ProtocolVersion = ProtocolVersion(1_002_000);
    /// Soft references and data values.
    pub const V1_2_1: ProtocolVersion = ProtocolVersion(1_002_001);

    /// Parses a client's `version` request parameter. Like Resgate: three dot-separated integers
    /// (Go's `Atoi`, so a sign is accepted), each below 1000, else `system.invalidParams`; a major
    /// version other than 1 is `system.unsupportedProtocol`.
    pub fn parse_client(protocol: &str) -> Result<ProtocolVersion, ResError> {
        let mut parts = protocol.split('.');
        let mut v: i64 = 0;
        for _ in 0..3 {
            let p: i64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(ResError::invalid_params)?;
            if p >= 1000 {
                return Err(ResError::invalid_params());
            }
            v = v * 1000 + p;
        }
        if parts.next().is_some() {
            return Err(ResError::invalid_params());
        }
        if !(1_000_000..2_000_000).contains(&v) {
            return Err(ResError::unsupported_protocol());
        }
        Ok(ProtocolVersion(v as u32))
    }

    /// Clients below 1.2.1 get soft references as strings and data values as `"[Data]"`.
    pub fn is_legacy_values(self) -> bool {
        self < Self::V1_2_1
    }

    /// Clients below 1.2.0 get raw call results and unsubscribed resource responses.
    pub fn is_legacy_call(self) -> bool {
        self < Self::V1_2_0
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0 / 1_000_000, (self.0 / 1000) % 1000, self.0 % 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code;

    #[test]
    fn parses() {
        assert_eq!(ProtocolVersion::parse_client("1.2.3").unwrap(), ProtocolVersion::CURRENT);
        assert_eq!(ProtocolVersion::parse_client("1.999.999").unwrap().0, 1_999_999);
        assert_eq!(ProtocolVersion::CURRENT.to_string(), "1.2.3");
    }

    #[test]
    fn rejects() {
        for (v, c) in [
            ("1.2", code::INVALID_PARAMS),
            ("1.2.3.4", code::INVALID_PARAMS),
            ("v1.2.3", code::INVALID_PARAMS),
            ("1.1000.0", code::INVALID_PARAMS),
            ("1.a.0", code::INVALID_PARAMS),
            ("2.0.0", code::UNSUPPORTED_PROTOCOL),
            ("0.9.0", code::UNSUPPORTED_PROTOCOL),
        ] {
            assert_eq!(ProtocolVersion::parse_client(v).unwrap_err().code, c, "{v}");
        }
    }
}
