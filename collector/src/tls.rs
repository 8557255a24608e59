//! TLS for the collector's listeners: the rustls server configuration (ring
//! provider), client certificates verified against a CA (mutual TLS), and the
//! identity a client certificate proves.
//!
//! The `[tls]` section names a certificate, its key and the CA that signs
//! client certificates. Without them the collector uses its development CA
//! ([`crate::certs`]) from the data directory, created on first start.
//!
//! ```toml
//! [tls]
//! cert = "/etc/weir/server.pem"      # chain, leaf first (PEM)
//! key = "/etc/weir/server.key"       # PKCS#8, PKCS#1 or SEC1 (PEM)
//! client_ca = "/etc/weir/devices-ca.pem"
//! client_certs = "optional"          # optional | required | off
//! server_names = ["collector.example"]   # development certificate only
//! ```
//!
//! A client certificate is optional by default: a device may authenticate
//! with one (its common name, or else its first DNS/e-mail/URI subject
//! alternative name, is its identity) or with a username and password.
//!
//! Exactly one crypto provider is used, ring, passed explicitly to every
//! builder; [`install_default_provider`] also installs it process-wide for
//! libraries that look up the default (call it first thing in binaries and
//! tests).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::Deserialize;

use crate::certs::{self, CertError};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {source}")]
    Pem {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("{0}: no certificate in the file")]
    NoCertificate(PathBuf),
    /// rustls refused the certificate, key or settings.
    #[error("{what}: {source}")]
    Rustls {
        /// What was being set up.
        what: &'static str,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// The client certificate verifier could not be built (e.g. an empty CA
    /// file).
    #[error("client CA {path}: {source}")]
    Verifier {
        /// The CA file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// The development CA could not be created or read.
    #[error("development CA: {0}")]
    DevCa(#[from] CertError),
}

/// Whether clients present certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCerts {
    /// Verified when presented; clients without one log in with a password.
    #[default]
    Optional,
    /// Every client must present a certificate signed by the client CA.
    Required,
    /// Not asked for.
    Off,
}

/// `[tls]`: the listener's certificate and the CA of client certificates.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// Certificate chain (PEM, leaf first). Unset: the development CA's
    /// server certificate.
    pub cert: Option<PathBuf>,
    /// Private key of `cert` (PEM).
    pub key: Option<PathBuf>,
    /// CA certificates (PEM) that sign client certificates. Unset with the
    /// development certificates: the development CA; unset with configured
    /// ones: no client certificates.
    pub client_ca: Option<PathBuf>,
    /// `optional` (default), `required` or `off`.
    pub client_certs: ClientCerts,
    /// Extra names for the development server certificate.
    pub server_names: Vec<String>,
}

impl TlsSection {
    /// Checks that `cert` and `key` are given together.
    ///
    /// # Errors
    /// `(key, message)` naming the offending key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        match (&self.cert, &self.key) {
            (Some(_), None) => Err(("tls.key".into(), "required when `tls.cert` is set".into())),
            (None, Some(_)) => Err(("tls.cert".into(), "required when `tls.key` is set".into())),
            _ => Ok(()),
        }
    }
}

/// A ready server configuration and what clients need to trust it.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The rustls configuration for the listener.
    pub config: Arc<rustls::ServerConfig>,
    /// The development CA certificate clients should trust, when the
    /// development CA is in use.
    pub dev_ca_cert: Option<PathBuf>,
}

