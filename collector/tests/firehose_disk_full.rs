//! Firehose delivery to a directory whose disk is full, by the injected
//! clock: the real directory destination's free-space check refuses the
//! objects (a reserve no disk can meet while "full"); delivery pauses past
//! the retry duration without touching the error output or the checkpoint,
//! backs off, reports the pause, and resumes at the first poll after the
//! destination has room, delivering every record exactly once. And a
//! checkpoint save that failed is saved before the next object is written.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use weir_collector::firehose::delivery::DISK_FULL;
use weir_collector::firehose::state::{CheckpointStore, FileCheckpoints};
use weir_collector::firehose::{
    BufferingHints, Checkpoint, Compression, DeliveryConfig, DeliveryStream, Destination,
    DirectoryDestination, FirehoseError, RecordFormat,
};
use weir_collector::store::{
    CreateStreamOptions, LogStore, ManualClock, NewRecord, StoreConfig, StreamStore,
};

const T0: u64 = 1_700_000_000_000;
const STREAM: &str = "events";
const NAME: &str = "events-to-disk";

async fn store_with_records(dir: &Path, clock: &ManualClock, n: usize) -> (LogStore, Vec<String>) {
    let config = StoreConfig {
        retention_check_interval: Duration::from_secs(24 * 3600),
        ..StoreConfig::default()
    };
    let store =
        LogStore::open_with_clock(dir, config, Arc::new(clock.clone())).await.expect("open store");
    store.create_stream(STREAM, CreateStreamOptions::default()).await.expect("create");
    let payloads: Vec<String> = (0..n).map(|i| format!("rec-{i:04}")).collect();
    let batch = payloads
        .iter()
        .map(|p| NewRecord {
            partition_key: p.clone(),
            data: Bytes::from(p.clone()),
            explicit_hash_key: None,
            producer_timestamp_ms: None,
        })
        .collect();
    for r in store.append(STREAM, batch).await.expect("append") {
        r.expect("record appended");
    }
    (store, payloads)
}

fn config() -> DeliveryConfig {
    DeliveryConfig {
        buffering: BufferingHints { size_mib: 1, interval_secs: 0 },
        format: RecordFormat::NewlineDelimited,
        compression: Compression::None,
        retry_duration_secs: 2,
        ..DeliveryConfig::new(NAME, STREAM)
    }
}

/// Every file under `root`: (path relative to it, content).
fn files(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries {
            let p = e.expect("entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                let rel = p.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
                out.push((rel, std::fs::read_to_string(&p).expect("read")));
            }
        }
    }
    out.sort();
    out
}

/// Every record line delivered under `root`, checked to be there once each.
fn assert_delivered_once(root: &Path, payloads: &[String]) {
    let files = files(root);
    assert!(
        files.iter().all(|(k, _)| !k.ends_with(".tmp") && !k.starts_with("errors/")),
        "{files:?}"
    );
    let mut lines: Vec<String> =
        files.iter().flat_map(|(_, text)| text.lines().map(str::to_owned)).collect();
    lines.sort();
    assert_eq!(lines, payloads, "every record once");
}

/// The real directory destination, its disk "full" while the switch is on:
/// then puts go through a reserve no filesystem has free (the real check,
/// the real error), and it has no room.
struct Disk {
    inner: DirectoryDestination,
    full: Arc<AtomicBool>,
    puts: Arc<AtomicUsize>,
}

impl Destination for Disk {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), FirehoseError> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        if self.full.load(Ordering::SeqCst) {
            self.inner.clone().with_min_free_bytes(Some(u64::MAX)).put(key, body).await
        } else {
            self.inner.put(key, body).await
        }
    }

    async fn has_room(&self, bytes: u64) -> bool {
        !self.full.load(Ordering::SeqCst) && self.inner.has_room(bytes).await
    }
}

