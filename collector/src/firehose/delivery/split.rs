//! Partition splitting: a batch's records grouped by their partition key
//! values (dynamic partitioning; one group without keys), in order of first
//! appearance, with the records whose values cannot be extracted and those
//! the output format cannot hold set apart for the error output.

use std::collections::BTreeMap;

use crate::firehose::config::RecordFormat;
use crate::firehose::encode::record_len;
use crate::firehose::partition::Partitioner;
use crate::store::StoredRecord;

/// A batch split by partition key values, and the records whose values could
/// not be extracted.
pub(super) struct Split {
    pub(super) groups: Vec<(BTreeMap<String, String>, Vec<StoredRecord>)>,
    pub(super) failed: Vec<(StoredRecord, String)>,
    /// Records the output format cannot hold (Parquet: not a JSON object, or
    /// a field that does not convert), with the reason.
    pub(super) unconvertible: Vec<(StoredRecord, String)>,
}

/// Splits a batch by partition key values (one group without keys).
pub(super) fn split(
    records: Vec<StoredRecord>,
    format: &RecordFormat,
    partitioner: &Partitioner,
) -> Split {
    let mut unconvertible = Vec::new();
    let records: Vec<StoredRecord> = match format {
        RecordFormat::Parquet(parquet) => records
            .into_iter()
            .filter_map(|r| match parquet.check(&r) {
                Ok(()) => Some(r),
                Err(e) => {
                    unconvertible.push((r, e.to_string()));
                    None
                }
            })
            .collect(),
        RecordFormat::AsIs | RecordFormat::NewlineDelimited => records,
    };
    if partitioner.is_empty() {
        return Split {
            groups: vec![(BTreeMap::new(), records)],
            failed: Vec::new(),
            unconvertible,
        };
    }
    let mut index: BTreeMap<BTreeMap<String, String>, usize> = BTreeMap::new();
    let mut groups: Vec<(BTreeMap<String, String>, Vec<StoredRecord>)> = Vec::new();
    let mut failed = Vec::new();
    for r in records {
        match partitioner.extract(&r.data) {
            Ok(values) => match index.get(&values) {
                Some(&i) => groups[i].1.push(r),
                None => {
                    index.insert(values.clone(), groups.len());
                    groups.push((values, vec![r]));
                }
            },
            Err(reason) => failed.push((r, reason)),
        }
    }
    Split { groups, failed, unconvertible }
}

impl Split {
    /// Records and bytes of the whole batch.
    pub(super) fn totals(&self, format: &RecordFormat) -> (u64, u64) {
        let all = self
            .groups
            .iter()
            .flat_map(|(_, rs)| rs.iter())
            .chain(self.failed.iter().map(|(r, _)| r))
            .chain(self.unconvertible.iter().map(|(r, _)| r));
        all.fold((0, 0), |(n, b), r| (n + 1, b + record_len(r, format) as u64))
    }
}
