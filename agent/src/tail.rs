//! Following log files: globs, rotation, truncation, line splitting.
//!
//! # File identity
//!
//! A file is its device and inode **and** a fingerprint of its first bytes
//! (`identity`): a recycled inode whose first bytes differ is a new file,
//! read from its start.
//!
//! # Rotation
//!
//! Each followed file keeps its descriptor open, so a file that is renamed
//! (logrotate `create`) or deleted is read to its end through the old
//! descriptor before it is let go; the new file at the path is a new file,
//! read from its start. A file whose size drops below the read offset was
//! truncated (copy-truncate): the agent first looks in the same directory for
//! the copy (a file with the same fingerprint and at least the read offset in
//! size), reads the rest of the old content from it, then starts the truncated
//! file from 0. A file renamed while the agent was stopped is found again by
//! device, inode and fingerprint in its directory.
//!
//! # Globs that match the rotated generations
//!
//! With `app.log*` or `/var/log/syslog*` the globs also match what rotation
//! makes, and every line is still read once:
//!
//! - a followed file renamed to a name the globs match is the same file
//!   (device and inode): it is followed on under its new name, from where it
//!   was, and let go only once no matched name is its;
//! - a new file in the same directory, named after a followed one
//!   (`app.log.1`), whose first bytes are that file's fingerprint is a copy
//!   (copy-truncate): what it holds is read through the file it copies (or,
//!   once that is truncated, through the copy's rest as above), so it is
//!   tracked, never read on its own;
//! - a copy whose rest was read after a truncation is tracked from that end.
//!
//! All of these are checkpointed like any followed file, so a restart does
//! not read them again either. Rotated generations are read before the live
//! file in every poll, so one log's lines keep their order.
//!
//! # Logical name
//!
//! Each followed file has a *logical* name: the path it had when the agent
//! first saw it (for a live log, its own name), kept across renames,
//! copy-truncate copies and restarts (it is in the checkpoint). Lines carry
//! it ([`Line::logical`]) beside the current path, so a partition key built
//! from the file (`{file}`) stays the same for one log across rotations.
//!
//! # Lines
//!
//! Lines end at `\n` (the newline is not shipped; bytes are kept as they are,
//! no UTF-8 conversion). A line longer than `max_line_bytes` is cut into
//! pieces of that size, each marked `split`. A final line without a newline is
//! handed out once the file has been idle for `partial_flush` or is let go
//! after a rotation. Each line carries the offset just past it, which the
//! agent records as the file's checkpoint once the line is in the spool.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

mod identity;
pub mod watch;

pub use identity::{FINGERPRINT_BYTES, FileId};
use identity::{find_copy, identify, same_file};

/// Bytes read from one file per read call.
const READ_CHUNK_BYTES: usize = 256 * 1024;

/// Where a file seen for the first time at start-up is read from. Files that
/// appear while the agent runs are always read from their start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    /// From the first byte.
    #[default]
    Beginning,
    /// From the current end: only lines written from now on.
    End,
}

/// Settings of a tailer.
#[derive(Debug, Clone)]
pub struct TailConfig {
    /// Glob patterns of the files to follow.
    pub globs: Vec<String>,
    /// Where files found at start-up without a checkpoint start.
    pub start_at: StartAt,
    /// Longest line; longer lines are split into pieces of this size.
    pub max_line_bytes: usize,
    /// A last line without a newline is handed out after this much idleness.
    pub partial_flush: Duration,
    /// A rotated or deleted file is let go after it has been read to its end
    /// and stayed idle this long (writers may still hold it open).
    pub rotate_wait: Duration,
    /// How often the globs are listed again for new files.
    pub rescan_every: Duration,
}

/// Where the agent is in one file; what it records in the spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The file.
    pub id: FileId,
    /// Its path when last seen.
    #[serde(with = "path_serde")]
    pub path: PathBuf,
    /// Its logical name: the path it had when first seen (see the module
    /// header). Empty in checkpoints written before it existed: the path is
    /// used then.
    #[serde(default, with = "path_serde", skip_serializing_if = "path_is_empty")]
    pub logical: PathBuf,
    /// Offset after the last line that is in the spool.
    pub offset: u64,
}

