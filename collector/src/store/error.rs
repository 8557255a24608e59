//! Errors of the stream store: [`StoreError`], what every store operation
//! answers, and [`SegmentError`], what the segment files' layer (`segment`,
//! `segment_file`, `recovery`, `producer`) reports and `StoreError` wraps.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::file_io::is_out_of_space;

/// What went wrong in a store operation.
///
/// Cloneable (sources are shared) because one failed group commit fails every
/// record that was in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// No stream of that name.
    #[error("stream {0:?} not found")]
    StreamNotFound(String),
    /// A stream of that name exists already.
    #[error("stream {0:?} already exists")]
    StreamExists(String),
    /// The stream exists but is being deleted or changed.
    #[error("stream {stream:?} is {status}, not ACTIVE")]
    StreamNotActive {
        /// The stream.
        stream: String,
        /// Its status.
        status: &'static str,
    },
    /// No shard of that id in the stream.
    #[error("shard {shard} not found in stream {stream:?}")]
    ShardNotFound {
        /// The stream.
        stream: String,
        /// The shard id asked for.
        shard: String,
    },
    /// The shard is closed (resharded): it takes no more writes.
    #[error("shard {shard} of stream {stream:?} is closed")]
    ShardClosed {
        /// The stream.
        stream: String,
        /// The shard.
        shard: String,
    },
    /// An argument is outside what the operation accepts.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A record breaks the wire format's limits.
    #[error("invalid record: {0}")]
    InvalidRecord(#[from] weir_wire::ValidationError),
    /// A limit of the store was reached (shard count, stream count).
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// A batch on disk failed its CRC or framing. Its records are not returned;
    /// reading can resume at `next_offset`.
    #[error(
        "corrupt batch in {path} at byte {position} (stream {stream:?}, shard {shard}, offsets {first_offset}..{next_offset}): {reason}"
    )]
    Corrupt {
        /// The stream.
        stream: String,
        /// The shard.
        shard: String,
        /// The `.log` file.
        path: PathBuf,
        /// Byte position of the batch in that file.
        position: u64,
        /// First offset the batch held.
        first_offset: u64,
        /// First offset after it.
        next_offset: u64,
        /// The check that failed.
        reason: &'static str,
    },
    /// The shard's writer hit an I/O error (a failed `fsync`, or a write error
    /// other than a full disk) and refuses writes until it has reopened the
    /// shard from its files, after a back-off; recovery then decides what of
    /// the unsynced tail is intact.
    #[error(
        "shard {shard} of stream {stream:?} failed and refuses writes until it is reopened from \
         its files: {reason}"
    )]
    ShardFailed {
        /// The stream.
        stream: String,
        /// The shard.
        shard: String,
        /// The first failure.
        reason: String,
    },
    /// Storage I/O failed.
    #[error("storage: {0}")]
    Segment(#[source] Arc<SegmentError>),
    /// Metadata I/O failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The data directory's filesystem is below its free-space reserve
    /// (`[store] min_free_bytes`); nothing was written.
    #[error(
        "the data directory's disk is full: {free} bytes free, below the reserve of {reserve} \
         bytes ([store] min_free_bytes); appends are refused until space is freed"
    )]
    DiskFull {
        /// Free bytes when refused.
        free: u64,
        /// The reserve.
        reserve: u64,
    },
    /// Writing to the shard ran out of space part way (the reserve was not
    /// enough): what this append wrote was cut off again, nothing of it is
    /// kept, and the shard takes appends again once there is room.
    #[error(
        "the data directory's disk is full: writing shard {shard} of stream {stream:?} failed \
         ({reason}); nothing of this append was kept, retry once space is freed"
    )]
    OutOfSpace {
        /// The stream.
        stream: String,
        /// The shard.
        shard: String,
        /// The failed write.
        reason: String,
    },
    /// The store is shutting down.
    #[error("store is shutting down")]
    ShuttingDown,
    /// The JetStream backend failed an operation (unreachable cluster, no
    /// quorum, a refused request).
    #[error("JetStream {op}: {reason}")]
    Backend {
        /// What was being done.
        op: &'static str,
        /// The cause, as the client reported it.
        reason: String,
    },
    /// The stream enforces per-shard write limits and this shard's budget for
    /// the current second is spent; the record was not appended (retry later).
    #[error("rate exceeded for shard {shard} in stream {stream:?}")]
    ThroughputExceeded {
        /// The stream.
        stream: String,
        /// The shard.
        shard: String,
    },
}

impl From<SegmentError> for StoreError {
    fn from(e: SegmentError) -> Self {
        Self::Segment(Arc::new(e))
    }
}

impl StoreError {
    pub(super) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { op, path: path.into(), source: Arc::new(source) }
    }
}

/// Errors of the segment layer.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// An I/O operation on a segment file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A batch failed its checks (CRC, framing, bounds) where it must be whole.
    #[error("corrupt batch in {path} at byte {position}: {reason}")]
    Corrupt {
        /// The `.log` file.
        path: PathBuf,
        /// Byte position of the batch in the file.
        position: u64,
        /// What check failed.
        reason: &'static str,
    },
}

impl SegmentError {
    pub(super) fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io { op, path: path.to_path_buf(), source }
    }

    /// A failed `fsync`/`fdatasync` of `path`.
    pub(super) fn sync(path: &Path, source: io::Error) -> Self {
        Self::io(SYNC_OP, path, source)
    }

    /// Whether this is a failed `fsync` (after which the page cache's state is
    /// unknown: the fail-stop rule applies).
    pub fn is_sync_failure(&self) -> bool {
        matches!(self, Self::Io { op: SYNC_OP, .. })
    }

    /// Whether the filesystem had no room (the write can be undone and tried
    /// again once space is back).
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, Self::Io { op, source, .. } if *op != SYNC_OP && is_out_of_space(source))
    }
}

/// The `op` of a failed sync.
const SYNC_OP: &str = "fsync";
