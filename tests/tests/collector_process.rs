//! The real `weir-collector` binary: starts on a fresh data directory, refuses
//! a second process on the same directory, and stops cleanly on SIGTERM.

use std::time::Duration;

use weir_tests::harness::{Collector, wait_for};

#[test]
fn collector_starts_locks_its_data_dir_and_stops_on_sigterm() {
    let mut first = Collector::start(&[]);
    assert!(first.data_dir.join("LOCK").exists(), "{}", first.report());
    let ready = first.ready();
    assert_eq!(
        ready["data_dir"].as_str().map(std::path::PathBuf::from),
        Some(first.data_dir.clone())
    );

    // A second collector on the same directory must refuse with a clear error.
    let log_dir = tempfile::tempdir().expect("tempdir");
    let mut second = Collector::spawn(&first.data_dir, log_dir.path(), &[]);
    let status = second.wait_exit(Duration::from_secs(30)).expect("second collector exits");
    assert!(!status.success());
    assert!(
        wait_for(Duration::from_secs(5), || second
            .log()
            .contains("another process has this data directory open")),
        "{}",
        second.report()
    );

    first.signal("TERM");
    let status = first.wait_exit(Duration::from_secs(30)).expect("collector exits on SIGTERM");
    assert!(status.success(), "{}", first.report());
    assert!(first.log().contains("shutting down"), "{}", first.report());
}

#[test]
fn collector_rejects_a_bad_fsync_policy_naming_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut c = Collector::spawn(&tmp.path().join("data"), tmp.path(), &["--fsync", "sometimes"]);
    let status = c.wait_exit(Duration::from_secs(30)).expect("exits");
    assert!(!status.success());
    assert!(c.log().contains("invalid fsync policy \"sometimes\""), "{}", c.report());
}

#[test]
fn collector_reads_a_toml_config_and_names_the_bad_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("from-config");
    let good = tmp.path().join("good.toml");
    std::fs::write(
        &good,
        format!("data_dir = {:?}\n[store]\nfsync = \"interval:50\"\n", data.display().to_string()),
    )
    .expect("write config");
    let other = tmp.path().join("unused");
    let mut c =
        Collector::spawn(&other, tmp.path(), &["--config", good.to_str().expect("utf8 path")]);
    // `--data-dir` given by the harness wins over the file's `data_dir`.
    assert!(wait_for(Duration::from_secs(30), || c.ready_path.exists()), "{}", c.report());
    assert!(other.join("LOCK").exists() && !data.exists(), "{}", c.report());
    c.signal("TERM");
    assert!(c.wait_exit(Duration::from_secs(30)).is_some_and(|s| s.success()), "{}", c.report());

    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[store]\nfsync = \"always\"\nsegment_max_bytez = 5\n")
        .expect("write config");
    let mut c =
        Collector::spawn(&other, tmp.path(), &["--config", bad.to_str().expect("utf8 path")]);
    assert!(c.wait_exit(Duration::from_secs(30)).is_some_and(|s| !s.success()), "{}", c.report());
    let log = c.log();
    assert!(log.contains("bad.toml:3:") && log.contains("segment_max_bytez"), "{}", c.report());
}
