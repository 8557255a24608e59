//! One record: a partition key, an opaque data blob and two optional fields.
//!
//! [`Record`] is a borrowed view: decoding it from a buffer copies nothing,
//! the key and data point into the buffer, so firmware and the collector's hot
//! path decode without an allocator. [`OwnedRecord`] (feature `alloc`) holds
//! the same fields in a `String` and a `Vec<u8>` and encodes to the same bytes.
//!
//! # Byte layout
//!
//! A record is the [postcard] 1.x encoding of its four fields, in this order,
//! with nothing before or after:
//!
//! | bytes   | field                 | encoding |
//! |---------|-----------------------|----------|
//! | 1–3     | partition key length `K` | varint |
//! | `K`     | partition key         | UTF-8, 1 to 256 characters (so at most 1,024 bytes) |
//! | 1–3     | data length `D`       | varint |
//! | `D`     | data                  | raw bytes, at most 1 MiB |
//! | 1       | explicit hash key tag | `0x00` absent, `0x01` present |
//! | 0 or 1–19 | explicit hash key   | varint of the `u128`, only when the tag is `0x01` |
//! | 1       | producer timestamp tag | `0x00` absent, `0x01` present |
//! | 0 or 1–10 | producer timestamp  | varint of the `u64` milliseconds since the Unix epoch, only when the tag is `0x01` |
//!
//! A varint is postcard's unsigned LEB128: seven bits per byte, least
//! significant group first, the high bit set on every byte but the last
//! (`300` is `0xAC 0x02`). The smallest record (a one-byte key, empty data,
//! no options) is 5 bytes. Any other tag byte, a varint longer than its type
//! allows, a key that is not UTF-8 or a length running past the input is a
//! [`DecodeError`]; a record that decodes but breaks a limit of
//! [`crate::validate`] is refused too.

use serde::{Deserialize, Serialize};

use crate::error::{DecodeError, EncodeError, decode_error, encode_error};
use crate::hash;
use crate::validate::{ValidationError, validate_data, validate_partition_key};

#[cfg(feature = "alloc")]
use alloc::{string::String, vec::Vec};

/// A record borrowed from a buffer or from the caller's own data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Record<'a> {
    /// Decides the shard (through its MD5 hash key) and the per-key order:
    /// 1 to 256 Unicode characters.
    pub partition_key: &'a str,
    /// The opaque payload, at most 1 MiB.
    #[serde(borrow, with = "serde_bytes")]
    pub data: &'a [u8],
    /// Routes the record by this hash key instead of the partition key's.
    pub explicit_hash_key: Option<u128>,
    /// The producer's own clock when it made the record, in milliseconds
    /// since the Unix epoch.
    pub producer_timestamp_ms: Option<u64>,
}

impl<'a> Record<'a> {
    /// A record with neither an explicit hash key nor a producer timestamp.
    pub fn new(partition_key: &'a str, data: &'a [u8]) -> Self {
        Self { partition_key, data, explicit_hash_key: None, producer_timestamp_ms: None }
    }

    /// Checks the limits every producer and the collector share: a key of 1 to
    /// 256 characters and at most 1 MiB of data.
    ///
    /// # Errors
    /// The first [`ValidationError`] found, the key checked first.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_partition_key(self.partition_key)?;
        validate_data(self.data)
    }

    /// The hash key that picks the record's shard: the explicit hash key if
    /// there is one, else the MD5 of the partition key ([`hash::hash_key`]).
    pub fn hash_key(&self) -> u128 {
        self.explicit_hash_key.unwrap_or_else(|| hash::hash_key(self.partition_key))
    }

    /// The exact number of bytes [`Record::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        let key = self.partition_key.len();
        let data = self.data.len();
        let mut len = varint_len(key as u128) + key + varint_len(data as u128) + data + 2;
        if let Some(h) = self.explicit_hash_key {
            len += varint_len(h);
        }
        if let Some(t) = self.producer_timestamp_ms {
            len += varint_len(u128::from(t));
        }
        len
    }

    /// Writes the record's bytes (see the module header) at the start of
    /// `out` and returns how many were written.
    ///
    /// # Errors
    /// [`EncodeError::Validation`] if the record breaks a limit,
    /// [`EncodeError::BufferFull`] if `out` is shorter than
    /// [`Record::encoded_len`].
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        self.validate().map_err(EncodeError::Validation)?;
        if out.len() < self.encoded_len() {
            return Err(EncodeError::BufferFull);
        }
        let written = postcard::to_slice(self, out).map_err(encode_error)?;
        Ok(written.len())
    }

    /// Reads one record that fills `bytes` exactly, and validates it.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`], [`DecodeError::Malformed`],
    /// [`DecodeError::InvalidRecord`] (index 0) or
    /// [`DecodeError::TrailingBytes`].
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let (record, used) = take_record(bytes, 0)?;
        if used < bytes.len() {
            return Err(DecodeError::TrailingBytes { offset: used, count: bytes.len() - used });
        }
        Ok(record)
    }
}

