//! The file input: a thread that polls its [`Tailer`], groups lines when a
//! multi-line start pattern is configured, and sends them to the batcher.
//!
//! Each loop: poll the tailer (at most [`POLL_BUDGET_BYTES`] of file data),
//! send `Started` for files it began following, the records (one per line or
//! group, partition key from the input's template), then `Forget` for files
//! it let go — in that order, which the batcher's checkpoint bookkeeping
//! relies on (see [`crate::event`]). When a poll reads nothing, the thread
//! waits for a change inotify reports in the files' directories
//! ([`FileWatch`]; at most one such poll per [`EVENT_COALESCE`], so a file
//! written a line at a time is read a few lines at a time) or for the
//! tailer's next timer (rescan, partial line, rotated file), whichever comes
//! first; without inotify it looks again every `poll_ms`. An open multi-line
//! group's timeout shortens the wait, and a stop request ends it at once.
//!
//! When the batcher stops reading (full spool under `block`), the send
//! blocks and the tailer stops reading: files keep their place.
//!
//! Errors on one file (unreadable, vanished) are counted, logged once per
//! distinct message per [`ERROR_REPEAT`], shown by `weir-agent status`, and
//! do not stop the other files. Pieces of over-long lines are counted as
//! `lines_split` and logged.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use crate::checkpoint::FileKey;
use crate::config::FileInput;
use crate::event::{Chunk, ChunkFile, Event};
use crate::multiline::Grouper;
use crate::stats::{Shared, Signal, lock, now_ms};
use crate::tail::watch::FileWatch;
use crate::tail::{Checkpoint, Line, TailError, Tailer};
use crate::template::{KeyContext, KeyTemplate};

/// File data read per poll at most: bounds a chunk's size (and so, with
/// [`crate::event::EVENT_CHANNEL_CAPACITY`], the bytes in transit).
pub const POLL_BUDGET_BYTES: usize = 256 * 1024;
/// How often the followed files are published for the status.
const STATUS_EVERY: Duration = Duration::from_millis(500);
/// Shortest gap between two polls that inotify events started.
pub const EVENT_COALESCE: Duration = Duration::from_millis(20);
/// The same error message is logged again after this long.
pub const ERROR_REPEAT: Duration = Duration::from_secs(60);
/// Distinct error messages remembered (for logging each once).
const MAX_REMEMBERED_ERRORS: usize = 256;

/// What a file input needs to run.
#[derive(Debug)]
pub struct FileTask {
    /// Index of the input in the configuration.
    pub index: usize,
    /// The input's name.
    pub name: String,
    /// The device id (for keys).
    pub device_id: String,
    /// Partition key template.
    pub key: KeyTemplate,
    /// Settings.
    pub config: FileInput,
    /// Where the input resumes.
    pub checkpoints: Vec<Checkpoint>,
}

struct Worker {
    index: usize,
    name: String,
    device_id: String,
    key: KeyTemplate,
    poll: Duration,
    /// Notified by inotify events and by a stop.
    wake: Arc<Signal>,
    /// inotify on the files' directories; `None`: polling only.
    watch: Option<FileWatch>,
    tailer: Tailer,
    grouper: Option<Grouper>,
    tx: SyncSender<Event>,
    shared: Arc<Shared>,
    /// Files whose checkpoints the batcher may hold.
    known: HashSet<FileKey>,
    /// Partition key per logical name.
    keys: HashMap<Arc<Path>, String>,
    /// Shared paths, so records of one file share one allocation.
    paths: HashMap<PathBuf, Arc<Path>>,
    /// Error messages logged, and since when.
    logged: HashMap<String, Instant>,
    /// Files whose over-long lines were logged.
    split_logged: HashSet<FileKey>,
}

