//! The agent's on-disk spool: every batch is written here before it is sent,
//! and released only after the collector acknowledged it.
//!
//! # Constraints
//!
//! - Bounded in bytes ([`SpoolConfig::max_bytes`]). When full, the configured
//!   [`FullPolicy`] applies: `drop_oldest` deletes the oldest segment (its
//!   unsent entries are counted as dropped and reported), `block` refuses the
//!   append until acknowledgements free space (inputs then stop reading).
//! - Memory does not grow with the backlog: entries are read back one at a
//!   time through a [`Cursor`]; only a list of segments (at most
//!   `max_bytes / segment_bytes + 1`) is kept in memory.
//! - Survives restarts and torn writes: recovery scans each segment and cuts
//!   the last one at its first incomplete or CRC-failing entry.
//! - Each entry carries opaque `meta` bytes written atomically with it (the
//!   agent puts its file checkpoints there, so "this line is spooled" and "the
//!   file's checkpoint is past this line" can never disagree after a crash).
//!
//! # A full filesystem
//!
//! The filesystem may fill before the spool reaches its bound (other files,
//! a bound larger than the disk). That is not the bound: no policy drops
//! anything for it, under `drop_oldest` as under `block`; the append is
//! refused with an error for which [`SpoolError::is_disk_full`] holds, and
//! the caller (the batcher) keeps the batch and retries, its inputs paused.
//!
//! - Before writing, an append checks the free space against the reserve
//!   (`space`: `spool.min_free_bytes`, default the smaller of 64 MiB and 1%
//!   of the filesystem) and refuses with [`SpoolError::DiskFull`]: nothing
//!   is written.
//! - A write that fails anyway (`ENOSPC`, `EDQUOT`, or any other error) is
//!   cut back: the segment is truncated to its last whole entry, so neither
//!   a reader now nor recovery after a restart meets a partial entry, and
//!   the next append writes where the failed one began. Should that
//!   truncation fail too, it is tried again before the next write, and
//!   nothing is written after the partial bytes meanwhile.
//! - A segment file that cannot be created leaves nothing to undo.
//! - Acknowledgements still free space: `state.json` may be written in the
//!   room of the old one (see `state`), and when it cannot be written at
//!   all the acknowledged segments older than the newest one holding
//!   entries are deleted anyway (the newest one is what a reopen takes the
//!   next sequence number and the checkpoints from when `state.json` lags).
//!
//! # Layout
//!
//! A directory of segments named by the sequence number of their first entry,
//! `00000000000000000042.spool`, holding entries back to back; `entry`
//! documents an entry's bytes one by one.
//!
//! Beside the segments, `state.json` holds the highest acknowledged sequence
//! number and the drop counters. It is replaced atomically but not fsync'd on
//! every acknowledgement: after a crash it may lag, and the entries after it
//! are sent again — the collector recognises them by producer id and batch
//! sequence number and appends them once. It is fsync'd before segments are
//! deleted (acknowledged, or dropped by `drop_oldest`).
//!
//! Segments whose entries are all acknowledged are deleted; so are segments
//! dropped by `drop_oldest`. Nothing else deletes spooled data.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod entry;
mod error;
mod recovery;
mod space;
mod state;

use entry::read_entry;
pub use entry::{ENTRY_HEADER_BYTES, ENTRY_MAGIC, Entry, MAX_ENTRY_BYTES, encode_entry};
pub use error::SpoolError;
use error::io_err;
use space::Space;
pub use space::{DEFAULT_RESERVE_BYTES, is_disk_full};
pub use state::SpoolState;
use state::{read_state, write_state};

const SEGMENT_SUFFIX: &str = ".spool";

/// What happens when the spool is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Delete the oldest segment, counting its unsent records as dropped.
    #[default]
    DropOldest,
    /// Refuse appends until acknowledgements free space.
    Block,
}

/// Settings of a spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolConfig {
    /// Most bytes on disk, all segments together.
    pub max_bytes: u64,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// What to do when full.
    pub policy: FullPolicy,
    /// Free bytes an append must leave on the filesystem; `None`: the
    /// smaller of [`DEFAULT_RESERVE_BYTES`] and 1% of the filesystem.
    pub min_free_bytes: Option<u64>,
}

