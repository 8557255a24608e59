//! Stock MQTT clients against the collector: Debian's `mosquitto_pub`
//! (mosquitto-clients) over plain TCP, TLS with a password and mutual TLS,
//! at MQTT 3.1.1 and 5; and the Eclipse Paho Python client
//! (`tests/python/paho_publish.py`). The records must arrive in the right
//! stream and shard with the right key and data.
//!
//! `scripts/test` installs mosquitto-clients and paho-mqtt when missing;
//! without them these tests fail and say what to install.

mod mqtt_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use mqtt_support::*;
use weir_tests::harness::{Collector, binary};

/// Bound on every client process.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs a client process with a bounded wait; panics with its output on
/// failure or timeout.
fn run(mut cmd: Command, what: &str, input: Option<&str>) -> Output {
    use std::io::Write;
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("{what}: cannot start {cmd:?}: {e} (scripts/test installs mosquitto-clients and paho-mqtt)")
    });
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).expect("write stdin");
    }
    // The clients print a few lines at most: the pipes cannot fill up while
    // we wait for the exit.
    let finished =
        weir_tests::harness::wait_for(CLIENT_TIMEOUT, || matches!(child.try_wait(), Ok(Some(_))));
    if !finished {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("wait");
    assert!(
        finished && out.status.success(),
        "{what} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn issue(c: &Collector, name: &str) -> (PathBuf, PathBuf) {
    let mut cmd = Command::new(binary("weir-collector"));
    cmd.args(["certs", "issue-device", name, "--data-dir"]).arg(&c.data_dir);
    run(cmd, "certs issue-device", None);
    let dir = c.data_dir.join("tls/devices");
    (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")))
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_over_plain_tls_and_mutual_tls() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hash = weir_collector::ingest::hash_password("pub-pw").expect("hash");
    let config = config_file(
        tmp.path(),
        &format!(
            "[mqtt]\nauto_create_shards = 2\n[[mqtt.users]]\nname = \"pub\"\npassword_hash = \"{hash}\"\n"
        ),
    );
    let mut c = start(&["--config", path(&config)]);
    let (plain, secure) = (addr(&c, "mqtt"), addr(&c, "mqtts"));
    let ca = ca(&c);
    let (cert, dev_key) = issue(&c, "sensor-1");
    let mut expected: Vec<(String, String)> = Vec::new();
    for (version, qos) in [("mqttv311", "0"), ("mqttv311", "1"), ("mqttv5", "1"), ("mqttv5", "2")] {
        let key = format!("plain-{version}-q{qos}");
        let lines: String = (0..5).map(|i| format!("{key}:{i}\n")).collect();
        let mut cmd = Command::new("mosquitto_pub");
        cmd.args(["-h", "127.0.0.1", "-p", &plain.port().to_string(), "-V", version, "-q", qos]);
        cmd.args(["-i", &format!("mp-{version}-{qos}"), "-t", &format!("weir/mosq/{key}"), "-l"]);
        run(cmd, &format!("mosquitto_pub {version} QoS {qos}"), Some(&lines));
        expected.extend((0..5).map(|i| (key.clone(), format!("{key}:{i}"))));
    }
    for version in ["mqttv311", "mqttv5"] {
        let key = format!("tls-{version}");
        let mut cmd = Command::new("mosquitto_pub");
        cmd.args(["-h", "localhost", "-p", &secure.port().to_string(), "-V", version, "-q", "1"]);
        cmd.args(["--cafile", path(&ca), "-u", "pub", "-P", "pub-pw", "-i", &key]);
        cmd.args(["-t", &format!("weir/mosq/{key}"), "-m", &format!("{key}:0")]);
        run(cmd, &format!("mosquitto_pub TLS {version}"), None);
        expected.push((key.clone(), format!("{key}:0")));

        let key = format!("mtls-{version}");
        let mut cmd = Command::new("mosquitto_pub");
        cmd.args(["-h", "localhost", "-p", &secure.port().to_string(), "-V", version, "-q", "2"]);
        cmd.args([
            "--cafile",
            path(&ca),
            "--cert",
            path(&cert),
            "--key",
            path(&dev_key),
            "-i",
            "sensor-1",
        ]);
        cmd.args(["-t", &format!("weir/mosq/{key}"), "-m", &format!("{key}:0")]);
        run(cmd, &format!("mosquitto_pub mutual TLS {version}"), None);
        expected.push((key.clone(), format!("{key}:0")));
    }
    let records = stop_and_read(&mut c, "mosq").await.expect("mosq stream");
    check(&records, &expected, 2);
}

/// Every expected (key, data) is stored once, in its key's shard, in order
/// per key.
fn check(records: &[Read], expected: &[(String, String)], shards: u64) {
    let mut got: HashMap<(String, String), usize> = HashMap::new();
    let mut order: HashMap<String, Vec<String>> = HashMap::new();
    for r in records {
        let key = r.record.partition_key.to_string();
        let data = String::from_utf8(r.record.data.to_vec()).expect("utf-8");
        assert_eq!(r.shard, shard_of(&key, shards), "{key} in the wrong shard");
        order.entry(key.clone()).or_default().push(data.clone());
        *got.entry((key, data)).or_default() += 1;
    }
    for e in expected {
        assert_eq!(got.get(e), Some(&1), "{e:?} not stored exactly once; stored: {got:?}");
    }
    assert_eq!(records.len(), expected.len());
    for (key, datas) in order {
        let want: Vec<&String> =
            expected.iter().filter(|(k, _)| *k == key).map(|(_, d)| d).collect();
        let datas: Vec<&String> = datas.iter().collect();
        assert_eq!(datas, want, "order of {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_python_client_over_plain_and_tls() {
    let mut probe = Command::new("python3");
    probe.args(["-c", "import paho.mqtt.client"]);
    run(probe, "python3 with paho-mqtt", None);
    let tmp = tempfile::tempdir().expect("tempdir");
    let hash = weir_collector::ingest::hash_password("paho-pw").expect("hash");
    let config = config_file(
        tmp.path(),
        &format!(
            "[mqtt]\nauto_create_shards = 2\n[[mqtt.users]]\nname = \"paho\"\npassword_hash = \"{hash}\"\n"
        ),
    );
    let mut c = start(&["--config", path(&config)]);
    let (plain, secure) = (addr(&c, "mqtt"), addr(&c, "mqtts"));
    let ca = ca(&c);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/paho_publish.py");
    const COUNT: usize = 30;
    let mut expected: Vec<(String, String)> = Vec::new();
    let cases: [(&str, &str, &str, bool); 4] = [
        ("paho-311", "311", "1", false),
        ("paho-5", "5", "2", false),
        ("paho-tls-311", "311", "1", true),
        ("paho-tls-5", "5", "1", true),
    ];
    for (client_id, protocol, qos, secure_listener) in cases {
        let mut cmd = Command::new("python3");
        cmd.arg(&script);
        cmd.args(["--client-id", client_id, "--protocol", protocol, "--qos", qos]);
        cmd.args(["--count", &COUNT.to_string(), "--prefix", &format!("weir/paho/{client_id}")]);
        if secure_listener {
            cmd.args([
                "--host",
                "localhost",
                "--port",
                &secure.port().to_string(),
                "--ca",
                path(&ca),
            ]);
            cmd.args(["--username", "paho", "--password", "paho-pw"]);
        } else {
            cmd.args(["--port", &plain.port().to_string()]);
        }
        let out = run(cmd, &format!("paho {client_id}"), None);
        let summary = String::from_utf8_lossy(&out.stdout);
        assert!(summary.contains(&format!("\"acked\": {COUNT}")), "{summary}");
        expected.extend(
            (0..COUNT).map(|i| (format!("{client_id}/key-{}", i % 3), format!("{client_id}:{i}"))),
        );
    }
    let records = stop_and_read(&mut c, "paho").await.expect("paho stream");
    check(&records, &expected, 2);
}