/// Starts the input's thread.
///
/// # Errors
/// A glob that does not parse (checked by the configuration already), or the
/// thread could not be started.
pub fn spawn(
    task: FileTask,
    tx: SyncSender<Event>,
    shared: Arc<Shared>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    // Resumed checkpoints whose file is not found are forgotten after the
    // first poll, so the table does not keep them forever.
    let known = task.checkpoints.iter().map(crate::checkpoint::key_of).collect();
    let tailer = Tailer::new(task.config.tail.clone(), task.checkpoints)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let wake = Arc::new(Signal::default());
    shared.shutdown.also_notify(wake.clone());
    let watch = match FileWatch::start(wake.clone(), format!("weir-watch-{}", task.index)) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::info!(input = %task.name, error = %e, "inotify unavailable: polling the files every poll_ms");
            None
        }
    };
    let worker = Worker {
        index: task.index,
        name: task.name,
        device_id: task.device_id,
        key: task.key,
        poll: task.config.poll,
        wake,
        watch,
        tailer,
        grouper: task.config.multiline.map(Grouper::new),
        tx,
        shared,
        known,
        keys: HashMap::new(),
        paths: HashMap::new(),
        logged: HashMap::new(),
        split_logged: HashSet::new(),
    };
    std::thread::Builder::new()
        .name(format!("weir-file-{}", task.index))
        .spawn(move || worker.run())
}

