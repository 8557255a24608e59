//! The serial frame: how a microcontroller and its gateway agent exchange
//! envelopes and acknowledgements over a UART or USB-serial line.
//!
//! A serial line delivers a stream of bytes with no boundaries and,
//! sometimes, noise, dropped bytes or a receiver that starts listening in the
//! middle of a frame. Each frame therefore carries a CRC32C, is COBS-encoded
//! so that the byte `0x00` never occurs inside it, and ends with one `0x00`:
//! a receiver finds frame boundaries by looking for `0x00` alone, and after
//! any damage it is back in step at the next one.
//!
//! # Byte layout
//!
//! The raw frame, before COBS:
//!
//! | bytes | field | encoding |
//! |-------|-------|----------|
//! | 0     | frame type | `1` = data, `2` = ack; anything else is refused |
//! | 1–4   | frame sequence number | `u32` little-endian |
//! | 5..5+P | payload | data: one envelope ([`crate::envelope`]), at most [`MAX_FRAME_PAYLOAD`] bytes; ack: empty (`P = 0`) |
//! | 5+P..9+P | CRC32C | `u32` little-endian, CRC-32C (Castagnoli, the iSCSI polynomial) of bytes `0..5+P` |
//!
//! On the line: the raw frame COBS-encoded (it grows by one byte, plus one
//! per 254 bytes), then a single `0x00` delimiter. [`max_encoded_frame_len`]
//! gives the worst-case size, delimiter included.
//!
//! The sender numbers its data frames; the receiver answers a data frame it
//! has taken with an ack frame carrying the same sequence number, and a
//! sender that gets no ack sends the same frame, same number, again.
//!
//! # Reading a stream
//!
//! [`FrameDecoder`] collects the bytes up to each `0x00` in a fixed buffer of
//! `N` bytes (no allocator) and decodes them in place:
//!
//! - a frame that fails to decode (bad COBS, too short, CRC mismatch, unknown
//!   type) is reported as one error at its delimiter; the byte after the
//!   delimiter starts the next frame;
//! - more than `N` bytes without a delimiter is reported once, as
//!   [`FrameError::TooLong`], when byte `N + 1` arrives; everything up to the
//!   next `0x00` is then dropped silently;
//! - nothing between two delimiters (`0x00 0x00`) is not a frame and is
//!   skipped without a report, so a sender may send a lone `0x00` to end
//!   whatever noise the receiver holds;
//! - line noise that arrives between two frames without a `0x00` joins the
//!   next frame, which then fails its check and is reported as one error; the
//!   frame after it decodes. A sender that wants to lose no frame to noise
//!   sends a `0x00` before the first frame of each burst.

use crate::error::FrameError;

pub use crate::validate::MAX_FRAME_PAYLOAD;

/// Bytes before the payload: type and sequence number.
pub const FRAME_HEADER_LEN: usize = 5;

/// Bytes after the payload: the CRC32C.
pub const FRAME_CRC_LEN: usize = 4;

/// Smallest raw (decoded) frame: an ack.
const MIN_RAW_FRAME_LEN: usize = FRAME_HEADER_LEN + FRAME_CRC_LEN;

/// Worst-case bytes on the line for a frame with a `payload_len`-byte
/// payload, COBS overhead and the `0x00` delimiter included.
pub const fn max_encoded_frame_len(payload_len: usize) -> usize {
    cobs::max_encoding_length(FRAME_HEADER_LEN + payload_len + FRAME_CRC_LEN) + 1
}

/// Worst-case bytes on the line for any valid frame; a [`FrameDecoder`] of
/// this capacity ([`MaxFrameDecoder`]) takes every frame.
pub const MAX_ENCODED_FRAME_LEN: usize = max_encoded_frame_len(MAX_FRAME_PAYLOAD);

/// A decoder that accepts every valid frame.
pub type MaxFrameDecoder = FrameDecoder<MAX_ENCODED_FRAME_LEN>;

static CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// What a frame carries: the value of its first raw byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// An envelope.
    Data = 1,
    /// An acknowledgement of the data frame with the same sequence number.
    Ack = 2,
}

impl FrameKind {
    /// The kind a byte names, if any.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Data),
            2 => Some(Self::Ack),
            _ => None,
        }
    }

    /// The byte that names this kind.
    pub fn as_byte(self) -> u8 {
        self as u8
    }
}

/// A decoded frame, borrowing its payload from the decoder's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Data or ack.
    pub kind: FrameKind,
    /// The frame sequence number.
    pub seq: u32,
    /// The envelope of a data frame; empty for an ack.
    pub payload: &'a [u8],
}

/// Writes one frame, COBS-encoded and followed by its `0x00` delimiter, at
/// the start of `out`; returns how many bytes were written. `out` of
/// [`max_encoded_frame_len`]`(payload.len())` bytes is always enough.
///
/// # Errors
/// [`FrameError::PayloadTooLarge`] over [`MAX_FRAME_PAYLOAD`];
/// [`FrameError::AckWithPayload`] for an ack with a payload;
/// [`FrameError::BufferTooSmall`] if `out` cannot hold the frame.
pub fn encode_frame(
    kind: FrameKind,
    seq: u32,
    payload: &[u8],
    out: &mut [u8],
) -> Result<usize, FrameError> {
    if payload.len() > MAX_FRAME_PAYLOAD {
        return Err(FrameError::PayloadTooLarge { len: payload.len() });
    }
    if kind == FrameKind::Ack && !payload.is_empty() {
        return Err(FrameError::AckWithPayload { len: payload.len() });
    }
    let mut header = [0u8; FRAME_HEADER_LEN];
    header[0] = kind.as_byte();
    header[1..].copy_from_slice(&seq.to_le_bytes());
    let mut digest = CRC32C.digest();
    digest.update(&header);
    digest.update(payload);
    let crc = digest.finalize().to_le_bytes();

    // The streaming encoder saves copying header, payload and CRC into one
    // raw buffer first.
    let mut encoder = cobs::CobsEncoder::new(out);
    for part in [&header[..], payload, &crc[..]] {
        encoder.push(part).map_err(|cobs::DestBufTooSmallError| FrameError::BufferTooSmall)?;
    }
    let len = encoder.finalize();
    *out.get_mut(len).ok_or(FrameError::BufferTooSmall)? = 0;
    Ok(len + 1)
}

/// Decodes one frame in place from its COBS bytes, without the `0x00`
/// delimiter: `encoded` is overwritten and the returned payload points into
/// it.
///
/// # Errors
/// [`FrameError::BadCobs`] (a `0x00` inside `encoded` counts as bad COBS),
/// [`FrameError::TooShort`], [`FrameError::CrcMismatch`],
/// [`FrameError::UnknownType`], [`FrameError::AckWithPayload`] or
/// [`FrameError::PayloadTooLarge`].
pub fn decode_frame(encoded: &mut [u8]) -> Result<Frame<'_>, FrameError> {
    if encoded.is_empty() {
        return Err(FrameError::TooShort { len: 0 });
    }
    let report = cobs::decode_in_place_report(encoded).map_err(cobs_error)?;
    // The COBS decoder stops at the first 0x00; one inside a frame is corrupt.
    if report.parsed_size() != encoded.len() {
        return Err(FrameError::BadCobs { decoded: report.frame_size() });
    }
    let encoded: &[u8] = encoded;
    let raw = encoded.get(..report.frame_size()).ok_or(FrameError::BadCobs { decoded: 0 })?;
    if raw.len() < MIN_RAW_FRAME_LEN {
        return Err(FrameError::TooShort { len: raw.len() });
    }
    let Some((body, crc)) = raw.split_last_chunk::<FRAME_CRC_LEN>() else {
        return Err(FrameError::TooShort { len: raw.len() });
    };
    let expected = u32::from_le_bytes(*crc);
    let computed = CRC32C.checksum(body);
    if expected != computed {
        return Err(FrameError::CrcMismatch { expected, computed });
    }
    let Some((&[kind, s0, s1, s2, s3], payload)) = body.split_first_chunk::<FRAME_HEADER_LEN>()
    else {
        return Err(FrameError::TooShort { len: raw.len() });
    };
    let kind = FrameKind::from_byte(kind).ok_or(FrameError::UnknownType { found: kind })?;
    if kind == FrameKind::Ack && !payload.is_empty() {
        return Err(FrameError::AckWithPayload { len: payload.len() });
    }
    if payload.len() > MAX_FRAME_PAYLOAD {
        return Err(FrameError::PayloadTooLarge { len: payload.len() });
    }
    Ok(Frame { kind, seq: u32::from_le_bytes([s0, s1, s2, s3]), payload })
}

