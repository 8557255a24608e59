//! Prometheus metrics of the collector, served at `GET /metrics`.
//!
//! Components record through the `metrics` facade (`metrics::counter!` and
//! friends); [`install`] sets the process-wide Prometheus recorder once and
//! returns the handle that renders the text format. Names the API records,
//! each labelled by `stream` and `shard`:
//!
//! - `weir_shard_incoming_records_total`, `weir_shard_incoming_bytes_total`:
//!   records (and data + key bytes) accepted by PutRecord(s).
//! - `weir_shard_outgoing_records_total`, `weir_shard_outgoing_bytes_total`,
//!   `weir_shard_get_records_total`: what GetRecords returned, and how often.
//! - `weir_shard_iterator_age_milliseconds`: MillisBehindLatest of the last
//!   GetRecords on the shard (Kinesis's IteratorAgeMilliseconds).
//! - `weir_shard_write_throttled_records_total`: records refused with
//!   ProvisionedThroughputExceededException.
//!
//! And `weir_api_requests_total{operation, outcome}` (outcome `ok` or the
//! error name).
//!
//! Firehose delivery streams record, labelled by `delivery_stream` (see
//! `firehose::delivery`): `weir_firehose_{delivered,retried,failed}_records_total`,
//! the same as `..._bytes_total`, and
//! `weir_firehose_last_delivery_timestamp_seconds`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its
/// handle; `None` if another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed; /metrics will be empty");
                None
            }
        })
        .clone()
}

/// Records accepted into a shard.
pub fn incoming(stream: &str, shard: &str, records: u64, bytes: u64) {
    let labels = [("stream", stream.to_owned()), ("shard", shard.to_owned())];
    metrics::counter!("weir_shard_incoming_records_total", &labels).increment(records);
    metrics::counter!("weir_shard_incoming_bytes_total", &labels).increment(bytes);
}

/// Records refused by a shard's write limits.
pub fn throttled(stream: &str, shard: &str, records: u64) {
    let labels = [("stream", stream.to_owned()), ("shard", shard.to_owned())];
    metrics::counter!("weir_shard_write_throttled_records_total", &labels).increment(records);
}

/// One GetRecords answer.
pub fn outgoing(stream: &str, shard: &str, records: u64, bytes: u64, millis_behind: u64) {
    let labels = [("stream", stream.to_owned()), ("shard", shard.to_owned())];
    metrics::counter!("weir_shard_get_records_total", &labels).increment(1);
    metrics::counter!("weir_shard_outgoing_records_total", &labels).increment(records);
    metrics::counter!("weir_shard_outgoing_bytes_total", &labels).increment(bytes);
    metrics::gauge!("weir_shard_iterator_age_milliseconds", &labels).set(millis_behind as f64);
}

/// One API request and how it ended.
pub fn request(operation: &'static str, outcome: &'static str) {
    metrics::counter!("weir_api_requests_total", "operation" => operation, "outcome" => outcome)
        .increment(1);
}
