//! A batch: up to 500 records from one producer, sent and acknowledged as one.
//!
//! Agents and firmware ship records in batches: one MQTT publish or one serial
//! frame, one acknowledgement. The producer id (a device id) and the
//! producer's batch sequence number identify a batch, so the collector can
//! recognise a batch that a producer retried after a lost acknowledgement and
//! keep it only once.
//!
//! [`BatchEncoder`] writes a batch into a caller's buffer record by record
//! with no allocator (firmware); [`BatchView`] reads one in place;
//! [`OwnedBatch`] (feature `alloc`) is the host-side owned form.
//!
//! # Byte layout
//!
//! | bytes | field | encoding |
//! |-------|-------|----------|
//! | 1     | producer id length `P` | varint; 1 to 64, so always one byte `0x01`–`0x40` |
//! | `P`   | producer id | UTF-8 |
//! | 1–10  | batch sequence number | varint of the `u64` |
//! | 2     | record count `N` | `u16` little-endian, 1 to 500 |
//! | ...   | `N` records | back to back, each laid out as in [`crate::record`] |
//!
//! Nothing follows the last record. The whole batch is at most
//! [`MAX_BATCH_BYTES`] (5 MiB). Varints are postcard's (see
//! [`crate::record`]); the first three fields are the postcard encoding of
//! `(&str, u64)`.
//!
//! The count is a fixed-width field rather than a varint because the encoder
//! writes the header before it knows how many records will follow: it
//! reserves the two bytes and fills them in [`BatchEncoder::finish`], so no
//! byte ever moves. The count lets a reader size its work before it parses
//! the records, and it lets [`BatchView::decode`] tell a batch cut at a record
//! boundary from a complete one.

use crate::error::{DecodeError, EncodeError, decode_error, encode_error};
use crate::record::{Record, take_record};
use crate::validate::{MAX_BATCH_BYTES, MAX_BATCH_RECORDS, ValidationError};

#[cfg(feature = "alloc")]
use crate::record::{OwnedRecord, varint_len};
#[cfg(feature = "alloc")]
use alloc::{string::String, vec, vec::Vec};

pub use crate::validate::MAX_PRODUCER_ID_BYTES;

/// Width of the record count field.
const COUNT_BYTES: usize = 2;

// The record count field is a u16.
const _: () = assert!(MAX_BATCH_RECORDS <= u16::MAX as usize);

/// `Err(length)` unless the producer id is 1 to 64 bytes.
fn check_producer_id(producer_id: &str) -> Result<(), usize> {
    if producer_id.is_empty() || producer_id.len() > MAX_PRODUCER_ID_BYTES {
        return Err(producer_id.len());
    }
    Ok(())
}

/// Writes a batch into a caller's buffer, one record at a time, with no
/// allocator.
///
/// Every method that fails leaves the encoder as it was, so firmware that
/// gets [`EncodeError::BufferFull`] (or any error for which
/// [`EncodeError::is_batch_full`] holds) can [`finish`](BatchEncoder::finish)
/// and send what it has, then push the record again into a new batch.
#[derive(Debug)]
pub struct BatchEncoder<'buf> {
    buf: &'buf mut [u8],
    /// Where the batch starts in `buf`; the bytes before it are a prefix
    /// (an envelope header) that `finish` returns along with the batch.
    batch_start: usize,
    /// Where the two count bytes are.
    count_at: usize,
    /// End of what has been written.
    pos: usize,
    records: usize,
}

impl<'buf> BatchEncoder<'buf> {
    /// Starts a batch at the beginning of `buf`: writes the header with room
    /// for the record count.
    ///
    /// # Errors
    /// [`EncodeError::InvalidProducerId`] unless `producer_id` is 1 to 64
    /// bytes; [`EncodeError::BufferFull`] if `buf` cannot hold the header.
    pub fn new(
        buf: &'buf mut [u8],
        producer_id: &str,
        batch_seq: u64,
    ) -> Result<Self, EncodeError> {
        Self::after_prefix(buf, 0, producer_id, batch_seq)
    }

    /// Like [`BatchEncoder::new`], but the batch starts `prefix_len` bytes into
    /// `buf`, after bytes the caller has written (or will write) there;
    /// [`BatchEncoder::finish`] returns the prefix and the batch together.
    pub(crate) fn after_prefix(
        buf: &'buf mut [u8],
        prefix_len: usize,
        producer_id: &str,
        batch_seq: u64,
    ) -> Result<Self, EncodeError> {
        check_producer_id(producer_id).map_err(|bytes| EncodeError::InvalidProducerId { bytes })?;
        let tail = buf.get_mut(prefix_len..).ok_or(EncodeError::BufferFull)?;
        let header_len =
            postcard::to_slice(&(producer_id, batch_seq), tail).map_err(encode_error)?.len();
        let count_at = prefix_len + header_len;
        let pos = count_at + COUNT_BYTES;
        let count = buf.get_mut(count_at..pos).ok_or(EncodeError::BufferFull)?;
        count.copy_from_slice(&0u16.to_le_bytes());
        Ok(Self { buf, batch_start: prefix_len, count_at, pos, records: 0 })
    }

