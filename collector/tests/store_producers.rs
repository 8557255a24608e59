//! Idempotent producers: a batch re-sent with the same producer id and batch
//! sequence number is appended once, across reopen (crash), segment rolls and
//! reshards; a shard that holds only part of a batch appends the rest.

use std::sync::Arc;

use bytes::Bytes;
use weir_collector::store::{
    CreateStreamOptions, LogStore, ManualClock, NewRecord, ProducerBatch, ReadLimits,
    StartingPosition, StoreConfig, StoreError, StreamStore,
};
use weir_wire::HashRange;

fn record(key: &str, data: &str) -> NewRecord {
    NewRecord {
        partition_key: key.into(),
        data: Bytes::from(data.to_owned()),
        explicit_hash_key: None,
        producer_timestamp_ms: None,
    }
}

fn with_hash(hash: u128, data: &str) -> NewRecord {
    NewRecord { explicit_hash_key: Some(hash), ..record("k", data) }
}

fn batch(id: &str, seq: u64) -> ProducerBatch {
    ProducerBatch { producer_id: id.into(), batch_seq: seq }
}

async fn open(dir: &std::path::Path, segment_max_bytes: u64) -> LogStore {
    let config = StoreConfig { segment_max_bytes, ..StoreConfig::default() };
    LogStore::open_with_clock(dir, config, Arc::new(ManualClock::new(1_700_000_000_000)))
        .await
        .expect("open")
}

/// Every record's data in the stream, all shards, in shard then offset order.
async fn all_data(store: &LogStore, stream: &str) -> Vec<String> {
    let desc = store.describe_stream(stream).await.expect("describe");
    let mut out = Vec::new();
    for s in &desc.shards {
        let mut pos =
            store.position(stream, &s.shard_id, StartingPosition::TrimHorizon).await.expect("pos");
        loop {
            let b = store
                .read(stream, pos, ReadLimits { max_records: 1000, max_bytes: 1 << 20 })
                .await
                .expect("read");
            if b.records.is_empty() {
                break;
            }
            out.extend(b.records.iter().map(|r| String::from_utf8_lossy(&r.data).into_owned()));
            pos = b.next;
        }
    }
    out
}

#[tokio::test]
async fn a_resent_batch_is_appended_once_even_after_a_reopen() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path(), 1 << 20).await;
    store
        .create_stream("s", CreateStreamOptions { shard_count: 2, ..Default::default() })
        .await
        .expect("create");
    let recs = || vec![with_hash(1, "a"), with_hash(u128::MAX, "b"), with_hash(2, "c")];
    let first = store.append_batch("s", batch("dev-1", 7), recs()).await.expect("append");
    assert!(first.iter().all(|r| matches!(r, Ok(Some(_)))), "{first:?}");
    let again = store.append_batch("s", batch("dev-1", 7), recs()).await.expect("append");
    assert!(again.iter().all(|r| matches!(r, Ok(None))), "{again:?}");
    let older = store.append_batch("s", batch("dev-1", 3), recs()).await.expect("append");
    assert!(older.iter().all(|r| matches!(r, Ok(None))), "a lower number is a duplicate too");
    // Another producer with the same number is not a duplicate.
    let other =
        store.append_batch("s", batch("dev-2", 7), vec![with_hash(1, "d")]).await.expect("append");
    assert!(matches!(other[0], Ok(Some(_))));
    store.close().await;
    drop(store);

    let store = open(tmp.path(), 1 << 20).await;
    let after = store.append_batch("s", batch("dev-1", 7), recs()).await.expect("append");
    assert!(after.iter().all(|r| matches!(r, Ok(None))), "the table survives a reopen: {after:?}");
    let next = store.append_batch("s", batch("dev-1", 8), recs()).await.expect("append");
    assert!(next.iter().all(|r| matches!(r, Ok(Some(_)))));
    let mut data = all_data(&store, "s").await;
    data.sort();
    assert_eq!(data, vec!["a", "a", "b", "b", "c", "c", "d"]);
}

