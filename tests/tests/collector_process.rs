//! The real `weir-collector` binary: starts on a fresh data directory, refuses
//! a second process on the same directory, and stops cleanly on SIGTERM.

use std::time::Duration;

use weir_tests::harness::{Collector, wait_for};

#[test]
fn collector_starts_locks_its_data_dir_and_stops_on_sigterm() {
    let mut first = Collector::start(&[]);
    assert!(first.data_dir.join("LOCK").exists(), "{}", first.report());

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
