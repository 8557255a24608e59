//! Shared by the firehose tests that kill collectors during delivery
//! (`firehose_crash`, `jetstream_firehose`): a [`Writer`] whose every attempt
//! of a record has its own payload and which remembers where each
//! acknowledged one was stored, the delivered objects read back
//! ([`delivered`]), and the exactly-once check ([`assert_exactly_once`]):
//! every acknowledged record in exactly one object, nothing delivered that
//! was never sent, no `.tmp` file left, and per shard the objects in
//! sequence order without overlap, each holding its records in order.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use weir_tests::harness::files;

/// Where the store put an acknowledged record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub shard: String,
    /// Its 39-digit sequence number as a number.
    pub sequence: u128,
}

/// What a writer has done, across collector kills. Every attempt of a record
/// has its own payload (`rec-<i>-<attempt>`): an attempt whose answer a kill
/// lost may still have been stored, and may then be delivered too, but never
/// twice.
#[derive(Debug)]
pub struct Writer {
    /// Records to write in all; [`finish`](Self::finish) lowers it.
    total: usize,
    /// Records per PutRecords call.
    batch: usize,
    /// Next record never sent.
    next: usize,
    /// Records to send again, with their next attempt number.
    retry: Vec<(usize, u32)>,
    /// Payloads the collector acknowledged, and where they were stored.
    pub acked: BTreeMap<String, Stored>,
    /// Every payload sent.
    pub sent: BTreeSet<String>,
    /// Records acknowledged (any attempt).
    pub done: BTreeSet<usize>,
}

impl Writer {
    /// A writer of `total` records, `batch` per call.
    pub fn new(total: usize, batch: usize) -> Self {
        Self {
            total,
            batch,
            next: 0,
            retry: Vec::new(),
            acked: BTreeMap::new(),
            sent: BTreeSet::new(),
            done: BTreeSet::new(),
        }
    }

    /// The next batch: retries first, then new records.
    fn take(&mut self) -> Vec<(usize, u32)> {
        let mut batch: Vec<(usize, u32)> =
            self.retry.drain(..self.retry.len().min(self.batch)).collect();
        while batch.len() < self.batch && self.next < self.total {
            batch.push((self.next, 0));
            self.next += 1;
        }
        batch
    }

    /// `n` more records to write.
    pub fn add(&mut self, n: usize) {
        self.total += n;
    }

    /// No new records from now on; those sent still get retried until
    /// acknowledged.
    pub fn finish(&mut self) {
        self.total = self.next;
    }

    /// Every record so far acknowledged.
    pub fn complete(&self) -> bool {
        self.done.len() == self.total
    }
}

/// The payload of attempt `attempt` of record `i`.
pub fn payload(i: usize, attempt: u32) -> String {
    format!("rec-{i:06}-{attempt}")
}

/// One PutRecords call of the writer's next batch into `stream`: `Ok(n)`
/// with the records it carried (0: nothing left to send); records refused
/// in the answer, and all of them when the call fails (the collector is
/// gone), go back for another attempt.
///
/// # Errors
/// The call failed (the error, for a message).
pub async fn put_next(
    client: &Client,
    stream: &str,
    writer: &Mutex<Writer>,
) -> Result<usize, String> {
    let batch = {
        let mut w = writer.lock().expect("writer");
        let b = w.take();
        for &(i, a) in &b {
            w.sent.insert(payload(i, a));
        }
        b
    };
    if batch.is_empty() {
        return Ok(0);
    }
    let entries: Vec<PutRecordsRequestEntry> = batch
        .iter()
        .map(|&(i, a)| {
            PutRecordsRequestEntry::builder()
                .partition_key(format!("key-{i}"))
                .data(Blob::new(payload(i, a)))
                .build()
                .expect("entry")
        })
        .collect();
    let result = client.put_records().stream_name(stream).set_records(Some(entries)).send().await;
    let mut w = writer.lock().expect("writer");
    match result {
        Ok(out) => {
            for (&(i, a), r) in batch.iter().zip(out.records()) {
                let stored = r.shard_id().zip(r.sequence_number().and_then(|s| s.parse().ok()));
                match stored {
                    Some((shard, sequence)) if r.error_code().is_none() => {
                        w.acked.insert(payload(i, a), Stored { shard: shard.to_owned(), sequence });
                        w.done.insert(i);
                    }
                    _ => w.retry.push((i, a + 1)),
                }
            }
            Ok(batch.len())
        }
        Err(e) => {
            w.retry.extend(batch.iter().map(|&(i, a)| (i, a + 1)));
            Err(format!("{e:?}"))
        }
    }
}

