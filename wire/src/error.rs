//! Why bytes could not be encoded or decoded.
//!
//! Three enums, one per direction or layer:
//!
//! - [`EncodeError`]: a record, batch or envelope could not be written (the
//!   caller's buffer is full, or the input breaks a [`crate::validate`] limit).
//! - [`DecodeError`]: bytes received are not a valid record, batch or envelope.
//!   Offsets in it count bytes from the start of the slice handed to the
//!   decode function that was called, so a collector can log exactly where a
//!   device's payload went wrong.
//! - [`FrameError`]: a serial frame could not be written or read.
//!
//! All three are plain values: decoding arbitrary bytes returns one of them and
//! never panics. They implement [`core::fmt::Display`] and
//! [`core::error::Error`] by hand (the crate is `no_std`), and
//! [`core::error::Error::source`] returns the inner [`ValidationError`] or
//! [`postcard::Error`] where there is one.

use core::fmt;

use crate::validate::ValidationError;

/// Why a record, batch or envelope could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer has no room for the next item. An encoder that
    /// returned this is unchanged: what it held before is still there.
    BufferFull,
    /// A batch's producer id is empty or longer than
    /// [`crate::validate::MAX_PRODUCER_ID_BYTES`].
    InvalidProducerId {
        /// Its length in bytes.
        bytes: usize,
    },
    /// A record or batch breaks one of the limits shared by every producer and
    /// the collector.
    Validation(ValidationError),
    /// postcard refused to serialise a value for a reason other than a full
    /// buffer. Weir's types never trigger this; it is kept rather than hidden.
    Serialize(postcard::Error),
}

impl EncodeError {
    /// Whether a new, empty batch could still take the record that was
    /// refused: the buffer was full, or the batch already holds
    /// [`crate::MAX_BATCH_RECORDS`] records or would outgrow
    /// [`crate::MAX_BATCH_BYTES`]. Firmware reacts by finishing and sending
    /// the current batch, then pushing the record again into a new one (if an
    /// empty batch refuses it too, the record can never fit that buffer).
    pub fn is_batch_full(&self) -> bool {
        matches!(
            self,
            Self::BufferFull
                | Self::Validation(
                    ValidationError::TooManyRecords { .. } | ValidationError::BatchTooLarge { .. }
                )
        )
    }
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferFull => f.write_str("output buffer is full"),
            Self::InvalidProducerId { bytes } => write!(
                f,
                "producer id is {bytes} bytes, must be 1 to {}",
                crate::validate::MAX_PRODUCER_ID_BYTES
            ),
            Self::Validation(e) => write!(f, "invalid input: {e}"),
            Self::Serialize(e) => write!(f, "postcard could not serialise: {e}"),
        }
    }
}

impl core::error::Error for EncodeError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Validation(e) => Some(e),
            Self::Serialize(e) => Some(e),
            Self::BufferFull | Self::InvalidProducerId { .. } => None,
        }
    }
}

/// Maps a postcard serialisation error: a full buffer is the expected case.
pub(crate) fn encode_error(error: postcard::Error) -> EncodeError {
    match error {
        postcard::Error::SerializeBufferFull => EncodeError::BufferFull,
        other => EncodeError::Serialize(other),
    }
}

