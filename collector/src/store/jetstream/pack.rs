//! The payload of one JetStream message: the records of one append bound for
//! one shard, packed so that one publish (one JetStream acknowledgement, one
//! replicated write) carries them all and they land together or not at all.
//!
//! # Layout (little-endian)
//!
//! ```text
//!   0..2   magic    b"WJ"
//!   2      version  u8 = 1
//!   3..5   count    u16, number of records (1..=MAX_RECORDS_PER_MESSAGE)
//!   then count records, each
//!     u8       flags: bit 0 explicit hash key present, bit 1 producer timestamp present
//!     u16      key_len (1..=256)
//!     key_len  partition key, UTF-8
//!     [u128]   explicit hash key, if flag bit 0
//!     [u64]    producer timestamp, ms since the epoch, if flag bit 1
//!     u32      data_len
//!     data_len data
//! ```
//!
//! No checksum: JetStream stores and replicates the message whole, with its
//! own framing and (on file storage) its own checksums. A payload that does
//! not parse is reported as corrupt, never skipped silently.

use bytes::{BufMut, Bytes, BytesMut};

use super::super::backend::{ByteString, NewRecord};

const MAGIC: [u8; 2] = *b"WJ";
const VERSION: u8 = 1;
const HEADER_BYTES: usize = 5;
/// Most records one message carries: the record's index inside its message
/// is the low 16 bits of its offset (see `jetstream` module header).
pub const MAX_RECORDS_PER_MESSAGE: usize = 1 << 16;
const FLAG_HASH_KEY: u8 = 1;
const FLAG_TIMESTAMP: u8 = 2;

/// Bytes `record` takes in a message.
pub fn record_len(record: &NewRecord) -> usize {
    1 + 2
        + record.partition_key.len()
        + if record.explicit_hash_key.is_some() { 16 } else { 0 }
        + if record.producer_timestamp_ms.is_some() { 8 } else { 0 }
        + 4
        + record.data.len()
}

/// Splits `records` into consecutive chunks of at most `max_bytes` of payload
/// each (a record larger than that alone in its chunk) and at most
/// [`MAX_RECORDS_PER_MESSAGE`] records. Deterministic: the same records give
/// the same chunks, which the idempotent producer check relies on.
pub fn chunks(records: &[NewRecord], max_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, HEADER_BYTES);
    for (i, r) in records.iter().enumerate() {
        let len = record_len(r);
        let full = i - start == MAX_RECORDS_PER_MESSAGE || size + len > max_bytes;
        if i > start && full {
            out.push(start..i);
            (start, size) = (i, HEADER_BYTES);
        }
        size += len;
    }
    if start < records.len() {
        out.push(start..records.len());
    }
    out
}

/// Packs `records` (1..=[`MAX_RECORDS_PER_MESSAGE`]) into one payload.
pub fn encode(records: &[NewRecord]) -> Bytes {
    let body: usize = records.iter().map(record_len).sum();
    let mut b = BytesMut::with_capacity(HEADER_BYTES + body);
    b.put_slice(&MAGIC);
    b.put_u8(VERSION);
    b.put_u16_le(u16::try_from(records.len()).unwrap_or(u16::MAX));
    for r in records {
        let mut flags = 0;
        if r.explicit_hash_key.is_some() {
            flags |= FLAG_HASH_KEY;
        }
        if r.producer_timestamp_ms.is_some() {
            flags |= FLAG_TIMESTAMP;
        }
        b.put_u8(flags);
        b.put_u16_le(u16::try_from(r.partition_key.len()).unwrap_or(u16::MAX));
        b.put_slice(r.partition_key.as_bytes());
        if let Some(h) = r.explicit_hash_key {
            b.put_u128_le(h);
        }
        if let Some(t) = r.producer_timestamp_ms {
            b.put_u64_le(t);
        }
        b.put_u32_le(u32::try_from(r.data.len()).unwrap_or(u32::MAX));
        b.put_slice(&r.data);
    }
    b.freeze()
}

/// One record as unpacked; its strings share the message's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// Partition key.
    pub partition_key: ByteString,
    /// Data.
    pub data: Bytes,
    /// Explicit hash key.
    pub explicit_hash_key: Option<u128>,
    /// Producer timestamp.
    pub producer_timestamp_ms: Option<u64>,
}

