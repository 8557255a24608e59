//! How the collector reaches its JetStream cluster: servers, credentials,
//! TLS, replicas and the name prefix, checked before anything is created, and
//! the connection itself, whose failures name the setting to fix.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::{ConnectOptions, ServerAddr};

/// How long connecting to the servers may take before start-up fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one JetStream API request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest name prefix.
pub const MAX_PREFIX_CHARS: usize = 32;

/// The `[store]` settings of the JetStream backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamSettings {
    /// `nats://host:port` (or `tls://`) URLs of one or more servers.
    pub servers: Vec<String>,
    /// A `.creds` file (JWT and NKey seed).
    pub credentials_file: Option<PathBuf>,
    /// User name, with `password`.
    pub user: Option<String>,
    /// Password, with `user`.
    pub password: Option<String>,
    /// A PEM file of CA certificates; set, the connection must use TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// Replicas of every JetStream stream and bucket the store creates (1, 3
    /// or 5).
    pub replicas: usize,
    /// Prefix of every stream, subject and bucket name (`[A-Za-z0-9_-]`).
    pub prefix: String,
}

impl Default for JetStreamSettings {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            credentials_file: None,
            user: None,
            password: None,
            tls_ca_file: None,
            replicas: 1,
            prefix: "weir".into(),
        }
    }
}

/// A setting that is wrong, or a cluster that cannot be used with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("store.{setting}: {message}")]
pub struct SettingsError {
    /// The `[store]` key to fix (`servers`, `replicas`, ...).
    pub setting: &'static str,
    /// What is wrong.
    pub message: String,
}

fn bad(setting: &'static str, message: impl Into<String>) -> SettingsError {
    SettingsError { setting, message: message.into() }
}

impl JetStreamSettings {
    /// Settings for `--store nats://HOST:PORT[,HOST:PORT...]`.
    ///
    /// # Errors
    /// The list is empty or an address does not parse.
    pub fn from_url(url: &str) -> Result<Self, SettingsError> {
        let servers = url.split(',').map(str::trim).map(str::to_owned).collect();
        let s = Self { servers, ..Self::default() };
        s.server_addrs()?;
        Ok(s)
    }

    /// Checks every setting that can be checked without a server.
    ///
    /// # Errors
    /// The first wrong setting.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.server_addrs()?;
        if ![1, 3, 5].contains(&self.replicas) {
            return Err(bad("replicas", format!("{} is not 1, 3 or 5", self.replicas)));
        }
        let prefix_ok = !self.prefix.is_empty()
            && self.prefix.len() <= MAX_PREFIX_CHARS
            && self.prefix.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
        if !prefix_ok {
            return Err(bad(
                "prefix",
                format!(
                    "{:?} must be 1 to {MAX_PREFIX_CHARS} characters of A-Z, a-z, 0-9, '_', '-'",
                    self.prefix
                ),
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(bad("user", "user and password go together"));
        }
        if self.user.is_some() && self.credentials_file.is_some() {
            return Err(bad(
                "credentials_file",
                "give a credentials file or user/password, not both",
            ));
        }
        for (setting, path) in
            [("credentials_file", &self.credentials_file), ("tls_ca_file", &self.tls_ca_file)]
        {
            if let Some(p) = path
                && !p.is_file()
            {
                return Err(bad(setting, format!("{} is not a readable file", p.display())));
            }
        }
        Ok(())
    }

    fn server_addrs(&self) -> Result<Vec<ServerAddr>, SettingsError> {
        if self.servers.is_empty() || self.servers.iter().any(String::is_empty) {
            return Err(bad("servers", "give at least one nats://HOST:PORT"));
        }
        self.servers
            .iter()
            .map(|s| {
                s.parse::<ServerAddr>()
                    .map_err(|e| bad("servers", format!("{s:?} is not a server address: {e}")))
            })
            .collect()
    }

    /// Connects to the servers, failing within [`CONNECT_TIMEOUT`] rather
    /// than retrying forever.
    ///
    /// # Errors
    /// Unreachable servers, refused credentials, a TLS failure: each naming
    /// its setting.
    pub async fn connect(&self) -> Result<async_nats::Client, SettingsError> {
        self.validate()?;
        let addrs = self.server_addrs()?;
        let mut options = ConnectOptions::new()
            .name("weir-collector")
            .connection_timeout(CONNECT_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT));
        if let (Some(u), Some(p)) = (&self.user, &self.password) {
            options = options.user_and_password(u.clone(), p.clone());
        }
        if let Some(path) = &self.credentials_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| bad("credentials_file", format!("{}: {e}", path.display())))?;
        }
        if let Some(ca) = &self.tls_ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        let connecting = options.connect(addrs.as_slice());
        let client = match tokio::time::timeout(CONNECT_TIMEOUT * 2, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(connect_error(self, &e)),
            Err(_) => {
                return Err(bad(
                    "servers",
                    format!("no answer from {} within {CONNECT_TIMEOUT:?}", self.servers.join(",")),
                ));
            }
        };
        Ok(client)
    }
}

fn connect_error(s: &JetStreamSettings, e: &async_nats::ConnectError) -> SettingsError {
    use async_nats::ConnectErrorKind as K;
    let servers = s.servers.join(",");
    match e.kind() {
        K::AuthorizationViolation | K::Authentication => {
            let setting = if s.credentials_file.is_some() { "credentials_file" } else { "user" };
            bad(setting, format!("{servers} refused the credentials: {e}"))
        }
        K::Tls => bad("tls_ca_file", format!("TLS with {servers} failed: {e}")),
        // async-nats reports a certificate the CA did not sign as an I/O
        // error of the handshake.
        _ if s.tls_ca_file.is_some() && e.to_string().contains("certificate") => {
            bad("tls_ca_file", format!("TLS with {servers} failed: {e}"))
        }
        _ => bad("servers", format!("cannot connect to {servers}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_name_the_setting() {
        let ok = JetStreamSettings::from_url("nats://127.0.0.1:4222,nats://127.0.0.1:4223")
            .expect("two servers");
        assert_eq!(ok.servers.len(), 2);
        assert_eq!(ok.validate(), Ok(()));
        let e = |f: fn(&mut JetStreamSettings)| {
            let mut s = ok.clone();
            f(&mut s);
            s.validate().expect_err("refused").setting
        };
        assert_eq!(e(|s| s.replicas = 2), "replicas");
        assert_eq!(e(|s| s.prefix = "a.b".into()), "prefix");
        assert_eq!(e(|s| s.prefix = String::new()), "prefix");
        assert_eq!(e(|s| s.user = Some("u".into())), "user");
        assert_eq!(e(|s| s.tls_ca_file = Some("/nonexistent/ca.pem".into())), "tls_ca_file");
        assert_eq!(e(|s| s.servers.clear()), "servers");
        assert_eq!(JetStreamSettings::from_url("").expect_err("empty").setting, "servers");
    }
}
