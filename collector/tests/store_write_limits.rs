//! Per-shard write limits in the store (what both the Kinesis API and the
//! MQTT ingest get), driven by a [`ManualClock`]: 1,000 records/s and 1 MiB/s
//! per shard, only for streams that enable them; a tagged (idempotent) batch
//! is admitted whole or refused whole, so its retry is never a "duplicate".

use std::sync::Arc;

use bytes::Bytes;
use weir_collector::store::{
    CreateStreamOptions, LogStore, ManualClock, NewRecord, ProducerBatch, SettingsChange,
    StoreConfig, StoreError, StreamSettings, StreamStore,
};

fn record(key: &str, bytes: usize) -> NewRecord {
    NewRecord {
        partition_key: key.to_owned(),
        data: Bytes::from(vec![7u8; bytes]),
        explicit_hash_key: None,
        producer_timestamp_ms: None,
    }
}

fn counts<T>(results: &[Result<T, StoreError>]) -> (usize, usize) {
    let throttled =
        results.iter().filter(|r| matches!(r, Err(StoreError::ThroughputExceeded { .. }))).count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok + throttled, results.len(), "no other errors");
    (ok, throttled)
}

#[tokio::test]
async fn limits_apply_per_shard_only_where_enabled_and_refill_with_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_700_000_000_000);
    let store =
        LogStore::open_with_clock(dir.path(), StoreConfig::default(), Arc::new(clock.clone()))
            .await
            .expect("open");
    let limited = StreamSettings { write_limits: true, ..StreamSettings::default() };
    store
        .create_stream_with("limited", CreateStreamOptions::default(), limited)
        .await
        .expect("create");
    store.create_stream("free", CreateStreamOptions::default()).await.expect("create");

    // 3 x 400 records in one second: the first 1,000 pass, in order.
    let mut all = Vec::new();
    for _ in 0..3 {
        all.extend(
            store
                .append("limited", (0..400).map(|_| record("k", 10)).collect())
                .await
                .expect("append"),
        );
    }
    assert_eq!(counts(&all), (1_000, 200));
    assert!(all[..1_000].iter().all(Result::is_ok));
    // Unlimited streams take anything.
    let free = store.append("free", (0..1_500).map(|_| record("k", 10)).collect()).await;
    assert_eq!(counts(&free.expect("append")), (1_500, 0));

    // Half a second refills half the budget.
    clock.advance(500);
    let r =
        store.append("limited", (0..600).map(|_| record("k", 10)).collect()).await.expect("append");
    assert_eq!(counts(&r), (500, 100));

    // Bytes: one second's worth is 1 MiB (data plus key).
    clock.advance(1_000);
    let r = store
        .append("limited", vec![record("k", 1024 * 1024 - 1), record("k", 10)])
        .await
        .expect("append");
    assert_eq!(counts(&r), (1, 1));

    // A tagged batch that does not fit is refused whole, then fits later.
    clock.advance(1_000);
    let tag = ProducerBatch { producer_id: "p".into(), batch_seq: 1 };
    let big: Vec<NewRecord> = (0..1_001).map(|_| record("k", 1)).collect();
    let r = store.append_batch("limited", tag.clone(), big).await.expect("append");
    assert_eq!(counts(&r), (0, 1_001));
    let fits: Vec<NewRecord> = (0..900).map(|_| record("k", 1)).collect();
    let r = store.append_batch("limited", tag, fits).await.expect("append");
    assert_eq!(counts(&r), (900, 0));
    assert!(r.iter().all(|x| matches!(x, Ok(Some(_)))), "appended, not taken for duplicates");

    // Turning limits off takes effect at once, and survives a restart.
    store
        .change_stream_settings("limited", vec![SettingsChange::WriteLimits(false)])
        .await
        .expect("settings");
    let r = store
        .append("limited", (0..1_500).map(|_| record("k", 1)).collect())
        .await
        .expect("append");
    assert_eq!(counts(&r), (1_500, 0));
    store.close().await;
    drop(store);
    let store =
        LogStore::open_with_clock(dir.path(), StoreConfig::default(), Arc::new(clock.clone()))
            .await
            .expect("reopen");
    let details = store.stream_details("limited").await.expect("details");
    assert!(!details.settings.write_limits);
    store.close().await;
}