/// Translates the COBS decoder's error, keeping what it reports.
fn cobs_error(error: cobs::DecodeError) -> FrameError {
    match error {
        cobs::DecodeError::InvalidFrame { decoded_bytes } => {
            FrameError::BadCobs { decoded: decoded_bytes }
        }
        cobs::DecodeError::EmptyFrame => FrameError::TooShort { len: 0 },
        // Decoding in place never needs more room than the input; should the
        // library report it anyway, the input was not a frame.
        cobs::DecodeError::TargetBufTooSmall => FrameError::BadCobs { decoded: 0 },
    }
}

/// What [`FrameDecoder::feed`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum FeedResult<'d, 'i> {
    /// Every input byte was taken and no frame ended: feed more.
    Consumed,
    /// A frame ended and decoded. Feed `remaining` next.
    Frame {
        /// The frame, borrowed from the decoder until the next feed.
        frame: Frame<'d>,
        /// The input after the frame's delimiter.
        remaining: &'i [u8],
    },
    /// A frame ended and was corrupt, or the frame in progress outgrew the
    /// decoder. Feed `remaining` next.
    Error {
        /// What was wrong.
        error: FrameError,
        /// The input not yet taken.
        remaining: &'i [u8],
    },
}

/// Outcome of taking one byte.
enum Step {
    Pending,
    Complete(usize),
    Error(FrameError),
}

/// Splits a byte stream into frames, holding at most `N` bytes of the frame
/// in progress; no allocator. See the module header for how it treats
/// corrupt, overlong and empty frames.
///
/// `N` of [`max_encoded_frame_len`]`(p)` takes every frame with a payload of up
/// to `p` bytes ([`MaxFrameDecoder`] for any frame).
#[derive(Debug, Clone)]
pub struct FrameDecoder<const N: usize> {
    buf: [u8; N],
    /// Bytes of the frame in progress held in `buf`.
    len: usize,
    /// The frame in progress outgrew `buf`: drop bytes until a delimiter.
    skipping: bool,
}

impl<const N: usize> Default for FrameDecoder<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FrameDecoder<N> {
    /// An empty decoder.
    pub const fn new() -> Self {
        Self { buf: [0; N], len: 0, skipping: false }
    }

