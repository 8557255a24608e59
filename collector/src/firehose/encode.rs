//! A batch's records into an object body: laid out as configured (as they
//! are, newline-delimited, or converted to Parquet), then compressed. The
//! size hint counts the bytes before compression and conversion
//! ([`record_len`]).

use std::io::Write;

use super::config::{Compression, RecordFormat};
use super::error::FirehoseError;
use crate::store::StoredRecord;

/// zstd level of objects (zstd's default).
pub const ZSTD_LEVEL: i32 = 3;
/// Bodies at least this large are zstd-compressed by several threads (one
/// frame all the same); smaller ones are not worth starting them.
pub const ZSTD_PARALLEL_MIN_BYTES: usize = 4 * 1024 * 1024;
/// Most zstd worker threads for one body.
pub const ZSTD_MAX_WORKERS: usize = 4;

/// Bytes a record takes in an object before compression (for Parquet: its
/// JSON's size).
pub fn record_len(record: &StoredRecord, format: &RecordFormat) -> usize {
    record.data.len() + usize::from(*format == RecordFormat::NewlineDelimited)
}

/// The body of an object holding `records`.
///
/// # Errors
/// [`FirehoseError::Compress`] if the compressor fails;
/// [`FirehoseError::Convert`] for Parquet output if a record is not a JSON
/// object or a field does not convert (the first such record is named; the
/// delivery stream routes such records to the error output beforehand with
/// [`ParquetFormat::check`](super::parquet::ParquetFormat::check)), or if the
/// writer fails.
pub fn encode(
    records: &[StoredRecord],
    format: &RecordFormat,
    compression: Compression,
) -> Result<Vec<u8>, FirehoseError> {
    let raw = match format {
        RecordFormat::Parquet(parquet) => {
            let converted = parquet.convert(records)?;
            if let Some(first) = converted.rejected.into_iter().next() {
                return Err(first.error.into());
            }
            converted.body.unwrap_or_default()
        }
        RecordFormat::AsIs | RecordFormat::NewlineDelimited => {
            let newline = *format == RecordFormat::NewlineDelimited;
            let len = records.iter().map(|r| r.data.len()).sum::<usize>()
                + if newline { records.len() } else { 0 };
            let mut raw = Vec::with_capacity(len);
            for r in records {
                raw.extend_from_slice(&r.data);
                if newline {
                    raw.push(b'\n');
                }
            }
            raw
        }
    };
    compress(raw, compression)
}

/// `raw` compressed as configured (gzip: one member; zstd: one frame, on
/// several threads for bodies of [`ZSTD_PARALLEL_MIN_BYTES`] and more).
///
/// # Errors
/// [`FirehoseError::Compress`] if the compressor fails.
pub fn compress(raw: Vec<u8>, compression: Compression) -> Result<Vec<u8>, FirehoseError> {
    match compression {
        Compression::None => Ok(raw),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(raw.len() / 4),
                flate2::Compression::default(),
            );
            enc.write_all(&raw).map_err(FirehoseError::Compress)?;
            enc.finish().map_err(FirehoseError::Compress)
        }
        Compression::Zstd => {
            let mut zstd =
                zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(FirehoseError::Compress)?;
            let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
            let workers = workers.min(ZSTD_MAX_WORKERS);
            if raw.len() >= ZSTD_PARALLEL_MIN_BYTES && workers > 1 {
                // One frame still: zstd splits it into jobs for its workers.
                let workers = zstd::zstd_safe::CParameter::NbWorkers(workers as u32);
                zstd.set_parameter(workers).map_err(FirehoseError::Compress)?;
            }
            zstd.compress(&raw).map_err(FirehoseError::Compress)
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::store::SequenceNumber;

    fn records(count: usize, len: usize) -> Vec<StoredRecord> {
        (0..count)
            .map(|i| {
                // Compressible, but not one repeated byte.
                let data: Vec<u8> =
                    (0..len).map(|j| b'a' + ((i * 7 + j / 13) % 26) as u8).collect();
                StoredRecord {
                    sequence: SequenceNumber::new(0, i as u64),
                    arrival_ms: 0,
                    partition_key: "k".into(),
                    data: Bytes::from(data),
                    explicit_hash_key: None,
                    producer_timestamp_ms: None,
                }
            })
            .collect()
    }

    #[test]
    fn every_compression_gives_back_the_records_also_above_the_parallel_zstd_size() {
        for (count, len) in [(3, 10), (9_000, 1_024)] {
            let recs = records(count, len);
            let mut raw = Vec::new();
            for r in &recs {
                raw.extend_from_slice(&r.data);
                raw.push(b'\n');
            }
            assert_eq!(count * len >= ZSTD_PARALLEL_MIN_BYTES, count > 3);
            let format = RecordFormat::NewlineDelimited;
            let none = encode(&recs, &format, Compression::None).expect("none");
            assert_eq!(none, raw);
            let gz = encode(&recs, &format, Compression::Gzip).expect("gzip");
            let mut back = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut back)
                .expect("gunzip");
            assert_eq!(back, raw);
            let zst = encode(&recs, &format, Compression::Zstd).expect("zstd");
            assert_eq!(zstd::decode_all(&zst[..]).expect("unzstd"), raw);
            assert!(zst.len() < raw.len());
        }
    }
}
