//! The storage boundary: what a stream store does, whatever it is built on.
//!
//! The MQTT ingest and the Kinesis API talk to a [`StreamStore`]. The embedded
//! [`LogStore`](super::LogStore) implements it on local segment files; a NATS
//! JetStream backend implements the same operations for fleets that outgrow one
//! machine. The types here are the vocabulary both sides share; none of them
//! knows about MQTT, JSON or Kinesis's wire shapes.

use std::future::Future;

use bytes::Bytes;
pub use bytestring::ByteString;
use weir_wire::HashRange;

use super::catalog::StreamStatus;
use super::error::StoreError;
pub use super::producer::ProducerBatch;
use super::sequence::SequenceNumber;

/// Limits of one read.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// Most records returned.
    pub max_records: usize,
    /// Most data bytes returned (at least one record is returned if any is
    /// available, whatever its size).
    pub max_bytes: usize,
}

/// A record to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    /// Partition key (1 to 256 characters, checked by the store).
    pub partition_key: String,
    /// The data blob (at most 1 MiB).
    pub data: Bytes,
    /// The producer's explicit hash key, if it gave one.
    pub explicit_hash_key: Option<u128>,
    /// The producer's own timestamp, if it gave one.
    pub producer_timestamp_ms: Option<u64>,
}

/// Options of a new stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateStreamOptions {
    /// Number of shards (1 to [`MAX_SHARDS_PER_STREAM`]).
    pub shard_count: u32,
    /// Retention in hours (24 to 8,760).
    pub retention_hours: u32,
}

impl Default for CreateStreamOptions {
    fn default() -> Self {
        Self { shard_count: 1, retention_hours: DEFAULT_RETENTION_HOURS }
    }
}

/// Retention of a stream created without one (Kinesis's default).
pub const DEFAULT_RETENTION_HOURS: u32 = 24;
/// Shortest retention.
pub const MIN_RETENTION_HOURS: u32 = 24;
/// Longest retention (one year).
pub const MAX_RETENTION_HOURS: u32 = 8_760;
/// Most open shards in one stream. Each open shard has a writer thread in the
/// embedded store, so this bounds threads per stream.
pub const MAX_SHARDS_PER_STREAM: u32 = 1_024;

/// A stream as described to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamDescription {
    /// Name.
    pub name: String,
    /// Store-wide unique id; positions name it so a stream created again under
    /// the same name does not accept the old stream's positions.
    pub id: u64,
    /// Status.
    pub status: StreamStatus,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
    /// Retention in hours.
    pub retention_hours: u32,
    /// Every shard not yet removed by retention, ordered by index.
    pub shards: Vec<ShardDescription>,
}

impl StreamDescription {
    /// The open shards, ordered by hash range.
    pub fn open_shards(&self) -> impl Iterator<Item = &ShardDescription> {
        let mut open: Vec<&ShardDescription> =
            self.shards.iter().filter(|s| s.ending_sequence.is_none()).collect();
        open.sort_by_key(|s| s.hash_range.start);
        open.into_iter()
    }
}

/// A shard as described to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardDescription {
    /// `shardId-000000000000`.
    pub shard_id: String,
    /// The number in the id.
    pub index: u64,
    /// Hash keys it owns.
    pub hash_range: HashRange,
    /// The shard it was split or merged from.
    pub parent_shard_id: Option<String>,
    /// The other parent of a merge.
    pub adjacent_parent_shard_id: Option<String>,
    /// Sequence number of its first possible record.
    pub starting_sequence: SequenceNumber,
    /// Set once closed: sequence number of its last record (of its first
    /// possible record if it never held one).
    pub ending_sequence: Option<SequenceNumber>,
}

/// Where an appended record went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Its shard.
    pub shard_id: String,
    /// Its sequence number.
    pub sequence: SequenceNumber,
    /// Arrival time assigned by the store, ms since the Unix epoch.
    pub arrival_ms: u64,
}

/// Where a reader starts (Kinesis's ShardIteratorType).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartingPosition {
    /// The oldest record still retained.
    TrimHorizon,
    /// Just after the newest record: only records appended later.
    Latest,
    /// At this record.
    AtSequence(SequenceNumber),
    /// Just after this record.
    AfterSequence(SequenceNumber),
    /// The first record that arrived at or after this time (ms since epoch).
    AtTimestamp(u64),
}

