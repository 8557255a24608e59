//! The task that runs one delivery stream of a [`Manager`](super::Manager):
//! it delivers only while it holds the delivery stream's lease in the
//! [`FirehoseState`].
//!
//! A loop of *sessions*: wait for the lease ([`FirehoseState::acquire_lease`],
//! asking again when told while another collector holds it, so this
//! collector takes over when the holder dies); open the
//! [`DeliveryStream`] over the lease's checkpoint (which claims it) and poll
//! it every [`POLL_INTERVAL`]. Concurrently, in the same task, the lease is
//! renewed every [`LeaseTiming::renew_every`](super::state::LeaseTiming);
//! the session ends — the delivery stream is dropped, in the middle of a poll
//! if need be — as soon as [`Lease::valid_until`] passes without a renewal or
//! a renewal is refused, and when a checkpoint save or claim is fenced
//! ([`StateError::ends_delivery`]); then the loop waits for the lease again.
//! Dropping a poll is safe: whatever it buffered is read again by the next
//! holder from the checkpoint. On shutdown the poll in progress finishes and
//! the lease is released, so another collector takes over at once.
//!
//! After every poll the worker publishes the delivery stream's
//! [`DeliveryFailure`] (none while it delivers) for DescribeDeliveryStream;
//! failed polls and opens log one line per cause per
//! [`LOG_INTERVAL`](crate::log_limit::LOG_INTERVAL), with their count.
//!
//! With the file state the lease never expires: one session, as before.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::config::DeliveryConfig;
use super::delivery::{DeliveryFailure, DeliveryStream};
use super::destination::DirectoryDestination;
use super::error::FirehoseError;
use super::manager::AnyDestination;
use super::state::{CheckpointStore, FirehoseState, Lease, LeaseAttempt};
use crate::log_limit::LogLimit;
use crate::store::{StreamStore, SystemClock};

/// How often a delivery stream polls its source.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long a delivery stream waits before opening again after a failure
/// (for example a source stream that does not exist yet), or before asking
/// for its lease again after the state failed.
pub const RETRY_OPEN: Duration = Duration::from_secs(1);
/// How soon a renewal that failed for another reason than losing the lease
/// (the state unreachable) is tried again, until the lease runs out.
pub const RENEW_RETRY: Duration = Duration::from_millis(250);
/// Longest wait for releasing the lease at shutdown; it expires by itself
/// otherwise.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything one delivery stream's task needs.
pub(super) struct Worker<S> {
    pub(super) store: S,
    pub(super) destination: AnyDestination,
    pub(super) backup: Option<DirectoryDestination>,
    pub(super) config: DeliveryConfig,
    pub(super) state: Arc<dyn FirehoseState>,
    pub(super) incarnation: u64,
    /// Why delivery fails, while it does (read by the manager).
    pub(super) status: watch::Sender<Option<DeliveryFailure>>,
    /// Failed polls and opens, by cause.
    pub(super) failures: LogLimit,
}

/// How a session ended.
enum End {
    Shutdown,
    /// The lease ran out or was taken over.
    LeaseLost(String),
    /// The state refused the checkpoint (fenced, definition gone).
    Fenced(FirehoseError),
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    // A dropped sender also means stop.
    let _ = rx.wait_for(|s| *s).await;
}

impl<S: StreamStore + Clone> Worker<S> {
    /// Runs sessions until `stop` turns true.
    pub(super) async fn run(self, mut stop: watch::Receiver<bool>) {
        let name = self.config.name.clone();
        loop {
            let lease = tokio::select! {
                () = stopped(&mut stop) => return,
                lease = self.acquire() => lease,
            };
            tracing::info!(delivery_stream = %name, holder = %lease.holder(), token = lease.token(), "lease acquired");
            let (lease, end) = self.session(lease, &mut stop).await;
            self.status.send_replace(None);
            match end {
                End::Shutdown => {
                    self.release(lease).await;
                    return;
                }
                End::LeaseLost(reason) => {
                    tracing::warn!(delivery_stream = %name, reason = %reason, "lease lost; delivery stopped");
                }
                End::Fenced(e) => {
                    tracing::warn!(delivery_stream = %name, error = %e, "checkpoint fenced; delivery stopped");
                    self.release(lease).await;
                    tokio::select! {
                        () = stopped(&mut stop) => return,
                        () = tokio::time::sleep(RETRY_OPEN) => {}
                    }
                }
            }
        }
    }