/// The objects found under a destination directory: each one's lines (its
/// records, newline-delimited), and the `.tmp` files left.
#[derive(Debug, Default)]
pub struct Objects {
    pub objects: BTreeMap<PathBuf, Vec<String>>,
    pub temps: Vec<PathBuf>,
}

impl Objects {
    /// Every record line, with the number of objects holding it.
    pub fn counts(&self) -> BTreeMap<&str, usize> {
        let mut out = BTreeMap::new();
        for line in self.objects.values().flatten() {
            *out.entry(line.as_str()).or_insert(0) += 1;
        }
        out
    }

    /// Whether every one of `payloads` is in some object.
    pub fn holds(&self, payloads: &[String]) -> bool {
        let counts = self.counts();
        payloads.iter().all(|p| counts.contains_key(p.as_str()))
    }

    /// Record lines in all objects.
    pub fn records(&self) -> usize {
        self.objects.values().map(Vec::len).sum()
    }
}

/// Every object under `dir` (whole objects only: each ends with a newline).
pub fn delivered(dir: &Path) -> Objects {
    let mut out = Objects::default();
    for p in files(dir) {
        if p.to_string_lossy().ends_with(".tmp") {
            out.temps.push(p);
        } else {
            let text = std::fs::read_to_string(&p).expect("read object");
            assert!(text.ends_with('\n'), "{}: a whole object", p.display());
            out.objects.insert(p, text.lines().map(str::to_owned).collect());
        }
    }
    out
}

/// Shard and first and last sequence number from an object's file name,
/// `<delivery stream>-<shard id>-<first>-<last>` (collector/src/firehose/
/// destination.rs, "Object naming").
fn source_of(path: &Path, delivery_stream: &str) -> (String, u128, u128) {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let parsed = name.strip_prefix(&format!("{delivery_stream}-")).and_then(|rest| {
        let mut parts = rest.rsplitn(3, '-');
        let last = parts.next()?.parse().ok()?;
        let first = parts.next()?.parse().ok()?;
        Some((parts.next()?.to_owned(), first, last))
    });
    parsed.unwrap_or_else(|| panic!("{}: not an object name of {delivery_stream}", path.display()))
}

/// Checks the firehose's promise on the objects of `delivery_stream` in
/// `objects`, for the records `writer` sent: every acknowledged record in
/// exactly one object, every delivered record one that was sent, no `.tmp`
/// file; per shard the objects' sequence ranges in order without overlap, and
/// every record's object of its own shard, within that object's range, after
/// the records before it. Returns the records delivered.
pub fn assert_exactly_once(objects: &Objects, writer: &Writer, delivery_stream: &str) -> usize {
    assert!(objects.temps.is_empty(), "temp files left: {:?}", objects.temps);
    let counts = objects.counts();
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    let unknown: Vec<_> = counts.keys().filter(|l| !writer.sent.contains(**l)).collect();
    assert!(unknown.is_empty(), "delivered but never sent: {unknown:?}");
    let missing: Vec<_> =
        writer.acked.keys().filter(|p| !counts.contains_key(p.as_str())).collect();
    assert!(missing.is_empty(), "acknowledged but not delivered: {missing:?}");

    let mut by_shard: BTreeMap<String, Vec<(u128, u128, &Path)>> = BTreeMap::new();
    for path in objects.objects.keys() {
        let (shard, first, last) = source_of(path, delivery_stream);
        assert!(first <= last, "{}: first after last", path.display());
        by_shard.entry(shard).or_default().push((first, last, path));
    }
    for (shard, mut list) in by_shard {
        list.sort();
        for pair in list.windows(2) {
            assert!(
                pair[0].1 < pair[1].0,
                "{shard}: objects overlap: {} and {}",
                pair[0].2.display(),
                pair[1].2.display()
            );
        }
        // Records not acknowledged have no known sequence number; every
        // acknowledged one must come after the one before it.
        let mut previous = None;
        for (first, last, path) in list {
            for line in &objects.objects[path] {
                let Some(stored) = writer.acked.get(line) else { continue };
                assert_eq!(stored.shard, shard, "{line} in an object of another shard");
                assert!(
                    (first..=last).contains(&stored.sequence),
                    "{line} ({}) outside the range of {}",
                    stored.sequence,
                    path.display()
                );
                assert!(
                    previous.is_none_or(|p| p < stored.sequence),
                    "{shard}: {line} out of order in {}",
                    path.display()
                );
                previous = Some(stored.sequence);
            }
        }
    }
    counts.len()
}

/// Polls the async `cond` (every 50 ms) until it holds or `timeout` passes;
/// returns whether it held. For tests whose writer runs on the same
/// runtime, which the harness's blocking `wait_for` would starve.
pub async fn wait_until<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
