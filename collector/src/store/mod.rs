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
//! producers and their snapshots), `throttle` (write limits), `space` (the
//! free-space reserve), `health` (failed shards), `file_io` (the file layer
//! segment writes and syncs go through, where tests inject faults),
//! `sequence`, `config`, `clock` and `error`.
//!
//! # Full disks and failing disks
//!
//! - **Below the reserve** (`[store] min_free_bytes`): appends are refused
//!   before anything is written ([`StoreError::DiskFull`]); `/health` is
//!   degraded; appends resume by themselves once space is back.
//! - **Out of space in the middle of a write** (the reserve was not enough):
//!   the shard cuts its log and index back to its last whole batch, refuses
//!   that append ([`StoreError::OutOfSpace`]), and stays open, so it takes
//!   appends again as soon as there is room, without a restart. Nothing
//!   acknowledged is touched.
//! - **A failed `fsync`** (or another write error): fail-stop. A failed
//!   `fsync` cannot be retried safely (PostgreSQL's lesson: the kernel may
//!   have dropped the dirty pages and marked them clean), so the shard is
//!   marked failed ([`StoreError::ShardFailed`] to every append, `/health`
//!   degraded, `weir_store_failed_shards`), and after a back-off
//!   (`reopen_backoff`, doubling up to a minute) its writer reopens it from
//!   its files, running recovery as at start-up, and it takes writes again.
//!   The failed append was never acknowledged; recovery may or may not find
//!   its records.
//!
//! The `writer` header has the details. Files are replaced atomically through
//! [`weir_wire::durable_file`]. The modules that only the store's own parts
//! use are private.

pub mod backend;
pub mod catalog;
pub mod clock;
pub mod config;
mod data_dir;
mod env;
pub mod error;
pub mod file_io;
mod health;
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
pub use file_io::{FaultyFileIo, FileIo, OsFileIo};
pub use log_store::LogStore;
pub use producer::ProducerBatch;
pub use retention::RetentionReport;
pub use sequence::SequenceNumber;
