//! Dynamic partitioning to the directory destination, against the real
//! store: one object per partition key value with the value in its prefix,
//! records that cannot be partitioned in the error output, and the same
//! objects again after a crash mid-batch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use weir_collector::firehose::{
    BufferingHints, Compression, DeliveryConfig, DeliveryStream, Destination, DirectoryDestination,
    FirehoseError, RecordFormat,
};
use weir_collector::store::{
    CreateStreamOptions, LogStore, ManualClock, NewRecord, StoreConfig, StreamStore,
};

/// 2023-11-14T22:13:20Z.
const T0: u64 = 1_700_000_000_000;
const STREAM: &str = "readings";
const NAME: &str = "readings-by-device";

async fn open_store(dir: &Path, clock: &ManualClock) -> LogStore {
    let config = StoreConfig {
        retention_check_interval: Duration::from_secs(24 * 3600),
        ..StoreConfig::default()
    };
    LogStore::open_with_clock(dir, config, Arc::new(clock.clone())).await.expect("open store")
}

async fn put(store: &LogStore, records: &[String]) {
    let batch = records
        .iter()
        .map(|data| NewRecord {
            partition_key: "k".into(),
            data: Bytes::from(data.clone()),
            explicit_hash_key: None,
            producer_timestamp_ms: None,
        })
        .collect();
    for r in store.append(STREAM, batch).await.expect("append") {
        r.expect("record appended");
    }
}

fn config() -> DeliveryConfig {
    DeliveryConfig {
        buffering: BufferingHints { size_mib: 1, interval_secs: 0 },
        format: RecordFormat::NewlineDelimited,
        compression: Compression::None,
        prefix: "by-device/device=!{partitionKeyFromQuery:device}/site=!{partitionKeyFromQuery:site}/!{timestamp:yyyy/MM/dd}/".into(),
        partition_keys: vec![
            ("device".into(), "device.id".into()),
            ("site".into(), "/site".into()),
        ],
        ..DeliveryConfig::new(NAME, STREAM)
    }
}

