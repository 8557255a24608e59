//! Firehose delivery streams to the directory destination, against the real
//! store: grouping by the buffering hints, compression, prefixes,
//! exactly-once across a crash between object and checkpoint, resharding
//! mid-delivery, retries with backoff by the injected clock, and a batch
//! failing past its retry duration going to the error output (in the
//! destination or a backup directory), also across a crash.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use weir_collector::firehose::{
    BufferingHints, Compression, DeliveryConfig, DeliveryStream, Destination, DirectoryDestination,
    FirehoseError, PollReport, RecordFormat,
};
use weir_collector::store::{
    CreateStreamOptions, LogStore, ManualClock, NewRecord, SequenceNumber, StoreConfig, StreamStore,
};

/// 2023-11-14T22:13:20Z.
const T0: u64 = 1_700_000_000_000;
const STREAM: &str = "events";
const NAME: &str = "events-to-disk";

fn store_config() -> StoreConfig {
    StoreConfig {
        segment_max_bytes: 256 * 1024,
        retention_check_interval: Duration::from_secs(24 * 3600),
        ..StoreConfig::default()
    }
}

async fn open_store(dir: &Path, clock: &ManualClock) -> LogStore {
    LogStore::open_with_clock(dir, store_config(), Arc::new(clock.clone()))
        .await
        .expect("open store")
}

async fn put(store: &LogStore, records: &[(String, Vec<u8>)]) {
    let batch = records
        .iter()
        .map(|(key, data)| NewRecord {
            partition_key: key.clone(),
            data: Bytes::from(data.clone()),
            explicit_hash_key: None,
            producer_timestamp_ms: None,
        })
        .collect();
    let results = store.append(STREAM, batch).await.expect("append");
    for r in results {
        r.expect("record appended");
    }
}

fn config(
    size_mib: u32,
    interval_secs: u32,
    format: RecordFormat,
    compression: Compression,
) -> DeliveryConfig {
    DeliveryConfig {
        buffering: BufferingHints { size_mib, interval_secs },
        format,
        compression,
        prefix: "data/!{timestamp:yyyy/MM/dd/HH}/".to_owned(),
        ..DeliveryConfig::new(NAME, STREAM)
    }
}

/// An object read back: key, first sequence number, decompressed body.
#[derive(Debug)]
struct Object {
    key: String,
    first: SequenceNumber,
    last: SequenceNumber,
    body: Vec<u8>,
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            walk(root, &path, out);
        } else {
            let key = path.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
            out.push((key, path));
        }
    }
}

