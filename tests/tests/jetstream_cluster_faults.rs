//! Two collectors over a 3-node JetStream cluster (R3) while things die.
//!
//! MQTT QoS 1 publishers and a PutRecords writer load both collectors, each
//! session or request going to one or the other. Then, with the load
//! running, one NATS node (the leader of a shard's stream) is SIGKILLed and
//! later restarted, and one collector is SIGKILLed and later restarted; each
//! phase must see the load make progress before the next fault. At the end
//! every acknowledged record is readable exactly once, in order per
//! partition key, through either collector, and both collectors read the
//! same records; the PutRecords answers' sequence numbers are where the
//! records are.
//!
//! Nothing is re-sent: a publish or entry without an acknowledgement (in
//! flight when a connection died, refused, timed out) may be stored or not,
//! but never twice, and acknowledged ones must all be there.

mod kinesis_support;
mod mqtt_support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType, StreamStatus};
use kinesis_support::ops::{create, drain, iterator};
use kinesis_support::sdk;
use mqtt_support::{Ack, Conn, Msg, Version, publish_until};
use weir_tests::harness::Collector;
use weir_tests::nats::NatsCluster;

const STREAM: &str = "faults";
const PREFIX: &str = "faults";
/// MQTT publishers (each its own partition key and client id).
const PUBLISHERS: usize = 4;
/// Messages per MQTT session; a publisher opens a session every [`TICK`],
/// alternating collectors, so connections come and go through the faults.
const SESSION_MESSAGES: u64 = 25;
const TICK: Duration = Duration::from_millis(100);
/// QoS 1 publishes in flight per session.
const INFLIGHT: u16 = 8;
/// Longest an MQTT session or a PutRecords call may take (a collector waits
/// up to 10 s for a new JetStream leader before it answers an error).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Entries per PutRecords request, one request every [`WRITER_TICK`].
const WRITER_ENTRIES: usize = 50;
const WRITER_TICK: Duration = Duration::from_millis(100);
/// Partition keys the writer cycles through.
const WRITER_KEYS: usize = 4;
/// New acknowledgements each phase must see from every publisher and from
/// the writer (so from both shards) before the next fault.
const PHASE_ACKS: usize = 150;
const PHASE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the load was told about its records.
#[derive(Default)]
struct Ledger {
    /// Acknowledged records' data.
    acked: HashSet<String>,
    /// Sent without an acknowledgement: stored once or not at all.
    maybe: HashSet<String>,
    /// Sequence numbers PutRecords answered, by data.
    sequences: HashMap<String, String>,
}

/// Where the two collectors listen (A's change when it restarts).
#[derive(Clone, Copy)]
struct Endpoints {
    mqtt: SocketAddr,
    http: SocketAddr,
}

struct Load {
    ledger: Mutex<Ledger>,
    /// Acknowledged records per source: publishers 0.., then the writer.
    acks: Vec<AtomicUsize>,
    stop: AtomicBool,
    endpoints: Mutex<[Endpoints; 2]>,
}

impl Load {
    fn endpoint(&self, which: usize) -> Endpoints {
        self.endpoints.lock().expect("endpoints")[which % 2]
    }

    fn record(&self, source: usize, data: String, acked: bool, sequence: Option<String>) {
        let mut l = self.ledger.lock().expect("ledger");
        if acked {
            if let Some(s) = sequence {
                l.sequences.insert(data.clone(), s);
            }
            l.acked.insert(data);
            self.acks[source].fetch_add(1, Ordering::Relaxed);
        } else {
            l.maybe.insert(data);
        }
    }
}

fn endpoints(c: &Collector) -> Endpoints {
    Endpoints { mqtt: mqtt_support::addr(c, "mqtt"), http: c.http_addr() }
}

fn start_collector(cluster: &NatsCluster, dir: &Path) -> Collector {
    let urls = cluster.urls();
    std::fs::create_dir_all(dir).expect("collector directory");
    let flags = ["--store", &urls, "--store-replicas", "3", "--store-prefix", PREFIX];
    tokio::task::block_in_place(|| mqtt_support::start_in(&dir.join("data"), dir, &flags))
}

