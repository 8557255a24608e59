//! The wall clock jumping while a shard is appended to (NTP stepping a
//! gateway's clock back an hour, then forward): sequence numbers stay
//! strictly increasing and arrival times never go back within a shard, also
//! across a restart with the clock still behind and across segment rolls;
//! AT_TIMESTAMP keeps finding the first record at or after a time. Driven by
//! a [`ManualClock`]: nothing here sleeps.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use weir_collector::store::{
    CreateStreamOptions, LogStore, ManualClock, NewRecord, ReadLimits, StartingPosition,
    StoreConfig, StoredRecord, StreamStore,
};

const T0: u64 = 1_700_000_000_000;
const SECOND: u64 = 1_000;
const HOUR: u64 = 3_600 * SECOND;
const SHARD0: &str = "shardId-000000000000";
/// Records appended in each phase of the clock.
const PER_PHASE: usize = 10;

fn config() -> StoreConfig {
    // Small segments: the phases roll several, so the last arrival time has
    // to come from an older segment than the active one.
    StoreConfig { segment_max_bytes: 4096, ..StoreConfig::default() }
}

async fn open(dir: &Path, clock: &ManualClock) -> LogStore {
    LogStore::open_with_clock(dir, config(), Arc::new(clock.clone())).await.expect("open store")
}

/// Appends `PER_PHASE` records numbered from `first`, one second apart.
async fn phase(store: &LogStore, clock: &ManualClock, first: usize) {
    for i in first..first + PER_PHASE {
        let record = NewRecord {
            partition_key: "gateway".into(),
            data: Bytes::from(format!("{i:04}:{}", "x".repeat(600))),
            explicit_hash_key: None,
            producer_timestamp_ms: None,
        };
        let out = store.append("clock", vec![record]).await.expect("append");
        assert!(out.iter().all(Result::is_ok), "append refused: {out:?}");
        clock.advance(SECOND);
    }
}

async fn read_from(store: &LogStore, start: StartingPosition) -> Vec<StoredRecord> {
    let mut pos = store.position("clock", SHARD0, start).await.expect("position");
    let mut out = Vec::new();
    loop {
        let batch = store
            .read("clock", pos, ReadLimits { max_records: 1000, max_bytes: 8 << 20 })
            .await
            .expect("read");
        if batch.records.is_empty() {
            return out;
        }
        out.extend(batch.records);
        pos = batch.next;
    }
}

fn number(r: &StoredRecord) -> usize {
    std::str::from_utf8(&r.data[..4]).expect("utf8").parse().expect("number")
}

#[tokio::test]
async fn arrival_times_and_sequences_stay_monotonic_when_the_clock_jumps() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = open(tmp.path(), &clock).await;
    store
        .create_stream("clock", CreateStreamOptions { shard_count: 1, ..Default::default() })
        .await
        .expect("create");
    phase(&store, &clock, 0).await;
    let last_before_jump = T0 + (PER_PHASE as u64 - 1) * SECOND;
    // Back an hour, append; restart with the clock still behind, append.
    clock.set(T0 - HOUR);
    phase(&store, &clock, PER_PHASE).await;
    store.close().await;
    drop(store);
    let store = open(tmp.path(), &clock).await;
    phase(&store, &clock, 2 * PER_PHASE).await;
    // Forward two hours past the start.
    clock.set(T0 + 2 * HOUR);
    phase(&store, &clock, 3 * PER_PHASE).await;

    let all = read_from(&store, StartingPosition::TrimHorizon).await;
    assert_eq!(all.iter().map(number).collect::<Vec<_>>(), (0..4 * PER_PHASE).collect::<Vec<_>>());
    for w in all.windows(2) {
        assert!(w[0].sequence < w[1].sequence, "sequence numbers go back: {w:?}");
        assert!(
            w[0].arrival_ms <= w[1].arrival_ms,
            "arrival time of {} went back from {} to {}",
            number(&w[1]),
            w[0].arrival_ms,
            w[1].arrival_ms
        );
    }
    // While the clock was behind, arrival stayed at the last time before the jump.
    for r in &all[PER_PHASE..3 * PER_PHASE] {
        assert_eq!(r.arrival_ms, last_before_jump, "record {}", number(r));
    }
    assert_eq!(all[3 * PER_PHASE].arrival_ms, T0 + 2 * HOUR);

    // AT_TIMESTAMP: the first record at or after the time.
    let at = |t: u64| read_from(&store, StartingPosition::AtTimestamp(t));
    assert_eq!(at(T0 - HOUR).await.first().map(number), Some(0), "before everything");
    assert_eq!(at(T0 + 5 * SECOND).await.first().map(number), Some(5));
    assert_eq!(
        at(last_before_jump).await.first().map(number),
        Some(PER_PHASE - 1),
        "the time the clock was held at starts with the last record before the jump"
    );
    assert_eq!(at(last_before_jump + 1).await.first().map(number), Some(3 * PER_PHASE));
    assert_eq!(at(T0 + 2 * HOUR + 5 * SECOND).await.first().map(number), Some(3 * PER_PHASE + 5));
    assert!(at(T0 + 3 * HOUR).await.is_empty(), "after everything");
    store.close().await;
}
