//! Throughput of the Kinesis API: PutRecords (batches of 500 × 100 B) and
//! GetRecords through HTTP with a Rust client over several connections, the
//! collector and (with `--kinesalite`) kinesalite under the same load in the
//! same run, alternating, so the comparison holds whatever the machine's
//! mood.
//!
//! ```sh
//! cargo bench -p weir-collector --bench api                      # Weir only
//! cargo bench -p weir-collector --bench api -- --kinesalite      # and kinesalite (npm)
//! cargo bench -p weir-collector --bench api -- --runs 3 --seconds 5 --connections 8 --shards 4 --fsync always
//! cargo bench -p weir-collector --bench api -- --store nats://127.0.0.1:PORT [--store-replicas 3]
//! ```
//!
//! With `--store`, the collector keeps the records in JetStream (servers with
//! `max_payload` of at least 1 MiB; each run uses its own name prefix).
//!
//! The collector runs in this process (its own runtime and threads) on a
//! fresh temp data directory; kinesalite is installed with npm into
//! `target/kinesalite` on first use and started on 127.0.0.1 (in-memory
//! store). Figures are medians of the runs, with min..max.

#![allow(clippy::print_stdout, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

type Http = Client<HttpConnector, Full<Bytes>>;

/// Records per PutRecords call and bytes per record (the issue's load).
const BATCH: usize = 500;
const RECORD_BYTES: usize = 100;
/// How long to wait for a server to answer its first request.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Kinesis API benchmark: PutRecords and GetRecords through HTTP.
#[derive(clap::Parser)]
struct Args {
    /// Runs per case; figures are medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds of PutRecords load per run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent HTTP connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Shards of the benchmark stream.
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// The collector's fsync policy.
    #[arg(long, default_value = "always")]
    fsync: String,
    /// Store the records in JetStream (`nats://HOST:PORT[,...]`) instead of
    /// the embedded store; each run gets its own name prefix.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Replicas of the JetStream streams, with `--store`.
    #[arg(long, default_value_t = 1)]
    store_replicas: usize,
    /// Run kinesalite (installed with npm) under the same load too.
    #[arg(long)]
    kinesalite: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long = "bench", hide = true)]
    _bench: bool,
}

/// The parts of answers the load loops look at; everything else is skipped
/// without being built, so the client spends its time on the wire, not on
/// JSON trees.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutOut {
    failed_record_count: u64,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetOut {
    records: Vec<serde::de::IgnoredAny>,
    next_shard_iterator: Option<String>,
    millis_behind_latest: u64,
}

async fn call(http: &Http, addr: SocketAddr, op: &str, body: Bytes) -> anyhow::Result<Value> {
    call_as(http, addr, op, body).await
}

async fn call_as<T: serde::de::DeserializeOwned>(
    http: &Http,
    addr: SocketAddr,
    op: &str,
    body: Bytes,
) -> anyhow::Result<T> {
    let req = hyper::Request::post(format!("http://{addr}/"))
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", format!("Kinesis_20131202.{op}"))
        // kinesalite checks for a signature's presence, not its validity.
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=weir/20240101/us-east-1/kinesis/aws4_request, SignedHeaders=host, Signature=00",
        )
        .header("x-amz-date", "20240101T000000Z")
        .body(Full::new(body))?;
    let resp = http.request(req).await.with_context(|| format!("{op} to {addr}"))?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    // kinesalite answers some operations with an empty body.
    let bytes = if bytes.is_empty() { Bytes::from_static(b"{}") } else { bytes };
    if !status.is_success() {
        bail!("{op}: {status}: {}", String::from_utf8_lossy(&bytes));
    }
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{op}: {status}: {}", String::from_utf8_lossy(&bytes)))
}

fn put_body(stream: &str, seed: usize) -> Bytes {
    let records: Vec<Value> = (0..BATCH)
        .map(|i| {
            let data: Vec<u8> = (0..RECORD_BYTES).map(|b| ((i + b + seed) % 251) as u8).collect();
            json!({"PartitionKey": format!("device-{seed}-{i}"), "Data": BASE64.encode(data)})
        })
        .collect();
    Bytes::from(json!({"StreamName": stream, "Records": records}).to_string())
}

