//! Crash test of a firehose delivery stream with the real collector process:
//! a writer puts uniquely numbered records through the Kinesis API while a
//! `[[firehose]]` delivery stream (1 MiB / 0 s hints) delivers them
//! to a directory; the collector is killed with SIGKILL at random moments
//! and restarted on the same data directory. In the end every acknowledged
//! record is in exactly one object, no record is in two, and no `.tmp`
//! file is left.
//!
//! The seed of the random delays is printed; `WEIR_CRASH_SEED=<n>` replays
//! a run.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::config::timeout::TimeoutConfig;
use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use rand::{Rng, SeedableRng};
use weir_tests::harness::{Collector, wait_for};

/// SIGKILLs during delivery.
const KILLS: usize = 4;
/// Records the writer puts (each acknowledged once in the end).
const RECORDS: usize = 20_000;
/// Records per PutRecords call.
const BATCH: usize = 25;
/// Pause between PutRecords calls, so that writing spans the kills.
const WRITE_PAUSE: Duration = Duration::from_millis(5);
/// Shards of the source stream.
const SHARDS: i32 = 3;
/// Random delay before each kill, ms.
const KILL_DELAY_MS: std::ops::Range<u64> = 100..1_500;
/// How long the writer may take to get everything acknowledged, and the
/// delivery to catch up, after the last restart.
const CATCH_UP: Duration = Duration::from_secs(30);

fn kinesis(addr: SocketAddr) -> Client {
    Client::from_conf(
        aws_sdk_kinesis::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(format!("http://{addr}"))
            .credentials_provider(Credentials::new("weir", "weir", None, None, "weir-tests"))
            .http_client(aws_smithy_http_client::Builder::new().build_http())
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder().operation_timeout(Duration::from_secs(10)).build(),
            )
            .build(),
    )
}

/// What the writer has done, across collector restarts. Every attempt of a
/// record has its own payload (`rec-<i>-<attempt>`): an attempt whose answer
/// a kill lost may still have been stored, and may then be delivered too,
/// but never twice.
#[derive(Default)]
struct Writer {
    /// Next record never sent.
    next: usize,
    /// Records to send again, with their next attempt number.
    retry: Vec<(usize, u32)>,
    /// Payloads the collector acknowledged.
    acked: BTreeSet<String>,
    /// Every payload sent.
    sent: BTreeSet<String>,
    /// Records acknowledged (any attempt).
    done: BTreeSet<usize>,
}

impl Writer {
    /// The next batch: retries first, then new records.
    fn take(&mut self) -> Vec<(usize, u32)> {
        let mut batch: Vec<(usize, u32)> =
            self.retry.drain(..self.retry.len().min(BATCH)).collect();
        while batch.len() < BATCH && self.next < RECORDS {
            batch.push((self.next, 0));
            self.next += 1;
        }
        batch
    }

    fn complete(&self) -> bool {
        self.done.len() == RECORDS
    }
}

fn payload(i: usize, attempt: u32) -> String {
    format!("rec-{i:06}-{attempt}")
}

/// Puts batches until every record is acknowledged or a put fails (the
/// collector is gone); failed records go back for a retry.
async fn write(client: Client, writer: Arc<Mutex<Writer>>) {
    loop {
        let batch = {
            let mut w = writer.lock().expect("writer");
            let b = w.take();
            for &(i, a) in &b {
                w.sent.insert(payload(i, a));
            }
            b
        };
        if batch.is_empty() {
            return;
        }
        let entries: Vec<PutRecordsRequestEntry> = batch
            .iter()
            .map(|&(i, a)| {
                PutRecordsRequestEntry::builder()
                    .partition_key(format!("key-{i}"))
                    .data(Blob::new(payload(i, a)))
                    .build()
                    .expect("entry")
            })
            .collect();
        let result = client.put_records().stream_name("events").set_records(Some(entries)).send();
        match result.await {
            Ok(out) => {
                tokio::time::sleep(WRITE_PAUSE).await;
                let mut w = writer.lock().expect("writer");
                for (&(i, a), r) in batch.iter().zip(out.records()) {
                    if r.error_code().is_none() && r.sequence_number().is_some() {
                        w.acked.insert(payload(i, a));
                        w.done.insert(i);
                    } else {
                        w.retry.push((i, a + 1));
                    }
                }
            }
            Err(_) => {
                let mut w = writer.lock().expect("writer");
                w.retry.extend(batch.iter().map(|&(i, a)| (i, a + 1)));
                return;
            }
        }
    }
}

