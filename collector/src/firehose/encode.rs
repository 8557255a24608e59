//! A batch's records into an object body: laid out as configured, then
//! compressed. The size hint counts the bytes before compression
//! ([`record_len`]).

use std::io::Write;

use super::config::{Compression, RecordFormat};
use super::error::FirehoseError;
use crate::store::StoredRecord;

/// zstd level of objects (zstd's default).
pub const ZSTD_LEVEL: i32 = 3;

/// Bytes a record takes in an object before compression.
pub fn record_len(record: &StoredRecord, format: RecordFormat) -> usize {
    record.data.len() + usize::from(format == RecordFormat::NewlineDelimited)
}

/// The body of an object holding `records`.
///
/// # Errors
/// [`FirehoseError::Compress`] if the compressor fails.
pub fn encode(
    records: &[StoredRecord],
    format: RecordFormat,
    compression: Compression,
) -> Result<Vec<u8>, FirehoseError> {
    let mut raw = Vec::with_capacity(records.iter().map(|r| record_len(r, format)).sum());
    for r in records {
        raw.extend_from_slice(&r.data);
        if format == RecordFormat::NewlineDelimited {
            raw.push(b'\n');
        }
    }
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