/// Records of devices d0..d2 at sites 1 and 2, and (every 10th) records
/// that cannot be partitioned.
fn records(range: std::ops::Range<usize>) -> Vec<String> {
    range
        .map(|i| match i % 10 {
            3 => format!("not json {i}"),
            7 => format!(r#"{{"n":{i},"site":1}}"#),
            _ => format!(r#"{{"n":{i},"device":{{"id":"d{}"}},"site":{}}}"#, i % 3, 1 + i % 2),
        })
        .collect()
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

/// Every file under `root` by key, with its lines.
fn files(root: &Path) -> BTreeMap<String, Vec<String>> {
    let mut found = Vec::new();
    if root.exists() {
        walk(root, root, &mut found);
    }
    found
        .into_iter()
        .map(|(key, path)| {
            assert!(!key.ends_with(".tmp"), "temp file left: {key}");
            let text = std::fs::read_to_string(path).expect("read");
            (key, text.lines().map(str::to_owned).collect())
        })
        .collect()
}

/// Checks the objects and error output under `root` hold exactly `put`:
/// each partitioned record once under its device and site, in order, and
/// each unpartitionable one once in the error output.
fn check(root: &Path, put: &[String]) {
    let mut delivered: Vec<String> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    for (key, lines) in files(root) {
        if let Some(rest) = key.strip_prefix("errors/partitioning-failed/2023/11/14/22/") {
            assert!(rest.starts_with(&format!("{NAME}-shardId-000000000000-")), "{key}");
            for line in lines {
                let v: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
                assert_eq!(v["errorCode"], "DynamicPartitioning.MetadataExtractionFailed");
                assert!(v["errorMessage"].as_str().is_some_and(|m| !m.is_empty()));
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(v["rawData"].as_str().expect("rawData"))
                    .expect("base64");
                failed.push(String::from_utf8(raw).expect("utf-8"));
            }
            continue;
        }
        let rest = key.strip_prefix("by-device/device=").expect("partitioned prefix");
        let (device, rest) = rest.split_once("/site=").expect("site");
        let (site, rest) = rest.split_once('/').expect("date");
        assert!(rest.starts_with(&format!("2023/11/14/{NAME}-shardId-000000000000-")), "{key}");
        let mut last_n = None;
        for line in lines {
            let v: serde_json::Value = serde_json::from_str(&line).expect("JSON record");
            assert_eq!(v["device"]["id"], device, "{key}");
            assert_eq!(v["site"].to_string(), site, "{key}");
            let n = v["n"].as_u64().expect("n");
            assert!(last_n < Some(n), "in order within {key}");
            last_n = Some(n);
            delivered.push(line);
        }
    }
    let mut got: Vec<String> = delivered.into_iter().chain(failed).collect();
    got.sort();
    let mut want = put.to_vec();
    want.sort();
    assert_eq!(got, want, "every record exactly once");
}

#[tokio::test]
async fn splits_batches_by_partition_key_and_sends_the_rest_to_the_error_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = open_store(&dir.path().join("store"), &clock).await;
    store.create_stream(STREAM, CreateStreamOptions::default()).await.expect("create");
    let out = dir.path().join("out");
    let (mut delivery, _) = DeliveryStream::open(
        store.clone(),
        DirectoryDestination::new(&out),
        config(),
        dir.path().join("checkpoint.json"),
        Arc::new(clock.clone()),
    )
    .await
    .expect("open");
    let all = records(0..100);
    put(&store, &all).await;
    let report = delivery.poll().await.expect("poll");
    // d0..d2 at sites 1 and 2 (i % 3, i % 2): six partitions; one error
    // object.
    assert_eq!(report.delivered.len(), 6, "{:?}", report.delivered);
    assert_eq!(report.errors.len(), 1);
    assert_eq!(report.errors[0].records, 20);
    check(&out, &all);
    store.close().await;
}

/// Writes `allowed` objects, then writes one more and fails, as a crash
/// right after it was durable would; after that it writes nothing (the
/// process is gone).
struct CrashingDestination {
    inner: DirectoryDestination,
    allowed: AtomicUsize,
    crashed: AtomicBool,
}

impl Destination for CrashingDestination {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), FirehoseError> {
        if self.crashed.load(Ordering::SeqCst) {
            return Err(FirehoseError::Destination {
                key: key.to_owned(),
                reason: "crashed".to_owned(),
            });
        }
        self.inner.put(key, body).await?;
        if self
            .allowed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_err()
        {
            self.crashed.store(true, Ordering::SeqCst);
            return Err(FirehoseError::Destination {
                key: key.to_owned(),
                reason: "simulated crash".to_owned(),
            });
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_crash_mid_batch_rewrites_the_same_partition_objects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store_dir = dir.path().join("store");
    let checkpoint = dir.path().join("checkpoint.json");
    let out = dir.path().join("out");
    let store = open_store(&store_dir, &clock).await;
    store.create_stream(STREAM, CreateStreamOptions::default()).await.expect("create");
    let all = records(0..60);
    put(&store, &all).await;
    let dest = CrashingDestination {
        inner: DirectoryDestination::new(&out),
        allowed: AtomicUsize::new(2),
        crashed: AtomicBool::new(false),
    };
    let (mut delivery, _) =
        DeliveryStream::open(store.clone(), dest, config(), &checkpoint, Arc::new(clock.clone()))
            .await
            .expect("open");
    delivery.poll().await.expect_err("simulated crash");
    let before = files(&out).len();
    assert_eq!(before, 3, "three partition objects written before the crash");
    drop(delivery);
    store.close().await;
    drop(store);

    let store = open_store(&store_dir, &clock).await;
    let (mut delivery, report) = DeliveryStream::open(
        store.clone(),
        DirectoryDestination::new(&out),
        config(),
        &checkpoint,
        Arc::new(clock.clone()),
    )
    .await
    .expect("reopen");
    assert_eq!(report.delivered.len(), 6, "the whole batch again, same objects");
    let more = records(60..90);
    put(&store, &more).await;
    delivery.poll().await.expect("poll");
    let everything: Vec<String> = all.into_iter().chain(more).collect();
    check(&out, &everything);
    store.close().await;
}

/// Refuses every object of device `d1`; writes everything else.
struct RefusesOneDevice {
    inner: DirectoryDestination,
}

impl Destination for RefusesOneDevice {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), FirehoseError> {
        if key.contains("device=d1/") {
            return Err(FirehoseError::Destination {
                key: key.to_owned(),
                reason: "refused".to_owned(),
            });
        }
        self.inner.put(key, body).await
    }
}

#[tokio::test]
async fn a_partition_that_keeps_failing_goes_alone_to_the_error_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store_dir = dir.path().join("store");
    let checkpoint = dir.path().join("checkpoint.json");
    let out = dir.path().join("out");
    let store = open_store(&store_dir, &clock).await;
    store.create_stream(STREAM, CreateStreamOptions::default()).await.expect("create");
    let all = records(0..60);
    put(&store, &all).await;
    let config = DeliveryConfig { retry_duration_secs: 10, ..config() };
    let dest = RefusesOneDevice { inner: DirectoryDestination::new(&out) };
    let (mut delivery, _) = DeliveryStream::open(
        store.clone(),
        dest,
        config.clone(),
        &checkpoint,
        Arc::new(clock.clone()),
    )
    .await
    .expect("open");
    // Every other partition is written at the first attempt, also those
    // after d1's in the batch.
    delivery.poll().await.expect_err("d1 refused");
    let written = files(&out);
    assert_eq!(written.len(), 4, "d0 and d2 at both sites: {:?}", written.keys());
    assert!(written.keys().all(|k| !k.contains("device=d1/")));
    // A restart on the same checkpoint, then the retry duration runs out.
    drop(delivery);
    let dest = RefusesOneDevice { inner: DirectoryDestination::new(&out) };
    let (mut delivery, _) =
        DeliveryStream::open(store.clone(), dest, config, &checkpoint, Arc::new(clock.clone()))
            .await
            .expect("reopen");
    let mut report = None;
    for _ in 0..40 {
        clock.advance(1_000);
        if let Ok(r) = delivery.poll().await
            && !r.errors.is_empty()
        {
            report = Some(r);
            break;
        }
    }
    let report = report.expect("the batch went to the error output within the retry duration");
    // Only d1's records are in the delivery-failed output; the partitions
    // written before are reported delivered, not failed.
    let failed: usize = report.errors.iter().map(|e| e.records).sum();
    let d1 = all.iter().filter(|r| r.contains(r#""id":"d1""#)).count();
    let unpartitionable = all.iter().filter(|r| !r.contains(r#""id":"#)).count();
    assert_eq!(failed, d1 + unpartitionable, "{:?}", report.errors);
    let mut got = Vec::new();
    for (key, lines) in files(&out) {
        if key.starts_with("errors/") {
            assert!(
                key.starts_with("errors/delivery-failed/")
                    || key.starts_with("errors/partitioning-failed/"),
                "{key}"
            );
            for line in lines {
                let v: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(v["rawData"].as_str().expect("rawData"))
                    .expect("base64");
                let raw = String::from_utf8(raw).expect("utf-8");
                if key.starts_with("errors/delivery-failed/") {
                    assert!(raw.contains(r#""id":"d1""#), "only d1 failed delivery: {raw}");
                    assert_eq!(
                        v["errorMessage"].as_str().map(|m| m.contains("refused")),
                        Some(true)
                    );
                }
                got.push(raw);
            }
        } else {
            assert!(!key.contains("device=d1/"), "{key}");
            got.extend(lines);
        }
    }
    got.sort();
    let mut want = all.clone();
    want.sort();
    assert_eq!(got, want, "every record once: delivered or in the error output");
    store.close().await;
}
