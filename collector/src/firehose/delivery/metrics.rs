//! The delivery stream metrics, through the `metrics` facade with the label
//! `delivery_stream` (the names are listed in the `delivery` header).

fn labels(name: &str) -> [(&'static str, String); 1] {
    [("delivery_stream", name.to_owned())]
}

pub(super) fn delivered(name: &str, records: u64, bytes: u64) {
    let l = labels(name);
    ::metrics::counter!("weir_firehose_delivered_records_total", &l).increment(records);
    ::metrics::counter!("weir_firehose_delivered_bytes_total", &l).increment(bytes);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    ::metrics::gauge!("weir_firehose_last_delivery_timestamp_seconds", &l).set(now);
}

pub(super) fn retried(name: &str, records: u64, bytes: u64) {
    let l = labels(name);
    ::metrics::counter!("weir_firehose_retried_records_total", &l).increment(records);
    ::metrics::counter!("weir_firehose_retried_bytes_total", &l).increment(bytes);
}

pub(super) fn failed(name: &str, records: u64, bytes: u64) {
    let l = labels(name);
    ::metrics::counter!("weir_firehose_failed_records_total", &l).increment(records);
    ::metrics::counter!("weir_firehose_failed_bytes_total", &l).increment(bytes);
}

/// A failed attempt at a batch, by cause (`disk_full` or `destination`).
pub(super) fn failure(name: &str, reason: &'static str) {
    let l = [("delivery_stream", name.to_owned()), ("reason", reason.to_owned())];
    ::metrics::counter!("weir_firehose_delivery_failures_total", &l).increment(1);
}

/// Whether a batch of the delivery stream waits for its next attempt.
pub(super) fn paused(name: &str, paused: bool) {
    let v = if paused { 1.0 } else { 0.0 };
    ::metrics::gauge!("weir_firehose_delivery_paused", &labels(name)).set(v);
}
