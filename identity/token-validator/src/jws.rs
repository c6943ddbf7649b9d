//! Compact JWS parsing (RFC 7515) and the algorithm allow-list, before any key is touched.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use crate::config::Algorithm;
use crate::error::ValidationError;

/// Tokens above this size are refused before decoding: bounds the work an attacker can cause.
pub(crate) const MAX_TOKEN_BYTES: usize = 16 * 1024;

#[derive(Debug, Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// A structurally valid JWS whose algorithm is allowed; the signature is not yet verified.
#[derive(Debug)]
pub(crate) struct Jws<'a> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    /// `BASE64URL(header) "." BASE64URL(payload)`: the bytes the signature covers.
    pub signing_input: &'a [u8],
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
}

fn b64(part: &str, what: &'static str) -> Result<Vec<u8>, ValidationError> {
    URL_SAFE_NO_PAD.decode(part).map_err(|_| ValidationError::Malformed(what))
}

/// Header media types an access token may carry: RFC 9068 `at+jwt`, or Keycloak's `JWT`.
fn access_token_typ(typ: &str) -> bool {
    let t = typ.to_ascii_lowercase();
    let t = t.strip_prefix("application/").unwrap_or(&t);
    t == "jwt" || t == "at+jwt"
}

pub(crate) fn parse<'a>(token: &'a str, allowed: &[Algorithm]) -> Result<Jws<'a>, ValidationError> {
    if token.is_empty() {
        return Err(ValidationError::Malformed("empty token"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(ValidationError::Malformed("token too large"));
    }
    let parts: Vec<&str> = token.split('.').collect();
    match parts.len() {
        3 => {}
        5 => {
            return Err(ValidationError::Malformed("encrypted tokens are not supported"));
        }
        _ => return Err(ValidationError::Malformed("not a compact JWS")),
    }
    let header_bytes = b64(parts[0], "invalid header encoding")?;
    let header: RawHeader =
        serde_json::from_slice(&header_bytes).map_err(|_| ValidationError::Malformed("invalid header"))?;

    // The algorithm comes from our allow-list, never from the token: `none` and HS* (which would
    // let anyone holding the public key "sign" with it as an HMAC secret) are refused here.
    let alg = Algorithm::from_jose(&header.alg)
        .filter(|a| allowed.contains(a))
        .ok_or_else(|| ValidationError::AlgorithmNotAllowed(header.alg.clone()))?;

    // RFC 7515 4.1.11: a recipient must reject extensions it does not understand; we know none.
    if header.crit.is_some() {
        return Err(ValidationError::Malformed("unsupported critical header"));
    }
    if let Some(typ) = &header.typ
        && !access_token_typ(typ)
    {
        return Err(ValidationError::NotAccessToken);
    }
    if parts[2].is_empty() {
        return Err(ValidationError::InvalidSignature);
    }
    let payload = b64(parts[1], "invalid payload encoding")?;
    let signature = b64(parts[2], "invalid signature encoding")?;
    let signing_input_len = parts[0].len() + 1 + parts[1].len();
    Ok(Jws { alg, kid: header.kid, signing_input: &token.as_bytes()[..signing_input_len], payload, signature })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &str) -> String {
        URL_SAFE_NO_PAD.encode(v)
    }

    fn token(header: &str) -> String {
        format!("{}.{}.{}", enc(header), enc("{}"), enc("sig"))
    }

    #[test]
    fn accepts_allowed_algorithm_and_exposes_signing_input() {
        let t = token(r#"{"alg":"RS256","kid":"k1","typ":"at+jwt"}"#);
        let jws = parse(&t, &Algorithm::ALL).unwrap();
        assert_eq!(jws.alg, Algorithm::Rs256);
        assert_eq!(jws.kid.as_deref(), Some("k1"));
        assert_eq!(jws.signing_input, t.rsplit_once('.').unwrap().0.as_bytes());
        assert_eq!(jws.signature, b"sig");
    }

    #[test]
    fn refuses_none_hmac_and_unlisted_algorithms() {
        for alg in ["none", "None", "HS256", "HS384", "HS512", "rs256", "ES512", ""] {
            let t = token(&format!(r#"{{"alg":"{alg}"}}"#));
            assert_eq!(
                parse(&t, &Algorithm::ALL).unwrap_err(),
                ValidationError::AlgorithmNotAllowed(alg.to_owned()),
                "{alg}"
            );
        }
        let t = token(r#"{"alg":"ES256"}"#);
        assert!(matches!(parse(&t, &[Algorithm::Rs256]), Err(ValidationError::AlgorithmNotAllowed(_))));
    }

    #[test]
    fn refuses_structural_garbage() {
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        for bad in ["", "abc", "a.b", "a.b.c.d", "....", "!!.??.**", "eyJhbGciOiJSUzI1NiJ9.e30=.c2ln", long.as_str()] {
            assert!(matches!(parse(bad, &Algorithm::ALL), Err(ValidationError::Malformed(_))), "{bad:.40}");
        }
        let jwe = format!("{}.a.b.c.d", enc(r#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#));
        assert_eq!(
            parse(&jwe, &Algorithm::ALL).unwrap_err(),
            ValidationError::Malformed("encrypted tokens are not supported")
        );
        let not_json = format!("{}.{}.{}", enc("nope"), enc("{}"), enc("s"));
        assert!(matches!(parse(&not_json, &Algorithm::ALL), Err(ValidationError::Malformed(_))));
    }

    #[test]
    fn refuses_crit_other_token_types_and_empty_signatures() {
        let t = token(r#"{"alg":"RS256","crit":["exp"],"exp":1}"#);
        assert!(matches!(parse(&t, &Algorithm::ALL), Err(ValidationError::Malformed(_))));
        for typ in ["logout+jwt", "dpop+jwt", "ID"] {
            let t = token(&format!(r#"{{"alg":"RS256","typ":"{typ}"}}"#));
            assert_eq!(parse(&t, &Algorithm::ALL).unwrap_err(), ValidationError::NotAccessToken);
        }
        for typ in ["JWT", "at+jwt", "application/at+jwt", "AT+JWT"] {
            let t = token(&format!(r#"{{"alg":"RS256","typ":"{typ}"}}"#));
            assert!(parse(&t, &Algorithm::ALL).is_ok(), "{typ}");
        }
        let t = format!("{}.{}.", enc(r#"{"alg":"RS256"}"#), enc("{}"));
        assert_eq!(parse(&t, &Algorithm::ALL).unwrap_err(), ValidationError::InvalidSignature);
    }
}