/// Every object under `root`, sorted by first sequence number.
fn objects(root: &Path) -> Vec<Object> {
    let mut files = Vec::new();
    if root.exists() {
        walk(root, root, &mut files);
    }
    let mut out = Vec::new();
    for (key, path) in files {
        assert!(!key.ends_with(".tmp"), "temp file left: {key}");
        if key.ends_with(".json") {
            // Error output (see `error_objects`).
            continue;
        }
        let raw = std::fs::read(&path).expect("read object");
        let (stem, body) = if let Some(stem) = key.strip_suffix(".gz") {
            assert_eq!(&raw[..2], &[0x1f, 0x8b], "gzip magic");
            let mut body = Vec::new();
            flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut body).expect("gunzip");
            (stem, body)
        } else if let Some(stem) = key.strip_suffix(".zst") {
            assert_eq!(&raw[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd magic");
            (stem, zstd::decode_all(&raw[..]).expect("unzstd"))
        } else {
            (key.as_str(), raw)
        };
        let mut parts = stem.rsplitn(3, '-');
        let last: SequenceNumber = parts.next().expect("last").parse().expect("last seq");
        let first: SequenceNumber = parts.next().expect("first").parse().expect("first seq");
        out.push(Object { key: key.clone(), first, last, body });
    }
    out.sort_by_key(|o| o.first);
    out
}

fn lines(objects: &[Object]) -> Vec<String> {
    objects
        .iter()
        .flat_map(|o| {
            let text = String::from_utf8(o.body.clone()).expect("utf-8");
            assert!(text.ends_with('\n'), "{} ends with a newline", o.key);
            text.lines().map(str::to_owned).collect::<Vec<_>>()
        })
        .collect()
}

async fn open_delivery<D: Destination>(
    store: &LogStore,
    dest: D,
    config: DeliveryConfig,
    checkpoint: &Path,
    clock: &ManualClock,
) -> (DeliveryStream<LogStore, D>, PollReport) {
    DeliveryStream::open(store.clone(), dest, config, checkpoint, Arc::new(clock.clone()))
        .await
        .expect("open delivery stream")
}

#[tokio::test]
async fn groups_by_hints_compresses_and_prefixes() {
    for (format, compression) in [
        (RecordFormat::AsIs, Compression::None),
        (RecordFormat::NewlineDelimited, Compression::Gzip),
        (RecordFormat::NewlineDelimited, Compression::Zstd),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::new(T0);
        let store = open_store(&dir.path().join("store"), &clock).await;
        store.create_stream(STREAM, CreateStreamOptions::default()).await.expect("create");
        let out = dir.path().join("out");
        let (mut delivery, _) = open_delivery(
            &store,
            DirectoryDestination::new(&out),
            config(1, 60, format.clone(), compression),
            &dir.path().join("checkpoint.json"),
            &clock,
        )
        .await;

        // 250 records of 10,000 bytes: a 1 MiB batch holds 104 of them
        // (10,001 bytes each with its newline).
        let records: Vec<(String, Vec<u8>)> = (0..250)
            .map(|i| {
                let mut data = format!("record {i:05} ").into_bytes();
                data.resize(10_000, b'x');
                (format!("key-{}", i % 7), data)
            })
            .collect();
        put(&store, &records).await;
        let report = delivery.poll().await.expect("poll");
        let counts: Vec<usize> = report.delivered.iter().map(|d| d.records).collect();
        assert_eq!(counts, [104, 104], "{compression:?}: flushed by size");
        assert!(report.delivered.iter().all(|d| d.raw_bytes <= 1024 * 1024));

        // Not yet due by interval.
        clock.advance(59_000);
        assert!(delivery.poll().await.expect("poll").delivered.is_empty());
        clock.advance(1_000);
        let report = delivery.poll().await.expect("poll");
        assert_eq!(report.delivered.iter().map(|d| d.records).collect::<Vec<_>>(), [42]);

        // An hour later: the next batch's prefix follows its oldest record.
        clock.set(T0 + 3_600_000);
        put(&store, &[("late".to_owned(), b"late record".to_vec())]).await;
        assert!(delivery.poll().await.expect("poll").delivered.is_empty());
        clock.advance(60_000);
        assert_eq!(delivery.poll().await.expect("poll").delivered.len(), 1);

        let objs = objects(&out);
        assert_eq!(objs.len(), 4);
        for (i, o) in objs.iter().enumerate() {
            let hour = if i < 3 { "22" } else { "23" };
            let expected_prefix = format!("data/2023/11/14/{hour}/{NAME}-shardId-000000000000-");
            assert!(o.key.starts_with(&expected_prefix), "{}", o.key);
            assert!(o.key.ends_with(compression.extension()), "{}", o.key);
            assert!(o.first <= o.last);
        }
        let mut expected: Vec<u8> = Vec::new();
        for (_, data) in records.iter().chain([&("late".to_owned(), b"late record".to_vec())]) {
            expected.extend_from_slice(data);
            if format == RecordFormat::NewlineDelimited {
                expected.push(b'\n');
            }
        }
        let got: Vec<u8> = objs.iter().flat_map(|o| o.body.iter().copied()).collect();
        assert!(
            got == expected,
            "{compression:?}: objects give back exactly the records, in order"
        );
        store.close().await;
    }
}

/// Writes each object; after `allowed` objects, writes one more and then
/// fails, as a crash right after the object is durable would.
struct CrashingDestination {
    inner: DirectoryDestination,
    allowed: AtomicUsize,
}

impl Destination for CrashingDestination {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), FirehoseError> {
        self.inner.put(key, body).await?;
        if self
            .allowed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_err()
        {
            return Err(FirehoseError::Destination {
                key: key.to_owned(),
                reason: "simulated crash".to_owned(),
            });
        }
        Ok(())
    }
}

fn numbered(range: std::ops::Range<usize>, keys: usize) -> Vec<(String, Vec<u8>)> {
    range
        .map(|i| {
            let key = format!("key-{}", i % keys);
            let data = format!("{key}:{i:06}:{}", "p".repeat(i % 50)).into_bytes();
            (key, data)
        })
        .collect()
}

