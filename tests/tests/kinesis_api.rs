//! The Kinesis-compatible API driven by the official AWS SDK for Rust against
//! the real `weir-collector` process: every operation, AWS's routing and
//! sequence rules, iterators, resharding lineage and the error names.

mod kinesis_support;

use std::collections::BTreeMap;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::{Blob, DateTime};
use aws_sdk_kinesis::types::{
    PutRecordsRequestEntry, ScalingType, ShardFilter, ShardFilterType, ShardIteratorType,
    StreamMode, StreamModeDetails, StreamStatus,
};
use kinesis_support::{code, sdk, seq, start};
use weir_wire::hash_key;

async fn create(client: &Client, name: &str, shards: i32) {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .expect("CreateStream");
}

async fn put(client: &Client, stream: &str, key: &str, data: &[u8]) -> (String, String) {
    let r = client
        .put_record()
        .stream_name(stream)
        .partition_key(key)
        .data(Blob::new(data))
        .send()
        .await
        .expect("PutRecord");
    (r.shard_id().to_owned(), r.sequence_number().to_owned())
}

async fn iterator(client: &Client, stream: &str, shard: &str, kind: ShardIteratorType) -> String {
    client
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(shard)
        .shard_iterator_type(kind)
        .send()
        .await
        .expect("GetShardIterator")
        .shard_iterator()
        .expect("an iterator")
        .to_owned()
}

/// (partition key, data, sequence number, arrival ms) of a record.
type Rec = (String, Vec<u8>, String, i64);

/// Reads from `it` with `limit` per call until caught up or the shard ends;
/// returns the records and the child shards reported at the end.
async fn drain(client: &Client, mut it: String, limit: i32) -> (Vec<Rec>, Vec<String>) {
    let mut out = Vec::new();
    loop {
        let r =
            client.get_records().shard_iterator(&it).limit(limit).send().await.expect("GetRecords");
        assert!(r.records().len() <= limit as usize);
        for rec in r.records() {
            // The wire carries epoch seconds as a JSON number with three
            // decimals; the SDK parses it through f64, which can land a few
            // nanoseconds short of the millisecond (…123 → …122.9999).
            // Round to the nearest millisecond to get the server's value.
            let t = rec.approximate_arrival_timestamp().expect("arrival time");
            let arrival = t.secs() * 1000 + (i64::from(t.subsec_nanos()) + 500_000) / 1_000_000;
            out.push((
                rec.partition_key().expect("partition key").to_owned(),
                rec.data().as_ref().to_vec(),
                rec.sequence_number().to_owned(),
                arrival,
            ));
        }
        match r.next_shard_iterator() {
            None => {
                let children = r.child_shards().iter().map(|c| c.shard_id().to_owned()).collect();
                return (out, children);
            }
            Some(next) => {
                if r.records().is_empty() && r.millis_behind_latest() == Some(0) {
                    return (out, Vec::new());
                }
                it = next.to_owned();
            }
        }
    }
}

