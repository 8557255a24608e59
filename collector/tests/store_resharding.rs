//! Resharding of the stream store: exact hash ranges and lineage (Kinesis's
//! numbers), the refusals, per-key order across a split, appends racing
//! reshards, and reshards surviving a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use weir_collector::store::{
    CreateStreamOptions, LogStore, ManualClock, NewRecord, ReadLimits, SequenceNumber,
    ShardDescription, StartingPosition, StoreConfig, StoreError, StoredRecord, StreamDescription,
    StreamStore,
};
use weir_wire::HashRange;

const T0: u64 = 1_700_000_000_000;
/// Kinesis's ranges for a stream created with three shards.
const R0: HashRange = HashRange { start: 0, end: 113427455640312821154458202477256070484 };
const R1: HashRange = HashRange {
    start: 113427455640312821154458202477256070485,
    end: 226854911280625642308916404954512140969,
};
const R2: HashRange = HashRange { start: 226854911280625642308916404954512140970, end: u128::MAX };

fn id(index: u64) -> String {
    format!("shardId-{index:012}")
}

fn config() -> StoreConfig {
    StoreConfig {
        segment_max_bytes: 64 * 1024,
        retention_check_interval: Duration::from_secs(24 * 3600),
        ..StoreConfig::default()
    }
}

async fn open(dir: &Path, clock: &ManualClock) -> LogStore {
    LogStore::open_with_clock(dir, config(), Arc::new(clock.clone())).await.expect("open store")
}

async fn create(store: &LogStore, name: &str, shard_count: u32) -> StreamDescription {
    store
        .create_stream(name, CreateStreamOptions { shard_count, ..Default::default() })
        .await
        .expect("create stream")
}

async fn describe(store: &LogStore, name: &str) -> StreamDescription {
    store.describe_stream(name).await.expect("describe")
}

fn shard(desc: &StreamDescription, index: u64) -> &ShardDescription {
    desc.shards
        .iter()
        .find(|s| s.index == index)
        .unwrap_or_else(|| panic!("{} described", id(index)))
}

fn record(key: &str, data: String, hash_key: Option<u128>) -> NewRecord {
    NewRecord {
        partition_key: key.to_owned(),
        data: Bytes::from(data),
        explicit_hash_key: hash_key,
        producer_timestamp_ms: None,
    }
}

async fn append_one(store: &LogStore, stream: &str, r: NewRecord) -> SequenceNumber {
    let results = store.append(stream, vec![r]).await.expect("append");
    results.into_iter().next().expect("one result").expect("appended").sequence
}

/// Reads a shard from TRIM_HORIZON until a read returns nothing; returns the
/// records and that last read's `end_of_shard`.
async fn read_to_end(
    store: &LogStore,
    stream: &str,
    shard: &str,
) -> (Vec<StoredRecord>, Option<Vec<String>>) {
    let mut pos =
        store.position(stream, shard, StartingPosition::TrimHorizon).await.expect("position");
    let mut out = Vec::new();
    loop {
        let batch = store
            .read(stream, pos, ReadLimits { max_records: 100, max_bytes: 1 << 20 })
            .await
            .expect("read");
        if batch.records.is_empty() {
            return (out, batch.end_of_shard);
        }
        pos = batch.next;
        out.extend(batch.records);
    }
}

fn assert_invalid(result: Result<(), StoreError>, what: &str) {
    match result {
        Err(StoreError::InvalidArgument(_)) => {}
        other => panic!("{what}: expected InvalidArgument, got {other:?}"),
    }
}

fn assert_shard_not_found(result: Result<(), StoreError>, what: &str) {
    match result {
        Err(StoreError::ShardNotFound { .. }) => {}
        other => panic!("{what}: expected ShardNotFound, got {other:?}"),
    }
}

