//! Tests of the flash queue and the boot counter on a RAM NOR flash double
//! (reset, overflow, corruption, foreign items, read errors), and the
//! sampler and link over it across a reset.

use std::string::ToString;
use std::vec;
use std::vec::Vec;

use embedded_storage::nor_flash::{self as blocking, ErrorType, NorFlashErrorKind};
use weir_wire::{FeedResult, Frame, FrameDecoder};

use super::*;

const WORD: usize = 4;
const PAGE: usize = 256;
const PAGES: usize = 4;
/// Slots for envelopes of up to 16 bytes.
const F: usize = slot_len(16, WORD);
/// The queue's range: 3 of the 4 pages.
const RANGE: Range<u32> = 0..(3 * PAGE) as u32;

/// NOR flash in RAM: erase sets bytes to 0xFF, writes can only clear
/// bits (so a word may be written more than once: multiwrite).
struct RamFlash {
    bytes: Vec<u8>,
    /// When set, every read fails.
    fail_reads: bool,
}

impl RamFlash {
    fn new() -> Self {
        Self { bytes: vec![0xFF; PAGE * PAGES], fail_reads: false }
    }

    fn check(&self, offset: u32, len: usize, align: usize) -> Result<usize, NorFlashErrorKind> {
        let start = offset as usize;
        if !start.is_multiple_of(align) || !len.is_multiple_of(align) {
            return Err(NorFlashErrorKind::NotAligned);
        }
        if start + len > self.bytes.len() {
            return Err(NorFlashErrorKind::OutOfBounds);
        }
        Ok(start)
    }
}

impl ErrorType for RamFlash {
    type Error = NorFlashErrorKind;
}

impl blocking::ReadNorFlash for RamFlash {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        if self.fail_reads {
            return Err(NorFlashErrorKind::Other);
        }
        let start = self.check(offset, bytes.len(), 1)?;
        bytes.copy_from_slice(&self.bytes[start..start + bytes.len()]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.bytes.len()
    }
}

impl blocking::NorFlash for RamFlash {
    const WRITE_SIZE: usize = WORD;
    const ERASE_SIZE: usize = PAGE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        let start = self.check(from, (to - from) as usize, PAGE)?;
        self.bytes[start..to as usize].fill(0xFF);
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        let start = self.check(offset, bytes.len(), WORD)?;
        for (cell, b) in self.bytes[start..].iter_mut().zip(bytes) {
            *cell &= b;
        }
        Ok(())
    }
}

impl blocking::MultiwriteNorFlash for RamFlash {}

type Queue<'a> = FlashQueue<Blocking<&'a mut RamFlash>, F>;

fn open(flash: &mut RamFlash, first_seq: u32) -> Queue<'_> {
    FlashQueue::open(Blocking(flash), RANGE, first_seq).expect("open")
}

/// Decodes one frame line into `(seq, payload)`.
fn decode(line: &[u8]) -> (u32, Vec<u8>) {
    let mut decoder = FrameDecoder::<F>::new();
    match decoder.feed(line) {
        FeedResult::Frame { frame: Frame { kind, seq, payload }, remaining } => {
            assert_eq!(kind, FrameKind::Data);
            assert!(remaining.is_empty());
            (seq, payload.to_vec())
        }
        other => panic!("not one frame: {other:?}"),
    }
}

/// Sends everything unsent: `(seq, payload)` per frame.
fn send_all(queue: &mut Queue<'_>) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some((seq, line)) = queue.next_unsent() {
        let (frame_seq, payload) = decode(line);
        assert_eq!(frame_seq, seq);
        out.push((seq, payload));
        queue.mark_sent();
    }
    out
}

fn seqs(frames: &[(u32, Vec<u8>)]) -> Vec<u32> {
    frames.iter().map(|f| f.0).collect()
}