#[tokio::test]
async fn stream_lifecycle_listing_summaries_tags_and_modes() {
    let (c, addr) = start(&[]);
    let client = sdk(addr);
    for name in ["alpha", "bravo", "charlie"] {
        create(&client, name, 1).await;
    }
    client
        .create_stream()
        .stream_name("delta")
        .stream_mode_details(
            StreamModeDetails::builder().stream_mode(StreamMode::OnDemand).build().expect("mode"),
        )
        .tags("team", "edge")
        .tags("env", "test")
        .send()
        .await
        .expect("CreateStream ON_DEMAND with tags");

    // ListStreams pages of 2: names, summaries, HasMoreStreams, NextToken.
    let p1 = client.list_streams().limit(2).send().await.expect("ListStreams");
    assert_eq!(p1.stream_names(), ["alpha", "bravo"]);
    assert!(p1.has_more_streams());
    assert_eq!(p1.stream_summaries().len(), 2);
    assert_eq!(
        p1.stream_summaries()[0].stream_arn(),
        "arn:aws:kinesis:us-east-1:000000000000:stream/alpha"
    );
    let p2 = client
        .list_streams()
        .limit(2)
        .next_token(p1.next_token().expect("a next token"))
        .send()
        .await
        .expect("ListStreams page 2");
    assert_eq!(p2.stream_names(), ["charlie", "delta"]);
    assert!(!p2.has_more_streams() && p2.next_token().is_none());
    let p3 = client
        .list_streams()
        .exclusive_start_stream_name("bravo")
        .send()
        .await
        .expect("ListStreams after bravo");
    assert_eq!(p3.stream_names(), ["charlie", "delta"]);

    // ON_DEMAND without a shard count gets 4 shards; the mode is reported.
    let s = client.describe_stream_summary().stream_name("delta").send().await.expect("summary");
    let s = s.stream_description_summary().expect("summary");
    assert_eq!(s.open_shard_count(), 4);
    assert_eq!(s.stream_status(), &StreamStatus::Active);
    assert_eq!(
        s.stream_mode_details().map(|m| m.stream_mode().clone()),
        Some(StreamMode::OnDemand)
    );
    assert_eq!(s.retention_period_hours(), 24);
    assert_eq!(s.consumer_count(), Some(0));

    // Tags: created with two, add one, replace one, remove one, page.
    client
        .add_tags_to_stream()
        .stream_name("delta")
        .tags("owner", "ops")
        .tags("env", "prod")
        .send()
        .await
        .expect("AddTagsToStream");
    client
        .remove_tags_from_stream()
        .stream_name("delta")
        .tag_keys("team")
        .send()
        .await
        .expect("Remove");
    let t = client.list_tags_for_stream().stream_name("delta").send().await.expect("ListTags");
    let tags: BTreeMap<&str, Option<&str>> =
        t.tags().iter().map(|t| (t.key(), t.value())).collect();
    assert_eq!(tags, BTreeMap::from([("env", Some("prod")), ("owner", Some("ops"))]));
    let t = client
        .list_tags_for_stream()
        .stream_name("delta")
        .limit(1)
        .send()
        .await
        .expect("ListTags page");
    assert!(t.has_more_tags() && t.tags()[0].key() == "env");
    let t = client
        .list_tags_for_stream()
        .stream_name("delta")
        .exclusive_start_tag_key("env")
        .send()
        .await
        .expect("ListTags after env");
    assert!(!t.has_more_tags() && t.tags()[0].key() == "owner");
    // More than 50 tags on a stream is refused and changes nothing.
    let mut many = client.add_tags_to_stream().stream_name("delta");
    for i in 0..49 {
        many = many.tags(format!("k{i}"), "v");
    }
    expect_code!(many.send().await, "InvalidArgumentException");

    // The mode can change; a stream named by ARN works too.
    client
        .update_stream_mode()
        .stream_arn("arn:aws:kinesis:us-east-1:000000000000:stream/delta")
        .stream_mode_details(
            StreamModeDetails::builder()
                .stream_mode(StreamMode::Provisioned)
                .build()
                .expect("mode"),
        )
        .send()
        .await
        .expect("UpdateStreamMode");
    let d = client
        .describe_stream()
        .stream_arn("arn:aws:kinesis:us-east-1:000000000000:stream/delta")
        .send()
        .await
        .expect("DescribeStream by ARN");
    let d = d.stream_description().expect("description");
    assert_eq!(d.stream_name(), "delta");
    assert_eq!(
        d.stream_mode_details().map(|m| m.stream_mode().clone()),
        Some(StreamMode::Provisioned)
    );

    // Delete, and the name is free again (with fresh shards).
    client.delete_stream().stream_name("alpha").send().await.expect("DeleteStream");
    expect_code!(
        client.describe_stream().stream_name("alpha").send().await,
        "ResourceNotFoundException"
    );
    create(&client, "alpha", 2).await;
    let names = client.list_streams().send().await.expect("ListStreams");
    assert_eq!(names.stream_names(), ["alpha", "bravo", "charlie", "delta"], "{}", c.report());
}

#[tokio::test]
async fn records_go_to_the_shard_holding_md5_of_the_key_or_the_explicit_hash_key() {
    let (_c, addr) = start(&[]);
    let client = sdk(addr);
    create(&client, "routes", 4).await;
    let d = client.describe_stream().stream_name("routes").send().await.expect("describe");
    let ranges: Vec<(String, u128, u128)> = d
        .stream_description()
        .expect("description")
        .shards()
        .iter()
        .map(|s| {
            let r = s.hash_key_range().expect("range");
            (
                s.shard_id().to_owned(),
                r.starting_hash_key().parse().expect("start"),
                r.ending_hash_key().parse().expect("end"),
            )
        })
        .collect();
    assert_eq!(ranges.len(), 4);
    assert_eq!((ranges[0].1, ranges[3].2), (0, u128::MAX));
    let holder = |h: u128| {
        ranges
            .iter()
            .find(|(_, s, e)| *s <= h && h <= *e)
            .map(|(id, _, _)| id.clone())
            .expect("a shard")
    };
    let mut last: BTreeMap<String, u128> = BTreeMap::new();
    for i in 0..200 {
        let key = format!("device-{i}");
        let (shard, sequence) =
            put(&client, "routes", &key, format!("reading {i}").as_bytes()).await;
        assert_eq!(shard, holder(hash_key(&key)), "{key}");
        assert_eq!(sequence.len(), 39);
        // Strictly increasing per shard.
        let n = seq(&sequence);
        if let Some(prev) = last.insert(shard.clone(), n) {
            assert!(n > prev, "{shard}: {n} after {prev}");
        }
    }
    assert_eq!(last.len(), 4, "200 keys spread over all shards");
    // An explicit hash key overrides the key's MD5, in PutRecord and PutRecords.
    for (k, (id, start, end)) in ranges.iter().enumerate() {
        let mid = start + (end - start) / 2;
        let r = client
            .put_record()
            .stream_name("routes")
            .partition_key("always-the-same-key")
            .explicit_hash_key(mid.to_string())
            .sequence_number_for_ordering(last[id].to_string())
            .data(Blob::new(vec![k as u8]))
            .send()
            .await
            .expect("PutRecord with ExplicitHashKey");
        assert_eq!(r.shard_id(), id);
        assert!(seq(r.sequence_number()) > last[id]);
        let entry = PutRecordsRequestEntry::builder()
            .partition_key("always-the-same-key")
            .explicit_hash_key(end.to_string())
            .data(Blob::new(vec![1]))
            .build()
            .expect("entry");
        let r = client
            .put_records()
            .stream_name("routes")
            .records(entry)
            .send()
            .await
            .expect("PutRecords");
        assert_eq!(r.records()[0].shard_id(), Some(id.as_str()));
    }
}

