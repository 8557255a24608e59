//! MQTT ingest benchmark: a load generator run against the collector and, in
//! the same run, against a Mosquitto broker, alternating, so both see the
//! same machine at the same half hour.
//!
//! ```text
//! cargo bench -p weir-collector --bench mqtt                         # every case, 3 runs x 3 s each
//! cargo bench -p weir-collector --bench mqtt -- --filter qos1-100B   # one case
//! cargo bench -p weir-collector --bench mqtt -- --runs 5 --seconds 5 --mosquitto 127.0.0.1:1883 \
//!     --dir /path/on/the/disk --shards 2 --fsync always
//! cargo bench -p weir-collector --bench mqtt -- --filter qos1 --connections 256 --window 16 --payload 512
//! ```
//!
//! `--connections`, `--window` (publishes in flight per connection) and
//! `--payload` (bytes per message, per record for batches) override every
//! selected case; `--mosquitto off` runs Weir alone.
//!
//! The collector is the release binary, started as its own process on an
//! empty data directory (default `target/tmp/bench-mqtt` in the workspace's
//! target directory, never inside the source tree; it must be on the
//! disk under test) with fsync `always`. Mosquitto is the broker already
//! running at `--mosquitto` (plain); for the TLS cases a second Mosquitto is
//! started on a free port with a certificate from a throwaway development
//! CA, if `/usr/sbin/mosquitto` exists.
//!
//! The generator speaks MQTT 3.1.1 over its own lean client (frames encoded
//! once with rumqttc's codec, PUBACKs parsed in place), keeps `window`
//! publishes in flight per connection and counts acknowledged messages in
//! the measured seconds after one warm-up second. Cases:
//!
//! - `qos1-100B`, `qos1-1KiB`: single-record QoS 1 publishes from 16
//!   connections, 64 in flight each;
//! - `qos1-100B-tls`: the same over TLS;
//! - `qos0-100B`: QoS 0 publishes, each 100 followed by a QoS 1 "barrier"
//!   publish whose acknowledgement confirms them (both servers process a
//!   connection's packets in order);
//! - `batch-100x100B`: Weir wire-format batches of 100 records of 100 B on
//!   `weir/<stream>/$batch`, 16 connections, 8 in flight each; Mosquitto gets
//!   the same bytes as plain QoS 1 messages (it stores nothing).
//!
//! Reported per case and target: acknowledged messages/s (and records/s for
//! batches), MB/s of payload, and publish→acknowledgement latency p50/p99,
//! each the median of the runs with min..max.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a server may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long outstanding acknowledgements may take once sending stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// QoS 0 publishes per QoS 1 barrier in the `qos0` case.
const QOS0_GROUP: usize = 100;
/// Password of the `bench` user the generator logs in as.
const BENCH_PASSWORD: &str = "bench-password";

/// MQTT ingest benchmark: a load generator against the collector and Mosquitto.
#[derive(clap::Parser)]
struct Args {
    /// Runs per case and target; figures are medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Measured seconds per run (after one warm-up second).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Only the cases whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// The Mosquitto broker to compare with (plain MQTT), or `off`.
    #[arg(long, default_value = "127.0.0.1:1883", value_parser = parse_mosquitto)]
    mosquitto: ::std::option::Option<SocketAddr>,
    /// The collector's data directory (on the disk under test).
    // Cargo runs benches from the package directory: a relative path would
    // land in the source tree.
    #[arg(long, default_value_os_t = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-mqtt"))]
    dir: PathBuf,
    /// Shards of the benchmark stream.
    #[arg(long, default_value_t = 2)]
    shards: u32,
    /// The collector's fsync policy.
    #[arg(long, default_value = "always")]
    fsync: String,
    /// Connections of every selected case, instead of the case's own.
    #[arg(long)]
    connections: Option<usize>,
    /// Publishes in flight per connection, instead of the case's own.
    #[arg(long)]
    window: Option<usize>,
    /// Bytes per message (per record for batches), instead of the case's own.
    #[arg(long)]
    payload: Option<usize>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long = "bench", hide = true)]
    _bench: bool,
}

