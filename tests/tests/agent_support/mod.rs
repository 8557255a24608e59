//! Support for the agent's end-to-end tests: a collector with its TLS
//! listener on loopback, device certificates, agent configuration files,
//! log writers that number their lines, and reading a stream back from a
//! stopped collector's data directory.
//!
//! Every wait is bounded and waits for a condition (a status field, a file
//! size), never a guessed time.

// Each test uses its own part of this module.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use weir_tests::harness::{Agent, Collector};

/// How long an agent may take to ship what a test wrote.
pub const SHIP_TIMEOUT: Duration = Duration::from_secs(90);
/// How long an agent may take to notice something (a refusal, a file).
pub const NOTICE_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts a collector with its TLS listener on `127.0.0.1:port` (0: any) and
/// its HTTP API on a free port, in `data_dir`, logging into `log_dir`.
pub fn collector(data_dir: &Path, log_dir: &Path, port: u16) -> Collector {
    let listen = format!("127.0.0.1:{port}");
    Collector::start_in(
        data_dir,
        log_dir,
        &["--mqtts-listen", &listen, "--http-listen", "127.0.0.1:0"],
    )
}

/// The TLS listener's address from the ready file.
pub fn mqtts_addr(c: &Collector) -> SocketAddr {
    c.ready()["mqtts"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no mqtts address in the ready file\n{}", c.report()))
}

/// Issues a device certificate signed by the development CA of `data_dir`
/// into `out` and returns (CA, certificate, key).
pub fn device_cert(data_dir: &Path, name: &str, out: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let dev = weir_collector::certs::issue_device_cert(data_dir, name, 1, Some(out))
        .unwrap_or_else(|e| panic!("issuing a certificate for {name}: {e}"));
    (dev.ca_cert, dev.cert, dev.key)
}

/// Stops the collector (SIGTERM, bounded wait).
pub fn stop(c: &mut Collector) {
    c.signal("TERM");
    assert!(
        c.wait_exit(Duration::from_secs(30)).is_some(),
        "collector did not stop\n{}",
        c.report()
    );
}

/// An agent configuration.
pub struct AgentSetup {
    /// Directory of the agent's files (config, spool, logs).
    pub dir: PathBuf,
    /// Device id.
    pub device_id: String,
    /// `host:port` of the collector's TLS listener.
    pub address: String,
    /// CA file.
    pub ca: PathBuf,
    /// Device certificate and key.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// More keys of the `[spool]` section.
    pub spool: String,
    /// More TOML (sections, inputs).
    pub extra: String,
}

impl AgentSetup {
    /// Writes `agent.toml` (spool and status in `dir/spool`) and returns an
    /// agent for it, not started.
    pub fn write(&self) -> Agent {
        let spool = self.dir.join("spool");
        let status = spool.join("status.json");
        let identity = match &self.identity {
            Some((cert, key)) => format!("cert_file = {:?}\nkey_file = {:?}\n", cert, key),
            None => String::new(),
        };
        let toml = format!(
            r#"device_id = "{device}"

[collector]
address = "mqtts://{address}"
reconnect_min_ms = 100
reconnect_max_ms = 1000

[collector.tls]
ca_file = {ca:?}
server_name = "localhost"
{identity}
[spool]
dir = {spool:?}
{spool_extra}
[status]
file = {status:?}

{extra}
"#,
            device = self.device_id,
            address = self.address,
            ca = self.ca,
            spool_extra = self.spool,
            extra = self.extra,
        );
        let path = self.dir.join("agent.toml");
        std::fs::write(&path, toml).expect("write agent.toml");
        Agent::new(&path, &status, &spool, &self.dir)
    }
}

/// A `[[inputs]]` table tailing `glob` into stream `stream`, with short
/// timers so tests do not wait long for rotations and partial lines.
pub fn file_input(name: &str, glob: &Path, stream: &str) -> String {
    format!(
        r#"[[inputs]]
kind = "file"
name = "{name}"
paths = [{glob:?}]
stream = "{stream}"
poll_ms = 20
rescan_ms = 50
rotate_wait_ms = 300
partial_flush_ms = 500
"#
    )
}

/// Short batching for tests.
pub const FAST_BATCH: &str = "[batch]\nlinger_ms = 50\n";

/// Appends `text` to `path` in one write (opening it as a writer reopening
/// its log would, so a rename or delete makes it create a new file).
pub fn append(path: &Path, text: &str) {
    let mut f = OpenOptions::new().create(true).append(true).open(path).expect("open log");
    f.write_all(text.as_bytes()).expect("write log");
}

/// Line `n` of generation `g` of writer `w`: `w<w> g<g> <n>` and padding.
pub fn line(w: u32, g: u32, n: u64) -> String {
    format!("w{w} g{g} {n:08} {}\n", "x".repeat((n % 50) as usize + 20))
}

/// Parses a line made by [`line`] into (writer, generation, number).
pub fn parse_line(data: &[u8]) -> Option<(u32, u32, u64)> {
    let text = std::str::from_utf8(data).ok()?;
    let mut parts = text.split(' ');
    let w = parts.next()?.strip_prefix('w')?.parse().ok()?;
    let g = parts.next()?.strip_prefix('g')?.parse().ok()?;
    let n = parts.next()?.parse().ok()?;
    Some((w, g, n))
}

/// One record read back: partition key and data.
pub type Got = (String, Vec<u8>);

/// Reads every record of `stream` from a data directory no process has
/// open, shard by shard in order; empty if the stream does not exist.
pub fn read_stream(data_dir: &Path, stream: &str) -> Vec<Got> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let records = rt.block_on(weir_tests::harness::read_stream_records(data_dir, stream));
    records
        .unwrap_or_default()
        .into_iter()
        .map(|(_, r)| (r.partition_key.to_string(), r.data.to_vec()))
        .collect()
}