#[tokio::test]
async fn put_records_answers_per_entry_in_order_and_enforces_batch_limits() {
    let (_c, addr) = start(&[]);
    let client = sdk(addr);
    create(&client, "batches", 3).await;
    let entries: Vec<PutRecordsRequestEntry> = (0..500)
        .map(|i| {
            PutRecordsRequestEntry::builder()
                .partition_key(format!("k{}", i % 37))
                .data(Blob::new(format!("record {i}").into_bytes()))
                .build()
                .expect("entry")
        })
        .collect();
    let r = client
        .put_records()
        .stream_name("batches")
        .set_records(Some(entries))
        .send()
        .await
        .expect("PutRecords of 500");
    assert_eq!(r.failed_record_count(), Some(0));
    assert_eq!(r.records().len(), 500);
    // Results are in request order: each entry's shard holds its key, and
    // entries of one key got increasing sequence numbers.
    let mut per_key: BTreeMap<String, u128> = BTreeMap::new();
    for (i, e) in r.records().iter().enumerate() {
        let key = format!("k{}", i % 37);
        let n = seq(e.sequence_number().expect("sequence number"));
        if let Some(prev) = per_key.insert(key.clone(), n) {
            assert!(n > prev, "{key}");
        }
    }
    // Read everything back: the same 500 records, by key in order.
    let mut read = Vec::new();
    for shard in ["shardId-000000000000", "shardId-000000000001", "shardId-000000000002"] {
        let it = iterator(&client, "batches", shard, ShardIteratorType::TrimHorizon).await;
        read.extend(drain(&client, it, 10_000).await.0);
    }
    assert_eq!(read.len(), 500);

    // 501 entries, zero entries, more than 5 MiB: refused whole.
    let entry = |n: usize| {
        PutRecordsRequestEntry::builder()
            .partition_key("k")
            .data(Blob::new(vec![7u8; n]))
            .build()
            .expect("entry")
    };
    let e = expect_code!(
        client
            .put_records()
            .stream_name("batches")
            .set_records(Some((0..501).map(|_| entry(1)).collect()))
            .send()
            .await,
        "ValidationException"
    );
    assert!(format!("{e:?}").contains("less than or equal to 500"), "{e:?}");
    expect_code!(
        client.put_records().stream_name("batches").set_records(Some(Vec::new())).send().await,
        "ValidationException"
    );
    let mut big: Vec<PutRecordsRequestEntry> = (0..5).map(|_| entry(1024 * 1024)).collect();
    big.push(entry(1));
    expect_code!(
        client.put_records().stream_name("batches").set_records(Some(big)).send().await,
        "InvalidArgumentException"
    );
}