#[test]
fn frames_are_pushed_sent_and_released_by_acks() {
    let mut flash = RamFlash::new();
    let mut queue = open(&mut flash, 100);
    for payload in [&b"one"[..], b"two", b"three"] {
        queue.push(payload).expect("push");
    }
    assert_eq!((queue.len(), queue.next_seq()), (3, 103));
    let sent = send_all(&mut queue);
    assert_eq!(sent, [(100, b"one".to_vec()), (101, b"two".to_vec()), (102, b"three".to_vec())]);
    assert_eq!(queue.in_flight(), 3);

    assert_eq!(queue.ack(103), 0, "not handed out yet");
    assert_eq!(queue.ack(5_000), 0, "another boot's");
    assert_eq!(queue.ignored_acks(), 2);
    assert_eq!(queue.ack(101), 2);
    assert_eq!((queue.len(), queue.in_flight()), (1, 1));
    assert_eq!(queue.ack(101), 0, "a repeated ack releases nothing");
    queue.rewind();
    assert_eq!(seqs(&send_all(&mut queue)), [102]);
    assert_eq!(queue.ack(102), 1);
    assert!(queue.is_empty() && queue.next_unsent().is_none());
    assert_eq!(queue.flash_errors(), 0);
}

#[test]
fn unacknowledged_frames_survive_a_reset_and_numbering_continues() {
    let mut flash = RamFlash::new();
    let mut queue = open(&mut flash, 7);
    for _ in 0..4 {
        queue.push(b"reading").expect("push");
    }
    send_all(&mut queue);
    assert_eq!(queue.ack(8), 2);
    let _flash = queue.release(); // reset: the RAM state is gone

    // Reset: the same flash opened again, with another first_seq.
    let mut queue = open(&mut flash, 0);
    assert_eq!((queue.len(), queue.in_flight(), queue.next_seq()), (2, 0, 11));
    assert_eq!(queue.push(b"after").expect("push"), Pushed { seq: 11, dropped: None });
    let sent = send_all(&mut queue);
    assert_eq!(seqs(&sent), [9, 10, 11]);
    assert_eq!(sent[2].1, b"after");
    assert_eq!(queue.ack(11), 3);
    let _flash = queue.release(); // reset: the RAM state is gone

    // Everything acknowledged: the next boot numbers on from first_seq,
    // since nothing in flash names a frame any more.
    let queue = open(&mut flash, 500);
    assert_eq!((queue.len(), queue.next_seq()), (0, 500));
}

