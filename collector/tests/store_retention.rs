//! Retention of the stream store, driven by a [`ManualClock`]: nothing here
//! sleeps. Segments are small (4 KiB) so each group of appends spans several
//! of them, and a segment rolls once its first record is an hour old, so
//! records appended hours apart never share a segment.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use weir_collector::store::segment::list_segments;
use weir_collector::store::{
    CreateStreamOptions, LogStore, ManualClock, NewRecord, ReadLimits, RetentionReport,
    SequenceNumber, StartingPosition, StoreConfig, StoreError, StoredRecord, StreamStore,
};

const T0: u64 = 1_700_000_000_000;
const MINUTE: u64 = 60_000;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
const SHARD0: &str = "shardId-000000000000";

fn config() -> StoreConfig {
    StoreConfig {
        segment_max_bytes: 4096,
        // Only the test's own `enforce_retention` calls may delete anything.
        retention_check_interval: Duration::from_secs(24 * 3600),
        ..StoreConfig::default()
    }
}

async fn open(dir: &Path, clock: &ManualClock) -> LogStore {
    LogStore::open_with_clock(dir, config(), Arc::new(clock.clone())).await.expect("open store")
}

async fn reopen(store: LogStore, clock: &ManualClock) -> LogStore {
    let dir = store.root().to_path_buf();
    store.close().await;
    drop(store);
    open(&dir, clock).await
}

async fn create(store: &LogStore, name: &str, shard_count: u32) -> u64 {
    store
        .create_stream(name, CreateStreamOptions { shard_count, retention_hours: 24 })
        .await
        .expect("create stream")
        .id
}

fn shard_dir(store: &LogStore, stream_id: u64, index: u64) -> PathBuf {
    store.root().join("streams").join(stream_id.to_string()).join(format!("shard-{index:012}"))
}

fn segments(store: &LogStore, stream_id: u64, index: u64) -> Vec<u64> {
    list_segments(&shard_dir(store, stream_id, index)).expect("list segments")
}

/// A 200-byte record whose data names it, so a read-back can be checked.
fn record(label: &str, hash_key: Option<u128>) -> NewRecord {
    let mut data = label.as_bytes().to_vec();
    data.resize(200, b'.');
    NewRecord {
        partition_key: "device-1".to_owned(),
        data: Bytes::from(data),
        explicit_hash_key: hash_key,
        producer_timestamp_ms: None,
    }
}

fn label(r: &StoredRecord) -> String {
    String::from_utf8_lossy(&r.data).trim_end_matches('.').to_owned()
}

/// Appends `n` records one call each (one batch each, so segments fill up),
/// labelled `<prefix>-<i>`; returns their sequence numbers.
async fn append_n(
    store: &LogStore,
    stream: &str,
    prefix: &str,
    n: usize,
    hash_key: Option<u128>,
) -> Vec<SequenceNumber> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let results = store
            .append(stream, vec![record(&format!("{prefix}-{i}"), hash_key)])
            .await
            .expect("append");
        out.push(results.into_iter().next().expect("one result").expect("appended").sequence);
    }
    out
}

/// Reads a shard from TRIM_HORIZON to its end.
async fn read_all(store: &LogStore, stream: &str, shard: &str) -> Vec<StoredRecord> {
    let mut pos =
        store.position(stream, shard, StartingPosition::TrimHorizon).await.expect("position");
    let mut out = Vec::new();
    loop {
        let batch = store
            .read(stream, pos, ReadLimits { max_records: 37, max_bytes: 1 << 20 })
            .await
            .expect("read");
        if batch.records.is_empty() {
            return out;
        }
        pos = batch.next;
        out.extend(batch.records);
    }
}

async fn trim_horizon(store: &LogStore, stream: &str, shard: &str) -> u64 {
    store.position(stream, shard, StartingPosition::TrimHorizon).await.expect("position").offset
}

