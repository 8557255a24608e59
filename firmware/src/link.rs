//! The serial link to the gateway: sends queued frames, takes acks back.
//!
//! [`Transport`] is the outgoing side, implemented for every
//! `embedded_io::Write` (a UART, a USB CDC port, a test buffer). The incoming
//! side is bytes the board hands to [`Link::receive`] from its UART receive
//! interrupt or DMA buffer, so the library never blocks waiting for input.
//!
//! # Protocol (node side)
//!
//! - [`Link::poll`] sends every queued frame not yet sent, preceded by a lone
//!   `0x00` at the start of each burst so that line noise before it ends as
//!   its own (ignored) frame instead of spoiling the first one.
//! - The gateway answers with ack frames carrying the highest sequence
//!   number it has spooled; [`Link::receive`] decodes them and releases the
//!   frames from the queue ([`FrameStore::ack`]). Corrupt input and data
//!   frames are counted and skipped: the decoder resynchronises at the next
//!   `0x00`.
//! - When frames are in flight and no ack has released any for
//!   `ack_timeout_ms`, [`Link::poll`] rewinds the queue and sends everything
//!   unacknowledged again, same sequence numbers; the gateway keeps each
//!   number once.
//!
//! Time is the caller's: every call that needs it takes `now_ms` from any
//! monotonic millisecond clock.

use weir_wire::{FeedResult, FrameDecoder, FrameKind, max_encoded_frame_len};

use crate::queue::FrameStore;

/// Bytes of an ack frame on the line: the only frames a node reads.
pub const ACK_LINE_LEN: usize = max_encoded_frame_len(0);

/// The outgoing half of a serial link.
pub trait Transport {
    /// Why a write failed.
    type Error;

    /// Writes all of `bytes` and flushes them.
    ///
    /// # Errors
    /// The writer's error; part of `bytes` may have been written.
    fn send(&mut self, bytes: &[u8]) -> Result<(), Self::Error>;
}

impl<W: embedded_io::Write> Transport for W {
    type Error = W::Error;

    fn send(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        self.write_all(bytes)?;
        self.flush()
    }
}

/// Counters of the link, for the health record and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LinkStats {
    /// Frames written (retransmissions included).
    pub frames_sent: u32,
    /// Times everything unacknowledged was sent again after a timeout.
    pub retransmits: u32,
    /// Acks decoded (also those that released nothing).
    pub acks: u32,
    /// Incoming frames refused: corrupt, too long, or not an ack.
    pub bad_frames: u32,
}

/// A node's end of the serial link.
#[derive(Debug)]
pub struct Link<T> {
    transport: T,
    decoder: FrameDecoder<ACK_LINE_LEN>,
    ack_timeout_ms: u64,
    /// When the oldest in-flight frame was (re)sent or last released by an
    /// ack: the ack timeout counts from here.
    waiting_since_ms: u64,
    stats: LinkStats,
}

impl<T: Transport> Link<T> {
    /// A link over `transport` that resends unacknowledged frames after
    /// `ack_timeout_ms` without progress.
    pub fn new(transport: T, ack_timeout_ms: u64) -> Self {
        Self {
            transport,
            decoder: FrameDecoder::new(),
            ack_timeout_ms,
            waiting_since_ms: 0,
            stats: LinkStats::default(),
        }
    }

    /// Sends what the queue holds unsent, after rewinding it if the ack
    /// timeout has passed; returns how many frames were written.
    ///
    /// # Errors
    /// The transport's error. The frame being written stays unsent and is
    /// written whole on the next call (the receiver drops the partial one at
    /// the next delimiter).
    pub fn poll<Q: FrameStore>(&mut self, queue: &mut Q, now_ms: u64) -> Result<usize, T::Error> {
        if queue.in_flight() > 0
            && now_ms.saturating_sub(self.waiting_since_ms) >= self.ack_timeout_ms
        {
            debug!("no ack for {} frames: sending them again", queue.in_flight());
            queue.rewind();
            self.stats.retransmits = self.stats.retransmits.saturating_add(1);
        }
        let mut written = 0;
        while let Some((_, bytes)) = queue.next_unsent() {
            if written == 0 {
                self.transport.send(&[0])?;
            }
            self.transport.send(bytes)?;
            if queue.in_flight() == 0 {
                self.waiting_since_ms = now_ms;
            }
            queue.mark_sent();
            self.stats.frames_sent = self.stats.frames_sent.saturating_add(1);
            written += 1;
        }
        Ok(written)
    }

    /// Takes bytes received from the gateway and applies every ack in them;
    /// returns how many frames left the queue.
    pub fn receive<Q: FrameStore>(
        &mut self,
        mut input: &[u8],
        queue: &mut Q,
        now_ms: u64,
    ) -> usize {
        let mut released = 0;
        loop {
            match self.decoder.feed(input) {
                FeedResult::Consumed => return released,
                FeedResult::Frame { frame, remaining } => {
                    input = remaining;
                    if frame.kind != FrameKind::Ack {
                        self.stats.bad_frames = self.stats.bad_frames.saturating_add(1);
                        continue;
                    }
                    self.stats.acks = self.stats.acks.saturating_add(1);
                    let n = queue.ack(frame.seq);
                    if n > 0 {
                        self.waiting_since_ms = now_ms;
                    }
                    released += n;
                }
                FeedResult::Error { remaining, .. } => {
                    input = remaining;
                    self.stats.bad_frames = self.stats.bad_frames.saturating_add(1);
                    warn!("bad frame from the gateway");
                }
            }
        }
    }