/// Reads and validates the record at the start of `bytes`, which is record
/// number `index` of its batch; returns it and how many bytes it used.
/// Offsets in errors count from the start of `bytes`.
pub(crate) fn take_record(bytes: &[u8], index: usize) -> Result<(Record<'_>, usize), DecodeError> {
    let (record, rest): (Record<'_>, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|e| decode_error(0, e))?;
    record.validate().map_err(|error| DecodeError::InvalidRecord { index, error })?;
    Ok((record, bytes.len() - rest.len()))
}

/// How many bytes postcard's varint takes for `n`.
pub(crate) fn varint_len(mut n: u128) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

/// A record that owns its key and data, for hosts with an allocator.
///
/// Encodes to exactly the bytes of the [`Record`] that [`OwnedRecord::as_record`]
/// returns.
#[cfg(feature = "alloc")]
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OwnedRecord {
    /// See [`Record::partition_key`].
    pub partition_key: String,
    /// See [`Record::data`].
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// See [`Record::explicit_hash_key`].
    pub explicit_hash_key: Option<u128>,
    /// See [`Record::producer_timestamp_ms`].
    pub producer_timestamp_ms: Option<u64>,
}

#[cfg(feature = "alloc")]
impl OwnedRecord {
    /// A record with neither an explicit hash key nor a producer timestamp.
    pub fn new(partition_key: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        Self {
            partition_key: partition_key.into(),
            data: data.into(),
            explicit_hash_key: None,
            producer_timestamp_ms: None,
        }
    }

    /// A borrowed view of this record, to validate, hash or encode it.
    pub fn as_record(&self) -> Record<'_> {
        Record {
            partition_key: &self.partition_key,
            data: &self.data,
            explicit_hash_key: self.explicit_hash_key,
            producer_timestamp_ms: self.producer_timestamp_ms,
        }
    }
}