    /// Appends a record after checking it.
    ///
    /// # Errors
    /// - [`EncodeError::Validation`] with the record's own
    ///   [`ValidationError`] if it breaks a record limit;
    /// - [`EncodeError::Validation`] with
    ///   [`ValidationError::TooManyRecords`] if the batch already holds
    ///   [`MAX_BATCH_RECORDS`] records, or [`ValidationError::BatchTooLarge`]
    ///   if the record would take the batch over [`MAX_BATCH_BYTES`];
    /// - [`EncodeError::BufferFull`] if the buffer has no room for it.
    ///
    /// In every case the encoder is unchanged and still usable.
    pub fn push(&mut self, record: &Record<'_>) -> Result<(), EncodeError> {
        record.validate().map_err(EncodeError::Validation)?;
        if self.records == MAX_BATCH_RECORDS {
            return Err(EncodeError::Validation(ValidationError::TooManyRecords {
                records: MAX_BATCH_RECORDS + 1,
            }));
        }
        let len = record.encoded_len();
        let batch_bytes = self.pos - self.batch_start + len;
        if batch_bytes > MAX_BATCH_BYTES {
            return Err(EncodeError::Validation(ValidationError::BatchTooLarge {
                bytes: batch_bytes,
            }));
        }
        let tail = &mut self.buf[self.pos..];
        if tail.len() < len {
            return Err(EncodeError::BufferFull);
        }
        let written = postcard::to_slice(record, tail).map_err(encode_error)?.len();
        self.pos += written;
        self.records += 1;
        Ok(())
    }

    /// How many records have been pushed.
    pub fn len(&self) -> usize {
        self.records
    }

    /// Whether no record has been pushed yet.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// How many bytes [`BatchEncoder::finish`] would return now.
    pub fn encoded_len(&self) -> usize {
        self.pos
    }

    /// Fills in the record count and returns the encoded batch (preceded by
    /// the envelope header when the encoder came from
    /// [`crate::envelope::batch_encoder`]).
    ///
    /// # Errors
    /// [`EncodeError::Validation`] with [`ValidationError::EmptyBatch`] if no
    /// record was pushed: a batch holds at least one.
    pub fn finish(self) -> Result<&'buf [u8], EncodeError> {
        if self.records == 0 {
            return Err(EncodeError::Validation(ValidationError::EmptyBatch));
        }
        let Self { buf, count_at, pos, records, .. } = self;
        // At most MAX_BATCH_RECORDS, which fits a u16 (asserted above).
        let count = records as u16;
        buf[count_at..count_at + COUNT_BYTES].copy_from_slice(&count.to_le_bytes());
        Ok(&buf[..pos])
    }
}

/// A batch read in place from a buffer.
///
/// Made by [`BatchView::decode`], which checks every byte up front, or by
/// [`BatchView::parse_header`], which checks only the header and leaves the
/// records to [`BatchView::records`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchView<'a> {
    bytes: &'a [u8],
    producer_id: &'a str,
    batch_seq: u64,
    count: usize,
    /// Offset of the first record in `bytes`.
    records_at: usize,
}

impl<'a> BatchView<'a> {
    /// Reads a batch that fills `bytes` exactly and checks all of it: the
    /// header, that exactly the declared number of records follow, that each
    /// decodes and is valid, and that no byte follows the last one.
    ///
    /// After this returns `Ok`, every item [`BatchView::records`] yields is
    /// `Ok`: the iterator repeats the same checks on the same bytes.
    ///
    /// # Errors
    /// Any [`DecodeError`] of [`BatchView::parse_header`], then for the
    /// records [`DecodeError::Truncated`], [`DecodeError::Malformed`],
    /// [`DecodeError::InvalidRecord`], [`DecodeError::MissingRecords`] or
    /// [`DecodeError::TrailingBytes`]. Offsets count from the start of
    /// `bytes`.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let view = Self::parse_header(bytes)?;
        for record in view.records() {
            record?;
        }
        Ok(view)
    }

    /// Reads only the batch header and its limits; the records are checked as
    /// [`BatchView::records`] reaches them.
    ///
    /// # Errors
    /// [`DecodeError::InvalidBatch`] if `bytes` is over [`MAX_BATCH_BYTES`] or
    /// the count is 0 or over [`MAX_BATCH_RECORDS`];
    /// [`DecodeError::InvalidProducerId`]; [`DecodeError::Truncated`] or
    /// [`DecodeError::Malformed`] if the header does not decode.
    pub fn parse_header(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_BATCH_BYTES {
            return Err(DecodeError::InvalidBatch(ValidationError::BatchTooLarge {
                bytes: bytes.len(),
            }));
        }
        let ((producer_id, batch_seq), rest): ((&str, u64), &[u8]) =
            postcard::take_from_bytes(bytes).map_err(|e| decode_error(0, e))?;
        check_producer_id(producer_id).map_err(|bytes| DecodeError::InvalidProducerId { bytes })?;
        let count_at = bytes.len() - rest.len();
        let count = match rest {
            [lo, hi, ..] => usize::from(u16::from_le_bytes([*lo, *hi])),
            _ => return Err(DecodeError::Truncated { offset: count_at }),
        };
        if count == 0 {
            return Err(DecodeError::InvalidBatch(ValidationError::EmptyBatch));
        }
        if count > MAX_BATCH_RECORDS {
            return Err(DecodeError::InvalidBatch(ValidationError::TooManyRecords {
                records: count,
            }));
        }
        Ok(Self { bytes, producer_id, batch_seq, count, records_at: count_at + COUNT_BYTES })
    }

    /// The producer (device) that sent the batch.
    pub fn producer_id(&self) -> &'a str {
        self.producer_id
    }

    /// The producer's sequence number for this batch.
    pub fn batch_seq(&self) -> u64 {
        self.batch_seq
    }

    /// How many records the batch declares (1 to 500).
    pub fn len(&self) -> usize {
        self.count
    }

    /// Always `false`: a batch holds at least one record.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The encoded batch.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The records, decoded one by one as the iterator advances.
    ///
    /// The iterator yields the declared number of records. After a
    /// [`BatchView::parse_header`] it may instead yield one `Err` (a record
    /// that does not decode or is invalid, records missing, or bytes after
    /// the last one) and then end. After a successful [`BatchView::decode`]
    /// it never yields an `Err`.
    pub fn records(&self) -> Records<'a> {
        Records {
            bytes: self.bytes,
            pos: self.records_at,
            index: 0,
            count: self.count,
            done: false,
        }
    }
}

