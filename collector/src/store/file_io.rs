//! The store's file layer: the calls on segment files whose failure the
//! writer must handle — positioned writes and `fdatasync` — behind
//! [`FileIo`], so tests inject faults the way `clock` injects time.
//!
//! [`OsFileIo`] is the real thing and the default. [`FaultyFileIo`] wraps it
//! for tests: it can make writes run out of space after a number of bytes (a
//! short write, then `ENOSPC`, as a full filesystem does) and make the next
//! `fdatasync`s fail with `EIO`. Only segment `.log` and `.index` files go
//! through this layer; the catalog and producer snapshots are replaced
//! whole through `weir_wire::durable_file` (temp file, fsync, rename), where a
//! failure leaves the old file in place.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

/// Writes and syncs of segment files.
pub trait FileIo: Send + Sync + fmt::Debug {
    /// Writes all of `buf` at byte `pos` of `file` (at `path`).
    ///
    /// # Errors
    /// As `pwrite`; some bytes may have been written before the error.
    fn write_all_at(&self, file: &File, path: &Path, buf: &[u8], pos: u64) -> io::Result<()>;

    /// `fdatasync`s `file` (at `path`).
    ///
    /// # Errors
    /// As `fdatasync`: after an error, what of the file reached the disk is
    /// unknown.
    fn sync_data(&self, file: &File, path: &Path) -> io::Result<()>;
}

/// The operating system's files, with nothing in between.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFileIo;

impl FileIo for OsFileIo {
    fn write_all_at(&self, file: &File, _path: &Path, buf: &[u8], pos: u64) -> io::Result<()> {
        file.write_all_at(buf, pos)
    }

    fn sync_data(&self, file: &File, _path: &Path) -> io::Result<()> {
        file.sync_data()
    }
}

/// The faults a [`FaultyFileIo`] injects next.
#[derive(Debug, Default)]
struct Faults {
    /// Bytes that may still be written before writes run out of space.
    space_left: Option<u64>,
    /// `fdatasync`s still to fail.
    failing_syncs: u32,
    /// Writes refused with `ENOSPC` so far.
    writes_refused: u64,
    /// `fdatasync`s failed so far.
    syncs_failed: u64,
}

/// [`OsFileIo`] with injected faults, for tests.
#[derive(Debug, Default)]
pub struct FaultyFileIo {
    faults: Mutex<Faults>,
}

impl FaultyFileIo {
    /// No faults until asked.
    pub fn new() -> Self {
        Self::default()
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After `bytes` more bytes, writes fail with `ENOSPC`; the write that
    /// crosses the limit writes the bytes that fit first (a short write).
    pub fn run_out_of_space_after(&self, bytes: u64) {
        self.faults().space_left = Some(bytes);
    }

    /// Writes have all the space they want again.
    pub fn free_space(&self) {
        self.faults().space_left = None;
    }

    /// The next `n` `fdatasync`s fail with `EIO`.
    pub fn fail_next_syncs(&self, n: u32) {
        self.faults().failing_syncs = n;
    }

    /// Writes refused with `ENOSPC` so far.
    pub fn writes_refused(&self) -> u64 {
        self.faults().writes_refused
    }

    /// `fdatasync`s failed so far.
    pub fn syncs_failed(&self) -> u64 {
        self.faults().syncs_failed
    }
}

impl FileIo for FaultyFileIo {
    fn write_all_at(&self, file: &File, path: &Path, buf: &[u8], pos: u64) -> io::Result<()> {
        let fits = {
            let mut f = self.faults();
            match f.space_left {
                Some(left) if (buf.len() as u64) > left => {
                    f.space_left = Some(0);
                    f.writes_refused += 1;
                    Some(left as usize)
                }
                Some(left) => {
                    f.space_left = Some(left - buf.len() as u64);
                    None
                }
                None => None,
            }
        };
        match fits {
            None => OsFileIo.write_all_at(file, path, buf, pos),
            Some(n) => {
                OsFileIo.write_all_at(file, path, &buf[..n], pos)?;
                Err(io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error()))
            }
        }
    }

    fn sync_data(&self, file: &File, path: &Path) -> io::Result<()> {
        {
            let mut f = self.faults();
            if f.failing_syncs > 0 {
                f.failing_syncs -= 1;
                f.syncs_failed += 1;
                return Err(io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error()));
            }
        }
        OsFileIo.sync_data(file, path)
    }
}

/// Whether an I/O error means the filesystem has no room (`ENOSPC`, a quota,
/// a file size limit): the write can be undone and tried again later.
pub fn is_out_of_space(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
        || e.raw_os_error() == Some(rustix::io::Errno::FBIG.raw_os_error())
}