impl SpoolConfig {
    /// A config with segments sized for 16 per spool (the drop granularity),
    /// between 64 KiB and 64 MiB, and the default reserve.
    pub fn with_max_bytes(max_bytes: u64, policy: FullPolicy) -> Self {
        let segment_bytes = (max_bytes / 16).clamp(64 * 1024, 64 * 1024 * 1024);
        Self { max_bytes, segment_bytes, policy, min_free_bytes: None }
    }
}

/// Result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Written with this sequence number; `dropped_records` unsent records
    /// were dropped to make room (policy `drop_oldest`).
    Written {
        /// The entry's sequence number.
        seq: u64,
        /// Records dropped to make room.
        dropped_records: u64,
    },
    /// Not written: the spool is full and the policy is `block`.
    Full,
}

#[derive(Debug, Clone)]
struct Segment {
    first_seq: u64,
    /// Sequence number after its last entry.
    end_seq: u64,
    bytes: u64,
}

/// A read position in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    /// Next entry to read.
    pub seq: u64,
    segment_first: u64,
    position: u64,
}

impl Cursor {
    /// A cursor at `seq`, positioned lazily on first read.
    pub fn at(seq: u64) -> Self {
        Self { seq, segment_first: u64::MAX, position: 0 }
    }
}

/// Depth figures for status reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SpoolStats {
    /// Entries not yet acknowledged.
    pub entries: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// The persistent counters.
    pub state: SpoolState,
    /// Free bytes on the spool's filesystem; `None` if it cannot be asked.
    pub free_bytes: Option<u64>,
    /// The reserve appends leave free.
    pub min_free_bytes: u64,
}

/// The spool. Not thread-safe by itself: the agent wraps it in a mutex.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    config: SpoolConfig,
    segments: Vec<Segment>,
    active: Option<File>,
    /// Segments closed since the last [`Spool::sync`], to sync then.
    unsynced: Vec<(u64, File)>,
    next_seq: u64,
    state: SpoolState,
    last_meta: Option<Vec<u8>>,
    /// The newest [`SyncPoint`] known fsync'd: entries below its `next_seq`
    /// survive a power cut.
    synced: SyncPoint,
    /// The free-space reserve.
    space: Space,
    /// A failed write left bytes after the active segment's last entry that
    /// could not be cut off yet.
    cut_pending: bool,
    /// The acknowledgement mark moved but `state.json` could not be written.
    state_unsaved: bool,
}

