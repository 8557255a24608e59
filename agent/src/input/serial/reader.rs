//! The serial input's thread: opens the line (again, with backoff, when it
//! goes away), decodes frames, hands each node's frames to [`super::order`]
//! and what it lets through to the batcher, and writes acks from the
//! spool's synced checkpoints.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_wire::{
    Envelope, FeedResult, FrameError, FrameKind, MaxFrameDecoder, encode_frame,
    max_encoded_frame_len,
};

use super::order::{MAX_HELD, Node, SERIAL_DEV, Verdict, node_key};
use super::port::Port;
use crate::backoff::Backoff;
use crate::checkpoint::Table;
use crate::config::{SerialInput, SerialSource};
use crate::event::{Chunk, ChunkFile, Event};
use crate::spool::Spool;
use crate::stats::{NodeRow, SerialStats, Shared, lock};
use crate::tail::{Checkpoint, FileId};
use crate::template::{KeyContext, KeyTemplate};

/// First delay before opening the line again.
pub const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Longest delay before opening the line again.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Nodes kept per input (checkpoint table and memory).
pub const MAX_NODES: usize = 64;
/// Bytes read from the line at once.
const READ_BUF: usize = 4096;
/// Bytes of an ack frame on the line, with the leading `0x00`.
const ACK_BYTES: usize = max_encoded_frame_len(0) + 1;

/// What a serial input needs to run.
#[derive(Debug)]
pub struct SerialTask {
    /// Index of the input in the configuration.
    pub index: usize,
    /// The input's name.
    pub name: String,
    /// The device id (for keys).
    pub device_id: String,
    /// The partition key template (`{key}` by default: the node's own key).
    pub key: KeyTemplate,
    /// Settings.
    pub config: SerialInput,
    /// The input's checkpoints from the spool (one per node).
    pub checkpoints: Vec<Checkpoint>,
    /// The spool, whose newest entry tells what is spooled.
    pub spool: Arc<Mutex<Spool>>,
    /// Counters.
    pub stats: Arc<SerialStats>,
}

/// Starts the input's thread.
///
/// # Errors
/// The thread could not be started.
pub fn spawn(
    task: SerialTask,
    tx: SyncSender<Event>,
    shared: Arc<Shared>,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("weir-serial-{}", task.index))
        .spawn(move || Reader::new(task, tx, shared).run())
}

/// The input's thread state.
struct Reader {
    task: SerialTask,
    tx: SyncSender<Event>,
    shared: Arc<Shared>,
    nodes: HashMap<String, Node>,
    /// The producer of the last data frame on the line: the one acked.
    current: Option<String>,
    /// What was last written as an ack, to not repeat it.
    last_ack: Option<(String, u32)>,
    /// Spool sequence number at the last look at the spool.
    spool_seen: u64,
    seen_counter: u64,
}

impl Reader {
    fn new(task: SerialTask, tx: SyncSender<Event>, shared: Arc<Shared>) -> Self {
        let mut nodes = HashMap::new();
        for (i, c) in task.checkpoints.iter().enumerate() {
            if c.id.dev != SERIAL_DEV {
                continue;
            }
            let Some(producer) = c.path.to_str() else { continue };
            let seq = u32::try_from(c.offset).unwrap_or(u32::MAX);
            let node = Node {
                next: Some(seq.wrapping_add(1)),
                last_crc: Some(c.id.fingerprint),
                acked: Some(seq),
                spooled: Some(seq),
                seen: i as u64,
                ..Node::default()
            };
            nodes.insert(producer.to_owned(), node);
        }
        let seen_counter = nodes.len() as u64;
        Self {
            task,
            tx,
            shared,
            nodes,
            current: None,
            last_ack: None,
            spool_seen: u64::MAX,
            seen_counter,
        }
    }