#[tokio::test]
async fn a_shard_holding_part_of_a_batch_appends_only_the_rest() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path(), 1 << 20).await;
    store
        .create_stream("s", CreateStreamOptions { shard_count: 2, ..Default::default() })
        .await
        .expect("create");
    // As if a crash came after shard 0's part of batch 1 was durable but
    // before shard 1's was.
    let part =
        store.append_batch("s", batch("p", 1), vec![with_hash(5, "low")]).await.expect("append");
    assert_eq!(
        part[0].as_ref().expect("ok").as_ref().expect("appended").shard_id,
        "shardId-000000000000"
    );
    let whole = store
        .append_batch(
            "s",
            batch("p", 1),
            vec![with_hash(5, "low"), with_hash(u128::MAX - 5, "high")],
        )
        .await
        .expect("append");
    assert!(matches!(whole[0], Ok(None)), "{whole:?}");
    let high = whole[1].as_ref().expect("ok").as_ref().expect("appended");
    assert_eq!(high.shard_id, "shardId-000000000001");
    let mut data = all_data(&store, "s").await;
    data.sort();
    assert_eq!(data, vec!["high", "low"]);
}

#[tokio::test]
async fn the_table_survives_segment_rolls_and_reopens() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path(), 4096).await;
    let desc = store.create_stream("s", CreateStreamOptions::default()).await.expect("create");
    for seq in 0..200u64 {
        let r = store
            .append_batch(
                "s",
                batch(&format!("dev-{}", seq % 5), seq),
                vec![record("k", &"x".repeat(100))],
            )
            .await
            .expect("append");
        assert!(matches!(r[0], Ok(Some(_))));
    }
    let shard_dir = tmp.path().join("streams").join(desc.id.to_string()).join("shard-000000000000");
    let snapshots = std::fs::read_dir(&shard_dir)
        .expect("list")
        .filter(|e| {
            e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".producers"))
        })
        .count();
    assert!(snapshots >= 3, "every rolled segment has a producer snapshot, found {snapshots}");
    store.close().await;
    drop(store);
    let store = open(tmp.path(), 4096).await;
    for seq in [0u64, 57, 195, 199] {
        let r = store
            .append_batch("s", batch(&format!("dev-{}", seq % 5), seq), vec![record("k", "dup")])
            .await
            .expect("append");
        assert!(matches!(r[0], Ok(None)), "batch {seq} of dev-{} re-sent after reopen", seq % 5);
    }
    assert!(!all_data(&store, "s").await.contains(&"dup".to_owned()));
}

#[tokio::test]
async fn children_inherit_their_parents_producers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path(), 1 << 20).await;
    store.create_stream("s", CreateStreamOptions::default()).await.expect("create");
    let recs = || vec![with_hash(10, "low"), with_hash(u128::MAX - 10, "high")];
    assert!(
        store
            .append_batch("s", batch("gw", 4), recs())
            .await
            .expect("append")
            .iter()
            .all(|r| matches!(r, Ok(Some(_))))
    );
    store.split_shard("s", "shardId-000000000000", 1 << 127).await.expect("split");
    let again = store.append_batch("s", batch("gw", 4), recs()).await.expect("append");
    assert!(again.iter().all(|r| matches!(r, Ok(None))), "re-sent after a split: {again:?}");
    store.merge_shards("s", "shardId-000000000001", "shardId-000000000002").await.expect("merge");
    store.close().await;
    drop(store);
    let store = open(tmp.path(), 1 << 20).await;
    let desc = store.describe_stream("s").await.expect("describe");
    assert_eq!(desc.open_shards().map(|s| s.hash_range).collect::<Vec<_>>(), vec![HashRange::FULL]);
    let again = store.append_batch("s", batch("gw", 4), recs()).await.expect("append");
    assert!(
        again.iter().all(|r| matches!(r, Ok(None))),
        "re-sent after a merge and a reopen: {again:?}"
    );
    assert_eq!(all_data(&store, "s").await.len(), 2);
}

#[tokio::test]
async fn a_bad_producer_id_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path(), 1 << 20).await;
    store.create_stream("s", CreateStreamOptions::default()).await.expect("create");
    for id in [String::new(), "p".repeat(65)] {
        let err = store
            .append_batch("s", batch(&id, 1), vec![record("k", "v")])
            .await
            .expect_err("refused");
        assert!(matches!(err, StoreError::InvalidArgument(_)), "{err}");
    }
}
