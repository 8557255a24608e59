//! A [`StreamStore`] on NATS JetStream, for fleets that outgrow one machine:
//! several stateless collectors share one JetStream cluster, which replicates
//! and stores every record (`--store nats://HOST:PORT[,...]`).
//!
//! # Mapping
//!
//! - **One JetStream stream per Weir shard**, `<prefix>_<stream id>_<shard
//!   index>`, file storage, the configured replicas, `max_age` = the Weir
//!   stream's retention, deletes and purges denied. Subjects
//!   `<prefix>.<stream id>.<shard index>.>`. One stream per shard (rather
//!   than one subject per shard in a stream) because a shard closed by a
//!   reshard is *sealed*, which JetStream does per stream, and because each
//!   shard then gets its own sequence space and raft group.
//! - **One Weir append = one JetStream message per shard it touches** (the
//!   records packed as `pack` documents), so the records of one append to one
//!   shard are acknowledged together by one replicated write. An append
//!   larger than the server's `max_payload` is cut into several messages
//!   (`pack::chunks`, deterministic).
//! - **Offsets** are `js_sequence << 16 | index of the record in its
//!   message`: strictly increasing in the shard, so Kinesis sequence numbers
//!   (shard index, offset) keep their meaning: AT/AFTER_SEQUENCE_NUMBER are
//!   exact, TRIM_HORIZON is the first retained message, LATEST is just after
//!   the last one.
//! - **Arrival time** is the message's JetStream timestamp, assigned by the
//!   stream leader; AT_TIMESTAMP binary-searches the sequences by it.
//! - **The catalog** (streams, shards, hash ranges, lineage, status, mode,
//!   tags) is a KV bucket, changed only by compare-and-set (`catalog`).
//!   CreateStream takes the name first (a `create` of the key, status
//!   CREATING), then creates the shard streams and sets ACTIVE: of
//!   collectors creating one stream at once (MQTT auto-creation from many
//!   connections) only the winner creates JetStream streams, and appends
//!   meeting CREATING wait for ACTIVE (bounded by `append::REROUTE_WAIT`). A
//!   creator that dies in between leaves the stream CREATING; DeleteStream
//!   removes it.
//! - **Acknowledgement stays durable first**: an append answers only after
//!   JetStream acknowledged every publish it made, which with R3 means a
//!   quorum stored it.
//!
//! # Idempotent producer batches
//!
//! A batch's records for a shard are published on the subject
//! `<...>.p.<hex producer id>` with headers `Weir-Batch: <batch seq>` and
//! `Weir-Chunk: <k>/<n>`, and with `Nats-Expected-Last-Subject-Sequence` set
//! to the sequence of that producer's previous message in the shard (0 for
//! none). Before publishing, the store reads the producer's last message in
//! the shard (and, if the shard has none, in its parents): a batch at or
//! below the last batch seen is a duplicate there and appends nothing; a
//! batch whose first chunks landed before a failure publishes only the rest.
//! The expected-sequence header makes the check and the publish one atomic
//! step on the stream leader: two collectors handling the same re-send at
//! once cannot both append it (the loser's publish is refused, it reads
//! again and finds the batch). This holds across collector restarts and
//! across collectors, for as long as the producer's last message in that
//! shard is retained (the stream's retention, at least 24 hours), not only
//! for JetStream's two-minute de-duplication window.
//!
//! # Resharding
//!
//! `reshard` creates the children's JetStream streams, then writes the
//! catalog (parents closed with a pending end, children open) by
//! compare-and-set, then seals the parents' streams and records their exact
//! end. A collector still routing by the old catalog publishes to a parent
//! until the seal: its record lands in the parent (before the end recorded
//! afterwards); after the seal the publish is refused and the append reads
//! the catalog again and goes to the child. Each record lands exactly once.
//! A collector that dies between the catalog write and the seal leaves a
//! pending end; any collector that meets it finishes the seal.
//!
//! # Retention
//!
//! Open shards expire records through `max_age`. A sealed stream keeps its
//! messages (JetStream does not apply limits to sealed streams), so reads
//! skip a closed shard's records older than the retention, and a closed
//! shard whose records have all expired is removed with its stream.
//!
//! - `settings`: [`JetStreamSettings`] and connecting;
//! - `pack`: the message payload format;
//! - `catalog`: the KV catalog and its cache;
//! - `append`: appends and idempotent batches;
//! - `read`: starting positions and reads;
//! - `reshard`: split, merge, shard count, sealing.

