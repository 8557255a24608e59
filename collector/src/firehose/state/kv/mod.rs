//! [`KvState`]: the firehose state of several collectors in one JetStream KV
//! bucket, so any of them can create a delivery stream through the API and
//! exactly one delivers it at a time, another taking over when it dies.
//!
//! # The bucket
//!
//! `<prefix>firehose` (the prefix from the caller, e.g. `weir_` →
//! `weir_firehose`), history 1, file storage (stream `KV_<bucket>`, made as
//! `create_key_value` would). It is created with one replica
//! if missing; an operator who wants more creates it beforehand (an existing
//! bucket is used as it is). Values are limited by the server's
//! `max_payload` (1 MiB by default: a checkpoint of some 3,000 shards).
//! The bucket holds S3 and HTTP endpoint keys of API-created delivery
//! streams: restrict it to the collectors' NATS account.
//!
//! A delivery stream name (`[a-zA-Z0-9_.-]{1,64}`) becomes a key part by
//! replacing each `.` with `=` (which names never contain), so a name that
//! starts with a dot or holds `..` still makes a valid key; `a.b` →
//! `definition.a=b`.
//!
//! | key | value | written by |
//! |---|---|---|
//! | `definition.<name>` | one [`DeliverySpec`] as JSON, the format of an element of `delivery-streams.json` | CreateDeliveryStream: create-if-absent (expected revision 0, or the revision of a delete marker), so of two collectors creating the same name exactly one wins; DeleteDeliveryStream deletes it. Its revision is the definition's *incarnation*. |
//! | `checkpoint.<name>` | `{"incarnation": 7, "fencing_token": 42, "holder": "collector-a", "checkpoint": {...}}` | the lease holder, every save a compare-and-set on the revision of its own last write; `checkpoint` is the JSON of [`Checkpoint`] (the file format of [`checkpoint`](crate::firehose::checkpoint)), or `null` for a *tombstone* written when the definition `incarnation` was deleted |
//! | `lease.<name>` | `{"holder": "collector-a", "fencing_token": 42, "incarnation": 7, "expires_ms": 1700000010000, "duration_ms": 10000}` | the collector taking, renewing (compare-and-set on its last revision) or releasing it (delete with expected revision) |
//!
//! Lease fields: `holder` is the collector id; `fencing_token` is the KV
//! revision of the write that acquired the lease — `null` in that write
//! itself (its revision is only known from the server's acknowledgement),
//! set in every renewal; `incarnation` that of the definition delivered
//! (`0` for `[[firehose]]` ones); `expires_ms` (the holder's wall clock plus
//! `duration_ms`) is for operators only: no collector trusts another's wall
//! clock.
//!
//! # The lease
//!
//! - **Acquire.** The key is absent or a delete marker (released): write it
//!   with the revision expected (0, or the marker's). Otherwise it is taken
//!   over only once the waiting collector has seen the *same* revision for a
//!   whole lease duration on its own monotonic clock (its first sight of that
//!   revision, then a read at least [`LeaseTiming::duration`] later, then the
//!   write expecting that revision). Of several writers expecting the same
//!   revision exactly one succeeds. The acquiring write's revision is the
//!   fencing token: revisions of a bucket only grow, so a later acquisition
//!   always has a greater token.
//! - **Renew** every [`LeaseTiming::renew_every`]: a write expecting the
//!   revision of the holder's previous write. A refused write means the lease
//!   was taken over: the holder stops.
//! - **Stop in time.** Let `t_send` be when the holder sent its last
//!   successful write (acquisition or renewal) and `t_w ≥ t_send` when the
//!   server stored it. A waiting collector first sees that revision at
//!   `t_seen ≥ t_w` and takes over at `≥ t_seen + duration ≥ t_send +
//!   duration`. The holder stops delivering at `t_send + duration -
//!   safety_margin` (it drops the delivery, even in the middle of a poll):
//!   before anyone else can start, whatever the machines' wall clocks say,
//!   as long as their clocks run at nearly the same rate. A waiting collector
//!   reads the lease every `renew_every` and right when a duration has
//!   passed since it first saw a revision, so it takes over at most
//!   `duration + renew_every` after the holder's last renewal.
//!
//! # Fencing: why a holder that lost its lease moves no checkpoint
//!
//! The lease alone would rest on timing. The checkpoint does not: it is
//! written only by compare-and-set, and a new holder *claims* it before
//! delivering anything.
//!
//! 1. Claim (on opening the delivery stream, after acquiring the lease with
//!    token `T`): read `checkpoint.<name>` at revision `R`; refuse if its
//!    `incarnation` is greater than the lease's (the definition was replaced)
//!    or equal with `checkpoint: null` (deleted), or if its `fencing_token`
//!    is greater than `T` (a later holder claimed it); start empty if the key
//!    is absent or belongs to an earlier incarnation; then write the value
//!    back with `fencing_token: T` expecting revision `R` (retried from the
//!    read on a conflict, at most [`CLAIM_ATTEMPTS`] times).
//! 2. Every save writes expecting the revision of the holder's own previous
//!    write (the claim or the last save). Any other write to the key in
//!    between — a later holder's claim, a deletion's tombstone — changes the
//!    revision, so the stale holder's save is refused
//!    ([`StateError::Fenced`]) and it stops delivering.
//!
//! So the checkpoint's successive values form one chain in which each holder's
//! writes are contiguous and follow, through the claim, the last write of the
//! previous holder. Exactly-once follows as with one collector (see
//! [`delivery`](crate::firehose::delivery)): a batch is fixed as pending
//! (offsets and object key) in a successful save *before* its object is
//! written, so any object a stale holder writes belongs to a pending batch the
//! next holder's claim read; the next holder delivers that batch again, the
//! same records under the same key (names are derived from the shard and
//! sequence range, bodies from the immutable records), overwriting the
//! object, and only then moves past it. Records are never skipped (a holder
//! moves `next_offset` only past batches it delivered) and never in two
//! objects (batch boundaries are fixed in the chain before any object is
//! written).
//!
//! What remains: an HTTP endpoint can receive a batch twice (as on one
//! collector after a crash); and a stale holder still writing a destination
//! object after the lease passed on could, in theory, deliver a batch the
//! new holder later sends to the error output after its retry duration. The
//! stop-in-time rule above makes that need a process frozen for a whole
//! lease duration in the middle of an object write.
//!
//! # Deleting and creating again
//!
//! DeleteDeliveryStream deletes `definition.<name>`; once the collector's own
//! task stopped, it writes a tombstone to `checkpoint.<name>` (compare-and-set
//! loop, left alone if a later incarnation already owns the key), which fences
//! any other holder still delivering the old definition and makes its claims
//! fail. A definition created again under the same name has a greater revision
//! (incarnation), so its first holder starts empty instead of resuming. The
//! lease key is not deleted: its holder releases it, or it expires.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use async_nats::jetstream::kv::{CreateErrorKind, Operation, Store, UpdateErrorKind};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{
    CheckpointStore, Definition, FirehoseState, Lease, LeaseAttempt, LeaseTiming, StateError,
};
use crate::firehose::manager::DeliverySpec;
use checkpoint::KvCheckpoints;

