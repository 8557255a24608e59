//! Store-and-forward: the encoded frames a node holds until its gateway
//! acknowledges them.
//!
//! [`FrameQueue<N, F>`] keeps up to `N` frames of up to `F` bytes each
//! (COBS-encoded with their `0x00` delimiter, exactly the bytes sent on the
//! line) in a ring in RAM; no allocator. Frames are numbered as they are
//! queued, from [`FrameQueue::with_first_seq`]'s number (0 by default),
//! wrapping at `u32::MAX`.
//!
//! - **Full queue: shed the oldest.** A node cannot block its sensors, and
//!   the newest readings are worth more than the oldest, so pushing into a
//!   full queue drops the oldest frame, sent or not, and counts it
//!   ([`FrameQueue::dropped`]); the sampler reports the count in its health
//!   record.
//! - **Acknowledgement: cumulative.** The gateway answers with an ack frame
//!   carrying the highest sequence number it has spooled; every frame up to
//!   and including it leaves the queue. An ack ahead of every number this
//!   queue has handed out (a gateway still answering a previous boot) is
//!   ignored and counted; one behind the oldest queued frame (a repeat)
//!   releases nothing. Sequence numbers compare in serial-number arithmetic (RFC
//!   1982), so wrapping at `u32::MAX` is harmless.
//! - **Sending.** A cursor marks the first frame not yet sent;
//!   [`FrameQueue::rewind`] moves it back to the oldest frame so that
//!   everything unacknowledged is sent again (the [`crate::Link`] does so
//!   when acks stop coming).
//!
//! RAM: `N * (F + 8)` bytes plus a few words. Size `F` with
//! [`weir_wire::max_encoded_frame_len`] of the largest envelope.

use heapless::{Deque, Vec};
use weir_wire::{FrameError, FrameKind, encode_frame};

/// Whether `a` comes at or before `b` in serial-number arithmetic.
pub(crate) fn seq_le(a: u32, b: u32) -> bool {
    b.wrapping_sub(a) < 1 << 31
}

/// What [`FrameQueue::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Pushed {
    /// The sequence number the new frame got.
    pub seq: u32,
    /// The sequence number of the frame dropped to make room, if any.
    pub dropped: Option<u32>,
}

/// One queued frame.
#[derive(Debug)]
struct Queued<const F: usize> {
    seq: u32,
    bytes: Vec<u8, F>,
}

/// A bounded queue of encoded data frames awaiting acknowledgement.
#[derive(Debug)]
pub struct FrameQueue<const N: usize, const F: usize> {
    frames: Deque<Queued<F>, N>,
    /// The number the next pushed frame gets.
    next_seq: u32,
    /// How many frames at the front have been sent since the last rewind.
    sent: usize,
    dropped: u32,
    ignored_acks: u32,
}

impl<const N: usize, const F: usize> Default for FrameQueue<N, F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize, const F: usize> FrameQueue<N, F> {
    /// An empty queue numbering its frames from 0.
    pub const fn new() -> Self {
        Self::with_first_seq(0)
    }

    /// An empty queue numbering its frames from `seq`. A node that can keep
    /// a boot counter or has a random source starts each boot elsewhere, so
    /// that a gateway's ack for the previous boot's frames is not taken for
    /// this boot's.
    pub const fn with_first_seq(seq: u32) -> Self {
        Self { frames: Deque::new(), next_seq: seq, sent: 0, dropped: 0, ignored_acks: 0 }
    }

    /// Encodes `envelope` as the next data frame and queues it, dropping the
    /// oldest frame if the queue is full.
    ///
    /// # Errors
    /// Those of [`encode_frame`]; [`FrameError::BufferTooSmall`] when the
    /// frame is longer than `F`. Nothing is queued or dropped then, and the
    /// sequence number is not used.
    pub fn push(&mut self, envelope: &[u8]) -> Result<Pushed, FrameError> {
        let seq = self.next_seq;
        let mut bytes = Vec::<u8, F>::new();
        // Capacity is F, so filling to F cannot fail.
        bytes.resize(F, 0).map_err(|()| FrameError::BufferTooSmall)?;
        let len = encode_frame(FrameKind::Data, seq, envelope, &mut bytes)?;
        bytes.truncate(len);

        let mut dropped = None;
        if self.frames.is_full()
            && let Some(oldest) = self.frames.pop_front()
        {
            self.sent = self.sent.saturating_sub(1);
            self.dropped = self.dropped.saturating_add(1);
            warn!("queue full: dropped frame {}", oldest.seq);
            dropped = Some(oldest.seq);
        }
        if self.frames.push_back(Queued { seq, bytes }).is_err() {
            // N == 0: a queue that holds nothing drops every frame.
            self.dropped = self.dropped.saturating_add(1);
            dropped = Some(seq);
        }
        self.next_seq = seq.wrapping_add(1);
        Ok(Pushed { seq, dropped })
    }

