//! A `[[firehose]]` delivery stream whose destination directory is on a
//! small filesystem (a 16 MiB tmpfs the test mounts; it needs root, and says
//! so and passes without checking anything when it cannot mount), with the
//! store's data directory elsewhere. Records are delivered while there is
//! room; a ballast file then takes the free space below the destination's
//! reserve (`min_free_bytes`, 4 MiB): delivery pauses, and
//! DescribeDeliveryStream (`FailureDescription`) and `/metrics`
//! (`weir_firehose_delivery_failures_total{reason="disk_full"}`,
//! `weir_firehose_delivery_paused`) say so, while nothing more is
//! delivered, no temp file is left and the pause logs a line or two, not one
//! per attempt. Once the ballast is deleted, delivery resumes by itself and
//! every acknowledged record is in exactly one delivered object. The second
//! test has no reserve (`min_free_bytes = 0`) and a ballast that takes every
//! byte: the object writes fail with ENOSPC, and the same holds.

mod firehose_support;
mod kinesis_support;

use std::sync::Mutex;
use std::time::Duration;

use firehose_support::{Writer, assert_exactly_once, delivered, put_next, wait_until};
use weir_tests::harness::{Collector, http_get, metric_value};
use weir_tests::tmpfs::{Tmpfs, free_bytes};

const NAME: &str = "archive";
const RESERVE: u64 = 4 * 1024 * 1024;
/// Records put before, during and after the pause.
const BEFORE: usize = 200;
const DURING: usize = 600;
const AFTER: usize = 200;
/// How long delivery (1 MiB / 0 s hints, 200 ms polls) and its resumption
/// may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Puts the writer's records until it has `total` acknowledged.
async fn put_until(client: &aws_sdk_kinesis::Client, writer: &Mutex<Writer>, c: &Collector) {
    while put_next(client, "events", writer)
        .await
        .unwrap_or_else(|e| panic!("put: {e}\n{}", c.report()))
        > 0
    {}
}

/// The Details of DescribeDeliveryStream's FailureDescription, if any.
async fn failure(client: &aws_sdk_firehose::Client) -> Option<String> {
    let d = client
        .describe_delivery_stream()
        .delivery_stream_name(NAME)
        .send()
        .await
        .expect("DescribeDeliveryStream")
        .delivery_stream_description
        .expect("description");
    assert_eq!(d.delivery_stream_status.as_str(), "ACTIVE");
    d.failure_description.map(|f| f.details)
}

fn metric(c: &Collector, name: &str, labels: &str) -> f64 {
    metric_value(&http_get(c.http_addr(), "/metrics"), name, labels).unwrap_or(0.0)
}

