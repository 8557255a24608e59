//! Durable file replacement, for hosts (`std` feature, Unix): replacing a
//! whole file atomically, optionally readable by its owner only, and making
//! directory changes durable.
//!
//! It lives in the wire crate although it is no wire format because this is
//! the crate both host binaries already share: the agent (checkpoints, spool
//! instance id) and the collector (catalog, producer snapshots, firehose
//! state) replace files the same way, with one copy of the rule.
//!
//! A replaced file is written to `<name>.tmp`, fsync'd, renamed over the old
//! one, and its directory fsync'd: after a crash either the old or the new
//! content is there, never a mix, and the rename itself survives a power cut.
//! A temp file that could not be written or synced whole is removed at once
//! (on a full disk it would hold the last free blocks).

use std::borrow::ToOwned;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// The suffix of the temporary file a replacement writes first
/// (`<name>.tmp`); a crash can leave one behind, never a partial `<name>`.
pub const TEMP_SUFFIX: &str = ".tmp";

/// Replaces `path` with `bytes`, atomically and durably.
///
/// # Errors
/// Any I/O failure; the previous content is then still in place.
pub fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_with_mode(path, bytes, 0o666)
}

/// [`replace_file`] for a file that may hold secrets: created readable and
/// writable by its owner only (mode `0600`).
///
/// # Errors
/// Any I/O failure; the previous content is then still in place.
pub fn replace_private_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_with_mode(path, bytes, 0o600)
}

/// Writes `<path>.tmp` created with `mode` (before the umask), fsyncs it,
/// renames it over `path` and fsyncs the directory holding `path`. A temp
/// file whose write or fsync failed is removed: on a full disk it would
/// otherwise keep the space its partial content took.
fn replace_with_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(TEMP_SUFFIX);
    // A leftover temp file would keep its old mode: start from a new one.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    if let Err(e) = f.write_all(bytes).and_then(|()| f.sync_all()) {
        drop(f);
        // Best effort: the write's error is the one to report.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    drop(f);
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn replaced_files_keep_only_the_new_content_and_private_ones_are_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        replace_file(&path, b"old").expect("replace");
        replace_private_file(&path, b"new secret").expect("replace private");
        assert_eq!(std::fs::read(&path).expect("read"), b"new secret");
        let mode = std::fs::metadata(&path).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join("state.json.tmp").exists());
    }
}
