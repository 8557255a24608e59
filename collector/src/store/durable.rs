//! Durable file operations shared by the store's metadata files: replacing a
//! whole file atomically, and making directory changes durable.
//!
//! A replaced file is written to `<name>.tmp`, fsync'd, renamed over the old
//! one, and the directory fsync'd: after a crash either the old or the new
//! content is there, never a mix, and the rename itself survives a power cut.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// Replaces `path` (in directory `dir`) with `bytes`, atomically and durably.
///
/// # Errors
/// Any I/O failure; the previous content is then still in place.
pub fn replace_file(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// fsyncs a directory so that creations, renames and deletions in it are
/// durable.
///
/// # Errors
/// The directory cannot be opened or synced.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
