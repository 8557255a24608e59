//! [`SpoolError`], the spool's errors, and which of them mean a full disk.

use std::io;
use std::path::{Path, PathBuf};

use super::space::is_disk_full;

/// Errors of the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// File I/O failed.
    #[error("spool {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An entry larger than [`MAX_ENTRY_BYTES`] or than the whole spool.
    #[error("spool entry of {bytes} bytes is larger than the spool allows ({max})")]
    EntryTooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        max: u64,
    },
    /// The `state.json` file does not parse.
    #[error("spool state {path}: {message}")]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Writing the entry would leave less than the reserve free on the
    /// spool's filesystem; nothing was written.
    #[error(
        "the spool's filesystem is full: {free} bytes free in {dir}, an entry of {needed} bytes \
         would go below the reserve of {reserve} bytes (spool.min_free_bytes)"
    )]
    DiskFull {
        /// The spool directory.
        dir: PathBuf,
        /// Free bytes.
        free: u64,
        /// The entry's size.
        needed: u64,
        /// The reserve.
        reserve: u64,
    },
}

impl SpoolError {
    /// Whether the filesystem is full: the reserve refused the append, or a
    /// write failed with `ENOSPC`/`EDQUOT`. It ends once space is freed, so
    /// the append is worth retrying as it is.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Self::DiskFull { .. } => true,
            Self::Io { source, .. } => is_disk_full(source),
            Self::EntryTooLarge { .. } | Self::State { .. } => false,
        }
    }
}

pub(super) fn io_err<'p>(
    op: &'static str,
    path: &'p Path,
) -> impl FnOnce(io::Error) -> SpoolError + 'p {
    move |source| SpoolError::Io { op, path: path.to_path_buf(), source }
}