impl Worker {
    fn run(mut self) {
        tracing::info!(input = %self.name, "file input started");
        let mut last_status: Option<Instant> = None;
        let mut last_poll = Instant::now();
        while !self.shared.shutdown.is_set() {
            let seen = self.wake.count();
            let now = Instant::now();
            let read_any = match self.step(now) {
                Ok(read) => read,
                // The batcher is gone: the agent is stopping.
                Err(Disconnected) => break,
            };
            if last_status.is_none_or(|t| now.duration_since(t) >= STATUS_EVERY) {
                self.publish_status();
                last_status = Some(now);
            }
            if !read_any {
                let idle = match &mut self.watch {
                    Some(w) => {
                        w.set_dirs(&self.tailer.watch_dirs());
                        if w.complete() {
                            self.tailer.idle_wait().max(self.poll)
                        } else {
                            self.poll
                        }
                    }
                    None => self.poll,
                };
                let wait = self
                    .grouper
                    .as_ref()
                    .and_then(|g| g.next_timeout(now))
                    .map_or(idle, |t| t.min(idle));
                self.wake.wait_past(seen, wait);
                if self.shared.shutdown.is_set() {
                    break;
                }
                // Coalesce event-driven polls.
                if let Some(rest) = EVENT_COALESCE.checked_sub(last_poll.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            last_poll = now;
        }
        self.publish_status();
        tracing::info!(input = %self.name, "file input stopped");
    }

    /// One poll; returns whether it read anything.
    fn step(&mut self, now: Instant) -> Result<bool, Disconnected> {
        let mut lines = Vec::new();
        for e in self.tailer.poll(&mut lines, POLL_BUDGET_BYTES) {
            self.report(&e, now);
        }
        let read_any = !lines.is_empty();
        let started = self.tailer.take_started();
        if !started.is_empty() {
            self.known.extend(started.iter().map(crate::checkpoint::key_of));
            self.send(Event::Started { input: self.index, checkpoints: started })?;
        }
        let mut out = Vec::with_capacity(lines.len());
        match &mut self.grouper {
            Some(g) => {
                for l in lines {
                    g.push(l, now, &mut out);
                }
                g.flush_idle(now, &mut out);
            }
            None => out = lines,
        }
        for l in &out {
            self.known.insert((l.id.dev, l.id.ino));
        }
        let gone: Vec<FileKey> = self
            .known
            .iter()
            .filter(|(dev, ino)| !self.tailer.is_following(*dev, *ino))
            .copied()
            .collect();
        for k in &gone {
            if let Some(g) = &mut self.grouper {
                g.flush_file(*k, &mut out);
            }
            self.known.remove(k);
            self.split_logged.remove(k);
        }
        if !out.is_empty() {
            let chunk = self.chunk(out);
            self.send(Event::Records(chunk))?;
        }
        if !gone.is_empty() {
            self.send(Event::Forget { input: self.index, keys: gone })?;
        }
        Ok(read_any)
    }

    fn send(&self, event: Event) -> Result<(), Disconnected> {
        self.tx.send(event).map_err(|_| Disconnected)
    }

    /// Turns lines into a chunk of records.
    fn chunk(&mut self, lines: Vec<Line>) -> Chunk {
        let stats = &self.shared.inputs[self.index];
        let ts = now_ms();
        let mut chunk = Chunk::new(self.index);
        chunk.buf.reserve(lines.iter().map(|l| l.data.len()).sum());
        chunk.records.reserve(lines.len());
        let mut bytes = 0u64;
        let mut current: Option<(PathBuf, Arc<Path>, Arc<Path>)> = None;
        for line in lines {
            let (path, logical) = match &current {
                Some((p, arc, logical)) if *p == line.path && **logical == *line.logical => {
                    (arc.clone(), logical.clone())
                }
                _ => {
                    let arc = intern(&mut self.paths, &line.path);
                    let logical = intern(&mut self.paths, &line.logical);
                    current = Some((line.path.clone(), arc.clone(), logical.clone()));
                    (arc, logical)
                }
            };
            let file_index = match chunk.files.last() {
                Some(f) if f.id == line.id && Arc::ptr_eq(&f.path, &path) => chunk.files.len() - 1,
                _ => {
                    chunk.files.push(ChunkFile {
                        id: line.id,
                        path: path.clone(),
                        logical: logical.clone(),
                    });
                    chunk.files.len() - 1
                }
            };
            if line.split {
                stats.lines_split.fetch_add(1, Ordering::Relaxed);
                let key = (line.id.dev, line.id.ino);
                if self.split_logged.insert(key) {
                    tracing::warn!(
                        input = %self.name,
                        path = %line.path.display(),
                        offset = line.end_offset,
                        "line longer than max_line_bytes: shipped in pieces (counted as lines_split)"
                    );
                }
            }
            // `{file}` is the logical name: one log keeps one key across
            // rotations and restarts.
            if !self.keys.contains_key(&logical) {
                let file = logical.to_string_lossy();
                let key = self.key.expand(&KeyContext {
                    device_id: &self.device_id,
                    input: &self.name,
                    file: &file,
                    metric: "",
                    node: "",
                    key: "",
                });
                self.keys.insert(logical.clone(), key);
            }
            let key = self.keys.get(&logical).map_or("-", String::as_str);
            bytes += line.data.len() as u64;
            chunk.push(key, &line.data, Some(ts), Some((file_index as u32, line.end_offset)));
        }
        stats.records.fetch_add(chunk.records.len() as u64, Ordering::Relaxed);
        stats.bytes.fetch_add(bytes, Ordering::Relaxed);
        // Forget keys and paths of files no longer followed.
        if self.paths.len() > 4 * self.known.len().max(16) {
            self.paths.clear();
            self.keys.clear();
        }
        chunk
    }

    fn report(&mut self, e: &TailError, now: Instant) {
        let stats = &self.shared.inputs[self.index];
        stats.errors.fetch_add(1, Ordering::Relaxed);
        stats.last_error.set(e);
        let message = e.to_string();
        let due = self.logged.get(&message).is_none_or(|t| now.duration_since(*t) >= ERROR_REPEAT);
        if due {
            tracing::warn!(input = %self.name, error = %message, "file input error (other files go on)");
            if self.logged.len() >= MAX_REMEMBERED_ERRORS {
                self.logged.clear();
            }
            self.logged.insert(message, now);
        }
    }

    fn publish_status(&self) {
        let stats = &self.shared.inputs[self.index];
        let t = self.tailer.stats();
        stats.rotations.store(t.rotations, Ordering::Relaxed);
        stats.truncations.store(t.truncations, Ordering::Relaxed);
        let files: Vec<(FileKey, String, u64)> = self
            .tailer
            .followed()
            .into_iter()
            .map(|(id, p, o)| ((id.dev, id.ino), p.to_string_lossy().into_owned(), o))
            .collect();
        *lock(&stats.files) = files;
    }
}

/// The batcher hung up.
#[derive(Debug)]
struct Disconnected;

/// The shared copy of a path, so records of one file share one allocation.
fn intern(paths: &mut HashMap<PathBuf, Arc<Path>>, path: &Path) -> Arc<Path> {
    if let Some(arc) = paths.get(path) {
        return arc.clone();
    }
    let arc: Arc<Path> = Arc::from(path);
    paths.insert(path.to_path_buf(), arc.clone());
    arc
}
