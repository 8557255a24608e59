//! The servers under test, as processes: the release collector (plain and
//! TLS listeners, a `bench` user for TLS), a second Mosquitto with a TLS
//! listener for the TLS comparison, and nats-server with JetStream (one, or
//! a 3-node loopback cluster) for the JetStream peer. Benches cannot use the
//! test crate's harness, so the NATS starter here is a small one of its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::load::{BENCH_PASSWORD, Target};

/// How long a server may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A JetStream store for a collector under test: `--store`, replicas and the
/// stream-name prefix (one per collector, so runs never share streams).
#[derive(Clone, Debug)]
pub(super) struct StoreArg {
    pub(super) urls: String,
    pub(super) replicas: u8,
    pub(super) prefix: String,
}

/// The collector under test, as a process.
pub(super) struct CollectorProcess {
    child: Child,
    pub(super) mqtt: SocketAddr,
    pub(super) mqtts: SocketAddr,
    pub(super) ca: PathBuf,
}

impl CollectorProcess {
    /// Starts the release collector on an empty `dir` with `shards` shards
    /// per auto-created stream and fsync `fsync`, on its embedded store or
    /// on JetStream (`store`).
    pub(super) fn start(
        dir: &Path,
        shards: u32,
        fsync: &str,
        store: Option<&StoreArg>,
    ) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let data = dir.join("data");
        let ready = dir.join("ready.json");
        let config = dir.join("collector.toml");
        // The TLS listener takes no anonymous clients: the load generator
        // logs in as `bench`.
        let hash =
            weir_collector::ingest::hash_password(BENCH_PASSWORD).map_err(|e| e.to_string())?;
        std::fs::write(
            &config,
            format!(
                "[mqtt]\nauto_create_shards = {}\n[[mqtt.users]]\nname = \"bench\"\npassword_hash = \"{hash}\"\n",
                shards
            ),
        )
        .map_err(|e| format!("{}: {e}", config.display()))?;
        let log = std::fs::File::create(dir.join("collector.log")).map_err(|e| e.to_string())?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_weir-collector"));
        command.arg("serve");
        if let Some(s) = store {
            command.args(["--store", &s.urls, "--store-prefix", &s.prefix]);
            command.args(["--store-replicas", &s.replicas.to_string()]);
        }
        let child = command
            .args(["--mqtt-listen", "127.0.0.1:0", "--mqtts-listen", "127.0.0.1:0"])
            .args(["--http-listen", "127.0.0.1:0", "--allow-anonymous", "--fsync", fsync])
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .arg("--ready-file")
            .arg(&ready)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting the collector: {e}"))?;
        let mut process = Self {
            child,
            mqtt: ([0, 0, 0, 0], 0).into(),
            mqtts: ([0, 0, 0, 0], 0).into(),
            ca: PathBuf::new(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let text = loop {
            if let Ok(t) = std::fs::read_to_string(&ready) {
                break t;
            }
            if Instant::now() > deadline || process.child.try_wait().ok().flatten().is_some() {
                return Err(format!(
                    "the collector did not start; see {}",
                    dir.join("collector.log").display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let addr = |k: &str| -> Result<SocketAddr, String> {
            json[k].as_str().and_then(|s| s.parse().ok()).ok_or(format!("no {k} in the ready file"))
        };
        process.mqtt = addr("mqtt")?;
        process.mqtts = addr("mqtts")?;
        process.ca =
            json["tls_ca"].as_str().map(PathBuf::from).ok_or("no tls_ca in the ready file")?;
        Ok(process)
    }

    pub(super) fn peak_rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            })
            .unwrap_or(0)
    }
}

impl Drop for CollectorProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A second Mosquitto with a TLS listener, for the TLS comparison.
pub(super) struct MosquittoTls {
    child: Child,
    pub(super) target: Target,
}

impl MosquittoTls {
    pub(super) async fn start(dir: &Path) -> Option<Self> {
        let bin = Path::new("/usr/sbin/mosquitto");
        if !bin.exists() {
            eprintln!("(no /usr/sbin/mosquitto: the TLS case runs against Weir only)");
            return None;
        }
        let tls_dir = dir.join("mosquitto-tls");
        let dev = weir_collector::certs::ensure_dev_tls(&tls_dir, &[]).ok()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        // Mosquitto drops root privileges before reading its key: give it a
        // readable copy of this throwaway key.
        let key = tls_dir.join("mosquitto-server.key");
        std::fs::copy(&dev.server_key, &key).ok()?;
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).ok()?;
        let conf = tls_dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\ncertfile {}\nkeyfile {}\n",
                dev.server_cert.display(),
                key.display()
            ),
        )
        .ok()?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(addr).await.is_err() {
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let tls = weir_collector::tls::client_config(&dev.ca_cert, None).ok()?;
        Some(Self { child, target: Target { name: "mosquitto", addr, tls: Some(tls) } })
    }
}

