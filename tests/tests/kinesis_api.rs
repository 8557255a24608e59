//! The Kinesis-compatible API driven by the official AWS SDK for Rust against
//! the real `weir-collector` process: every stream and record operation,
//! AWS's routing and sequence rules, iterators, paging and retention.
//! Resharding is in `kinesis_resharding.rs`, error names and limits in
//! `kinesis_limits.rs`.

mod kinesis_support;

use std::collections::BTreeMap;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::{Blob, DateTime};
use aws_sdk_kinesis::types::{
    PutRecordsRequestEntry, ShardFilter, ShardFilterType, ShardIteratorType, StreamMode,
    StreamModeDetails, StreamStatus,
};
use kinesis_support::ops::{create, drain, iterator, put};
use kinesis_support::{sdk, seq, start};
use weir_wire::hash_key;

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

    // A sequence number with TRIM_HORIZON or LATEST is a mistake, refused
    // as Kinesis refuses it.
    for kind in [ShardIteratorType::TrimHorizon, ShardIteratorType::Latest] {
        expect_code!(
            client
                .get_shard_iterator()
                .stream_name("iters")
                .shard_id(shard)
                .shard_iterator_type(kind)
                .starting_sequence_number(&sent[3])
                .send()
                .await,
            "InvalidArgumentException"
        );
    }

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