#[cfg(feature = "alloc")]
impl From<Record<'_>> for OwnedRecord {
    fn from(record: Record<'_>) -> Self {
        Self {
            partition_key: record.partition_key.into(),
            data: record.data.into(),
            explicit_hash_key: record.explicit_hash_key,
            producer_timestamp_ms: record.producer_timestamp_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{MAX_DATA_BYTES, MAX_PARTITION_KEY_CHARS};

    fn encode<'b>(record: &Record<'_>, buf: &'b mut [u8]) -> &'b [u8] {
        let n = record.encode(buf).expect("encode");
        &buf[..n]
    }

    #[test]
    fn layout_is_documented_bytes() {
        let mut buf = [0u8; 64];
        let bytes = encode(&Record::new("k", b"hi"), &mut buf);
        assert_eq!(bytes, [1, b'k', 2, b'h', b'i', 0, 0]);

        let record = Record {
            partition_key: "dev",
            data: &[],
            explicit_hash_key: Some(300),
            producer_timestamp_ms: Some(1),
        };
        let bytes = encode(&record, &mut buf);
        assert_eq!(bytes, [3, b'd', b'e', b'v', 0, 1, 0xAC, 0x02, 1, 1]);
    }

    #[test]
    fn round_trip_borrows_from_the_input() {
        let record = Record {
            partition_key: "sensor-7",
            data: b"\x00\x01temperature=21.5",
            explicit_hash_key: Some(u128::MAX),
            producer_timestamp_ms: Some(1_700_000_000_000),
        };
        let mut buf = [0u8; 128];
        let bytes = encode(&record, &mut buf);
        assert_eq!(bytes.len(), record.encoded_len());
        let back = Record::decode(bytes).expect("decode");
        assert_eq!(back, record);
        // Zero-copy: the decoded data points into the encoded bytes.
        let range = bytes.as_ptr_range();
        assert!(range.contains(&back.data.as_ptr()));
        assert!(range.contains(&back.partition_key.as_ptr()));
    }

    #[test]
    fn encoded_len_is_exact_at_varint_boundaries() {
        let key = [b'k'; MAX_PARTITION_KEY_CHARS];
        let key = core::str::from_utf8(&key).expect("utf8");
        let data = [7u8; 300];
        let mut buf = [0u8; 1024];
        for k in [1, 127, 128, 256] {
            for d in [0, 127, 128, 300] {
                for h in [None, Some(0), Some(127), Some(128), Some(u128::MAX)] {
                    for t in [None, Some(0), Some(u64::MAX)] {
                        let record = Record {
                            partition_key: &key[..k],
                            data: &data[..d],
                            explicit_hash_key: h,
                            producer_timestamp_ms: t,
                        };
                        assert_eq!(encode(&record, &mut buf).len(), record.encoded_len());
                    }
                }
            }
        }
    }

    #[test]
    fn invalid_records_are_refused_both_ways() {
        let mut buf = [0u8; 64];
        assert_eq!(
            Record::new("", b"x").encode(&mut buf),
            Err(EncodeError::Validation(ValidationError::EmptyPartitionKey))
        );
        // An empty key encodes fine with postcard: the decoder must refuse it.
        let bytes = [0u8, 1, b'x', 0, 0];
        assert_eq!(
            Record::decode(&bytes),
            Err(DecodeError::InvalidRecord { index: 0, error: ValidationError::EmptyPartitionKey })
        );
    }

    #[test]
    fn data_over_one_mebibyte_is_refused() {
        static BIG: [u8; MAX_DATA_BYTES + 1] = [0; MAX_DATA_BYTES + 1];
        let record = Record::new("k", &BIG);
        assert_eq!(
            record.validate(),
            Err(ValidationError::DataTooLarge { bytes: MAX_DATA_BYTES + 1 })
        );
        assert!(Record::new("k", &BIG[..MAX_DATA_BYTES]).validate().is_ok());
    }

    #[test]
    fn small_buffer_is_buffer_full() {
        let mut buf = [0u8; 6];
        assert_eq!(Record::new("k", b"hi").encode(&mut buf), Err(EncodeError::BufferFull));
    }

    #[test]
    fn decode_errors() {
        // Truncated inside the data.
        assert_eq!(Record::decode(&[1, b'k', 5, 1, 2]), Err(DecodeError::Truncated { offset: 0 }));
        // Invalid UTF-8 key.
        assert!(matches!(
            Record::decode(&[1, 0xFF, 0, 0, 0]),
            Err(DecodeError::Malformed { offset: 0, error: postcard::Error::DeserializeBadUtf8 })
        ));
        // Option tag 2.
        assert!(matches!(Record::decode(&[1, b'k', 0, 2, 0]), Err(DecodeError::Malformed { .. })));
        // Trailing byte.
        assert_eq!(
            Record::decode(&[1, b'k', 0, 0, 0, 9]),
            Err(DecodeError::TrailingBytes { offset: 5, count: 1 })
        );
        assert_eq!(Record::decode(&[]), Err(DecodeError::Truncated { offset: 0 }));
    }

    #[test]
    fn hash_key_prefers_the_explicit_one() {
        let mut record = Record::new("a", b"");
        assert_eq!(record.hash_key(), 0x0cc175b9c0f1b6a831c399e269772661);
        record.explicit_hash_key = Some(42);
        assert_eq!(record.hash_key(), 42);
    }

    #[cfg(feature = "alloc")]
    #[test]
    fn owned_record_encodes_like_the_view() {
        let mut owned = OwnedRecord::new("dev-1", b"payload".to_vec());
        owned.producer_timestamp_ms = Some(5);
        let view_bytes = postcard::to_allocvec(&owned.as_record()).expect("view");
        let owned_bytes = postcard::to_allocvec(&owned).expect("owned");
        assert_eq!(view_bytes, owned_bytes);
        let back = Record::decode(&owned_bytes).expect("decode");
        assert_eq!(OwnedRecord::from(back), owned);
    }
}