mod checkpoint;

/// The bucket's name after the caller's prefix.
pub const BUCKET_SUFFIX: &str = "firehose";
/// Key prefix of definitions.
const DEFINITION_PREFIX: &str = "definition.";
/// Key prefix of checkpoints.
const CHECKPOINT_PREFIX: &str = "checkpoint.";
/// Key prefix of leases.
const LEASE_PREFIX: &str = "lease.";
/// Most compare-and-set rounds of one claim or tombstone against concurrent
/// writers (each round is a read and a write; more means a writer that never
/// stops, which only a second holder of the same lease could be).
pub const CLAIM_ATTEMPTS: usize = 8;
/// Longest collector id (it is written in every lease and checkpoint).
pub const MAX_COLLECTOR_ID_BYTES: usize = 256;

/// `<prefix>firehose`.
pub fn bucket_name(prefix: &str) -> String {
    format!("{prefix}{BUCKET_SUFFIX}")
}

fn key_part(name: &str) -> String {
    name.replace('.', "=")
}

fn definition_key(name: &str) -> String {
    format!("{DEFINITION_PREFIX}{}", key_part(name))
}

fn checkpoint_key(name: &str) -> String {
    format!("{CHECKPOINT_PREFIX}{}", key_part(name))
}

fn lease_key(name: &str) -> String {
    format!("{LEASE_PREFIX}{}", key_part(name))
}