    /// Takes one byte from the line. Returns `None` while no frame has ended,
    /// else the decoded frame or why it was refused.
    pub fn push(&mut self, byte: u8) -> Option<Result<Frame<'_>, FrameError>> {
        match self.step(byte) {
            Step::Pending => None,
            Step::Error(error) => Some(Err(error)),
            Step::Complete(len) => Some(decode_frame(&mut self.buf[..len])),
        }
    }

    /// Takes bytes from `input` up to the end of the first frame, or the first
    /// error, and says what it found and which input bytes are left.
    pub fn feed<'i>(&mut self, input: &'i [u8]) -> FeedResult<'_, 'i> {
        for (i, &byte) in input.iter().enumerate() {
            let remaining = &input[i + 1..];
            match self.step(byte) {
                Step::Pending => {}
                Step::Error(error) => return FeedResult::Error { error, remaining },
                Step::Complete(len) => {
                    return match decode_frame(&mut self.buf[..len]) {
                        Ok(frame) => FeedResult::Frame { frame, remaining },
                        Err(error) => FeedResult::Error { error, remaining },
                    };
                }
            }
        }
        FeedResult::Consumed
    }

    /// Drops the frame in progress, as if a delimiter had just arrived.
    pub fn reset(&mut self) {
        self.len = 0;
        self.skipping = false;
    }

    /// Bytes of the frame in progress held now.
    pub fn buffered(&self) -> usize {
        self.len
    }

    /// The most bytes a frame may have on the line before its delimiter.
    pub const fn capacity(&self) -> usize {
        N
    }

    fn step(&mut self, byte: u8) -> Step {
        if byte == 0 {
            let len = self.len;
            let skipped = self.skipping;
            self.reset();
            return if skipped || len == 0 { Step::Pending } else { Step::Complete(len) };
        }
        if self.skipping {
            return Step::Pending;
        }
        match self.buf.get_mut(self.len) {
            Some(slot) => {
                *slot = byte;
                self.len += 1;
                Step::Pending
            }
            None => {
                self.len = 0;
                self.skipping = true;
                Step::Error(FrameError::TooLong { capacity: N })
            }
        }
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use alloc::vec;
    use alloc::vec::Vec;

    use super::*;

    type Owned = Result<(FrameKind, u32, Vec<u8>), FrameError>;

    fn encode(kind: FrameKind, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; max_encoded_frame_len(payload.len())];
        let n = encode_frame(kind, seq, payload, &mut out).expect("encode");
        out.truncate(n);
        out
    }

    /// Feeds `input` and collects everything the decoder reports.
    fn feed_all<const N: usize>(dec: &mut FrameDecoder<N>, mut input: &[u8]) -> Vec<Owned> {
        let mut out = Vec::new();
        loop {
            match dec.feed(input) {
                FeedResult::Consumed => return out,
                FeedResult::Frame { frame, remaining } => {
                    out.push(Ok((frame.kind, frame.seq, frame.payload.to_vec())));
                    input = remaining;
                }
                FeedResult::Error { error, remaining } => {
                    out.push(Err(error));
                    input = remaining;
                }
            }
        }
    }

    /// COBS-encodes a hand-made raw frame and adds the delimiter.
    fn cobs_frame(raw: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; cobs::max_encoding_length(raw.len()) + 1];
        let n = cobs::encode(raw, &mut out);
        out.truncate(n);
        out.push(0);
        out
    }

    fn raw_frame(kind: u8, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut raw = vec![kind];
        raw.extend_from_slice(&seq.to_le_bytes());
        raw.extend_from_slice(payload);
        let crc = CRC32C.checksum(&raw);
        raw.extend_from_slice(&crc.to_le_bytes());
        raw
    }

    #[test]
    fn layout_is_documented_bytes() {
        // CRC-32C check value: "123456789" -> 0xE3069283.
        assert_eq!(CRC32C.checksum(b"123456789"), 0xE306_9283);
        let line = encode(FrameKind::Data, 0x0403_0201, b"\x01\x01");
        assert_eq!(line, cobs_frame(&raw_frame(1, 0x0403_0201, b"\x01\x01")));
        let raw = raw_frame(1, 0x0403_0201, b"\x01\x01");
        assert_eq!(&raw[..7], [1, 1, 2, 3, 4, 1, 1]);
        assert_eq!(*line.last().expect("delimiter"), 0);
        assert!(!line[..line.len() - 1].contains(&0));
    }

    #[test]
    fn round_trip_every_size_around_cobs_blocks() {
        let mut dec = MaxFrameDecoder::new();
        for len in (0..=600).chain(MAX_FRAME_PAYLOAD - 300..=MAX_FRAME_PAYLOAD) {
            // Mix zero and non-zero bytes so COBS blocks vary.
            let payload: Vec<u8> =
                (0..len).map(|i| if i % 300 == 7 { 0 } else { 1 + (i % 255) as u8 }).collect();
            let line = encode(FrameKind::Data, len as u32, &payload);
            assert!(line.len() <= max_encoded_frame_len(len), "len {len}");
            assert!(!line[..line.len() - 1].contains(&0));
            let got = feed_all(&mut dec, &line);
            assert_eq!(got, vec![Ok((FrameKind::Data, len as u32, payload))], "len {len}");
        }
        let ack = encode(FrameKind::Ack, u32::MAX, &[]);
        assert_eq!(feed_all(&mut dec, &ack), vec![Ok((FrameKind::Ack, u32::MAX, vec![]))]);
    }

    #[test]
    fn push_byte_by_byte() {
        let line = encode(FrameKind::Data, 9, b"hello");
        let mut dec = FrameDecoder::<64>::new();
        let (last, head) = line.split_last().expect("bytes");
        for &b in head {
            assert!(dec.push(b).is_none());
        }
        assert_eq!(dec.buffered(), head.len());
        let frame = dec.push(*last).expect("frame").expect("valid");
        assert_eq!(frame, Frame { kind: FrameKind::Data, seq: 9, payload: b"hello" });
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn encode_errors() {
        let big = vec![1u8; MAX_FRAME_PAYLOAD + 1];
        let mut out = vec![0u8; 2 * MAX_ENCODED_FRAME_LEN];
        assert_eq!(
            encode_frame(FrameKind::Data, 0, &big, &mut out),
            Err(FrameError::PayloadTooLarge { len: MAX_FRAME_PAYLOAD + 1 })
        );
        assert_eq!(
            encode_frame(FrameKind::Ack, 0, b"x", &mut out),
            Err(FrameError::AckWithPayload { len: 1 })
        );
        let payload = [5u8; 300];
        let need = encode(FrameKind::Data, 1, &payload).len();
        for short in 0..need {
            assert_eq!(
                encode_frame(FrameKind::Data, 1, &payload, &mut out[..short]),
                Err(FrameError::BufferTooSmall),
                "{short} bytes"
            );
        }
        assert_eq!(encode_frame(FrameKind::Data, 1, &payload, &mut out[..need]), Ok(need));
    }

    #[test]
    fn each_corruption_is_reported() {
        let mut dec = FrameDecoder::<64>::new();
        let mut wrong_crc = raw_frame(1, 1, b"abc");
        let last = wrong_crc.len() - 1;
        wrong_crc[last] ^= 0x55;
        let got = feed_all(&mut dec, &cobs_frame(&wrong_crc));
        assert!(matches!(got[..], [Err(FrameError::CrcMismatch { .. })]), "{got:?}");

        let got = feed_all(&mut dec, &cobs_frame(&raw_frame(3, 1, b"")));
        assert_eq!(got, vec![Err(FrameError::UnknownType { found: 3 })]);

        let got = feed_all(&mut dec, &cobs_frame(&[1, 2, 3, 4, 5]));
        assert_eq!(got, vec![Err(FrameError::TooShort { len: 5 })]);

        let got = feed_all(&mut dec, &[0x05, 1, 0]);
        assert!(matches!(got[..], [Err(FrameError::BadCobs { .. })]), "{got:?}");

        let got = feed_all(&mut dec, &cobs_frame(&raw_frame(2, 1, b"x")));
        assert_eq!(got, vec![Err(FrameError::AckWithPayload { len: 1 })]);

        let mut zero_inside = [0x03, 1, 0, 1];
        assert!(matches!(decode_frame(&mut zero_inside), Err(FrameError::BadCobs { .. })));
        assert_eq!(decode_frame(&mut []), Err(FrameError::TooShort { len: 0 }));
    }

    #[test]
    fn resynchronises_after_a_corrupt_frame() {
        let a = encode(FrameKind::Data, 1, b"first");
        let mut b = encode(FrameKind::Data, 2, b"second");
        let c = encode(FrameKind::Data, 3, b"third");
        b[3] ^= 0x20; // one corrupted byte
        let stream = [a, b, c].concat();
        let mut dec = FrameDecoder::<64>::new();
        let got = feed_all(&mut dec, &stream);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], Ok((FrameKind::Data, 1, b"first".to_vec())));
        assert!(got[1].is_err());
        assert_eq!(got[2], Ok((FrameKind::Data, 3, b"third".to_vec())));
    }

    #[test]
    fn resynchronises_after_garbage_between_frames() {
        let a = encode(FrameKind::Data, 1, b"one");
        let b = encode(FrameKind::Data, 2, b"two");
        let c = encode(FrameKind::Data, 3, b"three");
        let mut dec = FrameDecoder::<64>::new();

        // Garbage ending in a 0x00: each piece is reported on its own and
        // every frame survives.
        let stream = [&a[..], &[0x17, 0x42, 0x00, 0x99, 0x00][..], &b[..]].concat();
        let got = feed_all(&mut dec, &stream);
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0], Ok((FrameKind::Data, 1, b"one".to_vec())));
        assert!(got[1].is_err() && got[2].is_err());
        assert_eq!(got[3], Ok((FrameKind::Data, 2, b"two".to_vec())));

        // Garbage with no 0x00 joins the next frame: that frame is lost, the
        // one after decodes.
        let stream = [&a[..], &[0x17, 0x42, 0x99][..], &b[..], &c[..]].concat();
        let got = feed_all(&mut dec, &stream);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0], Ok((FrameKind::Data, 1, b"one".to_vec())));
        assert!(got[1].is_err());
        assert_eq!(got[2], Ok((FrameKind::Data, 3, b"three".to_vec())));

        // Starting mid-frame: the tail of a frame is one error, then in step.
        let stream = [&a[4..], &b[..]].concat();
        let got = feed_all(&mut FrameDecoder::<64>::new(), &stream);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].is_err());
        assert_eq!(got[1], Ok((FrameKind::Data, 2, b"two".to_vec())));

        // Empty frames are no frames.
        assert_eq!(feed_all(&mut dec, &[0, 0, 0]), vec![]);
    }

    #[test]
    fn overlong_frame_is_reported_once_and_skipped() {
        let mut dec = FrameDecoder::<16>::new();
        let ack = encode(FrameKind::Ack, 7, &[]);
        assert!(ack.len() <= 16);
        let stream = [&[0x33u8; 50][..], &[0][..], &ack[..]].concat();
        let got = feed_all(&mut dec, &stream);
        assert_eq!(
            got,
            vec![Err(FrameError::TooLong { capacity: 16 }), Ok((FrameKind::Ack, 7, vec![]))]
        );
        // A frame of exactly the capacity (before its delimiter) fits.
        let frame = encode(FrameKind::Data, 1, b"1234567");
        let got = feed_all(&mut FrameDecoder::<0>::new(), &frame);
        assert_eq!(got, vec![Err(FrameError::TooLong { capacity: 0 })]);
        let got = feed_all(&mut FrameDecoder::<16>::new(), &frame);
        assert_eq!(got, vec![Err(FrameError::TooLong { capacity: 16 })]);
        let mut dec = FrameDecoder::<17>::new();
        assert_eq!(frame.len(), 18);
        assert_eq!(feed_all(&mut dec, &frame), vec![Ok((FrameKind::Data, 1, b"1234567".to_vec()))]);
    }

    #[test]
    fn remaining_input_is_returned() {
        let a = encode(FrameKind::Data, 1, b"a");
        let b = encode(FrameKind::Data, 2, b"b");
        let stream = [a.clone(), b.clone()].concat();
        let mut dec = FrameDecoder::<64>::new();
        match dec.feed(&stream) {
            FeedResult::Frame { frame, remaining } => {
                assert_eq!(frame.seq, 1);
                assert_eq!(remaining, &b[..]);
            }
            other => panic!("expected a frame, got {other:?}"),
        }
        // A partial frame is held across feeds.
        assert_eq!(dec.feed(&b[..3]), FeedResult::Consumed);
        assert!(matches!(dec.feed(&b[3..]), FeedResult::Frame { frame: Frame { seq: 2, .. }, .. }));
    }
}
