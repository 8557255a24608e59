//! Reading a stream back from a stopped collector's data directory, and the
//! shard a key belongs to.

use std::path::Path;
use std::time::Duration;

use weir_collector::store::StoredRecord;
use weir_tests::harness::Collector;

/// A record read back, with its shard.
#[derive(Debug, Clone)]
pub struct Read {
    /// Shard id.
    pub shard: String,
    /// The record.
    pub record: StoredRecord,
}

/// Stops the collector (SIGTERM, bounded wait) and reads every record of
/// `stream` from its data directory, shard by shard in order. `None` if the
/// stream does not exist.
pub async fn stop_and_read(c: &mut Collector, stream: &str) -> Option<Vec<Read>> {
    c.signal("TERM");
    let status = c.wait_exit(Duration::from_secs(30));
    assert!(status.is_some(), "collector did not stop on SIGTERM\n{}", c.report());
    read_stream(&c.data_dir, stream).await
}

/// Reads every record of `stream` from a data directory no process has open.
pub async fn read_stream(data_dir: &Path, stream: &str) -> Option<Vec<Read>> {
    let records = weir_tests::harness::read_stream_records(data_dir, stream).await?;
    Some(records.into_iter().map(|(shard, record)| Read { shard, record }).collect())
}

/// The shard a key belongs to in a stream of `shards` even shards.
pub fn shard_of(key: &str, shards: u64) -> String {
    let hash = weir_wire::hash_key(key);
    let index = (0..shards)
        .find(|i| weir_wire::HashRange::uniform(shards, *i).is_ok_and(|r| r.contains(hash)))
        .expect("some shard owns every hash");
    format!("shardId-{index:012}")
}
