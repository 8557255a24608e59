//! Write and fsync faults in the embedded store's file layer, injected with
//! [`FaultyFileIo`], plus a real `ENOSPC` on a small tmpfs (as root).
//!
//! - Out of space in the middle of a write (at every interesting byte of a
//!   batch and of its index entry): the append is refused with
//!   `OutOfSpace`, the shard is not failed, and once there is room the next
//!   append lands right after the last acknowledged record; after a restart
//!   every acknowledged record reads back once, in order, and nothing else.
//! - A failed fsync: fail-stop. The shard answers `ShardFailed` to that
//!   append and to every append until its writer has reopened it from its
//!   files after the back-off (also when reopening itself fails first); the
//!   store reports it degraded meanwhile, and then takes writes again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_collector::store::{
    CreateStreamOptions, FaultyFileIo, FileIo, LogStore, NewRecord, OsFileIo, ReadLimits,
    StartingPosition, StoreConfig, StoreError, StreamStore, SystemClock,
};

const SHARD0: &str = "shardId-000000000000";
const STREAM: &str = "faults";
/// Bytes of each record's data.
const DATA_BYTES: usize = 1000;
const TIMEOUT: Duration = Duration::from_secs(20);

fn config() -> StoreConfig {
    StoreConfig {
        min_free_bytes: Some(0),
        reopen_backoff: Duration::from_millis(100),
        ..StoreConfig::default()
    }
}

async fn open(dir: &Path, io: Arc<dyn FileIo>) -> LogStore {
    LogStore::open_with(dir, config(), Arc::new(SystemClock), io).await.expect("open store")
}

fn record(n: usize) -> NewRecord {
    let mut data = format!("{n:06}:").into_bytes();
    data.resize(DATA_BYTES, b'x');
    NewRecord {
        partition_key: "device".into(),
        data: Bytes::from(data),
        explicit_hash_key: None,
        producer_timestamp_ms: None,
    }
}

/// Appends record `n`; its sequence offset, or the store's error.
async fn append(store: &LogStore, n: usize) -> Result<u64, StoreError> {
    let mut out = store.append(STREAM, vec![record(n)]).await.expect("append call");
    out.remove(0).map(|a| a.sequence.offset)
}

/// Every record of the shard from TRIM_HORIZON: (number, offset).
async fn read_all(store: &LogStore) -> Vec<(usize, u64)> {
    let mut pos = store.position(STREAM, SHARD0, StartingPosition::TrimHorizon).await.expect("pos");
    let mut out = Vec::new();
    loop {
        let batch = store
            .read(STREAM, pos, ReadLimits { max_records: 1000, max_bytes: 8 << 20 })
            .await
            .expect("read (a corrupt batch would fail it)");
        if batch.records.is_empty() {
            return out;
        }
        for r in &batch.records {
            assert_eq!(r.data.len(), DATA_BYTES, "a record read back whole");
            let n = std::str::from_utf8(&r.data[..6]).expect("utf8").parse().expect("number");
            out.push((n, r.sequence.offset));
        }
        pos = batch.next;
    }
}

async fn create(store: &LogStore) {
    store
        .create_stream(STREAM, CreateStreamOptions { shard_count: 1, ..Default::default() })
        .await
        .expect("create");
}

/// The shard's `.log` files.
fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "log") {
                out.push(p);
            }
        }
    }
    out
}

fn log_len(dir: &Path) -> u64 {
    log_files(dir).iter().map(|p| std::fs::metadata(p).expect("stat").len()).sum()
}

/// Waits until `cond` holds, at most [`TIMEOUT`].
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn running_out_of_space_mid_write_cuts_back_to_the_last_batch_and_resumes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let io = Arc::new(FaultyFileIo::new());
    let store = open(tmp.path(), io.clone()).await;
    create(&store).await;
    let mut acked = Vec::new();
    let mut n = 0;
    let before = log_len(tmp.path());
    acked.push((n, append(&store, n).await.expect("first append")));
    n += 1;
    // One record's batch, so the faults below land at chosen bytes of it.
    let batch_len = log_len(tmp.path()) - before;
    let index_entry = 16;
    for after in [0, 1, 13, batch_len / 2, batch_len - 1, batch_len, batch_len + index_entry / 2] {
        io.run_out_of_space_after(after);
        for _ in 0..2 {
            match append(&store, n).await {
                Err(StoreError::OutOfSpace { shard, .. }) => assert_eq!(shard, SHARD0),
                other => {
                    panic!("out of space after {after} bytes: expected OutOfSpace, got {other:?}")
                }
            }
            n += 1;
        }
        assert_eq!(store.degraded(), None, "a full disk mid-write does not fail the shard");
        assert_eq!(
            log_len(tmp.path()),
            batch_len * acked.len() as u64,
            "the partial batch was cut off (fault after {after} bytes)"
        );
        io.free_space();
        for _ in 0..3 {
            let offset = append(&store, n).await.expect("append once there is room");
            acked.push((n, offset));
            n += 1;
        }
    }
    assert!(io.writes_refused() >= 7, "the faults were hit: {}", io.writes_refused());
    let offsets: Vec<u64> = acked.iter().map(|a| a.1).collect();
    assert_eq!(offsets, (0..acked.len() as u64).collect::<Vec<_>>(), "no offset skipped");
    assert_eq!(read_all(&store).await, acked, "exactly the acknowledged records");
    store.close().await;
    drop(store);

    let store = open(tmp.path(), Arc::new(OsFileIo)).await;
    assert_eq!(read_all(&store).await, acked, "and the same after a restart");
    let offset = append(&store, n).await.expect("append after restart");
    assert_eq!(offset, acked.len() as u64);
}

