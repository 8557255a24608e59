//! Stream store benchmark: append throughput and latency under the fsync
//! policies, and sequential replay from the page cache.
//!
//! ```text
//! cargo bench -p weir-collector --bench store                  # 3 runs x 3 s per case
//! cargo bench -p weir-collector --bench store -- --runs 5 --seconds 5 --dir /data/bench
//! cargo bench -p weir-collector --bench store -- --filter batch-100-never   # one case
//! ```
//!
//! Cases (each with 100 B and 1 KiB records, on a stream of `--shards` shards):
//! - `single`: 256 concurrent appenders, each appending one record at a time
//!   and waiting for its acknowledgement (what many MQTT clients produce);
//! - `batch`: 16 concurrent appenders, each appending batches of 100 records
//!   (what agents produce);
//!
//! each under fsync `always` (group commit) and `never`; then a sequential
//! replay of everything written, from the page cache. Every figure is the
//! median of the runs, with min and max beside it. The data directory must be
//! on the disk under test (not a tmpfs); it defaults to `target/bench-store`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_collector::store::{
    CreateStreamOptions, FsyncPolicy, LogStore, NewRecord, ReadLimits, StartingPosition,
    StoreConfig, StreamStore,
};

/// Stream store benchmark: appends under the fsync policies, then replay.
#[derive(clap::Parser)]
struct Args {
    /// Runs per case; figures are medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds of appends per run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Shards of the benchmark stream.
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// The data directory (on the disk under test).
    #[arg(long, default_value = "target/bench-store")]
    dir: PathBuf,
    /// Only the cases whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long = "bench", hide = true)]
    _bench: bool,
}

#[derive(Clone, Copy)]
struct Case {
    name: &'static str,
    appenders: usize,
    batch: usize,
    record_bytes: usize,
    fsync: FsyncPolicy,
}

#[derive(Default, Clone, Copy)]
struct Figures {
    records_per_s: f64,
    mb_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

async fn run_case(args: &Args, case: Case, run: usize) -> (Figures, LogStore, String) {
    let dir = args.dir.join(format!("{}-{}-{}-{run}", case.name, case.record_bytes, case.fsync));
    let _ = std::fs::remove_dir_all(&dir);
    let config = StoreConfig { fsync: case.fsync, ..StoreConfig::default() };
    let store = LogStore::open(&dir, config).await.expect("open store");
    let stream = "bench".to_owned();
    store
        .create_stream(
            &stream,
            CreateStreamOptions { shard_count: args.shards, ..Default::default() },
        )
        .await
        .expect("create stream");
    let payload = Bytes::from(vec![b'x'; case.record_bytes]);
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..case.appenders {
        let store = store.clone();
        let payload = payload.clone();
        let stream = stream.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies_us = Vec::new();
            let mut records = 0u64;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let batch: Vec<NewRecord> = (0..case.batch)
                    .map(|k| NewRecord {
                        partition_key: format!("device-{t}-{}", (i as usize + k) % 64),
                        data: payload.clone(),
                        explicit_hash_key: None,
                        producer_timestamp_ms: None,
                    })
                    .collect();
                let t0 = Instant::now();
                let results = store.append(&stream, batch).await.expect("append");
                latencies_us.push(t0.elapsed().as_micros() as u32);
                for r in results {
                    r.expect("record acknowledged");
                }
                records += case.batch as u64;
                i += 1;
            }
            (records, latencies_us)
        }));
    }
    let mut records = 0;
    let mut latencies = Vec::new();
    for t in tasks {
        let (r, l) = t.await.expect("appender task");
        records += r;
        latencies.extend(l);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize] as f64;
    let figures = Figures {
        records_per_s: records as f64 / elapsed,
        mb_per_s: records as f64 * case.record_bytes as f64 / elapsed / 1e6,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    };
    (figures, store, stream)
}

