//! The collector's data directory on a small filesystem (a 64 MiB tmpfs the
//! test mounts; it needs root, and says so and passes without checking
//! anything when it cannot mount). With `[store] min_free_bytes` at 16 MiB:
//! records go in; a ballast file then takes the free space below the
//! reserve, and PutRecords and MQTT 5 publishes are refused with answers
//! that say the disk is full (MQTT: PUBACK 0x97, quota exceeded) while
//! `/health` answers 503 "degraded"; once the ballast is deleted, ingestion
//! resumes without a restart, `/health` is ok again, and every acknowledged
//! record reads back exactly once.
//!
//! The second test fills the disk through MQTT: an MQTT 5 client publishes
//! QoS 1 until its PUBACKs come back 0x97 with a reason string naming the
//! full disk; MQTT 3.1.1 clients (no negative acknowledgement) are closed;
//! thousands of refused publishes and PutRecords log a handful of lines;
//! once the ballast is gone both versions publish again without a restart,
//! and every publish acknowledged with 0x00 reads back exactly once through
//! the Kinesis API, none that was refused.

mod kinesis_support;
mod mqtt_support;

use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::ShardIteratorType;
use kinesis_support::ops::{create, drain, iterator};
use kinesis_support::sdk;
use mqtt_support::{Ack, Conn, Msg, Report, Version, publish};
use weir_tests::harness::{Collector, http};
use weir_tests::tmpfs::{Tmpfs, free_bytes};

const FS_SIZE: &str = "64m";
const RESERVE: u64 = 16 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

async fn put(client: &aws_sdk_kinesis::Client, n: usize) -> Result<String, String> {
    client
        .put_record()
        .stream_name("full")
        .partition_key(format!("k{n}"))
        .data(Blob::new(format!("record-{n}").into_bytes()))
        .send()
        .await
        .map(|r| format!("record-{n}@{}", r.sequence_number()))
        .map_err(|e| format!("{:?}", e.into_service_error()))
}

