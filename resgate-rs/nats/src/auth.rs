//! `.creds` files: a user JWT and the nkey seed that signs the server's nonce.

use crate::ConnectError;
use base64::Engine as _;
use std::path::Path;

/// A user JWT and its signing key, loaded once at connect and used on every (re)connect.
pub(crate) struct Creds {
    pub jwt: String,
    key: nkeys::KeyPair,
}

impl std::fmt::Debug for Creds {
    // The seed is a secret: never let it reach a log through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Creds").field("public_key", &self.key.public_key()).finish_non_exhaustive()
    }
}

impl Creds {
    /// Reads and checks a `.creds` file.
    pub fn load(path: &Path) -> Result<Creds, ConnectError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConnectError::Read { path: path.to_owned(), source })?;
        Creds::parse(&text).map_err(|reason| ConnectError::Credentials { path: path.to_owned(), reason })
    }

    /// The first `-----BEGIN ...-----` block holds the JWT, the second the seed (as nats.go reads
    /// them); the banner text between blocks is ignored.
    fn parse(text: &str) -> Result<Creds, String> {
        let mut blocks = Vec::new();
        let mut lines = text.lines().map(str::trim);
        while let Some(line) = lines.next() {
            if line.starts_with("---") && line.contains("BEGIN") {
                match lines.find(|l| !l.is_empty()) {
                    Some(content) if !content.starts_with("---") => blocks.push(content),
                    _ => return Err("a BEGIN line without content".into()),
                }
            }
        }
        let [jwt, seed, ..] = blocks[..] else { return Err("expected a JWT block and a seed block".into()) };
        let key = nkeys::KeyPair::from_seed(seed).map_err(|e| format!("invalid nkey seed: {e}"))?;
        Ok(Creds { jwt: jwt.to_owned(), key })
    }

    /// Signs the server's nonce: base64url without padding of the ed25519 signature.
    pub fn sign(&self, nonce: &str) -> String {
        // Signing only fails for a key pair without a seed, and ours always has one.
        let sig = self.key.sign(nonce.as_bytes()).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds_file(jwt: &str, seed: &str) -> String {
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n"
        )
    }

    #[test]
    fn parses_a_creds_file_and_signs_verifiably() {
        let user = nkeys::KeyPair::new_user();
        let creds = Creds::parse(&creds_file("eyJhbGciOi.payload.sig", &user.seed().unwrap())).unwrap();
        assert_eq!(creds.jwt, "eyJhbGciOi.payload.sig");
        let sig = creds.sign("nonce-123");
        assert!(!sig.contains(['=', '+', '/']), "{sig}");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&sig).unwrap();
        let public = nkeys::KeyPair::from_public_key(&user.public_key()).unwrap();
        public.verify(b"nonce-123", &raw).unwrap();
        assert!(public.verify(b"other", &raw).is_err());
        assert!(!format!("{creds:?}").contains(&user.seed().unwrap()));
    }

    #[test]
    fn rejects_incomplete_or_invalid_files() {
        assert!(Creds::parse("").is_err());
        assert!(Creds::parse("-----BEGIN NATS USER JWT-----\nabc\n------END NATS USER JWT------\n").is_err());
        assert!(Creds::parse(&creds_file("abc", "SUNOTASEED")).is_err());
        assert!(Creds::parse("-----BEGIN X-----\n------END X------\n-----BEGIN Y-----\n").is_err());
    }
}
