//! The versioned envelope: what every MQTT payload and serial data frame
//! between Weir producers and the collector carries.
//!
//! Two bytes say which version of this format the sender wrote and what
//! follows, so a reader can refuse, with a clear message, bytes from a newer
//! producer instead of misreading them, and so one topic or link can carry
//! both lone records and batches.
//!
//! # Byte layout
//!
//! | byte | field | values |
//! |------|-------|--------|
//! | 0    | format version | [`FORMAT_VERSION`] (1); any other value is refused with [`DecodeError::UnsupportedVersion`] |
//! | 1    | kind | 1 = a single record, 2 = a batch; anything else is [`DecodeError::UnknownKind`] |
//! | 2..  | payload | kind 1: one record laid out as in [`crate::record`]; kind 2: one batch laid out as in [`crate::batch`] |
//!
//! The payload runs to the end of the envelope: nothing may follow it. A
//! future version may change everything after byte 0, so byte 0 is checked
//! first, before anything else is read. Offsets in a [`DecodeError`] count
//! from the envelope's first byte.

use crate::batch::{BatchEncoder, BatchView};
use crate::error::{DecodeError, EncodeError};
use crate::record::Record;

#[cfg(feature = "alloc")]
use crate::batch::OwnedBatch;
#[cfg(feature = "alloc")]
use alloc::{vec, vec::Vec};

/// The envelope format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;

/// Length of the envelope header (version and kind bytes).
pub const ENVELOPE_HEADER_LEN: usize = 2;

/// What an envelope carries: the value of its byte 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EnvelopeKind {
    /// A single record.
    Record = 1,
    /// A batch of records.
    Batch = 2,
}

impl EnvelopeKind {
    /// The kind a byte names, if any.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Record),
            2 => Some(Self::Batch),
            _ => None,
        }
    }

    /// The byte that names this kind.
    pub fn as_byte(self) -> u8 {
        self as u8
    }
}

/// A decoded envelope, borrowing from the bytes it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope<'a> {
    /// A single record.
    Record(Record<'a>),
    /// A batch, fully checked by [`BatchView::decode`]: iterating its records
    /// yields no error.
    Batch(BatchView<'a>),
}

impl<'a> Envelope<'a> {
    /// Reads and fully checks an envelope that fills `bytes` exactly.
    ///
    /// # Errors
    /// [`DecodeError::UnsupportedVersion`] if byte 0 is not
    /// [`FORMAT_VERSION`] (checked before anything else);
    /// [`DecodeError::Truncated`] if there is no kind byte;
    /// [`DecodeError::UnknownKind`]; then the errors of [`Record::decode`] or
    /// [`BatchView::decode`], with offsets counted from the envelope's start.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let (kind, payload) = match bytes {
            [] => return Err(DecodeError::Truncated { offset: 0 }),
            [version, ..] if *version != FORMAT_VERSION => {
                return Err(DecodeError::UnsupportedVersion {
                    found: *version,
                    supported: FORMAT_VERSION,
                });
            }
            [_] => return Err(DecodeError::Truncated { offset: 0 }),
            [_, kind, payload @ ..] => (*kind, payload),
        };
        let shift = |e: DecodeError| e.shifted(ENVELOPE_HEADER_LEN);
        match EnvelopeKind::from_byte(kind) {
            Some(EnvelopeKind::Record) => Record::decode(payload).map(Self::Record).map_err(shift),
            Some(EnvelopeKind::Batch) => BatchView::decode(payload).map(Self::Batch).map_err(shift),
            None => Err(DecodeError::UnknownKind { found: kind }),
        }
    }

    /// What the envelope carries.
    pub fn kind(&self) -> EnvelopeKind {
        match self {
            Self::Record(_) => EnvelopeKind::Record,
            Self::Batch(_) => EnvelopeKind::Batch,
        }
    }

    /// How many bytes [`Envelope::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        ENVELOPE_HEADER_LEN
            + match self {
                Self::Record(record) => record.encoded_len(),
                Self::Batch(batch) => batch.as_bytes().len(),
            }
    }

    /// Writes the envelope at the start of `out` and returns its length. A
    /// batch's bytes are copied as they are; to build a batch envelope in
    /// place without a copy, use [`batch_encoder`].
    ///
    /// # Errors
    /// [`EncodeError::Validation`] if a record breaks a limit;
    /// [`EncodeError::BufferFull`] if `out` is shorter than
    /// [`Envelope::encoded_len`].
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        match self {
            Self::Record(record) => encode_record(record, out),
            Self::Batch(batch) => {
                let bytes = batch.as_bytes();
                let end = ENVELOPE_HEADER_LEN + bytes.len();
                let out = out.get_mut(..end).ok_or(EncodeError::BufferFull)?;
                out[0] = FORMAT_VERSION;
                out[1] = EnvelopeKind::Batch.as_byte();
                out[ENVELOPE_HEADER_LEN..].copy_from_slice(bytes);
                Ok(end)
            }
        }
    }

    /// [`Envelope::encode`] into a new vector.
    ///
    /// # Errors
    /// [`EncodeError::Validation`] if a record breaks a limit.
    #[cfg(feature = "alloc")]
    pub fn encode_to_vec(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = vec![0u8; self.encoded_len()];
        let len = self.encode(&mut out)?;
        out.truncate(len);
        Ok(out)
    }
}

