//! What the running agent reports about itself, and `weir-agent status`.
//!
//! Components count what they do in [`Shared`] (atomics, and a few mutexes
//! for strings and lists, never held across I/O). Once a second the agent
//! gathers them into a [`Status`] and replaces the status file atomically
//! (temp file, rename), so a reader never sees half of it; `weir-agent status`
//! reads that file and prints it, noting when it is stale (the agent is not
//! running, or is stuck).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::checkpoint::Table;

/// How often the status file is rewritten.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// A status older than this is reported as stale.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// Longest error message kept.
const MAX_ERROR_CHARS: usize = 500;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Locks a mutex, taking the data of a poisoned one (a panicked holder left
/// counters and strings, which are still worth reporting).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The stop signal, for threads (condition variable) and tasks (watch).
#[derive(Debug)]
pub struct Shutdown {
    flag: Mutex<bool>,
    cv: Condvar,
    tx: tokio::sync::watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            flag: Mutex::new(false),
            cv: Condvar::new(),
            tx: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl Shutdown {
    /// Asks everything to stop.
    pub fn trigger(&self) {
        *lock(&self.flag) = true;
        self.cv.notify_all();
        self.tx.send_replace(true);
    }

    /// Whether a stop was asked for.
    pub fn is_set(&self) -> bool {
        *lock(&self.flag)
    }

    /// Waits up to `timeout` for a stop; returns whether one was asked for.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let guard = lock(&self.flag);
        let (guard, _) = self
            .cv
            .wait_timeout_while(guard, timeout, |stop| !*stop)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard
    }

    /// Resolves once a stop is asked for.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        // Err only if the sender is gone, which it is not while `self` lives.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// A wake-up with a counter: the shipper signals freed spool space, the
/// batcher (blocked on a full spool) waits for it.
#[derive(Debug, Default)]
pub struct Signal {
    count: Mutex<u64>,
    cv: Condvar,
}

impl Signal {
    /// Wakes the waiters.
    pub fn notify(&self) {
        *lock(&self.count) += 1;
        self.cv.notify_all();
    }

    /// Waits until notified or `timeout` passes.
    pub fn wait_timeout(&self, timeout: Duration) {
        let guard = lock(&self.count);
        let seen = *guard;
        let _ = self.cv.wait_timeout_while(guard, timeout, |c| *c == seen);
    }
}

/// An error message and when it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorNote {
    /// The message.
    pub message: String,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
}

/// The newest error of a component.
#[derive(Debug, Default)]
pub struct LastError(Mutex<Option<ErrorNote>>);

impl LastError {
    /// Records an error.
    pub fn set(&self, message: impl std::fmt::Display) {
        let mut message = message.to_string();
        if let Some((cut, _)) = message.char_indices().nth(MAX_ERROR_CHARS) {
            message.truncate(cut);
        }
        *lock(&self.0) = Some(ErrorNote { message, at_ms: now_ms() });
    }

    /// The newest error.
    pub fn get(&self) -> Option<ErrorNote> {
        lock(&self.0).clone()
    }
}

/// A followed file, as its input reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStatus {
    /// Path.
    pub path: String,
    /// Offset read up to.
    pub read_offset: u64,
    /// Offset the spooled lines reach (the checkpoint), if known.
    #[serde(default)]
    pub spooled_offset: Option<u64>,
}

/// Counters of one input.
#[derive(Debug, Default)]
pub struct InputStats {
    /// Records produced.
    pub records: AtomicU64,
    /// Bytes of record data produced.
    pub bytes: AtomicU64,
    /// Pieces of over-long lines (file inputs).
    pub lines_split: AtomicU64,
    /// Rotations and deletions followed (file inputs).
    pub rotations: AtomicU64,
    /// Truncations followed (file inputs).
    pub truncations: AtomicU64,
    /// Errors met.
    pub errors: AtomicU64,
    /// The newest error.
    pub last_error: LastError,
    /// Followed files and read offsets (file inputs).
    pub files: Mutex<Vec<(String, u64)>>,
}

/// Connection states of the shipper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnState {
    /// Not started yet.
    Starting = 0,
    /// Connecting (TCP, TLS, MQTT CONNECT).
    Connecting = 1,
    /// Connected and shipping.
    Connected = 2,
    /// Waiting before the next attempt.
    Backoff = 3,
    /// Stopped.
    Stopped = 4,
}