/// One MQTT publisher: sessions of [`SESSION_MESSAGES`] numbered messages,
/// alternating collectors; each message is published in one session only.
async fn publisher(load: Arc<Load>, p: usize) {
    let mut next = 0u64;
    let mut tick = tokio::time::interval(TICK);
    for session in 0.. {
        tick.tick().await;
        if load.stop.load(Ordering::Relaxed) {
            break;
        }
        let mut conn = Conn::new(load.endpoint(p + session).mqtt, Version::V4, &format!("pub{p}"));
        conn.inflight = INFLIGHT;
        let msgs = (next..next + SESSION_MESSAGES)
            .map(|n| Msg::new(format!("weir/{STREAM}/m{p}"), 1, format!("m{p}:{n}")))
            .collect();
        let stop = &load.stop;
        let report =
            publish_until(&conn, msgs, CALL_TIMEOUT, |_| stop.load(Ordering::Relaxed)).await;
        // A message the client reports unsent may still have reached the
        // socket (rumqttc reports writes one poll at a time, and a session
        // ends at an error or the stop): every unacknowledged one is
        // uncertain, and none is sent again.
        for ack in &report.acks {
            load.record(p, format!("m{p}:{next}"), *ack == Ack::Ok, None);
            next += 1;
        }
    }
}

/// The PutRecords writer: [`WRITER_ENTRIES`] numbered entries per request,
/// alternating collectors, keys `w0`..`w3`.
async fn writer(load: Arc<Load>) {
    let mut next = 0usize;
    let mut tick = tokio::time::interval(WRITER_TICK);
    for request in 0.. {
        tick.tick().await;
        if load.stop.load(Ordering::Relaxed) {
            break;
        }
        let client = sdk(load.endpoint(request).http);
        let data: Vec<(String, String)> = (next..next + WRITER_ENTRIES)
            .map(|n| {
                let key = format!("w{}", n % WRITER_KEYS);
                (key.clone(), format!("{key}:{n}"))
            })
            .collect();
        next += WRITER_ENTRIES;
        let entries = data
            .iter()
            .map(|(k, d)| {
                PutRecordsRequestEntry::builder()
                    .partition_key(k)
                    .data(Blob::new(d.as_bytes()))
                    .build()
                    .expect("entry")
            })
            .collect();
        let sent = client.put_records().stream_name(STREAM).set_records(Some(entries)).send();
        match tokio::time::timeout(CALL_TIMEOUT, sent).await {
            Ok(Ok(out)) => {
                for ((_, d), e) in data.into_iter().zip(out.records()) {
                    let ok = e.error_code().is_none();
                    load.record(PUBLISHERS, d, ok, e.sequence_number().map(str::to_owned));
                }
            }
            // Refused, cut by a kill, or timed out: every entry uncertain.
            Ok(Err(_)) | Err(_) => {
                for (_, d) in data {
                    load.record(PUBLISHERS, d, false, None);
                }
            }
        }
    }
}

