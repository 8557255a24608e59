//! The agent's configuration: a TOML file (`--config`, default
//! `/etc/weir/agent.toml`) parsed into [`ConfigFile`] (what is written) and
//! checked into [`Config`] (what the agent runs with).
//!
//! ```toml
//! device_id = "gw-17"                 # default: /etc/machine-id, else the host name
//!
//! [collector]
//! address = "mqtts://collector.example:8883"   # or mqtt://host:1883 (plain, development)
//! client_id = "gw-17"                 # default: the device id
//! keepalive_secs = 30
//! inflight = 16                       # batches sent and not yet acknowledged
//! reconnect_min_ms = 500              # backoff: doubles per failure, with jitter ...
//! reconnect_max_ms = 30000            # ... up to this
//! # username = "gw-17"                # instead of a client certificate
//! # password = "..."
//!
//! [collector.tls]
//! ca_file = "/etc/weir/ca.pem"        # the CA that signed the collector's certificate
//! cert_file = "/etc/weir/gw-17.pem"   # mutual TLS (optional): the device certificate ...
//! key_file = "/etc/weir/gw-17.key"    # ... and its key
//! # server_name = "collector.example" # default: the host in `address`
//!
//! [spool]
//! dir = "/var/lib/weir-agent/spool"
//! max_bytes = 268435456               # 256 MiB on disk at most
//! when_full = "drop_oldest"           # or "block" (stop reading inputs)
//!
//! [batch]
//! max_records = 500
//! max_bytes = 524288
//! linger_ms = 200
//!
//! [status]
//! file = "/var/lib/weir-agent/spool/status.json"   # default: in the spool directory
//!
//! [[inputs]]
//! kind = "file"
//! name = "app"                        # default: the paths; keep it stable (checkpoints)
//! paths = ["/var/log/app/*.log"]
//! start_at = "beginning"              # or "end": files found at the first start
//! max_line_bytes = 16384              # longer lines are split (and counted)
//! partial_flush_ms = 5000             # a last line without newline, once idle this long
//! rotate_wait_ms = 5000               # a rotated file is let go once idle this long
//! rescan_ms = 1000                    # globs listed again for new files
//! poll_ms = 250                       # files checked for growth when idle
//! multiline_start = '^\d{4}-\d{2}-\d{2}'   # optional: a record starts at such a line
//! multiline_max_bytes = 65536
//! multiline_timeout_ms = 1000
//! stream = "logs"
//! partition_key = "{device_id}/{file}"
//!
//! [[inputs]]
//! kind = "metrics"
//! interval_ms = 10000
//! stream = "metrics"
//! partition_key = "{device_id}"      # {metric} also works
//!
//! # [[inputs]] kind = "serial" is reserved for the firmware issue.
//! ```
//!
//! Unknown keys are errors; every error names the file and the key (and the
//! line, for errors the TOML parser finds), so a typo never silently falls
//! back to a default. Relative paths are taken from the current directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use weir_wire::{MAX_BATCH_BYTES, MAX_BATCH_RECORDS, MAX_DATA_BYTES};

use crate::spool::{FullPolicy, SpoolConfig};
use crate::tail::{StartAt, TailConfig};
use crate::template::{KeyTemplate, Placeholders};