/// Unpacks a payload.
///
/// # Errors
/// A description of the first thing that does not parse.
pub fn decode(payload: &Bytes) -> Result<Vec<Unpacked>, &'static str> {
    let p = payload.as_ref();
    if p.len() < HEADER_BYTES || p[..2] != MAGIC {
        return Err("not a Weir record message");
    }
    if p[2] != VERSION {
        return Err("unknown record message version");
    }
    let count = usize::from(u16::from_le_bytes([p[3], p[4]]));
    let mut at = HEADER_BYTES;
    let mut take = |n: usize| -> Result<std::ops::Range<usize>, &'static str> {
        let end = at.checked_add(n).filter(|e| *e <= p.len()).ok_or("truncated record")?;
        let r = at..end;
        at = end;
        Ok(r)
    };
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let flags = p[take(1)?.start];
        let kl = take(2)?;
        let key_len = usize::from(u16::from_le_bytes([p[kl.start], p[kl.start + 1]]));
        let key = take(key_len)?;
        let partition_key =
            ByteString::try_from(payload.slice(key)).map_err(|_| "partition key is not UTF-8")?;
        let explicit_hash_key = if flags & FLAG_HASH_KEY != 0 {
            let r = take(16)?;
            let mut a = [0u8; 16];
            a.copy_from_slice(&p[r]);
            Some(u128::from_le_bytes(a))
        } else {
            None
        };
        let producer_timestamp_ms = if flags & FLAG_TIMESTAMP != 0 {
            let r = take(8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(&p[r]);
            Some(u64::from_le_bytes(a))
        } else {
            None
        };
        let dl = take(4)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(&p[dl]);
        let data_len = usize::try_from(u32::from_le_bytes(a)).map_err(|_| "data too long")?;
        let data = payload.slice(take(data_len)?);
        out.push(Unpacked { partition_key, data, explicit_hash_key, producer_timestamp_ms });
    }
    if at != p.len() {
        return Err("trailing bytes after the last record");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, data: &[u8], h: Option<u128>, t: Option<u64>) -> NewRecord {
        NewRecord {
            partition_key: key.into(),
            data: Bytes::copy_from_slice(data),
            explicit_hash_key: h,
            producer_timestamp_ms: t,
        }
    }

    #[test]
    fn round_trips_every_field() {
        let records = vec![
            rec("a", b"one", None, None),
            rec("bé", b"", Some(u128::MAX - 3), Some(17)),
            rec("c", &[0u8; 300], None, Some(1)),
        ];
        let payload = encode(&records);
        assert_eq!(payload.len(), 5 + records.iter().map(record_len).sum::<usize>());
        let back = decode(&payload).expect("decodes");
        assert_eq!(back.len(), 3);
        for (b, r) in back.iter().zip(&records) {
            assert_eq!(&*b.partition_key, r.partition_key.as_str());
            assert_eq!(b.data, r.data);
            assert_eq!(b.explicit_hash_key, r.explicit_hash_key);
            assert_eq!(b.producer_timestamp_ms, r.producer_timestamp_ms);
        }
    }

    #[test]
    fn refuses_damaged_payloads() {
        let payload = encode(&[rec("k", b"data", None, None)]);
        for cut in 0..payload.len() {
            assert!(decode(&payload.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut longer = payload.to_vec();
        longer.push(0);
        assert!(decode(&Bytes::from(longer)).is_err());
    }

    #[test]
    fn chunks_respect_the_byte_bound_and_keep_order() {
        let records: Vec<NewRecord> = (0..10).map(|i| rec("k", &[i; 100], None, None)).collect();
        let per = record_len(&records[0]);
        let c = chunks(&records, HEADER_BYTES + 3 * per);
        assert_eq!(c, vec![0..3, 3..6, 6..9, 9..10]);
        assert_eq!(chunks(&records, 1), (0..10).map(|i| i..i + 1).collect::<Vec<_>>());
        assert_eq!(chunks(&records, usize::MAX), vec![0..10]);
    }
}