#[test]
fn a_full_range_drops_the_oldest_frames_and_counts_them() {
    let mut flash = RamFlash::new();
    let mut queue = open(&mut flash, 0);
    let pushes = 200u32;
    let mut reported = Vec::new();
    for _ in 0..pushes {
        let pushed = queue.push(&[0xA5; 16]).expect("push");
        reported.extend(pushed.dropped);
    }
    let dropped = queue.dropped();
    assert!(dropped > 0, "3 pages cannot hold {pushes} frames");
    assert_eq!(queue.len() as u32 + dropped, pushes);
    // The newest frames are kept, in order, and the oldest went first.
    let kept = seqs(&send_all(&mut queue));
    let expected: Vec<u32> = (dropped..pushes).collect();
    assert_eq!(kept, expected);
    assert!(reported.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(reported.last(), Some(&(dropped - 1)));

    // The bound holds across a reset too.
    let _flash = queue.release(); // reset: the RAM state is gone
    let mut queue = open(&mut flash, 0);
    assert_eq!((queue.len() as u32, queue.next_seq()), (pushes - dropped, pushes));
    assert_eq!(queue.ack(pushes - 1), (pushes - dropped) as usize);
    assert!(queue.is_empty());
}

#[test]
fn a_frame_too_long_for_the_slot_is_refused_whole() {
    let mut flash = RamFlash::new();
    let mut queue = open(&mut flash, 0);
    // The slot is padded to the flash word: a little more than 16 bytes
    // fit, not 32.
    assert!(Queue::FRAME_CAPACITY >= max_encoded_frame_len(16));
    let err = queue.push(&[1u8; 32]).expect_err("32 bytes in a 16-byte slot");
    assert!(matches!(err, FlashError::Frame(FrameError::BufferTooSmall)), "{err:?}");
    assert_eq!((queue.len(), queue.next_seq(), queue.dropped()), (0, 0, 0));
    assert!(queue.push(&[1u8; 16]).is_ok());
}

#[test]
fn a_corrupted_frame_is_skipped_and_the_others_are_kept() {
    let mut flash = RamFlash::new();
    let mut queue = open(&mut flash, 0);
    for payload in [&b"first"[..], b"second", b"third"] {
        queue.push(payload).expect("push");
    }
    let _flash = queue.release(); // reset: the RAM state is gone
    // Flip bits in the middle of the second frame's stored bytes (its
    // item CRC no longer matches).
    let at = flash.bytes.windows(6).position(|w| w == b"second").expect("stored");
    flash.bytes[at + 2] &= 0x0F;

    let mut queue = open(&mut flash, 0);
    let sent = send_all(&mut queue);
    assert_eq!(sent, [(0, b"first".to_vec()), (2, b"third".to_vec())]);
    assert_eq!(queue.next_seq(), 3);
    assert_eq!(queue.ack(2), 2);
    assert!(queue.is_empty());
}

#[test]
fn a_range_of_foreign_items_is_erased_when_opened() {
    let mut flash = RamFlash::new();
    {
        let config = QueueConfig::try_new(RANGE).expect("range");
        let mut raw = QueueStorage::new(Blocking(&mut flash), config, Cache::new_uncached());
        block_on(raw.push(b"ab", false)).expect("foreign item");
    }
    let mut queue = open(&mut flash, 9);
    assert_eq!((queue.len(), queue.next_seq(), queue.flash_errors()), (0, 9, 1));
    queue.push(b"x").expect("push");
    assert_eq!(seqs(&send_all(&mut queue)), [9]);
}

#[test]
fn read_failures_are_counted_and_nothing_is_lost() {
    let mut flash = RamFlash::new();
    let mut queue = open(&mut flash, 0);
    queue.push(b"x").expect("push");
    let _flash = queue.release(); // reset: the RAM state is gone
    flash.fail_reads = true;
    assert!(matches!(
        FlashQueue::<_, F>::open(Blocking(&mut flash), RANGE, 0),
        Err(FlashError::Storage(StorageError::Storage { value: NorFlashErrorKind::Other, .. }))
    ));
    flash.fail_reads = false;
    let mut queue = open(&mut flash, 0);
    queue.flash_errors = 0;
    assert_eq!(queue.len(), 1);
    // A read failing while the queue is open: counted, the frame stays.
    queue.storage.flash().0.fail_reads = true;
    assert!(queue.next_unsent().is_none());
    assert_eq!(queue.ack(0), 0);
    assert_eq!(queue.flash_errors(), 2);
    queue.storage.flash().0.fail_reads = false;
    assert_eq!(seqs(&send_all(&mut queue)), [0]);
    assert_eq!(queue.ack(0), 1);
}

#[test]
fn bad_ranges_are_refused() {
    let mut flash = RamFlash::new();
    for range in [1..(PAGE as u32), 0..(PAGE as u32 / 2), 0..0] {
        let result = FlashQueue::<_, F>::open(Blocking(&mut flash), range.clone(), 0);
        assert!(matches!(result, Err(FlashError::BadRange)), "{range:?}");
    }
    assert!(matches!(
        next_boot_id(&mut Blocking(&mut flash), 0..PAGE as u32),
        Err(FlashError::BadRange)
    ));
    let err: FlashError<NorFlashErrorKind> = FlashError::BadRange;
    assert_eq!(err.to_string(), "flash range not usable (page alignment or size)");
}

#[test]
fn boot_ids_count_up_per_boot_beside_the_queue() {
    let mut flash = RamFlash::new();
    let boot_range = (2 * PAGE) as u32..(4 * PAGE) as u32;
    let queue_range = 0..(2 * PAGE) as u32;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = next_boot_id(&mut Blocking(&mut flash), boot_range.clone()).expect("boot id");
        ids.push(id);
        let mut queue: Queue<'_> =
            FlashQueue::open(Blocking(&mut flash), queue_range.clone(), id << 16).expect("open");
        queue.push(b"x").expect("push");
    }
    assert_eq!(ids, [1, 2, 3]);
    let queue: Queue<'_> = FlashQueue::open(Blocking(&mut flash), queue_range, 0).expect("open");
    // The counter's pages did not disturb the queue's.
    assert_eq!((queue.len(), queue.next_seq()), (3, (1 << 16) + 1 + 2));
}

