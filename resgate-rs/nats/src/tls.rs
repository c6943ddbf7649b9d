//! The rustls client configuration (ring provider): public web PKI roots plus configured CAs,
//! and an optional client certificate.

use crate::{ConnectError, Options};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto::ring};

/// Builds the configuration once at connect, so a bad file fails `connect` instead of every
/// reconnect attempt.
pub(crate) fn client_config(opts: &Options) -> Result<Arc<ClientConfig>, ConnectError> {
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    for ca in &opts.root_cas {
        for cert in read_certs(ca)? {
            roots.add(cert).map_err(|e| ConnectError::Tls(format!("CA certificate in {}: {e}", ca.display())))?;
        }
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match &opts.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_certs(cert)?;
            let key = rustls_pemfile::private_key(&mut read(key)?.as_slice())
                .map_err(|source| ConnectError::Read { path: key.clone(), source })?
                .ok_or_else(|| ConnectError::Tls(format!("no private key in {}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ConnectError::Tls(format!("client certificate: {e}")))?
        }
    };
    Ok(Arc::new(config))
}

fn read(path: &Path) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|source| ConnectError::Read { path: path.to_owned(), source })
}

fn read_certs(path: &Path) -> Result<Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>>, ConnectError> {
    let certs = rustls_pemfile::certs(&mut read(path)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ConnectError::Read { path: path.to_owned(), source })?;
    if certs.is_empty() {
        return Err(ConnectError::Tls(format!("no certificate in {}", path.display())));
    }
    Ok(certs)
}