mod append;
pub mod catalog;
pub mod pack;
mod read;
mod reshard;
pub mod settings;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, stream};

use super::backend::{
    Appended, CreateStreamOptions, NewRecord, ProducerBatch, ReadBatch, ReadLimits, SettingsChange,
    ShardLifetime, ShardPosition, StartingPosition, StreamDescription, StreamDetails,
    StreamSettings, StreamStore,
};
use super::catalog::{ShardMeta, StreamMeta, StreamStatus};
use super::clock::{Clock, SystemClock};
use super::error::StoreError;
use super::log_store::{settings_of, validate_create, validate_retention, validate_tag_count};
use super::stream::describe;
use super::throttle::WriteLimiter;
use catalog::KvCatalog;
pub use settings::{JetStreamSettings, SettingsError};

/// The server `max_payload` below which the largest Kinesis records (1 MiB
/// of data plus key and framing) no longer fit one message.
pub const MIN_COMFORTABLE_PAYLOAD: usize = 2 << 20;

/// Bits of an offset that hold the record's index in its message.
pub const INDEX_BITS: u32 = 16;

/// A store whose records live in JetStream. Cheap to clone.
#[derive(Clone)]
pub struct JetStreamStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    settings: JetStreamSettings,
    catalog: KvCatalog,
    /// Largest message payload the servers take.
    max_payload: usize,
    clock: SystemClock,
    limiters: Mutex<HashMap<u64, Arc<WriteLimiter>>>,
}

impl std::fmt::Debug for JetStreamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamStore")
            .field("servers", &self.inner.settings.servers)
            .field("prefix", &self.inner.settings.prefix)
            .finish_non_exhaustive()
    }
}

/// A JetStream failure as a store error.
pub(super) fn backend_error(op: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend { op, reason: e.to_string() }
}

/// Offset of record `index` of message `seq`.
pub fn offset_of(seq: u64, index: u64) -> u64 {
    (seq << INDEX_BITS) | index
}

/// (message sequence, record index) of an offset.
pub fn split_offset(offset: u64) -> (u64, u64) {
    (offset >> INDEX_BITS, offset & ((1 << INDEX_BITS) - 1))
}