/// The gateway's side of the line: what a node wrote.
#[derive(Default)]
struct Line(Vec<u8>);

impl embedded_io::ErrorType for Line {
    type Error = core::convert::Infallible;
}

impl embedded_io::Write for Line {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// Every batch on the line as `(frame seq, producer id)`, emptying it.
fn batches(line: &mut Line) -> Vec<(u32, std::string::String)> {
    let mut decoder = FrameDecoder::<{ max_encoded_frame_len(512) }>::new();
    let mut out = Vec::new();
    let bytes = core::mem::take(&mut line.0);
    let mut input = &bytes[..];
    loop {
        match decoder.feed(input) {
            FeedResult::Consumed => return out,
            FeedResult::Frame { frame, remaining } => {
                input = remaining;
                let weir_wire::Envelope::Batch(batch) =
                    weir_wire::Envelope::decode(frame.payload).expect("envelope")
                else {
                    panic!("not a batch");
                };
                assert_eq!(batch.batch_seq(), u64::from(frame.seq));
                out.push((frame.seq, batch.producer_id().to_string()));
            }
            FeedResult::Error { error, .. } => panic!("bad frame: {error}"),
        }
    }
}

fn ack_line(seq: u32) -> Vec<u8> {
    let mut out = [0u8; crate::link::ACK_LINE_LEN];
    let n = encode_frame(FrameKind::Ack, seq, &[], &mut out).expect("ack");
    out[..n].to_vec()
}

#[test]
fn sampler_and_link_over_the_flash_queue_across_a_reset() {
    use crate::{KeyMode, Link, Sampler, SamplerConfig};

    const B: usize = 160;
    type BigQueue<'a> = FlashQueue<Blocking<&'a mut RamFlash>, { slot_len(B, WORD) }>;
    let mut flash = RamFlash::new();
    let boot_range = (3 * PAGE) as u32..(4 * PAGE) as u32;
    // A map needs 2 pages; this flash has 4 and the queue takes 3, so the
    // boot ids here are given, as on a board without a counter.
    assert!(matches!(
        next_boot_id(&mut Blocking(&mut flash), boot_range),
        Err(FlashError::BadRange)
    ));
    let config = |boot_id| SamplerConfig {
        node_id: "node-7",
        boot_id,
        keys: KeyMode::Node,
        // Every tick a health record: a frame per tick without sensors.
        health_every: 1,
    };

    // Boot 1: three ticks sent, the gateway acks the first two.
    let mut queue: BigQueue<'_> = FlashQueue::open(Blocking(&mut flash), RANGE, 0).expect("open");
    let mut sampler = Sampler::<B>::new(&config(1)).expect("config");
    let mut link = Link::new(Line::default(), 1_000);
    for now in 0..3 {
        sampler.start(&mut queue, now, None).expect("start").finish().expect("finish");
    }
    assert_eq!(link.poll(&mut queue, 3), Ok(3));
    let boot1 = "node-7@00000001".to_string();
    assert_eq!(
        batches(link.transport_mut()),
        [(0, boot1.clone()), (1, boot1.clone()), (2, boot1.clone())]
    );
    assert_eq!(link.receive(&ack_line(1), &mut queue, 4), 2);
    let _flash = queue.release(); // reset before frame 2 is acknowledged

    // Boot 2: frame 2 is still there and sent again; new frames number on.
    let mut queue: BigQueue<'_> = FlashQueue::open(Blocking(&mut flash), RANGE, 0).expect("open");
    let mut sampler = Sampler::<B>::new(&config(2)).expect("config");
    let mut link = Link::new(Line::default(), 1_000);
    sampler.start(&mut queue, 0, None).expect("start").finish().expect("finish");
    assert_eq!(link.poll(&mut queue, 0), Ok(2));
    let boot2 = "node-7@00000002".to_string();
    assert_eq!(batches(link.transport_mut()), [(2, boot1), (3, boot2)]);
    // An ack for boot 1's frame 1 releases nothing; one for 3 releases both.
    assert_eq!(link.receive(&ack_line(1), &mut queue, 1), 0);
    assert_eq!(link.receive(&ack_line(3), &mut queue, 1), 2);
    assert!(queue.is_empty());
}