fn assert_exactly_once(got: &[String], put: &[(String, Vec<u8>)]) {
    let mut seen = BTreeSet::new();
    for line in got {
        assert!(seen.insert(line.clone()), "record delivered twice: {line}");
    }
    let expected: BTreeSet<String> =
        put.iter().map(|(_, d)| String::from_utf8(d.clone()).expect("utf-8")).collect();
    assert_eq!(seen, expected, "every record delivered");
    // Per key, in put order.
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for line in got {
        let mut parts = line.split(':');
        let key = parts.next().expect("key").to_owned();
        let n = parts.next().expect("number").to_owned();
        if let Some(prev) = last.insert(key.clone(), n.clone()) {
            assert!(prev < n, "{key}: {prev} delivered before {n}");
        }
    }
}

#[tokio::test]
async fn crash_between_object_and_checkpoint_delivers_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store_dir = dir.path().join("store");
    let out = dir.path().join("out");
    let checkpoint = dir.path().join("checkpoint.json");
    let cfg = config(1, 0, RecordFormat::NewlineDelimited, Compression::Gzip);
    let records = numbered(0..3_000, 13);

    let store = open_store(&store_dir, &clock).await;
    store
        .create_stream(STREAM, CreateStreamOptions { shard_count: 2, ..Default::default() })
        .await
        .expect("create");
    put(&store, &records[..1_000]).await;
    let dest = CrashingDestination {
        inner: DirectoryDestination::new(&out),
        allowed: AtomicUsize::new(1),
    };
    let (mut delivery, _) = open_delivery(&store, dest, cfg.clone(), &checkpoint, &clock).await;
    let err = delivery.poll().await.expect_err("simulated crash");
    assert!(matches!(err, FirehoseError::Destination { .. }), "{err}");
    drop(delivery);
    store.close().await;
    drop(store);

    // The object of the interrupted batch is there; the checkpoint still
    // names it as pending.
    let before = objects(&out);
    assert_eq!(before.len(), 2);
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&checkpoint).expect("checkpoint")).expect("json");
    let pending: Vec<String> = saved["shards"]
        .as_object()
        .expect("shards")
        .values()
        .filter_map(|s| s["pending"]["key"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(pending.len(), 1, "{saved}");
    assert!(before.iter().any(|o| o.key == pending[0]));

    // Restart: the same batch is delivered again under the same key.
    let store = open_store(&store_dir, &clock).await;
    let (mut delivery, report) =
        open_delivery(&store, DirectoryDestination::new(&out), cfg, &checkpoint, &clock).await;
    assert_eq!(report.delivered.iter().map(|d| d.key.clone()).collect::<Vec<_>>(), pending);
    put(&store, &records[1_000..]).await;
    delivery.poll().await.expect("poll");
    assert!(delivery.poll().await.expect("poll").delivered.is_empty());
    store.close().await;

    let objs = objects(&out);
    // No two objects of a shard overlap.
    let mut by_shard: BTreeMap<u64, Vec<(SequenceNumber, SequenceNumber)>> = BTreeMap::new();
    for o in &objs {
        by_shard.entry(o.first.shard_index).or_default().push((o.first, o.last));
    }
    for ranges in by_shard.values() {
        for w in ranges.windows(2) {
            assert!(w[0].1 < w[1].0, "overlapping objects {w:?}");
        }
    }
    assert_exactly_once(&lines(&objs), &records);
}

#[tokio::test]
async fn resharding_mid_delivery_keeps_order_and_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = open_store(&dir.path().join("store"), &clock).await;
    store.create_stream(STREAM, CreateStreamOptions::default()).await.expect("create");
    let out = dir.path().join("out");
    let (mut delivery, _) = open_delivery(
        &store,
        DirectoryDestination::new(&out),
        config(1, 60, RecordFormat::NewlineDelimited, Compression::Zstd),
        &dir.path().join("checkpoint.json"),
        &clock,
    )
    .await;
    let records = numbered(0..1_500, 17);

    put(&store, &records[..500]).await;
    delivery.poll().await.expect("poll");
    // Split while the parent's records are still buffered.
    store.split_shard(STREAM, "shardId-000000000000", 1u128 << 127).await.expect("split");
    put(&store, &records[500..1_000]).await;
    let report = delivery.poll().await.expect("poll");
    assert_eq!(report.shards_done, ["shardId-000000000000"]);
    // Merge the children while theirs are buffered.
    store
        .merge_shards(STREAM, "shardId-000000000001", "shardId-000000000002")
        .await
        .expect("merge");
    put(&store, &records[1_000..]).await;
    let report = delivery.poll().await.expect("poll");
    assert_eq!(report.shards_done, ["shardId-000000000001", "shardId-000000000002"]);
    clock.advance(60_000);
    let report = delivery.poll().await.expect("poll");
    assert_eq!(report.delivered.len(), 1, "the merged child's buffer flushed by interval");
    assert_eq!(report.delivered[0].shard_id, "shardId-000000000003");
    assert!(delivery.poll().await.expect("poll").delivered.is_empty());
    store.close().await;

    let objs = objects(&out);
    let shards: BTreeSet<u64> = objs.iter().map(|o| o.first.shard_index).collect();
    assert_eq!(shards, BTreeSet::from([0, 1, 2, 3]));
    assert_exactly_once(&lines(&objs), &records);
}