/// Where the agent looks for its configuration by default.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/weir/agent.toml";
/// Default spool directory.
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/weir-agent/spool";
/// Name of the status file in the spool directory, when not configured.
pub const STATUS_FILE_NAME: &str = "status.json";
/// Name of the human-readable checkpoint file in the spool directory.
pub const CHECKPOINT_FILE_NAME: &str = "checkpoints.json";
/// Longest device id (it becomes a client id and part of partition keys).
pub const MAX_DEVICE_ID_CHARS: usize = 64;
/// Longest stream name (Kinesis's limit).
pub const MAX_STREAM_NAME_CHARS: usize = 128;
/// Smallest spool: a few batches must fit.
pub const MIN_SPOOL_BYTES: u64 = 1024 * 1024;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a key of the wrong type or name.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// The parser's message, naming the key.
        message: String,
    },
    /// A value is missing or out of its range.
    #[error("{origin}: `{key}`: {message}")]
    Invalid {
        /// The file.
        origin: String,
        /// The key, dotted (`inputs[1].paths`).
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The file as written; every key has a default except those [`validate`]
/// requires.
///
/// [`validate`]: ConfigFile::validate
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigFile {
    /// The device id; default `/etc/machine-id`, else the host name.
    pub device_id: Option<String>,
    /// Where and how to ship.
    pub collector: CollectorSection,
    /// The on-disk spool.
    pub spool: SpoolSection,
    /// Batching.
    pub batch: BatchSection,
    /// The status file.
    pub status: StatusSection,
    /// The inputs.
    pub inputs: Vec<InputSection>,
}

/// `[collector]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorSection {
    /// `mqtts://host[:port]` or `mqtt://host[:port]`.
    pub address: Option<String>,
    /// MQTT client id; default the device id.
    pub client_id: Option<String>,
    /// MQTT keep-alive, seconds.
    pub keepalive_secs: u64,
    /// Batches in flight.
    pub inflight: u32,
    /// First reconnect delay, milliseconds.
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay, milliseconds.
    pub reconnect_max_ms: u64,
    /// User name (with `password`), instead of a client certificate.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// TLS files.
    pub tls: TlsSection,
}

impl Default for CollectorSection {
    fn default() -> Self {
        Self {
            address: None,
            client_id: None,
            keepalive_secs: 30,
            inflight: 16,
            reconnect_min_ms: 500,
            reconnect_max_ms: 30_000,
            username: None,
            password: None,
            tls: TlsSection::default(),
        }
    }
}

/// `[collector.tls]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// CA certificates (PEM) that sign the collector's certificate.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
    /// Name the collector's certificate must carry; default the host.
    pub server_name: Option<String>,
}

/// `[spool]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolSection {
    /// Directory.
    pub dir: PathBuf,
    /// Most bytes on disk.
    pub max_bytes: u64,
    /// `drop_oldest` or `block`.
    pub when_full: FullPolicy,
}

impl Default for SpoolSection {
    fn default() -> Self {
        Self {
            dir: PathBuf::from(DEFAULT_SPOOL_DIR),
            max_bytes: 256 * 1024 * 1024,
            when_full: FullPolicy::DropOldest,
        }
    }
}

/// `[batch]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchSection {
    /// Most records per batch (1 to 500).
    pub max_records: u32,
    /// Most bytes per encoded batch.
    pub max_bytes: u64,
    /// How long a batch may wait for more records, milliseconds.
    pub linger_ms: u64,
}

impl Default for BatchSection {
    fn default() -> Self {
        Self { max_records: 500, max_bytes: 512 * 1024, linger_ms: 200 }
    }
}

/// `[status]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatusSection {
    /// The status file; default `status.json` in the spool directory.
    pub file: Option<PathBuf>,
}

/// One `[[inputs]]` entry as written: the keys of every kind, checked
/// against its `kind` by [`ConfigFile::validate`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InputSection {
    /// `file`, `metrics` (or `serial`, not supported yet).
    pub kind: Option<String>,
    /// Name (identifies a file input's checkpoints).
    pub name: Option<String>,
    /// Target stream.
    pub stream: Option<String>,
    /// Partition key template.
    pub partition_key: Option<String>,
    /// file: glob patterns.
    pub paths: Option<Vec<String>>,
    /// file: where files found at the first start begin.
    pub start_at: Option<StartAt>,
    /// file: longest line.
    pub max_line_bytes: Option<u64>,
    /// file: idle time before a last line without newline is shipped.
    pub partial_flush_ms: Option<u64>,
    /// file: idle time before a rotated file is let go.
    pub rotate_wait_ms: Option<u64>,
    /// file: how often globs are listed again.
    pub rescan_ms: Option<u64>,
    /// file: how often files are checked for growth when idle.
    pub poll_ms: Option<u64>,
    /// file: regex matching the first line of a multi-line record.
    pub multiline_start: Option<String>,
    /// file: largest multi-line record.
    pub multiline_max_bytes: Option<u64>,
    /// file: a multi-line record is complete after this much idleness.
    pub multiline_timeout_ms: Option<u64>,
    /// metrics: sampling interval.
    pub interval_ms: Option<u64>,
    /// serial: the device (reserved).
    pub device: Option<String>,
    /// serial: baud rate (reserved).
    pub baud: Option<u32>,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub origin: String,
    /// The device id.
    pub device_id: String,
    /// Shipping.
    pub collector: CollectorConfig,
    /// Spool directory.
    pub spool_dir: PathBuf,
    /// Spool bound and policy.
    pub spool: SpoolConfig,
    /// Batching.
    pub batch: BatchConfig,
    /// Status file.
    pub status_file: PathBuf,
    /// Human-readable checkpoint file.
    pub checkpoint_file: PathBuf,
    /// Inputs, in file order.
    pub inputs: Vec<Input>,
}