    async fn acquire(&self) -> Lease {
        let name = &self.config.name;
        let mut last_holder = String::new();
        loop {
            let wait = match self.state.acquire_lease(name, self.incarnation).await {
                Ok(LeaseAttempt::Acquired(lease)) => return lease,
                Ok(LeaseAttempt::Held { holder, retry_in }) => {
                    if holder != last_holder {
                        tracing::info!(delivery_stream = %name, holder = %holder, "delivered by another collector; waiting for its lease");
                        last_holder = holder;
                    }
                    retry_in
                }
                Err(e) => {
                    tracing::warn!(delivery_stream = %name, error = %e, "acquiring the lease failed; retrying");
                    RETRY_OPEN
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    async fn release(&self, lease: Lease) {
        let name = &self.config.name;
        match tokio::time::timeout(RELEASE_TIMEOUT, self.state.release_lease(lease)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(delivery_stream = %name, error = %e, "releasing the lease failed; it expires by itself");
            }
            Err(_elapsed) => {
                tracing::warn!(delivery_stream = %name, "releasing the lease timed out; it expires by itself");
            }
        }
    }

    /// Delivers while `lease` holds; gives it back with how the session
    /// ended.
    async fn session(&self, mut lease: Lease, stop: &mut watch::Receiver<bool>) -> (Lease, End) {
        let checkpoints = self.state.checkpoints(&lease);
        let end = {
            let keep = self.keep(&mut lease);
            let deliver = self.deliver(checkpoints, stop);
            tokio::select! {
                reason = keep => End::LeaseLost(reason),
                end = deliver => end,
            }
        };
        (lease, end)
    }

    /// Renews `lease` until it is lost; returns why. Never returns for a
    /// lease that does not expire.
    async fn keep(&self, lease: &mut Lease) -> String {
        let Some(timing) = self.state.lease_timing() else {
            return std::future::pending().await;
        };
        let mut next = Instant::now() + timing.renew_every;
        loop {
            let Some(deadline) = lease.valid_until() else {
                return std::future::pending().await;
            };
            let deadline = tokio::time::Instant::from_std(deadline);
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    return "not renewed in time".to_owned();
                }
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(next)) => {}
            }
            match tokio::time::timeout_at(deadline, self.state.renew_lease(lease)).await {
                Ok(Ok(())) => next = Instant::now() + timing.renew_every,
                Ok(Err(e)) if e.ends_delivery() => return e.to_string(),
                Ok(Err(e)) => {
                    tracing::warn!(delivery_stream = %self.config.name, error = %e, "renewing the lease failed; retrying");
                    next = Instant::now() + RENEW_RETRY;
                }
                Err(_elapsed) => return "renewal still unanswered when the lease ran out".into(),
            }
        }
    }

    /// Publishes the delivery stream's failure, if it changed.
    fn publish_status(&self, failure: Option<DeliveryFailure>) {
        self.status.send_if_modified(|s| {
            let changed = *s != failure;
            *s = failure;
            changed
        });
    }

    /// Opens the delivery stream (retrying) and polls it until shutdown or
    /// fencing.
    async fn deliver(
        &self,
        checkpoints: Arc<dyn CheckpointStore>,
        stop: &mut watch::Receiver<bool>,
    ) -> End {
        let name = &self.config.name;
        let mut stream = loop {
            let opened = DeliveryStream::open_with_checkpoints(
                self.store.clone(),
                self.destination.clone(),
                self.backup.clone(),
                self.config.clone(),
                checkpoints.clone(),
                Arc::new(SystemClock),
            )
            .await;
            match opened {
                Ok((stream, _)) => break stream,
                Err(FirehoseError::State(s)) if s.ends_delivery() => {
                    return End::Fenced(FirehoseError::State(s));
                }
                Err(e) => {
                    let key = format!("open/{}", e.cause());
                    if let Some(count) = self.failures.hit(&key, 1, Instant::now()) {
                        tracing::warn!(delivery_stream = %name, attempts = count, error = %e, "opening failed; retrying");
                    }
                }
            }
            tokio::select! {
                () = stopped(stop) => return End::Shutdown,
                () = tokio::time::sleep(RETRY_OPEN) => {}
            }
        };
        tracing::info!(delivery_stream = %name, "delivery stream started");
        loop {
            self.publish_status(stream.failure());
            match stream.poll().await {
                Ok(_) => {}
                Err(FirehoseError::State(s)) if s.ends_delivery() => {
                    return End::Fenced(FirehoseError::State(s));
                }
                Err(e) => {
                    let key = format!("poll/{}", e.cause());
                    if let Some(count) = self.failures.hit(&key, 1, Instant::now()) {
                        tracing::warn!(delivery_stream = %name, polls = count, error = %e, "delivery poll failed");
                    }
                }
            }
            self.publish_status(stream.failure());
            tokio::select! {
                () = stopped(stop) => return End::Shutdown,
                () = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    }
}