#[tokio::test]
async fn every_iterator_type_limits_and_chaining() {
    let (_c, addr) = start(&[]);
    let client = sdk(addr);
    create(&client, "iters", 1).await;
    let shard = "shardId-000000000000";
    let mut sent = Vec::new();
    for i in 0..30 {
        sent.push(
            put(&client, "iters", &format!("k{}", i % 3), format!("r{i}").as_bytes()).await.1,
        );
    }
    // TRIM_HORIZON, 7 at a time, chained through NextShardIterator.
    let it = iterator(&client, "iters", shard, ShardIteratorType::TrimHorizon).await;
    let (all, _) = drain(&client, it, 7).await;
    assert_eq!(all.iter().map(|r| r.2.clone()).collect::<Vec<_>>(), sent);
    assert!(all.iter().enumerate().all(|(i, r)| r.1 == format!("r{i}").into_bytes()));
    // MillisBehindLatest is reported and 0 once caught up.
    let it = iterator(&client, "iters", shard, ShardIteratorType::TrimHorizon).await;
    let r = client.get_records().shard_iterator(it).limit(1).send().await.expect("GetRecords");
    assert!(r.millis_behind_latest().is_some());

    // AT_SEQUENCE_NUMBER and AFTER_SEQUENCE_NUMBER.
    let at = client
        .get_shard_iterator()
        .stream_name("iters")
        .shard_id(shard)
        .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
        .starting_sequence_number(&sent[10])
        .send()
        .await
        .expect("AT_SEQUENCE_NUMBER");
    let (recs, _) = drain(&client, at.shard_iterator().expect("it").to_owned(), 100).await;
    assert_eq!(recs[0].2, sent[10]);
    assert_eq!(recs.len(), 20);
    let after = client
        .get_shard_iterator()
        .stream_name("iters")
        .shard_id(shard)
        .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
        .starting_sequence_number(&sent[10])
        .send()
        .await
        .expect("AFTER_SEQUENCE_NUMBER");
    let (recs, _) = drain(&client, after.shard_iterator().expect("it").to_owned(), 100).await;
    assert_eq!(recs[0].2, sent[11]);

    // AT_TIMESTAMP: the first record that arrived at or after the time.
    let t = all[20].3;
    let at_time = client
        .get_shard_iterator()
        .stream_name("iters")
        .shard_id(shard)
        .shard_iterator_type(ShardIteratorType::AtTimestamp)
        .timestamp(DateTime::from_millis(t))
        .send()
        .await
        .expect("AT_TIMESTAMP");
    let (recs, _) = drain(&client, at_time.shard_iterator().expect("it").to_owned(), 100).await;
    let first = all.iter().position(|r| r.3 >= t).expect("a record at or after t");
    assert_eq!(recs[0].2, all[first].2);
    assert_eq!(recs.len(), 30 - first);

    // LATEST: nothing old; a record put afterwards is the first seen.
    let latest = iterator(&client, "iters", shard, ShardIteratorType::Latest).await;
    let r = client.get_records().shard_iterator(&latest).send().await.expect("GetRecords");
    assert!(r.records().is_empty() && r.millis_behind_latest() == Some(0));
    let (_, new_seq) = put(&client, "iters", "late", b"late").await;
    let r = client
        .get_records()
        .shard_iterator(r.next_shard_iterator().expect("next"))
        .send()
        .await
        .expect("GetRecords");
    assert_eq!(r.records().len(), 1);
    assert_eq!(r.records()[0].sequence_number(), new_seq);
    // The old iterator still reads from where it was: iterators are positions.
    let r = client.get_records().shard_iterator(&latest).send().await.expect("GetRecords again");
    assert_eq!(r.records()[0].sequence_number(), new_seq);
}

#[tokio::test]
async fn replaying_from_trim_horizon_twice_gives_identical_records() {
    let (_c, addr) = start(&[]);
    let client = sdk(addr);
    create(&client, "replay", 2).await;
    for i in 0..300 {
        put(&client, "replay", &format!("sensor-{}", i % 11), &[i as u8; 40]).await;
    }
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut all = Vec::new();
        for shard in ["shardId-000000000000", "shardId-000000000001"] {
            let it = iterator(&client, "replay", shard, ShardIteratorType::TrimHorizon).await;
            all.extend(drain(&client, it, 64).await.0);
        }
        runs.push(all);
    }
    assert_eq!(runs[0].len(), 300);
    assert_eq!(runs[0], runs[1]);
}

