//! Firehose delivery streams: records of a Weir data stream written out in
//! buffered, compressed batches, exactly once, the way Kinesis Data Firehose
//! delivers them (issue #7).
//!
//! - `config`: [`DeliveryConfig`], the buffering hints and their bounds, the
//!   output format and compression.
//! - `prefix`: [`PrefixTemplate`], `!{timestamp:yyyy/MM/dd/HH}`-style
//!   prefixes rendered from the oldest record of a batch (UTC).
//! - `encode`: a batch's records into an object body.
//! - `checkpoint`: [`Checkpoint`], the consumer's durable progress per shard
//!   (file format in its header).
//! - `destination`: the [`Destination`] trait and [`DirectoryDestination`]
//!   (object and error output naming in its header).
//! - `s3`: the S3 destination (`object_store`), `http`: the HTTP endpoint
//!   destination (Firehose's HTTP delivery contract, `reqwest`).
//! - `partition`: dynamic partitioning, `!{partitionKeyFromQuery:<name>}`
//!   from a JSON pointer or dotted path into each record.
//! - `query`: [`JsonQuery`](query::JsonQuery), a JSON pointer or dotted path
//!   into a record, parsed once (partition keys and Parquet columns).
//! - `delivery`: [`DeliveryStream`], the checkpointed consumer per shard that
//!   follows resharding and flushes by size or interval; retries with backoff
//!   for the retry duration, then the error output; pauses while the
//!   destination's disk is full ([`DeliveryFailure`]); the metrics.
//! - `spec`: [`DeliverySpec`], a delivery stream's definition as declared
//!   and as stored.
//! - `state`: [`FirehoseState`](state::FirehoseState), where definitions,
//!   checkpoints and delivery leases live: files of one collector, or a
//!   JetStream KV bucket shared by several (lease and fencing in its header).
//! - `manager`: [`Manager`], the running delivery streams of a collector
//!   (`[[firehose]]` and API-created, persisted), one task each; `worker`:
//!   that task, delivering only while it holds the delivery stream's lease.
//! - `parquet`: [`ParquetSchema`], JSON records converted to one Parquet file
//!   per batch (`parquet` feature).
//! - `error`: [`FirehoseError`].

pub mod checkpoint;
pub mod config;
pub mod delivery;
pub mod destination;
pub mod encode;
pub mod error;
pub mod http;
pub mod manager;
pub mod parquet;
pub mod partition;
pub mod prefix;
pub mod query;
pub mod s3;
pub mod spec;
pub mod state;
mod worker;

pub use checkpoint::{Checkpoint, PendingBatch, ShardCheckpoint};
pub use config::{
    BufferingHints, Compression, DEFAULT_BUFFER_INTERVAL_SECS, DEFAULT_BUFFER_SIZE_MIB,
    DeliveryConfig, MAX_BUFFER_INTERVAL_SECS, MAX_BUFFER_SIZE_MIB, MIN_BUFFER_INTERVAL_SECS,
    MIN_BUFFER_SIZE_MIB, RecordFormat,
};
pub use delivery::{DeliveredObject, DeliveryFailure, DeliveryStream, PollReport};
pub use destination::{DEFAULT_MIN_FREE_BYTES, Destination, DirectoryDestination, object_key};
pub use error::FirehoseError;
pub use manager::{
    DeliverySpec, Manager, ManagerError, Source, default_directory, direct_put_stream,
};
pub use parquet::{ColumnType, ParquetColumn, ParquetCompression, ParquetFormat, ParquetSchema};
pub use prefix::PrefixTemplate;