    fn run(mut self) {
        let source = self.task.config.source.clone();
        tracing::info!(input = %self.task.name, line = %source.path().display(), "serial input started");
        self.publish_nodes();
        let mut backoff = Backoff::new(RECONNECT_MIN, RECONNECT_MAX);
        let mut rng = rand::thread_rng();
        let mut decoder = Box::new(MaxFrameDecoder::new());
        let mut buf = vec![0u8; READ_BUF];
        'connect: while !self.shared.shutdown.is_set() {
            let mut port = match Port::open(&source) {
                Ok(p) => p,
                Err(e) => {
                    if backoff.failures() == 0 {
                        tracing::warn!(input = %self.task.name, line = %source.path().display(), error = %e, "cannot open the serial line; retrying");
                    }
                    self.error(format!("opening {}: {e}", source.path().display()));
                    if self.shared.shutdown.wait_timeout(backoff.next_delay(&mut rng)) {
                        break;
                    }
                    continue;
                }
            };
            backoff.reset();
            decoder.reset();
            // Another node may be on the line now: ack nothing until one
            // speaks (an old node's ack could release a new boot's frames).
            self.current = None;
            self.last_ack = None;
            self.task.stats.connected.store(true, Ordering::Relaxed);
            self.task.stats.connects.fetch_add(1, Ordering::Relaxed);
            tracing::info!(input = %self.task.name, line = %source.path().display(), "serial line open");
            loop {
                if self.shared.shutdown.is_set() {
                    break 'connect;
                }
                let n = match port.read(&mut buf) {
                    Ok(Some(0)) => {
                        tracing::info!(input = %self.task.name, "serial line closed; reopening");
                        break;
                    }
                    Ok(Some(n)) => n,
                    Ok(None) => 0,
                    Err(e) => {
                        tracing::warn!(input = %self.task.name, error = %e, "reading the serial line failed; reopening");
                        self.error(format!("reading {}: {e}", source.path().display()));
                        break;
                    }
                };
                let mut input = &buf[..n];
                let mut stop = false;
                while !input.is_empty() {
                    match decoder.feed(input) {
                        FeedResult::Consumed => break,
                        FeedResult::Frame { frame, remaining } => {
                            input = remaining;
                            if frame.kind != FrameKind::Data {
                                self.task.stats.unexpected.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            match self.on_data(frame.seq, frame.payload) {
                                Ok(Some(ack)) => {
                                    if let Err(e) = self.write_ack(&mut port, &ack) {
                                        self.write_failed(&source, &e);
                                        break;
                                    }
                                }
                                Ok(None) => {}
                                Err(Stopped) => {
                                    stop = true;
                                    break;
                                }
                            }
                        }
                        FeedResult::Error { error, remaining } => {
                            input = remaining;
                            self.bad_frame(&error);
                        }
                    }
                }
                if stop {
                    break 'connect;
                }
                if let Err(e) = self.ack_spooled(&mut port) {
                    self.write_failed(&source, &e);
                    break;
                }
            }
            self.task.stats.connected.store(false, Ordering::Relaxed);
            if self.shared.shutdown.wait_timeout(backoff.next_delay(&mut rng)) {
                break;
            }
        }
        self.task.stats.connected.store(false, Ordering::Relaxed);
        tracing::info!(input = %self.task.name, "serial input stopped");
    }

    fn error(&self, message: String) {
        let s = &self.shared.inputs[self.task.index];
        s.errors.fetch_add(1, Ordering::Relaxed);
        s.last_error.set(message);
    }

    fn write_failed(&self, source: &SerialSource, e: &io::Error) {
        tracing::warn!(input = %self.task.name, error = %e, "writing an ack failed; reopening");
        self.error(format!("writing to {}: {e}", source.path().display()));
    }