/// Puts for `seconds` over `connections` concurrent loops; records/s accepted.
async fn put_load(http: &Http, addr: SocketAddr, stream: &str, a: &Args) -> anyhow::Result<f64> {
    let ok = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..a.connections {
        let (http, ok, stop) = (http.clone(), ok.clone(), stop.clone());
        let bodies: Vec<Bytes> = (0..4).map(|k| put_body(stream, c * 4 + k)).collect();
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let body = bodies[n % bodies.len()].clone();
                let r: PutOut = call_as(&http, addr, "PutRecords", body).await?;
                ok.fetch_add(BATCH as u64 - r.failed_record_count, Ordering::Relaxed);
                n += 1;
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    Ok(ok.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// Reads every shard from TRIM_HORIZON to its end, one reader per shard;
/// records/s.
async fn get_load(http: &Http, addr: SocketAddr, stream: &str, shards: u32) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..shards {
        let http = http.clone();
        let body = json!({"StreamName": stream, "ShardId": format!("shardId-{s:012}"), "ShardIteratorType": "TRIM_HORIZON"});
        tasks.push(tokio::spawn(async move {
            let r = call(&http, addr, "GetShardIterator", Bytes::from(body.to_string())).await?;
            let mut it = r["ShardIterator"].as_str().context("iterator")?.to_owned();
            let mut n = 0u64;
            loop {
                let body = json!({"ShardIterator": it, "Limit": 10_000});
                let r: GetOut =
                    call_as(&http, addr, "GetRecords", Bytes::from(body.to_string())).await?;
                n += r.records.len() as u64;
                match r.next_shard_iterator {
                    Some(next) if !r.records.is_empty() || r.millis_behind_latest > 0 => {
                        it = next;
                    }
                    _ => return anyhow::Ok(n),
                }
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

async fn create_and_wait(
    http: &Http,
    addr: SocketAddr,
    stream: &str,
    shards: u32,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    // The first request may race the server's start; a retry after a lost
    // answer finds the stream created.
    loop {
        let body = Bytes::from(json!({"StreamName": stream, "ShardCount": shards}).to_string());
        match call(http, addr, "CreateStream", body).await {
            Ok(_) => break,
            Err(e) if e.to_string().contains("ResourceInUseException") => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("CreateStream on {addr}: {e:#}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
    // kinesalite creates streams asynchronously (CREATING, then ACTIVE).
    loop {
        let d = call(
            http,
            addr,
            "DescribeStreamSummary",
            Bytes::from(json!({"StreamName": stream}).to_string()),
        )
        .await?;
        if d["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("stream {stream} not ACTIVE within {START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The collector, in this process.
struct Weir {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Weir {
    fn start(fsync: &str, store: Option<(&str, usize)>, run: usize) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir_in(bench_dir())?;
        let mut config =
            weir_collector::Config { data_dir: dir.path().join("data"), ..Default::default() };
        config.store.fsync = fsync.to_owned();
        if let Some((url, replicas)) = store {
            config.store.servers = url.split(',').map(str::to_owned).collect();
            config.store.replicas = replicas;
            config.store.prefix = format!("bench{}r{run}", std::process::id());
        }
        config.http.listen = "127.0.0.1:0".into();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(weir_collector::run(
                config,
                |ready| {
                    let _ = ready_tx.send(ready.http);
                },
                async {
                    let _ = stopped.await;
                },
            ))?;
            anyhow::Ok(())
        });
        let addr = ready_rx.recv_timeout(START_TIMEOUT).context("collector did not start")?;
        Ok(Self { addr, stop: Some(stop), thread: Some(thread), _dir: dir })
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where benchmark data goes: the target directory (on the project's disk).
fn bench_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-api");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// kinesalite, installed with npm on first use.
struct Kinesalite {
    child: Child,
    addr: SocketAddr,
}

impl Kinesalite {
    fn start() -> anyhow::Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/kinesalite");
        let cli = root.join("node_modules/kinesalite/index.js");
        if !cli.exists() {
            std::fs::create_dir_all(&root)?;
            let ok = Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "kinesalite"])
                .current_dir(&root)
                .status()
                .context("running npm (install Node.js and npm to compare with kinesalite)")?
                .success();
            if !ok || !cli.exists() {
                bail!("npm install kinesalite failed in {}", root.display());
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        // Its own CLI binds every interface; listen on loopback only.
        let script = "require(process.argv[1])({createStreamMs: 0, shardLimit: 100})\
                      .listen(Number(process.argv[2]), '127.0.0.1')";
        let child = Command::new("node")
            .arg("-e")
            .arg(script)
            .arg(&cli)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting kinesalite with node")?;
        Ok(Self { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) })
    }
}

impl Drop for Kinesalite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn line(name: &str, v: &[f64]) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(0.0, f64::max);
    println!("{name:<32} {:>12.0} records/s   ({min:.0}..{max:.0})", median(v));
}

fn main() -> anyhow::Result<()> {
    let a = <Args as clap::Parser>::parse();
    let rt = tokio::runtime::Runtime::new()?;
    let http: Http = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(64).build_http();
    println!(
        "Kinesis API: PutRecords of {BATCH} x {RECORD_BYTES} B over {} connections for {} s, {} shards, fsync {}; GetRecords from TRIM_HORIZON; {} runs",
        a.connections, a.seconds, a.shards, a.fsync, a.runs
    );
    if let Some(url) = &a.store {
        println!("store: JetStream at {url}, R{}", a.store_replicas);
    }
    let (mut wp, mut wg, mut kp, mut kg) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..a.runs {
        let stream = format!("bench-{run}");
        {
            let store = a.store.as_deref().map(|u| (u, a.store_replicas));
            let weir = Weir::start(&a.fsync, store, run)?;
            rt.block_on(create_and_wait(&http, weir.addr, &stream, a.shards))?;
            wp.push(rt.block_on(put_load(&http, weir.addr, &stream, &a))?);
            wg.push(rt.block_on(get_load(&http, weir.addr, &stream, a.shards))?);
        }
        if a.kinesalite {
            let k = Kinesalite::start()?;
            rt.block_on(create_and_wait(&http, k.addr, &stream, a.shards))?;
            kp.push(rt.block_on(put_load(&http, k.addr, &stream, &a))?);
            kg.push(rt.block_on(get_load(&http, k.addr, &stream, a.shards))?);
        }
        println!(
            "run {}: weir put {:.0}/s get {:.0}/s{}",
            run + 1,
            wp[run],
            wg[run],
            if a.kinesalite {
                format!("; kinesalite put {:.0}/s get {:.0}/s", kp[run], kg[run])
            } else {
                String::new()
            }
        );
    }
    println!();
    line("weir PutRecords", &wp);
    line("weir GetRecords", &wg);
    if a.kinesalite {
        line("kinesalite PutRecords", &kp);
        line("kinesalite GetRecords", &kg);
        println!(
            "weir / kinesalite: PutRecords {:.1}x, GetRecords {:.1}x",
            median(&wp) / median(&kp),
            median(&wg) / median(&kg)
        );
    }
    Ok(())
}