/// Why bytes are not a valid record, batch or envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ends inside the item that starts at `offset`.
    Truncated {
        /// Where the incomplete item starts.
        offset: usize,
    },
    /// postcard refused the item that starts at `offset` (a bad varint,
    /// invalid UTF-8 in a key, an option tag other than 0 or 1...).
    Malformed {
        /// Where the refused item starts.
        offset: usize,
        /// What postcard found wrong.
        error: postcard::Error,
    },
    /// The envelope's version byte is not one this build reads.
    UnsupportedVersion {
        /// The version byte received.
        found: u8,
        /// The version this build reads ([`crate::envelope::FORMAT_VERSION`]).
        supported: u8,
    },
    /// The envelope's kind byte names no known payload.
    UnknownKind {
        /// The kind byte received.
        found: u8,
    },
    /// A batch's producer id is empty or longer than
    /// [`crate::validate::MAX_PRODUCER_ID_BYTES`].
    InvalidProducerId {
        /// Its length in bytes.
        bytes: usize,
    },
    /// A record decoded but breaks a limit (empty or too long partition key,
    /// data over 1 MiB).
    InvalidRecord {
        /// Its position in the batch, from 0 (0 for a lone record).
        index: usize,
        /// The limit it breaks.
        error: ValidationError,
    },
    /// A batch as a whole breaks a limit: it declares no record or more than
    /// [`crate::MAX_BATCH_RECORDS`], or is larger than
    /// [`crate::MAX_BATCH_BYTES`].
    InvalidBatch(ValidationError),
    /// A batch ends cleanly after fewer records than its header declares.
    MissingRecords {
        /// How many records the header declares.
        declared: usize,
        /// How many the bytes hold.
        found: usize,
    },
    /// Bytes are left after the last item.
    TrailingBytes {
        /// Where the unexpected bytes start.
        offset: usize,
        /// How many there are.
        count: usize,
    },
}

impl DecodeError {
    /// The same error with its offsets moved `by` bytes further, for an item
    /// decoded from a sub-slice that starts `by` bytes into the caller's input.
    pub(crate) fn shifted(self, by: usize) -> Self {
        match self {
            Self::Truncated { offset } => Self::Truncated { offset: offset + by },
            Self::Malformed { offset, error } => Self::Malformed { offset: offset + by, error },
            Self::TrailingBytes { offset, count } => {
                Self::TrailingBytes { offset: offset + by, count }
            }
            other => other,
        }
    }
}

/// Maps a postcard deserialisation error for the item starting at `offset`:
/// running out of input is its own, common, case.
pub(crate) fn decode_error(offset: usize, error: postcard::Error) -> DecodeError {
    match error {
        postcard::Error::DeserializeUnexpectedEnd => DecodeError::Truncated { offset },
        error => DecodeError::Malformed { offset, error },
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { offset } => {
                write!(f, "input ends inside the item that starts at byte {offset}")
            }
            Self::Malformed { offset, error } => {
                write!(f, "malformed item at byte {offset}: {error}")
            }
            Self::UnsupportedVersion { found, supported } => {
                write!(
                    f,
                    "unsupported wire format version {found}: this build reads version {supported} only"
                )?;
                if found > supported {
                    f.write_str(" (the producer is newer than this reader: upgrade the reader)")
                } else {
                    f.write_str(" (the producer is older than this reader: upgrade the producer)")
                }
            }
            Self::UnknownKind { found } => {
                write!(f, "unknown envelope kind {found} (1 = single record, 2 = batch)")
            }
            Self::InvalidProducerId { bytes } => write!(
                f,
                "producer id is {bytes} bytes, must be 1 to {}",
                crate::validate::MAX_PRODUCER_ID_BYTES
            ),
            Self::InvalidRecord { index, error } => write!(f, "record {index} is invalid: {error}"),
            Self::InvalidBatch(error) => write!(f, "batch is invalid: {error}"),
            Self::MissingRecords { declared, found } => {
                write!(f, "batch declares {declared} records but holds {found}")
            }
            Self::TrailingBytes { offset, count } => {
                write!(f, "{count} unexpected bytes after the last item, from byte {offset}")
            }
        }
    }
}

impl core::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Malformed { error, .. } => Some(error),
            Self::InvalidRecord { error, .. } | Self::InvalidBatch(error) => Some(error),
            Self::Truncated { .. }
            | Self::UnsupportedVersion { .. }
            | Self::UnknownKind { .. }
            | Self::InvalidProducerId { .. }
            | Self::MissingRecords { .. }
            | Self::TrailingBytes { .. } => None,
        }
    }
}

