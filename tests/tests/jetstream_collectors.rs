//! Two collectors over one JetStream store: what one writes the other reads,
//! iterators from one work on the other, and when both reshard the same
//! stream at once the catalog ends with one lineage and no record is lost or
//! duplicated.

mod kinesis_support;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, Shard, ShardIteratorType};
use kinesis_support::ops::{create, drain, iterator};
use kinesis_support::sdk;
use weir_tests::harness::Collector;
use weir_tests::nats::NatsServer;

/// Split/merge rounds the two collectors race.
const ROUNDS: usize = 6;

fn collector(server: &NatsServer, prefix: &str) -> (Collector, Client) {
    let c = Collector::start(&["--store", &server.url(), "--store-prefix", prefix]);
    let client = sdk(c.http_addr());
    (c, client)
}

async fn shards(client: &Client, stream: &str) -> Vec<Shard> {
    let out = client.list_shards().stream_name(stream).send().await.expect("ListShards");
    let mut s = out.shards().to_vec();
    s.sort_by(|a, b| a.shard_id().cmp(b.shard_id()));
    s
}

fn range(s: &Shard) -> (u128, u128) {
    let r = s.hash_key_range().expect("hash range");
    (r.starting_hash_key().parse().expect("start"), r.ending_hash_key().parse().expect("end"))
}

/// Every record of `stream`, read shard by shard from TRIM_HORIZON.
async fn read_all(client: &Client, stream: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for s in shards(client, stream).await {
        let it = iterator(client, stream, s.shard_id(), ShardIteratorType::TrimHorizon).await;
        let (records, _) = drain(client, it, 10_000).await;
        out.extend(records.into_iter().map(|r| r.1));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_iterators_cross_collectors() {
    let server = NatsServer::start();
    let (_a, a) = collector(&server, "cross");
    let (_b, b) = collector(&server, "cross");
    create(&a, "shared", 2).await;
    let put = b
        .put_record()
        .stream_name("shared")
        .partition_key("k")
        .data(Blob::new(&b"through b"[..]))
        .send()
        .await
        .expect("PutRecord through b");
    // An iterator issued by A is accepted by B (one signing key in the store).
    let it = iterator(&a, "shared", put.shard_id(), ShardIteratorType::TrimHorizon).await;
    let got = b.get_records().shard_iterator(it).send().await.expect("GetRecords through b");
    assert_eq!(got.records().len(), 1);
    assert_eq!(got.records()[0].data().as_ref(), b"through b");
    assert_eq!(got.records()[0].sequence_number(), put.sequence_number());
}

async fn open_shards(client: &Client) -> Vec<Shard> {
    shards(client, "race")
        .await
        .into_iter()
        .filter(|s| s.sequence_number_range().is_some_and(|r| r.ending_sequence_number().is_none()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_splits_and_merges_keep_one_lineage_and_every_record_once() {
    let server = NatsServer::start();
    let (_a, a) = collector(&server, "race");
    let (_b, b) = collector(&server, "race");
    create(&a, "race", 2).await;
    // A writer alternating between the collectors while they reshard.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (a, b, stop) = (a.clone(), b.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let client = if n.is_multiple_of(2) { &a } else { &b };
                let entries: Vec<PutRecordsRequestEntry> = (0..20)
                    .map(|i| {
                        PutRecordsRequestEntry::builder()
                            .partition_key(format!("key-{}", (n * 20 + i) % 97))
                            .data(Blob::new(format!("r{n}-{i}")))
                            .build()
                            .expect("entry")
                    })
                    .collect();
                if let Ok(out) =
                    client.put_records().stream_name("race").set_records(Some(entries)).send().await
                {
                    for (i, r) in out.records().iter().enumerate() {
                        if r.error_code().is_none() {
                            acked.push(format!("r{n}-{i}").into_bytes());
                        }
                    }
                }
                n += 1;
            }
            acked
        })
    };
    let mut wins = 0;
    for round in 0..ROUNDS {
        let mut open = open_shards(&a).await;
        if open.len() < 2 {
            // A merge won the last round: split alone to have two again.
            let (start, end) = range(&open[0]);
            a.split_shard()
                .stream_name("race")
                .shard_to_split(open[0].shard_id())
                .new_starting_hash_key((start + (end - start) / 2 + 1).to_string())
                .send()
                .await
                .expect("SplitShard");
            open = open_shards(&a).await;
        }
        let mut by_start: Vec<&Shard> = open.iter().collect();
        by_start.sort_by_key(|s| range(s).0);
        let (x, y) = (by_start[0], by_start[1]);
        let (start, end) = range(x);
        let mid = start + (end - start) / 2 + 1;
        let split = a
            .split_shard()
            .stream_name("race")
            .shard_to_split(x.shard_id())
            .new_starting_hash_key(mid.to_string())
            .send();
        let merge = b
            .merge_shards()
            .stream_name("race")
            .shard_to_merge(x.shard_id())
            .adjacent_shard_to_merge(y.shard_id())
            .send();
        let (split, merge) = tokio::join!(split, merge);
        let won = usize::from(split.is_ok()) + usize::from(merge.is_ok());
        assert_eq!(
            won, 1,
            "round {round}: exactly one of the racing reshards wins: {split:?} {merge:?}"
        );
        wins += won;
    }
    assert_eq!(wins, ROUNDS);
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.expect("writer");
    assert!(!acked.is_empty(), "the writer got records in");
    // One lineage, the same through both collectors.
    let (la, lb) = (shards(&a, "race").await, shards(&b, "race").await);
    assert_eq!(la, lb, "both collectors describe the same shards");
    let ids: HashSet<&str> = la.iter().map(Shard::shard_id).collect();
    let mut open: Vec<(u128, u128)> = la
        .iter()
        .filter(|s| s.sequence_number_range().is_some_and(|r| r.ending_sequence_number().is_none()))
        .map(range)
        .collect();
    open.sort();
    assert_eq!(open.first().map(|r| r.0), Some(0));
    assert_eq!(open.last().map(|r| r.1), Some(u128::MAX));
    for w in open.windows(2) {
        assert_eq!(w[0].1 + 1, w[1].0, "open shards tile the hash space: {open:?}");
    }
    let mut children: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &la {
        for p in [s.parent_shard_id(), s.adjacent_parent_shard_id()].into_iter().flatten() {
            assert!(ids.contains(p), "{} names a parent {p} that is not listed", s.shard_id());
            *children.entry(p).or_default() += 1;
        }
    }
    for s in &la {
        let closed =
            s.sequence_number_range().is_some_and(|r| r.ending_sequence_number().is_some());
        assert_eq!(
            closed,
            children.contains_key(s.shard_id()),
            "{}: closed iff it has children",
            s.shard_id()
        );
    }
    // Every acknowledged record exactly once, read through either collector.
    for client in [&a, &b] {
        let read = read_all(client, "race").await;
        let unique: HashSet<&Vec<u8>> = read.iter().collect();
        assert_eq!(unique.len(), read.len(), "no record is stored twice");
        for r in &acked {
            assert!(unique.contains(r), "acknowledged {} is missing", String::from_utf8_lossy(r));
        }
        assert_eq!(read.len(), acked.len(), "nothing unacknowledged appeared");
    }
}
