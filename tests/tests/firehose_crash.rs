//! Crash test of a firehose delivery stream with the real collector process:
//! a writer puts uniquely numbered records through the Kinesis API while a
//! `[[firehose]]` delivery stream (1 MiB / 0 s hints) delivers them
//! to a directory; the collector is killed with SIGKILL at random moments
//! and restarted on the same data directory. In the end every acknowledged
//! record is in exactly one object, no record is in two, no `.tmp` file is
//! left, and each shard's objects hold its records in sequence order
//! (`firehose_support::assert_exactly_once`).
//!
//! The seed of the random delays is printed; `WEIR_CRASH_SEED=<n>` replays
//! a run.

mod firehose_support;
mod kinesis_support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use firehose_support::{Writer, assert_exactly_once, delivered, put_next};
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
/// Longest PutRecords call (a kill can leave one unanswered).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Puts batches until every record is acknowledged or a put fails (the
/// collector is gone); failed records go back for a retry.
async fn write(client: Client, writer: Arc<Mutex<Writer>>) {
    while let Ok(n) = put_next(&client, "events", &writer).await {
        if n == 0 {
            return;
        }
        tokio::time::sleep(WRITE_PAUSE).await;
    }
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

    let writer = Arc::new(Mutex::new(Writer::new(RECORDS, BATCH)));
    let mut collector = Collector::start_in(&data_dir, tmp.path(), &args);
    kinesis_support::sdk_with_timeout(collector.http_addr(), CALL_TIMEOUT)
        .create_stream()
        .stream_name("events")
        .shard_count(SHARDS)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create stream: {e:?}\n{}", collector.report()));

    for round in 0..KILLS {
        let client = kinesis_support::sdk_with_timeout(collector.http_addr(), CALL_TIMEOUT);
        let task = tokio::spawn(write(client, writer.clone()));
        let delay = rng.gen_range(KILL_DELAY_MS);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        collector.signal("KILL");
        assert!(collector.wait_exit(Duration::from_secs(10)).is_some(), "killed collector exits");
        task.await.expect("writer task");
        let (lines, acked) = {
            let w = writer.lock().expect("writer");
            (delivered(&out_dir).records(), w.acked.len())
        };
        eprintln!(
            "round {round}: killed after {delay} ms; {acked} acknowledged, {lines} delivered"
        );
        drop(collector);
        collector = Collector::start_in(&data_dir, tmp.path(), &args);
    }

    // The last run: everything acknowledged, then delivered.
    let client = kinesis_support::sdk_with_timeout(collector.http_addr(), CALL_TIMEOUT);
    let deadline = Instant::now() + CATCH_UP;
    while !writer.lock().expect("writer").complete() {
        assert!(Instant::now() < deadline, "writer not done\n{}", collector.report());
        write(client.clone(), writer.clone()).await;
    }
    let acked: Vec<String> = writer.lock().expect("writer").acked.keys().cloned().collect();
    let caught_up = wait_for(deadline.saturating_duration_since(Instant::now()), || {
        delivered(&out_dir).holds(&acked)
    });
    assert!(caught_up, "delivery did not catch up\n{}", collector.report());

    let w = writer.lock().expect("writer");
    let lines = assert_exactly_once(&delivered(&out_dir), &w, "events-archive");
    eprintln!(
        "{} records acknowledged, {lines} delivered ({} unacknowledged attempts that were \
         stored), seed {seed}, {:?}",
        w.acked.len(),
        lines - w.acked.len(),
        started.elapsed()
    );
    assert_eq!(w.acked.len(), RECORDS);
}