impl ConnState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Connecting,
            2 => Self::Connected,
            3 => Self::Backoff,
            4 => Self::Stopped,
            _ => Self::Starting,
        }
    }

    /// Its name in the status.
    pub fn name(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Connecting => "connecting",
            Self::Connected => "connected",
            Self::Backoff => "waiting to reconnect",
            Self::Stopped => "stopped",
        }
    }
}

/// Counters of the shipper.
#[derive(Debug, Default)]
pub struct ShipperStats {
    state: AtomicU8,
    /// When the current connection was made (ms since the epoch), 0 if none.
    pub connected_since_ms: AtomicU64,
    /// Connections made after the first.
    pub reconnects: AtomicU64,
    /// Batches acknowledged.
    pub batches: AtomicU64,
    /// Records acknowledged.
    pub records: AtomicU64,
    /// Payload bytes acknowledged.
    pub bytes: AtomicU64,
    /// Batches sent and not acknowledged yet.
    pub inflight: AtomicU64,
    /// The newest connection error.
    pub last_error: LastError,
}

impl ShipperStats {
    /// Sets the connection state.
    pub fn set_state(&self, s: ConnState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    /// The connection state.
    pub fn state(&self) -> ConnState {
        ConnState::from_u8(self.state.load(Ordering::Relaxed))
    }
}

/// Counters of the batcher.
#[derive(Debug, Default)]
pub struct BatcherStats {
    /// Records written to the spool.
    pub records: AtomicU64,
    /// Entries written to the spool.
    pub batches: AtomicU64,
    /// Payload bytes written to the spool.
    pub bytes: AtomicU64,
    /// Records held, not yet spooled.
    pub pending_records: AtomicU64,
    /// Whether appends wait for space (policy `block`).
    pub blocked: AtomicBool,
    /// The newest spool error.
    pub last_error: LastError,
}

/// Everything components share.
#[derive(Debug)]
pub struct Shared {
    /// The stop signal.
    pub shutdown: Shutdown,
    /// Per input, in configuration order.
    pub inputs: Vec<InputStats>,
    /// The batcher.
    pub batcher: BatcherStats,
    /// The shipper.
    pub shipper: ShipperStats,
    /// New spool entries (batcher → shipper).
    pub appended: tokio::sync::Notify,
    /// Freed spool space (shipper → batcher).
    pub space: Signal,
    /// The checkpoint table as last written to `checkpoints.json`.
    pub checkpoints: Mutex<Table>,
}

impl Shared {
    /// Shared state for `inputs` inputs.
    pub fn new(inputs: usize) -> Self {
        Self {
            shutdown: Shutdown::default(),
            inputs: (0..inputs).map(|_| InputStats::default()).collect(),
            batcher: BatcherStats::default(),
            shipper: ShipperStats::default(),
            appended: tokio::sync::Notify::new(),
            space: Signal::default(),
            checkpoints: Mutex::new(Table::default()),
        }
    }
}

/// The status file's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Agent version.
    pub version: String,
    /// Process id.
    pub pid: u32,
    /// When the agent started, ms since the epoch.
    pub started_at_ms: u64,
    /// When this status was written, ms since the epoch.
    pub updated_at_ms: u64,
    /// Device id.
    pub device_id: String,
    /// Producer id of the batches.
    pub producer_id: String,
    /// Collector address.
    pub collector: String,
    /// The connection.
    pub connection: ConnectionStatus,
    /// The spool.
    pub spool: SpoolStatus,
    /// What was acknowledged by the collector.
    pub shipped: Counts,
    /// What went into the spool.
    pub spooled: Counts,
    /// Records held by the batcher, not yet spooled.
    pub pending_records: u64,
    /// The inputs.
    pub inputs: Vec<InputStatus>,
    /// The newest error of any component.
    pub last_error: Option<ErrorNote>,
}

/// Connection part of [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionStatus {
    /// State name.
    pub state: String,
    /// Connected since, ms since the epoch.
    pub connected_since_ms: Option<u64>,
    /// Reconnections.
    pub reconnects: u64,
    /// Batches in flight.
    pub inflight: u64,
    /// Newest connection error.
    pub last_error: Option<ErrorNote>,
}

