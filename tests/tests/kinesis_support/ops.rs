//! Kinesis operations through the AWS SDK that several `kinesis_*` tests
//! share: create a stream, put a record, get an iterator, read a shard to its
//! end.

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType};

pub async fn create(client: &Client, name: &str, shards: i32) {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .expect("CreateStream");
}

pub async fn put(client: &Client, stream: &str, key: &str, data: &[u8]) -> (String, String) {
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

pub async fn iterator(
    client: &Client,
    stream: &str,
    shard: &str,
    kind: ShardIteratorType,
) -> String {
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
pub type Rec = (String, Vec<u8>, String, i64);

/// Reads from `it` with `limit` per call until caught up or the shard ends;
/// returns the records and the child shards reported at the end.
pub async fn drain(client: &Client, mut it: String, limit: i32) -> (Vec<Rec>, Vec<String>) {
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

/// `n` PutRecords entries of 10 bytes each, keys `k0`, `k1`, ...
pub fn ten_byte_entries(n: usize) -> Vec<PutRecordsRequestEntry> {
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
