//! The collector's data directory on a small filesystem (a 64 MiB tmpfs the
//! test mounts; it needs root, and says so and passes without checking
//! anything when it cannot mount). With `[store] min_free_bytes` at 16 MiB:
//! records go in; a ballast file then takes the free space below the
//! reserve, and PutRecords and MQTT 5 publishes are refused with answers
//! that say the disk is full (MQTT: PUBACK 0x97, quota exceeded) while
//! `/health` answers 503 "degraded"; once the ballast is deleted, ingestion
//! resumes without a restart, `/health` is ok again, and every acknowledged
//! record reads back exactly once.

mod kinesis_support;
mod mqtt_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::ShardIteratorType;
use kinesis_support::ops::{create, drain, iterator};
use kinesis_support::sdk;
use mqtt_support::{Ack, Conn, Msg, Version, publish};
use weir_tests::harness::http;

const FS_SIZE: &str = "64m";
const RESERVE: u64 = 16 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

/// A tmpfs mounted for the test, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path) -> Option<Self> {
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid() == 0
        });
        if !root {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        std::fs::create_dir_all(at).expect("mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={FS_SIZE}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: mount -t tmpfs failed here (no CAP_SYS_ADMIN?)");
            return None;
        }
        Some(Self(at.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Free bytes of the filesystem holding `path` (`df`).
fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("df").args(["--output=avail", "-B1"]).arg(path).output().expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df prints the free bytes")
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_appends_reports_degraded_and_recovers_by_itself() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(mount) = Mount::tmpfs(&tmp.path().join("small")) else { return };
    let config =
        mqtt_support::config_file(tmp.path(), &format!("[store]\nmin_free_bytes = {RESERVE}\n"));
    let c = tokio::task::block_in_place(|| {
        mqtt_support::start_in(
            &mount.0.join("data"),
            tmp.path(),
            &["--config", config.to_str().expect("utf8 path")],
        )
    });
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
