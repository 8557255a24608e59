//! A followed file's identity: its device and inode **and** a fingerprint,
//! the CRC32C of its first [`FINGERPRINT_BYTES`] bytes (or of all of them
//! while it is shorter; the fingerprint grows with the file until it covers
//! that many). A recycled inode whose first bytes differ is a new file. The
//! same fingerprint finds the copy a copy-truncate rotation made.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bytes a fingerprint covers once the file is that long.
pub const FINGERPRINT_BYTES: u64 = 256;

/// The identity of a followed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileId {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// CRC32C of the first `fingerprint_len` bytes.
    pub fingerprint: u32,
    /// Bytes the fingerprint covers.
    pub fingerprint_len: u64,
}

pub(super) fn fingerprint(file: &mut File, len: u64) -> io::Result<(u32, u64)> {
    let n = len.min(FINGERPRINT_BYTES);
    let mut buf = vec![0u8; n as usize];
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut buf)?;
    Ok((crc32c::crc32c(&buf), n))
}

/// Whether `file` (with `meta`) is the file `id` names: same device and inode,
/// and its first `id.fingerprint_len` bytes hash the same.
pub(super) fn same_file(
    id: &FileId,
    file: &mut File,
    meta: &std::fs::Metadata,
) -> io::Result<bool> {
    if meta.dev() != id.dev || meta.ino() != id.ino {
        return Ok(false);
    }
    if meta.len() < id.fingerprint_len {
        return Ok(false);
    }
    Ok(fingerprint(file, id.fingerprint_len)?.0 == id.fingerprint)
}

pub(super) fn identify(file: &mut File, meta: &std::fs::Metadata) -> io::Result<FileId> {
    let (fingerprint, fingerprint_len) = fingerprint(file, meta.len())?;
    Ok(FileId { dev: meta.dev(), ino: meta.ino(), fingerprint, fingerprint_len })
}

/// The copy a copy-truncate rotation made of `path`: a file in the same
/// directory, named after it (`app.log.1`, `app.log-20260101`), holding at
/// least `offset` bytes, whose first bytes match `id`'s fingerprint; the most
/// recently modified one when several do.
pub(super) fn find_copy(path: &Path, id: &FileId, offset: u64) -> Option<(PathBuf, File)> {
    let dir = path.parent()?;
    let name = path.file_name()?.to_str()?;
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let Ok(meta) = e.metadata() else { continue };
        let candidate = e.file_name();
        let Some(candidate) = candidate.to_str() else { continue };
        if !meta.is_file()
            || candidate == name
            || !candidate.starts_with(name)
            || meta.ino() == id.ino
            || meta.len() < offset.max(id.fingerprint_len)
        {
            continue;
        }
        let Ok(mut file) = File::open(e.path()) else { continue };
        if !fingerprint(&mut file, id.fingerprint_len).is_ok_and(|(fp, _)| fp == id.fingerprint) {
            continue;
        }
        let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
        if best.as_ref().is_none_or(|(t, _)| modified > *t) {
            best = Some((modified, e.path()));
        }
    }
    best.and_then(|(_, p)| File::open(&p).ok().map(|f| (p, f)))
}