    /// Takes the gateway's acknowledgement of every frame up to and including
    /// `seq`; returns how many frames left the queue.
    pub fn ack(&mut self, seq: u32) -> usize {
        // Only numbers already handed out can be acknowledged.
        if seq == self.next_seq || !seq_le(seq, self.next_seq) {
            self.ignored_acks = self.ignored_acks.saturating_add(1);
            debug!("ignored ack {} (next frame is {})", seq, self.next_seq);
            return 0;
        }
        let mut released = 0;
        while self.frames.front().is_some_and(|f| seq_le(f.seq, seq)) {
            self.frames.pop_front();
            self.sent = self.sent.saturating_sub(1);
            released += 1;
        }
        released
    }

    /// The first frame not yet sent, as `(seq, bytes on the line)`.
    pub fn next_unsent(&self) -> Option<(u32, &[u8])> {
        self.frames.iter().nth(self.sent).map(|f| (f.seq, f.bytes.as_slice()))
    }

    /// Records that the frame [`FrameQueue::next_unsent`] returned was sent.
    pub fn mark_sent(&mut self) {
        self.sent = (self.sent + 1).min(self.frames.len());
    }

    /// Marks every queued frame unsent, so that all are sent again.
    pub fn rewind(&mut self) {
        self.sent = 0;
    }

    /// Frames sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.sent
    }

    /// Frames queued (sent or not).
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether no frame is queued.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The sequence number of the oldest queued frame.
    pub fn oldest_seq(&self) -> Option<u32> {
        self.frames.front().map(|f| f.seq)
    }

    /// The number the next pushed frame will get.
    pub fn next_seq(&self) -> u32 {
        self.next_seq
    }

    /// Frames dropped because the queue was full, since it was made
    /// (saturating).
    pub fn dropped(&self) -> u32 {
        self.dropped
    }

    /// Acks ignored because they named no frame of this queue (saturating).
    pub fn ignored_acks(&self) -> u32 {
        self.ignored_acks
    }
}

/// Where the [`crate::Sampler`] queues frames and the [`crate::Link`] sends
/// them from: [`FrameQueue`] in RAM, or (feature `flash-queue`)
/// `flash_queue::FlashQueue` in NOR flash.
///
/// Both share the semantics of the module docs: numbered data frames, drop
/// the oldest when full (counted), cumulative acks, a sent cursor that
/// [`FrameStore::rewind`] moves back to the oldest frame.
pub trait FrameStore {
    /// Why [`FrameStore::push`] failed.
    type Error;

    /// The longest frame on the line (COBS, delimiter included) one slot
    /// holds.
    const FRAME_CAPACITY: usize;

    /// Encodes `envelope` as the next data frame and stores it, dropping the
    /// oldest frame if the store is full.
    ///
    /// # Errors
    /// The frame does not fit a slot, or the store failed; nothing is
    /// queued and the sequence number is not used then.
    fn push(&mut self, envelope: &[u8]) -> Result<Pushed, Self::Error>;

    /// Takes the gateway's acknowledgement of every frame up to and including
    /// `seq`; returns how many frames left the store.
    fn ack(&mut self, seq: u32) -> usize;

    /// The first frame not yet sent, as `(seq, bytes on the line)`.
    fn next_unsent(&mut self) -> Option<(u32, &[u8])>;

    /// Records that the frame [`FrameStore::next_unsent`] returned was sent.
    fn mark_sent(&mut self);

    /// Marks every stored frame unsent, so that all are sent again.
    fn rewind(&mut self);

    /// Frames sent and not yet acknowledged.
    fn in_flight(&self) -> usize;

    /// Frames stored (sent or not).
    fn len(&self) -> usize;

    /// Whether no frame is stored.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number the next pushed frame will get.
    fn next_seq(&self) -> u32;

    /// Frames dropped because the store was full (saturating).
    fn dropped(&self) -> u32;
}

impl<const N: usize, const F: usize> FrameStore for FrameQueue<N, F> {
    type Error = FrameError;

    const FRAME_CAPACITY: usize = F;

    fn push(&mut self, envelope: &[u8]) -> Result<Pushed, FrameError> {
        FrameQueue::push(self, envelope)
    }

    fn ack(&mut self, seq: u32) -> usize {
        FrameQueue::ack(self, seq)
    }

    fn next_unsent(&mut self) -> Option<(u32, &[u8])> {
        FrameQueue::next_unsent(self)
    }

    fn mark_sent(&mut self) {
        FrameQueue::mark_sent(self);
    }

    fn rewind(&mut self) {
        FrameQueue::rewind(self);
    }

    fn in_flight(&self) -> usize {
        FrameQueue::in_flight(self)
    }

    fn len(&self) -> usize {
        FrameQueue::len(self)
    }

    fn next_seq(&self) -> u32 {
        FrameQueue::next_seq(self)
    }

    fn dropped(&self) -> u32 {
        FrameQueue::dropped(self)
    }
}

#[cfg(test)]
mod tests {
    use std::vec::Vec as StdVec;

    use weir_wire::{FeedResult, Frame, FrameDecoder, max_encoded_frame_len};

    use super::*;

    const F: usize = max_encoded_frame_len(16);