/// Writes a single-record envelope at the start of `out` and returns its
/// length.
///
/// # Errors
/// [`EncodeError::Validation`] if the record breaks a limit;
/// [`EncodeError::BufferFull`] if `out` is too short.
pub fn encode_record(record: &Record<'_>, out: &mut [u8]) -> Result<usize, EncodeError> {
    let (header, payload) =
        out.split_at_mut_checked(ENVELOPE_HEADER_LEN).ok_or(EncodeError::BufferFull)?;
    let len = record.encode(payload)?;
    header.copy_from_slice(&[FORMAT_VERSION, EnvelopeKind::Record.as_byte()]);
    Ok(ENVELOPE_HEADER_LEN + len)
}

/// Starts a batch envelope in `out`: writes the envelope header and returns a
/// [`BatchEncoder`] that writes the batch right after it, whose
/// [`BatchEncoder::finish`] returns the whole envelope. Firmware builds its
/// envelope in place this way, with no second buffer.
///
/// # Errors
/// Those of [`BatchEncoder::new`].
pub fn batch_encoder<'buf>(
    out: &'buf mut [u8],
    producer_id: &str,
    batch_seq: u64,
) -> Result<BatchEncoder<'buf>, EncodeError> {
    let header = out.get_mut(..ENVELOPE_HEADER_LEN).ok_or(EncodeError::BufferFull)?;
    header.copy_from_slice(&[FORMAT_VERSION, EnvelopeKind::Batch.as_byte()]);
    BatchEncoder::after_prefix(out, ENVELOPE_HEADER_LEN, producer_id, batch_seq)
}

/// A single-record envelope in a new vector.
///
/// # Errors
/// [`EncodeError::Validation`] if the record breaks a limit.
#[cfg(feature = "alloc")]
pub fn encode_record_to_vec(record: &Record<'_>) -> Result<Vec<u8>, EncodeError> {
    Envelope::Record(*record).encode_to_vec()
}

