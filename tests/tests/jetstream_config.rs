//! The JetStream backend's bad configurations: each stops the collector at
//! start, within seconds, with an error naming the `[store]` setting to fix,
//! instead of hanging. Each case runs a nats-server of its own on a free
//! loopback port (never the machine's 4222). A server with TLS is reached
//! through `tls_ca_file` (records go in and come back), and refused at start
//! with a CA that did not sign its certificate.

mod kinesis_support;

use std::path::Path;
use std::time::Duration;

use aws_sdk_kinesis::types::ShardIteratorType;
use kinesis_support::ops::{create, drain, iterator, put};
use kinesis_support::sdk;
use weir_collector::certs::ensure_dev_tls;
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

/// A nats-server whose client port speaks only TLS, with a certificate from
/// a development CA under `dir`; returns the server and that CA's file.
fn tls_server(dir: &Path) -> (NatsServer, std::path::PathBuf) {
    let certs = ensure_dev_tls(dir, &[]).expect("development CA and server certificate");
    let server = NatsServer::start_with_config(&format!(
        "tls {{ cert_file: {:?}, key_file: {:?} }}",
        certs.server_cert.to_str().expect("utf-8 path"),
        certs.server_key.to_str().expect("utf-8 path")
    ));
    (server, certs.ca_cert)
}

fn tls_config(dir: &Path, url: &str, ca: &Path) -> std::path::PathBuf {
    let config = dir.join("collector.toml");
    let toml =
        format!("[store]\nservers = [{url:?}]\ntls_ca_file = {:?}\n", ca.display().to_string());
    std::fs::write(&config, toml).expect("write config");
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_server_is_reached_through_store_tls_ca_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (server, ca) = tls_server(&tmp.path().join("nats-tls"));
    let config = tls_config(tmp.path(), &server.url(), &ca);
    let c = tokio::task::block_in_place(|| {
        Collector::start(&["--config", config.to_str().expect("utf-8 path")])
    });
    let client = sdk(c.http_addr());
    create(&client, "over-tls", 1).await;
    let (shard, seq) = put(&client, "over-tls", "k", b"through TLS").await;
    let it = iterator(&client, "over-tls", &shard, ShardIteratorType::TrimHorizon).await;
    let (records, _) = drain(&client, it, 100).await;
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].1.as_slice(), records[0].2.as_str()),
        (&b"through TLS"[..], seq.as_str())
    );
}

#[test]
fn a_ca_that_did_not_sign_the_server_names_store_tls_ca_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (server, _) = tls_server(&tmp.path().join("nats-tls"));
    let other = ensure_dev_tls(&tmp.path().join("other"), &[]).expect("another CA");
    let config = tls_config(tmp.path(), &server.url(), &other.ca_cert);
    let log = refused(&["--config", config.to_str().expect("utf-8 path")]);
    assert!(log.contains("store.tls_ca_file"), "{log}");
}