/// Plain MQTT or MQTT over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `mqtt://` (development only).
    Plain,
    /// `mqtts://`.
    Tls,
}

/// The checked `[collector]`.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// The address as written.
    pub address: String,
    /// Plain or TLS.
    pub scheme: Scheme,
    /// Host name or IP.
    pub host: String,
    /// Port.
    pub port: u16,
    /// MQTT client id.
    pub client_id: String,
    /// Keep-alive.
    pub keepalive: Duration,
    /// Batches in flight.
    pub inflight: usize,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// User name and password.
    pub login: Option<(String, String)>,
    /// TLS files (for `mqtts`).
    pub tls: Option<TlsFiles>,
}

/// TLS files of the collector connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates.
    pub ca_file: PathBuf,
    /// Client certificate and key, for mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name to verify the collector's certificate against.
    pub server_name: String,
}

/// The checked `[batch]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most records per batch.
    pub max_records: usize,
    /// Most bytes per encoded batch envelope.
    pub max_bytes: usize,
    /// Longest wait for more records.
    pub linger: Duration,
}

/// One checked input.
#[derive(Debug, Clone)]
pub struct Input {
    /// Its name.
    pub name: String,
    /// Target stream.
    pub stream: String,
    /// Partition key template.
    pub key: KeyTemplate,
    /// What it reads.
    pub kind: InputKind,
}

/// What an input reads.
#[derive(Debug, Clone)]
pub enum InputKind {
    /// Log files.
    File(FileInput),
    /// Host metrics.
    Metrics(MetricsInput),
}

/// A file input.
#[derive(Debug, Clone)]
pub struct FileInput {
    /// The tailer's settings.
    pub tail: TailConfig,
    /// How often files are checked for growth when nothing was read.
    pub poll: Duration,
    /// Multi-line grouping.
    pub multiline: Option<Multiline>,
}

/// Multi-line grouping settings.
#[derive(Debug, Clone)]
pub struct Multiline {
    /// A line matching this starts a record.
    pub start: regex::bytes::Regex,
    /// Largest grouped record; more is cut into another record.
    pub max_bytes: usize,
    /// A group is complete once its file gave no line for this long.
    pub timeout: Duration,
}

/// A metrics input.
#[derive(Debug, Clone, Copy)]
pub struct MetricsInput {
    /// Sampling interval.
    pub interval: Duration,
}

impl Config {
    /// Reads and checks a configuration file.
    ///
    /// # Errors
    /// The file cannot be read, does not parse, has an unknown key, or a value
    /// is missing or out of range; the error names the file and the key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and checks TOML text as if read from `path`.
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| {
                text.get(..s.start).map_or(0, |before| before.matches('\n').count() + 1)
            });
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                message: e.message().trim().to_owned(),
            }
        })?;
        file.validate(&path.display().to_string())
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// The device id this machine has when none is configured: `/etc/machine-id`,
/// else the host name.
pub fn default_device_id() -> Option<String> {
    let from = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty() && valid_device_id(s))
    };
    from("/etc/machine-id").or_else(|| from("/proc/sys/kernel/hostname"))
}

