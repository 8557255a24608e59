//! The firehose's state boundary: where API-created delivery-stream
//! definitions, each delivery stream's checkpoint and its delivery lease
//! live. [`FirehoseState`] is what the [`Manager`](super::Manager) and
//! [`DeliveryStream`](super::DeliveryStream) use; two implementations:
//!
//! - `file`: [`FileState`], one collector: `<data-dir>/firehose-state/
//!   delivery-streams.json` and `<name>.checkpoint` files, exactly the
//!   formats of `manager` and [`checkpoint`](super::checkpoint). The lease
//!   is always held (the store's lock on the data directory already makes
//!   the collector the only one).
//! - `kv` (feature `jetstream`): [`KvState`], several collectors over one
//!   JetStream KV bucket. Its module header documents the keys, the values'
//!   JSON and why a collector that lost its lease cannot move a checkpoint.
//!
//! # The protocol every implementation follows
//!
//! A delivery stream's task (`firehose::worker`) loops:
//! 1. [`acquire_lease`](FirehoseState::acquire_lease) until
//!    [`LeaseAttempt::Acquired`], sleeping the `retry_in` it is told while
//!    another collector holds it;
//! 2. [`checkpoints`](FirehoseState::checkpoints) for that lease; opening the
//!    delivery stream [`load`](CheckpointStore::load)s (claims) the
//!    checkpoint, every later [`save`](CheckpointStore::save) is refused with
//!    [`StateError::Fenced`] once another holder has claimed it;
//! 3. meanwhile [`renew_lease`](FirehoseState::renew_lease) every
//!    [`LeaseTiming::renew_every`]; delivery is dropped (mid-poll if need be)
//!    the moment [`Lease::valid_until`] passes without a renewal, or a
//!    renewal answers [`StateError::LeaseLost`];
//! 4. on shutdown [`release_lease`](FirehoseState::release_lease), so another
//!    collector takes over at once instead of after the lease duration.
//!
//! Definitions carry an *incarnation* ([`Definition::incarnation`]): `0` for
//! `[[firehose]]` ones and for the file state, the KV revision of the
//! definition otherwise, so a delivery stream deleted and created again under
//! the same name never resumes its predecessor's checkpoint.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use super::checkpoint::Checkpoint;
use super::error::FirehoseError;
use super::manager::DeliverySpec;

mod file;
#[cfg(feature = "jetstream")]
mod kv;

pub use file::{FileCheckpoints, FileState, STATE_DIR, STREAMS_FILE};
#[cfg(feature = "jetstream")]
pub use kv::{BUCKET_SUFFIX, KvState, bucket_name};

/// How long a lease lasts without a renewal, as measured by the collectors
/// waiting for it.
pub const LEASE_DURATION: Duration = Duration::from_secs(10);
/// How often the holder renews its lease: three attempts fit in a lease.
pub const LEASE_RENEW_EVERY: Duration = Duration::from_secs(3);
/// How much earlier than [`LEASE_DURATION`] after its last renewal request
/// the holder stops delivering: covers clocks running at slightly different
/// rates and the time between deciding to stop and having stopped.
pub const LEASE_SAFETY_MARGIN: Duration = Duration::from_secs(1);

/// The timing of leases (see the constants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// [`LEASE_DURATION`].
    pub duration: Duration,
    /// [`LEASE_RENEW_EVERY`].
    pub renew_every: Duration,
    /// [`LEASE_SAFETY_MARGIN`].
    pub safety_margin: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            duration: LEASE_DURATION,
            renew_every: LEASE_RENEW_EVERY,
            safety_margin: LEASE_SAFETY_MARGIN,
        }
    }
}

impl LeaseTiming {
    /// Checks that a holder gets at least two renewal attempts before it
    /// must stop: `2 * renew_every + safety_margin <= duration`, all
    /// non-zero.
    ///
    /// # Errors
    /// [`StateError::InvalidTiming`] naming the violated bound.
    pub fn validate(&self) -> Result<(), StateError> {
        if self.duration.is_zero() || self.renew_every.is_zero() || self.safety_margin.is_zero() {
            return Err(StateError::InvalidTiming(format!("{self:?}: every value must be > 0")));
        }
        if self.renew_every * 2 + self.safety_margin > self.duration {
            return Err(StateError::InvalidTiming(format!(
                "{self:?}: 2 * renew_every + safety_margin must be <= duration"
            )));
        }
        Ok(())
    }
}