/// A position in the spool and the metadata of the newest entry before it:
/// taken before an fsync, published once the fsync succeeded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncPoint {
    /// Entries below this sequence number are covered.
    pub next_seq: u64,
    /// The metadata of entry `next_seq - 1` (the newest one covered).
    pub meta: Option<Vec<u8>>,
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}{SEGMENT_SUFFIX}"))
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir` and recovers it: every
    /// segment is scanned, the last one is cut at a torn tail.
    ///
    /// # Errors
    /// I/O failures and an unreadable `state.json`.
    pub fn open(dir: impl Into<PathBuf>, config: SpoolConfig) -> Result<Self, SpoolError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let state = read_state(&dir)?;
        let firsts = recovery::list_segments(&dir)?;
        let mut segments = Vec::with_capacity(firsts.len());
        let mut last_meta = state.last_meta.clone();
        for (i, &first) in firsts.iter().enumerate() {
            let (seg, meta) = recovery::scan_segment(&dir, first, i + 1 == firsts.len())?;
            if meta.is_some() {
                last_meta = meta;
            }
            segments.push(seg);
        }
        // Segments entirely below the acknowledgement mark are leftovers of a
        // crash between the acknowledgement and the deletion.
        let next_seq =
            segments.last().map_or(state.acked_below, |s| s.end_seq).max(state.acked_below);
        let space = Space::new(&dir, config.min_free_bytes);
        let mut spool = Self {
            space,
            cut_pending: false,
            state_unsaved: false,
            dir,
            config,
            segments,
            active: None,
            unsynced: Vec::new(),
            next_seq,
            state,
            synced: SyncPoint { next_seq, meta: last_meta.clone() },
            last_meta,
        };
        spool.delete_acked(false)?;
        Ok(spool)
    }

    /// The metadata of the newest entry ever written that is still on disk
    /// (the agent's latest checkpoints), from recovery or the last append.
    pub fn last_meta(&self) -> Option<&[u8]> {
        self.last_meta.as_deref()
    }

    /// What was appended so far: fsync it (see [`unsynced_files`](Self::unsynced_files)),
    /// then publish it with [`mark_synced`](Self::mark_synced).
    pub fn sync_point(&self) -> SyncPoint {
        SyncPoint { next_seq: self.next_seq, meta: self.last_meta.clone() }
    }

    /// Records that the entries below `point.next_seq` are fsync'd (an older
    /// point than the one recorded changes nothing).
    pub fn mark_synced(&mut self, point: SyncPoint) {
        if point.next_seq > self.synced.next_seq {
            self.synced = point;
        }
    }

    /// The newest point known fsync'd. Everything found on disk when the
    /// spool was opened counts as synced.
    pub fn synced(&self) -> &SyncPoint {
        &self.synced
    }

    /// Sequence number the next appended entry gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Entries below this are acknowledged.
    pub fn acked_below(&self) -> u64 {
        self.state.acked_below
    }

    /// Current depth and counters.
    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            entries: self.next_seq - self.first_unacked(),
            bytes: self.segments.iter().map(|s| s.bytes).sum(),
            state: SpoolState { last_meta: None, ..self.state.clone() },
            free_bytes: self.space.free(),
            min_free_bytes: self.space.reserve(),
        }
    }

    /// Free bytes on the spool's filesystem now; `None` if it cannot be
    /// asked.
    pub fn free_bytes(&self) -> Option<u64> {
        self.space.free()
    }

    fn first_unacked(&self) -> u64 {
        let first = self.segments.first().map_or(self.next_seq, |s| s.first_seq);
        first.max(self.state.acked_below)
    }

    fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Appends an entry (written to the page cache; see [`sync`](Self::sync)).
    ///
    /// # Errors
    /// I/O failures; an entry too large for the spool; a full filesystem
    /// ([`SpoolError::is_disk_full`]). After an error nothing of the entry
    /// is in the spool and the same append may be tried again.
    pub fn append(
        &mut self,
        records: u32,
        meta: &[u8],
        payload: &[u8],
    ) -> Result<Appended, SpoolError> {
        let bytes = encode_entry(self.next_seq, records, meta, payload);
        if bytes.len() > MAX_ENTRY_BYTES || bytes.len() as u64 > self.config.max_bytes {
            return Err(SpoolError::EntryTooLarge {
                bytes: bytes.len(),
                max: self.config.max_bytes.min(MAX_ENTRY_BYTES as u64),
            });
        }
        let mut dropped_records = 0;
        while self.total_bytes() + bytes.len() as u64 > self.config.max_bytes {
            match self.config.policy {
                FullPolicy::Block => return Ok(Appended::Full),
                FullPolicy::DropOldest => {
                    if self.segments.len() == 1 {
                        // Only the active segment is left: close it so it can go.
                        self.active = None;
                        self.segments.push(Segment {
                            first_seq: self.next_seq,
                            end_seq: self.next_seq,
                            bytes: 0,
                        });
                    }
                    dropped_records += self.drop_oldest()?;
                }
            }
        }
        self.space.check(bytes.len() as u64)?;
        let needs_new = match self.segments.last() {
            None => true,
            Some(s) => s.bytes > 0 && s.bytes + bytes.len() as u64 > self.config.segment_bytes,
        };
        if needs_new {
            // The closed segment's tail is synced by the next `sync`.
            if let (Some(f), Some(seg)) = (self.active.take(), self.segments.last()) {
                self.unsynced.push((seg.first_seq, f));
            }
            let live = &self.segments;
            self.unsynced.retain(|(first, _)| live.iter().any(|s| s.first_seq == *first));
            self.segments.push(Segment {
                first_seq: self.next_seq,
                end_seq: self.next_seq,
                bytes: 0,
            });
        }
        let seg = self.segments.last_mut().ok_or_else(|| SpoolError::State {
            path: self.dir.clone(),
            message: "no active segment".into(),
        })?;
        let path = segment_path(&self.dir, seg.first_seq);
        if self.active.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_err("open", &path))?;
            self.active = Some(f);
        }
        if let Some(f) = self.active.as_mut() {
            if self.cut_pending {
                f.set_len(seg.bytes).map_err(io_err("truncate", &path))?;
                self.cut_pending = false;
            }
            if let Err(e) = f.write_all(&bytes) {
                // Part of the entry may be there: cut the segment back to
                // its last whole entry, so the next append (this one again)
                // follows it and recovery never meets the fragment.
                if let Err(cut) = f.set_len(seg.bytes) {
                    tracing::warn!(segment = %path.display(), error = %cut, "cutting a failed write back failed; trying again before the next write");
                    self.cut_pending = true;
                }
                return Err(SpoolError::Io { op: "write", path, source: e });
            }
        }
        seg.end_seq += 1;
        seg.bytes += bytes.len() as u64;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.last_meta = Some(meta.to_vec());
        Ok(Appended::Written { seq, dropped_records })
    }

    /// Deletes the oldest segment; returns the unsent records it held.
    fn drop_oldest(&mut self) -> Result<u64, SpoolError> {
        let Some(seg) = self.segments.first().cloned() else { return Ok(0) };
        let path = segment_path(&self.dir, seg.first_seq);
        let unsent_from = seg.first_seq.max(self.state.acked_below);
        let mut dropped_records = 0;
        let mut dropped_entries = 0;
        if unsent_from < seg.end_seq {
            // Count the records of the unsent entries (a rescan of one segment).
            if let Ok(f) = File::open(&path) {
                let mut r = BufReader::with_capacity(256 * 1024, f);
                while let Ok(Ok(Some(e))) = read_entry(&mut r) {
                    if e.seq >= unsent_from {
                        dropped_records += u64::from(e.records);
                        dropped_entries += 1;
                    }
                }
            }
        }
        // The state goes first, durably: a crash before the deletion leaves
        // a segment the state already calls acknowledged (deleted at open),
        // never a missing segment the state does not account for.
        let mut state = self.state.clone();
        state.dropped_entries += dropped_entries;
        state.dropped_records += dropped_records;
        state.acked_below = state.acked_below.max(seg.end_seq);
        state.last_meta.clone_from(&self.last_meta);
        write_state(&self.dir, &state, true, self.holds_entries())?;
        self.state = state;
        self.segments.remove(0);
        self.unsynced.retain(|(first, _)| *first != seg.first_seq);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(SpoolError::Io { op: "delete", path, source: e }),
        }
        tracing::warn!(segment = %path.display(), dropped_records, "spool full: dropped the oldest segment");
        Ok(dropped_records)
    }

    /// Whether a segment holding entries is on disk.
    fn holds_entries(&self) -> bool {
        self.segments.iter().any(|s| s.end_seq > s.first_seq)
    }

    /// fsyncs what was appended since the last call: the active segment and
    /// the segments closed since.
    ///
    /// # Errors
    /// The sync failed.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        let point = self.sync_point();
        for (path, f) in self.unsynced_files()? {
            f.sync_data().map_err(io_err("fsync", &path))?;
        }
        self.mark_synced(point);
        Ok(())
    }

    /// Handles of the files [`sync`](Self::sync) would fsync, for a caller
    /// that syncs them without holding the spool (an fsync can take long;
    /// reads and acknowledgements need not wait for it).
    ///
    /// # Errors
    /// The active segment's handle could not be duplicated.
    pub fn unsynced_files(&mut self) -> Result<Vec<(PathBuf, File)>, SpoolError> {
        let mut files: Vec<(PathBuf, File)> = std::mem::take(&mut self.unsynced)
            .into_iter()
            .filter(|(first, _)| self.segments.iter().any(|s| s.first_seq == *first))
            .map(|(first, f)| (segment_path(&self.dir, first), f))
            .collect();
        if let (Some(f), Some(seg)) = (&self.active, self.segments.last()) {
            let path = segment_path(&self.dir, seg.first_seq);
            let dup = f.try_clone().map_err(io_err("duplicate", &path))?;
            files.push((path, dup));
        }
        Ok(files)
    }

    /// Marks every entry below `below` as acknowledged and deletes segments
    /// that hold only acknowledged entries.
    ///
    /// # Errors
    /// I/O failures writing the state or deleting segments; calling again
    /// with the same `below` tries again.
    pub fn ack(&mut self, below: u64) -> Result<(), SpoolError> {
        let below = below.min(self.next_seq);
        if below <= self.state.acked_below && !self.state_unsaved {
            return Ok(());
        }
        self.state.acked_below = self.state.acked_below.max(below);
        self.state.last_meta.clone_from(&self.last_meta);
        // The state goes first (durably when segments are about to go), so the
        // newest metadata survives the segment that held it.
        let deletes = self.segments.first().is_some_and(|s| s.end_seq <= self.state.acked_below);
        if let Err(e) = write_state(&self.dir, &self.state, deletes, self.holds_entries()) {
            self.state_unsaved = true;
            // Older segments may go without it (a full disk needs the room).
            self.delete_acked(true)?;
            return Err(e);
        }
        self.state_unsaved = false;
        self.delete_acked(false)
    }

    /// Deletes the segments holding only acknowledged entries; `keep_newest`:
    /// all but the newest segment holding entries (which gives the next
    /// sequence number and the newest checkpoints at a reopen when
    /// `state.json` lags).
    fn delete_acked(&mut self, keep_newest: bool) -> Result<(), SpoolError> {
        let mut deletable = if keep_newest {
            self.segments.iter().rposition(|s| s.end_seq > s.first_seq).unwrap_or(0)
        } else {
            usize::MAX
        };
        while deletable > 0
            && self.segments.first().is_some_and(|s| s.end_seq <= self.state.acked_below)
        {
            deletable -= 1;
            let seg = self.segments.remove(0);
            // An open handle would keep the deleted file's blocks in use.
            self.unsynced.retain(|(first, _)| *first != seg.first_seq);
            if self.segments.is_empty() {
                // The active segment went too: the next append starts a new one.
                self.active = None;
                self.cut_pending = false;
            }
            let path = segment_path(&self.dir, seg.first_seq);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(SpoolError::Io { op: "delete", path, source: e }),
            }
        }
        Ok(())
    }

    /// Reads the entry at `cursor` and moves the cursor past it; `Ok(None)`
    /// when nothing is there yet. A cursor below the oldest entry still on
    /// disk (dropped) moves to it.
    ///
    /// # Errors
    /// I/O failures.
    pub fn read(&self, cursor: &mut Cursor) -> Result<Option<Entry>, SpoolError> {
        let first = self.first_unacked().min(self.next_seq);
        if cursor.seq < first {
            *cursor = Cursor::at(first);
        }
        if cursor.seq >= self.next_seq {
            return Ok(None);
        }
        let Some(seg) = self
            .segments
            .iter()
            .rev()
            .find(|s| s.first_seq <= cursor.seq && cursor.seq < s.end_seq)
        else {
            return Ok(None);
        };
        if cursor.segment_first != seg.first_seq {
            cursor.segment_first = seg.first_seq;
            cursor.position = 0;
        }
        let path = segment_path(&self.dir, seg.first_seq);
        let mut file = File::open(&path).map_err(io_err("open", &path))?;
        file.seek(io::SeekFrom::Start(cursor.position)).map_err(io_err("seek", &path))?;
        let mut reader = BufReader::new(file);
        loop {
            let entry = match read_entry(&mut reader).map_err(io_err("read", &path))? {
                Ok(Some(e)) => e,
                Ok(None) | Err(_) => return Ok(None),
            };
            cursor.position += (ENTRY_HEADER_BYTES + entry.meta.len() + entry.payload.len()) as u64;
            if entry.seq >= cursor.seq {
                cursor.seq = entry.seq + 1;
                return Ok(Some(entry));
            }
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