impl Checkpoint {
    /// The logical name, or the path for a checkpoint without one.
    pub fn logical_name(&self) -> &Path {
        if self.logical.as_os_str().is_empty() { &self.path } else { &self.logical }
    }
}

fn path_is_empty(p: &Path) -> bool {
    p.as_os_str().is_empty()
}

/// Paths in checkpoints: a string when the path is UTF-8, else its bytes, so
/// a file whose name is not UTF-8 keeps an exact checkpoint (serde's own
/// `PathBuf` support refuses such paths).
mod path_serde {
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::{Path, PathBuf};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
        match path.to_str() {
            Some(text) => s.serialize_str(text),
            None => s.collect_seq(path.as_os_str().as_bytes()),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Bytes(Vec<u8>),
        }
        Ok(match Repr::deserialize(d)? {
            Repr::Text(t) => PathBuf::from(t),
            Repr::Bytes(b) => PathBuf::from(OsString::from_vec(b)),
        })
    }
}

/// One line read from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The file it came from.
    pub id: FileId,
    /// The file's path (the path it was found under).
    pub path: PathBuf,
    /// The file's logical name (the path it had when first seen).
    pub logical: PathBuf,
    /// The bytes, without the newline.
    pub data: Vec<u8>,
    /// Offset just past the line (and its newline) in the file.
    pub end_offset: u64,
    /// Part of a line longer than `max_line_bytes`.
    pub split: bool,
}

/// Errors worth reporting about one file; the tailer goes on with the others.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// A glob pattern does not parse.
    #[error("bad glob pattern {pattern:?}: {message}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// Why.
        message: String,
    },
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Counters of what the tailer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TailStats {
    /// Lines handed out.
    pub lines: u64,
    /// Pieces of over-long lines among them.
    pub split_pieces: u64,
    /// Files let go after a rotation or deletion.
    pub rotations: u64,
    /// Truncations seen (copy-truncate).
    pub truncations: u64,
}

#[derive(Debug)]
struct Followed {
    id: FileId,
    path: PathBuf,
    /// The path it had when first seen, kept across renames and restarts.
    logical: PathBuf,
    file: File,
    /// Offset of the next byte to read.
    read_offset: u64,
    /// Bytes read but not yet handed out (a line without its newline yet).
    pending: Vec<u8>,
    last_growth: Instant,
    /// Set when the path now names another file (or none): read to the end,
    /// flush, then let go.
    retiring: bool,
    /// Set when the file's first bytes changed under the same inode: it was
    /// truncated and written again before the size showed it.
    rewritten: bool,
    /// A copy of another followed file (copy-truncate) that the globs match:
    /// tracked so it is not read as a new file, never read itself (what it
    /// holds comes through the file it copies).
    copy: bool,
}

impl Followed {
    /// A file followed from `offset`, not retiring.
    fn new(id: FileId, path: PathBuf, logical: PathBuf, file: File, offset: u64) -> Self {
        Self {
            id,
            path,
            logical,
            file,
            read_offset: offset,
            pending: Vec::new(),
            last_growth: Instant::now(),
            retiring: false,
            rewritten: false,
            copy: false,
        }
    }

    /// Whether it is a rotated generation (renamed, retiring or a copy): read
    /// before the live files, so one log's lines stay in order.
    fn is_generation(&self) -> bool {
        self.retiring || self.copy || self.path != self.logical
    }
}

/// Follows the files matching a set of globs.
#[derive(Debug)]
pub struct Tailer {
    config: TailConfig,
    /// The globs, parsed.
    patterns: Vec<glob::Pattern>,
    files: Vec<Followed>,
    /// Checkpoints not matched to a file yet (files not found since start).
    waiting: HashMap<FileId, Checkpoint>,
    started: bool,
    last_scan: Option<Instant>,
    stats: TailStats,
    /// Files started since the last [`Tailer::take_started`], with their
    /// start offsets.
    started_files: Vec<Checkpoint>,
}