/// An API-created delivery stream's definition as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    /// What it is.
    pub spec: DeliverySpec,
    /// Which creation of that name it is (see the module header).
    pub incarnation: u64,
}

/// The right to deliver one delivery stream, held by one collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    delivery_stream: String,
    holder: String,
    token: u64,
    incarnation: u64,
    revision: u64,
    valid_until: Option<Instant>,
}

impl Lease {
    /// A lease just acquired with fencing token `token` (also its
    /// revision), for implementations of [`FirehoseState`].
    pub fn new(
        delivery_stream: &str,
        holder: &str,
        token: u64,
        incarnation: u64,
        valid_until: Option<Instant>,
    ) -> Self {
        Self {
            delivery_stream: delivery_stream.to_owned(),
            holder: holder.to_owned(),
            token,
            incarnation,
            revision: token,
            valid_until,
        }
    }

    /// The delivery stream it is for.
    pub fn delivery_stream(&self) -> &str {
        &self.delivery_stream
    }

    /// The holder's collector id.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The fencing token: strictly greater for every later acquisition of
    /// the same delivery stream's lease.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The incarnation of the definition it delivers.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The state's revision of the lease as last written by its holder.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// After a renewal (for implementations of [`FirehoseState`]): its new
    /// revision and validity.
    pub fn renewed(&mut self, revision: u64, valid_until: Option<Instant>) {
        self.revision = revision;
        self.valid_until = valid_until;
    }

    /// Until when its holder may deliver; `None`: for ever (file state).
    pub fn valid_until(&self) -> Option<Instant> {
        self.valid_until
    }

    /// Whether its holder may still deliver at `now`.
    pub fn is_valid(&self, now: Instant) -> bool {
        self.valid_until.is_none_or(|t| now < t)
    }
}

/// What [`FirehoseState::acquire_lease`] got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAttempt {
    /// The lease is ours.
    Acquired(Lease),
    /// Another collector holds it (or took it first): ask again in
    /// `retry_in`.
    Held {
        /// The holder's collector id, as far as known.
        holder: String,
        /// When to ask again.
        retry_in: Duration,
    },
}