    /// Decodes a line that holds exactly one frame.
    fn decode(line: &[u8]) -> Result<(FrameKind, u32, StdVec<u8>), FrameError> {
        let mut decoder = FrameDecoder::<F>::new();
        match decoder.feed(line) {
            FeedResult::Frame { frame: Frame { kind, seq, payload }, remaining } => {
                assert!(remaining.is_empty());
                Ok((kind, seq, payload.to_vec()))
            }
            FeedResult::Error { error, .. } => Err(error),
            FeedResult::Consumed => panic!("no delimiter in {line:?}"),
        }
    }

    fn unsent(queue: &FrameQueue<3, F>) -> StdVec<u32> {
        queue.frames.iter().skip(queue.sent).map(|f| f.seq).collect()
    }

    #[test]
    fn queued_frames_are_wire_frames() {
        let mut queue = FrameQueue::<3, F>::with_first_seq(7);
        assert_eq!(queue.push(b"\x01\x02\x00hello"), Ok(Pushed { seq: 7, dropped: None }));
        let (seq, line) = queue.next_unsent().expect("frame");
        assert_eq!(seq, 7);
        assert_eq!(decode(line), Ok((FrameKind::Data, 7, b"\x01\x02\x00hello".to_vec())));
    }

    #[test]
    fn overflow_drops_the_oldest_and_counts() {
        let mut queue = FrameQueue::<3, F>::new();
        for _ in 0..3 {
            queue.push(b"x").expect("push");
        }
        queue.mark_sent();
        queue.mark_sent();
        assert_eq!(queue.push(b"x"), Ok(Pushed { seq: 3, dropped: Some(0) }));
        assert_eq!(queue.push(b"x"), Ok(Pushed { seq: 4, dropped: Some(1) }));
        assert_eq!((queue.len(), queue.dropped(), queue.oldest_seq()), (3, 2, Some(2)));
        // The sent frames were the dropped ones: everything left is unsent.
        assert_eq!(queue.in_flight(), 0);
        assert_eq!(unsent(&queue), [2, 3, 4]);
    }

    #[test]
    fn a_frame_too_long_for_the_slot_is_refused_whole() {
        let mut queue = FrameQueue::<3, F>::new();
        assert_eq!(queue.push(&[1u8; 17]), Err(FrameError::BufferTooSmall));
        assert_eq!((queue.len(), queue.next_seq(), queue.dropped()), (0, 0, 0));
        assert!(queue.push(&[1u8; 16]).is_ok());
    }

    #[test]
    fn a_corrupted_frame_fails_its_check_and_the_next_one_decodes() {
        let mut queue = FrameQueue::<3, F>::new();
        queue.push(b"first").expect("push");
        queue.push(b"second").expect("push");
        let mut line = StdVec::new();
        while let Some((_, bytes)) = queue.next_unsent() {
            line.extend_from_slice(bytes);
            queue.mark_sent();
        }
        line[3] ^= 0x40; // noise on the first frame
        let mut decoder = FrameDecoder::<F>::new();
        let FeedResult::Error { error, remaining } = decoder.feed(&line) else {
            panic!("corruption not detected");
        };
        assert!(matches!(error, FrameError::CrcMismatch { .. } | FrameError::BadCobs { .. }));
        let FeedResult::Frame { frame, remaining } = decoder.feed(remaining) else {
            panic!("second frame lost");
        };
        assert_eq!((frame.seq, frame.payload), (1, &b"second"[..]));
        assert!(remaining.is_empty());
    }

    #[test]
    fn acks_are_cumulative_and_foreign_acks_are_ignored() {
        let mut queue = FrameQueue::<3, F>::new();
        for _ in 0..3 {
            queue.push(b"x").expect("push");
            queue.mark_sent();
        }
        assert_eq!(queue.ack(3), 0, "frame 3 does not exist yet");
        assert_eq!(queue.ack(1_000), 0, "ahead of every frame: another boot's");
        assert_eq!(queue.ignored_acks(), 2);
        assert_eq!(queue.ack(u32::MAX - 5), 0, "behind every frame: an old ack");
        assert_eq!((queue.len(), queue.ignored_acks()), (3, 2));
        assert_eq!(queue.ack(1), 2);
        assert_eq!((queue.len(), queue.oldest_seq(), queue.in_flight()), (1, Some(2), 1));
        assert_eq!(queue.ack(1), 0, "a repeated ack releases nothing");
        assert_eq!(queue.ignored_acks(), 2);
        queue.rewind();
        assert_eq!(queue.next_unsent().map(|(seq, _)| seq), Some(2));
        assert_eq!(queue.ack(2), 1);
        assert!(queue.is_empty() && queue.next_unsent().is_none());
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut queue = FrameQueue::<3, F>::with_first_seq(u32::MAX - 1);
        for _ in 0..3 {
            queue.push(b"x").expect("push");
        }
        assert_eq!(queue.next_seq(), 1);
        assert_eq!(queue.ack(u32::MAX), 2);
        assert_eq!(queue.oldest_seq(), Some(0));
        assert_eq!(queue.ack(0), 1);
        assert!(queue.is_empty());
    }
}
