//! Bad input and limits through the Kinesis API (official AWS SDK for Rust,
//! real `weir-collector` process): the AWS error name of each kind of bad
//! request, and per-shard write limits that throttle per entry.

mod kinesis_support;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{
    PutRecordsRequestEntry, ShardIteratorType, StreamMode, StreamModeDetails,
};
use kinesis_support::ops::{create, iterator, ten_byte_entries};
use kinesis_support::{code, sdk, start};

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
