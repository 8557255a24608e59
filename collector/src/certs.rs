//! The development certificate authority: what makes the README's first
//! command give a working TLS endpoint, and what issues device certificates
//! for mutual TLS.
//!
//! On a start without configured certificates, the collector creates (once) a
//! CA and a server certificate signed by it in its data directory;
//! `weir-collector certs issue-device NAME` signs a client certificate whose
//! common name is the device's identity. Keys are ECDSA P-256 (rcgen, ring).
//!
//! ```text
//! <data-dir>/tls/
//!   ca.pem                 the development CA certificate: give it to clients
//!   ca.key                 its private key (mode 0600)
//!   server.pem, server.key the listener's certificate (SANs: localhost,
//!                          127.0.0.1, ::1, the host name, `tls.server_names`)
//!   devices/<name>.pem     device client certificates (CN = name) ...
//!   devices/<name>.key     ... and their keys (mode 0600)
//! ```
//!
//! Files are written atomically (temp file, fsync, rename), keys readable by
//! the owner only. A CA that exists is never replaced: devices trust it. The
//! server certificate is issued again when it is missing, expires within
//! [`RENEW_BEFORE_DAYS`] or lacks one of the names asked for.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// Subdirectory of the data directory holding the development CA.
pub const TLS_DIR: &str = "tls";
/// Subdirectory of [`TLS_DIR`] holding issued device certificates.
pub const DEVICES_DIR: &str = "devices";
/// Validity of the development CA.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// Validity of the development server certificate.
pub const SERVER_VALIDITY_DAYS: i64 = 397;
/// A server certificate expiring sooner than this is issued again at start.
pub const RENEW_BEFORE_DAYS: i64 = 30;
/// Default validity of a device certificate.
pub const DEFAULT_DEVICE_VALIDITY_DAYS: u32 = 365;
/// Longest device name (it becomes a client id and a file name).
pub const MAX_DEVICE_NAME_CHARS: usize = 64;
/// Common name of the development CA.
const CA_COMMON_NAME: &str = "Weir development CA";

/// Why certificates could not be created, read or issued.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Generating, signing or parsing with rcgen failed.
    #[error("{what}: {source}")]
    Rcgen {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// A certificate file does not hold a certificate we can read.
    #[error("{path}: {message}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Half of the CA exists (certificate without key or the reverse); it is
    /// not replaced, since devices may trust it.
    #[error(
        "{present} exists but {missing} does not: restore it, or remove both to create a new development CA"
    )]
    IncompleteCa {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// No development CA to sign with.
    #[error(
        "no development CA in {dir}: start the collector once without configured certificates to create it"
    )]
    NoCa {
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// The device name cannot be used.
    #[error(
        "invalid device name {0:?}: 1 to {MAX_DEVICE_NAME_CHARS} characters of a-z, A-Z, 0-9, '_', '.', '-'"
    )]
    InvalidName(String),
    /// A certificate for this device already exists.
    #[error("{0} exists already: remove it first to issue a new certificate for this device")]
    Exists(PathBuf),
}

fn rcgen_error(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CertError {
    let what = what.into();
    move |source| CertError::Rcgen { what, source }
}

/// The development TLS files of a data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevTls {
    /// The directory holding them.
    pub dir: PathBuf,
    /// The CA certificate (PEM): what clients trust.
    pub ca_cert: PathBuf,
    /// The server certificate (PEM).
    pub server_cert: PathBuf,
    /// The server key (PEM, PKCS#8).
    pub server_key: PathBuf,
    /// Files this call created (empty when everything existed).
    pub created: Vec<PathBuf>,
}

/// A device certificate just issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCert {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// The CA certificate the device must trust to verify the collector.
    pub ca_cert: PathBuf,
}

/// Where the development CA of `data_dir` lives.
pub fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(TLS_DIR)
}

