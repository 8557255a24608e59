//! What the running agent reports about itself, and `weir-agent status`.
//!
//! Components count what they do in [`crate::stats::Shared`]. Every
//! `status.interval_ms` (a second by default) the agent gathers the counters
//! into a [`Status`] and replaces the status file atomically (temp file,
//! rename), so a reader never sees half of it; `weir-agent status` reads that
//! file and prints it, noting when it is stale (the agent is not running, or
//! is stuck).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The name of a spool policy, as the configuration writes it.
pub fn policy_name(policy: crate::spool::FullPolicy) -> &'static str {
    match policy {
        crate::spool::FullPolicy::DropOldest => "drop_oldest",
        crate::spool::FullPolicy::Block => "block",
    }
}

/// A status older than this is reported as stale.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

pub use crate::stats::{DiskFullNote, ErrorNote};

/// [`SpoolStatus::state`] while appends go through.
pub const SPOOL_OK: &str = "ok";
/// [`SpoolStatus::state`] while the spool is at its bound under `block`.
pub const SPOOL_FULL: &str = "full";
/// [`SpoolStatus::state`] while appends wait on a full filesystem.
pub const SPOOL_DISK_FULL: &str = "disk_full";

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
    /// `ok`, `full` (at its bound under `block`: inputs stopped until
    /// acknowledgements free space) or `disk_full` (the filesystem is full:
    /// inputs paused until space returns, under either policy).
    #[serde(default)]
    pub state: String,
    /// While `disk_full`: since when, the free bytes and the last error.
    #[serde(default)]
    pub disk_full: Option<DiskFullNote>,
    /// Pauses on a full filesystem since the agent started.
    #[serde(default)]
    pub disk_full_events: u64,
    /// Milliseconds paused on a full filesystem since the agent started,
    /// the current pause included.
    #[serde(default)]
    pub disk_full_ms: u64,
    /// Free bytes on the spool's filesystem, if it can be asked.
    #[serde(default)]
    pub free_bytes: Option<u64>,
    /// The free-space reserve appends leave (`spool.min_free_bytes`).
    #[serde(default)]
    pub min_free_bytes: u64,
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
    /// The line and its frames (serial inputs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialStatus>,
}

/// The line of a serial input, in [`InputStatus`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialStatus {
    /// Whether the line is open.
    pub connected: bool,
    /// Times it was opened.
    pub connects: u64,
    /// Data frames taken.
    pub frames: u64,
    /// Frames that failed their checks (COBS, CRC, cut short), skipped.
    pub corrupt: u64,
    /// Frames over the size bound, skipped.
    pub oversized: u64,
    /// Data frames whose envelope did not decode, skipped.
    pub invalid: u64,
    /// Frames that were not data frames.
    pub unexpected: u64,
    /// Retransmitted frames, not spooled again.
    pub duplicates: u64,
    /// Node restarts seen (a sequence number back with new content).
    pub restarts: u64,
    /// Frames that never arrived (the node no longer had them to resend).
    pub missed: u64,
    /// Ack frames written.
    pub acks_sent: u64,
    /// The nodes heard on the line.
    pub nodes: Vec<NodeStatus>,
}

/// One node of a serial input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its producer id.
    pub producer: String,
    /// Highest frame sequence number taken in order.
    pub received_seq: Option<u32>,
    /// Highest frame sequence number acknowledged (spooled).
    pub acked_seq: Option<u32>,
    /// Frames held after a gap, waiting for the missing ones.
    pub held: usize,
}