#[tokio::test]
async fn split_and_merge_keep_lineage_and_per_key_order() {
    let (c, addr) = start(&[]);
    let client = sdk(addr);
    create(&client, "reshard", 1).await;
    let keys: Vec<String> = (0..8).map(|i| format!("key-{i}")).collect();
    let mut expected: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    let mut n = 0u32;
    let mut send = async |client: &Client, expected: &mut BTreeMap<String, Vec<Vec<u8>>>| {
        for k in &keys {
            n += 1;
            let data = n.to_be_bytes().to_vec();
            put(client, "reshard", k, &data).await;
            expected.entry(k.clone()).or_default().push(data);
        }
    };
    send(&client, &mut expected).await;
    let mid = (u128::MAX / 2 + 1).to_string();
    client
        .split_shard()
        .stream_name("reshard")
        .shard_to_split("shardId-000000000000")
        .new_starting_hash_key(&mid)
        .send()
        .await
        .expect("SplitShard");
    send(&client, &mut expected).await;

    let d = client.describe_stream().stream_name("reshard").send().await.expect("describe");
    let shards = d.stream_description().expect("description").shards();
    assert_eq!(shards.len(), 3);
    let parent = &shards[0];
    assert!(parent.sequence_number_range().expect("range").ending_sequence_number().is_some());
    for (child, (start, end)) in shards[1..]
        .iter()
        .zip([("0".to_owned(), (u128::MAX / 2).to_string()), (mid.clone(), u128::MAX.to_string())])
    {
        assert_eq!(child.parent_shard_id(), Some("shardId-000000000000"));
        let r = child.hash_key_range().expect("range");
        assert_eq!((r.starting_hash_key(), r.ending_hash_key()), (start.as_str(), end.as_str()));
        // Children's sequence numbers exceed the parent's.
        assert!(
            seq(child.sequence_number_range().expect("range").starting_sequence_number())
                > seq(parent
                    .sequence_number_range()
                    .expect("r")
                    .ending_sequence_number()
                    .expect("e"))
        );
    }
    // Splitting a closed shard or at a key outside the range is refused.
    expect_code!(
        client
            .split_shard()
            .stream_name("reshard")
            .shard_to_split("shardId-000000000000")
            .new_starting_hash_key("5")
            .send()
            .await,
        "InvalidArgumentException"
    );
    expect_code!(
        client
            .split_shard()
            .stream_name("reshard")
            .shard_to_split("shardId-000000000001")
            .new_starting_hash_key(&mid)
            .send()
            .await,
        "InvalidArgumentException"
    );

    // Merge the two children back.
    client
        .merge_shards()
        .stream_name("reshard")
        .shard_to_merge("shardId-000000000001")
        .adjacent_shard_to_merge("shardId-000000000002")
        .send()
        .await
        .expect("MergeShards");
    send(&client, &mut expected).await;
    let open = client
        .list_shards()
        .stream_name("reshard")
        .shard_filter(
            ShardFilter::builder().r#type(ShardFilterType::AtLatest).build().expect("filter"),
        )
        .send()
        .await
        .expect("ListShards AT_LATEST");
    assert_eq!(open.shards().len(), 1);
    let merged = &open.shards()[0];
    assert_eq!(merged.shard_id(), "shardId-000000000003");
    assert_eq!(merged.parent_shard_id(), Some("shardId-000000000001"));
    assert_eq!(merged.adjacent_parent_shard_id(), Some("shardId-000000000002"));
    let r = merged.hash_key_range().expect("range");
    assert_eq!((r.starting_hash_key(), r.ending_hash_key()), ("0", u128::MAX.to_string().as_str()));
    let roots = client
        .list_shards()
        .stream_name("reshard")
        .shard_filter(
            ShardFilter::builder().r#type(ShardFilterType::AtTrimHorizon).build().expect("f"),
        )
        .send()
        .await
        .expect("ListShards AT_TRIM_HORIZON");
    assert_eq!(roots.shards().len(), 1);
    assert_eq!(roots.shards()[0].shard_id(), "shardId-000000000000");

    // Read the parent to its end, then its children (both, once both are
    // done), then the merge child: every key's records in the order sent.
    let it =
        iterator(&client, "reshard", "shardId-000000000000", ShardIteratorType::TrimHorizon).await;
    let (mut got, children) = drain(&client, it, 3).await;
    assert_eq!(children, ["shardId-000000000001", "shardId-000000000002"], "{}", c.report());
    let mut grandchildren = Vec::new();
    for child in &children {
        let it = iterator(&client, "reshard", child, ShardIteratorType::TrimHorizon).await;
        let (recs, next) = drain(&client, it, 3).await;
        got.extend(recs);
        grandchildren.extend(next);
    }
    grandchildren.dedup();
    assert_eq!(grandchildren, ["shardId-000000000003"]);
    let it =
        iterator(&client, "reshard", "shardId-000000000003", ShardIteratorType::TrimHorizon).await;
    let (recs, _) = drain(&client, it, 3).await;
    got.extend(recs);
    let mut by_key: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for (k, data, _, _) in got {
        by_key.entry(k).or_default().push(data);
    }
    assert_eq!(by_key, expected);

    // A GetRecords at the end of a closed shard: no NextShardIterator and the
    // children with their parents and ranges.
    let it = iterator(&client, "reshard", "shardId-000000000001", ShardIteratorType::Latest).await;
    let r = client.get_records().shard_iterator(it).send().await.expect("GetRecords");
    assert!(r.next_shard_iterator().is_none());
    assert_eq!(r.child_shards().len(), 1);
    assert_eq!(
        r.child_shards()[0].parent_shards(),
        ["shardId-000000000001", "shardId-000000000002"]
    );
}