impl Tailer {
    /// A tailer resuming from `checkpoints` (from the spool).
    ///
    /// # Errors
    /// A glob pattern that does not parse.
    pub fn new(config: TailConfig, checkpoints: Vec<Checkpoint>) -> Result<Self, TailError> {
        let patterns = config
            .globs
            .iter()
            .map(|g| {
                glob::Pattern::new(g)
                    .map_err(|e| TailError::Pattern { pattern: g.clone(), message: e.to_string() })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            config,
            patterns,
            files: Vec::new(),
            waiting: checkpoints.into_iter().map(|c| (c.id, c)).collect(),
            started: false,
            last_scan: None,
            stats: TailStats::default(),
            started_files: Vec::new(),
        })
    }

    /// Files started since the last call, each with the offset it starts at.
    /// The agent records them as checkpoints even before a line is read, so a
    /// file rotated while the agent is stopped is found again at start-up.
    pub fn take_started(&mut self) -> Vec<Checkpoint> {
        std::mem::take(&mut self.started_files)
    }

    /// Whether the file with this device and inode is followed now. The agent
    /// drops the checkpoints of files that are not (read to their end and let
    /// go), so a recycled inode never meets a stale checkpoint.
    pub fn is_following(&self, dev: u64, ino: u64) -> bool {
        self.files.iter().any(|f| f.id.dev == dev && f.id.ino == ino)
            || self.waiting.keys().any(|id| id.dev == dev && id.ino == ino)
    }

    /// The directories to watch for changes: those of the followed files and
    /// the fixed part of each glob.
    pub fn watch_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .config
            .globs
            .iter()
            .filter_map(|g| watch::glob_dir(g))
            .chain(self.files.iter().filter_map(|f| f.path.parent().map(Path::to_path_buf)))
            .filter(|d| !d.as_os_str().is_empty())
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// The longest a poll may be put off while nothing changes: the rescan
    /// interval, or sooner for an idle timer (partial lines, rotated files).
    pub fn idle_wait(&self) -> Duration {
        let mut wait = self.config.rescan_every;
        if self.files.iter().any(|f| !f.pending.is_empty()) {
            wait = wait.min(self.config.partial_flush);
        }
        if self.files.iter().any(|f| f.retiring) {
            wait = wait.min(self.config.rotate_wait);
        }
        wait
    }

    /// What the tailer did so far.
    pub fn stats(&self) -> TailStats {
        self.stats
    }

    /// Paths and read offsets of the followed files (for status reports).
    pub fn files(&self) -> Vec<(PathBuf, u64)> {
        self.files.iter().map(|f| (f.path.clone(), f.read_offset)).collect()
    }

    /// Identity, path and read offset of each followed file (for status
    /// reports that join them with checkpoints).
    pub fn followed(&self) -> Vec<(FileId, PathBuf, u64)> {
        self.files.iter().map(|f| (f.id, f.path.clone(), f.read_offset)).collect()
    }

    /// Looks for new files, reads what the followed files gained (at most
    /// about `budget` bytes in all), and appends complete lines to `out`.
    /// Returns the errors met on individual files; they do not stop the others.
    pub fn poll(&mut self, out: &mut Vec<Line>, budget: usize) -> Vec<TailError> {
        let mut errors = Vec::new();
        let now = Instant::now();
        if self.last_scan.is_none_or(|t| now.duration_since(t) >= self.config.rescan_every) {
            self.discover(&mut errors);
            self.last_scan = Some(now);
        }
        // Rotated generations first: their lines are older than the live
        // file's (a stable sort keeps the order otherwise).
        self.files.sort_by_key(|f| !f.is_generation());
        let mut used = 0;
        let mut i = 0;
        while i < self.files.len() {
            match self.read_file(i, out, budget.saturating_sub(used), now) {
                Ok((n, done)) => {
                    used += n;
                    if done {
                        let f = self.files.remove(i);
                        self.stats.rotations += 1;
                        tracing::info!(path = %f.path.display(), offset = f.read_offset, "finished a rotated or deleted file");
                        continue;
                    }
                }
                Err(e) => errors.push(e),
            }
            i += 1;
        }
        self.started = true;
        errors
    }