    fn bad_frame(&self, error: &FrameError) {
        let s = &self.task.stats;
        if matches!(error, FrameError::TooLong { .. }) {
            s.oversized.fetch_add(1, Ordering::Relaxed);
        } else {
            s.corrupt.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(input = %self.task.name, %error, "bad frame skipped");
    }

    /// Takes a data frame; returns an ack to write now (for a duplicate).
    fn on_data(&mut self, seq: u32, payload: &[u8]) -> Result<Option<(String, u32)>, Stopped> {
        // The node of the frame: its batch's producer id; a frame that is
        // too large or does not decode belongs to the node on the line.
        let producer = if payload.len() > self.task.config.max_frame_bytes {
            self.current.clone()
        } else {
            match Envelope::decode(payload) {
                Ok(Envelope::Batch(b)) => Some(b.producer_id().to_owned()),
                Ok(Envelope::Record(_)) => Some(String::new()),
                Err(_) => self.current.clone(),
            }
        };
        let Some(producer) = producer else {
            // Nothing heard from a node yet: count it (once, here) and go on.
            self.skipped(seq, payload);
            return Ok(None);
        };
        if !self.nodes.contains_key(&producer) {
            self.make_room()?;
            tracing::info!(input = %self.task.name, node = %producer, seq, "new node");
        }
        self.current = Some(producer.clone());
        self.seen_counter += 1;
        let mut node = self.nodes.remove(&producer).unwrap_or_default();
        node.seen = self.seen_counter;
        let result = self.on_node_frame(&producer, &mut node, seq, payload);
        self.nodes.insert(producer, node);
        self.publish_nodes();
        result
    }

    fn on_node_frame(
        &mut self,
        producer: &str,
        node: &mut Node,
        seq: u32,
        payload: &[u8],
    ) -> Result<Option<(String, u32)>, Stopped> {
        let stats = self.task.stats.clone();
        let crc = crc32c::crc32c(payload);
        match node.judge(seq, crc) {
            Verdict::Duplicate => {
                stats.duplicates.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(input = %self.task.name, node = producer, seq, "retransmitted frame not spooled again");
                // The node missed an ack: answer again.
                return Ok(node.acked.map(|a| (producer.to_owned(), a)));
            }
            Verdict::HeldDuplicate => {
                stats.duplicates.fetch_add(1, Ordering::Relaxed);
                self.give_up_gap(producer, node)?;
                return Ok(node.acked.map(|a| (producer.to_owned(), a)));
            }
            Verdict::Ahead => {
                if let Some(next) = node.next
                    && node.held.is_empty()
                {
                    tracing::info!(input = %self.task.name, node = producer, seq, expected = next, "frames missing: holding later frames until the node sends them again");
                }
                node.hold(seq, crc, payload);
                if node.held.len() > MAX_HELD {
                    self.give_up_gap(producer, node)?;
                }
                return Ok(None);
            }
            Verdict::Restart => {
                stats.restarts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(input = %self.task.name, node = producer, seq, next = ?node.next, "frame number went back with new content: the node restarted; taking it");
                node.restart(seq);
            }
            Verdict::Next => {}
        }
        self.pass(producer, node, seq, crc, payload)?;
        self.pass_held(producer, node).map(|()| None)
    }

    /// The frames in the gap before the first held frame are not coming:
    /// count them as missed and hand on the held frames.
    fn give_up_gap(&mut self, producer: &str, node: &mut Node) -> Result<(), Stopped> {
        let next = node.next;
        let missed = node.skip_gap();
        if missed > 0 {
            self.task.stats.missed.fetch_add(u64::from(missed), Ordering::Relaxed);
            tracing::warn!(input = %self.task.name, node = producer, from = ?next, missed, "frames never arrived and the node no longer has them");
        }
        self.pass_held(producer, node)
    }

    /// Hands on the held frames that are next in order.
    fn pass_held(&mut self, producer: &str, node: &mut Node) -> Result<(), Stopped> {
        while let Some(h) = node.take_held() {
            self.pass(producer, node, h.seq, h.crc, &h.payload)?;
        }
        Ok(())
    }

    /// Counts a frame that cannot be taken (too large, bad envelope).
    fn skipped(&self, seq: u32, payload: &[u8]) {
        let stats = &self.task.stats;
        if payload.len() > self.task.config.max_frame_bytes {
            stats.oversized.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(input = %self.task.name, seq, len = payload.len(), max = self.task.config.max_frame_bytes, "frame over `max_frame_bytes` skipped");
            self.error(format!("frame {seq}: {} bytes, over max_frame_bytes", payload.len()));
        } else if let Err(e) = Envelope::decode(payload) {
            stats.invalid.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(input = %self.task.name, seq, error = %e, "frame with an invalid envelope skipped");
            self.error(format!("frame {seq}: {e}"));
        }
    }

    /// Hands frame `seq` (the next in order) to the batcher, or skips it
    /// (too large, bad envelope: sending it again cannot help, so it is
    /// acknowledged in order like the others).
    fn pass(
        &mut self,
        producer: &str,
        node: &mut Node,
        seq: u32,
        crc: u32,
        payload: &[u8],
    ) -> Result<(), Stopped> {
        let envelope = if payload.len() > self.task.config.max_frame_bytes {
            None
        } else {
            Envelope::decode(payload).ok()
        };
        let Some(envelope) = envelope else {
            self.skipped(seq, payload);
            node.passed(seq, crc, false);
            return Ok(());
        };
        let mut chunk = Chunk::new(self.task.index);
        let key_of = |k: &str| {
            self.task.key.expand(&KeyContext {
                device_id: &self.task.device_id,
                input: &self.task.name,
                file: "",
                metric: "",
                node: producer,
                key: k,
            })
        };
        let mut push = |r: &weir_wire::Record<'_>| {
            chunk.push(
                &key_of(r.partition_key),
                r.data,
                r.producer_timestamp_ms,
                Some((0, u64::from(seq))),
            );
        };
        match &envelope {
            Envelope::Record(r) => push(r),
            Envelope::Batch(b) => {
                // Fully checked by `Envelope::decode`: no error here.
                for r in b.records().flatten() {
                    push(&r);
                }
            }
        }
        let has_records = !chunk.is_empty();
        if has_records {
            let (dev, ino) = node_key(producer);
            chunk.files.push(ChunkFile {
                id: FileId { dev, ino, fingerprint: crc, fingerprint_len: payload.len() as u64 },
                path: Arc::from(Path::new(producer)),
                logical: Arc::from(Path::new(producer)),
            });
            let s = &self.shared.inputs[self.task.index];
            s.records.fetch_add(chunk.records.len() as u64, Ordering::Relaxed);
            s.bytes.fetch_add(chunk.buf.len() as u64, Ordering::Relaxed);
            if self.tx.send(Event::Records(chunk)).is_err() {
                return Err(Stopped);
            }
        }
        self.task.stats.frames.fetch_add(1, Ordering::Relaxed);
        node.passed(seq, crc, has_records);
        Ok(())
    }

