//! The configuration file as written: [`ConfigFile`] and one struct per
//! section, every key with its default. Nothing here is checked; see
//! `validate`.

use std::path::PathBuf;

use serde::Deserialize;

use super::settings::DEFAULT_SPOOL_DIR;
use crate::spool::FullPolicy;
use crate::tail::StartAt;

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
    /// The Prometheus endpoint.
    pub metrics: MetricsSection,
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
    /// Free bytes appends leave on the spool's filesystem; default the
    /// smaller of 64 MiB and 1% of the filesystem, 0: no reserve.
    pub min_free_bytes: Option<u64>,
}

impl Default for SpoolSection {
    fn default() -> Self {
        Self {
            dir: PathBuf::from(DEFAULT_SPOOL_DIR),
            max_bytes: 256 * 1024 * 1024,
            when_full: FullPolicy::DropOldest,
            min_free_bytes: None,
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
    /// How often it is rewritten, milliseconds (default 1000).
    pub interval_ms: Option<u64>,
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    /// `HOST:PORT` to serve Prometheus text on (`GET /metrics`); off unless
    /// set.
    pub listen: Option<String>,
}

/// One `[[inputs]]` entry as written: the keys of every kind, checked
/// against its `kind` by [`ConfigFile::validate`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InputSection {
    /// `file`, `metrics` or `serial`.
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
    /// serial: a tty device (`/dev/ttyUSB0`) or pty, opened as a serial port.
    pub path: Option<PathBuf>,
    /// serial: a Unix socket to connect to instead (QEMU's `-serial unix:`).
    pub socket: Option<PathBuf>,
    /// serial: baud rate of `path`.
    pub baud: Option<u32>,
    /// serial: largest frame payload accepted, in bytes.
    pub max_frame_bytes: Option<u64>,
}

/// Keys of each input kind, for "only for kind" messages.
pub(super) const FILE_KEYS: &[&str] = &[
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
pub(super) const METRICS_KEYS: &[&str] = &["interval_ms"];
pub(super) const SERIAL_KEYS: &[&str] = &["path", "socket", "baud", "max_frame_bytes"];

impl InputSection {
    /// Names of the kind-specific keys that are set.
    pub(super) fn set_keys(&self) -> Vec<&'static str> {
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
        add(self.path.is_some(), "path");
        add(self.socket.is_some(), "socket");
        add(self.baud.is_some(), "baud");
        add(self.max_frame_bytes.is_some(), "max_frame_bytes");
        keys
    }
}
