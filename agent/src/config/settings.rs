//! The checked configuration the agent runs with: [`Config`], built by
//! [`super::ConfigFile::validate`], and the defaults and limits it applies.

use std::path::PathBuf;
use std::time::Duration;

use crate::spool::SpoolConfig;
use crate::tail::TailConfig;
use crate::template::KeyTemplate;

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
/// Longest stream name (Kinesis's limit, the wire crate's rule).
pub const MAX_STREAM_NAME_CHARS: usize = weir_wire::validate::MAX_STREAM_NAME_CHARS;
/// Smallest spool: a few batches must fit.
pub const MIN_SPOOL_BYTES: u64 = 1024 * 1024;

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
    /// How often the status file is rewritten.
    pub status_interval: Duration,
    /// Where Prometheus text is served (`[metrics] listen`), if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
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
    /// Frames from a microcontroller on a serial line.
    Serial(SerialInput),
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

/// Default baud rate of a serial device.
pub const DEFAULT_BAUD: u32 = 115_200;

/// Where a serial input reads its frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialSource {
    /// A tty device or pty, opened as a serial port (raw, 8N1).
    Device {
        /// The device.
        path: PathBuf,
        /// Baud rate.
        baud: u32,
    },
    /// A Unix socket the agent connects to (QEMU's `-serial unix:`).
    Socket {
        /// The socket.
        path: PathBuf,
    },
}

impl SerialSource {
    /// The device or socket path.
    pub fn path(&self) -> &std::path::Path {
        match self {
            Self::Device { path, .. } | Self::Socket { path } => path,
        }
    }
}

/// A serial input.
#[derive(Debug, Clone)]
pub struct SerialInput {
    /// The line.
    pub source: SerialSource,
    /// Largest frame payload accepted; larger frames are counted and skipped.
    pub max_frame_bytes: usize,
}