/// Checks that the numbered lines of writer `w` arrived exactly once each,
/// `0..count`, and in order within each generation (one file's life).
pub fn check_exactly_once(got: &[Got], w: u32, count: u64) -> Result<(), String> {
    let mut seen = vec![0u32; count as usize];
    let mut last_in_gen: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
    let mut problems = Vec::new();
    for (_, data) in got {
        let Some((lw, g, n)) = parse_line(data) else {
            problems.push(format!("unexpected record {:?}", String::from_utf8_lossy(data)));
            continue;
        };
        if lw != w {
            continue;
        }
        match seen.get_mut(n as usize) {
            Some(s) => *s += 1,
            None => problems.push(format!("line {n} was never written")),
        }
        if let Some(prev) = last_in_gen.insert(g, n)
            && n <= prev
        {
            problems.push(format!("generation {g}: line {n} after line {prev}"));
        }
    }
    let missing: Vec<usize> =
        seen.iter().enumerate().filter(|(_, c)| **c == 0).map(|(i, _)| i).collect();
    let doubled: Vec<usize> =
        seen.iter().enumerate().filter(|(_, c)| **c > 1).map(|(i, _)| i).collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{} lines missing, first {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        ));
    }
    if !doubled.is_empty() {
        problems.push(format!(
            "{} lines duplicated, first {:?}",
            doubled.len(),
            &doubled[..doubled.len().min(10)]
        ));
    }
    problems.truncate(20);
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}

/// Status helpers.
pub mod status {
    use serde_json::Value;

    /// Records input `i` produced in this run.
    pub fn input_records(s: &Value, i: usize) -> u64 {
        s["inputs"][i]["records"].as_u64().unwrap_or(0)
    }

    /// Nothing waits: no record held by the batcher, no entry in the spool,
    /// no batch in flight.
    pub fn drained(s: &Value) -> bool {
        s["pending_records"].as_u64() == Some(0)
            && s["spool"]["entries"].as_u64() == Some(0)
            && s["connection"]["inflight"].as_u64() == Some(0)
    }

    /// The checkpoint (spooled offset) of `path` in input `i`.
    pub fn spooled_offset(s: &Value, i: usize, path: &str) -> Option<u64> {
        s["inputs"][i]["files"]
            .as_array()?
            .iter()
            .find(|f| f["path"].as_str() == Some(path))?["spooled_offset"]
            .as_u64()
    }

    /// The connection's last error message.
    pub fn connection_error(s: &Value) -> String {
        s["connection"]["last_error"]["message"].as_str().unwrap_or_default().to_owned()
    }
}
