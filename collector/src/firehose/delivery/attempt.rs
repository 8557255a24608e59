//! One attempt at a pending batch: each partition's object to the
//! destination (those an earlier attempt confirmed are skipped), or, once
//! the batch failed for good, its records to the error output; then the
//! records that could not be partitioned or converted, to the error output.
//! An attempt tries every object even after one failed, and reports which
//! ones the destination confirmed.

use super::errors::{CONVERSION_FAILED, CONVERSION_FAILED_CODE, ErrorOutput};
use super::report::DeliveredObject;
use super::split::{Split, split};
use crate::firehose::checkpoint::{PendingBatch, PendingFailure};
use crate::firehose::config::DeliveryConfig;
use crate::firehose::destination::{Batch, Destination, object_key, request_id};
use crate::firehose::encode::{encode, record_len};
use crate::firehose::error::FirehoseError;
use crate::firehose::partition::{EXTRACTION_FAILED, PARTITIONING_FAILED, Partitioner};
use crate::firehose::prefix::PrefixTemplate;
use crate::store::{Clock, StoredRecord};

/// Where a delivery attempt failed.
pub(super) enum AttemptError {
    /// The destination (or error output) failed: retried. Carries the keys
    /// of the batch's objects the destination confirmed before the failure.
    Destination(FirehoseError, Vec<String>),
    /// Anything else (source, checkpoint).
    Other(FirehoseError),
}

/// The writing side of a delivery stream: the destination, how objects are
/// named and split, and the error output.
pub(super) struct Output<D> {
    pub(super) destination: D,
    pub(super) config: DeliveryConfig,
    pub(super) prefix: PrefixTemplate,
    pub(super) partitioner: Partitioner,
    pub(super) errors: ErrorOutput,
}

impl<D: Destination> Output<D> {
    /// Splits a batch by partition key values (one group without keys).
    pub(super) fn split(&self, records: Vec<StoredRecord>) -> Split {
        split(records, &self.config.format, &self.partitioner)
    }

    /// One attempt at a pending batch: its objects (or, once it failed for
    /// good, its error output), and the error output of records that could
    /// not be partitioned.
    pub(super) async fn attempt(
        &self,
        clock: &dyn Clock,
        shard_id: &str,
        split: &Split,
        pending: &PendingBatch,
    ) -> Result<(Vec<DeliveredObject>, Vec<DeliveredObject>), AttemptError> {
        let mut delivered = Vec::new();
        let mut errors = Vec::new();
        // Records of objects not (yet) confirmed, for the error output.
        let mut undelivered: Vec<(StoredRecord, String)> = Vec::new();
        // The first failure of this attempt.
        let mut failure: Option<FirehoseError> = None;
        for (values, records) in &split.groups {
            let (Some(first), Some(last)) = (records.first(), records.last()) else {
                continue;
            };
            let (first, last) = (first.sequence, last.sequence);
            let key = if self.partitioner.is_empty() {
                pending.key.clone()
            } else {
                let oldest = records.iter().map(|r| r.arrival_ms).min().unwrap_or_default();
                object_key(
                    &self.prefix.render_with(oldest, values, ""),
                    &self.config.name,
                    shard_id,
                    first,
                    last,
                    self.config.extension(),
                )
            };
            let format = &self.config.format;
            let raw_bytes = records.iter().map(|r| record_len(r, format)).sum();
            let object = DeliveredObject {
                key: key.clone(),
                shard_id: shard_id.to_owned(),
                first,
                last,
                records: records.len(),
                raw_bytes,
            };
            if pending.delivered_keys.contains(&key) {
                // Confirmed by an earlier attempt: durable already.
                delivered.push(object);
                continue;
            }
            if let Some(f) = &pending.error {
                undelivered.extend(records.iter().map(|r| (r.clone(), f.error_message.clone())));
                continue;
            }
            let compression = self.config.compression;
            let body = if self.destination.wants_body() {
                let recs = records.clone();
                let format = format.clone();
                tokio::task::spawn_blocking(move || encode(&recs, &format, compression))
                    .await
                    .map_err(|_| AttemptError::Other(FirehoseError::Cancelled))?
                    .map_err(AttemptError::Other)?
            } else {
                Vec::new()
            };
            let batch = Batch {
                request_id: request_id(&self.config.name, shard_id, first, last),
                key: key.clone(),
                records: records.iter().map(|r| r.data.clone()).collect(),
                body,
            };
            // The other objects are still tried: each one confirmed now is
            // one the error output will not need.
            match self.destination.deliver(batch).await {
                Ok(()) => delivered.push(object),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            let confirmed = delivered.iter().map(|d| d.key.clone()).collect();
            return Err(AttemptError::Destination(e, confirmed));
        }
        if let Some(f) = &pending.error
            && let Some(o) = self.write_errors(shard_id, &undelivered, f).await?
        {
            errors.push(o);
        }
        // Records that cannot go to the destination at all, each list with
        // its own error code and output type (write_errors skips empty ones).
        let rejected = [
            (&split.failed, EXTRACTION_FAILED, PARTITIONING_FAILED),
            (&split.unconvertible, CONVERSION_FAILED_CODE, CONVERSION_FAILED),
        ];
        for (records, code, output_type) in rejected {
            let f = PendingFailure {
                error_code: code.to_owned(),
                error_message: String::new(),
                attempts: 1,
                ending_ms: clock.now_ms(),
                error_output_type: output_type.to_owned(),
            };
            if let Some(o) = self.write_errors(shard_id, records, &f).await? {
                errors.push(o);
            }
        }
        Ok((delivered, errors))
    }

    /// Writes records as one error output object; a failure is the
    /// destination's (retried).
    async fn write_errors(
        &self,
        shard_id: &str,
        records: &[(StoredRecord, String)],
        failure: &PendingFailure,
    ) -> Result<Option<DeliveredObject>, AttemptError> {
        self.errors
            .write(&self.destination, &self.config, shard_id, records, failure)
            .await
            .map_err(|e| AttemptError::Destination(e, Vec::new()))
    }
}
