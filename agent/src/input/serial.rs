//! The serial input: a thread that reads serial frames from microcontroller
//! nodes ([`weir_wire::frame`]: COBS, CRC32C, `0x00` delimiters), turns the
//! batch in each data frame into records, and acknowledges back to the node
//! once they are in the spool.
//!
//! # The line
//!
//! Either a tty device or pty (`path`, opened raw 8N1 at `baud`, reads
//! timing out after [`READ_TIMEOUT`]), or a Unix socket (`socket`, what QEMU's
//! `-serial unix:` offers) that the input connects to as a client. When the
//! line goes away (socket closed, device unplugged, an I/O error) the input
//! opens it again after a backoff of [`RECONNECT_MIN`] doubling up to
//! [`RECONNECT_MAX`]; the frame in progress is dropped.
//!
//! # Frames
//!
//! [`weir_wire::MaxFrameDecoder`] splits the bytes at each `0x00`. A frame
//! that fails its checks (bad COBS, CRC mismatch, cut short, unknown type) is
//! counted as `corrupt` and skipped; one longer than any frame, or whose
//! payload is over `max_frame_bytes`, is counted as `oversized`; a data frame
//! whose envelope does not decode is counted as `invalid`. None of them
//! costs the frames around it: the decoder is back in step at the next
//! delimiter. Ack frames from the line (a node never sends them) are counted
//! as `unexpected`. Every counter is in `weir-agent status`.
//!
//! A data frame carries one envelope: a batch (producer id: the node's,
//! treated as an opaque string; batch sequence number) or a lone record
//! (counted under the empty producer id). Each record keeps its partition
//! key (the node's), data and producer timestamp, unless `partition_key` is
//! configured: its template (see [`crate::template`]) builds the key from
//! `{device_id}` (the agent's device id), `{input}` (this input's name),
//! `{node}` (the node's producer id) and `{key}` (the record's own key, the
//! default template). The records go to the
//! batcher like any input's, into the input's stream.
//!
//! # Order, acknowledgements and duplicates
//!
//! Frames are handed to the batcher in sequence order per node. A frame
//! that comes after a missing one (lost to line noise) is held in memory
//! (at most [`MAX_HELD`] per node) until the node sends the missing one
//! again: the node resends everything unacknowledged, oldest first, when
//! acks stop coming. If that retransmission starts past the gap (the node
//! shed those frames from its full queue), or too many frames are held, the
//! gap is given up, counted as `missed`, and the held frames go on. A frame
//! that is too large or whose envelope does not decode is counted and
//! skipped in order (sending it again cannot help).
//!
//! Every record of a frame carries a checkpoint, as a file input's lines do:
//! key ([`SERIAL_DEV`], hash of the producer id), "path" the producer id,
//! "offset" the frame sequence number and fingerprint the CRC32C of the
//! frame's payload. The batcher writes it in the same spool entry as the
//! records, so "this frame is spooled" and "the input's checkpoint is past
//! it" are one write, and the table survives a restart (`checkpoints.json`
//! shows it too). The input watches the spool's newest entry; when a frame's
//! checkpoint is there, it writes an ack frame carrying the highest sequence
//! number spooled in order back on the same line (a `0x00`, then the ack):
//! the node releases every frame up to it. A frame with no record is
//! acknowledged once the frames before it are.
//!
//! A frame the node sends again (our ack was lost) has a sequence number the
//! input has taken: it is counted as a `duplicate`, not spooled, and answered
//! with the current ack. The input remembers the payload CRC of the last
//! [`RECENT_FRAMES`] frames per node; when a number comes back with other
//! content, the node restarted under the same producer id: the frame is
//! taken, the restart is counted and logged. After an agent restart only
//! the newest frame's CRC is known (from the checkpoint), so an older number
//! is taken for a retransmit; nodes that restart should put a boot id in
//! their producer id (the firmware's `node@<boot id>`). The table keeps at
//! most [`MAX_NODES`] nodes per input: the one seen least recently is
//! forgotten first.
//!
//! Acks mean "in the spool and fsync'd": the input goes by the spool's
//! synced point, which the batcher moves after each fsync (an entry with a
//! serial input's checkpoints is fsync'd as soon as it is written), so a
//! frame the node forgets survives a power cut of the gateway too. Held
//! frames are not acknowledged, so a node sends them again after an agent
//! restart.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_wire::{
    Envelope, FeedResult, FrameError, FrameKind, MaxFrameDecoder, encode_frame,
    max_encoded_frame_len,
};

