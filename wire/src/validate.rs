//! Limits shared by every producer and the collector.
//!
//! These are Kinesis's limits (a partition key of 1 to 256 Unicode scalar
//! values, a data blob of at most 1 MiB, PutRecords' 500 entries and 5 MiB), so
//! a record that a device accepts is one the collector and the Kinesis API
//! accept too; and the wire's own: a batch's producer id and a serial frame's
//! payload. [`crate::batch`], [`crate::frame`] and [`crate::error`] take
//! their limits from here.

use core::fmt;

/// Most Unicode characters in a partition key.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;
/// Largest data blob of one record, in bytes (1 MiB).
pub const MAX_DATA_BYTES: usize = 1024 * 1024;
/// Most records in one batch (Kinesis PutRecords' limit).
pub const MAX_BATCH_RECORDS: usize = 500;
/// Largest encoded batch, in bytes (Kinesis PutRecords' 5 MiB request limit).
pub const MAX_BATCH_BYTES: usize = 5 * 1024 * 1024;
/// Longest producer id of a batch, in bytes.
pub const MAX_PRODUCER_ID_BYTES: usize = 64;
/// Largest payload of one serial frame, in bytes. A frame is kept whole in
/// RAM at both ends, and a lost one is sent again whole: 4 KiB keeps that
/// cheap on a microcontroller and is about 0.36 s at 115,200 baud. Larger
/// records go to the collector over MQTT instead.
pub const MAX_FRAME_PAYLOAD: usize = 4096;

/// Why a record or batch was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidationError {
    /// The partition key is empty.
    EmptyPartitionKey,
    /// The partition key has more than [`MAX_PARTITION_KEY_CHARS`] characters.
    PartitionKeyTooLong {
        /// How many characters it has.
        chars: usize,
    },
    /// The data blob is larger than [`MAX_DATA_BYTES`].
    DataTooLarge {
        /// Its size in bytes.
        bytes: usize,
    },
    /// A batch holds no record.
    EmptyBatch,
    /// A batch holds more than [`MAX_BATCH_RECORDS`] records.
    TooManyRecords {
        /// How many it holds.
        records: usize,
    },
    /// An encoded batch is larger than [`MAX_BATCH_BYTES`].
    BatchTooLarge {
        /// Its size in bytes.
        bytes: usize,
    },
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyPartitionKey => f.write_str("partition key is empty (1 to 256 characters)"),
            Self::PartitionKeyTooLong { chars } => write!(
                f,
                "partition key has {chars} characters, more than {MAX_PARTITION_KEY_CHARS}"
            ),
            Self::DataTooLarge { bytes } => {
                write!(f, "data is {bytes} bytes, more than {MAX_DATA_BYTES}")
            }
            Self::EmptyBatch => f.write_str("batch holds no record"),
            Self::TooManyRecords { records } => {
                write!(f, "batch holds {records} records, more than {MAX_BATCH_RECORDS}")
            }
            Self::BatchTooLarge { bytes } => {
                write!(f, "batch is {bytes} bytes, more than {MAX_BATCH_BYTES}")
            }
        }
    }
}

impl core::error::Error for ValidationError {}

/// Checks a partition key: 1 to 256 Unicode characters.
///
/// # Errors
/// [`ValidationError::EmptyPartitionKey`] or [`ValidationError::PartitionKeyTooLong`].
pub fn validate_partition_key(key: &str) -> Result<(), ValidationError> {
    if key.is_empty() {
        return Err(ValidationError::EmptyPartitionKey);
    }
    // A key of at most 256 bytes has at most 256 chars: skip the count then.
    if key.len() > MAX_PARTITION_KEY_CHARS {
        let chars = key.chars().count();
        if chars > MAX_PARTITION_KEY_CHARS {
            return Err(ValidationError::PartitionKeyTooLong { chars });
        }
    }
    Ok(())
}