/// `--mosquitto`: an address, or `off` for none.
fn parse_mosquitto(v: &str) -> Result<Option<SocketAddr>, String> {
    if v == "off" { Ok(None) } else { v.parse().map(Some).map_err(|e| format!("{v}: {e}")) }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Qos1,
    Qos0,
    Batch,
}

#[derive(Clone)]
struct Case {
    name: &'static str,
    mode: Mode,
    payload: usize,
    connections: usize,
    window: usize,
    tls: bool,
}

const CASES: &[Case] = &[
    Case {
        name: "qos1-100B",
        mode: Mode::Qos1,
        payload: 100,
        connections: 16,
        window: 64,
        tls: false,
    },
    Case {
        name: "qos1-1KiB",
        mode: Mode::Qos1,
        payload: 1024,
        connections: 16,
        window: 64,
        tls: false,
    },
    Case {
        name: "qos0-100B",
        mode: Mode::Qos0,
        payload: 100,
        connections: 16,
        window: 4,
        tls: false,
    },
    Case {
        name: "batch-100x100B",
        mode: Mode::Batch,
        payload: 100,
        connections: 16,
        window: 8,
        tls: false,
    },
    Case {
        name: "qos1-100B-tls",
        mode: Mode::Qos1,
        payload: 100,
        connections: 16,
        window: 64,
        tls: true,
    },
];

