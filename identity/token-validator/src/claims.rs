//! Access-token claim checks. openidconnect's `IdTokenVerifier` is built for ID tokens (nonce,
//! `aud` = client id, `at_hash`...), so access-token rules live here as a pure function of the
//! claims, the policy and the time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer};

use crate::config::ValidatorConfig;
use crate::error::ValidationError;

/// The authenticated caller, as established by a valid access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `sub`: the stable user id.
    pub subject: String,
    /// `name` (full name), when the profile scope provided it.
    pub name: Option<String>,
    /// `email`.
    pub email: Option<String>,
    /// `preferred_username`.
    pub preferred_username: Option<String>,
    /// Realm roles plus the roles of the configured clients.
    pub roles: BTreeSet<String>,
    /// `exp`: when the token stops being valid.
    pub expires_at: SystemTime,
    /// `jti`, to revoke a single token (RES `system.tokenReset`).
    pub token_id: Option<String>,
    /// `sid`, the issuer's login session, to end all tokens of one session on logout.
    pub session_id: Option<String>,
}

impl Principal {
    /// True when the principal has `role` (realm or configured client role).
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.contains(role)
    }
}

/// `aud` is a string or an array of strings (RFC 7519 4.1.3).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, wanted: &str) -> bool {
        match self {
            Self::One(a) => a == wanted,
            Self::Many(all) => all.iter().any(|a| a == wanted),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct RoleSet {
    #[serde(default)]
    roles: Vec<String>,
}

/// NumericDate (RFC 7519 2): seconds since the epoch, possibly fractional; negative or
/// non-finite values are refused.
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = Option::<f64>::deserialize(d)?;
    match v {
        None => Ok(None),
        Some(f) if f.is_finite() && (0.0..1e15).contains(&f) => Ok(Some(f.floor() as u64)),
        Some(_) => Err(serde::de::Error::custom("invalid NumericDate")),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct AccessTokenClaims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Audience>,
    azp: Option<String>,
    #[serde(default, deserialize_with = "numeric_date")]
    exp: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    nbf: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    iat: Option<u64>,
    jti: Option<String>,
    sid: Option<String>,
    /// Keycloak marks its JWTs with `typ`: "Bearer" for access tokens, "ID", "Refresh", ...
    typ: Option<String>,
    name: Option<String>,
    email: Option<String>,
    preferred_username: Option<String>,
    realm_access: Option<RoleSet>,
    resource_access: Option<BTreeMap<String, RoleSet>>,
}

impl AccessTokenClaims {
    pub(crate) fn from_json(payload: &[u8]) -> Result<Self, ValidationError> {
        serde_json::from_slice(payload).map_err(|_| ValidationError::Malformed("invalid claims"))
    }
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Checks every claim rule and builds the principal. The signature must already be verified.
pub(crate) fn check(
    claims: AccessTokenClaims,
    config: &ValidatorConfig,
    now: SystemTime,
) -> Result<Principal, ValidationError> {
    if let Some(typ) = &claims.typ
        && !typ.eq_ignore_ascii_case("bearer")
    {
        return Err(ValidationError::NotAccessToken);
    }
    let iss = claims.iss.as_deref().ok_or(ValidationError::MissingClaim("iss"))?;
    if iss != config.issuer {
        return Err(ValidationError::IssuerMismatch);
    }
    let aud = claims.aud.as_ref().ok_or(ValidationError::MissingClaim("aud"))?;
    if !aud.contains(&config.audience) {
        return Err(ValidationError::AudienceMismatch);
    }
    match &claims.azp {
        Some(azp) if !config.allowed_azp.is_empty() && !config.allowed_azp.contains(azp) => {
            return Err(ValidationError::AuthorizedPartyMismatch);
        }
        None if config.require_azp => return Err(ValidationError::AuthorizedPartyMismatch),
        _ => {}
    }

    let now = secs(now);
    let leeway = config.leeway.as_secs();
    let exp = claims.exp.ok_or(ValidationError::MissingClaim("exp"))?;
    // RFC 7519 4.1.4: valid only while now < exp (plus the skew).
    if now >= exp.saturating_add(leeway) {
        return Err(ValidationError::Expired);
    }
    // `iat` in the future is as suspicious as `nbf` in the future: a clock or forgery problem.
    for start in [claims.nbf, claims.iat].into_iter().flatten() {
        if now.saturating_add(leeway) < start {
            return Err(ValidationError::NotYetValid);
        }
    }
    let subject = claims.sub.filter(|s| !s.is_empty()).ok_or(ValidationError::MissingClaim("sub"))?;

    let mut roles: BTreeSet<String> = claims.realm_access.unwrap_or_default().roles.into_iter().collect();
    if let Some(mut by_client) = claims.resource_access {
        for client in &config.role_clients {
            if let Some(set) = by_client.remove(client) {
                roles.extend(set.roles);
            }
        }
    }

    Ok(Principal {
        subject,
        name: claims.name,
        email: claims.email,
        preferred_username: claims.preferred_username,
        roles,
        expires_at: UNIX_EPOCH + Duration::from_secs(exp),
        token_id: claims.jti,
        session_id: claims.sid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const ISS: &str = "https://id.example.com/realms/booking";
    const NOW: u64 = 1_800_000_000;

    fn config() -> ValidatorConfig {
        ValidatorConfig::booking(ISS)
    }

    fn base() -> Value {
        json!({
            "iss": ISS,
            "sub": "user-1",
            "aud": ["booking-api", "account"],
            "azp": "booking-web",
            "exp": NOW + 300,
            "iat": NOW,
            "jti": "t-1",
            "sid": "s-1",
            "typ": "Bearer",
            "name": "Alice Archer",
            "email": "alice@example.com",
            "preferred_username": "alice",
            "realm_access": { "roles": ["customer", "offline_access"] },
            "resource_access": {
                "booking-api": { "roles": ["schedule-admin"] },
                "account": { "roles": ["manage-account"] }
            }
        })
    }

    fn run(v: Value) -> Result<Principal, ValidationError> {
        run_with(v, &config())
    }

    fn run_with(v: Value, cfg: &ValidatorConfig) -> Result<Principal, ValidationError> {
        let claims = AccessTokenClaims::from_json(&serde_json::to_vec(&v).unwrap())?;
        check(claims, cfg, UNIX_EPOCH + Duration::from_secs(NOW))
    }

    fn with(mut v: Value, key: &str, value: Value) -> Value {
        v[key] = value;
        v
    }

    fn without(mut v: Value, key: &str) -> Value {
        v.as_object_mut().unwrap().remove(key);
        v
    }

    #[test]
    fn builds_principal_with_realm_and_configured_client_roles() {
        let p = run(base()).unwrap();
        assert_eq!(p.subject, "user-1");
        assert_eq!(p.name.as_deref(), Some("Alice Archer"));
        assert_eq!(p.email.as_deref(), Some("alice@example.com"));
        assert_eq!(p.preferred_username.as_deref(), Some("alice"));
        let roles: Vec<&str> = p.roles.iter().map(String::as_str).collect();
        // `account` is not a configured role client, so manage-account stays out.
        assert_eq!(roles, ["customer", "offline_access", "schedule-admin"]);
        assert!(p.has_role("customer"));
        assert_eq!(p.expires_at, UNIX_EPOCH + Duration::from_secs(NOW + 300));
        assert_eq!(p.token_id.as_deref(), Some("t-1"));
        assert_eq!(p.session_id.as_deref(), Some("s-1"));
    }

    #[test]
    fn audience_may_be_a_string_and_roles_may_be_absent() {
        let v = without(without(with(base(), "aud", json!("booking-api")), "realm_access"), "resource_access");
        let p = run(v).unwrap();
        assert!(p.roles.is_empty());
    }

    #[test]
    fn issuer_must_match_exactly() {
        for iss in [
            "https://id.example.com/realms/booking/",
            "https://id.example.com/auth/realms/booking",
            "http://id.example.com/realms/booking",
            "https://ID.example.com/realms/booking",
        ] {
            assert_eq!(run(with(base(), "iss", json!(iss))), Err(ValidationError::IssuerMismatch), "{iss}");
        }
        assert_eq!(run(without(base(), "iss")), Err(ValidationError::MissingClaim("iss")));
    }

    #[test]
    fn audience_must_contain_the_api() {
        for aud in [json!("account"), json!(["account"]), json!([]), json!("booking-api ")] {
            assert_eq!(run(with(base(), "aud", aud.clone())), Err(ValidationError::AudienceMismatch), "{aud}");
        }
        assert_eq!(run(without(base(), "aud")), Err(ValidationError::MissingClaim("aud")));
        assert!(matches!(run(with(base(), "aud", json!(42))), Err(ValidationError::Malformed(_))));
    }

    #[test]
    fn azp_is_checked_when_present_or_required() {
        assert_eq!(run(with(base(), "azp", json!("other-client"))), Err(ValidationError::AuthorizedPartyMismatch));
        assert!(run(without(base(), "azp")).is_ok());
        let mut strict = config();
        strict.require_azp = true;
        assert_eq!(run_with(without(base(), "azp"), &strict), Err(ValidationError::AuthorizedPartyMismatch));
        let mut open = config();
        open.allowed_azp.clear();
        assert!(run_with(with(base(), "azp", json!("other-client")), &open).is_ok());
    }

    #[test]
    fn expiry_honours_the_leeway() {
        assert!(run(with(base(), "exp", json!(NOW + 1))).is_ok());
        assert!(run(with(base(), "exp", json!(NOW - 29))).is_ok(), "within 30 s skew");
        assert_eq!(run(with(base(), "exp", json!(NOW - 30))), Err(ValidationError::Expired));
        assert_eq!(run(with(base(), "exp", json!(NOW - 3600))), Err(ValidationError::Expired));
        assert_eq!(run(without(base(), "exp")), Err(ValidationError::MissingClaim("exp")));
        let mut tight = config();
        tight.leeway = Duration::ZERO;
        assert_eq!(run_with(with(base(), "exp", json!(NOW)), &tight), Err(ValidationError::Expired));
        assert!(run(with(base(), "exp", json!((NOW + 10) as f64 + 0.5))).is_ok(), "fractional");
        for bad in [json!(-1), json!("soon"), json!(1e300)] {
            assert!(matches!(run(with(base(), "exp", bad)), Err(ValidationError::Malformed(_))));
        }
    }

    #[test]
    fn nbf_and_iat_in_the_future_are_refused_beyond_the_leeway() {
        assert!(run(with(base(), "nbf", json!(NOW + 30))).is_ok());
        assert_eq!(run(with(base(), "nbf", json!(NOW + 31))), Err(ValidationError::NotYetValid));
        assert_eq!(run(with(base(), "iat", json!(NOW + 600))), Err(ValidationError::NotYetValid));
        assert!(run(without(base(), "iat")).is_ok());
    }

    #[test]
    fn subject_is_required_and_other_token_kinds_are_refused() {
        assert_eq!(run(without(base(), "sub")), Err(ValidationError::MissingClaim("sub")));
        assert_eq!(run(with(base(), "sub", json!(""))), Err(ValidationError::MissingClaim("sub")));
        for typ in ["ID", "Refresh", "Logout"] {
            assert_eq!(run(with(base(), "typ", json!(typ))), Err(ValidationError::NotAccessToken));
        }
        assert!(run(without(base(), "typ")).is_ok(), "RFC 9068 tokens carry no typ claim");
    }

    #[test]
    fn wrongly_typed_or_duplicate_claims_are_malformed() {
        assert!(matches!(run(with(base(), "name", json!(7))), Err(ValidationError::Malformed(_))));
        assert!(matches!(
            run(with(base(), "realm_access", json!({"roles": "customer"}))),
            Err(ValidationError::Malformed(_))
        ));
        let dup = br#"{"iss":"a","iss":"b"}"#;
        assert!(matches!(AccessTokenClaims::from_json(dup), Err(ValidationError::Malformed(_))));
        assert!(matches!(AccessTokenClaims::from_json(b"[]"), Err(ValidationError::Malformed(_))));
    }
}