    /// Finds files matching the globs that are not followed yet, follows
    /// followed files that were renamed to a name the globs match, and marks
    /// followed files no matched name holds any more as retiring.
    fn discover(&mut self, errors: &mut Vec<TailError>) {
        let mut seen: Vec<(PathBuf, std::fs::Metadata)> = Vec::new();
        for g in &self.config.globs {
            let Ok(paths) = glob::glob(g) else { continue };
            for p in paths.flatten() {
                if let Ok(meta) = std::fs::metadata(&p)
                    && meta.is_file()
                {
                    seen.push((p, meta));
                }
            }
        }
        // Per directory, shorter names first: a live log (`app.log`) before
        // the copies named after it (`app.log.1`), so a copy is known as one.
        seen.sort_by(|(a, _), (b, _)| {
            (a.parent(), a.as_os_str().len(), a).cmp(&(b.parent(), b.as_os_str().len(), b))
        });
        seen.dedup_by(|a, b| a.0 == b.0);
        for f in &mut self.files {
            let is_it = |m: &std::fs::Metadata| m.dev() == f.id.dev && m.ino() == f.id.ino;
            if seen.iter().any(|(p, m)| p == &f.path && is_it(m)) {
                if f.retiring || f.copy {
                    continue;
                }
                if let Ok(meta) = f.file.metadata() {
                    f.rewritten = !head_matches(f, &meta);
                }
                continue;
            }
            match seen.iter().find(|(_, m)| is_it(m)) {
                Some((p, _)) => {
                    // Renamed (a rotation) to a name the globs match: the
                    // same file, followed on under its new name.
                    tracing::info!(from = %f.path.display(), to = %p.display(), offset = f.read_offset, "followed file renamed; following it under its new name");
                    f.path = p.clone();
                    f.retiring = false;
                }
                None => f.retiring = true,
            }
        }
        for (path, meta) in seen {
            if self.files.iter().any(|f| f.id.dev == meta.dev() && f.id.ino == meta.ino()) {
                continue;
            }
            let followed = match self.copy_origin(&path, &meta) {
                Some(logical) => self.track_copy(&path, logical, None),
                None => self.follow(&path, &meta),
            };
            if let Err(e) = followed {
                errors.push(TailError::Io { path, source: e });
            }
        }
        // Checkpointed files renamed while the agent was stopped: look for
        // them next to where they were.
        if !self.started {
            let waiting: Vec<Checkpoint> = self.waiting.drain().map(|(_, c)| c).collect();
            for c in waiting {
                if let Err(e) = self.find_renamed(&c) {
                    errors.push(TailError::Io { path: c.path.clone(), source: e });
                }
            }
        }
    }

    /// Whether the globs match `path`.
    fn matches(&self, path: &Path) -> bool {
        self.patterns.iter().any(|p| p.matches_path(path))
    }