    /// The link's counters.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// The transport, for the board to reach its other functions.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Hands the transport back.
    pub fn release(self) -> T {
        self.transport
    }
}

#[cfg(test)]
mod tests {
    use std::vec::Vec as StdVec;

    use weir_wire::{FrameDecoder, encode_frame};

    use super::*;
    use crate::queue::FrameQueue;

    const F: usize = max_encoded_frame_len(8);

    /// A writer into memory that can be told to fail.
    #[derive(Default)]
    struct Line {
        bytes: StdVec<u8>,
        fail: bool,
    }

    impl embedded_io::ErrorType for Line {
        type Error = embedded_io::ErrorKind;
    }

    impl embedded_io::Write for Line {
        fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
            if self.fail {
                return Err(embedded_io::ErrorKind::BrokenPipe);
            }
            self.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    /// The sequence numbers of the data frames on the line, taking it.
    fn sent(link: &mut Link<Line>) -> StdVec<u32> {
        let bytes = core::mem::take(&mut link.transport_mut().bytes);
        let mut decoder = FrameDecoder::<F>::new();
        let mut input = &bytes[..];
        let mut seqs = StdVec::new();
        loop {
            match decoder.feed(input) {
                FeedResult::Consumed => return seqs,
                FeedResult::Frame { frame, remaining } => {
                    seqs.push(frame.seq);
                    input = remaining;
                }
                FeedResult::Error { error, .. } => panic!("bad frame on the line: {error}"),
            }
        }
    }

    fn ack(seq: u32) -> StdVec<u8> {
        let mut out = [0u8; ACK_LINE_LEN];
        let n = encode_frame(FrameKind::Ack, seq, &[], &mut out).expect("ack");
        out[..n].to_vec()
    }

    fn queue_of(n: usize) -> FrameQueue<4, F> {
        let mut queue = FrameQueue::new();
        for _ in 0..n {
            queue.push(b"x").expect("push");
        }
        queue
    }

    #[test]
    fn frames_leave_the_queue_only_when_acked() {
        let mut queue = queue_of(3);
        let mut link = Link::new(Line::default(), 1_000);
        assert_eq!(link.poll(&mut queue, 0), Ok(3));
        assert_eq!(link.transport_mut().bytes[0], 0, "a burst starts with a delimiter");
        assert_eq!(sent(&mut link), [0, 1, 2]);
        assert_eq!(queue.len(), 3, "sent is not acknowledged");
        assert_eq!(link.poll(&mut queue, 10), Ok(0), "nothing is sent twice before the timeout");

        assert_eq!(link.receive(&ack(1), &mut queue, 20), 2);
        assert_eq!(queue.oldest_seq(), Some(2));
        // An ack split across two reads is still one ack.
        let a = ack(2);
        assert_eq!(link.receive(&a[..3], &mut queue, 30), 0);
        assert_eq!(link.receive(&a[3..], &mut queue, 30), 1);
        assert!(queue.is_empty());
        assert_eq!(link.stats().acks, 2);
    }

    #[test]
    fn unacknowledged_frames_are_sent_again_after_the_timeout() {
        let mut queue = queue_of(2);
        let mut link = Link::new(Line::default(), 1_000);
        link.poll(&mut queue, 0).expect("poll");
        assert_eq!(sent(&mut link), [0, 1]);
        link.receive(&ack(0), &mut queue, 500);
        assert_eq!(link.poll(&mut queue, 1_499), Ok(0), "the ack at 500 restarted the timer");
        assert_eq!(link.poll(&mut queue, 1_500), Ok(1));
        assert_eq!(sent(&mut link), [1]);
        assert_eq!(
            link.stats(),
            LinkStats { frames_sent: 3, retransmits: 1, acks: 1, bad_frames: 0 }
        );
    }

    #[test]
    fn corrupt_input_is_counted_and_the_next_ack_still_counts() {
        let mut queue = queue_of(3);
        let mut link = Link::new(Line::default(), 1_000);
        link.poll(&mut queue, 0).expect("poll");
        let mut bad = ack(2);
        bad[2] ^= 0x08;
        let mut data = [0u8; F];
        let n = encode_frame(FrameKind::Data, 1, b"no", &mut data).expect("data");
        let input = [&bad[..], &data[..n], &[0x42, 0x17][..], &ack(1)[..]].concat();
        // The garbage without a delimiter joins, and spoils, the last ack.
        assert_eq!(link.receive(&input, &mut queue, 1), 0);
        assert_eq!(link.stats().bad_frames, 3);
        assert_eq!(link.receive(&[&[0][..], &ack(1)[..]].concat(), &mut queue, 2), 2);
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn a_failed_write_leaves_the_frame_unsent() {
        let mut queue = queue_of(1);
        let mut link = Link::new(Line { fail: true, ..Line::default() }, 1_000);
        assert_eq!(link.poll(&mut queue, 0), Err(embedded_io::ErrorKind::BrokenPipe));
        assert_eq!(queue.in_flight(), 0);
        link.transport_mut().fail = false;
        assert_eq!(link.poll(&mut queue, 1), Ok(1));
        assert_eq!(sent(&mut link), [0]);
    }
}