#[tokio::test]
async fn update_shard_count_scales_uniformly_within_kinesis_limits() {
    let (_c, addr) = start(&[]);
    let client = sdk(addr);
    create(&client, "scale", 2).await;
    let r = client
        .update_shard_count()
        .stream_name("scale")
        .target_shard_count(4)
        .scaling_type(ScalingType::UniformScaling)
        .send()
        .await
        .expect("UpdateShardCount 2 -> 4");
    assert_eq!((r.current_shard_count(), r.target_shard_count()), (Some(2), Some(4)));
    let open = |client: Client| async move {
        client
            .list_shards()
            .stream_name("scale")
            .shard_filter(
                ShardFilter::builder().r#type(ShardFilterType::AtLatest).build().expect("f"),
            )
            .send()
            .await
            .expect("ListShards")
            .shards()
            .iter()
            .map(|s| {
                let r = s.hash_key_range().expect("range");
                (r.starting_hash_key().to_owned(), r.ending_hash_key().to_owned())
            })
            .collect::<Vec<_>>()
    };
    let ranges = open(client.clone()).await;
    assert_eq!(ranges.len(), 4);
    let quarter = u128::MAX / 4;
    assert_eq!(ranges[1].0, (quarter + 1).to_string());
    assert_eq!(ranges[3].1, u128::MAX.to_string());
    expect_code!(
        client
            .update_shard_count()
            .stream_name("scale")
            .target_shard_count(9)
            .scaling_type(ScalingType::UniformScaling)
            .send()
            .await,
        "LimitExceededException"
    );
    expect_code!(
        client
            .update_shard_count()
            .stream_name("scale")
            .target_shard_count(1)
            .scaling_type(ScalingType::UniformScaling)
            .send()
            .await,
        "LimitExceededException"
    );
    client
        .update_shard_count()
        .stream_name("scale")
        .target_shard_count(3)
        .scaling_type(ScalingType::UniformScaling)
        .send()
        .await
        .expect("UpdateShardCount 4 -> 3");
    assert_eq!(open(client.clone()).await.len(), 3);
    // Records still route by MD5 after resizing.
    let (shard, _) = put(&client, "scale", "after-resize", b"x").await;
    assert!(!shard.is_empty());
}

#[tokio::test]
async fn retention_period_bounds_and_direction() {
    let (_c, addr) = start(&[]);
    let client = sdk(addr);
    create(&client, "keep", 1).await;
    let hours = |client: Client| async move {
        client
            .describe_stream_summary()
            .stream_name("keep")
            .send()
            .await
            .expect("summary")
            .stream_description_summary()
            .expect("summary")
            .retention_period_hours()
    };
    client
        .increase_stream_retention_period()
        .stream_name("keep")
        .retention_period_hours(8_760)
        .send()
        .await
        .expect("to 8760");
    assert_eq!(hours(client.clone()).await, 8_760);
    client
        .decrease_stream_retention_period()
        .stream_name("keep")
        .retention_period_hours(24)
        .send()
        .await
        .expect("to 24");
    assert_eq!(hours(client.clone()).await, 24);
    for h in [23, 8_761] {
        expect_code!(
            client
                .increase_stream_retention_period()
                .stream_name("keep")
                .retention_period_hours(h)
                .send()
                .await,
            "InvalidArgumentException"
        );
    }
    expect_code!(
        client
            .decrease_stream_retention_period()
            .stream_name("keep")
            .retention_period_hours(23)
            .send()
            .await,
        "InvalidArgumentException"
    );
    client
        .increase_stream_retention_period()
        .stream_name("keep")
        .retention_period_hours(48)
        .send()
        .await
        .expect("to 48");
    // Increase may not shorten, decrease may not lengthen.
    expect_code!(
        client
            .increase_stream_retention_period()
            .stream_name("keep")
            .retention_period_hours(30)
            .send()
            .await,
        "InvalidArgumentException"
    );
    expect_code!(
        client
            .decrease_stream_retention_period()
            .stream_name("keep")
            .retention_period_hours(72)
            .send()
            .await,
        "InvalidArgumentException"
    );
    expect_code!(
        client
            .increase_stream_retention_period()
            .stream_name("keep")
            .retention_period_hours(0)
            .send()
            .await,
        "ValidationException"
    );
    assert_eq!(hours(client.clone()).await, 48);
}

