//! The stream store: sharded, replayable, immutable streams on local disk.
//!
//! [`StreamStore`] is the boundary the ingest and the API use; [`LogStore`] is
//! the embedded implementation. See each module's header for its part:
//! `catalog` (metadata), `segment` (on-disk format), `shard` (writer and
//! reads), `log_store` (streams, routing, resharding, retention).

pub mod backend;
pub mod catalog;
pub mod clock;
pub mod config;
mod data_dir;
mod env;
pub mod error;
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