/// A resumable position in a shard: what a consumer keeps between reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShardPosition {
    /// The stream's id (not its name).
    pub stream_id: u64,
    /// The shard's index.
    pub shard_index: u64,
    /// Offset of the next record to read.
    pub offset: u64,
}

impl ShardPosition {
    /// A compact text form, `<stream id>.<shard index>.<offset>`.
    pub fn to_token(&self) -> String {
        format!("{}.{}.{}", self.stream_id, self.shard_index, self.offset)
    }

    /// Parses [`to_token`](Self::to_token)'s form.
    pub fn from_token(token: &str) -> Option<Self> {
        let mut parts = token.split('.');
        let p = Self {
            stream_id: parts.next()?.parse().ok()?,
            shard_index: parts.next()?.parse().ok()?,
            offset: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(p)
    }
}

/// A record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Its sequence number.
    pub sequence: SequenceNumber,
    /// Arrival time assigned by the store, ms since the Unix epoch.
    pub arrival_ms: u64,
    /// Partition key (a `str` that shares the read buffer).
    pub partition_key: ByteString,
    /// Data blob.
    pub data: Bytes,
    /// The producer's explicit hash key, if it gave one.
    pub explicit_hash_key: Option<u128>,
    /// The producer's timestamp, if it gave one.
    pub producer_timestamp_ms: Option<u64>,
}

/// The result of one read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBatch {
    /// Records in order (possibly none).
    pub records: Vec<StoredRecord>,
    /// Where the next read continues.
    pub next: ShardPosition,
    /// How far the last returned record is behind the shard's newest, in ms
    /// (0 when the read reached the end).
    pub millis_behind_latest: u64,
    /// Set when the shard is closed and every record of it has been read: the
    /// consumer moves on to these children.
    pub end_of_shard: Option<Vec<String>>,
}

/// An untagged append's results: a record of an append without a producer
/// tag is never a duplicate, so `Ok(None)` there is a store bug, reported as
/// an error rather than dropped.
pub(super) fn untagged(
    results: Vec<Result<Option<Appended>, StoreError>>,
) -> Vec<Result<Appended, StoreError>> {
    results
        .into_iter()
        .map(|r| {
            r.and_then(|a| {
                a.ok_or_else(|| {
                    StoreError::InvalidArgument(
                        "an untagged append was taken for a duplicate".into(),
                    )
                })
            })
        })
        .collect()
}