fn valid_device_id(id: &str) -> bool {
    (1..=MAX_DEVICE_ID_CHARS).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':'))
}

/// Checks a stream name: 1 to 128 of `a-z A-Z 0-9 _ . -` (Kinesis's rule).
pub fn valid_stream_name(name: &str) -> bool {
    (1..=MAX_STREAM_NAME_CHARS).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Splits `mqtts://host:port` into its parts.
fn parse_address(address: &str) -> Result<(Scheme, String, u16), String> {
    let (scheme, rest) = if let Some(rest) = address.strip_prefix("mqtts://") {
        (Scheme::Tls, rest)
    } else if let Some(rest) = address.strip_prefix("mqtt://") {
        (Scheme::Plain, rest)
    } else {
        return Err(format!(
            "{address:?} is not an address like \"mqtts://collector.example:8883\" (or mqtt:// for plain MQTT)"
        ));
    };
    let default_port = match scheme {
        Scheme::Tls => 8883,
        Scheme::Plain => 1883,
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) =
            v6.split_once(']').ok_or_else(|| format!("{address:?}: `[` without `]`"))?;
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => return Err(format!("{address:?}: unexpected {after:?} after the host")),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', '?', '#', ' ']) {
        return Err(format!("{address:?}: the host is missing or not a host name"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{address:?}: {p:?} is not a port (1 to 65535)"))?,
    };
    Ok((scheme, host.to_owned(), port))
}

/// Keys of each input kind, for "only for kind" messages.
const FILE_KEYS: &[&str] = &[
    "paths",
    "start_at",
    "max_line_bytes",
    "partial_flush_ms",
    "rotate_wait_ms",
    "rescan_ms",
    "poll_ms",
    "multiline_start",
    "multiline_max_bytes",
    "multiline_timeout_ms",
];
const METRICS_KEYS: &[&str] = &["interval_ms"];
const SERIAL_KEYS: &[&str] = &["device", "baud"];

impl InputSection {
    /// Names of the kind-specific keys that are set.
    fn set_keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let mut add = |set: bool, k: &'static str| {
            if set {
                keys.push(k);
            }
        };
        add(self.paths.is_some(), "paths");
        add(self.start_at.is_some(), "start_at");
        add(self.max_line_bytes.is_some(), "max_line_bytes");
        add(self.partial_flush_ms.is_some(), "partial_flush_ms");
        add(self.rotate_wait_ms.is_some(), "rotate_wait_ms");
        add(self.rescan_ms.is_some(), "rescan_ms");
        add(self.poll_ms.is_some(), "poll_ms");
        add(self.multiline_start.is_some(), "multiline_start");
        add(self.multiline_max_bytes.is_some(), "multiline_max_bytes");
        add(self.multiline_timeout_ms.is_some(), "multiline_timeout_ms");
        add(self.interval_ms.is_some(), "interval_ms");
        add(self.device.is_some(), "device");
        add(self.baud.is_some(), "baud");
        keys
    }
}

/// Checks that `value` is in `range`, naming `key` otherwise.
fn in_range(
    key: &str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, (String, String)> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err((key.to_owned(), format!("{value} is outside {}..={}", range.start(), range.end())))
    }
}

impl ConfigFile {
    /// Checks every value and builds the [`Config`]; `origin` names the file
    /// in errors.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad key.
    pub fn validate(&self, origin: &str) -> Result<Config, ConfigError> {
        self.check(origin).map_err(|(key, message)| ConfigError::Invalid {
            origin: origin.to_owned(),
            key,
            message,
        })
    }