/// Makes sure the development CA and a current server certificate covering
/// `server_names` (plus localhost, the loopback addresses and the host name)
/// exist under `data_dir`, creating what is missing.
///
/// # Errors
/// File errors, a half-present CA ([`CertError::IncompleteCa`]), unreadable
/// existing files, or a name rcgen cannot put in a certificate.
pub fn ensure_dev_tls(data_dir: &Path, server_names: &[String]) -> Result<DevTls, CertError> {
    let dir = tls_dir(data_dir);
    create_dir(&dir)?;
    let ca_cert = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    let server_cert = dir.join("server.pem");
    let server_key = dir.join("server.key");
    let mut created = Vec::new();

    let (issuer, new_ca) = match (ca_cert.exists(), ca_key.exists()) {
        (true, true) => (load_issuer(&ca_cert, &ca_key)?, false),
        (false, false) => {
            let key = KeyPair::generate().map_err(rcgen_error("generating the CA key"))?;
            let params = ca_params();
            let cert = params.self_signed(&key).map_err(rcgen_error("signing the CA"))?;
            write_file(&ca_key, key.serialize_pem().as_bytes(), true)?;
            write_file(&ca_cert, cert.pem().as_bytes(), false)?;
            created.extend([ca_cert.clone(), ca_key.clone()]);
            (Issuer::new(params, key), true)
        }
        (true, false) => {
            return Err(CertError::IncompleteCa { present: ca_cert, missing: ca_key });
        }
        (false, true) => {
            return Err(CertError::IncompleteCa { present: ca_key, missing: ca_cert });
        }
    };

    let names = server_names_with_defaults(server_names);
    let current = !new_ca
        && server_key.exists()
        && server_cert_is_current(&server_cert, &names, RENEW_BEFORE_DAYS)?;
    if !current {
        let key = KeyPair::generate().map_err(rcgen_error("generating the server key"))?;
        let mut params = CertificateParams::new(names.clone())
            .map_err(rcgen_error(format!("server names {names:?}")))?;
        params.distinguished_name = common_name("Weir collector");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, SERVER_VALIDITY_DAYS);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(rcgen_error("signing the server certificate"))?;
        write_file(&server_key, key.serialize_pem().as_bytes(), true)?;
        write_file(&server_cert, cert.pem().as_bytes(), false)?;
        created.extend([server_cert.clone(), server_key.clone()]);
    }
    Ok(DevTls { dir, ca_cert, server_cert, server_key, created })
}

/// Issues a client certificate for device `name` (its common name, and so its
/// MQTT identity), signed by the development CA of `data_dir`, valid for
/// `days`. Writes `<name>.pem` and `<name>.key` into `out_dir` (default
/// `<data-dir>/tls/devices`).
///
/// # Errors
/// [`CertError::InvalidName`], [`CertError::NoCa`], [`CertError::Exists`] if
/// the device already has a certificate there, or file and signing errors.
pub fn issue_device_cert(
    data_dir: &Path,
    name: &str,
    days: u32,
    out_dir: Option<&Path>,
) -> Result<DeviceCert, CertError> {
    validate_device_name(name)?;
    let dir = tls_dir(data_dir);
    let ca_cert = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    if !ca_cert.exists() || !ca_key.exists() {
        return Err(CertError::NoCa { dir });
    }
    let issuer = load_issuer(&ca_cert, &ca_key)?;
    let out = out_dir.map_or_else(|| dir.join(DEVICES_DIR), Path::to_path_buf);
    create_dir(&out)?;
    let cert_path = out.join(format!("{name}.pem"));
    let key_path = out.join(format!("{name}.key"));
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(CertError::Exists(p.clone()));
        }
    }
    let key = KeyPair::generate().map_err(rcgen_error("generating the device key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, i64::from(days.max(1)));
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(rcgen_error(format!("signing the certificate of {name:?}")))?;
    write_file(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_file(&cert_path, cert.pem().as_bytes(), false)?;
    Ok(DeviceCert { cert: cert_path, key: key_path, ca_cert })
}

/// Checks a device name: 1 to 64 characters of `a-z A-Z 0-9 _ . -`, not
/// starting with a dot.
///
/// # Errors
/// [`CertError::InvalidName`].
pub fn validate_device_name(name: &str) -> Result<(), CertError> {
    let ok = (1..=MAX_DEVICE_NAME_CHARS).contains(&name.len())
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok { Ok(()) } else { Err(CertError::InvalidName(name.to_owned())) }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_VALIDITY_DAYS);
    params
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // An hour of slack for clocks that are slightly behind ours.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

fn load_issuer(cert: &Path, key: &Path) -> Result<Issuer<'static, KeyPair>, CertError> {
    let key_pem = read_text(key)?;
    let key_pair = KeyPair::from_pem(&key_pem)
        .map_err(rcgen_error(format!("reading the CA key {}", key.display())))?;
    let cert_pem = read_text(cert)?;
    Issuer::from_ca_cert_pem(&cert_pem, key_pair)
        .map_err(rcgen_error(format!("reading the CA certificate {}", cert.display())))
}

/// localhost, the loopback addresses, the host name and the configured names,
/// without duplicates.
fn server_names_with_defaults(extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if let Ok(host) = fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty()
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
        {
            names.push(host.to_owned());
        }
    }
    for n in extra {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names
}

/// Whether the server certificate at `path` is valid for `days` more days and
/// names every one of `names`.
fn server_cert_is_current(path: &Path, names: &[String], days: i64) -> Result<bool, CertError> {
    if !path.exists() {
        return Ok(false);
    }
    let pem = read_text(path)?;
    let unreadable = |message: String| CertError::Unreadable { path: path.to_path_buf(), message };
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| unreadable(format!("not a PEM certificate: {e}")))?;
    let cert =
        pem.parse_x509().map_err(|e| unreadable(format!("not an X.509 certificate: {e}")))?;
    let not_after = cert.validity().not_after.timestamp();
    if not_after < (OffsetDateTime::now_utc() + Duration::days(days)).unix_timestamp() {
        return Ok(false);
    }
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => dns.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*bytes).unwrap_or_default())),
                    16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*bytes).unwrap_or_default())),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(names.iter().all(|n| match n.parse::<IpAddr>() {
        Ok(ip) => ips.contains(&ip),
        Err(_) => dns.iter().any(|d| d.eq_ignore_ascii_case(n)),
    }))
}