/// The crypto provider of the whole workspace: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide default provider; a provider installed
/// before (by an earlier call) is kept.
pub fn install_default_provider() {
    // Err only means one is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds the server configuration from `[tls]`, creating the development
/// CA under `data_dir` when no certificate is configured.
///
/// # Errors
/// Unreadable or unusable certificate, key or CA files; a development CA
/// that cannot be created.
pub fn server_config(section: &TlsSection, data_dir: &Path) -> Result<ServerTls, TlsError> {
    let (cert, key, client_ca, dev_ca_cert) = match (&section.cert, &section.key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone(), section.client_ca.clone(), None),
        _ => {
            let dev = certs::ensure_dev_tls(data_dir, &section.server_names)?;
            if !dev.created.is_empty() {
                tracing::info!(
                    ca = %dev.ca_cert.display(),
                    cert = %dev.server_cert.display(),
                    "created development TLS certificates: clients trust the CA file; \
                     `weir-collector certs issue-device NAME` issues device certificates"
                );
            }
            let ca = section.client_ca.clone().unwrap_or_else(|| dev.ca_cert.clone());
            (dev.server_cert, dev.server_key, Some(ca), Some(dev.ca_cert))
        }
    };
    let chain = load_certs(&cert)?;
    let key = load_key(&key)?;
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls { what: "protocol versions", source })?;
    let builder = match (section.client_certs, client_ca) {
        (ClientCerts::Off, _) | (_, None) => builder.with_no_client_auth(),
        (mode, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for c in load_certs(&ca)? {
                roots
                    .add(c)
                    .map_err(|source| TlsError::Rustls { what: "client CA certificate", source })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if mode == ClientCerts::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier =
                verifier.build().map_err(|source| TlsError::Verifier { path: ca, source })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Rustls { what: "server certificate and key", source })?;
    Ok(ServerTls { config: Arc::new(config), dev_ca_cert })
}

/// Reads every certificate of a PEM file.
///
/// # Errors
/// [`TlsError::Pem`] or [`TlsError::NoCertificate`].
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem { what: "certificate file", path: path.to_path_buf(), source };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file.
///
/// # Errors
/// [`TlsError::Pem`].
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Pem {
        what: "private key file",
        path: path.to_path_buf(),
        source,
    })
}

/// A client configuration trusting `ca` and, for mutual TLS, presenting
/// `identity` (certificate and key files). For tests, benchmarks and tools
/// that talk to a collector.
///
/// # Errors
/// Unreadable files or a certificate/key rustls refuses.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c).map_err(|source| TlsError::Rustls { what: "CA certificate", source })?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls { what: "protocol versions", source })?
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|source| TlsError::Rustls { what: "client certificate and key", source })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The identity a verified client certificate proves: its subject's common
/// name, or else its first DNS name, e-mail address or URI subject
/// alternative name. `None` for a certificate that names nothing (or does not
/// parse, which the verifier would have refused already).
pub fn certificate_identity(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok().map(str::to_owned))
        .filter(|cn| !cn.is_empty());
    if cn.is_some() {
        return cn;
    }
    let san = parsed.subject_alternative_name().ok().flatten()?;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
            Some((*s).to_owned())
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_config_and_device_identity() {
        install_default_provider();
        let tmp = tempfile::tempdir().expect("tempdir");
        let tls = server_config(&TlsSection::default(), tmp.path()).expect("server config");
        let ca = tls.dev_ca_cert.expect("development CA");
        let dev = certs::issue_device_cert(tmp.path(), "sensor-7", 1, None).expect("device");
        let cert = load_certs(&dev.cert).expect("device cert").remove(0);
        assert_eq!(certificate_identity(&cert).as_deref(), Some("sensor-7"));
        client_config(&ca, Some((&dev.cert, &dev.key))).expect("client config");
    }

    #[test]
    fn cert_and_key_go_together() {
        let section = TlsSection { cert: Some("c.pem".into()), ..TlsSection::default() };
        assert_eq!(section.validate().expect_err("no key").0, "tls.key");
        let missing = TlsSection {
            cert: Some("/nonexistent/c.pem".into()),
            key: Some("/nonexistent/k.pem".into()),
            ..TlsSection::default()
        };
        let e = server_config(&missing, Path::new("/nonexistent")).expect_err("missing files");
        assert!(e.to_string().contains("/nonexistent/c.pem"), "{e}");
    }
}