/// Spool part of [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolStatus {
    /// Directory.
    pub dir: PathBuf,
    /// Entries not acknowledged yet.
    pub entries: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// The bound.
    pub max_bytes: u64,
    /// `drop_oldest` or `block`.
    pub when_full: String,
    /// Whether inputs are stopped on a full spool.
    pub blocked: bool,
    /// Entries dropped unsent (`drop_oldest`).
    pub dropped_entries: u64,
    /// Records in them.
    pub dropped_records: u64,
    /// The newest spool error.
    pub last_error: Option<ErrorNote>,
}

/// Batches, records, bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Batches.
    pub batches: u64,
    /// Records.
    pub records: u64,
    /// Bytes of encoded batches.
    pub bytes: u64,
}

/// One input in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputStatus {
    /// Name.
    pub name: String,
    /// `file` or `metrics`.
    pub kind: String,
    /// Target stream.
    pub stream: String,
    /// Records produced.
    pub records: u64,
    /// Data bytes produced.
    pub bytes: u64,
    /// Pieces of over-long lines.
    pub lines_split: u64,
    /// Rotations followed.
    pub rotations: u64,
    /// Truncations followed.
    pub truncations: u64,
    /// Errors.
    pub errors: u64,
    /// Newest error.
    pub last_error: Option<ErrorNote>,
    /// Followed files.
    pub files: Vec<FileStatus>,
}

