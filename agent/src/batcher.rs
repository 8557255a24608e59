//! The batcher: groups the inputs' records per target stream into wire
//! batches and appends each batch to the spool, with the checkpoint table in
//! the entry's meta.
//!
//! A batch is closed when it holds `batch.max_records` records, when the next
//! record would take it past `batch.max_bytes`, or `batch.linger_ms` after its
//! first record. Closing it takes the spool lock, reads the spool's next
//! sequence number (the batch's sequence number; the producer id is
//! `<device id>/<spool instance>`, see [`crate::producer`]), encodes the
//! envelope and appends it in the same critical section, so the numbers can
//! never disagree.
//!
//! # Backpressure
//!
//! The batcher runs on its own thread and reads one bounded channel
//! ([`crate::event::EVENT_CHANNEL_CAPACITY`]). When the spool is full under
//! policy `block`, or an append fails, it keeps the batch and retries, and
//! reads nothing meanwhile, so the channel fills and the inputs stop where
//! they are; their files keep their place, and their checkpoints stay at the
//! last spooled line. Nothing is dropped here; under `drop_oldest` the spool
//! drops its oldest segment when it reaches its bound, and counts it.
//!
//! - Full spool (`block`): retried when an acknowledgement frees space, or
//!   after [`FULL_WAIT`].
//! - Full filesystem ([`SpoolError::is_disk_full`]: below the spool's
//!   free-space reserve, or `ENOSPC`), under either policy: a pause, counted
//!   (`disk_full_events`, `disk_full_ms`) and shown in the status (spool
//!   state `disk_full`, the last error, the free bytes), logged at most once
//!   per [`crate::log_limit::LOG_INTERVAL`] with the number of refused
//!   attempts it stands for (and its end, at the same rate). Retried
//!   after the shared backoff ([`weir_wire::backoff`], [`RETRY_MIN`] doubling
//!   up to [`RETRY_MAX`]), or at once when an acknowledgement deletes
//!   segments; so it ends by itself once space is back.
//! - Other errors: retried after the same backoff, logged at the same rate.
//!
//! While it waits the batcher still fsyncs what it appended before
//! ([`SYNC_INTERVAL`]) and publishes the checkpoint table, and it gives the
//! batch up at shutdown (its lines are read again at the next start).

//! # Checkpoints
//!
//! Each record of a file input carries its file and end offset; the newest
//! per file is kept with the pending batch and enters the table only when the
//! batch is in the spool. `Started` and `Forget` events first spool whatever
//! is pending, then change the table; a table change with no batch to carry
//! it is written as a checkpoint-only entry (no records) once the linger time
//! passes. The human-readable `checkpoints.json` is rewritten at most once
//! per [`CHECKPOINT_FILE_INTERVAL`].
//!
//! # Durability
//!
//! Appends go to the page cache, which survives a crash of the agent; the
//! spool is fsync'd every [`SYNC_INTERVAL`] and at shutdown, for power loss.
//! After each fsync the spool's synced point moves
//! ([`Spool::mark_synced`](crate::spool::Spool::mark_synced)): inputs that
//! acknowledge to their source (the serial input, whose node then forgets
//! the frames) go by it, so an ack survives a power cut of the gateway; an
//! entry carrying such an input's checkpoints is fsync'd at once
//! ([`BatcherSetup::sync_inputs`]), so those acks are not held back a second.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_wire::{ENVELOPE_HEADER_LEN, EncodeError, MAX_PRODUCER_ID_BYTES, Record};

use crate::checkpoint::{FileKey, Table};
use crate::config::BatchConfig;
use crate::event::{Chunk, Event, NO_FILE};
use crate::log_limit::LogLimit;
use crate::spool::{Appended, Spool, SpoolError};
use crate::stats::{Shared, lock};

mod retry;

use crate::tail::{Checkpoint, FileId};
use retry::Retry;
pub use retry::{RETRY_MAX, RETRY_MIN};

