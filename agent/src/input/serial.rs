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

mod order;
mod port;
mod reader;

pub use order::{MAX_HELD, RECENT_FRAMES, SERIAL_DEV, node_key};
pub use port::READ_TIMEOUT;
pub use reader::{MAX_NODES, RECONNECT_MAX, RECONNECT_MIN, SerialTask, spawn};