#[tokio::test]
async fn bad_input_gets_aws_error_names() {
    let (c, addr) = start(&[]);
    let client = sdk(addr);
    create(&client, "strict", 2).await;
    let put_key = |key: String| {
        client
            .put_record()
            .stream_name("strict")
            .partition_key(key)
            .data(Blob::new(b"x".to_vec()))
            .send()
    };
    let e = expect_code!(put_key(String::new()).await, "ValidationException");
    assert!(
        code(&e) == "ValidationException" && format!("{e:?}").contains("partitionKey"),
        "{e:?}"
    );
    expect_code!(put_key("k".repeat(257)).await, "ValidationException");
    put_key("k".repeat(256)).await.expect("a 256-character key is fine");
    // 256 characters, more bytes: characters count, not bytes.
    put_key("é".repeat(256)).await.expect("256 two-byte characters are fine");
    expect_code!(
        client
            .put_record()
            .stream_name("strict")
            .partition_key("k")
            .data(Blob::new(vec![0u8; 1024 * 1024 + 1]))
            .send()
            .await,
        "ValidationException"
    );
    client
        .put_record()
        .stream_name("strict")
        .partition_key("k")
        .data(Blob::new(vec![0u8; 1024 * 1024]))
        .send()
        .await
        .expect("exactly 1 MiB is fine");
    let entry = PutRecordsRequestEntry::builder()
        .partition_key("")
        .data(Blob::new(vec![1]))
        .build()
        .expect("e");
    expect_code!(
        client.put_records().stream_name("strict").records(entry).send().await,
        "ValidationException"
    );
    // Unknown stream, unknown shard.
    expect_code!(
        client
            .put_record()
            .stream_name("nope")
            .partition_key("k")
            .data(Blob::new(vec![1]))
            .send()
            .await,
        "ResourceNotFoundException"
    );
    expect_code!(
        client
            .get_shard_iterator()
            .stream_name("strict")
            .shard_id("shardId-000000000099")
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await,
        "ResourceNotFoundException"
    );
    // Bad hash keys: not a number, past 2^128 - 1.
    for (key, name) in [("abc", "ValidationException"), ("0123", "ValidationException")] {
        expect_code!(
            client
                .put_record()
                .stream_name("strict")
                .partition_key("k")
                .explicit_hash_key(key)
                .data(Blob::new(vec![1]))
                .send()
                .await,
            name
        );
    }
    expect_code!(
        client
            .put_record()
            .stream_name("strict")
            .partition_key("k")
            .explicit_hash_key("340282366920938463463374607431768211456")
            .data(Blob::new(vec![1]))
            .send()
            .await,
        "InvalidArgumentException"
    );
    // Bad iterators: garbage, and a real one with one character changed.
    let good =
        iterator(&client, "strict", "shardId-000000000000", ShardIteratorType::TrimHorizon).await;
    let mut bytes = good.clone().into_bytes();
    bytes[12] = if bytes[12] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).expect("ascii");
    for it in ["not-an-iterator", tampered.as_str()] {
        expect_code!(
            client.get_records().shard_iterator(it).send().await,
            "InvalidArgumentException"
        );
    }
    expect_code!(
        client.get_records().shard_iterator("x".repeat(513)).send().await,
        "ValidationException"
    );
    expect_code!(
        client.get_records().shard_iterator(&good).limit(10_001).send().await,
        "ValidationException"
    );
    expect_code!(
        client.get_records().shard_iterator(&good).limit(0).send().await,
        "ValidationException"
    );
    // Iterator types that need a sequence number, and bad ones.
    expect_code!(
        client
            .get_shard_iterator()
            .stream_name("strict")
            .shard_id("shardId-000000000000")
            .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
            .starting_sequence_number("12345")
            .send()
            .await,
        "InvalidArgumentException"
    );
    // Stream names, shard counts, existing streams.
    expect_code!(
        client.create_stream().stream_name("strict").shard_count(1).send().await,
        "ResourceInUseException"
    );
    expect_code!(
        client.create_stream().stream_name("bad name!").shard_count(1).send().await,
        "ValidationException"
    );
    expect_code!(
        client.create_stream().stream_name("zero").shard_count(0).send().await,
        "ValidationException"
    );
    expect_code!(
        client.create_stream().stream_name("huge").shard_count(5_000).send().await,
        "LimitExceededException"
    );
    expect_code!(
        client.create_stream().stream_name("nocount").send().await,
        "InvalidArgumentException"
    );
    // Pagination misuse.
    let page =
        client.list_shards().stream_name("strict").max_results(1).send().await.expect("ListShards");
    let token = page.next_token().expect("a token").to_owned();
    expect_code!(
        client.list_shards().stream_name("strict").next_token(&token).send().await,
        "InvalidArgumentException"
    );
    let rest = client.list_shards().next_token(&token).send().await.expect("ListShards page 2");
    assert_eq!(rest.shards()[0].shard_id(), "shardId-000000000001");
    expect_code!(
        client.list_shards().next_token("garbage").send().await,
        "InvalidArgumentException"
    );
    expect_code!(
        client.list_shards().stream_name("strict").max_results(0).send().await,
        "ValidationException"
    );
    // An ARN of another account.
    expect_code!(
        client
            .describe_stream_summary()
            .stream_arn("arn:aws:kinesis:us-east-1:123456789012:stream/strict")
            .send()
            .await,
        "AccessDeniedException"
    );
    // Merging shards that are not adjacent, merging with itself.
    expect_code!(
        client
            .merge_shards()
            .stream_name("strict")
            .shard_to_merge("shardId-000000000000")
            .adjacent_shard_to_merge("shardId-000000000000")
            .send()
            .await,
        "InvalidArgumentException"
    );
    // Nothing above hurt the collector.
    put_key("still-alive".into()).await.expect("collector still serves");
    assert!(!c.log().contains("panicked"), "{}", c.report());
}

