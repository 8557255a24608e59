//! `state.json` beside the segments: the acknowledgement mark, the drop
//! counters and the newest checkpoints ([`SpoolState`]), as JSON.
//!
//! It is replaced through `state.json.tmp` and a rename, fsync'd when the
//! caller is about to delete segments. On a full filesystem the temporary
//! file may not fit while the old file still holds its blocks: then, if a
//! segment holding entries is still on disk, the old file is removed first
//! and the new one written in its room. A crash in between leaves no
//! `state.json`, which costs nothing but the drop counters: the segments
//! still give the next sequence number and the newest checkpoints, and the
//! entries after a lost acknowledgement mark are sent again (the collector
//! appends them once). Without a segment holding entries the old file is
//! never removed, since it is then the only record of the next sequence
//! number.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::SpoolError;
use super::space::is_disk_full;

const STATE_FILE: &str = "state.json";
const STATE_TEMP: &str = "state.json.tmp";

/// Persistent counters and the acknowledgement mark.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolState {
    /// Entries with a sequence number below this are acknowledged.
    pub acked_below: u64,
    /// Entries dropped (never sent) since the spool was created.
    pub dropped_entries: u64,
    /// Records in those entries.
    pub dropped_records: u64,
    /// Metadata of the newest entry, kept here so it outlives the deletion
    /// of the segment that held it.
    #[serde(default)]
    pub last_meta: Option<Vec<u8>>,
}

/// Reads `state.json` from `dir`; the default state when there is none.
pub(super) fn read_state(dir: &Path) -> Result<SpoolState, SpoolError> {
    let path = dir.join(STATE_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| SpoolError::State { path, message: e.to_string() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(SpoolState::default()),
        Err(e) => Err(SpoolError::Io { op: "read", path, source: e }),
    }
}

/// Replaces `state.json` (`durable`: fsync'd, and the rename too).
/// `segments_hold_entries`: a segment holding entries is on disk, so the old
/// file may be removed first when the filesystem is full.
pub(super) fn write_state(
    dir: &Path,
    state: &SpoolState,
    durable: bool,
    segments_hold_entries: bool,
) -> Result<(), SpoolError> {
    let path = dir.join(STATE_FILE);
    let bytes = serde_json::to_vec(state)
        .map_err(|e| SpoolError::State { path: path.clone(), message: e.to_string() })?;
    match replace(dir, &bytes, durable) {
        Err(SpoolError::Io { source, .. }) if is_disk_full(&source) && segments_hold_entries => {
            tracing::debug!(path = %path.display(), "filesystem full: removing the old state file to write the new one");
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(SpoolError::Io { op: "delete", path, source: e }),
            }
            replace(dir, &bytes, durable)
        }
        other => other,
    }
}

/// Writes the temp file and renames it over `state.json`; a temp file that
/// could not be written whole is removed (on a full disk it holds the last
/// free blocks).
fn replace(dir: &Path, bytes: &[u8], durable: bool) -> Result<(), SpoolError> {
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(STATE_TEMP);
    let written = (|| {
        let mut f = File::create(&tmp).map_err(|e| ("write", e))?;
        f.write_all(bytes).map_err(|e| ("write", e))?;
        if durable {
            f.sync_all().map_err(|e| ("fsync", e))?;
        }
        Ok(())
    })();
    if let Err((op, source)) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(SpoolError::Io { op, path: tmp, source });
    }
    std::fs::rename(&tmp, &path).map_err(|source| SpoolError::Io {
        op: "rename",
        path: path.clone(),
        source,
    })?;
    if durable {
        File::open(dir).and_then(|d| d.sync_all()).map_err(|source| SpoolError::Io {
            op: "fsync",
            path: dir.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}