impl JetStreamStore {
    /// Connects and opens (creating it if missing) the catalog bucket.
    ///
    /// # Errors
    /// A wrong setting, unreachable servers, refused credentials, JetStream
    /// not enabled, or more replicas than the cluster can place: each naming
    /// the setting, within a few seconds.
    pub async fn connect(settings: JetStreamSettings) -> Result<Self, SettingsError> {
        let client = settings.connect().await?;
        let js = jetstream::new(client.clone());
        let bucket = format!("{}_catalog", settings.prefix);
        let kv = catalog::open_bucket(&js, &bucket, settings.replicas, "Weir stream catalog")
            .await
            .map_err(|e| bucket_error(&settings, &e))?;
        let max_payload = client.server_info().max_payload;
        if max_payload < MIN_COMFORTABLE_PAYLOAD {
            tracing::warn!(
                max_payload,
                "the NATS servers' max_payload is below 2 MiB: records near Kinesis's 1 MiB \
                 limit will be refused; set max_payload: 8MB in the server configuration"
            );
        }
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                js,
                settings,
                catalog: KvCatalog::new(kv),
                max_payload: max_payload.max(64 * 1024),
                clock: SystemClock,
                limiters: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The JetStream context (for other state kept in the cluster, such as
    /// the firehose's).
    pub fn context(&self) -> &jetstream::Context {
        &self.inner.js
    }

    /// The settings it was opened with.
    pub fn settings(&self) -> &JetStreamSettings {
        &self.inner.settings
    }

    fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    fn prefix(&self) -> &str {
        &self.inner.settings.prefix
    }

    /// The JetStream stream holding shard `index` of stream `id`.
    pub(super) fn stream_name(&self, id: u64, index: u64) -> String {
        format!("{}_{id}_{index}", self.prefix())
    }

    /// The subject prefix of shard `index` of stream `id`.
    pub(super) fn subject_base(&self, id: u64, index: u64) -> String {
        format!("{}.{id}.{index}", self.prefix())
    }

    fn limiter(&self, stream_id: u64) -> Arc<WriteLimiter> {
        let mut l = self.inner.limiters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        l.entry(stream_id).or_default().clone()
    }

    /// Creates (or finds, if a racing collector made it) the JetStream
    /// stream of a shard.
    async fn create_shard_stream(
        &self,
        id: u64,
        index: u64,
        retention_hours: u32,
    ) -> Result<(), StoreError> {
        let config = stream::Config {
            name: self.stream_name(id, index),
            subjects: vec![format!("{}.>", self.subject_base(id, index))],
            storage: stream::StorageType::File,
            num_replicas: self.inner.settings.replicas,
            max_age: retention(retention_hours),
            deny_delete: true,
            deny_purge: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::Old,
            description: Some(format!("Weir stream {id}, shard {index}")),
            ..stream::Config::default()
        };
        match self.inner.js.get_or_create_stream(config).await {
            Ok(_) => Ok(()),
            Err(e) => Err(backend_error("creating a shard stream", e)),
        }
    }

    async fn delete_shard_stream(&self, id: u64, index: u64) -> Result<(), StoreError> {
        match self.inner.js.delete_stream(self.stream_name(id, index)).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("not found") => Ok(()),
            Err(e) => Err(backend_error("deleting a shard stream", e)),
        }
    }

    /// Reads a stream, finishing any reshard a collector left half done.
    async fn meta(&self, name: &str) -> Result<catalog::Versioned, StoreError> {
        let v = self.inner.catalog.read(name).await?;
        if v.meta
            .shards
            .iter()
            .any(|s| s.closed.is_some_and(|c| c.end_offset == catalog::PENDING_END))
        {
            reshard::finish_pending(self, name).await
        } else {
            Ok(v)
        }
    }

    /// Applies `change` to stream `name` by compare-and-set, retrying on
    /// newer values; returns the written meta.
    async fn change<F>(&self, name: &str, mut change: F) -> Result<StreamMeta, StoreError>
    where
        F: FnMut(&mut StreamMeta) -> Result<(), StoreError> + Send,
    {
        for _ in 0..catalog::MAX_CAS_RETRIES {
            let mut v = self.meta(name).await?;
            change(&mut v.meta)?;
            if self.inner.catalog.update(&v.meta, v.revision).await?.is_some() {
                return Ok(v.meta);
            }
        }
        Err(StoreError::LimitExceeded(format!("too many concurrent changes of {name:?}")))
    }
}

fn retention(hours: u32) -> Duration {
    Duration::from_secs(u64::from(hours) * 3600)
}

fn bucket_error(settings: &JetStreamSettings, e: &StoreError) -> SettingsError {
    let text = e.to_string();
    let lower = text.to_lowercase();
    let (setting, message) = if lower.contains("insufficient resources")
        || lower.contains("replicas")
        || lower.contains("no suitable peers")
    {
        (
            "replicas",
            format!(
                "the cluster cannot place {} replicas (fewer servers with JetStream?): {text}",
                settings.replicas
            ),
        )
    } else if lower.contains("no responders") || lower.contains("not enabled") {
        ("servers", format!("JetStream is not enabled on {}: {text}", settings.servers.join(",")))
    } else if lower.contains("permission") || lower.contains("authorization") {
        ("user", format!("not allowed to use JetStream: {text}"))
    } else {
        ("servers", text)
    };
    SettingsError { setting, message }
}

impl StreamStore for JetStreamStore {
    async fn create_stream(
        &self,
        name: &str,
        options: CreateStreamOptions,
    ) -> Result<StreamDescription, StoreError> {
        self.create_stream_with(name, options, StreamSettings::default()).await
    }