/// Waits until every publisher and the writer had [`PHASE_ACKS`] more
/// records acknowledged.
async fn progress(load: &Load, phase: &str) {
    let counts = || load.acks.iter().map(|a| a.load(Ordering::Relaxed)).collect::<Vec<_>>();
    let from = counts();
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        let now = counts();
        if now.iter().zip(&from).all(|(n, f)| *n >= f + PHASE_ACKS) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{phase}: acknowledgements per source went from {from:?} to {now:?} within \
             {PHASE_TIMEOUT:?}, not {PHASE_ACKS} more each"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node leading one of this test's shard streams (`faults_<id>_<shard>`;
/// the catalog's KV stream is `KV_faults_catalog`), and its replica count.
fn shard_stream_leader(cluster: &NatsCluster) -> (usize, usize) {
    for i in 0..cluster.len() {
        let Some(jsz) = cluster.jsz(i, "accounts=true&streams=true") else { continue };
        let details = jsz["account_details"].as_array().cloned().unwrap_or_default();
        for account in details {
            for s in account["stream_detail"].as_array().cloned().unwrap_or_default() {
                let name = s["name"].as_str().unwrap_or_default();
                let Some(leader) = s["cluster"]["leader"].as_str() else { continue };
                if name.starts_with(&format!("{PREFIX}_")) {
                    let replicas = s["cluster"]["replicas"].as_array().map_or(0, Vec::len) + 1;
                    let node = (0..cluster.len())
                        .find(|&n| cluster.server_name(n) == leader)
                        .unwrap_or_else(|| panic!("leader {leader} is no node of the cluster"));
                    return (node, replicas);
                }
            }
        }
    }
    panic!(
        "no node reports a leader for a {PREFIX}_ shard stream: {:?}\n{}",
        cluster.jsz(0, "accounts=true&streams=true"),
        cluster.report()
    );
}

/// Every record of the stream through one collector, shard by shard:
/// (shard, partition key, data, sequence number).
async fn read_all(http: SocketAddr) -> Vec<(String, String, String, String)> {
    let client = sdk(http);
    let shards = client.list_shards().stream_name(STREAM).send().await.expect("ListShards");
    let mut out = Vec::new();
    for s in shards.shards() {
        let it = iterator(&client, STREAM, s.shard_id(), ShardIteratorType::TrimHorizon).await;
        let (records, _) = drain(&client, it, 10_000).await;
        for (key, data, seq, _) in records {
            let data = String::from_utf8(data).expect("utf8 data");
            out.push((s.shard_id().to_owned(), key, data, seq));
        }
    }
    out
}

async fn wait_active(http: SocketAddr) {
    let client = sdk(http);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = client.describe_stream_summary().stream_name(STREAM).send().await;
        if d.is_ok_and(|d| {
            d.stream_description_summary().map(|s| s.stream_status()) == Some(&StreamStatus::Active)
        }) {
            return;
        }
        assert!(Instant::now() < deadline, "{STREAM} not ACTIVE within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_a_nats_node_and_a_collector_killed() {
    let mut cluster = tokio::task::block_in_place(|| NatsCluster::start(3));
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let mut a = start_collector(&cluster, &dir_a);
    let b = start_collector(&cluster, &dir_b);
    create(&sdk(a.http_addr()), STREAM, 2).await;
    wait_active(b.http_addr()).await;

    let load = Arc::new(Load {
        ledger: Mutex::new(Ledger::default()),
        acks: (0..=PUBLISHERS).map(|_| AtomicUsize::new(0)).collect(),
        stop: AtomicBool::new(false),
        endpoints: Mutex::new([endpoints(&a), endpoints(&b)]),
    });
    let mut tasks: Vec<_> =
        (0..PUBLISHERS).map(|p| tokio::spawn(publisher(Arc::clone(&load), p))).collect();
    tasks.push(tokio::spawn(writer(Arc::clone(&load))));

    progress(&load, "before any fault").await;
    let (victim, replicas) = shard_stream_leader(&cluster);
    assert_eq!(replicas, 3, "shard streams are R3");
    cluster.kill9(victim);
    progress(&load, "NATS node killed").await;
    cluster.restart(victim);
    tokio::task::block_in_place(|| cluster.wait_ready());
    progress(&load, "NATS node restarted").await;

    a.signal("KILL");
    assert!(a.wait_exit(Duration::from_secs(10)).is_some(), "collector A did not die");
    progress(&load, "collector A killed").await;
    drop(a);
    let a = start_collector(&cluster, &dir_a);
    load.endpoints.lock().expect("endpoints")[0] = endpoints(&a);
    progress(&load, "collector A restarted").await;

    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(CALL_TIMEOUT * 2, t)
            .await
            .expect("the load stops")
            .expect("a load task panicked");
    }

    let via_a = read_all(a.http_addr()).await;
    let via_b = read_all(b.http_addr()).await;
    assert!(via_a == via_b, "the collectors read different records");
    let ledger = load.ledger.lock().expect("ledger");
    let mut seen: HashMap<&str, usize> = HashMap::new();
    // Per partition key, the number of the last acknowledged record seen.
    let mut last: BTreeMap<&str, (String, u64)> = BTreeMap::new();
    for (shard, key, data, seq) in &via_a {
        *seen.entry(data.as_str()).or_default() += 1;
        assert!(
            ledger.acked.contains(data) || ledger.maybe.contains(data),
            "a record nobody sent: {data}"
        );
        if let Some(s) = ledger.sequences.get(data) {
            assert_eq!(s, seq, "{data}: PutRecords answered {s}, the record is at {seq}");
        }
        if ledger.acked.contains(data) {
            let number: u64 = data.rsplit(':').next().and_then(|n| n.parse().ok()).expect("number");
            if let Some((prev_shard, prev)) = last.get(key.as_str()) {
                assert_eq!(prev_shard, shard, "key {key} in two shards");
                assert!(*prev < number, "key {key}: {data} after record {prev}");
            }
            last.insert(key, (shard.clone(), number));
        }
    }
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(duplicated.is_empty(), "records stored more than once: {duplicated:?}");
    let lost: Vec<_> = ledger.acked.iter().filter(|d| !seen.contains_key(d.as_str())).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged records lost, e.g. {:?}",
        lost.len(),
        ledger.acked.len(),
        lost.iter().take(10).collect::<Vec<_>>()
    );
    let unacked_stored = ledger.maybe.iter().filter(|d| seen.contains_key(d.as_str())).count();
    eprintln!(
        "{} acknowledged records all read once through both collectors; {} sent without an \
         acknowledgement ({unacked_stored} of them stored)",
        ledger.acked.len(),
        ledger.maybe.len()
    );
    assert!(ledger.acked.len() >= 5 * (PUBLISHERS + 1) * PHASE_ACKS);
}