/// The operations every stream store offers.
///
/// Appends are acknowledged (their future resolves `Ok`) only once durable
/// under the store's durability policy. No operation edits or deletes a
/// record; only retention expiry removes them.
pub trait StreamStore: Send + Sync + 'static {
    /// Creates a stream with shards dividing the hash key space evenly.
    fn create_stream(
        &self,
        name: &str,
        options: CreateStreamOptions,
    ) -> impl Future<Output = Result<StreamDescription, StoreError>> + Send;

    /// Deletes a stream and all its records.
    fn delete_stream(&self, name: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Names of all streams, sorted.
    fn list_streams(&self) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// A stream's metadata and shards.
    fn describe_stream(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<StreamDescription, StoreError>> + Send;

    /// Appends records, each to the open shard owning its hash key. The
    /// result has one entry per record, in order; records of one call that go
    /// to the same shard keep their order.
    fn append(
        &self,
        stream: &str,
        records: Vec<NewRecord>,
    ) -> impl Future<Output = Result<Vec<Result<Appended, StoreError>>, StoreError>> + Send;

    /// Appends one batch of an idempotent producer. Like
    /// [`append`](Self::append), except that a shard which already holds this
    /// producer's batch (same or higher `batch_seq`, appended before a lost
    /// acknowledgement, a reconnect or a restart) appends nothing: its records
    /// answer `Ok(None)`. Exactly once per record, across crashes and
    /// reshards.
    fn append_batch(
        &self,
        stream: &str,
        producer: ProducerBatch,
        records: Vec<NewRecord>,
    ) -> impl Future<Output = Result<Vec<Result<Option<Appended>, StoreError>>, StoreError>> + Send;

    /// Resolves a starting position in a shard.
    fn position(
        &self,
        stream: &str,
        shard_id: &str,
        start: StartingPosition,
    ) -> impl Future<Output = Result<ShardPosition, StoreError>> + Send;

    /// Reads from a position, up to the limits.
    fn read(
        &self,
        stream: &str,
        from: ShardPosition,
        limits: ReadLimits,
    ) -> impl Future<Output = Result<ReadBatch, StoreError>> + Send;

    /// Splits an open shard at `new_starting_hash_key` into two children.
    fn split_shard(
        &self,
        stream: &str,
        shard_id: &str,
        new_starting_hash_key: u128,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Merges two adjacent open shards into one child.
    fn merge_shards(
        &self,
        stream: &str,
        shard_id: &str,
        adjacent_shard_id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Reshards to `target` open shards of even ranges (Kinesis's
    /// UNIFORM_SCALING), through splits and merges so lineage stays exact.
    fn update_shard_count(
        &self,
        stream: &str,
        target: u32,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Sets a stream's retention period in hours.
    fn set_retention(
        &self,
        stream: &str,
        hours: u32,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Creates a stream as [`create_stream`](Self::create_stream) does, with
    /// its settings (mode, write limits, tags) in the same catalog change.
    fn create_stream_with(
        &self,
        name: &str,
        options: CreateStreamOptions,
        settings: StreamSettings,
    ) -> impl Future<Output = Result<StreamDescription, StoreError>> + Send;

    /// A stream's description with its settings and each shard's lifetime,
    /// read in one consistent view.
    fn stream_details(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<StreamDetails, StoreError>> + Send;

    /// Applies `changes` in order, as one catalog change, and returns the
    /// settings that result. Adding tags past [`MAX_TAGS_PER_STREAM`] is
    /// refused with [`StoreError::LimitExceeded`] and changes nothing.
    fn change_stream_settings(
        &self,
        name: &str,
        changes: Vec<SettingsChange>,
    ) -> impl Future<Output = Result<StreamSettings, StoreError>> + Send;

    /// The key API tokens (shard iterators, page tokens) are signed with, when
    /// the store keeps one for every collector sharing it; `None` (the
    /// embedded store) means each collector keeps its own in its data
    /// directory.
    fn shared_token_key(
        &self,
    ) -> impl Future<Output = Result<Option<[u8; 32]>, StoreError>> + Send {
        async { Ok(None) }
    }

    /// Why the store cannot take appends right now (its disk below the
    /// free-space reserve), for `/health`; `None` when it can.
    fn degraded(&self) -> Option<String> {
        None
    }

    /// Closes the store once everything it acknowledged is durable; the
    /// collector calls it last, after its listeners finished their appends.
    fn close(&self) -> impl Future<Output = ()> + Send;
}

pub use super::catalog::{MAX_TAGS_PER_STREAM, StreamMode};

/// A stream's settings besides its shards and retention.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamSettings {
    /// Capacity mode, as reported to clients.
    pub mode: StreamMode,
    /// Whether each shard is held to 1 MiB/s and 1,000 records/s of writes.
    pub write_limits: bool,
    /// Tags, by key.
    pub tags: std::collections::BTreeMap<String, String>,
}

/// One change of a stream's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingsChange {
    /// Set the capacity mode.
    Mode(StreamMode),
    /// Turn per-shard write limits on or off.
    WriteLimits(bool),
    /// Add tags, replacing the values of keys already present.
    AddTags(Vec<(String, String)>),
    /// Remove tags by key; absent keys are ignored.
    RemoveTags(Vec<String>),
}

/// When a shard was created and closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardLifetime {
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
    /// Closing time (ms since the Unix epoch) once closed.
    pub closed_ms: Option<u64>,
}

/// What [`StreamStore::stream_details`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamDetails {
    /// The stream and its shards.
    pub description: StreamDescription,
    /// Its settings.
    pub settings: StreamSettings,
    /// Each shard's lifetime, by shard index.
    pub lifetimes: std::collections::BTreeMap<u64, ShardLifetime>,
}