    async fn create_stream_with(
        &self,
        name: &str,
        options: CreateStreamOptions,
        settings: StreamSettings,
    ) -> Result<StreamDescription, StoreError> {
        validate_create(name, &options, &settings)?;
        match self.inner.catalog.read(name).await {
            Ok(_) => return Err(StoreError::StreamExists(name.to_owned())),
            Err(StoreError::StreamNotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let id = self.inner.catalog.next_stream_id().await?;
        let now = self.now_ms();
        let count = u64::from(options.shard_count);
        let shards = ShardMeta::uniform(count, now)?;
        let mut meta = StreamMeta {
            id,
            name: name.to_owned(),
            status: StreamStatus::Creating,
            created_ms: now,
            retention_hours: options.retention_hours,
            next_shard_index: count,
            shards,
            mode: settings.mode,
            write_limits: settings.write_limits,
            tags: settings.tags,
        };
        // The name is taken first, as CREATING: of collectors creating the
        // same stream at once (MQTT auto-creation from many connections) one
        // wins here and only it creates shard streams; the others answer
        // StreamExists at once, and their appends wait for ACTIVE.
        let revision = self.inner.catalog.create(&meta).await?;
        let mut made = Ok(());
        for i in 0..count {
            made = self.create_shard_stream(id, i, options.retention_hours).await;
            if made.is_err() {
                break;
            }
        }
        if let Err(e) = made {
            for i in 0..count {
                let _ = self.delete_shard_stream(id, i).await;
            }
            let _ = self.inner.catalog.remove(name).await;
            return Err(e);
        }
        meta.status = StreamStatus::Active;
        if self.inner.catalog.update(&meta, revision).await?.is_none() {
            // Changed while CREATING: only DeleteStream does that.
            return Err(StoreError::StreamNotFound(name.to_owned()));
        }
        tracing::info!(stream = name, shards = count, id, "stream created on JetStream");
        Ok(describe(&meta))
    }

    async fn delete_stream(&self, name: &str) -> Result<(), StoreError> {
        let meta = self
            .change(name, |m| {
                m.status = StreamStatus::Deleting;
                Ok(())
            })
            .await?;
        for s in &meta.shards {
            self.delete_shard_stream(meta.id, s.index).await?;
        }
        self.inner.catalog.remove(name).await?;
        tracing::info!(stream = name, "stream deleted from JetStream");
        Ok(())
    }

    async fn list_streams(&self) -> Result<Vec<String>, StoreError> {
        let mut names: Vec<String> = self
            .inner
            .catalog
            .all()
            .await?
            .into_iter()
            .filter(|s| s.status != StreamStatus::Deleting)
            .map(|s| s.name)
            .collect();
        names.sort();
        Ok(names)
    }

    async fn describe_stream(&self, name: &str) -> Result<StreamDescription, StoreError> {
        let v = self.meta(name).await?;
        let v = reshard::expire_closed(self, v).await?;
        Ok(describe(&v.meta))
    }

    async fn append(
        &self,
        stream: &str,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        let results = append::append(self, stream, records, None).await?;
        Ok(super::backend::untagged(results))
    }

    async fn append_batch(
        &self,
        stream: &str,
        producer: ProducerBatch,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Result<Option<Appended>, StoreError>>, StoreError> {
        let max = weir_wire::batch::MAX_PRODUCER_ID_BYTES;
        if producer.producer_id.is_empty() || producer.producer_id.len() > max {
            return Err(StoreError::InvalidArgument(format!(
                "producer id must be 1 to {max} bytes, not {}",
                producer.producer_id.len()
            )));
        }
        append::append(self, stream, records, Some(producer)).await
    }

    async fn position(
        &self,
        stream: &str,
        shard_id: &str,
        start: StartingPosition,
    ) -> Result<ShardPosition, StoreError> {
        read::position(self, stream, shard_id, start).await
    }

    async fn read(
        &self,
        stream: &str,
        from: ShardPosition,
        limits: ReadLimits,
    ) -> Result<ReadBatch, StoreError> {
        read::read(self, stream, from, limits).await
    }

    async fn split_shard(
        &self,
        stream: &str,
        shard_id: &str,
        new_starting_hash_key: u128,
    ) -> Result<(), StoreError> {
        reshard::split(self, stream, shard_id, new_starting_hash_key).await
    }

    async fn merge_shards(
        &self,
        stream: &str,
        shard_id: &str,
        adjacent_shard_id: &str,
    ) -> Result<(), StoreError> {
        reshard::merge(self, stream, shard_id, adjacent_shard_id).await
    }

    async fn update_shard_count(&self, stream: &str, target: u32) -> Result<(), StoreError> {
        reshard::update_shard_count(self, stream, target).await
    }

    async fn set_retention(&self, stream: &str, hours: u32) -> Result<(), StoreError> {
        validate_retention(hours)?;
        let meta = self
            .change(stream, |m| {
                m.retention_hours = hours;
                Ok(())
            })
            .await?;
        for s in meta.shards.iter().filter(|s| s.is_open()) {
            let name = self.stream_name(meta.id, s.index);
            let mut js_stream = self
                .inner
                .js
                .get_stream(&name)
                .await
                .map_err(|e| backend_error("reading a shard stream", e))?;
            let mut config = js_stream
                .info()
                .await
                .map_err(|e| backend_error("reading a shard stream", e))?
                .config
                .clone();
            config.max_age = retention(hours);
            self.inner
                .js
                .update_stream(config)
                .await
                .map_err(|e| backend_error("changing a shard stream's max age", e))?;
        }
        Ok(())
    }

    async fn stream_details(&self, name: &str) -> Result<StreamDetails, StoreError> {
        let v = self.meta(name).await?;
        let v = reshard::expire_closed(self, v).await?;
        let lifetimes = v
            .meta
            .shards
            .iter()
            .map(|s| {
                (
                    s.index,
                    ShardLifetime {
                        created_ms: s.created_ms,
                        closed_ms: s.closed.map(|c| c.closed_ms),
                    },
                )
            })
            .collect();
        Ok(StreamDetails {
            description: describe(&v.meta),
            settings: settings_of(&v.meta),
            lifetimes,
        })
    }

    async fn change_stream_settings(
        &self,
        name: &str,
        changes: Vec<SettingsChange>,
    ) -> Result<StreamSettings, StoreError> {
        let meta = self
            .change(name, |m| {
                let mut next = settings_of(m);
                for c in &changes {
                    match c {
                        SettingsChange::Mode(mode) => next.mode = *mode,
                        SettingsChange::WriteLimits(on) => next.write_limits = *on,
                        SettingsChange::AddTags(tags) => {
                            for (k, v) in tags {
                                next.tags.insert(k.clone(), v.clone());
                            }
                        }
                        SettingsChange::RemoveTags(keys) => {
                            for k in keys {
                                next.tags.remove(k);
                            }
                        }
                    }
                }
                validate_tag_count(next.tags.len()).map_err(|_| {
                    StoreError::LimitExceeded(format!(
                        "stream {name:?} would have {} tags, more than {}",
                        next.tags.len(),
                        super::backend::MAX_TAGS_PER_STREAM
                    ))
                })?;
                m.mode = next.mode;
                m.write_limits = next.write_limits;
                m.tags = next.tags;
                Ok(())
            })
            .await?;
        Ok(settings_of(&meta))
    }

    async fn shared_token_key(&self) -> Result<Option<[u8; 32]>, StoreError> {
        self.inner.catalog.token_key().await.map(Some)
    }

    async fn close(&self) {
        // Every append already waited for its acknowledgements; flush what
        // the client still buffers (nothing acknowledged depends on it).
        let _ = tokio::time::timeout(Duration::from_secs(5), self.inner.client.flush()).await;
    }
}