/// Why a serial frame could not be written or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Writing: the output buffer cannot hold the encoded frame.
    BufferTooSmall,
    /// The payload is longer than [`crate::validate::MAX_FRAME_PAYLOAD`].
    PayloadTooLarge {
        /// Its length in bytes.
        len: usize,
    },
    /// An ack frame carries a payload; acks are always empty.
    AckWithPayload {
        /// The payload's length in bytes.
        len: usize,
    },
    /// Reading: more than the decoder's capacity arrived before a delimiter.
    /// Reported once; the bytes up to the next `0x00` are dropped.
    TooLong {
        /// The decoder's capacity in bytes.
        capacity: usize,
    },
    /// The bytes between two delimiters are not valid COBS.
    BadCobs {
        /// How many bytes decoded before the fault.
        decoded: usize,
    },
    /// The decoded frame is shorter than its fixed 9 bytes of type, sequence
    /// number and CRC.
    TooShort {
        /// Its decoded length in bytes.
        len: usize,
    },
    /// The CRC32C in the frame does not match its contents.
    CrcMismatch {
        /// The CRC the frame carries.
        expected: u32,
        /// The CRC of the bytes received.
        computed: u32,
    },
    /// The frame type byte is neither 1 (data) nor 2 (ack).
    UnknownType {
        /// The type byte received.
        found: u8,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall => f.write_str("output buffer too small for the encoded frame"),
            Self::PayloadTooLarge { len } => write!(
                f,
                "frame payload is {len} bytes, more than {}",
                crate::validate::MAX_FRAME_PAYLOAD
            ),
            Self::AckWithPayload { len } => {
                write!(f, "ack frame carries a {len}-byte payload; acks are empty")
            }
            Self::TooLong { capacity } => write!(
                f,
                "frame longer than the decoder's {capacity} bytes; skipped to the next delimiter"
            ),
            Self::BadCobs { decoded } => {
                write!(f, "invalid COBS encoding after {decoded} decoded bytes")
            }
            Self::TooShort { len } => {
                write!(f, "frame is {len} bytes, shorter than its 9-byte header and CRC")
            }
            Self::CrcMismatch { expected, computed } => write!(
                f,
                "frame CRC32C mismatch: frame carries {expected:#010x}, contents give {computed:#010x}"
            ),
            Self::UnknownType { found } => {
                write!(f, "unknown frame type {found} (1 = data, 2 = ack)")
            }
        }
    }
}

impl core::error::Error for FrameError {}

#[cfg(test)]
mod tests {
    use core::error::Error as _;

    use super::*;

    #[test]
    fn validation_errors_are_the_source() {
        let e = DecodeError::InvalidRecord { index: 3, error: ValidationError::EmptyPartitionKey };
        let source = e.source().expect("source");
        assert_eq!(
            source.downcast_ref::<ValidationError>(),
            Some(&ValidationError::EmptyPartitionKey)
        );
        let e = EncodeError::Validation(ValidationError::EmptyBatch);
        assert!(e.source().is_some());
        assert!(EncodeError::BufferFull.source().is_none());
    }

    #[test]
    fn batch_full_conditions() {
        assert!(EncodeError::BufferFull.is_batch_full());
        assert!(
            EncodeError::Validation(ValidationError::TooManyRecords { records: 501 })
                .is_batch_full()
        );
        assert!(!EncodeError::Validation(ValidationError::EmptyPartitionKey).is_batch_full());
    }

    #[test]
    fn shifting_moves_offsets_only() {
        assert_eq!(
            DecodeError::Truncated { offset: 3 }.shifted(2),
            DecodeError::Truncated { offset: 5 }
        );
        assert_eq!(
            DecodeError::UnknownKind { found: 9 }.shifted(2),
            DecodeError::UnknownKind { found: 9 }
        );
    }
}