    /// If the new file at `path` is a copy of a followed file (in the same
    /// directory, named after it, starting with its fingerprint), that
    /// file's logical name.
    fn copy_origin(&self, path: &Path, meta: &std::fs::Metadata) -> Option<PathBuf> {
        let name = path.file_name()?.to_str()?;
        let mut file = None;
        for f in &self.files {
            let named_after = f
                .path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|live| name != live && name.starts_with(live));
            if f.copy
                || f.id.fingerprint_len == 0
                || f.path.parent() != path.parent()
                || !named_after
                || meta.len() < f.id.fingerprint_len
            {
                continue;
            }
            if file.is_none() {
                file = Some(File::open(path).ok()?);
            }
            let (fp, _) = identity::fingerprint(file.as_mut()?, f.id.fingerprint_len).ok()?;
            if fp == f.id.fingerprint {
                return Some(f.logical.clone());
            }
        }
        None
    }

    /// Tracks a copy (copy-truncate) at `path` from its end, or from `offset`
    /// when its rest is still to be read (a truncation seen at start-up),
    /// under the logical name of the file it copies.
    fn track_copy(&mut self, path: &Path, logical: PathBuf, offset: Option<u64>) -> io::Result<()> {
        let mut file = File::open(path)?;
        let meta = file.metadata()?;
        let id = identify(&mut file, &meta)?;
        let start = offset.unwrap_or(meta.len()).min(meta.len());
        file.seek(SeekFrom::Start(start))?;
        tracing::info!(path = %path.display(), logical = %logical.display(), offset = start, "tracking a copy made by copy-truncate");
        self.started_files.push(Checkpoint {
            id,
            path: path.to_path_buf(),
            logical: logical.clone(),
            offset: start,
        });
        let mut f = Followed::new(id, path.to_path_buf(), logical, file, start);
        // Whose rest is to be read is read; one only tracked is not.
        f.copy = offset.is_none();
        f.retiring = !self.matches(path);
        self.files.push(f);
        Ok(())
    }

    /// Starts following a file at the right offset.
    fn follow(&mut self, path: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
        let mut file = File::open(path)?;
        let meta = file.metadata().unwrap_or_else(|_| meta.clone());
        let checkpoint = self
            .waiting
            .values()
            .find(|c| c.id.dev == meta.dev() && c.id.ino == meta.ino())
            .cloned();
        if let Some(c) = &checkpoint
            && (meta.len() < c.offset || !same_file(&c.id, &mut file, &meta)?)
        {
            // Truncated (copy-truncate) while the agent was stopped: the rest
            // of the old content is in the copy, if there is one.
            self.waiting.remove(&c.id);
            self.stats.truncations += 1;
            if let Some((copy, _)) = find_copy(path, &c.id, c.offset) {
                let copy_meta = std::fs::metadata(&copy)?;
                if !self
                    .files
                    .iter()
                    .any(|f| f.id.dev == copy_meta.dev() && f.id.ino == copy_meta.ino())
                {
                    tracing::info!(path = %path.display(), copy = %copy.display(), offset = c.offset, "finishing a file truncated while stopped from its copy");
                    self.track_copy(&copy, c.logical_name().to_path_buf(), Some(c.offset))?;
                }
            }
        }
        let (id, offset, logical) = match checkpoint {
            Some(c) if self.waiting.contains_key(&c.id) && same_file(&c.id, &mut file, &meta)? => {
                self.waiting.remove(&c.id);
                let logical = c.logical_name().to_path_buf();
                if meta.len() < c.offset {
                    self.stats.truncations += 1;
                    (identify(&mut file, &meta)?, 0, logical)
                } else {
                    (c.id, c.offset, logical)
                }
            }
            // The same inode, other content: a file written again, still
            // the same log, read from its start.
            Some(c) => (identify(&mut file, &meta)?, 0, c.logical_name().to_path_buf()),
            None => {
                let start = match (self.started, self.config.start_at) {
                    (false, StartAt::End) => meta.len(),
                    _ => 0,
                };
                (identify(&mut file, &meta)?, start, path.to_path_buf())
            }
        };
        file.seek(SeekFrom::Start(offset))?;
        tracing::info!(path = %path.display(), offset, "following file");
        self.started_files.push(Checkpoint {
            id,
            path: path.to_path_buf(),
            logical: logical.clone(),
            offset,
        });
        self.files.push(Followed::new(id, path.to_path_buf(), logical, file, offset));
        Ok(())
    }

    /// Finds a checkpointed file that was renamed while the agent was stopped
    /// and reads what is left of it.
    fn find_renamed(&mut self, c: &Checkpoint) -> io::Result<()> {
        if self.files.iter().any(|f| f.id.dev == c.id.dev && f.id.ino == c.id.ino) {
            // Already followed (found under a name the globs match, or
            // tracked as a copy): its position is the one it is followed at.
            return Ok(());
        }
        let Some(dir) = c.path.parent() else { return Ok(()) };
        let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if !meta.is_file() || meta.dev() != c.id.dev || meta.ino() != c.id.ino {
                continue;
            }
            let mut file = File::open(e.path())?;
            if same_file(&c.id, &mut file, &meta)? && meta.len() > c.offset {
                file.seek(SeekFrom::Start(c.offset))?;
                tracing::info!(path = %e.path().display(), offset = c.offset, "finishing a file renamed while stopped");
                let logical = c.logical_name().to_path_buf();
                let mut f = Followed::new(c.id, e.path(), logical, file, c.offset);
                f.retiring = true;
                self.files.push(f);
            }
            return Ok(());
        }
        Ok(())
    }

    /// Reads what file `i` gained. Returns bytes read and whether the file is
    /// finished (retired and fully read).
    fn read_file(
        &mut self,
        i: usize,
        out: &mut Vec<Line>,
        budget: usize,
        now: Instant,
    ) -> Result<(usize, bool), TailError> {
        let max_line = self.config.max_line_bytes;
        let partial_flush = self.config.partial_flush;
        let rotate_wait = self.config.rotate_wait;
        let f = &mut self.files[i];
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TailError::Io { path, source }
        };
        let meta = f.file.metadata().map_err(io_err(&f.path))?;
        // Before reading what looks like growth, check that the file still
        // starts as it did: a copy-truncate whose file was written past the
        // old offset again before this poll looks like growth by its size
        // alone, and reading on would take the new content's middle for the
        // old content's rest.
        if !f.rewritten && !f.copy && meta.len() > f.read_offset && !head_matches(f, &meta) {
            f.rewritten = true;
        }
        if meta.len() < f.read_offset || f.rewritten {
            // Truncated: finish the old content from its copy, if there is one.
            self.stats.truncations += 1;
            let copy = find_copy(&f.path, &f.id, f.read_offset);
            let f = &mut self.files[i];
            if let Some((copy_path, mut copy)) = copy {
                tracing::info!(path = %f.path.display(), offset = f.read_offset, "file truncated: reading the rest from its copy");
                let mut rest = Vec::new();
                copy.seek(SeekFrom::Start(f.read_offset)).map_err(io_err(&f.path))?;
                copy.read_to_end(&mut rest).map_err(io_err(&f.path))?;
                let end = f.read_offset + rest.len() as u64;
                f.pending.extend_from_slice(&rest);
                f.read_offset = end;
                split_lines(f, out, max_line, &mut self.stats);
                // The copy's whole content is read now: if the globs match it,
                // track it from its end so it is not read as a new file.
                let logical = f.logical.clone();
                let tracked = copy.metadata().is_ok_and(|m| {
                    self.files.iter().any(|g| g.id.dev == m.dev() && g.id.ino == m.ino())
                });
                if !tracked && self.matches(&copy_path) {
                    self.track_copy(&copy_path, logical, Some(end)).map_err(io_err(&copy_path))?;
                }
            } else {
                tracing::warn!(path = %f.path.display(), offset = f.read_offset, "file truncated; no copy found");
            }
            let f = &mut self.files[i];
            flush_partial(f, out, &mut self.stats);
            f.rewritten = false;
            f.file.seek(SeekFrom::Start(0)).map_err(io_err(&f.path))?;
            f.read_offset = 0;
            f.pending.clear();
            f.id = identify(&mut f.file, &meta).map_err(io_err(&f.path))?;
            f.file.seek(SeekFrom::Start(0)).map_err(io_err(&f.path))?;
        }
        let f = &mut self.files[i];
        if f.copy {
            // Read through the file it copies; let go once gone. A copy seen
            // while it was being written grows: its checkpoint follows its
            // length, so an agent restarted after the original was
            // truncated and written again (the copy no longer recognisable
            // as its copy) does not read its content a second time.
            if meta.len() > f.read_offset {
                f.read_offset = meta.len();
                f.last_growth = now;
                f.file.seek(SeekFrom::Start(f.read_offset)).map_err(io_err(&f.path))?;
                self.started_files.push(Checkpoint {
                    id: f.id,
                    path: f.path.clone(),
                    logical: f.logical.clone(),
                    offset: f.read_offset,
                });
            }
            let done = f.retiring && now.duration_since(f.last_growth) >= rotate_wait;
            return Ok((0, done));
        }
        if budget == 0 {
            // This poll's budget went to other files: nothing was read, so
            // nothing follows from it (a retiring file is not at its end, an
            // idle timer has not run out).
            return Ok((0, false));
        }
        let mut total = 0;
        let mut chunk = vec![0u8; READ_CHUNK_BYTES.min(budget.max(4096))];
        loop {
            if total >= budget {
                break;
            }
            let n = f.file.read(&mut chunk).map_err(io_err(&f.path))?;
            if n == 0 {
                break;
            }
            total += n;
            f.last_growth = now;
            // Grow the fingerprint while the file is still short of its length.
            if f.id.fingerprint_len < FINGERPRINT_BYTES && f.read_offset < FINGERPRINT_BYTES {
                let upto = (f.read_offset + n as u64).min(FINGERPRINT_BYTES);
                if upto > f.id.fingerprint_len {
                    let mut head = vec![0u8; upto as usize];
                    f.file.read_exact_at_start(&mut head).map_err(io_err(&f.path))?;
                    f.id.fingerprint = crc32c::crc32c(&head);
                    f.id.fingerprint_len = upto;
                }
            }
            f.pending.extend_from_slice(&chunk[..n]);
            f.read_offset += n as u64;
            split_lines(f, out, max_line, &mut self.stats);
        }
        let idle = now.duration_since(f.last_growth) >= partial_flush;
        if f.retiring && total == 0 && now.duration_since(f.last_growth) >= rotate_wait {
            flush_partial(f, out, &mut self.stats);
            return Ok((total, true));
        }
        if idle && !f.pending.is_empty() {
            flush_partial(f, out, &mut self.stats);
        }
        Ok((total, false))
    }
}

