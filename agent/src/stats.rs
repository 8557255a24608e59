//! Live counters and signals the agent's components share: [`Shared`]
//! (per-input, batcher and shipper counters, atomics plus a few mutexes for
//! strings and lists, never held across I/O; a pause on a full disk,
//! [`DiskFullNote`]), the stop signal
//! ([`Shutdown`]) and the freed-space wake-up ([`Signal`]), and each serial
//! input's line and node counters ([`SerialStats`]). The status file is built
//! from them periodically (see [`crate::status`]); this module does not
//! depend on it.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::checkpoint::{FileKey, Table};

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
    /// Wake-ups notified on a stop too (threads that wait on their own).
    also: Mutex<Vec<std::sync::Arc<Signal>>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            flag: Mutex::new(false),
            cv: Condvar::new(),
            tx: tokio::sync::watch::Sender::new(false),
            also: Mutex::new(Vec::new()),
        }
    }
}

impl Shutdown {
    /// Asks everything to stop.
    pub fn trigger(&self) {
        *lock(&self.flag) = true;
        self.cv.notify_all();
        self.tx.send_replace(true);
        for s in lock(&self.also).iter() {
            s.notify();
        }
    }

    /// Notifies `signal` too when a stop is asked for.
    pub fn also_notify(&self, signal: std::sync::Arc<Signal>) {
        lock(&self.also).push(signal);
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

    /// How many times it was notified.
    pub fn count(&self) -> u64 {
        *lock(&self.count)
    }

    /// Waits until notified after the count was `seen`, or `timeout` passes.
    pub fn wait_past(&self, seen: u64, timeout: Duration) {
        let guard = lock(&self.count);
        let _ = self.cv.wait_timeout_while(guard, timeout, |c| *c == seen);
    }

    /// Waits until notified or `timeout` passes; returns whether notified.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let guard = lock(&self.count);
        let seen = *guard;
        match self.cv.wait_timeout_while(guard, timeout, |c| *c == seen) {
            Ok((_, r)) => !r.timed_out(),
            Err(poisoned) => !poisoned.into_inner().1.timed_out(),
        }
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

/// A pause of the spool's appends on a full filesystem, while it lasts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskFullNote {
    /// Since when, ms since the Unix epoch.
    pub since_ms: u64,
    /// Free bytes on the spool's filesystem at the last refused attempt,
    /// if it could be asked.
    pub free_bytes: Option<u64>,
    /// Attempts refused since the pause began.
    pub attempts: u64,
    /// The error of the last refused attempt.
    pub last_error: ErrorNote,
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
    /// Followed files: key, path and read offset (file inputs).
    pub files: Mutex<Vec<(FileKey, String, u64)>>,
}

/// A node as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// Its producer id.
    pub producer: String,
    /// Highest frame sequence number handed on in order.
    pub received_seq: Option<u32>,
    /// Highest frame sequence number acknowledged.
    pub acked_seq: Option<u32>,
    /// Frames held after a gap.
    pub held: usize,
}

/// Counters of one serial input, for the status.
#[derive(Debug, Default)]
pub struct SerialStats {
    /// Whether the line is open.
    pub connected: AtomicBool,
    /// Times the line was opened.
    pub connects: AtomicU64,
    /// Data frames taken (spooled or empty).
    pub frames: AtomicU64,
    /// Frames that failed their checks (COBS, CRC, length, type).
    pub corrupt: AtomicU64,
    /// Frames over the size bound.
    pub oversized: AtomicU64,
    /// Data frames whose envelope did not decode.
    pub invalid: AtomicU64,
    /// Frames from the line that were not data frames.
    pub unexpected: AtomicU64,
    /// Retransmitted frames not spooled again.
    pub duplicates: AtomicU64,
    /// Sequence numbers that went back with new content (node restarts).
    pub restarts: AtomicU64,
    /// Frames that never arrived, given up when the node no longer had them.
    pub missed: AtomicU64,
    /// Ack frames written.
    pub acks_sent: AtomicU64,
    /// The nodes.
    pub nodes: Mutex<Vec<NodeRow>>,
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
    /// Set while appends wait for space on a full filesystem.
    pub disk_full: Mutex<Option<DiskFullNote>>,
    /// Pauses on a full filesystem so far (this run).
    pub disk_full_events: AtomicU64,
    /// Milliseconds paused on a full filesystem, pauses that ended.
    pub disk_full_ms: AtomicU64,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