use crate::backoff::Backoff;
use crate::checkpoint::{FileKey, Table};
use crate::config::{SerialInput, SerialSource};
use crate::event::{Chunk, ChunkFile, Event};
use crate::spool::Spool;
use crate::stats::{Shared, lock};
use crate::tail::{Checkpoint, FileId};
use crate::template::{KeyContext, KeyTemplate};

/// A read returns after this long without bytes, so acks, stop requests and
/// status updates are never held up by a quiet line.
pub const READ_TIMEOUT: Duration = Duration::from_millis(50);
/// First delay before opening the line again.
pub const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Longest delay before opening the line again.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// The "device" number of a serial checkpoint (no file has it).
pub const SERIAL_DEV: u64 = u64::MAX;
/// Payload CRCs remembered per node, to tell retransmits from restarts.
pub const RECENT_FRAMES: usize = 64;
/// Frames held per node after a gap, waiting for the node to send the
/// missing ones again; one more gives the gap up.
pub const MAX_HELD: usize = 32;
/// Nodes kept per input (checkpoint table and memory).
pub const MAX_NODES: usize = 64;
/// Frames handed to the batcher and not yet acknowledged, per node; beyond
/// this the oldest are forgotten (they are acknowledged with later ones).
const MAX_PENDING: usize = 4096;
/// Bytes read from the line at once.
const READ_BUF: usize = 4096;
/// Bytes of an ack frame on the line, with the leading `0x00`.
const ACK_BYTES: usize = max_encoded_frame_len(0) + 1;

/// A node as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// Its producer id.
    pub producer: String,
    /// Highest frame sequence number handed on in order.
    pub received_seq: Option<u32>,
    /// Highest frame sequence number acknowledged.
    pub acked_seq: Option<u32>,
    /// Frames held after a gap.
    pub held: usize,
}

/// Counters of one serial input, for the status.
#[derive(Debug, Default)]
pub struct SerialStats {
    /// Whether the line is open.
    pub connected: AtomicBool,
    /// Times the line was opened.
    pub connects: AtomicU64,
    /// Data frames taken (spooled or empty).
    pub frames: AtomicU64,
    /// Frames that failed their checks (COBS, CRC, length, type).
    pub corrupt: AtomicU64,
    /// Frames over the size bound.
    pub oversized: AtomicU64,
    /// Data frames whose envelope did not decode.
    pub invalid: AtomicU64,
    /// Frames from the line that were not data frames.
    pub unexpected: AtomicU64,
    /// Retransmitted frames not spooled again.
    pub duplicates: AtomicU64,
    /// Sequence numbers that went back with new content (node restarts).
    pub restarts: AtomicU64,
    /// Frames that never arrived, given up when the node no longer had them.
    pub missed: AtomicU64,
    /// Ack frames written.
    pub acks_sent: AtomicU64,
    /// The nodes.
    pub nodes: Mutex<Vec<NodeRow>>,
}

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

/// The checkpoint key of a node: [`SERIAL_DEV`] and a hash of its producer
/// id (FNV-1a, stable across builds).
pub fn node_key(producer: &str) -> FileKey {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in producer.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (SERIAL_DEV, h)
}

/// Whether `a` comes at or before `b` in serial-number arithmetic (RFC 1982),
/// as the node numbers its frames.
fn seq_le(a: u32, b: u32) -> bool {
    b.wrapping_sub(a) < 1 << 31
}

/// A node's state on this input.
#[derive(Debug, Default)]
struct Node {
    /// The sequence number to hand to the batcher next; `None` before the
    /// node's first frame (which sets it).
    next: Option<u32>,
    /// Payload CRC of frame `next - 1` when only the checkpoint knows it.
    last_crc: Option<u32>,
    /// Payload CRCs of frames handed to the batcher recently.
    recent: VecDeque<(u32, u32)>,
    /// Frames that arrived after a gap, in sequence order, held until the
    /// gap is filled or given up.
    held: Vec<Held>,
    /// Frames handed to the batcher and not acknowledged yet, in order:
    /// (seq, has records).
    pending: VecDeque<(u32, bool)>,
    /// Highest sequence number acknowledged (everything up to it spooled).
    acked: Option<u32>,
    /// The spooled checkpoint last seen for it.
    spooled: Option<u32>,
    /// When it was last heard from (a counter, for forgetting the oldest).
    seen: u64,
}

