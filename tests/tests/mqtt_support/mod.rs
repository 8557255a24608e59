//! Support for the MQTT end-to-end tests: starting a collector with MQTT
//! listeners (here), rumqttc clients (3.1.1 and 5; plain, TLS, mutual TLS)
//! that report which publishes were acknowledged and how (`client`), a raw
//! socket client for byte-level tests (`raw`), and reading a stream back from
//! a stopped collector's data directory (`read`).
//!
//! Every wait is bounded: a client gives up after its deadline and reports
//! what it saw, so a broken collector fails a test instead of hanging it.

// Each test file uses its own part of this module.
#![allow(dead_code)]

mod client;
mod raw;
mod read;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rumqttc::tokio_rustls::rustls::ClientConfig;
use weir_tests::harness::Collector;

// Each test file uses its own part of these too.
#[allow(unused_imports)]
pub use client::{Ack, Conn, Msg, Report, Version, publish, publish_until};
#[allow(unused_imports)]
pub use raw::{RAW_TIMEOUT, Raw, publish4};
#[allow(unused_imports)]
pub use read::{Read, read_stream, shard_of, stop_and_read};

/// Flags every MQTT test collector gets: a plain listener on a free port with
/// anonymous access, the TLS listener and the HTTP API on free ports.
pub const BASE_FLAGS: [&str; 7] = [
    "--mqtt-listen",
    "127.0.0.1:0",
    "--mqtts-listen",
    "127.0.0.1:0",
    "--http-listen",
    "127.0.0.1:0",
    "--allow-anonymous",
];

/// Starts a collector with [`BASE_FLAGS`] and `extra`.
pub fn start(extra: &[&str]) -> Collector {
    let mut flags: Vec<&str> = BASE_FLAGS.to_vec();
    flags.extend_from_slice(extra);
    Collector::start(&flags)
}

/// Starts a collector on an existing data directory.
pub fn start_in(data_dir: &Path, log_dir: &Path, extra: &[&str]) -> Collector {
    let mut flags: Vec<&str> = BASE_FLAGS.to_vec();
    flags.extend_from_slice(extra);
    Collector::start_in(data_dir, log_dir, &flags)
}

/// A listener address from the ready file (`"mqtt"` or `"mqtts"`).
pub fn addr(c: &Collector, which: &str) -> SocketAddr {
    c.ready()[which]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no {which} address in the ready file\n{}", c.report()))
}

/// The development CA certificate of a running collector.
pub fn ca(c: &Collector) -> PathBuf {
    c.ready()["tls_ca"]
        .as_str()
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no tls_ca in the ready file\n{}", c.report()))
}

/// A rustls client configuration trusting `ca`, presenting `identity`.
pub fn tls(ca: &Path, identity: Option<(&Path, &Path)>) -> Arc<ClientConfig> {
    weir_collector::tls::install_default_provider();
    weir_collector::tls::client_config(ca, identity).expect("client TLS configuration")
}

/// The RSS of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Writes a configuration file into `dir` and returns its path.
pub fn config_file(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("collector.toml");
    std::fs::write(&path, toml).expect("write config");
    path
}
