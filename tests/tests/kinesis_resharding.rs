//! Resharding through the Kinesis API (official AWS SDK for Rust, real
//! `weir-collector` process): SplitShard and MergeShards keep Kinesis's
//! lineage and each key's order; UpdateShardCount scales uniformly within
//! Kinesis's limits.

mod kinesis_support;

use std::collections::BTreeMap;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::types::{ScalingType, ShardFilter, ShardFilterType, ShardIteratorType};
use kinesis_support::ops::{create, drain, iterator, put};
use kinesis_support::{sdk, seq, start};

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