/// A frame held after a gap.
#[derive(Debug)]
struct Held {
    seq: u32,
    crc: u32,
    payload: Vec<u8>,
}

/// What a data frame is to its node.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The next frame in order (or the node's first): hand it on.
    Next,
    /// After a gap: hold it.
    Ahead,
    /// Sent before and taken: a retransmission.
    Duplicate,
    /// Sent before and held: the node is retransmitting from its oldest
    /// frame, which is past the gap: the frames in the gap are gone.
    HeldDuplicate,
    /// A number taken before, with other content: the node restarted.
    Restart,
}

impl Node {
    fn judge(&self, seq: u32, crc: u32) -> Verdict {
        let Some(next) = self.next else { return Verdict::Next };
        if seq == next {
            return Verdict::Next;
        }
        if seq_le(next, seq) {
            return if self.held.iter().any(|h| h.seq == seq) {
                Verdict::HeldDuplicate
            } else {
                Verdict::Ahead
            };
        }
        let known = self
            .recent
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, c)| *c)
            .or(if seq == next.wrapping_sub(1) { self.last_crc } else { None });
        match known {
            Some(c) if c != crc => Verdict::Restart,
            _ => Verdict::Duplicate,
        }
    }

    /// Starts over at `seq` (a restart under the same producer id).
    fn restart(&mut self, seq: u32) {
        let seen = self.seen;
        *self = Self { next: Some(seq), seen, ..Self::default() };
    }

    /// Holds a frame that came after a gap, in sequence order.
    fn hold(&mut self, seq: u32, crc: u32, payload: &[u8]) {
        let Some(next) = self.next else { return };
        let at = self.held.partition_point(|h| h.seq.wrapping_sub(next) < seq.wrapping_sub(next));
        self.held.insert(at, Held { seq, crc, payload: payload.to_vec() });
    }

    /// Gives up the gap before the first held frame; returns how many frames
    /// it held.
    fn skip_gap(&mut self) -> u32 {
        match (self.next, self.held.first()) {
            (Some(next), Some(h)) => {
                self.next = Some(h.seq);
                h.seq.wrapping_sub(next)
            }
            _ => 0,
        }
    }

    /// The held frame that is next in order, if any.
    fn take_held(&mut self) -> Option<Held> {
        let next = self.next?;
        if self.held.first()?.seq == next { Some(self.held.remove(0)) } else { None }
    }

    /// Frame `seq` was handed to the batcher (`has_records`) or skipped.
    fn passed(&mut self, seq: u32, crc: u32, has_records: bool) {
        self.next = Some(seq.wrapping_add(1));
        self.last_crc = None;
        if self.recent.len() >= RECENT_FRAMES {
            self.recent.pop_front();
        }
        self.recent.push_back((seq, crc));
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back((seq, has_records));
        self.release_empty();
    }

    /// Acknowledges the frames without records at the front.
    fn release_empty(&mut self) {
        while let Some(&(seq, false)) = self.pending.front() {
            self.pending.pop_front();
            self.acked = Some(seq);
        }
    }

    /// The batcher spooled this node's frames up to `seq`: acknowledge them.
    fn spooled_up_to(&mut self, seq: u32) {
        self.spooled = Some(seq);
        if let Some(pos) = self.pending.iter().position(|(s, _)| *s == seq) {
            self.pending.drain(..=pos);
            self.acked = Some(seq);
            self.release_empty();
        }
    }
}

/// The line: a socket or a tty.
enum Port {
    Socket(UnixStream),
    Device(std::fs::File, std::path::PathBuf),
}

