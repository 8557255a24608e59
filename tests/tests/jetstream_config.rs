//! The JetStream backend's bad configurations: each stops the collector at
//! start, within seconds, with an error naming the `[store]` setting to fix,
//! instead of hanging. Each case runs a nats-server of its own on a free
//! loopback port (never the machine's 4222).

use std::time::Duration;

use weir_tests::harness::{Collector, free_port};
use weir_tests::nats::NatsServer;

/// How long a refused start may take (the connect timeout is 5 s).
const START_FAILS_WITHIN: Duration = Duration::from_secs(20);

/// Starts a collector with `args`, expects it to exit unsuccessfully within
/// [`START_FAILS_WITHIN`], and returns its log.
fn refused(args: &[&str]) -> String {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut c = Collector::spawn(&tmp.path().join("data"), tmp.path(), args);
    let status = c.wait_exit(START_FAILS_WITHIN);
    let log = c.log();
    match status {
        Some(s) => assert!(!s.success(), "the collector started anyway\n{log}"),
        None => {
            c.signal("KILL");
            panic!("the collector neither started nor failed within {START_FAILS_WITHIN:?}\n{log}");
        }
    }
    log
}

#[test]
fn unreachable_servers_name_store_servers() {
    let url = format!("nats://127.0.0.1:{}", free_port());
    let log = refused(&["--store", &url]);
    assert!(log.contains("store.servers") && log.contains(&url), "{log}");
}

#[test]
fn refused_credentials_name_store_user() {
    let server = NatsServer::start_with_config("authorization { user: weir, password: right }");
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("collector.toml");
    let toml = format!(
        "[store]\nservers = [\"{}\"]\nuser = \"weir\"\npassword = \"wrong\"\n",
        server.url()
    );
    std::fs::write(&config, toml).expect("write config");
    let log = refused(&["--config", config.to_str().expect("utf-8 path")]);
    assert!(log.contains("store.user") && log.contains("credentials"), "{log}");
}

#[test]
fn more_replicas_than_servers_name_store_replicas() {
    let server = NatsServer::start();
    let log = refused(&["--store", &server.url(), "--store-replicas", "3"]);
    assert!(log.contains("store.replicas"), "{log}");
}

#[test]
fn replicas_outside_one_three_five_are_refused_before_connecting() {
    let log = refused(&["--store", "nats://127.0.0.1:9", "--store-replicas", "2"]);
    assert!(log.contains("store.replicas") && log.contains("not 1, 3 or 5"), "{log}");
}