/// Iterator over a batch's records; see [`BatchView::records`].
#[derive(Debug, Clone)]
pub struct Records<'a> {
    bytes: &'a [u8],
    pos: usize,
    index: usize,
    count: usize,
    done: bool,
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        if self.index == self.count {
            self.done = true;
            if rest.is_empty() {
                return None;
            }
            return Some(Err(DecodeError::TrailingBytes { offset: self.pos, count: rest.len() }));
        }
        if rest.is_empty() {
            self.done = true;
            return Some(Err(DecodeError::MissingRecords {
                declared: self.count,
                found: self.index,
            }));
        }
        match take_record(rest, self.index) {
            Ok((record, used)) => {
                self.pos += used;
                self.index += 1;
                Some(Ok(record))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e.shifted(self.pos)))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done {
            return (0, Some(0));
        }
        // Up to one extra item: the error about trailing bytes.
        let left = self.count - self.index;
        (left.min(1), Some(left + 1))
    }
}

impl core::iter::FusedIterator for Records<'_> {}

/// A batch that owns its records, for hosts with an allocator.
#[cfg(feature = "alloc")]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnedBatch {
    /// The producer (device) id, 1 to 64 bytes.
    pub producer_id: String,
    /// The producer's sequence number for this batch.
    pub batch_seq: u64,
    /// 1 to 500 records.
    pub records: Vec<OwnedRecord>,
}

#[cfg(feature = "alloc")]
impl OwnedBatch {
    /// Encodes the batch (layout in the module header).
    ///
    /// # Errors
    /// The errors of [`BatchEncoder::new`], [`BatchEncoder::push`] (except
    /// [`EncodeError::BufferFull`]: the vector is sized to fit) and
    /// [`BatchEncoder::finish`].
    pub fn encode_to_vec(&self) -> Result<Vec<u8>, EncodeError> {
        self.encode_after_prefix(&[])
    }

    /// Encodes `prefix` followed by the batch.
    pub(crate) fn encode_after_prefix(&self, prefix: &[u8]) -> Result<Vec<u8>, EncodeError> {
        let header = varint_len(self.producer_id.len() as u128)
            + self.producer_id.len()
            + varint_len(u128::from(self.batch_seq))
            + COUNT_BYTES;
        let records: usize = self.records.iter().map(|r| r.as_record().encoded_len()).sum();
        // Never allocate more than the largest valid batch: a bigger one is
        // refused as too large before it would need the room.
        let size = prefix.len() + (header + records).min(MAX_BATCH_BYTES + 1);
        let mut buf = vec![0u8; size];
        buf[..prefix.len()].copy_from_slice(prefix);
        let mut encoder =
            BatchEncoder::after_prefix(&mut buf, prefix.len(), &self.producer_id, self.batch_seq)?;
        for record in &self.records {
            encoder.push(&record.as_record())?;
        }
        let len = encoder.finish()?.len();
        buf.truncate(len);
        Ok(buf)
    }

    /// Decodes and checks a whole batch, copying its records out.
    ///
    /// # Errors
    /// Those of [`BatchView::decode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let view = BatchView::decode(bytes)?;
        Self::try_from(view)
    }
}

#[cfg(feature = "alloc")]
impl TryFrom<BatchView<'_>> for OwnedBatch {
    type Error = DecodeError;

    /// Copies a view's records out; cannot fail for a view made by
    /// [`BatchView::decode`].
    fn try_from(view: BatchView<'_>) -> Result<Self, DecodeError> {
        let records =
            view.records().map(|r| r.map(OwnedRecord::from)).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { producer_id: view.producer_id().into(), batch_seq: view.batch_seq(), records })
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests;