/// Positioned read of the file's first bytes without moving its cursor.
trait ReadAtStart {
    fn read_exact_at_start(&self, buf: &mut [u8]) -> io::Result<()>;
}

impl ReadAtStart for File {
    fn read_exact_at_start(&self, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, 0)
    }
}

/// Hands out every complete line in `f.pending`, and over-long pieces.
/// Whether `f`'s file (now `meta`) still starts with the bytes its
/// fingerprint covers.
fn head_matches(f: &Followed, meta: &std::fs::Metadata) -> bool {
    let mut head = vec![0u8; f.id.fingerprint_len.min(meta.len()) as usize];
    f.file.read_exact_at_start(&mut head).is_ok()
        && head.len() as u64 == f.id.fingerprint_len
        && crc32c::crc32c(&head) == f.id.fingerprint
}

fn split_lines(f: &mut Followed, out: &mut Vec<Line>, max_line: usize, stats: &mut TailStats) {
    let mut start = 0;
    // Offset in the file of pending[0].
    let base = f.read_offset - f.pending.len() as u64;
    loop {
        let rest = &f.pending[start..];
        match memchr::memchr(b'\n', rest) {
            Some(nl) => {
                emit(f, out, start, start + nl, base + (start + nl + 1) as u64, max_line, stats);
                start += nl + 1;
            }
            None => {
                // No newline: cut pieces off a line that is already too long.
                while f.pending.len() - start >= max_line {
                    let end = start + max_line;
                    push_line(f, out, start, end, base + end as u64, true, stats);
                    start = end;
                }
                break;
            }
        }
    }
    f.pending.drain(..start);
}