/// A serial input's counters as its status.
pub fn serial_status(s: &crate::stats::SerialStats) -> SerialStatus {
    use std::sync::atomic::Ordering::Relaxed;
    SerialStatus {
        connected: s.connected.load(Relaxed),
        connects: s.connects.load(Relaxed),
        frames: s.frames.load(Relaxed),
        corrupt: s.corrupt.load(Relaxed),
        oversized: s.oversized.load(Relaxed),
        invalid: s.invalid.load(Relaxed),
        unexpected: s.unexpected.load(Relaxed),
        duplicates: s.duplicates.load(Relaxed),
        restarts: s.restarts.load(Relaxed),
        missed: s.missed.load(Relaxed),
        acks_sent: s.acks_sent.load(Relaxed),
        nodes: crate::stats::lock(&s.nodes)
            .iter()
            .map(|n| NodeStatus {
                producer: n.producer.clone(),
                received_seq: n.received_seq,
                acked_seq: n.acked_seq,
                held: n.held,
            })
            .collect(),
    }
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

/// Writes `status` to `path` atomically (temp file, rename). A temp file
/// that could not be written whole is removed (on a full disk it would hold
/// the last free blocks).
///
/// # Errors
/// The file operations.
pub fn write_status(path: &Path, status: &Status) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let bytes = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    let written = std::fs::File::create(&tmp).and_then(|mut f| f.write_all(&bytes));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
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

/// Free space and reserves, where a few KiB matter.
fn size(bytes: u64) -> String {
    if bytes < 1024 * 1024 { format!("{} KiB", bytes / 1024) } else { mib(bytes) }
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
    let free = sp.free_bytes.map_or_else(|| "unknown".to_owned(), size);
    let _ = write!(o, "            filesystem: {free} free, reserve {}", size(sp.min_free_bytes));
    if sp.disk_full_events > 0 {
        let _ = write!(
            o,
            "; full {} times, paused {} s in all",
            sp.disk_full_events,
            sp.disk_full_ms / 1000
        );
    }
    let _ = writeln!(o);
    if let Some(d) = &sp.disk_full {
        let _ = writeln!(
            o,
            "            DISK FULL since {}: inputs paused until space returns ({} attempts refused): {}",
            ago(now_ms, d.since_ms),
            d.attempts,
            d.last_error.message
        );
    }
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
        if let Some(l) = &i.serial {
            let _ = write!(
                o,
                ", line {}, {} frames, {} corrupt, {} oversized, {} invalid, {} duplicates, {} missed, {} restarts, {} acks sent",
                if l.connected { "open" } else { "closed" },
                l.frames,
                l.corrupt,
                l.oversized,
                l.invalid,
                l.duplicates,
                l.missed,
                l.restarts,
                l.acks_sent
            );
        }
        let _ = writeln!(o, ", {} errors", i.errors);
        if let Some(e) = &i.last_error {
            let _ = writeln!(o, "    last error ({}): {}", ago(now_ms, e.at_ms), e.message);
        }
        for n in i.serial.iter().flat_map(|l| &l.nodes) {
            let seq = |s: Option<u32>| s.map_or_else(|| "-".to_owned(), |s| s.to_string());
            let _ = writeln!(
                o,
                "    node {}  received {}  acked {}  held {}",
                n.producer,
                seq(n.received_seq),
                seq(n.acked_seq),
                n.held
            );
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
                state: SPOOL_DISK_FULL.into(),
                disk_full: Some(DiskFullNote {
                    since_ms: 31_000,
                    free_bytes: Some(4096),
                    attempts: 12,
                    last_error: ErrorNote {
                        message: "spool write /s/1.spool: No space left on device".into(),
                        at_ms: 60_000,
                    },
                }),
                disk_full_events: 2,
                disk_full_ms: 45_000,
                free_bytes: Some(4096),
                min_free_bytes: 1 << 20,
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
                serial: None,
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
            "DISK FULL since 30 s ago",
            "12 attempts refused",
            "No space left on device",
            "full 2 times, paused 45 s in all",
            "filesystem: 4 KiB free, reserve 1.0 MiB",
        ] {
            assert!(text.contains(needle), "{needle:?} in\n{text}");
        }
        assert!(!text.contains("stale"));
        assert!(render(&sample(), 70_000).contains("stale"));
        assert!(matches!(read_status(&dir.path().join("none")), Err(StatusError::Missing { .. })));
    }

    #[test]
    fn a_status_file_without_the_disk_full_fields_still_reads() {
        let mut json = serde_json::to_value(sample()).expect("json");
        let spool = json["spool"].as_object_mut().expect("spool");
        for k in [
            "state",
            "disk_full",
            "disk_full_events",
            "disk_full_ms",
            "free_bytes",
            "min_free_bytes",
        ] {
            spool.remove(k);
        }
        let old: Status = serde_json::from_value(json).expect("an older agent's status");
        assert!(old.spool.disk_full.is_none() && old.spool.disk_full_events == 0);
        assert!(!render(&old, 61_500).contains("DISK FULL"));
    }
}
