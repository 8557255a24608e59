//! The JetStream store under concurrent creation of one stream, as MQTT
//! auto-creation does it when many connections publish to a new stream at
//! once: one creator wins, the others answer StreamExists without creating
//! JetStream streams of their own, and their appends wait for ACTIVE and
//! land.

mod nats_support;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt as _;
use nats_support::NatsServer;
use weir_collector::store::jetstream::{JetStreamSettings, JetStreamStore};
use weir_collector::store::{
    CreateStreamOptions, NewRecord, ReadLimits, StartingPosition, StoreError, StreamStore,
};

/// Creators racing on one name.
const CREATORS: usize = 12;
const SHARDS: u32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_stream_make_one_set_of_shard_streams() {
    let server = NatsServer::start().await;
    let settings = JetStreamSettings {
        prefix: "race".into(),
        ..JetStreamSettings::from_url(&server.url()).expect("settings")
    };
    let store = Arc::new(JetStreamStore::connect(settings).await.expect("connect the store"));
    // JetStream announces every stream it creates: count them.
    let nats = async_nats::connect(server.url()).await.expect("connect");
    let mut advisories =
        nats.subscribe("$JS.EVENT.ADVISORY.STREAM.CREATED.*").await.expect("subscribe");
    nats.flush().await.expect("flush");
    let tasks: Vec<_> = (0..CREATORS)
        .map(|c| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let options = CreateStreamOptions { shard_count: SHARDS, ..Default::default() };
                let created = store.create_stream("devices", options).await;
                let record = NewRecord {
                    partition_key: format!("creator-{c}"),
                    data: Bytes::from(format!("from creator {c}")),
                    explicit_hash_key: None,
                    producer_timestamp_ms: None,
                };
                let appended = store.append("devices", vec![record]).await;
                (created, appended)
            })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        let (created, appended) = t.await.expect("creator task");
        match created {
            Ok(_) => winners += 1,
            Err(StoreError::StreamExists(_)) => {}
            Err(e) => panic!("create: {e}"),
        }
        let appended = appended.expect("append");
        assert!(appended.iter().all(Result::is_ok), "append refused: {appended:?}");
    }
    assert_eq!(winners, 1, "exactly one create wins");
    // A stream created after the race is announced after every stream the
    // race created (one server announces in order): read up to it.
    server
        .jetstream()
        .await
        .create_stream(async_nats::jetstream::stream::Config {
            name: "barrier".into(),
            subjects: vec!["barrier".into()],
            ..Default::default()
        })
        .await
        .expect("create the barrier stream");
    let mut created = Vec::new();
    loop {
        let m = tokio::time::timeout(std::time::Duration::from_secs(10), advisories.next())
            .await
            .expect("the barrier's advisory within 10 s")
            .expect("advisories");
        let name = m.subject.as_str().rsplit('.').next().unwrap_or_default().to_owned();
        if name == "barrier" {
            break;
        }
        created.push(name);
    }
    let created: Vec<&String> = created.iter().filter(|n| n.starts_with("race_")).collect();
    assert_eq!(
        created.len(),
        SHARDS as usize,
        "only the winner creates shard streams; JetStream created {created:?}"
    );
    let mut names: Vec<String> = Vec::new();
    let mut listed = store.context().stream_names();
    while let Some(n) = listed.next().await {
        names.push(n.expect("list JetStream streams"));
    }
    let shard_streams: Vec<&String> = names.iter().filter(|n| n.starts_with("race_")).collect();
    assert_eq!(shard_streams.len(), SHARDS as usize, "JetStream streams: {names:?}");
    let desc = store.describe_stream("devices").await.expect("describe");
    assert_eq!(desc.status.as_str(), "ACTIVE");
    let mut read = 0;
    for shard in &desc.shards {
        let pos = store
            .position("devices", &shard.shard_id, StartingPosition::TrimHorizon)
            .await
            .expect("position");
        let batch = store
            .read("devices", pos, ReadLimits { max_records: 1000, max_bytes: 1 << 20 })
            .await
            .expect("read");
        read += batch.records.len();
    }
    assert_eq!(read, CREATORS, "every creator's record once");
    store.close().await;
}