/// How often the spool is fsync'd while appends happen.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Least time between two writes of `checkpoints.json`.
pub const CHECKPOINT_FILE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a blocked append waits before looking again (an acknowledgement
/// wakes it sooner); also the longest a waiting batcher goes without
/// looking at the stop signal.
pub const FULL_WAIT: Duration = Duration::from_millis(200);
/// The most a batch's envelope adds to its records: version and kind (2),
/// producer id length (1) and id, sequence number varint (10), count (2).
pub const BATCH_OVERHEAD: usize = ENVELOPE_HEADER_LEN + 1 + MAX_PRODUCER_ID_BYTES + 10 + 2;

/// Why a batch could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The spool refused it.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The wire encoder refused it (a bug: records are checked before).
    #[error("encoding a batch: {0}")]
    Encode(EncodeError),
    /// The checkpoint table could not be serialised.
    #[error("encoding checkpoints: {0}")]
    Meta(#[from] serde_json::Error),
}

/// The agent is stopping: a blocked batch is given up (its records are not
/// checkpointed, so they are read again at the next start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopping;

#[derive(Debug, Clone, Copy)]
struct Rec {
    key: u32,
    start: u32,
    len: u32,
    ts: Option<u64>,
}

#[derive(Debug, Clone)]
struct Mark {
    id: FileId,
    path: Arc<Path>,
    logical: Arc<Path>,
    offset: u64,
}

/// The open batch of one stream.
#[derive(Debug, Default)]
struct Pending {
    keys: Vec<String>,
    buf: Vec<u8>,
    recs: Vec<Rec>,
    /// Encoded size of the records.
    bytes: usize,
    first_at: Option<Instant>,
    /// Newest checkpoint per (input, file) among the records.
    marks: HashMap<(usize, FileKey), Mark>,
}

impl Pending {
    fn clear(&mut self) {
        self.keys.clear();
        self.buf.clear();
        self.recs.clear();
        self.bytes = 0;
        self.first_at = None;
        self.marks.clear();
    }
}

/// Where the batcher writes.
#[derive(Debug)]
pub struct BatcherSetup {
    /// Batch limits.
    pub config: BatchConfig,
    /// `<device id>/<instance>`.
    pub producer_id: String,
    /// Input names (checkpoint table keys), in configuration order.
    pub input_names: Vec<String>,
    /// Each input's target stream.
    pub input_streams: Vec<String>,
    /// The table from the spool's newest entry.
    pub table: Table,
    /// `checkpoints.json`.
    pub checkpoint_file: PathBuf,
    /// Inputs that acknowledge to their source what is fsync'd (the serial
    /// input: its node then forgets the frames): an entry carrying their
    /// checkpoints is fsync'd at once rather than within [`SYNC_INTERVAL`].
    pub sync_inputs: Vec<String>,
}

/// The batcher's state.
#[derive(Debug)]
pub struct Batcher {
    config: BatchConfig,
    producer_id: String,
    spool: Arc<Mutex<Spool>>,
    shared: Arc<Shared>,
    input_names: Vec<String>,
    /// Input index → stream index.
    input_stream: Vec<usize>,
    stream_names: Vec<String>,
    pending: Vec<Pending>,
    table: Table,
    /// A table change (Started/Forget) not in the spool yet, since when.
    table_unwritten: Option<Instant>,
    checkpoint_file: PathBuf,
    file_dirty: bool,
    last_file_write: Option<Instant>,
    unsynced: bool,
    last_sync: Instant,
    /// See [`BatcherSetup::sync_inputs`].
    sync_inputs: Vec<String>,
    encode_buf: Vec<u8>,
    /// Failed appends: delays, the full-disk pause, their log lines.
    retry: Retry,
    sync_log: LogLimit,
    checkpoint_file_log: LogLimit,
}

impl Batcher {
    /// A batcher writing to `spool`.
    pub fn new(setup: BatcherSetup, spool: Arc<Mutex<Spool>>, shared: Arc<Shared>) -> Self {
        let mut stream_names: Vec<String> = Vec::new();
        let input_stream = setup
            .input_streams
            .iter()
            .map(|s| match stream_names.iter().position(|n| n == s) {
                Some(i) => i,
                None => {
                    stream_names.push(s.clone());
                    stream_names.len() - 1
                }
            })
            .collect();
        *lock(&shared.checkpoints) = setup.table.clone();
        Self {
            config: setup.config,
            producer_id: setup.producer_id,
            spool,
            shared,
            input_names: setup.input_names,
            input_stream,
            pending: stream_names.iter().map(|_| Pending::default()).collect(),
            stream_names,
            table: setup.table,
            table_unwritten: None,
            checkpoint_file: setup.checkpoint_file,
            file_dirty: true,
            last_file_write: None,
            unsynced: false,
            last_sync: Instant::now(),
            sync_inputs: setup.sync_inputs,
            encode_buf: Vec::new(),
            retry: Retry::new(),
            sync_log: LogLimit::new(),
            checkpoint_file_log: LogLimit::new(),
        }
    }

    /// Runs until every sender of `rx` is gone (the inputs stopped), then
    /// spools what it holds and syncs.
    pub fn run(mut self, rx: Receiver<Event>) {
        loop {
            let now = Instant::now();
            let wait = self.next_wakeup(now);
            match rx.recv_timeout(wait) {
                Ok(event) => {
                    if self.handle(event, Instant::now()).is_err() {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.tick(Instant::now()).is_err() {
                break;
            }
        }
        self.finish();
    }

    /// Takes one event.
    ///
    /// # Errors
    /// [`Stopping`] when the agent stops while an append waits.
    pub fn handle(&mut self, event: Event, now: Instant) -> Result<(), Stopping> {
        match event {
            Event::Records(chunk) => self.add_chunk(&chunk, now),
            Event::Started { input, checkpoints } => {
                self.flush_all()?;
                let name = self.input_name(input);
                for c in checkpoints {
                    self.table.set(&name, c);
                }
                self.table_changed(now);
                Ok(())
            }
            Event::Forget { input, keys } => {
                self.flush_all()?;
                let name = self.input_name(input);
                for k in keys {
                    self.table.forget(&name, k);
                }
                self.table_changed(now);
                Ok(())
            }
        }
    }

    fn input_name(&self, input: usize) -> String {
        self.input_names.get(input).cloned().unwrap_or_default()
    }

    fn table_changed(&mut self, now: Instant) {
        self.table_unwritten.get_or_insert(now);
        self.file_dirty = true;
    }

    fn add_chunk(&mut self, chunk: &Chunk, now: Instant) -> Result<(), Stopping> {
        let Some(&s) = self.input_stream.get(chunk.input) else { return Ok(()) };
        for r in &chunk.records {
            let (key, data) = chunk.parts(r);
            let record = Record {
                partition_key: key,
                data,
                explicit_hash_key: None,
                producer_timestamp_ms: r.timestamp_ms,
            };
            if let Err(e) = record.validate() {
                // Inputs make valid records (the configuration bounds line
                // and key sizes); one that is not is a bug worth a loud log.
                tracing::error!(input = chunk.input, error = %e, "invalid record not spooled");
                continue;
            }
            let len = record.encoded_len();
            {
                let p = &self.pending[s];
                let full = p.recs.len() >= self.config.max_records
                    || p.bytes + len + BATCH_OVERHEAD > self.config.max_bytes;
                if full && !p.recs.is_empty() {
                    self.flush(s)?;
                }
            }
            let p = &mut self.pending[s];
            if p.keys.last().is_none_or(|k| k != key) {
                p.keys.push(key.to_owned());
            }
            p.recs.push(Rec {
                key: (p.keys.len() - 1) as u32,
                start: p.buf.len() as u32,
                len: data.len() as u32,
                ts: r.timestamp_ms,
            });
            p.buf.extend_from_slice(data);
            p.bytes += len;
            p.first_at.get_or_insert(now);
            if r.file != NO_FILE
                && let Some(f) = chunk.files.get(r.file as usize)
            {
                let k = (chunk.input, (f.id.dev, f.id.ino));
                match p.marks.get_mut(&k) {
                    Some(m) => {
                        m.id = f.id;
                        m.offset = r.end_offset;
                        if !Arc::ptr_eq(&m.path, &f.path) {
                            m.path = f.path.clone();
                        }
                        if !Arc::ptr_eq(&m.logical, &f.logical) {
                            m.logical = f.logical.clone();
                        }
                    }
                    None => {
                        p.marks.insert(
                            k,
                            Mark {
                                id: f.id,
                                path: f.path.clone(),
                                logical: f.logical.clone(),
                                offset: r.end_offset,
                            },
                        );
                    }
                }
            }
            self.shared.batcher.pending_records.fetch_add(1, Ordering::Relaxed);
        }
        if self.config.linger.is_zero() {
            self.flush(s)?;
        }
        Ok(())
    }

    /// Spools every open batch.
    fn flush_all(&mut self) -> Result<(), Stopping> {
        for s in 0..self.pending.len() {
            self.flush(s)?;
        }
        Ok(())
    }

    /// Spools stream `s`'s open batch, waiting (policy `block`) or retrying
    /// (errors) until it is written.
    fn flush(&mut self, s: usize) -> Result<(), Stopping> {
        if self.pending[s].recs.is_empty() {
            return Ok(());
        }
        let updates: Vec<(String, Checkpoint)> = self.pending[s]
            .marks
            .iter()
            .map(|((input, _), m)| {
                let c = Checkpoint {
                    id: m.id,
                    path: m.path.to_path_buf(),
                    logical: m.logical.to_path_buf(),
                    offset: m.offset,
                };
                (self.input_name(*input), c)
            })
            .collect();
        self.write(Some(s), updates)?;
        let p = &mut self.pending[s];
        self.shared.batcher.pending_records.fetch_sub(p.recs.len() as u64, Ordering::Relaxed);
        p.clear();
        Ok(())
    }

    /// Writes one entry — stream `s`'s batch, or a checkpoint-only entry —
    /// then applies `updates` to the table.
    fn write(
        &mut self,
        s: Option<usize>,
        updates: Vec<(String, Checkpoint)>,
    ) -> Result<(), Stopping> {
        let stream = s.and_then(|s| self.stream_names.get(s)).cloned().unwrap_or_default();
        loop {
            let meta = self
                .table
                .meta_with(&stream, updates.iter().map(|(i, c)| (i.as_str(), c)))
                .map_err(BatchError::Meta);
            let result = meta.and_then(|meta| self.try_append(s, &meta));
            match result {
                Ok(Appended::Written { seq, dropped_records }) => {
                    self.retry.worked(&self.shared.batcher);
                    if dropped_records > 0 {
                        tracing::warn!(dropped_records, "spool full: dropped the oldest records");
                    }
                    self.shared.batcher.blocked.store(false, Ordering::Relaxed);
                    self.shared.appended.notify_one();
                    self.unsynced = true;
                    if updates.iter().any(|(input, _)| self.sync_inputs.contains(input)) {
                        self.sync(Instant::now());
                    }
                    for (input, c) in updates {
                        self.table.set(&input, c);
                    }
                    self.table_unwritten = None;
                    self.file_dirty = true;
                    tracing::trace!(seq, stream, "spooled");
                    return Ok(());
                }
                Ok(Appended::Full) => {
                    if !self.shared.batcher.blocked.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "spool full (policy block): inputs stop until the collector acknowledges"
                        );
                    }
                    self.wait_for_space(FULL_WAIT)?;
                }
                Err(BatchError::Spool(e @ SpoolError::EntryTooLarge { .. })) => {
                    // Retrying cannot help; the configuration keeps batches
                    // far below the spool's bound, so only a huge checkpoint
                    // table gets here. Give the batch up rather than wedge.
                    tracing::error!(error = %e, stream, "batch larger than the spool allows: not spooled");
                    self.shared.batcher.last_error.set(&e);
                    return Ok(());
                }
                Err(BatchError::Spool(e)) if e.is_disk_full() => {
                    let free_bytes = match &e {
                        SpoolError::DiskFull { free, .. } => Some(*free),
                        _ => lock(&self.spool).free_bytes(),
                    };
                    let delay = self.retry.disk_full(&e, free_bytes, &self.shared.batcher);
                    self.wait_for_space(delay)?;
                }
                Err(e) => {
                    let delay = self.retry.failed(&e, &self.shared.batcher);
                    if self.shared.shutdown.wait_timeout(delay) {
                        return Err(Stopping);
                    }
                    self.idle_work(Instant::now());
                }
            }
        }
    }

    /// One append under the spool lock: the sequence number, the encoding and
    /// the write together.
    fn try_append(&mut self, s: Option<usize>, meta: &[u8]) -> Result<Appended, BatchError> {
        let mut spool = lock(&self.spool);
        let Some(p) = s.and_then(|s| self.pending.get(s)) else {
            return Ok(spool.append(0, meta, &[])?);
        };
        let seq = spool.next_seq();
        let size = p.bytes + BATCH_OVERHEAD;
        self.encode_buf.clear();
        self.encode_buf.resize(size, 0);
        let mut enc = weir_wire::batch_encoder(&mut self.encode_buf, &self.producer_id, seq)
            .map_err(BatchError::Encode)?;
        for r in &p.recs {
            let start = r.start as usize;
            let record = Record {
                partition_key: p.keys.get(r.key as usize).map_or("-", String::as_str),
                data: p.buf.get(start..start + r.len as usize).unwrap_or_default(),
                explicit_hash_key: None,
                producer_timestamp_ms: r.ts,
            };
            enc.push(&record).map_err(BatchError::Encode)?;
        }
        let payload = enc.finish().map_err(BatchError::Encode)?;
        let appended = spool.append(p.recs.len() as u32, meta, payload)?;
        if let Appended::Written { .. } = appended {
            let b = &self.shared.batcher;
            b.records.fetch_add(p.recs.len() as u64, Ordering::Relaxed);
            b.batches.fetch_add(1, Ordering::Relaxed);
            b.bytes.fetch_add(payload.len() as u64, Ordering::Relaxed);
        }
        Ok(appended)
    }

    /// Time-driven work: lingering batches, table changes with no batch to
    /// carry them, fsync, `checkpoints.json`.
    ///
    /// # Errors
    /// [`Stopping`] when the agent stops while an append waits.
    pub fn tick(&mut self, now: Instant) -> Result<(), Stopping> {
        for s in 0..self.pending.len() {
            if self.pending[s].first_at.is_some_and(|t| now.duration_since(t) >= self.config.linger)
            {
                self.flush(s)?;
            }
        }
        if self.table_unwritten.is_some_and(|t| now.duration_since(t) >= self.config.linger) {
            self.write(None, Vec::new())?;
        }
        self.idle_work(now);
        Ok(())
    }

    /// fsyncs the spool's new data, outside the spool lock so the shipper
    /// is not held up by the disk.
    fn sync(&mut self, now: Instant) {
        let (files, point) = {
            let mut spool = lock(&self.spool);
            (spool.unsynced_files(), spool.sync_point())
        };
        let result = files.and_then(|files| {
            files.into_iter().try_for_each(|(path, f)| {
                f.sync_data().map_err(|source| SpoolError::Io { op: "fsync", path, source })
            })
        });
        match result {
            // Inputs that acknowledge to their source (serial) go by this.
            Ok(()) => lock(&self.spool).mark_synced(point),
            Err(e) => {
                if let Some(failures) = self.sync_log.hit(now) {
                    tracing::warn!(error = %e, failures, "spool fsync failed");
                }
                self.shared.batcher.last_error.set(&e);
            }
        }
        self.unsynced = false;
        self.last_sync = now;
    }

    fn write_checkpoint_file(&mut self, now: Instant) {
        match self.table.write_file(&self.checkpoint_file) {
            Ok(()) => {
                self.checkpoint_file_log.reset();
            }
            Err(e) => {
                if let Some(failures) = self.checkpoint_file_log.hit(now) {
                    tracing::warn!(path = %self.checkpoint_file.display(), error = %e, failures, "writing the checkpoint file failed");
                }
            }
        }
        *lock(&self.shared.checkpoints) = self.table.clone();
        self.file_dirty = false;
        self.last_file_write = Some(now);
    }

    /// How long the batcher may wait for the next event.
    pub fn next_wakeup(&self, now: Instant) -> Duration {
        let mut deadlines: Vec<Instant> = self
            .pending
            .iter()
            .filter_map(|p| p.first_at.map(|t| t + self.config.linger))
            .collect();
        if let Some(t) = self.table_unwritten {
            deadlines.push(t + self.config.linger);
        }
        if self.unsynced {
            deadlines.push(self.last_sync + SYNC_INTERVAL);
        }
        if self.file_dirty {
            deadlines.push(self.last_file_write.map_or(now, |t| t + CHECKPOINT_FILE_INTERVAL));
        }
        deadlines
            .into_iter()
            .min()
            .map_or(Duration::from_secs(1), |d| d.saturating_duration_since(now))
    }

    /// At shutdown: spools what is pending (unless the spool is full under
    /// `block`), writes an unwritten table change, syncs.
    pub fn finish(&mut self) {
        if self.flush_all().is_ok() && self.table_unwritten.is_some() {
            let _ = self.write(None, Vec::new());
        }
        self.sync(Instant::now());
        self.write_checkpoint_file(Instant::now());
    }

    /// The checkpoint table (for tests).
    pub fn table(&self) -> &Table {
        &self.table
    }
}