impl Drop for MosquittoTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// JetStream limits of the bench's nats-servers: a 3 s run of 1 KiB messages
/// stays far below; the stream of each run is deleted after it.
const NATS_MAX_FILE_STORE: &str = "8GB";
const NATS_MAX_MEMORY_STORE: &str = "256MB";

/// The `nats-server` binary: `$NATS_SERVER`, else `nats-server` on `PATH`,
/// else `/usr/sbin/nats-server`; `None` when there is none.
fn nats_server_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path).map(|d| d.join("nats-server")).find(|p| p.is_file())
        })
        .or_else(|| Some(PathBuf::from("/usr/sbin/nats-server")).filter(|p| p.exists()))
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("bind 127.0.0.1:0: {e}"))
}

/// nats-server processes with JetStream on loopback: one server, or a
/// cluster whose nodes route to each other (server names `n0`, `n1`, ...).
/// Each has its own free client, route and monitoring ports and its own store
/// directory under the bench's directory; all are killed when dropped.
pub(super) struct NatsProcesses {
    children: Vec<Child>,
    /// Client URLs, one per node.
    pub(super) urls: Vec<String>,
    /// `nats-server --version`.
    pub(super) version: String,
}

impl NatsProcesses {
    /// Starts `nodes` servers under `dir` and waits until every one answers
    /// `/healthz` (JetStream ready; in a cluster, current with an elected
    /// meta leader). `Ok(None)` when nats-server is not installed.
    pub(super) async fn start(dir: &Path, nodes: usize) -> Result<Option<Self>, String> {
        let Some(bin) = nats_server_binary() else { return Ok(None) };
        let version = Command::new(&bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let mut ports = Vec::new();
        for _ in 0..nodes {
            ports.push((free_port()?, free_port()?, free_port()?));
        }
        let mut logs = Vec::new();
        let mut process = Self { children: Vec::new(), urls: Vec::new(), version };
        for (i, &(client, route, monitor)) in ports.iter().enumerate() {
            let node_dir = dir.join(format!("n{i}"));
            std::fs::create_dir_all(&node_dir)
                .map_err(|e| format!("{}: {e}", node_dir.display()))?;
            let store = node_dir.join("store");
            let mut conf = format!(
                "server_name: \"n{i}\"\nlisten: \"127.0.0.1:{client}\"\nhttp: \"127.0.0.1:{monitor}\"\n\
                 jetstream {{\n  store_dir: \"{}\"\n  max_file_store: {NATS_MAX_FILE_STORE}\n  \
                 max_memory_store: {NATS_MAX_MEMORY_STORE}\n}}\n",
                store.display()
            );
            if nodes > 1 {
                conf.push_str(&format!(
                    "cluster {{\n  name: \"weir-bench\"\n  listen: \"127.0.0.1:{route}\"\n  routes: [\n"
                ));
                for (j, &(_, other, _)) in ports.iter().enumerate() {
                    if j != i {
                        conf.push_str(&format!("    \"nats-route://127.0.0.1:{other}\"\n"));
                    }
                }
                conf.push_str("  ]\n}\n");
            }
            let conf_path = node_dir.join("nats-server.conf");
            std::fs::write(&conf_path, conf)
                .map_err(|e| format!("{}: {e}", conf_path.display()))?;
            let log_path = node_dir.join("nats-server.log");
            let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
            let child = Command::new(&bin)
                .arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("starting {}: {e}", bin.display()))?;
            process.children.push(child);
            logs.push(log_path);
            process.urls.push(format!("nats://127.0.0.1:{client}"));
        }
        let deadline = Instant::now() + START_TIMEOUT;
        for (&(_, _, monitor), log) in ports.iter().zip(&logs) {
            loop {
                let ok = http_get(monitor, "/healthz").await.is_some_and(|b| b.contains("\"ok\""));
                let leader = nodes == 1
                    || http_get(monitor, "/jsz").await.is_some_and(|b| {
                        serde_json::from_str::<serde_json::Value>(&b).is_ok_and(|j| {
                            j["meta_cluster"]["leader"].as_str().is_some_and(|l| !l.is_empty())
                        })
                    });
                if ok && leader {
                    break;
                }
                if Instant::now() > deadline
                    || process.children.iter_mut().any(|c| c.try_wait().ok().flatten().is_some())
                {
                    return Err(format!(
                        "nats-server did not get JetStream ready within {START_TIMEOUT:?}; see {}",
                        log.display()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(Some(process))
    }
}

impl Drop for NatsProcesses {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The body of `GET path` from a monitoring port on 127.0.0.1, if it answers.
async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let request = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out).into_owned();
        text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), request).await.ok().flatten()
}
