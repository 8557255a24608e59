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
            let converted = super::parquet::convert(parquet.schema(), records)?;
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
            zstd::bulk::compress(&raw, ZSTD_LEVEL).map_err(FirehoseError::Compress)
        }
    }
}