/// Fails the first `failures` puts without writing anything.
struct FailingDestination {
    inner: DirectoryDestination,
    failures: AtomicUsize,
}

impl Destination for FailingDestination {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), FirehoseError> {
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(FirehoseError::Destination {
                key: key.to_owned(),
                reason: "unavailable".to_owned(),
            });
        }
        self.inner.put(key, body).await
    }
}

#[tokio::test]
async fn a_failed_poll_resumes_from_the_checkpoint_with_the_same_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = open_store(&dir.path().join("store"), &clock).await;
    store.create_stream(STREAM, CreateStreamOptions::default()).await.expect("create");
    let out = dir.path().join("out");
    let dest = FailingDestination {
        inner: DirectoryDestination::new(&out),
        failures: AtomicUsize::new(2),
    };
    let (mut delivery, _) = open_delivery(
        &store,
        dest,
        config(1, 0, RecordFormat::NewlineDelimited, Compression::None),
        &dir.path().join("checkpoint.json"),
        &clock,
    )
    .await;
    let records = numbered(0..400, 5);
    put(&store, &records[..200]).await;
    assert!(delivery.poll().await.is_err());
    // More records arrive meanwhile; the failed batch keeps its boundaries.
    put(&store, &records[200..]).await;
    // Backoff: nothing is tried before 100 ms have passed (by the clock).
    let waiting = delivery.poll().await.expect("poll while backing off");
    assert_eq!((waiting.delivered.len(), waiting.failed_attempts), (0, 0));
    clock.advance(100);
    assert!(delivery.poll().await.is_err());
    clock.advance(150);
    let waiting = delivery.poll().await.expect("poll while backing off");
    assert_eq!(waiting.failed_attempts, 0, "the second wait is 200 ms");
    clock.advance(50);
    let report = delivery.poll().await.expect("poll");
    let counts: Vec<usize> = report.delivered.iter().map(|d| d.records).collect();
    assert_eq!(counts, [200, 200], "the pending batch first, as it was fixed");
    assert!(objects(&out).len() == 2);
    store.close().await;
    assert_exactly_once(&lines(&objects(&out)), &records);
}

/// Fails the first `fail_main` puts of objects; error output (keys under
/// `errors/`) is written, and the first `crash_errors` of those then fail as
/// a crash right after the write would.
struct ScriptedDestination {
    inner: DirectoryDestination,
    fail_main: AtomicUsize,
    crash_errors: AtomicUsize,
}

fn take_one(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
}

impl Destination for ScriptedDestination {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), FirehoseError> {
        if key.starts_with("errors/") {
            self.inner.put(key, body).await?;
            if take_one(&self.crash_errors) {
                return Err(FirehoseError::Destination {
                    key: key.to_owned(),
                    reason: "simulated crash".to_owned(),
                });
            }
            return Ok(());
        }
        if take_one(&self.fail_main) {
            return Err(FirehoseError::Rejected {
                code: "Test.Unavailable".to_owned(),
                message: "try again".to_owned(),
            });
        }
        self.inner.put(key, body).await
    }
}

