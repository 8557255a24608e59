//! Recovery at open: listing the segments and scanning each one entry by
//! entry (bounded reads, never the whole backlog in memory), cutting a
//! segment at its first torn, corrupt or out-of-sequence entry.
//!
//! A crash of the agent can tear the newest segment's last entry; a power
//! cut, the tail of any segment not fsync'd yet. Damage in a segment that
//! is not the newest is cut the same way and logged as an error, the
//! entries after it being lost. An append that failed while the agent ran
//! was already cut back (see the spool's header), so it leaves nothing here
//! to cut.

use std::fs::{File, OpenOptions};
use std::io::BufReader;
use std::path::Path;

use super::entry::{ENTRY_HEADER_BYTES, read_entry};
use super::error::io_err;
use super::{SEGMENT_SUFFIX, Segment, SpoolError, segment_path};

/// The first sequence numbers of the segments in `dir`, in order.
pub(super) fn list_segments(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let mut firsts = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err("list", dir))? {
        let e = e.map_err(io_err("list", dir))?;
        let name = e.file_name();
        if let Some(first) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        {
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    Ok(firsts)
}

/// Scans segment `first` (`last`: the newest one); returns it and the
/// metadata of its newest entry.
pub(super) fn scan_segment(
    dir: &Path,
    first: u64,
    last: bool,
) -> Result<(Segment, Option<Vec<u8>>), SpoolError> {
    let path = segment_path(dir, first);
    let file = File::open(&path).map_err(io_err("open", &path))?;
    let file_len = file.metadata().map_err(io_err("stat", &path))?.len();
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut seg = Segment { first_seq: first, end_seq: first, bytes: 0 };
    let mut last_meta = None;
    loop {
        match read_entry(&mut reader).map_err(io_err("read", &path))? {
            Ok(Some(entry)) if entry.seq == seg.end_seq => {
                seg.end_seq += 1;
                seg.bytes += (ENTRY_HEADER_BYTES + entry.meta.len() + entry.payload.len()) as u64;
                last_meta = Some(entry.meta);
            }
            Ok(None) => break,
            Ok(Some(_)) | Err(_) => {
                tracing::warn!(
                    segment = %path.display(),
                    valid_bytes = seg.bytes,
                    cut_bytes = file_len - seg.bytes,
                    "spool segment ends in a torn or corrupt entry; cutting it"
                );
                if !last {
                    tracing::error!(segment = %path.display(), "entries after the damage in a closed segment are lost");
                }
                let f =
                    OpenOptions::new().write(true).open(&path).map_err(io_err("open", &path))?;
                f.set_len(seg.bytes).map_err(io_err("truncate", &path))?;
                f.sync_all().map_err(io_err("fsync", &path))?;
                break;
            }
        }
    }
    Ok((seg, last_meta))
}