fn report(segments_deleted: usize, shards_removed: usize) -> RetentionReport {
    RetentionReport { segments_deleted, shards_removed }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_exactly_the_segments_older_than_retention() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = open(tmp.path(), &clock).await;
    let id = create(&store, "s", 1).await;

    let early = append_n(&store, "s", "t0", 60, None).await;
    clock.set(T0 + 2 * HOUR);
    let middle = append_n(&store, "s", "t2h", 30, None).await;
    clock.set(T0 + 23 * HOUR);
    let late = append_n(&store, "s", "t23h", 40, None).await;
    let all: Vec<SequenceNumber> = early.iter().chain(&middle).chain(&late).copied().collect();
    assert_eq!(all, (0..130).map(|o| SequenceNumber::new(0, o)).collect::<Vec<_>>());

    // Each group starts its own segment (the age roll) and spans several.
    let bases = segments(&store, id, 0);
    assert!(bases.contains(&60) && bases.contains(&90), "groups start segments: {bases:?}");
    let early_segments = bases.iter().filter(|&&b| b < 60).count();
    let middle_segments = bases.iter().filter(|&&b| (60..90).contains(&b)).count();
    assert!(early_segments >= 3 && middle_segments >= 2, "small segments: {bases:?}");

    clock.set(T0 + 25 * HOUR);
    let r = store.enforce_retention().await.expect("retention");
    assert_eq!(r, report(early_segments, 0), "only the t0 segments expired");
    assert_eq!(
        segments(&store, id, 0),
        bases.iter().copied().filter(|&b| b >= 60).collect::<Vec<_>>()
    );
    assert_eq!(trim_horizon(&store, "s", SHARD0).await, 60);
    let left = read_all(&store, "s", SHARD0).await;
    let want: Vec<(SequenceNumber, String)> = middle
        .iter()
        .enumerate()
        .map(|(i, s)| (*s, format!("t2h-{i}")))
        .chain(late.iter().enumerate().map(|(i, s)| (*s, format!("t23h-{i}"))))
        .collect();
    let got: Vec<(SequenceNumber, String)> = left.iter().map(|r| (r.sequence, label(r))).collect();
    assert_eq!(got, want, "survivors keep their sequence numbers");
    assert!(left[..30].iter().all(|r| r.arrival_ms == T0 + 2 * HOUR));

    // A position at an expired record lands on the oldest survivor.
    let at = store
        .position("s", SHARD0, StartingPosition::AtSequence(SequenceNumber::new(0, 5)))
        .await
        .expect("position");
    assert_eq!(at.offset, 60);

    // A second pass at the same time deletes nothing more.
    assert_eq!(store.enforce_retention().await.expect("retention"), report(0, 0));

    // The t+2h segments go exactly when their newest record is older than 24 h.
    clock.set(T0 + 2 * HOUR + DAY);
    assert_eq!(store.enforce_retention().await.expect("retention"), report(0, 0));
    assert_eq!(trim_horizon(&store, "s", SHARD0).await, 60);
    clock.advance(1);
    assert_eq!(store.enforce_retention().await.expect("retention"), report(middle_segments, 0));
    assert_eq!(trim_horizon(&store, "s", SHARD0).await, 90);
    let left = read_all(&store, "s", SHARD0).await;
    assert_eq!(left.iter().map(|r| r.sequence).collect::<Vec<_>>(), late);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_deleted_before_its_retention_passes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = open(tmp.path(), &clock).await;
    let id = create(&store, "s", 1).await;
    let seqs = append_n(&store, "s", "r", 50, None).await;
    let bases = segments(&store, id, 0);
    assert!(bases.len() >= 3, "{bases:?}");

    for now in [T0 + 23 * HOUR + 59 * MINUTE, T0 + DAY] {
        clock.set(now);
        assert_eq!(store.enforce_retention().await.expect("retention"), report(0, 0), "at {now}");
        assert_eq!(segments(&store, id, 0), bases);
        let all = read_all(&store, "s", SHARD0).await;
        assert_eq!(all.iter().map(|r| r.sequence).collect::<Vec<_>>(), seqs);
    }
    clock.advance(1);
    let r = store.enforce_retention().await.expect("retention");
    assert_eq!(r, report(bases.len(), 0), "every segment, the active one sealed first");
    assert!(read_all(&store, "s", SHARD0).await.is_empty());
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_active_segment_is_sealed_and_the_shard_keeps_its_offsets() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = open(tmp.path(), &clock).await;
    let id = create(&store, "s", 1).await;
    append_n(&store, "s", "old", 10, None).await;
    assert_eq!(segments(&store, id, 0), vec![0], "all in the active segment");

    clock.set(T0 + DAY + 1);
    assert_eq!(store.enforce_retention().await.expect("retention"), report(1, 0));
    assert_eq!(segments(&store, id, 0), vec![10], "a fresh active segment at the next offset");
    assert_eq!(trim_horizon(&store, "s", SHARD0).await, 10);
    let latest = store.position("s", SHARD0, StartingPosition::Latest).await.expect("position");
    assert_eq!(latest.offset, 10);
    assert!(read_all(&store, "s", SHARD0).await.is_empty());

    let next = append_n(&store, "s", "new", 1, None).await;
    assert_eq!(next, vec![SequenceNumber::new(0, 10)], "offsets continue, never restart at 0");
    let all = read_all(&store, "s", SHARD0).await;
    assert_eq!(all.iter().map(label).collect::<Vec<_>>(), vec!["new-0"]);

    // The same after a restart, and an empty active segment is never deleted.
    let store = reopen(store, &clock).await;
    assert_eq!(store.enforce_retention().await.expect("retention"), report(0, 0));
    assert_eq!(append_n(&store, "s", "after", 1, None).await, vec![SequenceNumber::new(0, 11)]);
    clock.advance(DAY + 1);
    assert_eq!(store.enforce_retention().await.expect("retention"), report(1, 0));
    assert_eq!(segments(&store, id, 0), vec![12]);
    assert_eq!(store.enforce_retention().await.expect("retention"), report(0, 0));
    let store = reopen(store, &clock).await;
    assert_eq!(trim_horizon(&store, "s", SHARD0).await, 12);
    assert_eq!(append_n(&store, "s", "last", 1, None).await, vec![SequenceNumber::new(0, 12)]);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_retention_checks_its_range_and_a_longer_one_keeps_data_longer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = open(tmp.path(), &clock).await;
    create(&store, "s", 1).await;

    for hours in [0, 23, 8761, u32::MAX] {
        let err = store.set_retention("s", hours).await.expect_err("out of range");
        assert!(matches!(err, StoreError::InvalidArgument(_)), "{hours} h: {err:?}");
    }
    assert_eq!(store.describe_stream("s").await.expect("describe").retention_hours, 24);
    for hours in [8760, 24] {
        store.set_retention("s", hours).await.expect("in range");
        assert_eq!(store.describe_stream("s").await.expect("describe").retention_hours, hours);
    }
    let err = store.set_retention("nope", 48).await.expect_err("no such stream");
    assert!(matches!(err, StoreError::StreamNotFound(_)), "{err:?}");
    for hours in [23, 8761] {
        let err = store
            .create_stream(
                &format!("c{hours}"),
                CreateStreamOptions { shard_count: 1, retention_hours: hours },
            )
            .await
            .expect_err("out of range");
        assert!(matches!(err, StoreError::InvalidArgument(_)), "create with {hours} h: {err:?}");
    }

    let seqs = append_n(&store, "s", "r", 30, None).await;
    store.set_retention("s", 48).await.expect("raise");
    clock.set(T0 + 25 * HOUR);
    assert_eq!(store.enforce_retention().await.expect("retention"), report(0, 0));
    clock.set(T0 + 2 * DAY);
    assert_eq!(store.enforce_retention().await.expect("retention"), report(0, 0));
    let all = read_all(&store, "s", SHARD0).await;
    assert_eq!(all.iter().map(|r| r.sequence).collect::<Vec<_>>(), seqs);
    clock.advance(1);
    let r = store.enforce_retention().await.expect("retention");
    assert!(r.segments_deleted >= 2 && r.shards_removed == 0, "{r:?}");
    assert!(read_all(&store, "s", SHARD0).await.is_empty());

    // Lowering it takes effect at the next pass.
    let more = append_n(&store, "s", "more", 5, None).await;
    assert_eq!(more[0], SequenceNumber::new(0, 30));
    clock.advance(30 * HOUR);
    assert_eq!(store.enforce_retention().await.expect("retention"), report(0, 0));
    store.set_retention("s", 24).await.expect("lower");
    assert_eq!(store.enforce_retention().await.expect("retention"), report(1, 0));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_survives_a_reopen() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = open(tmp.path(), &clock).await;
    create(&store, "s", 1).await;
    let seqs = append_n(&store, "s", "r", 20, None).await;
    store.set_retention("s", 72).await.expect("set retention");

    let store = reopen(store, &clock).await;
    assert_eq!(store.describe_stream("s").await.expect("describe").retention_hours, 72);
    clock.set(T0 + 3 * DAY);
    assert_eq!(store.enforce_retention().await.expect("retention"), report(0, 0), "72 h, not 24 h");
    let all = read_all(&store, "s", SHARD0).await;
    assert_eq!(all.iter().map(|r| r.sequence).collect::<Vec<_>>(), seqs);
    clock.advance(1);
    let r = store.enforce_retention().await.expect("retention");
    assert!(r.segments_deleted >= 1, "{r:?}");
    assert!(read_all(&store, "s", SHARD0).await.is_empty());
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_closed_shard_is_removed_and_its_children_stay() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = open(tmp.path(), &clock).await;
    let id = create(&store, "s", 1).await;
    let low_key = Some(1u128);
    let high_key = Some(u128::MAX);
    let parent_seqs = append_n(&store, "s", "parent", 40, low_key).await;
    let parent_segments = segments(&store, id, 0).len();
    assert!(parent_segments >= 2);

    clock.set(T0 + HOUR);
    store.split_shard("s", SHARD0, 1 << 127).await.expect("split");
    let children = vec!["shardId-000000000001".to_owned(), "shardId-000000000002".to_owned()];
    clock.set(T0 + 20 * HOUR);
    let low = append_n(&store, "s", "low", 5, low_key).await;
    let high = append_n(&store, "s", "high", 5, high_key).await;
    assert!(low.iter().all(|s| s.shard_index == 1) && high.iter().all(|s| s.shard_index == 2));

    // Its records expire, but it closed less than 24 h ago: it stays, empty.
    clock.set(T0 + DAY + 1);
    assert_eq!(store.enforce_retention().await.expect("retention"), report(parent_segments, 0));
    let desc = store.describe_stream("s").await.expect("describe");
    let parent = desc.shards.iter().find(|s| s.index == 0).expect("parent still described");
    assert_eq!(parent.ending_sequence, parent_seqs.last().copied());
    assert_eq!(trim_horizon(&store, "s", SHARD0).await, 40);
    let pos = store.position("s", SHARD0, StartingPosition::TrimHorizon).await.expect("position");
    let batch = store
        .read("s", pos, ReadLimits { max_records: 10, max_bytes: 1 << 20 })
        .await
        .expect("read");
    assert!(batch.records.is_empty());
    assert_eq!(batch.end_of_shard, Some(children.clone()));

    // A restart finds it with no segment left and the same end.
    let store = reopen(store, &clock).await;
    assert!(segments(&store, id, 0).is_empty());
    assert_eq!(trim_horizon(&store, "s", SHARD0).await, 40);
    let batch = store
        .read("s", pos, ReadLimits { max_records: 10, max_bytes: 1 << 20 })
        .await
        .expect("read after reopen");
    assert!(batch.records.is_empty());
    assert_eq!(batch.end_of_shard, Some(children.clone()));

    // Closed exactly 24 h ago: not yet.
    clock.set(T0 + HOUR + DAY);
    assert_eq!(store.enforce_retention().await.expect("retention"), report(0, 0));
    assert_eq!(store.describe_stream("s").await.expect("describe").shards.len(), 3);

    clock.advance(1);
    assert_eq!(store.enforce_retention().await.expect("retention"), report(0, 1));
    let desc = store.describe_stream("s").await.expect("describe");
    let ids: Vec<&str> = desc.shards.iter().map(|s| s.shard_id.as_str()).collect();
    assert_eq!(ids, children.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(desc.shards.iter().all(|s| s.parent_shard_id.as_deref() == Some(SHARD0)));
    assert!(desc.shards.iter().all(|s| s.ending_sequence.is_none()));
    assert!(!shard_dir(&store, id, 0).exists(), "the closed shard's directory is gone");
    assert!(shard_dir(&store, id, 1).exists() && shard_dir(&store, id, 2).exists());
    let err =
        store.position("s", SHARD0, StartingPosition::TrimHorizon).await.expect_err("removed");
    assert!(matches!(err, StoreError::ShardNotFound { .. }), "{err:?}");
    let err = store
        .read("s", pos, ReadLimits { max_records: 10, max_bytes: 1 << 20 })
        .await
        .expect_err("removed");
    assert!(matches!(err, StoreError::ShardNotFound { .. }), "{err:?}");

    // The children keep their records and take writes.
    let l = read_all(&store, "s", &children[0]).await;
    assert_eq!(l.iter().map(|r| r.sequence).collect::<Vec<_>>(), low);
    let h = read_all(&store, "s", &children[1]).await;
    assert_eq!(h.iter().map(|r| r.sequence).collect::<Vec<_>>(), high);
    let more = append_n(&store, "s", "more", 1, low_key).await;
    assert_eq!(more, vec![SequenceNumber::new(1, 5)]);

    // And the removal is durable.
    let store = reopen(store, &clock).await;
    assert_eq!(store.describe_stream("s").await.expect("describe"), desc);
    assert_eq!(store.enforce_retention().await.expect("retention"), report(0, 0));
    assert_eq!(read_all(&store, "s", &children[0]).await.len(), 6);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_closed_shard_is_removed_once_closed_longer_than_retention() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = open(tmp.path(), &clock).await;
    let id = create(&store, "s", 2).await;
    store.merge_shards("s", SHARD0, "shardId-000000000001").await.expect("merge");
    let merged = append_n(&store, "s", "m", 3, None).await;
    assert!(merged.iter().all(|s| s.shard_index == 2));

    // Closed exactly 24 h ago: kept (their empty segments may go).
    clock.set(T0 + DAY);
    let r = store.enforce_retention().await.expect("retention");
    assert_eq!(r.shards_removed, 0, "{r:?}");
    assert_eq!(store.describe_stream("s").await.expect("describe").shards.len(), 3);
    clock.advance(1);
    let r = store.enforce_retention().await.expect("retention");
    assert_eq!(r.shards_removed, 2, "{r:?}");
    let desc = store.describe_stream("s").await.expect("describe");
    assert_eq!(desc.shards.len(), 1);
    assert_eq!(desc.shards[0].shard_id, "shardId-000000000002");
    assert_eq!(desc.shards[0].parent_shard_id.as_deref(), Some(SHARD0));
    assert_eq!(desc.shards[0].adjacent_parent_shard_id.as_deref(), Some("shardId-000000000001"));
    assert!(!shard_dir(&store, id, 0).exists() && !shard_dir(&store, id, 1).exists());
    // The merged shard's records arrived at T0: they expired with the rest.
    assert!(read_all(&store, "s", "shardId-000000000002").await.is_empty());
    assert_eq!(append_n(&store, "s", "n", 1, None).await, vec![SequenceNumber::new(2, 3)]);
    store.close().await;
}