/// Why a state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// A stored value that is not what it should be.
    #[error("{location}: {reason}")]
    Corrupt {
        /// The file or key.
        location: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A definition of that name exists already.
    #[error("delivery stream {0} already exists")]
    Exists(String),
    /// No definition of that name.
    #[error("delivery stream {0} not found")]
    NotFound(String),
    /// A checkpoint write or claim refused: another holder claimed the
    /// checkpoint since this holder's last write. The holder must stop
    /// delivering.
    #[error("{location}: fenced: {reason}")]
    Fenced {
        /// The checkpoint's key.
        location: String,
        /// What was found.
        reason: String,
    },
    /// A renewal refused: the lease was taken over or released.
    #[error("lease {location} lost: {reason}")]
    LeaseLost {
        /// The lease's key.
        location: String,
        /// What was found.
        reason: String,
    },
    /// The definition this holder delivers was deleted, or replaced by a
    /// later one of the same name.
    #[error("delivery stream {name}: definition {incarnation} was deleted or replaced")]
    DefinitionGone {
        /// The delivery stream.
        name: String,
        /// The incarnation delivered.
        incarnation: u64,
    },
    /// A KV bucket prefix that does not make a bucket name.
    #[error("invalid firehose KV bucket {0:?}: [a-zA-Z0-9_-]+ expected")]
    InvalidBucket(String),
    /// A collector id that cannot name a holder (empty or over 256 bytes).
    #[error("invalid collector id {0:?}: 1 to 256 bytes expected")]
    InvalidCollectorId(String),
    /// Lease timing that leaves no room for renewals.
    #[error("lease timing {0}")]
    InvalidTiming(String),
    /// JetStream (KV) failed.
    #[error("JetStream KV {op} {key}: {source}")]
    Kv {
        /// What was being done.
        op: &'static str,
        /// The key (or bucket).
        key: String,
        /// The failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StateError {
    /// Whether the holder must stop delivering (fenced, definition gone,
    /// lease lost), rather than retry.
    pub fn ends_delivery(&self) -> bool {
        matches!(self, Self::Fenced { .. } | Self::DefinitionGone { .. } | Self::LeaseLost { .. })
    }
}

/// Where the delivery streams' state lives (see the module header).
pub trait FirehoseState: Send + Sync + fmt::Debug {
    /// Whether other collectors share this state (so definitions can change
    /// under the manager, and leases are contended).
    fn shared(&self) -> bool;

    /// The lease timing; `None`: leases never expire (file state).
    fn lease_timing(&self) -> Option<LeaseTiming>;

    /// Every API-created definition.
    ///
    /// # Errors
    /// The state cannot be read or holds something that is no definition.
    fn load_definitions(&self) -> BoxFuture<'_, Result<Vec<Definition>, StateError>>;

    /// Adds a definition if none of its name exists; its incarnation.
    ///
    /// # Errors
    /// [`StateError::Exists`] when the name is taken (also by a concurrent
    /// creation on another collector: exactly one wins), or a write failure.
    fn create_definition<'a>(
        &'a self,
        spec: &'a DeliverySpec,
    ) -> BoxFuture<'a, Result<u64, StateError>>;

    /// Removes a definition.
    ///
    /// # Errors
    /// [`StateError::NotFound`], or a write failure.
    fn delete_definition<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), StateError>>;

    /// Removes the checkpoint of a deleted definition (`incarnation`), so
    /// neither a holder of it nor a later definition of the same name
    /// resumes it. Called after the collector's own delivery task stopped.
    ///
    /// # Errors
    /// A write failure.
    fn delete_checkpoint<'a>(
        &'a self,
        name: &'a str,
        incarnation: u64,
    ) -> BoxFuture<'a, Result<(), StateError>>;

    /// Tries to take the lease of `name` for this collector.
    ///
    /// # Errors
    /// The state cannot be read or written; try again later.
    fn acquire_lease<'a>(
        &'a self,
        name: &'a str,
        incarnation: u64,
    ) -> BoxFuture<'a, Result<LeaseAttempt, StateError>>;

    /// Extends a held lease.
    ///
    /// # Errors
    /// [`StateError::LeaseLost`] when another collector took it; another
    /// error when the state cannot be reached (the lease may still be ours:
    /// try again until [`Lease::valid_until`]).
    fn renew_lease<'a>(&'a self, lease: &'a mut Lease) -> BoxFuture<'a, Result<(), StateError>>;

    /// Gives a lease up so another collector can take it at once (nothing if
    /// it was taken over meanwhile).
    ///
    /// # Errors
    /// The state cannot be written; the lease then expires by itself.
    fn release_lease(&self, lease: Lease) -> BoxFuture<'_, Result<(), StateError>>;

    /// The checkpoint of the delivery stream `lease` is for, loaded and saved
    /// as its holder.
    fn checkpoints(&self, lease: &Lease) -> Arc<dyn CheckpointStore>;
}

/// One delivery stream's checkpoint, as seen by one lease holder.
pub trait CheckpointStore: Send + Sync + fmt::Debug {
    /// Where it lives (a file, a KV key), for messages.
    fn location(&self) -> PathBuf;

    /// Claims the checkpoint for this holder and returns it (an empty one if
    /// there is none), checked against the delivery stream and source.
    ///
    /// # Errors
    /// [`FirehoseError::Checkpoint`] for a foreign or unreadable checkpoint;
    /// [`FirehoseError::State`] with [`StateError::Fenced`] when a later
    /// lease holder claimed it, [`StateError::DefinitionGone`] when its
    /// definition was deleted or replaced.
    fn load<'a>(
        &'a self,
        delivery_stream: &'a str,
        source_stream: &'a str,
    ) -> BoxFuture<'a, Result<Checkpoint, FirehoseError>>;

    /// Replaces the checkpoint, durably.
    ///
    /// # Errors
    /// A write failure (the previous checkpoint is still in place), or
    /// [`StateError::Fenced`]: another holder claimed it since this holder's
    /// last write; this holder must stop delivering.
    fn save(&self, checkpoint: Checkpoint) -> BoxFuture<'_, Result<(), FirehoseError>>;
}