/// Emits `pending[from..to]` as one line ending at `end_offset`, split into
/// pieces when longer than `max_line`.
fn emit(
    f: &Followed,
    out: &mut Vec<Line>,
    from: usize,
    to: usize,
    end_offset: u64,
    max_line: usize,
    stats: &mut TailStats,
) {
    if to - from <= max_line {
        push_line(f, out, from, to, end_offset, false, stats);
        return;
    }
    let base = end_offset - (to - from + 1) as u64;
    let mut s = from;
    while s < to {
        let e = (s + max_line).min(to);
        let end = if e == to { end_offset } else { base + (e - from) as u64 };
        push_line(f, out, s, e, end, true, stats);
        s = e;
    }
}

fn push_line(
    f: &Followed,
    out: &mut Vec<Line>,
    from: usize,
    to: usize,
    end_offset: u64,
    split: bool,
    stats: &mut TailStats,
) {
    stats.lines += 1;
    stats.split_pieces += u64::from(split);
    out.push(Line {
        id: f.id,
        path: f.path.clone(),
        logical: f.logical.clone(),
        data: f.pending[from..to].to_vec(),
        end_offset,
        split,
    });
}

/// Hands out a last line that has no newline.
fn flush_partial(f: &mut Followed, out: &mut Vec<Line>, stats: &mut TailStats) {
    if f.pending.is_empty() {
        return;
    }
    let len = f.pending.len();
    push_line(f, out, 0, len, f.read_offset, false, stats);
    f.pending.clear();
}