/// The error output objects under `root`: key and JSON lines.
fn error_objects(root: &Path) -> Vec<(String, Vec<serde_json::Value>)> {
    let mut files = Vec::new();
    if root.exists() {
        walk(root, root, &mut files);
    }
    files.sort();
    files
        .into_iter()
        .filter(|(key, _)| key.ends_with(".json"))
        .map(|(key, path)| {
            let text = std::fs::read_to_string(&path).expect("read error object");
            let lines =
                text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
            (key, lines)
        })
        .collect()
}

fn raw_data(line: &serde_json::Value) -> String {
    use base64::Engine;
    let b64 = line["rawData"].as_str().expect("rawData");
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
    String::from_utf8(raw).expect("utf-8")
}

#[tokio::test]
async fn a_batch_failing_past_the_retry_duration_goes_to_the_error_output() {
    for backup in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::new(T0);
        let store = open_store(&dir.path().join("store"), &clock).await;
        store.create_stream(STREAM, CreateStreamOptions::default()).await.expect("create");
        let out = dir.path().join("out");
        let backup_dir = dir.path().join("backup");
        // Attempts at 0, 0.1, 0.3, 0.7, 1.5 and 3.1 s: the sixth fails past
        // the 2 s retry duration.
        let dest = ScriptedDestination {
            inner: DirectoryDestination::new(&out),
            fail_main: AtomicUsize::new(6),
            crash_errors: AtomicUsize::new(0),
        };
        let cfg = DeliveryConfig {
            retry_duration_secs: 2,
            ..config(1, 0, RecordFormat::NewlineDelimited, Compression::Gzip)
        };
        let (mut delivery, _) = DeliveryStream::open_with_backup(
            store.clone(),
            dest,
            backup.then(|| DirectoryDestination::new(&backup_dir)),
            cfg,
            dir.path().join("checkpoint.json"),
            Arc::new(clock.clone()),
        )
        .await
        .expect("open");
        let records = numbered(0..50, 3);
        put(&store, &records).await;
        let mut attempts = 0;
        let mut errors = Vec::new();
        for _ in 0..100 {
            match delivery.poll().await {
                Ok(report) => {
                    attempts += report.failed_attempts;
                    errors.extend(report.errors);
                    if !errors.is_empty() {
                        break;
                    }
                }
                Err(e) => {
                    assert!(e.to_string().contains("Test.Unavailable"), "{e}");
                    attempts += 1;
                }
            }
            clock.advance(100);
        }
        assert_eq!(attempts, 6, "backup {backup}");
        assert_eq!(errors.len(), 1);
        assert!(objects(&out).is_empty(), "nothing delivered");
        let root = if backup { &backup_dir } else { &out };
        let errs = error_objects(root);
        assert_eq!(errs.len(), 1, "one error object");
        let (key, rows) = &errs[0];
        assert!(
            key.starts_with(&format!(
                "errors/delivery-failed/2023/11/14/22/{NAME}-shardId-000000000000-"
            )),
            "{key}"
        );
        assert_eq!(*key, errors[0].key);
        assert_eq!(rows.len(), 50);
        for (line, (_, data)) in rows.iter().zip(&records) {
            assert_eq!(raw_data(line), String::from_utf8(data.clone()).expect("utf-8"));
            assert_eq!(line["errorCode"], "Test.Unavailable");
            assert_eq!(line["attemptsMade"], 6);
            assert!(line["errorMessage"].as_str().is_some_and(|m| m.contains("try again")));
            assert_eq!(line["arrivalTimestamp"], T0);
        }
        // The delivery stream moved on: the next records are delivered.
        let more = numbered(50..60, 3);
        put(&store, &more).await;
        let report = delivery.poll().await.expect("poll");
        assert_eq!(report.delivered.iter().map(|d| d.records).sum::<usize>(), 10);
        let delivered: Vec<Object> =
            objects(&out).into_iter().filter(|o| !o.key.starts_with("errors/")).collect();
        assert_exactly_once(&lines(&delivered), &more);
        assert!(delivery.checkpoint().shards.values().all(|s| s.pending.is_none()));
        store.close().await;
    }
}

