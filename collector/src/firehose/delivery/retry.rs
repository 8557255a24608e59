//! Retries of a batch the destination failed: per shard, since when it
//! fails (the retry duration counts from there), how many attempts failed
//! and when the next one is due, with exponential backoff from
//! [`RETRY_INITIAL_MS`] doubling up to [`RETRY_MAX_MS`]. A full disk
//! ([`FirehoseError::DiskFull`]) pauses instead: its attempts back off the
//! same way but never start the retry duration, and the size of the object
//! that did not fit is kept so the next attempt can go as soon as it fits.

use std::collections::BTreeMap;
use std::time::Duration;

use weir_wire::backoff::Backoff;

use super::report::DeliveryFailure;
use crate::firehose::error::FirehoseError;

/// Wait after a batch's first failed attempt, ms.
pub const RETRY_INITIAL_MS: u64 = 100;
/// Longest wait between attempts, ms.
pub const RETRY_MAX_MS: u64 = 30_000;

/// The wait after `attempts` failed attempts ([`weir_wire::backoff`]'s
/// ceiling, without jitter: one delivery stream retries alone).
pub fn backoff_ms(attempts: u32) -> u64 {
    let backoff =
        Backoff::new(Duration::from_millis(RETRY_INITIAL_MS), Duration::from_millis(RETRY_MAX_MS));
    u64::try_from(backoff.ceiling(attempts).as_millis()).unwrap_or(RETRY_MAX_MS)
}

/// A shard's batch that failed: since when, how often, next attempt.
#[derive(Debug, Clone)]
pub(super) struct RetryState {
    /// Since when it fails for another reason than a full disk (the retry
    /// duration counts from there); `None` while only a full disk failed it.
    pub(super) since_ms: Option<u64>,
    pub(super) attempts: u32,
    pub(super) next_ms: u64,
    /// The first failed attempt since opening.
    first_ms: u64,
    /// Bytes of the object a full disk refused at the last attempt (`None`:
    /// the last failure was another).
    disk_full: Option<u64>,
    /// The last failure, for the status.
    last_error: String,
}

impl RetryState {
    /// Whether the retry duration has passed since the first failure (never
    /// while only a full disk failed the batch).
    pub(super) fn expired(&self, now_ms: u64, retry_duration_secs: u32) -> bool {
        self.since_ms.is_some_and(|since| {
            now_ms.saturating_sub(since) >= u64::from(retry_duration_secs) * 1_000
        })
    }
}

/// The failing batches of a delivery stream, by shard id (since opening:
/// the attempt count restarts with the process, the first failure does not).
#[derive(Debug, Default)]
pub(super) struct Retries(BTreeMap<String, RetryState>);

impl Retries {
    /// Whether no batch is failing.
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the shard's batch is failing.
    pub(super) fn contains(&self, shard_id: &str) -> bool {
        self.0.contains_key(shard_id)
    }

    /// Whether the shard's batch waits for its next attempt at `now_ms`.
    pub(super) fn waiting(&self, shard_id: &str, now_ms: u64) -> bool {
        self.0.get(shard_id).is_some_and(|r| r.next_ms > now_ms)
    }

    /// Bytes of the object a full disk refused at the shard's last attempt.
    pub(super) fn disk_full(&self, shard_id: &str) -> Option<u64> {
        self.0.get(shard_id).and_then(|r| r.disk_full)
    }

    /// The shard's next attempt is due at once (the disk has room again).
    pub(super) fn due(&mut self, shard_id: &str, now_ms: u64) {
        if let Some(s) = self.0.get_mut(shard_id) {
            s.next_ms = now_ms;
        }
    }

    /// Counts a failed attempt at the shard's batch at `now_ms`; its first
    /// failure saved in the checkpoint is `saved_since_ms`. The retry
    /// duration counts from the first failure that is not a full disk (a
    /// full disk pauses, and saves nothing: the checkpoint may be on it):
    /// from `saved_since_ms` if there is one, else from now, and then the
    /// answer's `true` says to save it.
    pub(super) fn fail(
        &mut self,
        shard_id: &str,
        error: &FirehoseError,
        now_ms: u64,
        saved_since_ms: Option<u64>,
    ) -> (RetryState, bool) {
        let state = self.0.entry(shard_id.to_owned()).or_insert_with(|| RetryState {
            since_ms: None,
            attempts: 0,
            next_ms: now_ms,
            first_ms: now_ms,
            disk_full: None,
            last_error: String::new(),
        });
        let mut starts = false;
        if state.since_ms.is_none() && !error.is_disk_full() {
            state.since_ms = Some(saved_since_ms.map_or(now_ms, |t| t.min(now_ms)));
            starts = saved_since_ms.is_none();
        }
        state.attempts = state.attempts.saturating_add(1);
        state.disk_full = match error {
            FirehoseError::DiskFull { needed, .. } => Some(*needed),
            _ => None,
        };
        state.last_error = error.to_string();
        (state.clone(), starts)
    }

    /// Schedules the next attempt, the backoff after `attempts` from `now_ms`.
    pub(super) fn schedule(&mut self, shard_id: &str, now_ms: u64, attempts: u32) {
        if let Some(s) = self.0.get_mut(shard_id) {
            s.next_ms = now_ms.saturating_add(backoff_ms(attempts));
        }
    }

    /// The shard's batch is delivered or goes to the error output.
    pub(super) fn remove(&mut self, shard_id: &str) {
        self.0.remove(shard_id);
    }

    /// The first failing batch (by shard id), as the status reports it.
    pub(super) fn failure(&self) -> Option<DeliveryFailure> {
        self.0.iter().find(|(_, r)| r.attempts > 0).map(|(shard_id, r)| DeliveryFailure {
            reason: if r.disk_full.is_some() { DISK_FULL } else { DESTINATION },
            shard_id: shard_id.clone(),
            attempts: r.attempts,
            since_ms: r.first_ms,
            next_attempt_ms: r.next_ms,
            message: r.last_error.clone(),
            failing_shards: self.0.values().filter(|r| r.attempts > 0).count(),
        })
    }
}

/// [`DeliveryFailure::reason`] of a destination whose disk is full.
pub const DISK_FULL: &str = "disk_full";
/// [`DeliveryFailure::reason`] of any other destination failure.
pub const DESTINATION: &str = "destination";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_initial_wait_up_to_the_cap() {
        let waits: Vec<u64> = [0, 1, 2, 3, 8, 9, 21, u32::MAX].map(backoff_ms).to_vec();
        assert_eq!(waits, [100, 100, 200, 400, 12_800, 25_600, 30_000, 30_000]);
    }
}
