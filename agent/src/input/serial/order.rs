//! The pure per-node logic of the serial input: which frame comes next,
//! what is a retransmission, a restart or a frame after a gap, what is held
//! and what may be acknowledged. No I/O: the reader ([`super::reader`])
//! feeds it frames and spool checkpoints and acts on its answers.

use std::collections::VecDeque;

use crate::checkpoint::FileKey;

/// The "device" number of a serial checkpoint (no file has it).
pub const SERIAL_DEV: u64 = u64::MAX;
/// Payload CRCs remembered per node, to tell retransmits from restarts.
pub const RECENT_FRAMES: usize = 64;
/// Frames held per node after a gap, waiting for the node to send the
/// missing ones again; one more gives the gap up.
pub const MAX_HELD: usize = 32;
/// Frames handed to the batcher and not yet acknowledged, per node; beyond
/// this the oldest are forgotten (they are acknowledged with later ones).
const MAX_PENDING: usize = 4096;

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
pub(super) struct Node {
    /// The sequence number to hand to the batcher next; `None` before the
    /// node's first frame (which sets it).
    pub(super) next: Option<u32>,
    /// Payload CRC of frame `next - 1` when only the checkpoint knows it.
    pub(super) last_crc: Option<u32>,
    /// Payload CRCs of frames handed to the batcher recently.
    pub(super) recent: VecDeque<(u32, u32)>,
    /// Frames that arrived after a gap, in sequence order, held until the
    /// gap is filled or given up.
    pub(super) held: Vec<Held>,
    /// Frames handed to the batcher and not acknowledged yet, in order:
    /// (seq, has records).
    pub(super) pending: VecDeque<(u32, bool)>,
    /// Highest sequence number acknowledged (everything up to it spooled).
    pub(super) acked: Option<u32>,
    /// The spooled checkpoint last seen for it.
    pub(super) spooled: Option<u32>,
    /// When it was last heard from (a counter, for forgetting the oldest).
    pub(super) seen: u64,
}

/// A frame held after a gap.
#[derive(Debug)]
pub(super) struct Held {
    pub(super) seq: u32,
    pub(super) crc: u32,
    pub(super) payload: Vec<u8>,
}

/// What a data frame is to its node.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
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
    pub(super) fn judge(&self, seq: u32, crc: u32) -> Verdict {
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
    pub(super) fn restart(&mut self, seq: u32) {
        let seen = self.seen;
        *self = Self { next: Some(seq), seen, ..Self::default() };
    }

    /// Holds a frame that came after a gap, in sequence order.
    pub(super) fn hold(&mut self, seq: u32, crc: u32, payload: &[u8]) {
        let Some(next) = self.next else { return };
        let at = self.held.partition_point(|h| h.seq.wrapping_sub(next) < seq.wrapping_sub(next));
        self.held.insert(at, Held { seq, crc, payload: payload.to_vec() });
    }

    /// Gives up the gap before the first held frame; returns how many frames
    /// it held.
    pub(super) fn skip_gap(&mut self) -> u32 {
        match (self.next, self.held.first()) {
            (Some(next), Some(h)) => {
                self.next = Some(h.seq);
                h.seq.wrapping_sub(next)
            }
            _ => 0,
        }
    }

    /// The held frame that is next in order, if any.
    pub(super) fn take_held(&mut self) -> Option<Held> {
        let next = self.next?;
        if self.held.first()?.seq == next { Some(self.held.remove(0)) } else { None }
    }

    /// Frame `seq` was handed to the batcher (`has_records`) or skipped.
    pub(super) fn passed(&mut self, seq: u32, crc: u32, has_records: bool) {
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
    pub(super) fn release_empty(&mut self) {
        while let Some(&(seq, false)) = self.pending.front() {
            self.pending.pop_front();
            self.acked = Some(seq);
        }
    }

    /// The batcher spooled this node's frames up to `seq`: acknowledge them.
    pub(super) fn spooled_up_to(&mut self, seq: u32) {
        self.spooled = Some(seq);
        if let Some(pos) = self.pending.iter().position(|(s, _)| *s == seq) {
            self.pending.drain(..=pos);
            self.acked = Some(seq);
            self.release_empty();
        }
    }
}

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