/// Why the status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// No status file.
    #[error("no status at {path}: is the agent running? ({source})")]
    Missing {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not a status file.
    #[error("{path} is not an agent status file: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Writes `status` to `path` atomically (temp file, rename).
///
/// # Errors
/// The file operations.
pub fn write_status(path: &Path, status: &Status) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let bytes = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Reads a status file.
///
/// # Errors
/// [`StatusError`].
pub fn read_status(path: &Path) -> Result<Status, StatusError> {
    let bytes = std::fs::read(path)
        .map_err(|source| StatusError::Missing { path: path.to_path_buf(), source })?;
    serde_json::from_slice(&bytes)
        .map_err(|source| StatusError::Invalid { path: path.to_path_buf(), source })
}

fn ago(now_ms: u64, at_ms: u64) -> String {
    let d = Duration::from_millis(now_ms.saturating_sub(at_ms));
    let s = d.as_secs();
    match s {
        0 => format!("{} ms ago", d.as_millis()),
        1..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The status as text for people, `now_ms` being the reader's clock.
pub fn render(s: &Status, now_ms: u64) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let age = Duration::from_millis(now_ms.saturating_sub(s.updated_at_ms));
    let _ = writeln!(
        o,
        "weir-agent {} (pid {}), up {}, status written {}",
        s.version,
        s.pid,
        ago(now_ms, s.started_at_ms).trim_end_matches(" ago"),
        ago(now_ms, s.updated_at_ms)
    );
    if age > STALE_AFTER {
        let _ = writeln!(o, "WARNING: this status is stale: the agent is not running or is stuck");
    }
    let _ = writeln!(o, "device:     {} (producer {})", s.device_id, s.producer_id);
    let c = &s.connection;
    let since =
        c.connected_since_ms.map(|t| format!(" since {}", ago(now_ms, t))).unwrap_or_default();
    let _ = writeln!(
        o,
        "collector:  {} — {}{since}, {} reconnects, {} batches in flight",
        s.collector, c.state, c.reconnects, c.inflight
    );
    if let Some(e) = &c.last_error {
        let _ = writeln!(
            o,
            "            last connection error ({}): {}",
            ago(now_ms, e.at_ms),
            e.message
        );
    }
    let sp = &s.spool;
    let _ = writeln!(
        o,
        "spool:      {} entries, {} of {} ({}{}), dropped {} records in {} batches",
        sp.entries,
        mib(sp.bytes),
        mib(sp.max_bytes),
        sp.when_full,
        if sp.blocked { ", FULL: inputs stopped" } else { "" },
        sp.dropped_records,
        sp.dropped_entries
    );
    if let Some(e) = &sp.last_error {
        let _ =
            writeln!(o, "            last spool error ({}): {}", ago(now_ms, e.at_ms), e.message);
    }
    let _ = writeln!(
        o,
        "spooled:    {} records in {} batches ({}); {} records waiting for a batch",
        s.spooled.records,
        s.spooled.batches,
        mib(s.spooled.bytes),
        s.pending_records
    );
    let _ = writeln!(
        o,
        "shipped:    {} records in {} batches ({}), acknowledged by the collector",
        s.shipped.records,
        s.shipped.batches,
        mib(s.shipped.bytes)
    );
    let _ = writeln!(o, "inputs:");
    for i in &s.inputs {
        let _ = write!(
            o,
            "  {} {:?} -> stream {}: {} records ({})",
            i.kind,
            i.name,
            i.stream,
            i.records,
            mib(i.bytes)
        );
        if i.kind == "file" {
            let _ = write!(
                o,
                ", {} files, {} lines split, {} rotations, {} truncations",
                i.files.len(),
                i.lines_split,
                i.rotations,
                i.truncations
            );
        }
        let _ = writeln!(o, ", {} errors", i.errors);
        if let Some(e) = &i.last_error {
            let _ = writeln!(o, "    last error ({}): {}", ago(now_ms, e.at_ms), e.message);
        }
        for f in &i.files {
            let spooled = f.spooled_offset.map_or_else(|| "-".to_owned(), |o| o.to_string());
            let _ = writeln!(o, "    {}  read {}  spooled {}", f.path, f.read_offset, spooled);
        }
    }
    if let Some(e) = &s.last_error {
        let _ = writeln!(o, "last error ({}): {}", ago(now_ms, e.at_ms), e.message);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            version: "0.1.0".into(),
            pid: 42,
            started_at_ms: 1_000,
            updated_at_ms: 61_000,
            device_id: "gw-1".into(),
            producer_id: "gw-1/00000000000000ab".into(),
            collector: "mqtts://c:8883".into(),
            connection: ConnectionStatus {
                state: "connected".into(),
                connected_since_ms: Some(2_000),
                reconnects: 1,
                inflight: 2,
                last_error: Some(ErrorNote {
                    message: "TLS: bad certificate".into(),
                    at_ms: 1_500,
                }),
            },
            spool: SpoolStatus {
                dir: "/s".into(),
                entries: 3,
                bytes: 1 << 20,
                max_bytes: 1 << 28,
                when_full: "drop_oldest".into(),
                blocked: false,
                dropped_entries: 1,
                dropped_records: 500,
                last_error: None,
            },
            shipped: Counts { batches: 9, records: 900, bytes: 90_000 },
            spooled: Counts { batches: 10, records: 1000, bytes: 100_000 },
            pending_records: 7,
            inputs: vec![InputStatus {
                name: "app".into(),
                kind: "file".into(),
                stream: "logs".into(),
                records: 1000,
                bytes: 100_000,
                lines_split: 2,
                rotations: 0,
                truncations: 0,
                errors: 1,
                last_error: Some(ErrorNote { message: "reading /x: denied".into(), at_ms: 3_000 }),
                files: vec![FileStatus {
                    path: "/l/a.log".into(),
                    read_offset: 10,
                    spooled_offset: Some(8),
                }],
            }],
            last_error: None,
        }
    }

    #[test]
    fn status_file_round_trip_and_rendering() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("status.json");
        write_status(&path, &sample()).expect("write");
        assert_eq!(read_status(&path).expect("read"), sample());
        let text = render(&sample(), 61_500);
        for needle in [
            "dropped 500 records",
            "lines split",
            "reading /x: denied",
            "TLS: bad certificate",
            "read 10  spooled 8",
        ] {
            assert!(text.contains(needle), "{needle:?} in\n{text}");
        }
        assert!(!text.contains("stale"));
        assert!(render(&sample(), 70_000).contains("stale"));
        assert!(matches!(read_status(&dir.path().join("none")), Err(StatusError::Missing { .. })));
    }

    #[test]
    fn shutdown_wakes_waiting_threads() {
        let s = std::sync::Arc::new(Shutdown::default());
        assert!(!s.wait_timeout(Duration::from_millis(1)));
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.wait_timeout(Duration::from_secs(30)));
        s.trigger();
        assert!(t.join().expect("join"));
        assert!(s.is_set());
    }
}
