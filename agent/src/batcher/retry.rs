//! What the batcher does when an append fails or waits for space: how long
//! it waits before trying again, what it does meanwhile, and what it tells
//! the status and the log.
//!
//! Every failure waits the shared backoff ([`weir_wire::backoff`]):
//! [`RETRY_MIN`], doubling per consecutive failure up to [`RETRY_MAX`], reset
//! by the next append that works. A full filesystem
//! ([`SpoolError::is_disk_full`]) is a pause rather than an error: its start
//! is counted (`disk_full_events`), its length added up (`disk_full_ms`),
//! and while it lasts a [`DiskFullNote`] (since when, free bytes, attempts,
//! last error) is in the status. Log lines go through [`LogLimit`]s that are
//! not reset when a pause ends, so a disk that fills and empties every second
//! (acknowledgements freeing a segment at a time) logs as rarely as one that
//! stays full.
//!
//! While it waits (`wait_for_space`) the batcher
//! looks at the stop signal at least every [`super::FULL_WAIT`], fsyncs what
//! it appended before and publishes its checkpoint table.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use weir_wire::backoff::Backoff;

use super::{BatchError, CHECKPOINT_FILE_INTERVAL, FULL_WAIT, SYNC_INTERVAL, Stopping};
use crate::log_limit::LogLimit;
use crate::spool::SpoolError;
use crate::stats::{BatcherStats, DiskFullNote, ErrorNote, lock, now_ms};

/// First pause before retrying a failed append (full filesystem, I/O
/// error); it doubles per failure ...
pub const RETRY_MIN: Duration = Duration::from_millis(50);
/// ... up to this, so space coming back is noticed within it.
pub const RETRY_MAX: Duration = Duration::from_secs(2);

/// The retry state of the batcher's appends.
#[derive(Debug)]
pub(super) struct Retry {
    backoff: Backoff,
    /// Since when appends wait on a full filesystem.
    disk_full_since: Option<Instant>,
    disk_full_log: LogLimit,
    resumed_log: LogLimit,
    error_log: LogLimit,
}

impl Retry {
    pub(super) fn new() -> Self {
        Self {
            backoff: Backoff::new(RETRY_MIN, RETRY_MAX),
            disk_full_since: None,
            disk_full_log: LogLimit::new(),
            resumed_log: LogLimit::new(),
            error_log: LogLimit::new(),
        }
    }

    /// An append was refused for a full filesystem (`free_bytes` free): the
    /// pause begins or goes on. Returns the wait before the next attempt.
    pub(super) fn disk_full(
        &mut self,
        e: &SpoolError,
        free_bytes: Option<u64>,
        b: &BatcherStats,
    ) -> Duration {
        let now = Instant::now();
        let began = self.disk_full_since.is_none();
        let since = *self.disk_full_since.get_or_insert(now);
        if began {
            b.disk_full_events.fetch_add(1, Ordering::Relaxed);
        }
        b.last_error.set(e);
        let last_error = b
            .last_error
            .get()
            .unwrap_or_else(|| ErrorNote { message: e.to_string(), at_ms: now_ms() });
        let attempts = {
            let mut note = lock(&b.disk_full);
            let (since_ms, attempts) =
                note.as_ref().map_or((last_error.at_ms, 1), |n| (n.since_ms, n.attempts + 1));
            *note = Some(DiskFullNote { since_ms, free_bytes, attempts, last_error });
            attempts
        };
        if let Some(refused) = self.disk_full_log.hit(now) {
            let pauses = b.disk_full_events.load(Ordering::Relaxed);
            let paused_secs = now.duration_since(since).as_secs();
            tracing::warn!(error = %e, free_bytes, refused, attempts, pauses, paused_secs, "the spool's filesystem is full: inputs paused until space returns (nothing is dropped)");
        }
        self.backoff.next_ceiling()
    }

    /// An append failed otherwise. Returns the wait before the next attempt.
    pub(super) fn failed(&mut self, e: &BatchError, b: &BatcherStats) -> Duration {
        if let Some(failures) = self.error_log.hit(Instant::now()) {
            tracing::error!(error = %e, failures, "spool append failed; retrying");
        }
        b.last_error.set(e);
        self.backoff.next_ceiling()
    }

    /// An append worked: a pause on a full filesystem or a run of errors
    /// ends.
    pub(super) fn worked(&mut self, b: &BatcherStats) {
        self.backoff.reset();
        if self.error_log.active() {
            self.error_log.reset();
            tracing::info!("spool appends work again");
        }
        if let Some(since) = self.disk_full_since.take() {
            let paused_ms = since.elapsed().as_millis() as u64;
            b.disk_full_ms.fetch_add(paused_ms, Ordering::Relaxed);
            let attempts = lock(&b.disk_full).take().map_or(0, |n| n.attempts);
            if let Some(resumes) = self.resumed_log.hit(Instant::now()) {
                tracing::info!(
                    paused_ms,
                    attempts,
                    resumes,
                    "space on the spool's filesystem again: inputs resumed"
                );
            }
        }
    }
}

impl super::Batcher {
    /// Waits up to `timeout` for freed spool space, doing the time-driven
    /// work that needs no append meanwhile.
    ///
    /// # Errors
    /// [`Stopping`] when the agent stops.
    pub(super) fn wait_for_space(&mut self, timeout: Duration) -> Result<(), Stopping> {
        let until = Instant::now() + timeout;
        loop {
            self.idle_work(Instant::now());
            if self.shared.shutdown.is_set() {
                return Err(Stopping);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || self.shared.space.wait_timeout(left.min(FULL_WAIT)) {
                return Ok(());
            }
        }
    }

    /// What is due while appends wait: fsync what was appended before (the
    /// serial inputs' acks go by it) and publish the checkpoint table.
    pub(super) fn idle_work(&mut self, now: Instant) {
        if self.unsynced && now.duration_since(self.last_sync) >= SYNC_INTERVAL {
            self.sync(now);
        }
        if self.file_dirty
            && self
                .last_file_write
                .is_none_or(|t| now.duration_since(t) >= CHECKPOINT_FILE_INTERVAL)
        {
            self.write_checkpoint_file(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn full() -> SpoolError {
        SpoolError::DiskFull { dir: PathBuf::from("/s"), free: 10, needed: 20, reserve: 5 }
    }

    #[test]
    fn a_pause_is_counted_reported_and_cleared_and_delays_double_up_to_the_cap() {
        let b = BatcherStats::default();
        let mut r = Retry::new();
        let delays: Vec<Duration> = (0..8).map(|_| r.disk_full(&full(), Some(10), &b)).collect();
        assert_eq!(delays[0], RETRY_MIN);
        assert_eq!(delays[1], RETRY_MIN * 2);
        assert_eq!(*delays.last().expect("delays"), RETRY_MAX);
        assert_eq!(b.disk_full_events.load(Ordering::Relaxed), 1, "one pause");
        let note = lock(&b.disk_full).clone().expect("a note while paused");
        assert_eq!((note.attempts, note.free_bytes), (8, Some(10)));
        assert!(note.last_error.message.contains("min_free_bytes"), "{note:?}");
        r.worked(&b);
        assert!(lock(&b.disk_full).is_none());
        // A new pause starts again from the first delay, and counts.
        assert_eq!(r.disk_full(&full(), None, &b), RETRY_MIN);
        assert_eq!(b.disk_full_events.load(Ordering::Relaxed), 2);
    }
}