fn kv_error<E>(op: &'static str, key: &str) -> impl FnOnce(E) -> StateError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let key = key.to_owned();
    move |e| StateError::Kv { op, key, source: Box::new(e) }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// The value of `lease.<name>`.
#[derive(Debug, Serialize, Deserialize)]
struct LeaseValue {
    holder: String,
    fencing_token: Option<u64>,
    incarnation: u64,
    expires_ms: u64,
    duration_ms: u64,
}

/// A revision of a lease first seen by this collector at `since`.
#[derive(Debug, Clone, Copy)]
struct Seen {
    revision: u64,
    since: Instant,
}

/// The firehose state of several collectors in a JetStream KV bucket (see
/// the module header).
#[derive(Debug, Clone)]
pub struct KvState {
    kv: Store,
    bucket: String,
    holder: String,
    timing: LeaseTiming,
    seen: Arc<Mutex<HashMap<String, Seen>>>,
}

impl KvState {
    /// Opens (creating it if missing) the bucket `<prefix>firehose` for the
    /// collector `collector_id`, with the default [`LeaseTiming`].
    ///
    /// # Errors
    /// An invalid prefix or id, or the bucket can be neither opened nor
    /// created.
    pub async fn open(
        context: jetstream::Context,
        prefix: &str,
        collector_id: &str,
    ) -> Result<Self, StateError> {
        Self::open_with_timing(context, prefix, collector_id, LeaseTiming::default()).await
    }

    /// [`open`](Self::open) with another lease timing (tests).
    ///
    /// # Errors
    /// As [`open`](Self::open); [`StateError::InvalidTiming`].
    pub async fn open_with_timing(
        context: jetstream::Context,
        prefix: &str,
        collector_id: &str,
        timing: LeaseTiming,
    ) -> Result<Self, StateError> {
        timing.validate()?;
        let bucket = bucket_name(prefix);
        let bucket_ok = bucket.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
        if !bucket_ok {
            return Err(StateError::InvalidBucket(bucket));
        }
        if collector_id.is_empty() || collector_id.len() > MAX_COLLECTOR_ID_BYTES {
            return Err(StateError::InvalidCollectorId(collector_id.chars().take(80).collect()));
        }
        // Created like the store's catalog bucket (`create_key_value` cannot
        // read a 2.9 server's account info), with one replica.
        let kv = crate::store::jetstream::catalog::open_bucket(
            &context,
            &bucket,
            1,
            "Weir firehose: delivery streams, checkpoints, leases",
        )
        .await
        .map_err(kv_error("opening bucket", &bucket))?;
        Ok(Self {
            kv,
            bucket,
            holder: collector_id.to_owned(),
            timing,
            seen: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// This collector's id.
    pub fn collector_id(&self) -> &str {
        &self.holder
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn lease_value(&self, token: Option<u64>, incarnation: u64) -> Result<Bytes, StateError> {
        let duration_ms = u64::try_from(self.timing.duration.as_millis()).unwrap_or(u64::MAX);
        let value = LeaseValue {
            holder: self.holder.clone(),
            fencing_token: token,
            incarnation,
            expires_ms: now_ms().saturating_add(duration_ms),
            duration_ms,
        };
        encode(&value, "lease")
    }

    /// How long this collector has seen `revision` as the lease of `name`.
    fn waited(&self, name: &str, revision: u64, now: Instant) -> Duration {
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let s = seen.entry(name.to_owned()).or_insert(Seen { revision, since: now });
        if s.revision != revision {
            *s = Seen { revision, since: now };
        }
        now.saturating_duration_since(s.since)
    }

    fn forget_seen(&self, name: &str) {
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name);
    }

    fn valid_until(&self, sent: Instant) -> Option<Instant> {
        Some(sent + self.timing.duration.saturating_sub(self.timing.safety_margin))
    }

    async fn acquire(&self, name: &str, incarnation: u64) -> Result<LeaseAttempt, StateError> {
        let key = lease_key(name);
        let entry = self.kv.entry(&key).await.map_err(kv_error("reading", &key))?;
        let sent = Instant::now();
        let expected = match entry {
            None => 0,
            Some(e) if e.operation != Operation::Put => e.revision,
            Some(e) => {
                let holder = serde_json::from_slice::<LeaseValue>(&e.value)
                    .map_or_else(|_| "(unreadable lease)".to_owned(), |v| v.holder);
                let waited = self.waited(name, e.revision, sent);
                if waited < self.timing.duration {
                    let left = self.timing.duration - waited;
                    return Ok(LeaseAttempt::Held {
                        holder,
                        retry_in: left.min(self.timing.renew_every),
                    });
                }
                tracing::info!(delivery_stream = %name, previous = %holder, revision = e.revision, "lease not renewed for a lease duration; taking over");
                e.revision
            }
        };
        let value = self.lease_value(None, incarnation)?;
        match self.kv.update(&key, value, expected).await {
            Ok(revision) => {
                self.forget_seen(name);
                let valid_until = self.valid_until(sent);
                Ok(LeaseAttempt::Acquired(Lease::new(
                    name,
                    &self.holder,
                    revision,
                    incarnation,
                    valid_until,
                )))
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(LeaseAttempt::Held {
                holder: "(another collector, just now)".to_owned(),
                retry_in: self.timing.renew_every,
            }),
            Err(e) => Err(kv_error("acquiring", &key)(e)),
        }
    }

    async fn renew(&self, lease: &mut Lease) -> Result<(), StateError> {
        let key = lease_key(lease.delivery_stream());
        let value = self.lease_value(Some(lease.token()), lease.incarnation())?;
        let sent = Instant::now();
        match self.kv.update(&key, value, lease.revision()).await {
            Ok(revision) => {
                lease.renewed(revision, self.valid_until(sent));
                Ok(())
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                Err(StateError::LeaseLost {
                    location: format!("{}/{key}", self.bucket),
                    reason: "it changed since this holder's last write (taken over or released)"
                        .into(),
                })
            }
            Err(e) => Err(kv_error("renewing", &key)(e)),
        }
    }

    async fn release(&self, lease: Lease) -> Result<(), StateError> {
        let key = lease_key(lease.delivery_stream());
        match self.kv.delete_expect_revision(&key, Some(lease.revision())).await {
            Ok(()) => Ok(()),
            // Taken over meanwhile: nothing of ours to release.
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(()),
            Err(e) => Err(kv_error("releasing", &key)(e)),
        }
    }

    async fn definitions(&self) -> Result<Vec<Definition>, StateError> {
        let mut keys = self.kv.keys().await.map_err(kv_error("listing", &self.bucket))?;
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(kv_error("listing", &self.bucket))?;
            if key.starts_with(DEFINITION_PREFIX) {
                names.push(key);
            }
        }
        let mut out = Vec::with_capacity(names.len());
        for key in names {
            let Some(entry) = self.kv.entry(&key).await.map_err(kv_error("reading", &key))? else {
                continue;
            };
            if entry.operation != Operation::Put {
                continue;
            }
            let spec: DeliverySpec =
                serde_json::from_slice(&entry.value).map_err(|e| StateError::Corrupt {
                    location: format!("{}/{key}", self.bucket),
                    reason: e.to_string(),
                })?;
            if definition_key(&spec.name) != key {
                return Err(StateError::Corrupt {
                    location: format!("{}/{key}", self.bucket),
                    reason: format!("holds the definition of {:?}", spec.name),
                });
            }
            out.push(Definition { spec, incarnation: entry.revision });
        }
        out.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        Ok(out)
    }

    async fn create(&self, spec: &DeliverySpec) -> Result<u64, StateError> {
        let key = definition_key(&spec.name);
        let value = encode(spec, "definition")?;
        match self.kv.create(&key, value).await {
            Ok(revision) => Ok(revision),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                Err(StateError::Exists(spec.name.clone()))
            }
            Err(e) => Err(kv_error("creating", &key)(e)),
        }
    }

    async fn delete(&self, name: &str) -> Result<(), StateError> {
        let key = definition_key(name);
        for _ in 0..CLAIM_ATTEMPTS {
            let entry = self.kv.entry(&key).await.map_err(kv_error("reading", &key))?;
            let revision = match entry {
                Some(e) if e.operation == Operation::Put => e.revision,
                _ => return Err(StateError::NotFound(name.to_owned())),
            };
            match self.kv.delete_expect_revision(&key, Some(revision)).await {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {}
                Err(e) => return Err(kv_error("deleting", &key)(e)),
            }
        }
        Err(contended(&self.bucket, &key))
    }
}

fn contended(bucket: &str, key: &str) -> StateError {
    StateError::Fenced {
        location: format!("{bucket}/{key}"),
        reason: format!("changed under every one of {CLAIM_ATTEMPTS} compare-and-set attempts"),
    }
}

fn encode<T: Serialize>(value: &T, what: &str) -> Result<Bytes, StateError> {
    serde_json::to_vec(value).map(Bytes::from).map_err(|e| StateError::Corrupt {
        location: what.to_owned(),
        reason: format!("encoding: {e}"),
    })
}

impl FirehoseState for KvState {
    fn shared(&self) -> bool {
        true
    }

    fn lease_timing(&self) -> Option<LeaseTiming> {
        Some(self.timing)
    }

    fn load_definitions(&self) -> BoxFuture<'_, Result<Vec<Definition>, StateError>> {
        Box::pin(self.definitions())
    }

    fn create_definition<'a>(
        &'a self,
        spec: &'a DeliverySpec,
    ) -> BoxFuture<'a, Result<u64, StateError>> {
        Box::pin(self.create(spec))
    }

    fn delete_definition<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(self.delete(name))
    }

    fn delete_checkpoint<'a>(
        &'a self,
        name: &'a str,
        incarnation: u64,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(checkpoint::write_tombstone(
            &self.kv,
            &self.bucket,
            &self.holder,
            name,
            incarnation,
        ))
    }

    fn acquire_lease<'a>(
        &'a self,
        name: &'a str,
        incarnation: u64,
    ) -> BoxFuture<'a, Result<LeaseAttempt, StateError>> {
        Box::pin(self.acquire(name, incarnation))
    }

    fn renew_lease<'a>(&'a self, lease: &'a mut Lease) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(self.renew(lease))
    }

    fn release_lease(&self, lease: Lease) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(self.release(lease))
    }

    fn checkpoints(&self, lease: &Lease) -> Arc<dyn CheckpointStore> {
        Arc::new(KvCheckpoints::new(self.kv.clone(), &self.bucket, lease))
    }
}