/// Where a run sends its load.
#[derive(Clone)]
struct Target {
    name: &'static str,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// One run's figures.
#[derive(Clone, Copy, Default)]
struct Figures {
    msgs_per_sec: f64,
    records_per_sec: f64,
    mb_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn main() {
    let args = <Args as clap::Parser>::parse();
    weir_collector::tls::install_default_provider();
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: starting the runtime: {e}");
                std::process::exit(1);
            }
        };
    if let Err(e) = runtime.block_on(bench(args)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

// The report is the benchmark's output.
#[allow(clippy::print_stdout)]
async fn bench(args: Args) -> Result<(), String> {
    let cases: Vec<Case> = CASES
        .iter()
        .filter(|c| args.filter.as_ref().is_none_or(|f| c.name.contains(f.as_str())))
        .map(|c| Case {
            connections: args.connections.unwrap_or(c.connections).max(1),
            window: args.window.unwrap_or(c.window).max(1),
            payload: args.payload.unwrap_or(c.payload),
            ..c.clone()
        })
        .collect();
    if cases.is_empty() {
        return Err("no case matches the filter".into());
    }
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    let collector = CollectorProcess::start(&args)?;
    let weir_plain = Target { name: "weir", addr: collector.mqtt, tls: None };
    let weir_tls = Target {
        name: "weir",
        addr: collector.mqtts,
        tls: Some(
            weir_collector::tls::client_config(&collector.ca, None).map_err(|e| e.to_string())?,
        ),
    };
    let mosquitto_tls = if cases.iter().any(|c| c.tls) && args.mosquitto.is_some() {
        MosquittoTls::start(&args.dir).await
    } else {
        None
    };
    println!(
        "MQTT ingest benchmark: {} runs x {} s per case and target (after 1 s warm-up), collector fsync {}, {} shards per stream",
        args.runs, args.seconds, args.fsync, args.shards
    );
    println!(
        "{:<16} {:<10} {:>26} {:>14} {:>18} {:>18}",
        "case", "target", "acked msg/s", "records/s", "MB/s", "p50 / p99 ms"
    );
    for case in &cases {
        println!(
            "  {}: {} connections, {} in flight each, {} B{}",
            case.name,
            case.connections,
            case.window,
            case.payload,
            if case.mode == Mode::Batch { " per record, 100 records per publish" } else { "" }
        );
    }
    for case in &cases {
        let mut targets: Vec<Target> = Vec::new();
        if case.tls {
            targets.push(weir_tls.clone());
            if let Some(m) = &mosquitto_tls {
                targets.push(m.target.clone());
            }
        } else {
            targets.push(weir_plain.clone());
            if let Some(addr) = args.mosquitto {
                targets.push(Target { name: "mosquitto", addr, tls: None });
            }
        }
        let mut results: Vec<Vec<Figures>> = vec![Vec::new(); targets.len()];
        for run in 0..args.runs {
            // Alternate which target goes first.
            for k in 0..targets.len() {
                let t = (k + run) % targets.len();
                let stream = format!("bench-{}-{run}", case.name.replace('.', "_"));
                let f = load(case, &targets[t], &stream, args.seconds).await?;
                results[t].push(f);
            }
        }
        for (t, figures) in targets.iter().zip(&results) {
            let m = |f: fn(&Figures) -> f64| median(figures.iter().map(f).collect());
            let (msgs, lo, hi) = m(|f| f.msgs_per_sec);
            let records = if case.mode == Mode::Batch && t.name == "weir" {
                format!("{:.0}", m(|f| f.records_per_sec).0)
            } else {
                "-".into()
            };
            println!(
                "{:<16} {:<10} {:>10.0} ({:>6.0}..{:<6.0}) {:>14} {:>18.1} {:>8.2} / {:<8.2}",
                case.name,
                t.name,
                msgs,
                lo,
                hi,
                records,
                m(|f| f.mb_per_sec).0,
                m(|f| f.p50_ms).0,
                m(|f| f.p99_ms).0
            );
        }
    }
    println!("collector peak RSS: {} MiB", collector.peak_rss_kib() / 1024);
    drop(mosquitto_tls);
    drop(collector);
    let _ = std::fs::remove_dir_all(&args.dir);
    Ok(())
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return (0.0, 0.0, 0.0);
    }
    (v[n / 2], v[0], v[n - 1])
}

/// The collector under test, as a process.
struct CollectorProcess {
    child: Child,
    mqtt: SocketAddr,
    mqtts: SocketAddr,
    ca: PathBuf,
}

impl CollectorProcess {
    fn start(args: &Args) -> Result<Self, String> {
        let data = args.dir.join("data");
        let ready = args.dir.join("ready.json");
        let config = args.dir.join("collector.toml");
        // The TLS listener takes no anonymous clients: the load generator
        // logs in as `bench`.
        let hash =
            weir_collector::ingest::hash_password(BENCH_PASSWORD).map_err(|e| e.to_string())?;
        std::fs::write(
            &config,
            format!(
                "[mqtt]\nauto_create_shards = {}\n[[mqtt.users]]\nname = \"bench\"\npassword_hash = \"{hash}\"\n",
                args.shards
            ),
        )
        .map_err(|e| format!("{}: {e}", config.display()))?;
        let log =
            std::fs::File::create(args.dir.join("collector.log")).map_err(|e| e.to_string())?;
        let child = Command::new(env!("CARGO_BIN_EXE_weir-collector"))
            .args(["serve", "--mqtt-listen", "127.0.0.1:0", "--mqtts-listen", "127.0.0.1:0"])
            .args(["--http-listen", "127.0.0.1:0", "--allow-anonymous", "--fsync", &args.fsync])
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
                    args.dir.join("collector.log").display()
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

    fn peak_rss_kib(&self) -> u64 {
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
struct MosquittoTls {
    child: Child,
    target: Target,
}

impl MosquittoTls {
    async fn start(dir: &Path) -> Option<Self> {
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

/// The bytes one publish of a case carries.
fn payload(case: &Case, conn: usize) -> Vec<u8> {
    match case.mode {
        Mode::Batch => {
            let records = (0..100)
                .map(|i| {
                    weir_wire::OwnedRecord::new(format!("c{conn}-k{i}"), vec![b'x'; case.payload])
                })
                .collect();
            // The sequence number is patched per publish in `Frames`.
            weir_wire::encode_batch_to_vec(&weir_wire::OwnedBatch {
                producer_id: format!("bench-{conn}-{}", std::process::id()),
                batch_seq: 0,
                records,
            })
            .unwrap_or_default()
        }
        _ => vec![b'x'; case.payload],
    }
}

/// Runs one case against one target and measures it.
async fn load(case: &Case, target: &Target, stream: &str, seconds: f64) -> Result<Figures, String> {
    let start = Instant::now() + Duration::from_secs(1);
    let end = start + Duration::from_secs_f64(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for conn in 0..case.connections {
        let (case, target, stream) = (case.clone(), target.clone(), stream.to_owned());
        tasks.spawn(async move { connection(&case, &target, &stream, conn, start, end).await });
    }
    let mut acked = 0u64;
    let mut bytes = 0u64;
    let mut latencies: Vec<u32> = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let r = r.map_err(|e| e.to_string())??;
        acked += r.acked;
        bytes += r.bytes;
        latencies.extend(r.latencies_us);
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |us| f64::from(*us) / 1000.0)
    };
    let msgs = acked as f64 / seconds;
    Ok(Figures {
        msgs_per_sec: msgs,
        records_per_sec: if case.mode == Mode::Batch { msgs * 100.0 } else { msgs },
        mb_per_sec: bytes as f64 / seconds / 1e6,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}

struct ConnResult {
    acked: u64,
    bytes: u64,
    latencies_us: Vec<u32>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn connection(
    case: &Case,
    target: &Target,
    stream: &str,
    conn: usize,
    start: Instant,
    end: Instant,
) -> Result<ConnResult, String> {
    let tcp = TcpStream::connect(target.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", target.addr))?;
    let _ = tcp.set_nodelay(true);
    let mut io: Box<dyn Io> = match &target.tls {
        Some(config) => {
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let name =
                rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
            Box::new(connector.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?)
        }
        None => Box::new(tcp),
    };
    let client_id = format!("bench-{}-{conn}-{}", target.name, std::process::id());
    let mut out = BytesMut::new();
    let mut connect = rumqttc::Connect::new(client_id);
    connect.keep_alive = 120;
    connect.set_login("bench", BENCH_PASSWORD);
    rumqttc::Packet::Connect(connect).write(&mut out, 1 << 20).map_err(|e| e.to_string())?;
    io.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        if buf.len() >= 4 {
            if buf[0] != 0x20 || buf[3] != 0 {
                return Err(format!("{}: connection refused ({:?})", target.name, &buf[..4]));
            }
            let _ = buf.split_to(4);
            break;
        }
        if io.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return Err(format!("{}: closed before CONNACK", target.name));
        }
    }
    let topic = match case.mode {
        Mode::Batch => format!("weir/{stream}/$batch"),
        _ => format!("weir/{stream}/c{conn}"),
    };
    let body = payload(case, conn);
    let mut frames = Frames::new(&topic, &body, case.mode == Mode::Batch);
    // A window slot is one QoS 1 publish, or in QoS 0 mode a group of QoS 0
    // publishes closed by a QoS 1 barrier.
    let per_slot: u64 = if case.mode == Mode::Qos0 { QOS0_GROUP as u64 + 1 } else { 1 };
    let mut sent_at: Vec<Option<Instant>> = vec![None; 65536];
    let mut next_pkid: u16 = 1;
    let mut outstanding = 0usize;
    let mut result = ConnResult { acked: 0, bytes: 0, latencies_us: Vec::new() };
    let mut stopping_since: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= end && stopping_since.is_none() {
            stopping_since = Some(now);
        }
        if stopping_since.is_none() {
            out.clear();
            while outstanding < case.window {
                if case.mode == Mode::Qos0 {
                    for _ in 0..QOS0_GROUP {
                        frames.qos0(&mut out);
                    }
                }
                frames.qos1(&mut out, next_pkid);
                sent_at[usize::from(next_pkid)] = Some(now);
                next_pkid = if next_pkid == u16::MAX { 1 } else { next_pkid + 1 };
                outstanding += 1;
            }
            if !out.is_empty() {
                io.write_all(&out).await.map_err(|e| format!("{}: write: {e}", target.name))?;
            }
        }
        if outstanding == 0 {
            break;
        }
        if stopping_since.is_some_and(|s| s.elapsed() > DRAIN_TIMEOUT) {
            return Err(format!(
                "{}: {outstanding} acknowledgements missing after {DRAIN_TIMEOUT:?}",
                target.name
            ));
        }
        let read = tokio::time::timeout(DRAIN_TIMEOUT, io.read_buf(&mut buf))
            .await
            .map_err(|_| format!("{}: no acknowledgement for {DRAIN_TIMEOUT:?}", target.name))?
            .map_err(|e| format!("{}: read: {e}", target.name))?;
        if read == 0 {
            return Err(format!("{}: connection closed", target.name));
        }
        let now = Instant::now();
        while buf.len() >= 4 {
            if buf[0] != 0x40 || buf[1] != 0x02 {
                return Err(format!("{}: unexpected packet {:#04x}", target.name, buf[0]));
            }
            let pkid = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
            let _ = buf.split_to(4);
            outstanding = outstanding.saturating_sub(1);
            if let Some(t) = sent_at[pkid].take()
                && t >= start
                && now <= end
            {
                result.acked += per_slot;
                result.bytes += per_slot * body.len() as u64;
                result
                    .latencies_us
                    .push(u32::try_from(now.duration_since(t).as_micros()).unwrap_or(u32::MAX));
            }
        }
    }
    let _ = io.write_all(&[0xE0, 0x00]).await;
    let _ = io.shutdown().await;
    Ok(result)
}

/// Pre-encoded PUBLISH frames: only the packet id (and a batch's sequence
/// number) change between publishes.
struct Frames {
    qos1: Vec<u8>,
    qos0: Vec<u8>,
    pkid_at: usize,
    /// Where the batch sequence number's varint sits, for batches (a fixed
    /// 9-byte varint is reserved so it can be patched in place).
    seq_at: Option<usize>,
    seq: u64,
}

impl Frames {
    fn new(topic: &str, body: &[u8], batch: bool) -> Self {
        let mut body = body.to_vec();
        let mut seq_at = None;
        if batch {
            // Envelope: [version][kind][producer id len][id][seq varint]...
            // Re-encode the sequence as a 9-byte varint placeholder.
            let id_len = usize::from(body[2]);
            let at = 3 + id_len;
            body.splice(at..at + 1, [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]);
            seq_at = Some(at);
        }
        let encode = |qos: rumqttc::QoS| {
            let mut p = rumqttc::Publish::from_bytes(topic, qos, bytes::Bytes::from(body.clone()));
            p.pkid = if qos == rumqttc::QoS::AtMostOnce { 0 } else { 1 };
            let mut b = BytesMut::new();
            let _ = rumqttc::Packet::Publish(p).write(&mut b, 64 << 20);
            b.to_vec()
        };
        let qos1 = encode(rumqttc::QoS::AtLeastOnce);
        let qos0 = encode(rumqttc::QoS::AtMostOnce);
        // The packet id follows the fixed header and the topic.
        let header = qos1.len() - (2 + topic.len() + 2 + body.len());
        let pkid_at = header + 2 + topic.len();
        let seq_at = seq_at.map(|at| pkid_at + 2 + at);
        Self { qos1, qos0, pkid_at, seq_at, seq: 0 }
    }

    fn qos1(&mut self, out: &mut BytesMut, pkid: u16) {
        let start = out.len();
        out.extend_from_slice(&self.qos1);
        out[start + self.pkid_at..start + self.pkid_at + 2].copy_from_slice(&pkid.to_be_bytes());
        if let Some(at) = self.seq_at {
            self.seq += 1;
            let mut v = self.seq;
            for i in 0..9 {
                let last = i == 8;
                let byte = (v & 0x7F) as u8 | if last { 0 } else { 0x80 };
                out[start + at + i] = byte;
                v >>= 7;
            }
        }
    }

    fn qos0(&self, out: &mut BytesMut) {
        out.extend_from_slice(&self.qos0);
    }
}
