//! The servers under test, as processes: the release collector (plain and
//! TLS listeners, a `bench` user for TLS) and a second Mosquitto with a TLS
//! listener for the TLS comparison.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::load::{BENCH_PASSWORD, Target};

/// How long a server may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The collector under test, as a process.
pub(super) struct CollectorProcess {
    child: Child,
    pub(super) mqtt: SocketAddr,
    pub(super) mqtts: SocketAddr,
    pub(super) ca: PathBuf,
}

impl CollectorProcess {
    /// Starts the release collector on an empty `dir` with `shards` shards
    /// per auto-created stream and fsync `fsync`.
    pub(super) fn start(dir: &Path, shards: u32, fsync: &str) -> Result<Self, String> {
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
        let child = Command::new(env!("CARGO_BIN_EXE_weir-collector"))
            .args(["serve", "--mqtt-listen", "127.0.0.1:0", "--mqtts-listen", "127.0.0.1:0"])
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