#[tokio::test]
async fn list_shards_and_describe_stream_page_through_shards() {
    let (_c, addr) = start(&[]);
    let client = sdk(addr);
    create(&client, "wide", 5).await;
    let mut ids = Vec::new();
    let mut page =
        client.list_shards().stream_name("wide").max_results(2).send().await.expect("ListShards");
    loop {
        ids.extend(page.shards().iter().map(|s| s.shard_id().to_owned()));
        let Some(t) = page.next_token().map(str::to_owned) else { break };
        page = client.list_shards().next_token(t).send().await.expect("ListShards next");
    }
    let expected: Vec<String> = (0..5).map(|i| format!("shardId-{i:012}")).collect();
    assert_eq!(ids, expected);
    let after = client
        .list_shards()
        .stream_name("wide")
        .exclusive_start_shard_id("shardId-000000000002")
        .send()
        .await
        .expect("ListShards after 2");
    assert_eq!(after.shards().len(), 2);
    let filtered = client
        .list_shards()
        .stream_name("wide")
        .shard_filter(
            ShardFilter::builder()
                .r#type(ShardFilterType::AfterShardId)
                .shard_id("shardId-000000000003")
                .build()
                .expect("filter"),
        )
        .send()
        .await
        .expect("ListShards AFTER_SHARD_ID");
    assert_eq!(filtered.shards().len(), 1);
    let d = client.describe_stream().stream_name("wide").limit(2).send().await.expect("describe");
    let d = d.stream_description().expect("d");
    assert!(d.has_more_shards() && d.shards().len() == 2);
    let d = client
        .describe_stream()
        .stream_name("wide")
        .exclusive_start_shard_id("shardId-000000000001")
        .send()
        .await
        .expect("describe after 1");
    let d = d.stream_description().expect("d");
    assert!(!d.has_more_shards() && d.shards().len() == 3);
}

#[tokio::test]
async fn write_limits_throttle_per_entry_when_the_stream_enables_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("limits.toml");
    std::fs::write(&config, "[kinesis]\nwrite_limits = true\n").expect("config");
    let (c, addr) = start(&["--config", config.to_str().expect("utf8")]);
    let client = sdk(addr);
    create(&client, "limited", 1).await;
    // 1,500 records at once into one shard: at most 1,000 per second fit.
    let mut ok = 0;
    let mut throttled = 0;
    for _ in 0..3 {
        let entries = ten_byte_entries(500);
        let r = client
            .put_records()
            .stream_name("limited")
            .set_records(Some(entries))
            .send()
            .await
            .expect("PutRecords");
        let failed = r.records().iter().filter(|e| e.error_code().is_some()).count();
        assert_eq!(r.failed_record_count(), Some(failed as i32));
        for e in r.records() {
            match e.error_code() {
                None => assert!(e.sequence_number().is_some()),
                Some(code) => {
                    assert_eq!(code, "ProvisionedThroughputExceededException");
                    assert!(e.error_message().is_some_and(|m| m.contains("Rate exceeded")));
                }
            }
        }
        ok += 500 - failed;
        throttled += failed;
    }
    assert!(ok >= 1_000 && throttled > 0, "ok {ok}, throttled {throttled}\n{}", c.report());
    // Bytes: a shard takes 1 MiB per second.
    create(&client, "limited-bytes", 1).await;
    let mib = |k: &str| {
        client
            .put_record()
            .stream_name("limited-bytes")
            .partition_key(k)
            .data(Blob::new(vec![0u8; 1024 * 1024 - 1]))
            .send()
    };
    mib("a").await.expect("the first MiB fits");
    expect_code!(mib("b").await, "ProvisionedThroughputExceededException");
    // An ON_DEMAND stream is not limited.
    client
        .create_stream()
        .stream_name("free")
        .stream_mode_details(
            StreamModeDetails::builder().stream_mode(StreamMode::OnDemand).build().expect("mode"),
        )
        .shard_count(1)
        .send()
        .await
        .expect("create ON_DEMAND");
    for _ in 0..3 {
        let entries = ten_byte_entries(500);
        let r = client
            .put_records()
            .stream_name("free")
            .set_records(Some(entries))
            .send()
            .await
            .expect("put");
        assert_eq!(r.failed_record_count(), Some(0));
    }
    // Throttles are counted per shard in the metrics.
    let (status, text) = kinesis_support::get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.lines().any(|l| l.starts_with("weir_shard_write_throttled_records_total")
            && l.contains("stream=\"limited\"")),
        "{text}"
    );
}

/// `n` PutRecords entries of 10 bytes each, keys `k0`, `k1`, ...
fn ten_byte_entries(n: usize) -> Vec<PutRecordsRequestEntry> {
    (0..n)
        .map(|i| {
            PutRecordsRequestEntry::builder()
                .partition_key(format!("k{i}"))
                .data(Blob::new(vec![1u8; 10]))
                .build()
                .expect("entry")
        })
        .collect()
}