    fn check(&self, origin: &str) -> Result<Config, (String, String)> {
        let err = |key: &str, message: String| (key.to_owned(), message);
        let device_id = match &self.device_id {
            Some(id) if valid_device_id(id) => id.clone(),
            Some(id) => {
                return Err(err(
                    "device_id",
                    format!("{id:?} is not 1 to {MAX_DEVICE_ID_CHARS} of a-z A-Z 0-9 _ . - :"),
                ));
            }
            None => default_device_id().ok_or_else(|| {
                err(
                    "device_id",
                    "not set, and neither /etc/machine-id nor the host name gives one".into(),
                )
            })?,
        };

        let c = &self.collector;
        let address = c.address.clone().ok_or_else(|| {
            err("collector.address", "missing (e.g. \"mqtts://collector.example:8883\")".into())
        })?;
        let (scheme, host, port) =
            parse_address(&address).map_err(|m| err("collector.address", m))?;
        let client_id = c.client_id.clone().unwrap_or_else(|| device_id.clone());
        if client_id.is_empty() || client_id.len() > 128 {
            return Err(err("collector.client_id", "must be 1 to 128 bytes".into()));
        }
        let keepalive = in_range("collector.keepalive_secs", c.keepalive_secs, 5..=3600)?;
        let inflight = in_range("collector.inflight", u64::from(c.inflight), 1..=256)?;
        let reconnect_min =
            in_range("collector.reconnect_min_ms", c.reconnect_min_ms, 1..=600_000)?;
        let reconnect_max =
            in_range("collector.reconnect_max_ms", c.reconnect_max_ms, reconnect_min..=3_600_000)?;
        let login = match (&c.username, &c.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            (Some(_), None) => {
                return Err(err("collector.password", "required with `collector.username`".into()));
            }
            (None, Some(_)) => {
                return Err(err("collector.username", "required with `collector.password`".into()));
            }
            (None, None) => None,
        };
        let t = &c.tls;
        let tls = match scheme {
            Scheme::Tls => {
                let ca_file = t.ca_file.clone().ok_or_else(|| {
                    err(
                        "collector.tls.ca_file",
                        "missing: the CA certificate (PEM) that signed the collector's certificate"
                            .into(),
                    )
                })?;
                let identity = match (&t.cert_file, &t.key_file) {
                    (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
                    (Some(_), None) => {
                        return Err(err(
                            "collector.tls.key_file",
                            "required with `collector.tls.cert_file`".into(),
                        ));
                    }
                    (None, Some(_)) => {
                        return Err(err(
                            "collector.tls.cert_file",
                            "required with `collector.tls.key_file`".into(),
                        ));
                    }
                    (None, None) => None,
                };
                let server_name = t.server_name.clone().unwrap_or_else(|| host.clone());
                if rustls::pki_types::ServerName::try_from(server_name.as_str()).is_err() {
                    return Err(err(
                        "collector.tls.server_name",
                        format!("{server_name:?} is not a DNS name or IP address"),
                    ));
                }
                Some(TlsFiles { ca_file, identity, server_name })
            }
            Scheme::Plain => {
                let set = [
                    ("ca_file", t.ca_file.is_some()),
                    ("cert_file", t.cert_file.is_some()),
                    ("key_file", t.key_file.is_some()),
                    ("server_name", t.server_name.is_some()),
                ];
                if let Some((k, _)) = set.iter().find(|(_, s)| *s) {
                    return Err(err(
                        &format!("collector.tls.{k}"),
                        format!("TLS settings need an mqtts:// address, not {address:?}"),
                    ));
                }
                None
            }
        };
        let collector = CollectorConfig {
            address,
            scheme,
            host,
            port,
            client_id,
            keepalive: Duration::from_secs(keepalive),
            inflight: inflight as usize,
            reconnect_min: ms(reconnect_min),
            reconnect_max: ms(reconnect_max),
            login,
            tls,
        };

        let b = &self.batch;
        let max_records =
            in_range("batch.max_records", u64::from(b.max_records), 1..=MAX_BATCH_RECORDS as u64)?;
        let max_bytes = in_range("batch.max_bytes", b.max_bytes, 1024..=MAX_BATCH_BYTES as u64)?;
        let linger = in_range("batch.linger_ms", b.linger_ms, 0..=60_000)?;
        let batch = BatchConfig {
            max_records: max_records as usize,
            max_bytes: max_bytes as usize,
            linger: ms(linger),
        };

        let s = &self.spool;
        if s.dir.as_os_str().is_empty() {
            return Err(err("spool.dir", "is empty".into()));
        }
        let min_spool = MIN_SPOOL_BYTES.max(4 * max_bytes);
        let spool_bytes = in_range("spool.max_bytes", s.max_bytes, min_spool..=u64::MAX / 2)
            .map_err(|(k, m)| (k, format!("{m} (at least four batches of `batch.max_bytes`)")))?;
        let spool = SpoolConfig::with_max_bytes(spool_bytes, s.when_full);
        let status_file = self.status.file.clone().unwrap_or_else(|| s.dir.join(STATUS_FILE_NAME));

        if self.inputs.is_empty() {
            return Err(err(
                "inputs",
                "no input: add a [[inputs]] table (kind = \"file\" or \"metrics\")".into(),
            ));
        }
        let mut inputs: Vec<Input> = Vec::with_capacity(self.inputs.len());
        for (i, section) in self.inputs.iter().enumerate() {
            let input = check_input(i, section)?;
            if inputs.iter().any(|other| other.name == input.name) {
                return Err(err(
                    &format!("inputs[{i}].name"),
                    format!("{:?} is the name of another input too", input.name),
                ));
            }
            inputs.push(input);
        }
        Ok(Config {
            origin: origin.to_owned(),
            device_id,
            collector,
            spool_dir: s.dir.clone(),
            spool,
            batch,
            status_file,
            checkpoint_file: s.dir.join(CHECKPOINT_FILE_NAME),
            inputs,
        })
    }
}

fn check_input(i: usize, s: &InputSection) -> Result<Input, (String, String)> {
    let key = |k: &str| format!("inputs[{i}].{k}");
    let kind = s
        .kind
        .as_deref()
        .ok_or_else(|| (key("kind"), "missing: \"file\" or \"metrics\"".to_owned()))?;
    let (own, placeholders): (&[&str], _) = match kind {
        "file" => (FILE_KEYS, Placeholders::File),
        "metrics" => (METRICS_KEYS, Placeholders::Metrics),
        "serial" => {
            return Err((
                key("kind"),
                "\"serial\" is not supported yet (reserved for the firmware issue); use \"file\" or \"metrics\""
                    .into(),
            ));
        }
        other => {
            return Err((
                key("kind"),
                format!("unknown input kind {other:?}: \"file\" or \"metrics\""),
            ));
        }
    };
    if let Some(k) = s.set_keys().into_iter().find(|k| !own.contains(k)) {
        let owner = if FILE_KEYS.contains(&k) {
            "file"
        } else if METRICS_KEYS.contains(&k) {
            "metrics"
        } else if SERIAL_KEYS.contains(&k) {
            "serial"
        } else {
            "another"
        };
        return Err((key(k), format!("only for kind = \"{owner}\" inputs, this one is {kind:?}")));
    }
    let stream =
        s.stream.clone().ok_or_else(|| (key("stream"), "missing: the target stream".to_owned()))?;
    if !valid_stream_name(&stream) {
        return Err((
            key("stream"),
            format!("{stream:?} is not 1 to {MAX_STREAM_NAME_CHARS} of a-z A-Z 0-9 _ . -"),
        ));
    }
    let default_key = match placeholders {
        Placeholders::File => "{device_id}/{file}",
        Placeholders::Metrics => "{device_id}",
    };
    let template =
        KeyTemplate::parse(s.partition_key.as_deref().unwrap_or(default_key), placeholders)
            .map_err(|m| (key("partition_key"), m))?;
    let (name, kind) = match kind {
        "file" => {
            let paths = s.paths.clone().unwrap_or_default();
            if paths.is_empty() {
                return Err((key("paths"), "missing: glob patterns of the files to follow".into()));
            }
            for p in &paths {
                if let Err(e) = glob::Pattern::new(p) {
                    return Err((key("paths"), format!("bad glob pattern {p:?}: {e}")));
                }
                if !Path::new(p).is_absolute() && p.starts_with('~') {
                    return Err((
                        key("paths"),
                        format!("{p:?}: `~` is not expanded; write the full path"),
                    ));
                }
            }
            let max_line = in_range(
                &key("max_line_bytes"),
                s.max_line_bytes.unwrap_or(16 * 1024),
                16..=MAX_DATA_BYTES as u64,
            )?;
            let partial = in_range(
                &key("partial_flush_ms"),
                s.partial_flush_ms.unwrap_or(5000),
                0..=86_400_000,
            )?;
            let rotate =
                in_range(&key("rotate_wait_ms"), s.rotate_wait_ms.unwrap_or(5000), 0..=86_400_000)?;
            let rescan = in_range(&key("rescan_ms"), s.rescan_ms.unwrap_or(1000), 10..=3_600_000)?;
            let poll = in_range(&key("poll_ms"), s.poll_ms.unwrap_or(250), 1..=60_000)?;
            let multiline = match &s.multiline_start {
                None => {
                    for k in ["multiline_max_bytes", "multiline_timeout_ms"] {
                        if s.set_keys().contains(&k) {
                            return Err((key(k), "needs `multiline_start`".into()));
                        }
                    }
                    None
                }
                Some(pattern) => {
                    let start = regex::bytes::Regex::new(pattern).map_err(|e| {
                        (key("multiline_start"), format!("bad regular expression: {e}"))
                    })?;
                    let max_bytes = in_range(
                        &key("multiline_max_bytes"),
                        s.multiline_max_bytes.unwrap_or(64 * 1024),
                        max_line..=MAX_DATA_BYTES as u64,
                    )?;
                    let timeout = in_range(
                        &key("multiline_timeout_ms"),
                        s.multiline_timeout_ms.unwrap_or(1000),
                        0..=3_600_000,
                    )?;
                    Some(Multiline { start, max_bytes: max_bytes as usize, timeout: ms(timeout) })
                }
            };
            let name = s.name.clone().unwrap_or_else(|| paths.join(","));
            let tail = TailConfig {
                globs: paths,
                start_at: s.start_at.unwrap_or_default(),
                max_line_bytes: max_line as usize,
                partial_flush: ms(partial),
                rotate_wait: ms(rotate),
                rescan_every: ms(rescan),
            };
            (name, InputKind::File(FileInput { tail, poll: ms(poll), multiline }))
        }
        _ => {
            let interval =
                in_range(&key("interval_ms"), s.interval_ms.unwrap_or(10_000), 1000..=86_400_000)?;
            let name = s.name.clone().unwrap_or_else(|| "metrics".into());
            (name, InputKind::Metrics(MetricsInput { interval: ms(interval) }))
        }
    };
    if name.is_empty() || name.len() > 256 {
        return Err((key("name"), "must be 1 to 256 bytes".into()));
    }
    Ok(Input { name, stream, key: template, kind })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
device_id = "gw-1"
[collector]
address = "mqtts://collector.example:8883"
[collector.tls]
ca_file = "/etc/weir/ca.pem"
[[inputs]]
kind = "file"
paths = ["/var/log/*.log"]
stream = "logs"
[[inputs]]
kind = "metrics"
stream = "metrics"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("agent.toml"))
    }

    fn bad_key(text: &str) -> String {
        match parse(text).expect_err("invalid") {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("expected an invalid value, got {other}"),
        }
    }

    #[test]
    fn a_small_file_gets_the_defaults() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.device_id, "gw-1");
        assert_eq!(c.collector.client_id, "gw-1");
        assert_eq!((c.collector.host.as_str(), c.collector.port), ("collector.example", 8883));
        let tls = c.collector.tls.expect("tls");
        assert_eq!(tls.server_name, "collector.example");
        assert_eq!(c.batch.max_records, 500);
        assert_eq!(c.spool.policy, FullPolicy::DropOldest);
        assert_eq!(c.status_file, Path::new(DEFAULT_SPOOL_DIR).join(STATUS_FILE_NAME));
        assert_eq!(c.inputs.len(), 2);
        assert_eq!(c.inputs[0].name, "/var/log/*.log");
        assert_eq!(c.inputs[1].name, "metrics");
        let InputKind::File(f) = &c.inputs[0].kind else { panic!("file input") };
        assert_eq!(f.tail.start_at, StartAt::Beginning);
        assert!(f.multiline.is_none());
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address("mqtt://127.0.0.1:1884").expect("ok"),
            (Scheme::Plain, "127.0.0.1".into(), 1884)
        );
        assert_eq!(parse_address("mqtts://[::1]").expect("ok"), (Scheme::Tls, "::1".into(), 8883));
        assert_eq!(parse_address("mqtts://h:9/").expect("ok"), (Scheme::Tls, "h".into(), 9));
        assert!(parse_address("tcp://h:1").is_err());
        assert!(parse_address("mqtts://h:0").is_err());
        assert!(parse_address("mqtts://:8883").is_err());
        assert!(parse_address("mqtts://h:port").is_err());
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse("[collector]\naddres = \"x\"\n").expect_err("typo");
        let text = e.to_string();
        assert!(text.starts_with("agent.toml:2:") && text.contains("addres"), "{text}");
        assert_eq!(bad_key(&GOOD.replace("mqtts://", "tcp://")), "collector.address");
        assert_eq!(
            bad_key(&GOOD.replace("ca_file = \"/etc/weir/ca.pem\"", "")),
            "collector.tls.ca_file"
        );
        assert_eq!(
            bad_key(&GOOD.replace("device_id = \"gw-1\"", "device_id = \"a b\"")),
            "device_id"
        );
        assert_eq!(
            bad_key(&GOOD.replace("stream = \"logs\"", "stream = \"a/b\"")),
            "inputs[0].stream"
        );
        assert_eq!(bad_key(&GOOD.replace("stream = \"logs\"", "")), "inputs[0].stream");
        assert_eq!(
            bad_key(&GOOD.replace("kind = \"metrics\"", "kind = \"serial\"")),
            "inputs[1].kind"
        );
        assert_eq!(
            bad_key(&GOOD.replace("kind = \"metrics\"", "kind = \"gps\"")),
            "inputs[1].kind"
        );
        assert_eq!(
            bad_key(&GOOD.replace("stream = \"metrics\"", "stream = \"m\"\npaths = [\"/x\"]")),
            "inputs[1].paths"
        );
        assert_eq!(
            bad_key(&GOOD.replace("stream = \"logs\"", "stream = \"l\"\nmultiline_start = \"(\"")),
            "inputs[0].multiline_start"
        );
        assert_eq!(
            bad_key(
                &GOOD.replace("stream = \"logs\"", "stream = \"l\"\npartition_key = \"{metric}\"")
            ),
            "inputs[0].partition_key"
        );
        assert_eq!(
            bad_key(&GOOD.replace("paths = [\"/var/log/*.log\"]", "paths = []")),
            "inputs[0].paths"
        );
        assert_eq!(bad_key(&format!("{GOOD}[batch]\nmax_records = 501\n")), "batch.max_records");
        assert_eq!(bad_key(&format!("{GOOD}[spool]\nmax_bytes = 1000\n")), "spool.max_bytes");
        assert_eq!(
            bad_key(
                &GOOD
                    .replace("kind = \"metrics\"", "kind = \"metrics\"\nname = \"/var/log/*.log\"")
            ),
            "inputs[1].name"
        );
        let e =
            parse(&format!("{GOOD}[spool]\nwhen_full = \"sometimes\"\n")).expect_err("bad policy");
        assert!(e.to_string().contains("when_full") || e.to_string().contains("sometimes"), "{e}");
        let e = parse("device_id = \"x\"\n[collector]\naddress = \"mqtt://h\"\n")
            .expect_err("no inputs");
        assert!(e.to_string().contains("`inputs`"), "{e}");
    }

    #[test]
    fn tls_keys_need_an_mqtts_address() {
        let text = GOOD.replace("mqtts://", "mqtt://");
        assert_eq!(bad_key(&text), "collector.tls.ca_file");
        let text =
            GOOD.replace("ca_file = \"/etc/weir/ca.pem\"", "ca_file = \"/ca\"\ncert_file = \"/c\"");
        assert_eq!(bad_key(&text), "collector.tls.key_file");
    }
}