/// The open shards divide the key space as `HashRange::uniform(n, _)`, and
/// every shard's lineage is exact: a split parent's two children cut its
/// range in two, a merge child is the union of its closed parents, and every
/// chain leads back to one of `originals`.
fn check_uniform_with_lineage(desc: &StreamDescription, n: u64, originals: &[u64]) {
    let open: Vec<&ShardDescription> = desc.open_shards().collect();
    let ranges: Vec<HashRange> = open.iter().map(|s| s.hash_range).collect();
    let want: Vec<HashRange> = (0..n).map(|i| HashRange::uniform(n, i).expect("uniform")).collect();
    assert_eq!(ranges, want, "open shards after resharding to {n}");

    let by_index: BTreeMap<u64, &ShardDescription> =
        desc.shards.iter().map(|s| (s.index, s)).collect();
    let index_of = |shard_id: &str| {
        desc.shards
            .iter()
            .find(|s| s.shard_id == shard_id)
            .map(|s| s.index)
            .unwrap_or_else(|| panic!("{shard_id} is named as a parent but not described"))
    };
    for s in &desc.shards {
        assert_eq!(s.shard_id, id(s.index));
        assert_eq!(s.starting_sequence, SequenceNumber::new(s.index, 0));
        let parents: Vec<u64> = [&s.parent_shard_id, &s.adjacent_parent_shard_id]
            .into_iter()
            .flatten()
            .map(|p| index_of(p))
            .collect();
        match parents.as_slice() {
            [] => {
                assert!(originals.contains(&s.index), "{} has no parent", s.shard_id);
                assert!(s.adjacent_parent_shard_id.is_none());
            }
            [p] => {
                let p = by_index[p];
                assert!(p.ending_sequence.is_some(), "{}'s parent is closed", s.shard_id);
                assert!(p.index < s.index);
                let siblings: Vec<&ShardDescription> = desc
                    .shards
                    .iter()
                    .filter(|c| c.parent_shard_id.as_deref() == Some(&p.shard_id))
                    .collect();
                assert_eq!(siblings.len(), 2, "{} was split into two", p.shard_id);
                let (lo, hi) = (siblings[0].hash_range, siblings[1].hash_range);
                assert_eq!(
                    p.hash_range.split_at(hi.start),
                    Ok((lo, hi)),
                    "split of {}",
                    p.shard_id
                );
            }
            [p, q] => {
                let (p, q) = (by_index[p], by_index[q]);
                assert!(p.ending_sequence.is_some() && q.ending_sequence.is_some());
                assert!(p.index < s.index && q.index < s.index);
                assert_eq!(p.hash_range.merge(&q.hash_range), Ok(s.hash_range));
            }
            _ => unreachable!(),
        }
    }
    // Every open shard leads back to the originals through closed shards.
    for s in &open {
        let mut stack = vec![s.index];
        let mut roots = BTreeSet::new();
        while let Some(i) = stack.pop() {
            let sh = by_index[&i];
            let parents: Vec<u64> = [&sh.parent_shard_id, &sh.adjacent_parent_shard_id]
                .into_iter()
                .flatten()
                .map(|p| index_of(p))
                .collect();
            if parents.is_empty() {
                roots.insert(i);
            }
            stack.extend(parents);
        }
        assert!(
            !roots.is_empty() && roots.iter().all(|r| originals.contains(r)),
            "{} leads back to {roots:?}",
            s.shard_id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_have_kinesis_ranges() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = open(tmp.path(), &clock).await;
    let created = create(&store, "s", 3).await;
    let desc = describe(&store, "s").await;
    assert_eq!(created, desc);
    let got: Vec<(String, HashRange)> =
        desc.shards.iter().map(|s| (s.shard_id.clone(), s.hash_range)).collect();
    assert_eq!(got, vec![(id(0), R0), (id(1), R1), (id(2), R2)]);
    for (i, s) in desc.shards.iter().enumerate() {
        assert_eq!(s.index, i as u64);
        assert_eq!(s.parent_shard_id, None);
        assert_eq!(s.adjacent_parent_shard_id, None);
        assert_eq!(s.starting_sequence, SequenceNumber::new(i as u64, 0));
        assert_eq!(s.ending_sequence, None);
    }
    assert_eq!(R0.end.to_string(), "113427455640312821154458202477256070484");
    assert_eq!(R2.end.to_string(), "340282366920938463463374607431768211455");
    // Keys at the boundaries go to the shard that owns them.
    for (key, want) in
        [(0, 0), (R0.end, 0), (R1.start, 1), (R1.end, 1), (R2.start, 2), (u128::MAX, 2)]
    {
        let seq = append_one(&store, "s", record("k", format!("{key}"), Some(key))).await;
        assert_eq!(seq.shard_index, want, "hash key {key}");
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_merge_record_exact_lineage_and_refuse_bad_requests() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = open(tmp.path(), &clock).await;
    create(&store, "s", 3).await;
    let at: u128 = 1 << 100;
    let mut last = None;
    for (i, key) in [7, at - 1, at, R0.end, 0].into_iter().enumerate() {
        last = Some(append_one(&store, "s", record("k", format!("r{i}"), Some(key))).await);
    }
    assert_eq!(last, Some(SequenceNumber::new(0, 4)));

    // Split a shard that holds records.
    store.split_shard("s", &id(0), at).await.expect("split 0");
    let desc = describe(&store, "s").await;
    let parent = shard(&desc, 0);
    assert_eq!(parent.hash_range, R0);
    assert_eq!(parent.ending_sequence, Some(SequenceNumber::new(0, 4)), "its last record");
    let (lo, hi) = (shard(&desc, 3), shard(&desc, 4));
    assert_eq!(
        (lo.shard_id.as_str(), hi.shard_id.as_str()),
        ("shardId-000000000003", "shardId-000000000004")
    );
    assert_eq!(lo.hash_range, HashRange { start: 0, end: at - 1 });
    assert_eq!(hi.hash_range, HashRange { start: at, end: R0.end });
    for c in [lo, hi] {
        assert_eq!(c.parent_shard_id.as_deref(), Some("shardId-000000000000"));
        assert_eq!(c.adjacent_parent_shard_id, None);
        assert_eq!(c.ending_sequence, None);
    }
    let open: Vec<u64> = desc.open_shards().map(|s| s.index).collect();
    assert_eq!(open, vec![3, 4, 1, 2]);
    let (records, end) = read_to_end(&store, "s", &id(0)).await;
    assert_eq!(records.len(), 5);
    assert_eq!(end, Some(vec![id(3), id(4)]));

    // Refusals change nothing and use up no shard index.
    let before = describe(&store, "s").await;
    assert_invalid(store.merge_shards("s", &id(3), &id(1)).await, "merge of non-adjacent 3 and 1");
    assert_invalid(store.merge_shards("s", &id(1), &id(3)).await, "merge of non-adjacent 1 and 3");
    assert_invalid(store.merge_shards("s", &id(3), &id(3)).await, "merge of a shard with itself");
    assert_invalid(store.merge_shards("s", &id(0), &id(1)).await, "merge with closed 0");
    assert_invalid(store.merge_shards("s", &id(1), &id(0)).await, "merge with closed 0");
    assert_invalid(store.split_shard("s", &id(0), 5).await, "split of closed 0");
    assert_invalid(store.split_shard("s", &id(3), 0).await, "split key at the range start");
    assert_invalid(store.split_shard("s", &id(4), at).await, "split key at the range start");
    assert_invalid(
        store.split_shard("s", &id(4), R0.end + 1).await,
        "split key past the range end",
    );
    assert_invalid(
        store.split_shard("s", &id(1), R2.start + 5).await,
        "split key past the range end",
    );
    assert_shard_not_found(store.split_shard("s", &id(99), 5).await, "split of shard 99");
    assert_shard_not_found(store.split_shard("s", "shard-0", 5).await, "split of a bad id");
    assert_shard_not_found(store.merge_shards("s", &id(3), &id(99)).await, "merge with shard 99");
    assert_shard_not_found(store.merge_shards("s", &id(99), &id(3)).await, "merge of shard 99");
    assert!(matches!(
        store.split_shard("nope", &id(0), 5).await,
        Err(StoreError::StreamNotFound(_))
    ));
    assert_eq!(describe(&store, "s").await, before, "refused requests change nothing");

    // Split an empty shard at its last key: its end is its start.
    store.split_shard("s", &id(2), u128::MAX).await.expect("split 2");
    let desc = describe(&store, "s").await;
    let empty = shard(&desc, 2);
    assert_eq!(empty.ending_sequence, Some(empty.starting_sequence));
    assert_eq!(empty.ending_sequence, Some(SequenceNumber::new(2, 0)));
    assert_eq!(shard(&desc, 5).hash_range, HashRange { start: R2.start, end: u128::MAX - 1 });
    assert_eq!(shard(&desc, 6).hash_range, HashRange { start: u128::MAX, end: u128::MAX });
    let (records, end) = read_to_end(&store, "s", &id(2)).await;
    assert!(records.is_empty());
    assert_eq!(end, Some(vec![id(5), id(6)]));

    // Merge with the higher range named first: the first argument is the parent.
    store.merge_shards("s", &id(1), &id(4)).await.expect("merge 1 and 4");
    let desc = describe(&store, "s").await;
    let m = shard(&desc, 7);
    assert_eq!(m.hash_range, HashRange { start: at, end: R1.end });
    assert_eq!(m.parent_shard_id.as_deref(), Some("shardId-000000000001"));
    assert_eq!(m.adjacent_parent_shard_id.as_deref(), Some("shardId-000000000004"));
    assert_eq!(shard(&desc, 1).ending_sequence, Some(SequenceNumber::new(1, 0)));
    assert_eq!(shard(&desc, 4).ending_sequence, Some(SequenceNumber::new(4, 0)));
    assert_eq!(read_to_end(&store, "s", &id(1)).await.1, Some(vec![id(7)]));
    assert_eq!(read_to_end(&store, "s", &id(4)).await.1, Some(vec![id(7)]));

    // And in range order.
    let seq = append_one(&store, "s", record("k", "m".into(), Some(at + 1))).await;
    assert_eq!(seq, SequenceNumber::new(7, 0));
    store.merge_shards("s", &id(3), &id(7)).await.expect("merge 3 and 7");
    let desc = describe(&store, "s").await;
    let m = shard(&desc, 8);
    assert_eq!(m.hash_range, HashRange { start: 0, end: R1.end });
    assert_eq!(m.parent_shard_id.as_deref(), Some("shardId-000000000003"));
    assert_eq!(m.adjacent_parent_shard_id.as_deref(), Some("shardId-000000000007"));
    assert_eq!(shard(&desc, 7).ending_sequence, Some(SequenceNumber::new(7, 0)));
    let open: Vec<(u64, HashRange)> = desc.open_shards().map(|s| (s.index, s.hash_range)).collect();
    assert_eq!(
        open,
        vec![
            (8, HashRange { start: 0, end: R1.end }),
            (5, HashRange { start: R2.start, end: u128::MAX - 1 }),
            (6, HashRange { start: u128::MAX, end: u128::MAX }),
        ]
    );
    assert_invalid(store.merge_shards("s", &id(8), &id(6)).await, "merge of non-adjacent 8 and 6");
    assert_eq!(desc.shards.len(), 9);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_shard_count_gives_uniform_ranges_with_exact_lineage() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = open(tmp.path(), &clock).await;
    create(&store, "s", 1).await;
    for i in 0..10 {
        append_one(&store, "s", record(&format!("k{i}"), format!("before-{i}"), None)).await;
    }

    // Split-only, merge-only, then both.
    for (target, total) in [(4u32, 7usize), (2, 9), (3, 14)] {
        store.update_shard_count("s", target).await.expect("update shard count");
        let desc = describe(&store, "s").await;
        check_uniform_with_lineage(&desc, u64::from(target), &[0]);
        assert_eq!(desc.shards.len(), total, "shards after resharding to {target}: {desc:#?}");
        // Each uniform range takes the keys at its edges.
        for (i, s) in desc.open_shards().enumerate() {
            let r = HashRange::uniform(u64::from(target), i as u64).expect("uniform");
            for key in [r.start, r.end] {
                let seq = append_one(&store, "s", record("k", format!("{key}"), Some(key))).await;
                assert_eq!(seq.shard_index, s.index, "hash key {key} with {target} shards");
            }
        }
    }
    let desc = describe(&store, "s").await;
    let open: Vec<u64> = desc.open_shards().map(|s| s.index).collect();
    assert_eq!(open, vec![9, 13, 12]);

    // The same count again changes nothing; out-of-range counts are refused.
    store.update_shard_count("s", 3).await.expect("same count");
    assert_eq!(describe(&store, "s").await, desc);
    assert_invalid(store.update_shard_count("s", 0).await, "0 shards");
    assert_invalid(store.update_shard_count("s", 1025).await, "1025 shards");
    assert_eq!(describe(&store, "s").await, desc);

    // The records from before are still in the original shard.
    let (records, end) = read_to_end(&store, "s", &id(0)).await;
    let data: Vec<&[u8]> = records.iter().map(|r| &r.data[..]).collect();
    let want: Vec<String> = (0..10).map(|i| format!("before-{i}")).collect();
    assert_eq!(data, want.iter().map(|w| w.as_bytes()).collect::<Vec<_>>());
    assert_eq!(end, Some(vec![id(1), id(2)]));

    // From three original shards to one and back.
    create(&store, "t", 3).await;
    store.update_shard_count("t", 1).await.expect("to 1");
    let desc = describe(&store, "t").await;
    check_uniform_with_lineage(&desc, 1, &[0, 1, 2]);
    store.update_shard_count("t", 5).await.expect("to 5");
    check_uniform_with_lineage(&describe(&store, "t").await, 5, &[0, 1, 2]);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_keeps_its_order_across_a_split() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = open(tmp.path(), &clock).await;
    create(&store, "s", 1).await;
    let key = "sensor-42";
    let hash = weir_wire::hash_key(key);
    let other = |i: usize| record(&format!("other-{i}"), format!("other-{i}"), None);

    for i in 0..6 {
        let batch = vec![record(key, format!("{i}"), None), other(i)];
        store.append("s", batch).await.expect("append").into_iter().for_each(|r| {
            r.expect("appended");
        });
    }
    // Split so that the key's hash is near the boundary, on the high side.
    store.split_shard("s", &id(0), hash).await.expect("split");
    for i in 6..12 {
        let batch = vec![other(i), record(key, format!("{i}"), None)];
        store.append("s", batch).await.expect("append").into_iter().for_each(|r| {
            r.expect("appended");
        });
    }

    let (parent, end) = read_to_end(&store, "s", &id(0)).await;
    let children = end.expect("the parent ends and names its children");
    assert_eq!(children, vec![id(1), id(2)]);
    let desc = describe(&store, "s").await;
    let owner = children
        .iter()
        .find(|c| desc.shards.iter().any(|s| &s.shard_id == *c && s.hash_range.contains(hash)))
        .expect("a child owns the key");
    assert_eq!(owner, &id(2), "the split key itself starts the high child");
    let (child, end) = read_to_end(&store, "s", owner).await;
    assert_eq!(end, None, "the child is open");
    let seen: Vec<String> = parent
        .iter()
        .chain(&child)
        .filter(|r| r.partition_key == key)
        .map(|r| String::from_utf8_lossy(&r.data).into_owned())
        .collect();
    assert_eq!(seen, (0..12).map(|i| i.to_string()).collect::<Vec<_>>());
    let (sibling, _) = read_to_end(&store, "s", &id(1)).await;
    assert!(sibling.iter().all(|r| r.partition_key != key));
    store.close().await;
}

/// One appender's acknowledged record.
#[derive(Debug, Clone)]
struct Ack {
    data: String,
    shard_index: u64,
    offset: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_racing_splits_and_a_merge_land_exactly_once() {
    const TASKS: u64 = 8;
    const STEP: u64 = 400;
    let tmp = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = open(tmp.path(), &clock).await;
    create(&store, "s", 1).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (acked_tx, mut acked) = watch::channel(0u64);
    let acked_tx = Arc::new(acked_tx);

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        let stop = stop.clone();
        let acked_tx = acked_tx.clone();
        // Spread the appenders over the key space so both children get some.
        let hash = HashRange::uniform(TASKS, t).expect("uniform").start + 977;
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                let batch: Vec<NewRecord> = (0..1 + n % 3)
                    .map(|k| record(&format!("task-{t}"), format!("t{t}-{}", n + k), Some(hash)))
                    .collect();
                let count = batch.len() as u64;
                let results = store.append("s", batch).await.expect("append call");
                for (k, r) in results.into_iter().enumerate() {
                    let a = r
                        .unwrap_or_else(|e| panic!("t{t}-{}: not acknowledged: {e}", n + k as u64));
                    acks.push(Ack {
                        data: format!("t{t}-{}", n + k as u64),
                        shard_index: a.sequence.shard_index,
                        offset: a.sequence.offset,
                    });
                    assert_eq!(a.shard_id, id(a.sequence.shard_index));
                }
                n += count;
                acked_tx.send_modify(|c| *c += count);
            }
            acks
        }));
    }

    // Only the appenders hold the sender: if they all die, the waits below
    // fail instead of hanging.
    drop(acked_tx);
    acked.wait_for(|&c| c >= STEP).await.expect("appenders running");
    store.split_shard("s", &id(0), 1 << 127).await.expect("split while appending");
    let after_split = *acked.borrow();
    acked.wait_for(|&c| c >= after_split + STEP).await.expect("appenders running");
    store.merge_shards("s", &id(1), &id(2)).await.expect("merge while appending");
    let after_merge = *acked.borrow();
    acked.wait_for(|&c| c >= after_merge + STEP).await.expect("appenders running");
    store.split_shard("s", &id(3), 3 << 126).await.expect("second split while appending");
    let after_second = *acked.borrow();
    acked.wait_for(|&c| c >= after_second + STEP).await.expect("appenders running");
    stop.store(true, Ordering::Release);
    let mut per_task = Vec::new();
    for task in tasks {
        per_task.push(task.await.expect("appender task"));
    }

    // Read every shard back.
    let desc = describe(&store, "s").await;
    assert_eq!(desc.shards.len(), 6);
    let mut found: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for s in &desc.shards {
        let (records, end) = read_to_end(&store, "s", &s.shard_id).await;
        for (o, r) in records.iter().enumerate() {
            assert_eq!(r.sequence, SequenceNumber::new(s.index, o as u64), "dense offsets");
            let h = r.explicit_hash_key.expect("explicit hash key");
            assert!(s.hash_range.contains(h), "{} holds a record of its range", s.shard_id);
            let data = String::from_utf8(r.data.to_vec()).expect("utf-8");
            found.entry(data).or_default().push((s.index, r.sequence.offset));
        }
        match s.ending_sequence {
            Some(end_seq) => {
                let last = records.last().map_or(0, |r| r.sequence.offset);
                assert_eq!(end_seq, SequenceNumber::new(s.index, last), "{}'s end", s.shard_id);
                let children: Vec<String> = desc
                    .shards
                    .iter()
                    .filter(|c| {
                        c.parent_shard_id.as_ref() == Some(&s.shard_id)
                            || c.adjacent_parent_shard_id.as_ref() == Some(&s.shard_id)
                    })
                    .map(|c| c.shard_id.clone())
                    .collect();
                assert_eq!(end, Some(children));
            }
            None => assert_eq!(end, None),
        }
        assert!(!records.is_empty(), "{} got records while the appenders ran", s.shard_id);
    }

    let total: usize = per_task.iter().map(Vec::len).sum();
    assert_eq!(found.len(), total, "as many records stored as acknowledged");
    for acks in &per_task {
        for a in acks {
            assert_eq!(
                found.get(&a.data).map(Vec::as_slice),
                Some(&[(a.shard_index, a.offset)][..]),
                "{} stored exactly once, where it was acknowledged",
                a.data
            );
            let s = shard(&desc, a.shard_index);
            if let Some(end) = s.ending_sequence {
                assert!(a.offset <= end.offset, "{} after {}'s end", a.data, s.shard_id);
            }
        }
        // One appender's records keep their order: offsets rise within a
        // shard, and it only moves on to a later shard.
        for w in acks.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            assert!(
                (a.shard_index, a.offset) < (b.shard_index, b.offset),
                "{} at {}/{} then {} at {}/{}",
                a.data,
                a.shard_index,
                a.offset,
                b.data,
                b.shard_index,
                b.offset
            );
        }
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reshards_survive_a_reopen() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = open(tmp.path(), &clock).await;
    create(&store, "s", 2).await;
    for i in 0..20u128 {
        append_one(&store, "s", record("k", format!("a{i}"), Some(i << 123))).await;
    }
    clock.advance(1_000);
    store.split_shard("s", &id(0), 1 << 120).await.expect("split");
    clock.advance(1_000);
    store.merge_shards("s", &id(3), &id(1)).await.expect("merge");
    clock.advance(1_000);
    store.update_shard_count("s", 3).await.expect("update shard count");
    store.set_retention("s", 30).await.expect("retention");
    for i in 0..20u128 {
        append_one(&store, "s", record("k", format!("b{i}"), Some(i << 123))).await;
    }
    let before = describe(&store, "s").await;
    check_uniform_with_lineage(&before, 3, &[0, 1]);
    let mut contents = Vec::new();
    for s in &before.shards {
        contents.push(read_to_end(&store, "s", &s.shard_id).await);
    }

    store.close().await;
    drop(store);
    let store = open(tmp.path(), &clock).await;
    let after = describe(&store, "s").await;
    assert_eq!(after, before, "describe after reopen equals describe before");
    for (s, want) in before.shards.iter().zip(&contents) {
        assert_eq!(
            &read_to_end(&store, "s", &s.shard_id).await,
            want,
            "{} after reopen",
            s.shard_id
        );
    }

    // Routing and shard numbering carry on where they were.
    let open_shards: Vec<ShardDescription> = after.open_shards().cloned().collect();
    for s in &open_shards {
        let seq = append_one(&store, "s", record("k", "c".into(), Some(s.hash_range.start))).await;
        let held = contents[after.shards.iter().position(|x| x.index == s.index).expect("shard")]
            .0
            .len() as u64;
        assert_eq!(seq, SequenceNumber::new(s.index, held));
    }
    let next = after.shards.iter().map(|s| s.index).max().expect("shards") + 1;
    let first = &open_shards[0];
    store.split_shard("s", &first.shard_id, first.hash_range.start + 1).await.expect("split");
    let desc = describe(&store, "s").await;
    assert_eq!(shard(&desc, next).parent_shard_id.as_ref(), Some(&first.shard_id));
    assert_eq!(shard(&desc, next + 1).parent_shard_id.as_ref(), Some(&first.shard_id));
    store.close().await;
}