fn read_text(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| CertError::Io {
        op: "reading",
        path: path.to_path_buf(),
        source,
    })
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    fs::create_dir_all(dir).map_err(|source| CertError::Io {
        op: "creating directory",
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to `path` atomically: temp file (mode 0600 for keys),
/// fsync, rename, fsync of the directory.
fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), CertError> {
    let io = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| CertError::Io { op, path: p, source }
    };
    let tmp = path.with_extension("tmp");
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(if private { 0o600 } else { 0o644 });
    let mut file = options.open(&tmp).map_err(io("creating", &tmp))?;
    file.write_all(bytes).map_err(io("writing", &tmp))?;
    file.sync_all().map_err(io("syncing", &tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io("renaming to", path))?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io("syncing directory", dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_the_ca_once_and_reuses_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let first = ensure_dev_tls(tmp.path(), &["collector.example".into()]).expect("create");
        assert_eq!(first.created.len(), 4, "{first:?}");
        let ca = fs::read(&first.ca_cert).expect("ca");
        let again = ensure_dev_tls(tmp.path(), &["collector.example".into()]).expect("reuse");
        assert!(again.created.is_empty(), "{again:?}");
        // A new name reissues the server certificate, never the CA.
        let renamed = ensure_dev_tls(tmp.path(), &["other.example".into()]).expect("rename");
        assert_eq!(renamed.created, vec![renamed.server_cert.clone(), renamed.server_key.clone()]);
        assert_eq!(fs::read(&renamed.ca_cert).expect("ca"), ca);
        let mode = fs::metadata(&renamed.server_key).expect("key").permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
    }

    #[test]
    fn half_a_ca_is_refused_not_replaced() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let tls = ensure_dev_tls(tmp.path(), &[]).expect("create");
        fs::remove_file(tls.dir.join("ca.key")).expect("remove");
        let e = ensure_dev_tls(tmp.path(), &[]).expect_err("incomplete");
        assert!(matches!(e, CertError::IncompleteCa { .. }), "{e}");
    }

    #[test]
    fn device_certificates_need_a_ca_and_a_valid_unused_name() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            issue_device_cert(tmp.path(), "dev-1", 30, None),
            Err(CertError::NoCa { .. })
        ));
        ensure_dev_tls(tmp.path(), &[]).expect("create");
        let dev = issue_device_cert(tmp.path(), "dev-1", 30, None).expect("issue");
        assert!(dev.cert.ends_with("tls/devices/dev-1.pem"), "{dev:?}");
        assert!(matches!(
            issue_device_cert(tmp.path(), "dev-1", 30, None),
            Err(CertError::Exists(_))
        ));
        for bad in ["", "../x", "a b", ".hidden", &"x".repeat(65)] {
            assert!(
                matches!(
                    issue_device_cert(tmp.path(), bad, 30, None),
                    Err(CertError::InvalidName(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn default_names_cover_loopback() {
        let names = server_names_with_defaults(&["a.example".into(), "localhost".into()]);
        assert_eq!(&names[..3], ["localhost", "127.0.0.1", "::1"]);
        assert_eq!(names.iter().filter(|n| *n == "localhost").count(), 1);
        assert!(names.contains(&"a.example".to_owned()));
        CertificateParams::new(names).expect("every default name fits a certificate");
    }
}