/// A batch envelope in a new vector.
///
/// # Errors
/// Those of [`OwnedBatch::encode_to_vec`].
#[cfg(feature = "alloc")]
pub fn encode_batch_to_vec(batch: &OwnedBatch) -> Result<Vec<u8>, EncodeError> {
    batch.encode_after_prefix(&[FORMAT_VERSION, EnvelopeKind::Batch.as_byte()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::ValidationError;

    #[test]
    fn record_envelope_round_trip() {
        let record = Record::new("k", b"v");
        let mut buf = [0u8; 32];
        let n = encode_record(&record, &mut buf).expect("encode");
        assert_eq!(&buf[..n], [1, 1, 1, b'k', 1, b'v', 0, 0]);
        let env = Envelope::decode(&buf[..n]).expect("decode");
        assert_eq!(env, Envelope::Record(record));
        assert_eq!(env.kind(), EnvelopeKind::Record);
        assert_eq!(env.encoded_len(), n);
    }

    #[test]
    fn batch_envelope_built_in_place() {
        let mut buf = [0u8; 64];
        let mut enc = batch_encoder(&mut buf, "dev", 5).expect("start");
        enc.push(&Record::new("a", b"1")).expect("push");
        enc.push(&Record::new("b", b"2")).expect("push");
        let bytes = enc.finish().expect("finish");
        assert_eq!(&bytes[..2], [FORMAT_VERSION, 2]);
        let Envelope::Batch(view) = Envelope::decode(bytes).expect("decode") else {
            panic!("expected a batch");
        };
        assert_eq!((view.producer_id(), view.batch_seq(), view.len()), ("dev", 5, 2));
        // Re-encoding the view gives the same bytes.
        let mut again = [0u8; 64];
        let n = Envelope::Batch(view).encode(&mut again).expect("encode");
        assert_eq!(&again[..n], bytes);
        assert_eq!(Envelope::Batch(view).encode(&mut again[..n - 1]), Err(EncodeError::BufferFull));
    }

    #[test]
    fn unsupported_version_is_refused_with_a_clear_message() {
        let err = Envelope::decode(&[2, 1, 1, b'k', 0, 0, 0]).expect_err("version 2");
        assert_eq!(err, DecodeError::UnsupportedVersion { found: 2, supported: 1 });
        let mut msg = [0u8; 200];
        let msg = format_into(&mut msg, &err);
        assert_eq!(
            msg,
            "unsupported wire format version 2: this build reads version 1 only \
             (the producer is newer than this reader: upgrade the reader)"
        );
        // The version is checked before the length.
        assert_eq!(
            Envelope::decode(&[0]),
            Err(DecodeError::UnsupportedVersion { found: 0, supported: 1 })
        );
    }

    #[test]
    fn header_errors() {
        assert_eq!(Envelope::decode(&[]), Err(DecodeError::Truncated { offset: 0 }));
        assert_eq!(Envelope::decode(&[1]), Err(DecodeError::Truncated { offset: 0 }));
        assert_eq!(Envelope::decode(&[1, 3, 0]), Err(DecodeError::UnknownKind { found: 3 }));
        assert_eq!(Envelope::decode(&[1, 0]), Err(DecodeError::UnknownKind { found: 0 }));
        // Payload errors count offsets from the envelope's start.
        assert_eq!(
            Envelope::decode(&[1, 1, 1, b'k', 0, 0, 0, 7]),
            Err(DecodeError::TrailingBytes { offset: 7, count: 1 })
        );
        assert_eq!(Envelope::decode(&[1, 2]), Err(DecodeError::Truncated { offset: 2 }));
        assert_eq!(
            Envelope::decode(&[1, 1, 0, 0, 0, 0]),
            Err(DecodeError::InvalidRecord { index: 0, error: ValidationError::EmptyPartitionKey })
        );
    }

    #[test]
    fn encode_errors() {
        let mut buf = [0u8; 8];
        assert_eq!(
            encode_record(&Record::new("k", b"v"), &mut buf[..7]),
            Err(EncodeError::BufferFull)
        );
        assert_eq!(
            encode_record(&Record::new("k", b"v"), &mut buf[..1]),
            Err(EncodeError::BufferFull)
        );
        assert_eq!(
            encode_record(&Record::new("", b"v"), &mut buf),
            Err(EncodeError::Validation(ValidationError::EmptyPartitionKey))
        );
        assert!(batch_encoder(&mut buf[..1], "dev", 0).is_err());
    }

    #[cfg(feature = "alloc")]
    #[test]
    fn vector_encoders_match_the_slice_ones() {
        use crate::record::OwnedRecord;
        use alloc::vec;

        let record = Record::new("k", b"v");
        let mut buf = [0u8; 64];
        let n = encode_record(&record, &mut buf).expect("encode");
        assert_eq!(encode_record_to_vec(&record).expect("vec"), &buf[..n]);

        let batch = OwnedBatch {
            producer_id: "dev".into(),
            batch_seq: 1,
            records: vec![OwnedRecord::new("k", b"v".to_vec())],
        };
        let mut enc = batch_encoder(&mut buf, "dev", 1).expect("start");
        enc.push(&record).expect("push");
        let bytes = enc.finish().expect("finish");
        let from_vec = encode_batch_to_vec(&batch).expect("vec");
        assert_eq!(from_vec, bytes);
        let Envelope::Batch(view) = Envelope::decode(&from_vec).expect("decode") else {
            panic!("expected a batch");
        };
        assert_eq!(Envelope::Batch(view).encode_to_vec().expect("re-encode"), from_vec);
    }

    /// Formats `value` into `buf` without an allocator.
    fn format_into<'b>(buf: &'b mut [u8], value: &dyn core::fmt::Display) -> &'b str {
        struct Cursor<'c> {
            buf: &'c mut [u8],
            len: usize,
        }
        impl core::fmt::Write for Cursor<'_> {
            fn write_str(&mut self, s: &str) -> core::fmt::Result {
                let end = self.len + s.len();
                self.buf
                    .get_mut(self.len..end)
                    .ok_or(core::fmt::Error)?
                    .copy_from_slice(s.as_bytes());
                self.len = end;
                Ok(())
            }
        }
        let mut cursor = Cursor { buf, len: 0 };
        core::fmt::write(&mut cursor, format_args!("{value}")).expect("fits");
        let Cursor { buf, len } = cursor;
        core::str::from_utf8(&buf[..len]).expect("utf8")
    }
}
