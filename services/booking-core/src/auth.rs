//! The caller's identity: the connection token the identity service sets.

use crate::error::BookingError;
use res_service::Request;
use serde::{Deserialize, Serialize};

pub const ROLE_CUSTOMER: &str = "customer";
pub const ROLE_OPERATOR: &str = "operator";

/// `{"sub", "name", "email", "preferred_username", "roles", "exp"}` as set on `conn.<cid>.token`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub preferred_username: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Expiry in unix seconds; an expired token counts as no token.
    #[serde(default)]
    pub exp: Option<i64>,
}

impl Claims {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    pub fn is_operator(&self) -> bool {
        self.has_role(ROLE_OPERATOR)
    }

    fn is_expired(&self, now_secs: i64) -> bool {
        self.exp.is_some_and(|exp| exp <= now_secs)
    }
}

/// The caller, if the connection has a valid, unexpired token.
pub fn caller(req: &Request) -> Option<Claims> {
    let claims: Claims = req.token().ok().flatten()?;
    let now = chrono::Utc::now().timestamp();
    (!claims.sub.is_empty() && !claims.is_expired(now)).then_some(claims)
}

/// The caller, required (`system.accessDenied` otherwise).
pub fn require_caller(req: &Request) -> Result<Claims, BookingError> {
    caller(req).ok_or(BookingError::AccessDenied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_expiry() {
        let c: Claims = serde_json::from_str(r#"{"sub":"u1","roles":["customer","operator"],"exp":100}"#).unwrap();
        assert!(c.is_operator() && c.has_role(ROLE_CUSTOMER));
        assert!(c.is_expired(100) && !c.is_expired(99));
        let minimal: Claims = serde_json::from_str(r#"{"sub":"u2"}"#).unwrap();
        assert!(!minimal.is_operator() && !minimal.is_expired(i64::MAX));
    }
}