/// Every record line of every object under `dir`, counted; and the `.tmp`
/// files found.
fn delivered(dir: &Path) -> (BTreeMap<String, usize>, Vec<PathBuf>) {
    let mut lines = BTreeMap::new();
    let mut temps = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            let name = p.to_string_lossy().into_owned();
            if p.is_dir() {
                stack.push(p);
            } else if name.ends_with(".tmp") {
                temps.push(p);
            } else {
                let text = std::fs::read_to_string(&p).expect("read object");
                assert!(text.ends_with('\n'), "{name}: a whole object");
                for line in text.lines() {
                    *lines.entry(line.to_owned()).or_insert(0) += 1;
                }
            }
        }
    }
    (lines, temps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_record_delivered_once_across_kill_9() {
    let started = Instant::now();
    let seed = std::env::var("WEIR_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().r#gen::<u64>());
    eprintln!("firehose crash test seed: {seed} (WEIR_CRASH_SEED={seed} replays it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let tmp = tempfile::tempdir().expect("tempdir");
    let data_dir = tmp.path().join("data");
    let out_dir = tmp.path().join("archive");
    let config = tmp.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "[[firehose]]\nname = \"events-archive\"\nsource_stream = \"events\"\n\
             directory = {:?}\nbuffer_size_mib = 1\nbuffer_interval_secs = 0\n\
             output = \"newline-delimited\"\n",
            out_dir.display().to_string()
        ),
    )
    .expect("config");
    let config_arg = config.display().to_string();
    let args = ["--config", config_arg.as_str()];

    let writer = Arc::new(Mutex::new(Writer::default()));
    let mut collector = Collector::start_in(&data_dir, tmp.path(), &args);
    kinesis(collector.http_addr())
        .create_stream()
        .stream_name("events")
        .shard_count(SHARDS)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create stream: {e:?}\n{}", collector.report()));

    for round in 0..KILLS {
        let client = kinesis(collector.http_addr());
        let task = tokio::spawn(write(client, writer.clone()));
        let delay = rng.gen_range(KILL_DELAY_MS);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        collector.signal("KILL");
        assert!(collector.wait_exit(Duration::from_secs(10)).is_some(), "killed collector exits");
        task.await.expect("writer task");
        let (lines, acked) = {
            let w = writer.lock().expect("writer");
            (delivered(&out_dir).0.len(), w.acked.len())
        };
        eprintln!(
            "round {round}: killed after {delay} ms; {acked} acknowledged, {lines} delivered"
        );
        drop(collector);
        collector = Collector::start_in(&data_dir, tmp.path(), &args);
    }

    // The last run: everything acknowledged, then delivered.
    let client = kinesis(collector.http_addr());
    let deadline = Instant::now() + CATCH_UP;
    while !writer.lock().expect("writer").complete() {
        assert!(Instant::now() < deadline, "writer not done\n{}", collector.report());
        write(client.clone(), writer.clone()).await;
    }
    let (acked, sent) = {
        let w = writer.lock().expect("writer");
        (w.acked.clone(), w.sent.clone())
    };
    let caught_up = wait_for(deadline.saturating_duration_since(Instant::now()), || {
        let (lines, _) = delivered(&out_dir);
        acked.iter().all(|p| lines.contains_key(p))
    });
    assert!(caught_up, "delivery did not catch up\n{}", collector.report());

    let (lines, temps) = delivered(&out_dir);
    assert!(temps.is_empty(), "temp files left: {temps:?}");
    let twice: Vec<_> = lines.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    let unknown: Vec<_> = lines.keys().filter(|l| !sent.contains(*l)).collect();
    assert!(unknown.is_empty(), "delivered but never sent: {unknown:?}");
    let missing: Vec<_> = acked.iter().filter(|p| !lines.contains_key(*p)).collect();
    assert!(missing.is_empty(), "acknowledged but not delivered: {missing:?}");
    eprintln!(
        "{} records acknowledged, {} delivered ({} unacknowledged attempts that were stored), \
         seed {seed}, {:?}",
        acked.len(),
        lines.len(),
        lines.len() - acked.len(),
        started.elapsed()
    );
    assert_eq!(acked.len(), RECORDS);
}
