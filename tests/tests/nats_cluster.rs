//! Self-tests of the NATS harness (`weir_tests::nats`): a single server takes
//! an R1 file stream and gives its messages back; a 3-node cluster keeps every
//! acknowledged message of an R3 stream, exactly once and in order, while a
//! node (the stream's leader) is SIGKILLed and restarted under load, and the
//! restarted node catches up. The JetStream store backend's tests stand on
//! these servers, so their behaviour is checked here first.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage, stream};
use weir_tests::nats::{NatsCluster, NatsServer};

/// Bound of each test, end to end.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one publish may wait for its acknowledgement before it is sent
/// again (short: a leader change makes the first attempts time out).
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the cluster test keeps retrying the publishes, all together.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(40);
/// Pause between two attempts of one publish (a leader is being elected).
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Messages published in the cluster test; the node is killed after
/// `KILL_AFTER` acknowledged ones and restarted after `RESTART_AFTER`.
const MESSAGES: usize = 2_000;
const KILL_AFTER: usize = 500;
const RESTART_AFTER: usize = 1_500;

fn payload(i: usize) -> bytes::Bytes {
    // The index first, then padding to 100 B like a small telemetry record.
    format!("{i:06}-{}", "x".repeat(93)).into()
}

fn index_of(payload: &[u8]) -> Option<usize> {
    std::str::from_utf8(payload.get(..6)?).ok()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_server_keeps_an_r1_file_stream() {
    let server = NatsServer::start();
    tokio::time::timeout(TEST_TIMEOUT, async {
        let client = async_nats::connect(server.url()).await.expect("connect");
        let js = jetstream::new(client);
        // The raw account info: async-nats 0.48's `query_account()` cannot
        // parse nats-server 2.9's answer (it has no `reserved_memory` and
        // `reserved_storage`, which 0.48 requires).
        let account: serde_json::Value = js.request("INFO", &()).await.expect("JetStream answers");
        assert_eq!(account["streams"], 0, "a fresh server has no streams: {account}");
        let stream = js
            .create_stream(stream::Config {
                name: "single".into(),
                subjects: vec!["single.>".into()],
                storage: stream::StorageType::File,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .expect("create the stream");
        for i in 0..100 {
            let ack = js
                .publish(format!("single.k{}", i % 7), payload(i))
                .await
                .expect("publish")
                .await
                .expect("acknowledged");
            assert_eq!(ack.sequence, i as u64 + 1, "sequence of publish {i}");
            assert_eq!(ack.stream, "single");
        }
        for i in 0..100 {
            let m = stream.get_raw_message(i as u64 + 1).await.expect("get message");
            assert_eq!(m.payload, payload(i), "message {}", i + 1);
            assert_eq!(m.subject.as_str(), format!("single.k{}", i % 7));
        }
        let jsz = server.jsz("").expect("/jsz answers");
        assert_eq!(jsz["messages"], 100, "/jsz: {jsz}");
        assert_eq!(jsz["streams"], 1, "/jsz: {jsz}");
    })
    .await
    .expect("test within its time bound");
    // The messages are in the server's own store directory.
    let files = weir_tests::harness::walk(server.store_dir());
    assert!(files.iter().any(|f| f.contains("/single/")), "store dir: {files:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_keeps_every_acked_message_across_a_node_kill_and_restart() {
    let started = Instant::now();
    let mut cluster = NatsCluster::start(3);
    assert_eq!(cluster.len(), 3);
    let urls = cluster.urls();
    assert_eq!(urls.split(',').count(), 3, "urls: {urls}");
    let result = tokio::time::timeout(TEST_TIMEOUT, async {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(urls.split(',').collect::<Vec<_>>())
            .await
            .expect("connect");
        let js = jetstream::ContextBuilder::new().timeout(ACK_TIMEOUT).build(client);
        let mut stream = js
            .create_stream(stream::Config {
                name: "replicated".into(),
                subjects: vec!["replicated.>".into()],
                storage: stream::StorageType::File,
                num_replicas: 3,
                ..Default::default()
            })
            .await
            .expect("create the R3 stream");
        // Kill the stream's leader: the hardest case, a leader change under load.
        let info = stream.info().await.expect("stream info");
        let leader = info.cluster.as_ref().and_then(|c| c.leader.clone()).expect("a leader");
        let victim = (0..cluster.len())
            .find(|&i| cluster.server_name(i) == leader)
            .expect("the leader is a node");

        let deadline = Instant::now() + PUBLISH_DEADLINE;
        let mut acked: Vec<usize> = Vec::new();
        let mut retries = 0usize;
        for i in 0..MESSAGES {
            if i == KILL_AFTER {
                cluster.kill9(victim);
            }
            if i == RESTART_AFTER {
                cluster.restart(victim);
            }
            // One publish at a time, so acknowledged order is stream order;
            // the message id makes a resent publish a duplicate, not a copy.
            loop {
                let msg = PublishMessage::build().payload(payload(i)).message_id(format!("m{i}"));
                let ack = match js.send_publish(format!("replicated.k{}", i % 5), msg).await {
                    Ok(fut) => fut.await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match ack {
                    Ok(_) => {
                        acked.push(i);
                        break;
                    }
                    Err(_) if Instant::now() < deadline => {
                        retries += 1;
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    Err(_) => break,
                }
            }
        }
        assert!(
            acked.len() > RESTART_AFTER,
            "only {} of {MESSAGES} publishes acknowledged within {PUBLISH_DEADLINE:?} ({retries} retries)",
            acked.len()
        );

        // Every acknowledged message is there exactly once, in order.
        let state = stream.info().await.expect("stream info").state.clone();
        let mut stored = Vec::new();
        for seq in state.first_sequence..=state.last_sequence {
            let m = stream.get_raw_message(seq).await.expect("get message");
            stored.push(index_of(&m.payload).expect("payload starts with its index"));
        }
        assert!(
            stored.windows(2).all(|w| w[0] < w[1]),
            "stream not in publish order or with copies: {stored:?}"
        );
        let missing: Vec<usize> =
            acked.iter().copied().filter(|i| stored.binary_search(i).is_err()).collect();
        assert!(missing.is_empty(), "acknowledged but not stored: {missing:?}");
        (acked.len(), retries, victim, state.last_sequence)
    })
    .await;
    let (acked, retries, victim, last_seq) = result.expect("publish and read back in time");

    // The restarted node catches up: healthy, and its replica of the stream
    // holds everything the leader has.
    tokio::task::block_in_place(|| cluster.wait_ready());
    let caught_up = weir_tests::harness::wait_for(Duration::from_secs(20), || {
        cluster.stream_detail(victim, "replicated").is_some_and(|d| {
            d["state"]["last_seq"] == last_seq && d["state"]["messages"] == last_seq
        })
    });
    assert!(
        caught_up,
        "node {victim} did not catch up to sequence {last_seq}: {:?}",
        cluster.stream_detail(victim, "replicated")
    );
    assert!(started.elapsed() < TEST_TIMEOUT, "took {:?}", started.elapsed());
    eprintln!(
        "{acked} of {MESSAGES} acknowledged, {retries} retries, node {victim} caught up to {last_seq} in {:?}",
        started.elapsed()
    );
}
