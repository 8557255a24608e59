//! The free-space reserve of the data directory's filesystem.
//!
//! Below `min_free_bytes` free (for unprivileged users: `f_bavail`), appends
//! are refused before anything is written, with [`StoreError::DiskFull`],
//! which names the reserve; nothing already acknowledged is touched, and
//! retention and stream deletion go on freeing space. The free space is
//! read with `statvfs` at most every [`SPACE_CHECK_INTERVAL`], so appends
//! resume by themselves once space is back. Between two readings the bytes
//! admitted are subtracted from the last reading ([`DiskSpace::admit`]), so
//! a burst cannot run far past the reserve before the next reading sees it. The default reserve is
//! [`DEFAULT_RESERVE_BYTES`] or 1% of the filesystem, whichever is smaller.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::error::StoreError;

/// The default reserve's upper bound.
pub const DEFAULT_RESERVE_BYTES: u64 = 256 * 1024 * 1024;
/// How long a free-space reading is used before `statvfs` is asked again.
pub const SPACE_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Free and total bytes of the filesystem holding `path`.
fn statvfs(path: &Path) -> std::io::Result<(u64, u64)> {
    let s = rustix::fs::statvfs(path)?;
    Ok((s.f_bavail.saturating_mul(s.f_frsize), s.f_blocks.saturating_mul(s.f_frsize)))
}

/// The reserve of one data directory and its last reading.
#[derive(Debug)]
pub struct DiskSpace {
    root: PathBuf,
    reserve: u64,
    /// When the free bytes were read, and how many.
    last: Mutex<Option<(Instant, u64)>>,
    /// Bytes admitted since that reading.
    admitted: AtomicU64,
    /// How long a reading is used ([`SPACE_CHECK_INTERVAL`]).
    interval: Duration,
}

impl DiskSpace {
    /// The reserve for `root`: `min_free_bytes`, or the default (the smaller
    /// of [`DEFAULT_RESERVE_BYTES`] and 1% of the filesystem).
    pub fn new(root: &Path, min_free_bytes: Option<u64>) -> Self {
        let reserve = min_free_bytes.unwrap_or_else(|| match statvfs(root) {
            Ok((_, total)) => DEFAULT_RESERVE_BYTES.min(total / 100),
            Err(_) => DEFAULT_RESERVE_BYTES,
        });
        Self {
            root: root.to_path_buf(),
            reserve,
            last: Mutex::new(None),
            admitted: AtomicU64::new(0),
            interval: SPACE_CHECK_INTERVAL,
        }
    }

    /// The reserve in bytes.
    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Free bytes now (a reading at most [`SPACE_CHECK_INTERVAL`] old);
    /// `None` if the filesystem cannot be asked.
    pub fn free(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock().ok()?;
        if let Some((at, free)) = *last
            && now.duration_since(at) < self.interval
        {
            return Some(free);
        }
        match statvfs(&self.root) {
            Ok((free, _)) => {
                *last = Some((now, free));
                self.admitted.store(0, Ordering::Relaxed);
                metrics::gauge!("weir_store_free_bytes").set(free as f64);
                Some(free)
            }
            Err(e) => {
                tracing::warn!(root = %self.root.display(), error = %e, "statvfs failed");
                None
            }
        }
    }

    /// `Err(DiskFull)` while the free space is below the reserve. A
    /// filesystem that cannot be asked does not block appends (the write
    /// itself then fails or not).
    ///
    /// # Errors
    /// [`StoreError::DiskFull`] below the reserve.
    pub fn check(&self) -> Result<(), StoreError> {
        self.admit(0)
    }

    /// Like [`check`](Self::check), counting `bytes` about to be written
    /// against the free space once admitted.
    ///
    /// # Errors
    /// [`StoreError::DiskFull`] below the reserve.
    pub fn admit(&self, bytes: u64) -> Result<(), StoreError> {
        let Some(read) = self.free() else { return Ok(()) };
        let free = read.saturating_sub(self.admitted.load(Ordering::Relaxed));
        if free < self.reserve {
            return Err(StoreError::DiskFull { free, reserve: self.reserve });
        }
        self.admitted.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_above_the_free_space_refuses_and_zero_never_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (free, total) = statvfs(dir.path()).expect("statvfs");
        assert!(total >= free);
        let full = DiskSpace::new(dir.path(), Some(u64::MAX));
        assert!(matches!(full.check(), Err(StoreError::DiskFull { reserve: u64::MAX, .. })));
        assert!(DiskSpace::new(dir.path(), Some(0)).check().is_ok());
        // What is admitted counts until the next reading.
        let tight = DiskSpace {
            interval: Duration::from_secs(3600),
            ..DiskSpace::new(dir.path(), Some(free / 2))
        };
        assert!(tight.admit(free).is_ok(), "admitted while above the reserve");
        assert!(matches!(tight.check(), Err(StoreError::DiskFull { .. })), "then below it");
        let default = DiskSpace::new(dir.path(), None);
        assert_eq!(default.reserve(), DEFAULT_RESERVE_BYTES.min(total / 100));
    }
}
