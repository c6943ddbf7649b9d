//! Validation errors and their RES error codes.

/// RES code for every token problem: the caller is not authenticated.
pub const RES_ACCESS_DENIED: &str = "system.accessDenied";
/// RES code when the identity provider cannot be reached in time. Transient: clients should
/// retry later and must not treat it as "log out".
pub const RES_ISSUER_UNAVAILABLE: &str = "identity.issuerUnavailable";
/// RES code for server-side misconfiguration (bad config, bad issuer metadata).
pub const RES_INTERNAL_ERROR: &str = "system.internalError";

/// Why a token was not accepted.
///
/// `Display` is the client-facing message (lowercase, no trailing period). Issuer-side variants
/// keep their diagnostic `detail` out of `Display` so internal host names never reach clients;
/// log `detail()` instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// Not a compact JWS, bad base64url/JSON, too large, or wrongly typed claims.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// `alg` outside the allow-list: `none`, every HMAC algorithm, or one not configured.
    #[error("token algorithm not allowed: {0}")]
    AlgorithmNotAllowed(String),
    /// No published key matches the token's `kid`, even after a JWKS refresh (or the refresh was
    /// rate-limited).
    #[error("unknown token signing key")]
    UnknownKey {
        /// The `kid` from the token header, if any.
        kid: Option<String>,
    },
    /// The signature does not verify with the selected key.
    #[error("invalid token signature")]
    InvalidSignature,
    /// `exp` is in the past (beyond the allowed skew).
    #[error("token expired")]
    Expired,
    /// `nbf` or `iat` is in the future (beyond the allowed skew).
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` differs from the configured issuer.
    #[error("token issuer mismatch")]
    IssuerMismatch,
    /// `aud` does not contain the configured audience.
    #[error("token audience mismatch")]
    AudienceMismatch,
    /// `azp` is not one of the allowed clients (or is missing while required).
    #[error("token authorized party mismatch")]
    AuthorizedPartyMismatch,
    /// A required claim is absent.
    #[error("token missing claim {0}")]
    MissingClaim(&'static str),
    /// A JWT of another kind (ID token, refresh token, logout token), told apart by `typ`.
    #[error("token is not an access token")]
    NotAccessToken,
    /// The issuer's discovery document or JWKS could not be fetched in time.
    #[error("identity issuer unavailable")]
    IssuerUnavailable {
        /// Diagnostic for logs (URL, transport error).
        detail: String,
    },
    /// The issuer answered with something unusable (wrong `issuer` in metadata, unparsable JWKS).
    #[error("identity issuer misconfigured")]
    IssuerMisconfigured {
        /// Diagnostic for logs.
        detail: String,
    },
    /// The validator configuration is invalid.
    #[error("invalid token validator configuration: {0}")]
    Config(String),
}

impl ValidationError {
    /// The RES error code to answer with (see the `RES_*` constants).
    pub fn res_code(&self) -> &'static str {
        match self {
            Self::IssuerUnavailable { .. } => RES_ISSUER_UNAVAILABLE,
            Self::IssuerMisconfigured { .. } | Self::Config(_) => RES_INTERNAL_ERROR,
            Self::Malformed(_)
            | Self::AlgorithmNotAllowed(_)
            | Self::UnknownKey { .. }
            | Self::InvalidSignature
            | Self::Expired
            | Self::NotYetValid
            | Self::IssuerMismatch
            | Self::AudienceMismatch
            | Self::AuthorizedPartyMismatch
            | Self::MissingClaim(_)
            | Self::NotAccessToken => RES_ACCESS_DENIED,
        }
    }

    /// True when the token itself was refused (as opposed to an issuer or configuration problem).
    pub fn is_token_rejected(&self) -> bool {
        self.res_code() == RES_ACCESS_DENIED
    }

    /// Diagnostic detail for logs; for token errors this is the `Display` text.
    pub fn detail(&self) -> String {
        match self {
            Self::IssuerUnavailable { detail } | Self::IssuerMisconfigured { detail } => detail.clone(),
            Self::UnknownKey { kid: Some(kid) } => format!("unknown token signing key {kid:?}"),
            other => other.to_string(),
        }
    }
}

/// Joins an error and its sources ("a: b: c") for log details.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = e.source();
    }
    out
}
