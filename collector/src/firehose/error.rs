//! Errors of delivery streams.

use std::path::PathBuf;

use crate::store::StoreError;

/// Why a delivery stream could not be configured, opened or advanced.
#[derive(Debug, thiserror::Error)]
pub enum FirehoseError {
    /// A delivery stream name outside Firehose's rules.
    #[error("invalid delivery stream name {0:?}: 1 to 64 characters of [a-zA-Z0-9_.-]")]
    InvalidName(String),
    /// The size hint is outside its bounds.
    #[error("buffering size {mib} MiB is outside {min}..={max} MiB")]
    BufferSize {
        /// The value given.
        mib: u32,
        /// Lower bound.
        min: u32,
        /// Upper bound.
        max: u32,
    },
    /// The interval hint is outside its bounds.
    #[error("buffering interval {secs} s is outside {min}..={max} s")]
    BufferInterval {
        /// The value given.
        secs: u32,
        /// Lower bound.
        min: u32,
        /// Upper bound.
        max: u32,
    },
    /// The retry duration is outside its bounds.
    #[error("retry duration {secs} s is outside 0..={max} s")]
    RetryDuration {
        /// The value given.
        secs: u32,
        /// Upper bound.
        max: u32,
    },
    /// A dynamic partitioning key that is badly defined, undefined or unused.
    #[error("partition key {name:?}: {reason}")]
    InvalidPartitionKey {
        /// The key's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A destination setting that is missing or wrong.
    #[error("destination: {0}")]
    InvalidDestination(String),
    /// A destination answered, but not with success (HTTP status, wrong
    /// request id, S3 error): retried, then sent to the error output.
    #[error("{code}: {message}")]
    Rejected {
        /// Firehose-style error code (`HttpEndpoint.ResponseErrorCode`, ...).
        code: String,
        /// What happened.
        message: String,
    },
    /// A prefix template that cannot be parsed or rendered.
    #[error("invalid prefix template {template:?}: {reason}")]
    InvalidPrefix {
        /// The template.
        template: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An object key a destination refuses (absolute, `..`, empty part).
    #[error("invalid object key {0:?}")]
    InvalidObjectKey(String),
    /// The source stream failed.
    #[error("source stream: {0}")]
    Store(#[from] StoreError),
    /// The destination's filesystem has no room for an object: it is below
    /// the free-space reserve (nothing was written), or a write failed with
    /// ENOSPC or EDQUOT (the temp file was removed). Delivery pauses: the
    /// batch is retried without end, never sent to the error output.
    #[error(
        "the destination's disk is full: {path}: {reason}; delivery paused until space is freed"
    )]
    DiskFull {
        /// The object (or directory) that did not fit.
        path: PathBuf,
        /// Bytes of the object that did not fit.
        needed: u64,
        /// Free space and reserve, or the write's error.
        reason: String,
    },
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
    /// The checkpoint file is unreadable or does not belong to this delivery
    /// stream.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The source stream was deleted and created again since the checkpoint
    /// was written: its positions mean nothing for the new stream.
    #[error(
        "source stream {stream:?} has id {found}, the checkpoint was written for id {expected}"
    )]
    StreamReplaced {
        /// The stream's name.
        stream: String,
        /// The id in the checkpoint.
        expected: u64,
        /// The id of the stream now.
        found: u64,
    },
    /// Records of a batch to deliver again are no longer in the source
    /// (retention removed them).
    #[error("records {first}..={last} of {shard_id} are gone from the source")]
    RecordsGone {
        /// The shard.
        shard_id: String,
        /// First offset wanted.
        first: u64,
        /// Last offset wanted.
        last: u64,
    },
    /// A destination refused or failed a batch.
    #[error("destination failed object {key:?}: {reason}")]
    Destination {
        /// The object's key.
        key: String,
        /// Why.
        reason: String,
    },
    /// A Parquet output setting that cannot be used (schema, compression).
    #[error("Parquet output: {0}")]
    InvalidFormat(String),
    /// A batch could not be converted to Parquet: a record that is not a
    /// JSON object or whose field does not convert (named in the error), or
    /// the writer failed.
    #[error("converting a batch to Parquet: {0}")]
    Convert(#[from] super::parquet::ConvertError),
    /// Compressing a batch failed.
    #[error("compressing a batch: {0}")]
    Compress(#[source] std::io::Error),
    /// The firehose state (checkpoint store, lease) failed or refused: see
    /// [`StateError::ends_delivery`](super::state::StateError::ends_delivery).
    #[error("firehose state: {0}")]
    State(#[from] super::state::StateError),
    /// A blocking task was cancelled (runtime shutting down).
    #[error("background task cancelled")]
    Cancelled,
}

impl FirehoseError {
    /// Whether this is [`DiskFull`](Self::DiskFull): delivery pauses instead
    /// of counting towards the retry duration.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Self::DiskFull { .. })
    }

    /// A short name of the cause, the key of rate-limited log lines:
    /// `disk_full` (also a file write that failed with ENOSPC or EDQUOT),
    /// `destination`, `io`, `source`, `state` or `other`.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::DiskFull { .. } => "disk_full",
            Self::Io { source, .. } if is_storage_full(source) => "disk_full",
            Self::Io { .. } => "io",
            Self::Rejected { .. } | Self::InvalidObjectKey(_) | Self::Destination { .. } => {
                "destination"
            }
            Self::Store(_) | Self::StreamReplaced { .. } | Self::RecordsGone { .. } => "source",
            Self::State(_) | Self::Checkpoint { .. } => "state",
            _ => "other",
        }
    }
}

/// Whether an I/O error says the filesystem is full (ENOSPC) or the quota
/// spent (EDQUOT).
pub fn is_storage_full(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}