/// Reads every shard of the stream from TRIM_HORIZON to its end.
async fn replay(store: &LogStore, stream: &str) -> (u64, u64, f64) {
    let desc = store.describe_stream(stream).await.expect("describe");
    let started = Instant::now();
    let (mut records, mut bytes) = (0u64, 0u64);
    for shard in &desc.shards {
        let mut pos = store
            .position(stream, &shard.shard_id, StartingPosition::TrimHorizon)
            .await
            .expect("position");
        loop {
            let batch = store
                .read(stream, pos, ReadLimits { max_records: 10_000, max_bytes: 10 << 20 })
                .await
                .expect("read");
            if batch.records.is_empty() {
                break;
            }
            records += batch.records.len() as u64;
            bytes += batch.records.iter().map(|r| r.data.len() as u64).sum::<u64>();
            pos = batch.next;
        }
    }
    (records, bytes, started.elapsed().as_secs_f64())
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[allow(clippy::print_stdout)]
fn main() {
    let args = <Args as clap::Parser>::parse();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut cases = Vec::new();
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Never] {
        for record_bytes in [100, 1024] {
            cases.push(Case { name: "single", appenders: 256, batch: 1, record_bytes, fsync });
            cases.push(Case { name: "batch", appenders: 16, batch: 100, record_bytes, fsync });
        }
    }
    println!(
        "weir store benchmark: {} run(s) x {:.1} s per case, {} shards, data in {}",
        args.runs,
        args.seconds,
        args.shards,
        args.dir.display()
    );
    println!(
        "figures: median [min..max] over runs; latency is per append call (one record or one batch)"
    );
    println!(
        "{:<8} {:>6} {:>6} {:>9} | {:>28} | {:>22} | {:>10} | {:>10}",
        "case", "bytes", "apps", "fsync", "records/s", "MB/s", "p50 us", "p99 us"
    );
    let mut replays: Vec<(usize, Vec<f64>, Vec<f64>, u64)> = Vec::new();
    for case in cases {
        let label = format!("{}-{}-{}", case.name, case.record_bytes, case.fsync);
        if args.filter.as_ref().is_some_and(|f| !label.contains(f.as_str())) {
            continue;
        }
        let mut figs = Vec::new();
        for run in 0..args.runs {
            let (f, store, stream) = runtime.block_on(run_case(&args, case, run));
            if matches!(case.fsync, FsyncPolicy::Never) && case.name == "batch" {
                // Replay what was just written, from the page cache.
                let (records, bytes, secs) = runtime.block_on(replay(&store, &stream));
                match replays.iter_mut().find(|r| r.0 == case.record_bytes) {
                    Some(r) => {
                        r.1.push(records as f64 / secs);
                        r.2.push(bytes as f64 / secs / 1e6);
                        r.3 = records;
                    }
                    None => replays.push((
                        case.record_bytes,
                        vec![records as f64 / secs],
                        vec![bytes as f64 / secs / 1e6],
                        records,
                    )),
                }
            }
            runtime.block_on(store.close());
            drop(store);
            let _ = std::fs::remove_dir_all(
                args.dir.join(format!("{}-{}-{}-{run}", case.name, case.record_bytes, case.fsync)),
            );
            figs.push(f);
        }
        let (r0, r1, r2) = stats(figs.iter().map(|f| f.records_per_s).collect());
        let (m0, m1, m2) = stats(figs.iter().map(|f| f.mb_per_s).collect());
        let (_, p50, _) = stats(figs.iter().map(|f| f.p50_us).collect());
        let (_, p99, _) = stats(figs.iter().map(|f| f.p99_us).collect());
        println!(
            "{:<8} {:>6} {:>6} {:>9} | {:>10.0} [{:>7.0}..{:>7.0}] | {:>6.1} [{:>6.1}..{:>6.1}] | {:>10.0} | {:>10.0}",
            case.name,
            case.record_bytes,
            case.appenders,
            case.fsync.to_string(),
            r1,
            r0,
            r2,
            m1,
            m0,
            m2,
            p50,
            p99
        );
    }
    for (bytes, rps, mbps, records) in replays {
        let (r0, r1, r2) = stats(rps);
        let (m0, m1, m2) = stats(mbps);
        println!(
            "replay   {bytes:>6} {:>6} {:>9} | {r1:>10.0} [{r0:>7.0}..{r2:>7.0}] | {m1:>6.0} [{m0:>6.0}..{m2:>6.0}] | sequential, page cache, {records} records",
            1, "-"
        );
    }
    println!("peak RSS: {:.1} MiB", peak_rss_mib());
}