#[tokio::test]
async fn a_full_disk_pauses_delivery_past_the_retry_duration_and_resumes_when_space_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let (store, payloads) = store_with_records(&dir.path().join("store"), &clock, 300).await;
    let out = dir.path().join("out");
    let checkpoint = dir.path().join("checkpoint.json");
    let full = Arc::new(AtomicBool::new(true));
    let puts = Arc::new(AtomicUsize::new(0));
    let dest = Disk {
        inner: DirectoryDestination::new(&out).with_min_free_bytes(Some(0)),
        full: full.clone(),
        puts: puts.clone(),
    };
    let (mut delivery, _) =
        DeliveryStream::open(store.clone(), dest, config(), &checkpoint, Arc::new(clock.clone()))
            .await
            .expect("open");
    let e = delivery.poll().await.expect_err("the disk is full");
    assert!(e.is_disk_full() && e.to_string().contains("min_free_bytes"), "{e}");
    let saved = std::fs::read(&checkpoint).expect("the batch is pending in the checkpoint");

    // A minute by the clock, polled every 100 ms: 30 times the retry
    // duration, attempts backing off (at 0.1, 0.3, 0.7, ... 51.1 s).
    for _ in 0..600 {
        clock.advance(100);
        match delivery.poll().await {
            Ok(report) => assert!(report.delivered.is_empty() && report.errors.is_empty()),
            Err(e) => assert!(e.is_disk_full(), "{e}"),
        }
    }
    assert_eq!(puts.load(Ordering::SeqCst), 10, "attempts back off to 30 s");
    assert!(files(&out).is_empty(), "nothing delivered, no error output, no temp file");
    assert_eq!(std::fs::read(&checkpoint).expect("checkpoint"), saved, "no checkpoint write");
    let c = Checkpoint::load(&checkpoint, NAME, STREAM).expect("load");
    let shard = &c.shards["shardId-000000000000"];
    let pending = shard.pending.clone().expect("still pending");
    assert_eq!((shard.next_offset, pending.first_failure_ms, pending.error), (0, None, None));
    let f = delivery.failure().expect("the status reports the pause");
    assert_eq!(
        (f.reason, f.attempts, f.shard_id.as_str()),
        (DISK_FULL, 10, "shardId-000000000000")
    );
    assert!(f.message.contains("disk is full"), "{}", f.message);

    // Space back: the next poll delivers (not 30 s later), the same batch.
    full.store(false, Ordering::SeqCst);
    clock.advance(100);
    let report = delivery.poll().await.expect("delivers once the disk has room");
    assert_eq!(report.delivered.iter().map(|d| d.records).sum::<usize>(), 300);
    assert_eq!(report.delivered[0].key, pending.key, "the batch fixed before the pause");
    assert_eq!(delivery.failure(), None);
    assert_delivered_once(&out, &payloads);
    store.close().await;
}

/// A checkpoint file whose next `fail` saves fail; the last checkpoint saved
/// is kept for the destination to look at.
#[derive(Debug)]
struct FlakyCheckpoints {
    inner: FileCheckpoints,
    fail: AtomicUsize,
    saved: Arc<Mutex<Option<Checkpoint>>>,
}

impl CheckpointStore for FlakyCheckpoints {
    fn location(&self) -> std::path::PathBuf {
        self.inner.location()
    }

    fn load<'a>(
        &'a self,
        delivery_stream: &'a str,
        source_stream: &'a str,
    ) -> BoxFuture<'a, Result<Checkpoint, FirehoseError>> {
        self.inner.load(delivery_stream, source_stream)
    }

    fn save(&self, checkpoint: Checkpoint) -> BoxFuture<'_, Result<(), FirehoseError>> {
        Box::pin(async move {
            if self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(FirehoseError::Io {
                    op: "writing",
                    path: self.inner.location(),
                    source: std::io::Error::from(std::io::ErrorKind::StorageFull),
                });
            }
            self.inner.save(checkpoint.clone()).await?;
            *self.saved.lock().expect("lock") = Some(checkpoint);
            Ok(())
        })
    }
}

/// Writes objects only while the saved checkpoint holds them as pending.
struct Checked {
    inner: DirectoryDestination,
    saved: Arc<Mutex<Option<Checkpoint>>>,
}

impl Destination for Checked {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), FirehoseError> {
        let pending = self.saved.lock().expect("lock").as_ref().is_some_and(|c| {
            c.shards.values().any(|s| s.pending.as_ref().is_some_and(|p| p.key == key))
        });
        assert!(pending, "{key} written before it was pending in the saved checkpoint");
        self.inner.put(key, body).await
    }
}

#[tokio::test]
async fn a_failed_checkpoint_save_is_saved_again_before_the_object_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let (store, payloads) = store_with_records(&dir.path().join("store"), &clock, 50).await;
    let out = dir.path().join("out");
    let saved = Arc::new(Mutex::new(None));
    let checkpoints = Arc::new(FlakyCheckpoints {
        inner: FileCheckpoints::new(dir.path().join("checkpoint.json")),
        fail: AtomicUsize::new(0),
        saved: saved.clone(),
    });
    let dest = Checked { inner: DirectoryDestination::new(&out), saved };
    let (mut delivery, _) = DeliveryStream::open_with_checkpoints(
        store.clone(),
        dest,
        None,
        config(),
        checkpoints.clone(),
        Arc::new(clock.clone()),
    )
    .await
    .expect("open");
    // The save fixing the batch as pending fails (its disk full).
    checkpoints.fail.store(1, Ordering::SeqCst);
    let e = delivery.poll().await.expect_err("the checkpoint save fails");
    assert_eq!(e.cause(), "disk_full", "{e}");
    let report = delivery.poll().await.expect("saves, then delivers");
    assert_eq!(report.delivered.iter().map(|d| d.records).sum::<usize>(), 50);
    assert_delivered_once(&out, &payloads);
    store.close().await;
}