/// How the test fills the destination's filesystem.
#[derive(Debug, Clone, Copy)]
enum Fill {
    /// Below the reserve of [`RESERVE`] bytes.
    BelowReserve,
    /// Every byte, with no reserve: writes fail with ENOSPC.
    Enospc,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_disk_below_its_reserve_pauses_delivery_and_it_resumes_exactly_once() {
    full_destination_disk(Fill::BelowReserve).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_at_the_destination_pauses_delivery_and_it_resumes_exactly_once() {
    full_destination_disk(Fill::Enospc).await;
}

async fn full_destination_disk(fill_mode: Fill) {
    let reserve = match fill_mode {
        Fill::BelowReserve => RESERVE,
        Fill::Enospc => 0,
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(mount) = Tmpfs::mount(&tmp.path().join("small"), "16m") else { return };
    let out = mount.path().join("out");
    let config = tmp.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "[[firehose]]\nname = \"{NAME}\"\nsource_stream = \"events\"\ndirectory = {:?}\n\
             buffer_size_mib = 1\nbuffer_interval_secs = 0\noutput = \"newline-delimited\"\n\
             min_free_bytes = {reserve}\n",
            out.display().to_string()
        ),
    )
    .expect("config");
    let config_arg = config.display().to_string();
    let c = Collector::start_in(&tmp.path().join("data"), tmp.path(), &["--config", &config_arg]);
    let client = kinesis_support::sdk(c.http_addr());
    let firehose = kinesis_support::firehose_sdk(c.http_addr());
    client
        .create_stream()
        .stream_name("events")
        .shard_count(2)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create stream: {e:?}\n{}", c.report()));

    // Room: delivered.
    let writer = Mutex::new(Writer::new(BEFORE, 50));
    put_until(&client, &writer, &c).await;
    let before: Vec<String> = writer.lock().expect("writer").acked.keys().cloned().collect();
    let ok = wait_until(TIMEOUT, || async { delivered(&out).holds(&before) }).await;
    assert!(ok, "delivered while there is room\n{}", c.report());
    assert_eq!(failure(&firehose).await, None);

    // The destination's disk below its reserve: delivery pauses.
    let ballast = mount.path().join("ballast");
    match fill_mode {
        Fill::BelowReserve => {
            let fill = free_bytes(mount.path()).saturating_sub(RESERVE / 2);
            std::fs::write(&ballast, vec![0u8; fill as usize]).expect("write the ballast");
        }
        Fill::Enospc => {
            let fill = free_bytes(mount.path()) + 1024 * 1024;
            let e = std::fs::write(&ballast, vec![0u8; fill as usize]).expect_err("ENOSPC");
            assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}");
            assert!(free_bytes(mount.path()) < 4096, "the ballast took every byte");
        }
    }
    writer.lock().expect("writer").add(DURING);
    put_until(&client, &writer, &c).await;
    let labels = format!("delivery_stream=\"{NAME}\",reason=\"disk_full\"");
    let paused = wait_until(TIMEOUT, || async {
        failure(&firehose).await.is_some_and(|d| d.contains("disk is full"))
            && metric(&c, "weir_firehose_delivery_failures_total", &labels) >= 3.0
    })
    .await;
    assert!(paused, "the status and metrics report the pause\n{}", c.report());
    let details = failure(&firehose).await.expect("failure description");
    let names = match fill_mode {
        Fill::BelowReserve => "min_free_bytes",
        Fill::Enospc => "No space left on device",
    };
    assert!(details.contains("disk_full") && details.contains(names), "{details}");
    let paused_labels = format!("delivery_stream=\"{NAME}\"");
    assert_eq!(metric(&c, "weir_firehose_delivery_paused", &paused_labels), 1.0);
    let objects = delivered(&out);
    assert!(objects.temps.is_empty(), "no temp file: {:?}", objects.temps);
    assert_eq!(objects.records(), before.len(), "nothing delivered while the disk is full");
    let attempts = metric(&c, "weir_firehose_delivery_failures_total", &labels);
    let log_lines = c
        .log()
        .lines()
        .filter(|l| l.contains("delivery poll failed") && l.contains("disk is full"))
        .count();
    assert!(log_lines <= 2, "{log_lines} log lines for {attempts} failed attempts\n{}", c.report());

    // Space back: delivery resumes by itself, each record exactly once.
    std::fs::remove_file(&ballast).expect("delete the ballast");
    writer.lock().expect("writer").add(AFTER);
    put_until(&client, &writer, &c).await;
    let acked: Vec<String> = writer.lock().expect("writer").acked.keys().cloned().collect();
    let ok = wait_until(TIMEOUT, || async { delivered(&out).holds(&acked) }).await;
    assert!(ok, "delivery resumed after the ballast was deleted\n{}", c.report());
    let resumed = wait_until(TIMEOUT, || async { failure(&firehose).await.is_none() }).await;
    assert!(resumed, "the status clears\n{}", c.report());
    assert_eq!(metric(&c, "weir_firehose_delivery_paused", &paused_labels), 0.0);
    let w = writer.lock().expect("writer");
    assert_eq!(w.acked.len(), BEFORE + DURING + AFTER);
    let lines = assert_exactly_once(&delivered(&out), &w, NAME);
    assert_eq!(lines, BEFORE + DURING + AFTER);
    eprintln!(
        "{fill_mode:?}: paused for {attempts} failed attempts, {log_lines} log line(s); {lines} \
         delivered"
    );
}
