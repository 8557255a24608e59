//! The stream store: sharded, replayable, immutable streams on local disk.
//!
//! [`StreamStore`] (`backend`) is the boundary the ingest and the API use,
//! with its vocabulary; [`LogStore`] is the embedded implementation. Each
//! module's header says its part; who calls whom, from the top down:
//!
//! ```text
//! log_store      LogStore: the whole impl, argument checks, stream lookup, catalog lock
//!   data_dir     opening the data directory (its layout), recovering every shard
//!   router       the append path over one stream's state
//!   reshard      split, merge, update_shard_count
//!   retention    expired segments and drained shards
//!     env        StoreEnv: data directory, config, clock; saving the catalog, new shards
//!     stream     StreamState, ShardHandle, the routing table; descriptions
//!       writer   one thread per open shard: group commit, fsync, segment rolls
//!       shard    ShardShared: a shard's segments, reads, retention deletes, opening
//!         recovery      checking and repairing segments at open
//!           segment_file  Segment: the one handle on a segment's .log/.index
//!             segment     the byte format: batches, index entries, file names
//! ```
//!
//! Beside them: `catalog` (metadata, `catalog.json`), `producer` (idempotent
//! producers and their snapshots), `throttle` (write limits), `sequence`,
//! `config`, `clock` and `error`. Files are replaced atomically through
//! [`weir_wire::durable_file`]. The modules that only the store's own parts
//! use are private.

pub mod backend;
pub mod catalog;
pub mod clock;
pub mod config;
mod data_dir;
mod env;
pub mod error;
#[cfg(feature = "jetstream")]
pub mod jetstream;
pub mod log_store;
pub mod producer;
pub mod recovery;
mod reshard;
pub mod retention;
mod router;
pub mod segment;
mod segment_file;
pub mod sequence;
pub mod shard;
pub mod space;
mod stream;
pub mod throttle;
pub mod writer;

pub use backend::{
    Appended, CreateStreamOptions, NewRecord, ReadBatch, ReadLimits, ShardDescription,
    ShardPosition, StartingPosition, StoredRecord, StreamDescription, StreamStore,
};
pub use backend::{SettingsChange, ShardLifetime, StreamDetails, StreamSettings};
pub use catalog::{StreamMode, StreamStatus};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{FsyncPolicy, StoreConfig};
pub use error::StoreError;
pub use log_store::LogStore;
pub use producer::ProducerBatch;
pub use retention::RetentionReport;
pub use sequence::SequenceNumber;