impl Port {
    fn open(source: &SerialSource) -> io::Result<Self> {
        match source {
            SerialSource::Socket { path } => {
                let s = UnixStream::connect(path)?;
                s.set_read_timeout(Some(READ_TIMEOUT))?;
                Ok(Self::Socket(s))
            }
            SerialSource::Device { path, baud } => {
                let f = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
                configure_tty(&f, *baud)?;
                Ok(Self::Device(f, path.clone()))
            }
        }
    }

    /// Reads what the line has: `None` when nothing came within
    /// [`READ_TIMEOUT`], `Some(0)` when the line closed.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let r = match self {
            Self::Socket(s) => s.read(buf),
            // VMIN 0: a read with nothing to give returns 0 after VTIME; a
            // device that went away (USB unplugged) may do the same, so its
            // node is looked for then.
            Self::Device(f, path) => match f.read(buf) {
                Ok(0) if path.exists() => return Ok(None),
                other => other,
            },
        };
        match r {
            Ok(n) => Ok(Some(n)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Socket(s) => s.write_all(bytes),
            Self::Device(f, _) => f.write_all(bytes),
        }
    }
}

/// Raw 8N1 at `baud`, reads returning what is there after at most a tenth
/// of a second ([`READ_TIMEOUT`] rounded up to the tty's unit).
fn configure_tty(f: &std::fs::File, baud: u32) -> io::Result<()> {
    use rustix::termios::{ControlModes, OptionalActions, SpecialCodeIndex, tcgetattr, tcsetattr};
    let mut t = tcgetattr(f)?;
    t.make_raw();
    t.control_modes |= ControlModes::CREAD | ControlModes::CLOCAL;
    t.set_speed(baud)?;
    t.special_codes[SpecialCodeIndex::VMIN] = 0;
    t.special_codes[SpecialCodeIndex::VTIME] = 1;
    tcsetattr(f, OptionalActions::Now, &t)?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_in_order_gaps_retransmits_restarts_and_acks() {
        let mut n = Node::default();
        assert_eq!(n.judge(5, 50), Verdict::Next, "the first frame sets the start");
        n.passed(5, 50, true);
        assert_eq!(n.judge(5, 50), Verdict::Duplicate);
        assert_eq!(n.judge(5, 99), Verdict::Restart);
        assert_eq!(n.judge(6, 60), Verdict::Next);
        // 6 is lost on the line; 7 and 8 wait for it.
        assert_eq!(n.judge(8, 80), Verdict::Ahead);
        n.hold(8, 80, b"8");
        assert_eq!(n.judge(7, 70), Verdict::Ahead);
        n.hold(7, 70, b"7");
        assert!(n.take_held().is_none(), "6 is missing");
        assert_eq!(n.judge(7, 70), Verdict::HeldDuplicate);
        n.passed(6, 60, false);
        assert_eq!(n.acked, None, "an empty frame waits for the one before");
        let mut held = Vec::new();
        while let Some(h) = n.take_held() {
            n.passed(h.seq, h.crc, true);
            held.push(h.seq);
        }
        assert_eq!(held, [7, 8]);
        n.spooled_up_to(5);
        assert_eq!(n.acked, Some(6), "the empty frame after it is acked too");
        n.spooled_up_to(8);
        assert_eq!(n.acked, Some(8));
        assert!(n.pending.is_empty());
        // A gap the node cannot fill: given up at its next retransmission.
        n.hold(11, 110, b"11");
        assert_eq!(n.judge(11, 110), Verdict::HeldDuplicate);
        assert_eq!(n.skip_gap(), 2);
        assert_eq!(n.take_held().map(|h| h.seq), Some(11));
        // After an agent restart only the newest frame's CRC is known.
        let r = Node { next: Some(4), last_crc: Some(13), ..Node::default() };
        assert_eq!(r.judge(3, 13), Verdict::Duplicate);
        assert_eq!(r.judge(3, 14), Verdict::Restart);
        assert_eq!(r.judge(1, 1), Verdict::Duplicate);
        let w = Node { next: Some(u32::MAX), ..Node::default() };
        assert_eq!(w.judge(0, 2), Verdict::Ahead, "numbers wrap");
    }

    #[test]
    fn node_keys_are_stable() {
        assert_eq!(node_key("node@0000002a"), node_key("node@0000002a"));
        assert_ne!(node_key("a"), node_key("b"));
        assert_eq!(node_key("").0, SERIAL_DEV);
    }
}
