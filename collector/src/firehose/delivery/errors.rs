//! The error output: records that cannot be delivered, written as one
//! object of JSON lines (one per record: attempts made, arrival timestamp,
//! error code and message, attempt ending timestamp, the raw data in
//! base64, sequence number, shard id) under the error output prefix, in the
//! destination or in the backup directory.

use std::collections::BTreeMap;

use base64::Engine;

use super::report::DeliveredObject;
use crate::firehose::checkpoint::PendingFailure;
use crate::firehose::config::DeliveryConfig;
use crate::firehose::destination::{Destination, DirectoryDestination, error_key};
use crate::firehose::encode::record_len;
use crate::firehose::error::FirehoseError;
use crate::firehose::prefix::PrefixTemplate;
use crate::store::StoredRecord;

/// Error code of records the output format cannot hold (Firehose's).
pub const CONVERSION_FAILED_CODE: &str = "DataFormatConversion.MalformedData";
/// `!{firehose:error-output-type}` of records the output format cannot hold.
pub const CONVERSION_FAILED: &str = "format-conversion-failed";

/// Where error output objects go: their prefix, and the backup directory
/// (else the destination).
pub(super) struct ErrorOutput {
    pub(super) prefix: PrefixTemplate,
    pub(super) backup: Option<DirectoryDestination>,
}

impl ErrorOutput {
    /// Writes records (each with its own error message, else the failure's)
    /// as one error output object; none for no records.
    pub(super) async fn write<D: Destination>(
        &self,
        destination: &D,
        config: &DeliveryConfig,
        shard_id: &str,
        records: &[(StoredRecord, String)],
        failure: &PendingFailure,
    ) -> Result<Option<DeliveredObject>, FirehoseError> {
        let (Some((first, _)), Some((last, _))) = (records.first(), records.last()) else {
            return Ok(None);
        };
        let (first, last) = (first.sequence, last.sequence);
        let oldest = records.iter().map(|(r, _)| r.arrival_ms).min().unwrap_or_default();
        let prefix = self.prefix.render_with(oldest, &BTreeMap::new(), &failure.error_output_type);
        let key = error_key(&prefix, &config.name, shard_id, first, last);
        let mut body = Vec::new();
        for (r, message) in records {
            let line = serde_json::json!({
                "attemptsMade": failure.attempts,
                "arrivalTimestamp": r.arrival_ms,
                "errorCode": failure.error_code,
                "errorMessage": if message.is_empty() { &failure.error_message } else { message },
                "attemptEndingTimestamp": failure.ending_ms,
                "rawData": base64::engine::general_purpose::STANDARD.encode(&r.data),
                "sequenceNumber": r.sequence.to_string(),
                "shardId": shard_id,
            });
            body.extend_from_slice(line.to_string().as_bytes());
            body.push(b'\n');
        }
        match &self.backup {
            Some(b) => b.put(&key, body).await,
            None => destination.put(&key, body).await,
        }?;
        let format = &config.format;
        Ok(Some(DeliveredObject {
            key,
            shard_id: shard_id.to_owned(),
            first,
            last,
            records: records.len(),
            raw_bytes: records.iter().map(|(r, _)| record_len(r, format)).sum(),
        }))
    }
}

/// The Firehose-style code of a delivery failure.
pub(super) fn error_code(e: &FirehoseError) -> String {
    match e {
        FirehoseError::Rejected { code, .. } => code.clone(),
        FirehoseError::Io { .. } => "Directory.WriteFailed".to_owned(),
        _ => "Delivery.Failed".to_owned(),
    }
}
