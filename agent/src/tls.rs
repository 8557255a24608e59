//! TLS for the connection to the collector: a rustls client configuration
//! trusting the configured CA, presenting the device certificate for mutual
//! TLS, and verifying the collector's certificate against the configured
//! server name (which may differ from the host the agent connects to).
//!
//! One crypto provider only, ring, passed explicitly to every builder;
//! [`install_default_provider`] also installs it process-wide (rumqttc's
//! default features would pull aws-lc-rs, and rustls panics at the first
//! handshake when a build has two providers and none installed).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::TlsFiles;

/// Why a TLS configuration could not be built; each names the key of the
/// file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("`collector.tls.{key}` {path}: {message}")]
    File {
        /// The configuration key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused a certificate, key or setting.
    #[error("`collector.tls.{key}`: {source}")]
    Rustls {
        /// The configuration key.
        key: &'static str,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// The server certificate verifier could not be built.
    #[error("`collector.tls.ca_file`: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
}

/// Installs ring as the process-wide rustls provider; one installed before
/// is kept.
pub fn install_default_provider() {
    // Err only means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_err = |message: String| TlsError::File { key, path: path.to_path_buf(), message };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_err("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        key: "key_file",
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The client configuration for `files`.
///
/// # Errors
/// Unreadable or unusable CA, certificate or key files, by key.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs("ca_file", &files.ca_file)? {
        roots.add(c).map_err(|source| TlsError::Rustls { key: "ca_file", source })?;
    }
    let provider = provider();
    let inner =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let name = ServerName::try_from(files.server_name.clone()).map_err(|e| TlsError::File {
        key: "server_name",
        path: PathBuf::new(),
        message: e.to_string(),
    })?;
    let verifier = Arc::new(NamedServerVerifier { inner, name });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls { key: "ca_file", source })?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match &files.identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(certs("cert_file", cert)?, private_key(key)?)
            .map_err(|source| TlsError::Rustls { key: "cert_file", source })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The standard WebPKI verification, against the configured name instead of
/// the name the connection was made to.
#[derive(Debug)]
struct NamedServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for NamedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_key_and_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let files =
            TlsFiles { ca_file: empty.clone(), identity: None, server_name: "localhost".into() };
        let e = client_config(&files).expect_err("no certificate");
        assert!(
            e.to_string().contains("`collector.tls.ca_file`")
                && e.to_string().contains("empty.pem"),
            "{e}"
        );
        let files = TlsFiles { ca_file: dir.path().join("missing.pem"), ..files };
        let e = client_config(&files).expect_err("missing");
        assert!(e.to_string().contains("missing.pem"), "{e}");
    }
}
