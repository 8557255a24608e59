//! The free-space reserve of the spool's filesystem, and what counts as a
//! full disk.
//!
//! Before an entry is written the spool asks `statvfs` how many bytes are
//! free (`f_bavail`: what an unprivileged process may use) and refuses the
//! append with [`SpoolError::DiskFull`] when writing the entry would leave
//! less than the reserve. So a full disk is met before a write rather than in
//! the middle of one, and the reserve keeps room for the agent's small files
//! beside the segments (`state.json`, `checkpoints.json`, the status file)
//! and for the device's other programs. The reserve is
//! `spool.min_free_bytes`, by default the smaller of
//! [`DEFAULT_RESERVE_BYTES`] and 1% of the filesystem; 0 turns it off. A
//! filesystem that cannot be asked does not refuse (the write itself then
//! fails or not). A write that still fails with `ENOSPC` or `EDQUOT` (another
//! program took the space) is a full disk too ([`is_disk_full`]).
//!
//! The free space is read at every append (one system call per batch, not
//! per record), so appends resume as soon as space is back.

use std::io;
use std::path::{Path, PathBuf};

use super::SpoolError;

/// The default reserve's upper bound.
pub const DEFAULT_RESERVE_BYTES: u64 = 64 * 1024 * 1024;

/// Free and total bytes of the filesystem holding `path`.
fn statvfs(path: &Path) -> io::Result<(u64, u64)> {
    let s = rustix::fs::statvfs(path)?;
    Ok((s.f_bavail.saturating_mul(s.f_frsize), s.f_blocks.saturating_mul(s.f_frsize)))
}

/// Whether an I/O error means the filesystem is full (`ENOSPC`) or the
/// user's quota is (`EDQUOT`): a condition that ends when space is freed,
/// unlike other I/O errors.
pub fn is_disk_full(e: &io::Error) -> bool {
    let full = [rustix::io::Errno::NOSPC, rustix::io::Errno::DQUOT];
    e.raw_os_error().is_some_and(|code| full.iter().any(|f| f.raw_os_error() == code))
}

/// The reserve of one spool directory.
#[derive(Debug, Clone)]
pub(super) struct Space {
    dir: PathBuf,
    reserve: u64,
}

impl Space {
    /// The reserve for `dir`: `min_free_bytes`, or the default (the smaller
    /// of [`DEFAULT_RESERVE_BYTES`] and 1% of the filesystem).
    pub(super) fn new(dir: &Path, min_free_bytes: Option<u64>) -> Self {
        let reserve = min_free_bytes.unwrap_or_else(|| match statvfs(dir) {
            Ok((_, total)) => DEFAULT_RESERVE_BYTES.min(total / 100),
            Err(_) => DEFAULT_RESERVE_BYTES,
        });
        Self { dir: dir.to_path_buf(), reserve }
    }

    /// The reserve in bytes.
    pub(super) fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Free bytes now; `None` if the filesystem cannot be asked.
    pub(super) fn free(&self) -> Option<u64> {
        statvfs(&self.dir).ok().map(|(free, _)| free)
    }

    /// `Err(DiskFull)` when writing `needed` bytes would leave less than the
    /// reserve free.
    pub(super) fn check(&self, needed: u64) -> Result<(), SpoolError> {
        if self.reserve == 0 {
            return Ok(());
        }
        match self.free() {
            Some(free) if free < self.reserve.saturating_add(needed) => Err(SpoolError::DiskFull {
                dir: self.dir.clone(),
                free,
                needed,
                reserve: self.reserve,
            }),
            _ => Ok(()),
        }
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
        let full = Space::new(dir.path(), Some(u64::MAX / 2));
        assert!(matches!(full.check(10), Err(SpoolError::DiskFull { needed: 10, .. })));
        assert!(Space::new(dir.path(), Some(0)).check(u64::MAX).is_ok());
        assert_eq!(Space::new(dir.path(), None).reserve(), DEFAULT_RESERVE_BYTES.min(total / 100));
    }

    #[test]
    fn enospc_and_edquot_are_a_full_disk_other_errors_are_not() {
        let nospc = io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error());
        let dquot = io::Error::from_raw_os_error(rustix::io::Errno::DQUOT.raw_os_error());
        let eio = io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error());
        assert!(is_disk_full(&nospc) && is_disk_full(&dquot));
        assert!(!is_disk_full(&eio) && !is_disk_full(&io::Error::other("x")));
    }
}