    /// Forgets the node heard from least recently when the table is full.
    fn make_room(&mut self) -> Result<(), Stopped> {
        if self.nodes.len() < MAX_NODES {
            return Ok(());
        }
        let Some(oldest) = self.nodes.iter().min_by_key(|(_, n)| n.seen).map(|(p, _)| p.clone())
        else {
            return Ok(());
        };
        self.nodes.remove(&oldest);
        tracing::info!(input = %self.task.name, node = %oldest, "forgetting the least recent node");
        let event = Event::Forget { input: self.task.index, keys: vec![node_key(&oldest)] };
        self.tx.send(event).map_err(|_| Stopped)
    }

    /// Looks at the spool's newest checkpoints (when something was appended
    /// since the last look) and acks what they show spooled.
    fn ack_spooled(&mut self, port: &mut Port) -> io::Result<()> {
        if self.nodes.values().all(|n| n.pending.is_empty()) {
            self.write_current_ack(port)?;
            return Ok(());
        }
        // Only what is fsync'd: the node forgets what it sees acknowledged.
        let meta = {
            let spool = lock(&self.task.spool);
            let synced = spool.synced();
            if synced.next_seq == self.spool_seen {
                None
            } else {
                self.spool_seen = synced.next_seq;
                synced.meta.clone()
            }
        };
        if let Some(table) = meta.and_then(|m| Table::from_meta(&m).ok()) {
            for c in table.for_input(&self.task.name) {
                if c.id.dev != SERIAL_DEV {
                    continue;
                }
                let Some(producer) = c.path.to_str() else { continue };
                let Some(node) = self.nodes.get_mut(producer) else { continue };
                let seq = u32::try_from(c.offset).unwrap_or(u32::MAX);
                if node.spooled != Some(seq) {
                    node.spooled_up_to(seq);
                }
            }
            self.publish_nodes();
        }
        self.write_current_ack(port)
    }

    /// Acks the current node's progress if it moved since the last ack.
    fn write_current_ack(&mut self, port: &mut Port) -> io::Result<()> {
        let Some(producer) = &self.current else { return Ok(()) };
        let Some(acked) = self.nodes.get(producer).and_then(|n| n.acked) else { return Ok(()) };
        if self.last_ack.as_ref().is_some_and(|(p, s)| p == producer && *s == acked) {
            return Ok(());
        }
        let ack = (producer.clone(), acked);
        self.write_ack(port, &ack)
    }

    fn write_ack(&mut self, port: &mut Port, ack: &(String, u32)) -> io::Result<()> {
        let mut out = [0u8; ACK_BYTES];
        // out[0] stays 0x00: it ends whatever noise the node holds.
        let n =
            encode_frame(FrameKind::Ack, ack.1, &[], &mut out[1..]).map_err(io::Error::other)?;
        port.write_all(&out[..n + 1])?;
        self.task.stats.acks_sent.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(input = %self.task.name, node = %ack.0, seq = ack.1, "ack sent");
        self.last_ack = Some(ack.clone());
        Ok(())
    }

    fn publish_nodes(&self) {
        let mut rows: Vec<NodeRow> = self
            .nodes
            .iter()
            .map(|(p, n)| NodeRow {
                producer: p.clone(),
                received_seq: n.next.map(|s| s.wrapping_sub(1)),
                held: n.held.len(),
                acked_seq: n.acked,
            })
            .collect();
        rows.sort_by(|a, b| a.producer.cmp(&b.producer));
        *lock(&self.task.stats.nodes) = rows;
    }
}

/// The batcher is gone: the agent is stopping.
#[derive(Debug)]
struct Stopped;