#[tokio::test]
async fn a_failed_fsync_fails_the_shard_until_its_writer_reopens_it_from_its_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let io = Arc::new(FaultyFileIo::new());
    let store = open(tmp.path(), io.clone()).await;
    create(&store).await;
    let mut acked = Vec::new();
    let mut n = 0;
    for _ in 0..10 {
        acked.push((n, append(&store, n).await.expect("append")));
        n += 1;
    }
    // The append's fsync fails, then the first two reopen attempts (recovery
    // rewrites and syncs the index) fail too: the back-off doubles.
    io.fail_next_syncs(3);
    let mut unacked = Vec::new();
    match append(&store, n).await {
        Err(StoreError::ShardFailed { shard, reason, .. }) => {
            assert_eq!(shard, SHARD0);
            assert!(reason.contains("fsync"), "{reason}");
        }
        other => panic!("expected ShardFailed after a failed fsync, got {other:?}"),
    }
    unacked.push(n);
    n += 1;
    let degraded = store.degraded().expect("degraded while a shard is failed");
    assert!(degraded.contains(SHARD0) && degraded.contains("failed"), "{degraded}");
    // Nothing is acknowledged until the shard is reopened.
    let mut refused = 0;
    while store.degraded().is_some() {
        match append(&store, n).await {
            Err(StoreError::ShardFailed { .. }) => refused += 1,
            Ok(offset) if store.degraded().is_none() => {
                // Reopened between the check and the append.
                acked.push((n, offset));
                n += 1;
                break;
            }
            other => panic!("a failed shard answered {other:?}"),
        }
        unacked.push(n);
        n += 1;
        assert!(refused < 10_000, "the shard was not reopened");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(refused > 0, "appends during the back-off were refused");
    assert_eq!(io.syncs_failed(), 3, "two reopen attempts failed before one worked");
    wait_until("the shard is reopened", || store.degraded().is_none()).await;
    for _ in 0..10 {
        acked.push((n, append(&store, n).await.expect("append after the reopen")));
        n += 1;
    }
    let read = read_all(&store).await;
    check_failed_fsync_outcome(&read, &acked, &unacked);
    store.close().await;
    drop(store);

    let store = open(tmp.path(), Arc::new(OsFileIo)).await;
    assert_eq!(read_all(&store).await, read, "the same records after a restart");
}

/// After a failed fsync: every acknowledged record is there once, in order;
/// of the refused ones, only the one whose fsync failed may be there (its
/// bytes were written, and recovery found them intact), never one refused
/// while the shard was failed; offsets strictly increase.
fn check_failed_fsync_outcome(read: &[(usize, u64)], acked: &[(usize, u64)], unacked: &[usize]) {
    let numbers: Vec<usize> = read.iter().map(|r| r.0).collect();
    let acked_numbers: Vec<usize> = acked.iter().map(|a| a.0).collect();
    let kept: Vec<usize> = numbers.iter().copied().filter(|n| acked_numbers.contains(n)).collect();
    assert_eq!(kept, acked_numbers, "every acknowledged record, once, in order");
    for n in numbers.iter().filter(|n| !acked_numbers.contains(n)) {
        assert_eq!(Some(n), unacked.first(), "only the record of the failed fsync may remain");
    }
    assert!(read.windows(2).all(|w| w[0].1 < w[1].1), "offsets strictly increase");
    for (n, offset) in acked {
        assert!(read.contains(&(*n, *offset)), "record {n} at its acknowledged offset {offset}");
    }
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Option<Self> {
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid() == 0
        });
        if !root {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        std::fs::create_dir_all(at).expect("mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: mount -t tmpfs failed here (no CAP_SYS_ADMIN?)");
            return None;
        }
        Some(Self(at.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_real_enospc_without_a_reserve_refuses_appends_and_resumes_when_space_returns() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(mount) = Mount::tmpfs(&tmp.path().join("small"), "4m") else { return };
    let data = mount.0.join("data");
    // Ballast: most of the filesystem, deleted later to make room.
    let ballast = mount.0.join("ballast");
    std::fs::write(&ballast, vec![0u8; 2 << 20]).expect("ballast");
    let store = open(&data, Arc::new(OsFileIo)).await;
    create(&store).await;
    let mut acked = Vec::new();
    let mut n = 0;
    let full = loop {
        assert!(n < 10_000, "the 4 MiB filesystem never filled");
        match append(&store, n).await {
            Ok(offset) => acked.push((n, offset)),
            Err(e @ StoreError::OutOfSpace { .. }) => break e,
            Err(e) => panic!("expected OutOfSpace on a full tmpfs, got {e}"),
        }
        n += 1;
    };
    assert!(full.to_string().contains("disk is full"), "{full}");
    assert!(!acked.is_empty());
    for _ in 0..5 {
        n += 1;
        assert!(matches!(append(&store, n).await, Err(StoreError::OutOfSpace { .. })));
    }
    assert_eq!(store.degraded(), None, "not failed: only full (and no reserve is set)");
    std::fs::remove_file(&ballast).expect("free space");
    for _ in 0..20 {
        n += 1;
        acked.push((n, append(&store, n).await.expect("appends resume without a restart")));
    }
    assert_eq!(read_all(&store).await, acked, "every acknowledged record, once, in order");
    store.close().await;
    drop(store);
    let store = open(&data, Arc::new(OsFileIo)).await;
    assert_eq!(read_all(&store).await, acked, "and after a restart");
}