async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + TIMEOUT;
    while !cond().await {
        assert!(Instant::now() < deadline, "{what} within {TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A collector whose data directory is on a tmpfs of [`FS_SIZE`] mounted in
/// `tmp`, with a [`RESERVE`] of free space; `None` when no tmpfs can be
/// mounted here.
fn start_on_small_disk(tmp: &Path) -> Option<(Tmpfs, Collector)> {
    let mount = Tmpfs::mount(&tmp.join("small"), FS_SIZE)?;
    let config = mqtt_support::config_file(tmp, &format!("[store]\nmin_free_bytes = {RESERVE}\n"));
    let c = tokio::task::block_in_place(|| {
        mqtt_support::start_in(
            &mount.0.join("data"),
            tmp,
            &["--config", config.to_str().expect("utf8 path")],
        )
    });
    Some((mount, c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_appends_reports_degraded_and_recovers_by_itself() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some((mount, c)) = start_on_small_disk(tmp.path()) else { return };
    let client = sdk(c.http_addr());
    let mqtt = mqtt_support::addr(&c, "mqtt");
    create(&client, "full", 1).await;
    let mut acked: Vec<String> = Vec::new();
    for n in 0..20 {
        acked.push(put(&client, n).await.expect("PutRecord with room"));
    }
    let health = || http(c.http_addr(), "GET", "/health");
    assert_eq!(health().map(|h| h.0), Some(200));

    // Fill the filesystem to half the reserve.
    let ballast = mount.0.join("ballast");
    let fill = free_bytes(&mount.0).saturating_sub(RESERVE / 2);
    std::fs::write(&ballast, vec![0u8; fill as usize]).expect("write the ballast");
    assert!(free_bytes(&mount.0) < RESERVE);
    wait_until("/health degraded", || async {
        health().is_some_and(|(s, body)| s == 503 && body.contains("degraded"))
    })
    .await;
    let (_, body) = health().expect("health");
    assert!(body.contains("disk is full") && body.contains("min_free_bytes"), "{body}");
    let refused = put(&client, 1000).await.expect_err("PutRecord below the reserve");
    assert!(refused.contains("disk is full"), "the answer names the full disk: {refused}");
    let report = publish(
        &Conn::new(mqtt, Version::V5, "full-v5"),
        vec![Msg::new("weir/full/k", 1, "m")],
        TIMEOUT,
    )
    .await;
    assert_eq!(report.acks, vec![Ack::Refused(0x97)], "MQTT 5 PUBACK quota exceeded");

    // Space back: ingestion resumes without a restart.
    std::fs::remove_file(&ballast).expect("delete the ballast");
    wait_until("/health ok again", || async { health().is_some_and(|(s, _)| s == 200) }).await;
    for n in 20..40 {
        acked.push(put(&client, n).await.expect("PutRecord after space came back"));
    }
    let report = publish(
        &Conn::new(mqtt, Version::V5, "full-v5"),
        vec![Msg::new("weir/full/k", 1, "mqtt-after")],
        TIMEOUT,
    )
    .await;
    report.assert_all_ok();

    let it =
        iterator(&client, "full", "shardId-000000000000", ShardIteratorType::TrimHorizon).await;
    let (records, _) = drain(&client, it, 1000).await;
    let read: Vec<String> = records
        .iter()
        .filter(|r| r.1.starts_with(b"record-"))
        .map(|r| format!("{}@{}", String::from_utf8_lossy(&r.1), r.2))
        .collect();
    assert_eq!(read, acked, "every acknowledged record once, in order; nothing refused stored");
    assert_eq!(records.iter().filter(|r| r.1 == b"mqtt-after").count(), 1);
    assert!(!records.iter().any(|r| r.1 == b"m"), "the refused MQTT publish was not stored");
    drop(c);
}

/// Bytes of each publish that fills the disk.
const FILL_PAYLOAD: usize = 8 * 1024;

/// A payload of `len` bytes: `id` then `|` and padding.
fn payload(id: &str, len: usize) -> Vec<u8> {
    let mut p = format!("{id}|").into_bytes();
    p.resize(len.max(p.len()), b'x');
    p
}

/// The id of a payload made by [`payload`].
fn id_of(data: &[u8]) -> String {
    let end = data.iter().position(|b| *b == b'|').unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

/// Ids of the messages `report` says were acknowledged (0x00), and of those
/// refused; the refusals are all 0x97 with a reason string naming the disk.
fn sort_acks(ids: &[String], report: &Report) -> (Vec<String>, Vec<String>) {
    let (mut ok, mut refused) = (Vec::new(), Vec::new());
    for (i, (ack, reason)) in report.acks.iter().zip(&report.reasons).enumerate() {
        match ack {
            Ack::Ok => ok.push(ids[i].clone()),
            Ack::Refused(code) => {
                assert_eq!(*code, 0x97, "{}: quota exceeded", ids[i]);
                let reason = reason.as_deref().unwrap_or_default();
                assert!(reason.contains("disk is full"), "{}: reason string {reason:?}", ids[i]);
                refused.push(ids[i].clone());
            }
            other => panic!("{}: {other:?} ({:?})", ids[i], report.error),
        }
    }
    (ok, refused)
}

/// Publishes `n` QoS 1 messages `<prefix>-<i>` of `len` bytes on a new MQTT
/// 5 connection; their ids and what became of them.
async fn publish_v5(
    mqtt: std::net::SocketAddr,
    prefix: &str,
    n: usize,
    len: usize,
) -> (Vec<String>, Report) {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:05}")).collect();
    let msgs = ids.iter().map(|id| Msg::new("weir/full/k", 1, payload(id, len))).collect();
    let report =
        publish(&Conn::new(mqtt, Version::V5, prefix), msgs, Duration::from_secs(60)).await;
    (ids, report)
}

/// Lines of the collector's log that are about the full disk, without
/// their ANSI colours.
fn disk_full_lines(c: &Collector) -> Vec<String> {
    let plain = |line: &str| {
        let mut out = String::with_capacity(line.len());
        let mut chars = line.chars();
        while let Some(ch) = chars.next() {
            if ch == '\u{1b}' {
                // CSI: ESC '[' parameters, ended by a letter.
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(ch);
            }
        }
        out
    };
    c.log().lines().map(plain).filter(|l| l.contains("disk is full")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_on_a_full_disk_refuses_v5_with_0x97_closes_v3_logs_little_and_resumes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some((mount, c)) = start_on_small_disk(tmp.path()) else { return };
    let client = sdk(c.http_addr());
    let mqtt = mqtt_support::addr(&c, "mqtt");
    create(&client, "full", 1).await;
    let health = || http(c.http_addr(), "GET", "/health");

    // Ballast leaves the reserve and 4 MiB; MQTT 5 publishes fill the rest.
    let ballast = mount.0.join("ballast");
    let fill = free_bytes(&mount.0).saturating_sub(RESERVE + 4 * 1024 * 1024);
    std::fs::write(&ballast, vec![0u8; fill as usize]).expect("write the ballast");
    // Rounds of 25 (200 KiB): the store reads the free space at most every
    // 250 ms, so a round or more may still go in after it fell below.
    let mut acked = Vec::new();
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds <= 400, "no refusal after {} acknowledged publishes", acked.len());
        let (ids, report) = publish_v5(mqtt, &format!("fill-{rounds:03}"), 25, FILL_PAYLOAD).await;
        let (ok, refused) = sort_acks(&ids, &report);
        acked.extend(ok);
        if let Some(first) = refused.first() {
            let at = ids.iter().position(|id| id == first).expect("refused id");
            assert!(
                report.acks[at..].iter().all(|a| *a == Ack::Refused(0x97)),
                "once the disk is full, every later publish is refused: {:?}",
                report.acks
            );
            break;
        }
    }
    assert!(acked.len() >= 400, "4 MiB of 8 KiB publishes went in first: {}", acked.len());
    assert!(free_bytes(&mount.0) < RESERVE);
    wait_until("/health degraded", || async {
        health().is_some_and(|(s, body)| s == 503 && body.contains("disk is full"))
    })
    .await;

    // Thousands of refusals: MQTT 5 publishes, 3.1.1 connections (each
    // closed at its first publish: 3.1.1 has no negative PUBACK), and
    // PutRecords.
    let (ids, report) = publish_v5(mqtt, "refused", 3000, 16).await;
    let (ok, more_refused) = sort_acks(&ids, &report);
    assert!(ok.is_empty() && more_refused.len() == 3000, "{} acknowledged", ok.len());
    for i in 0..30 {
        let conn = Conn::new(mqtt, Version::V4, &format!("v3-{i}"));
        let msgs = vec![Msg::new("weir/full/k", 1, payload(&format!("v3-refused-{i}"), 16))];
        let report = publish(&conn, msgs, TIMEOUT).await;
        assert_eq!(report.acks, vec![Ack::InFlight], "no PUBACK for a refused 3.1.1 publish");
        assert!(report.error.is_some(), "the 3.1.1 connection is closed");
    }
    for n in 0..200 {
        put(&client, 10_000 + n).await.expect_err("PutRecord on a full disk");
    }
    let lines = disk_full_lines(&c);
    assert!(
        lines.iter().any(|l| l.contains("MQTT publishes not appended") && l.contains("records=")),
        "the refusals are logged, with a count:\n{}",
        lines.join("\n")
    );
    assert!(
        lines.iter().any(|l| l.contains("closing connection: publish refused")),
        "the 3.1.1 closes are logged:\n{}",
        lines.join("\n")
    );
    // One line per stream (or operation) per cause per 10 s: three kinds of
    // refusal, at most two intervals in this test.
    assert!(lines.len() <= 8, "{} lines for ~5,000 refusals:\n{}", lines.len(), lines.join("\n"));

    // Space back: both versions publish again without a restart.
    std::fs::remove_file(&ballast).expect("delete the ballast");
    wait_until("/health ok again", || async { health().is_some_and(|(s, _)| s == 200) }).await;
    let (ids, report) = publish_v5(mqtt, "after-v5", 100, 64).await;
    report.assert_all_ok();
    acked.extend(ids);
    let v3_ids: Vec<String> = (0..100).map(|i| format!("after-v3-{i:05}")).collect();
    let msgs = v3_ids.iter().map(|id| Msg::new("weir/full/k", 1, payload(id, 64))).collect();
    publish(&Conn::new(mqtt, Version::V4, "after-v3"), msgs, TIMEOUT).await.assert_all_ok();
    acked.extend(v3_ids);

    let it =
        iterator(&client, "full", "shardId-000000000000", ShardIteratorType::TrimHorizon).await;
    let (records, _) = drain(&client, it, 1000).await;
    let read: Vec<String> = records.iter().map(|r| id_of(&r.1)).collect();
    assert_eq!(read, acked, "every acknowledged publish once, in order; nothing refused stored");
    drop(c);
}