/// Checks a data blob: at most 1 MiB.
///
/// # Errors
/// [`ValidationError::DataTooLarge`].
pub fn validate_data(data: &[u8]) -> Result<(), ValidationError> {
    if data.len() > MAX_DATA_BYTES {
        return Err(ValidationError::DataTooLarge { bytes: data.len() });
    }
    Ok(())
}

/// Longest stream name (Kinesis's limit), in characters; the allowed
/// characters are ASCII, so also in bytes.
pub const MAX_STREAM_NAME_CHARS: usize = 128;

/// Why a stream name was refused. Kinesis's rule: 1 to
/// [`MAX_STREAM_NAME_CHARS`] of `a-z A-Z 0-9 _ . -`. The agent checks its
/// configuration and the collector its streams with this one rule, each
/// wording the refusal its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamNameError {
    /// The name is empty or longer than [`MAX_STREAM_NAME_CHARS`].
    Length {
        /// Its length in bytes.
        bytes: usize,
    },
    /// The name holds a byte outside `a-z A-Z 0-9 _ . -`.
    Character {
        /// Where the first such byte is.
        position: usize,
    },
}

impl fmt::Display for StreamNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Length { bytes } => write!(
                f,
                "stream name is {bytes} bytes, not 1 to {MAX_STREAM_NAME_CHARS} characters"
            ),
            Self::Character { position } => write!(
                f,
                "stream name has a character other than a-z A-Z 0-9 _ . - at byte {position}"
            ),
        }
    }
}

impl core::error::Error for StreamNameError {}

/// Checks a stream name: 1 to [`MAX_STREAM_NAME_CHARS`] of `a-z A-Z 0-9 _ . -`.
///
/// # Errors
/// [`StreamNameError::Length`] or [`StreamNameError::Character`].
pub fn validate_stream_name(name: &str) -> Result<(), StreamNameError> {
    if !(1..=MAX_STREAM_NAME_CHARS).contains(&name.len()) {
        return Err(StreamNameError::Length { bytes: name.len() });
    }
    match name.bytes().position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')))
    {
        Some(position) => Err(StreamNameError::Character { position }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_key_counts_characters_not_bytes() {
        let ok: [char; 256] = ['é'; 256];
        let mut buf = [0u8; 512];
        let mut n = 0;
        for c in ok {
            n += c.encode_utf8(&mut buf[n..]).len();
        }
        let key = core::str::from_utf8(&buf[..n]).expect("utf8");
        assert_eq!(validate_partition_key(key), Ok(()));
        assert_eq!(validate_partition_key(""), Err(ValidationError::EmptyPartitionKey));
        let long = [b'k'; 257];
        let long = core::str::from_utf8(&long).expect("utf8");
        assert_eq!(
            validate_partition_key(long),
            Err(ValidationError::PartitionKeyTooLong { chars: 257 })
        );
    }

    #[test]
    fn data_limit_is_one_mebibyte_inclusive() {
        static BIG: [u8; MAX_DATA_BYTES + 1] = [0; MAX_DATA_BYTES + 1];
        assert_eq!(validate_data(&BIG[..MAX_DATA_BYTES]), Ok(()));
        assert_eq!(
            validate_data(&BIG[..]),
            Err(ValidationError::DataTooLarge { bytes: MAX_DATA_BYTES + 1 })
        );
    }

    #[test]
    fn stream_names_follow_kinesis_rule() {
        assert_eq!(validate_stream_name("a-b_c.D9"), Ok(()));
        assert_eq!(validate_stream_name(""), Err(StreamNameError::Length { bytes: 0 }));
        let long = [b's'; MAX_STREAM_NAME_CHARS + 1];
        let long = core::str::from_utf8(&long).expect("ascii");
        assert_eq!(validate_stream_name(&long[..MAX_STREAM_NAME_CHARS]), Ok(()));
        assert_eq!(validate_stream_name(long), Err(StreamNameError::Length { bytes: 129 }));
        assert_eq!(validate_stream_name("a/b"), Err(StreamNameError::Character { position: 1 }));
        assert_eq!(validate_stream_name("é"), Err(StreamNameError::Character { position: 0 }));
    }
}
