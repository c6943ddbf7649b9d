//! Validator configuration.

use std::time::Duration;

use openidconnect::core::CoreJwsSigningAlgorithm;

/// The API audience every platform access token must carry.
pub const BOOKING_API_AUDIENCE: &str = "booking-api";
/// The first-party browser client tokens are issued to (`azp`).
pub const BOOKING_WEB_CLIENT: &str = "booking-web";

/// Asymmetric JWS algorithms that may be accepted. `none` and the HMAC family are deliberately
/// not representable: with a public JWKS, an HMAC "secret" would be public.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (Keycloak's default).
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
    /// EdDSA (Ed25519).
    EdDsa,
}

impl Algorithm {
    /// Every supported algorithm; the default allow-list.
    pub const ALL: [Algorithm; 7] =
        [Self::Rs256, Self::Rs384, Self::Rs512, Self::Ps256, Self::Es256, Self::Es384, Self::EdDsa];

    /// The JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Ps256 => "PS256",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::EdDsa => "EdDSA",
        }
    }

    /// Parses a JOSE `alg` name (exact, case-sensitive as RFC 7515 requires).
    pub fn from_jose(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }

    pub(crate) fn to_core(self) -> CoreJwsSigningAlgorithm {
        match self {
            Self::Rs256 => CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
            Self::Rs384 => CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
            Self::Rs512 => CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
            Self::Ps256 => CoreJwsSigningAlgorithm::RsaSsaPssSha256,
            Self::Es256 => CoreJwsSigningAlgorithm::EcdsaP256Sha256,
            Self::Es384 => CoreJwsSigningAlgorithm::EcdsaP384Sha384,
            Self::EdDsa => CoreJwsSigningAlgorithm::EdDsa,
        }
    }
}

/// How access tokens are validated.
#[derive(Debug, Clone)]
pub struct ValidatorConfig {
    /// Expected `iss`, compared exactly (e.g. `https://host/realms/booking`). Discovery is read
    /// from `<issuer>/.well-known/openid-configuration` unless `discovery_url` is set.
    pub issuer: String,
    /// Where to fetch discovery from when it differs from the public issuer (a service reaching
    /// Keycloak by its internal name). The document's `issuer` must still equal `issuer`.
    pub discovery_url: Option<String>,
    /// Required member of `aud`.
    pub audience: String,
    /// Clients allowed as `azp`. Empty: any. Checked only when the claim is present, unless
    /// `require_azp` is set.
    pub allowed_azp: Vec<String>,
    /// Refuse tokens without `azp`.
    pub require_azp: bool,
    /// Clients whose `resource_access.<client>.roles` are merged into `Principal::roles`, next
    /// to the realm roles (they share one namespace, so keep role names distinct).
    pub role_clients: Vec<String>,
    /// Accepted signature algorithms (subset of [`Algorithm::ALL`]).
    pub algorithms: Vec<Algorithm>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Timeout for each HTTP request to the issuer (connect + response).
    pub http_timeout: Duration,
    /// At most one JWKS/discovery fetch per this interval, whatever triggers it.
    pub refresh_min_interval: Duration,
    /// Keys older than this are refetched on the next validation, so keys the issuer withdrew stop
    /// being trusted without a restart. A failed background refetch keeps the cached keys.
    pub jwks_max_age: Duration,
}

impl ValidatorConfig {
    /// Defaults: azp not checked, roles from the audience client, every asymmetric algorithm,
    /// 30 s leeway, 5 s HTTP timeout, one refresh per 10 s, keys refetched after 10 min.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        let audience = audience.into();
        Self {
            issuer: issuer.into(),
            discovery_url: None,
            role_clients: vec![audience.clone()],
            audience,
            allowed_azp: Vec::new(),
            require_azp: false,
            algorithms: Algorithm::ALL.to_vec(),
            leeway: Duration::from_secs(30),
            http_timeout: Duration::from_secs(5),
            refresh_min_interval: Duration::from_secs(10),
            jwks_max_age: Duration::from_secs(600),
        }
    }

    /// The platform's settings: audience `booking-api`, `azp` must be `booking-web` when present,
    /// roles from the realm and the `booking-api` client.
    pub fn booking(issuer: impl Into<String>) -> Self {
        Self { allowed_azp: vec![BOOKING_WEB_CLIENT.to_owned()], ..Self::new(issuer, BOOKING_API_AUDIENCE) }
    }
}