#[tokio::test]
async fn a_crash_while_writing_the_error_output_writes_it_again_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store_dir = dir.path().join("store");
    let out = dir.path().join("out");
    let checkpoint = dir.path().join("checkpoint.json");
    // Retry duration 0: the first failure sends the batch to the error output.
    let cfg = DeliveryConfig {
        retry_duration_secs: 0,
        ..config(1, 0, RecordFormat::NewlineDelimited, Compression::None)
    };
    let store = open_store(&store_dir, &clock).await;
    store.create_stream(STREAM, CreateStreamOptions::default()).await.expect("create");
    let records = numbered(0..30, 2);
    put(&store, &records).await;
    let dest = ScriptedDestination {
        inner: DirectoryDestination::new(&out),
        fail_main: AtomicUsize::new(1),
        crash_errors: AtomicUsize::new(1),
    };
    let (mut delivery, _) = open_delivery(&store, dest, cfg.clone(), &checkpoint, &clock).await;
    let err = delivery.poll().await.expect_err("simulated crash");
    assert!(err.to_string().contains("simulated crash"), "{err}");
    let pending = delivery.checkpoint().shards.values().find_map(|s| s.pending.clone());
    let failure = pending.and_then(|p| p.error).expect("pending batch marked for the error output");
    assert_eq!(failure.error_code, "Test.Unavailable");
    drop(delivery);
    store.close().await;
    drop(store);

    // Restart with a destination that works: the batch still goes to the
    // error output (same object), not to the destination.
    let store = open_store(&store_dir, &clock).await;
    let (mut delivery, report) =
        open_delivery(&store, DirectoryDestination::new(&out), cfg, &checkpoint, &clock).await;
    assert!(report.delivered.is_empty());
    assert_eq!(report.errors.len(), 1);
    let errs = error_objects(&out);
    assert_eq!(errs.len(), 1, "the same error object, written again");
    let got: Vec<String> = errs[0].1.iter().map(raw_data).collect();
    assert_exactly_once(&got, &records);
    assert!(objects(&out).is_empty(), "nothing delivered to the destination");
    let more = numbered(30..40, 2);
    put(&store, &more).await;
    delivery.poll().await.expect("poll");
    let delivered: Vec<Object> =
        objects(&out).into_iter().filter(|o| !o.key.starts_with("errors/")).collect();
    assert_exactly_once(&lines(&delivered), &more);
    store.close().await;
}

#[tokio::test]
async fn the_retry_duration_counts_from_the_first_failure_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store_dir = dir.path().join("store");
    let out = dir.path().join("out");
    let checkpoint = dir.path().join("checkpoint.json");
    let cfg = DeliveryConfig {
        retry_duration_secs: 2,
        ..config(1, 0, RecordFormat::NewlineDelimited, Compression::None)
    };
    let failing = || ScriptedDestination {
        inner: DirectoryDestination::new(&out),
        fail_main: AtomicUsize::new(usize::MAX),
        crash_errors: AtomicUsize::new(0),
    };
    let store = open_store(&store_dir, &clock).await;
    store.create_stream(STREAM, CreateStreamOptions::default()).await.expect("create");
    let records = numbered(0..10, 2);
    put(&store, &records).await;
    let (mut delivery, _) =
        open_delivery(&store, failing(), cfg.clone(), &checkpoint, &clock).await;
    delivery.poll().await.expect_err("the destination fails");
    let pending = delivery.checkpoint().shards.values().find_map(|s| s.pending.clone());
    assert_eq!(pending.and_then(|p| p.first_failure_ms), Some(T0), "saved at the first failure");
    drop(delivery);
    store.close().await;
    drop(store);

    // Restart 1.5 s later: opening retries, fails, and still opens.
    clock.advance(1_500);
    let store = open_store(&store_dir, &clock).await;
    let (mut delivery, report) = open_delivery(&store, failing(), cfg, &checkpoint, &clock).await;
    assert_eq!((report.failed_attempts, report.errors.len()), (1, 0));
    // 2.1 s after the first failure (not after the restart): error output.
    clock.advance(600);
    let report = delivery.poll().await.expect("poll");
    assert_eq!(report.errors.len(), 1, "{report:?}");
    let errs = error_objects(&out);
    assert_eq!(errs.len(), 1);
    let got: Vec<String> = errs[0].1.iter().map(raw_data).collect();
    assert_exactly_once(&got, &records);
    assert_eq!(errs[0].1[0]["attemptsMade"], 2, "attempts since the restart");
    assert!(objects(&out).is_empty());
    store.close().await;
}
