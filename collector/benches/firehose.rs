//! Firehose delivery benchmark: delivery throughput to the directory
//! destination, and the time from ingest to the object being visible.
//!
//! ```text
//! cargo bench -p weir-collector --bench firehose                 # 3 runs, 256 MiB, 10 s latency
//! cargo bench -p weir-collector --bench firehose -- --runs 5 --mib 512 --dir /path/on/the/disk
//! cargo bench -p weir-collector --bench firehose -- --filter latency --rate 500 --seconds 20
//! ```
//!
//! - `deliver-<compression>`: a store stream of 4 shards is filled once with
//!   `--mib` MiB of 1 KiB JSON records (mostly a hex blob of pseudo-random
//!   bytes: they compress about 2 times; fsync `never`); then, per run, a
//!   fresh delivery stream (size hint 128 MiB, interval hint 900 s, records
//!   as they are with compression none, gzip or zstd, or converted to Parquet
//!   with snappy pages: `deliver-parquet`) delivers all of it to a
//!   directory; the interval hint is made due (manual clock) once every
//!   record is buffered, so the remainders flush too. Figures: MB/s of
//!   records delivered (bytes before compression) and records/s, from open
//!   to the last object durable.
//! - `latency`: a delivery stream with a 1 s interval hint runs as in the
//!   collector (polling every 200 ms, system clock) while records are
//!   appended at `--rate` per second for `--seconds`; a watcher polls the
//!   directory every 2 ms. Figures: time from a record's append
//!   acknowledgement to the object holding it appearing, p50 and p99.
//!
//! Every figure is the median of the runs with [min..max] beside it. The
//! data lives under `--dir` (default `target/bench-firehose`, on the disk
//! under test), which is removed at the end; at most the store plus one
//! run's objects are on disk at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_collector::firehose::manager::POLL_INTERVAL;
use weir_collector::firehose::{
    BufferingHints, Compression, DeliveryConfig, DeliveryStream, DirectoryDestination, RecordFormat,
};
use weir_collector::store::{
    CreateStreamOptions, FsyncPolicy, LogStore, ManualClock, NewRecord, StoreConfig, StreamStore,
    SystemClock,
};

/// Size of a record in the throughput cases.
const RECORD_BYTES: usize = 1024;
/// Records per append while filling the store.
const FILL_BATCH: usize = 500;
/// Shards of the source streams.
const SHARDS: u32 = 4;
/// How often the latency watcher lists the directory.
const WATCH_INTERVAL: Duration = Duration::from_millis(2);
/// Distinct record payloads the store is filled with, cycled: 16 MiB, more
/// than the compressors' windows, so they cannot just find repeats.
const DISTINCT_PAYLOADS: usize = 16 * 1024;

/// Firehose benchmark: delivery throughput to a directory, and latency.
#[derive(clap::Parser)]
struct Args {
    /// Runs per case; figures are medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// MiB of records per throughput run.
    #[arg(long, default_value_t = 256)]
    mib: usize,
    /// Seconds of the latency case.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Records per second of the latency case.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Where the store and the delivered objects go.
    #[arg(long, default_value = "target/bench-firehose")]
    dir: PathBuf,
    /// Only the cases whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long = "bench", hide = true)]
    _bench: bool,
}

/// The arguments, checked.
fn parse_args() -> Args {
    let args = <Args as clap::Parser>::parse();
    assert!(args.runs > 0 && args.mib > 0 && args.rate > 0, "--runs, --mib, --rate must be > 0");
    args
}

async fn open_store(dir: &Path) -> LogStore {
    let config = StoreConfig { fsync: FsyncPolicy::Never, ..StoreConfig::default() };
    LogStore::open(dir, config).await.expect("open store")
}

async fn create(store: &LogStore, stream: &str) {
    let options = CreateStreamOptions { shard_count: SHARDS, ..Default::default() };
    store.create_stream(stream, options).await.expect("create stream");
}

/// A 1 KiB JSON record like a sensor's: fields, then a hex blob of
/// pseudo-random bytes (xorshift): it compresses about 2 times, less than
/// repetitive logs, more than binary data.
fn payload(i: usize, state: &mut u64) -> Bytes {
    let mut s = format!(
        "{{\"device\":\"device-{:04}\",\"seq\":{i},\"temp\":{}.{:02},\"blob\":\"",
        i % 1024,
        i % 40,
        i % 100
    );
    while s.len() < RECORD_BYTES - 2 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        s.push_str(&format!("{:016x}", *state));
    }
    s.truncate(RECORD_BYTES - 2);
    s.push_str("\"}");
    Bytes::from(s)
}

/// Appends `mib` MiB of 1 KiB records, spread over the shards by key.
async fn fill(store: &LogStore, stream: &str, mib: usize) -> u64 {
    let total = mib * 1024 * 1024 / RECORD_BYTES;
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let payloads: Arc<Vec<Bytes>> =
        Arc::new((0..DISTINCT_PAYLOADS).map(|i| payload(i, &mut state)).collect());
    let mut tasks = Vec::new();
    let appenders = SHARDS as usize;
    for t in 0..appenders {
        let (store, stream, payloads) = (store.clone(), stream.to_owned(), payloads.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while i < total {
                let batch: Vec<NewRecord> = (i..total)
                    .step_by(appenders)
                    .take(FILL_BATCH)
                    .map(|k| NewRecord {
                        partition_key: format!("device-{}", k % 1024),
                        data: payloads[k % DISTINCT_PAYLOADS].clone(),
                        explicit_hash_key: None,
                        producer_timestamp_ms: None,
                    })
                    .collect();
                i += batch.len() * appenders;
                for r in store.append(&stream, batch).await.expect("append") {
                    r.expect("appended");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("filler");
    }
    total as u64
}

/// The columns of the records [`payload`] makes, snappy pages.
fn parquet_format() -> weir_collector::firehose::ParquetFormat {
    use weir_collector::firehose::{ColumnType, ParquetColumn, ParquetSchema};
    ParquetSchema::new(vec![
        ParquetColumn::new("device", ColumnType::String),
        ParquetColumn::new("seq", ColumnType::Int64),
        ParquetColumn::new("temp", ColumnType::Double),
        ParquetColumn::new("blob", ColumnType::String),
    ])
    .into_format()
    .expect("schema")
}

/// One throughput run: (MB/s, records/s, objects).
async fn deliver(
    store: &LogStore,
    dir: &Path,
    (format, compression): (RecordFormat, Compression),
    total: u64,
) -> (f64, f64, usize) {
    let out = dir.join("out");
    let checkpoint = dir.join("deliver.checkpoint");
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_file(&checkpoint);
    let config = DeliveryConfig {
        buffering: BufferingHints { size_mib: 128, interval_secs: 900 },
        format,
        compression,
        prefix: "bench/".into(),
        ..DeliveryConfig::new("bench", "fill")
    };
    let clock = ManualClock::new(1_700_000_000_000);
    let started = Instant::now();
    let (mut delivery, _) = DeliveryStream::open(
        store.clone(),
        DirectoryDestination::new(&out),
        config,
        &checkpoint,
        Arc::new(clock.clone()),
    )
    .await
    .expect("open delivery stream");
    let (mut records, mut bytes, mut objects) = (0u64, 0u64, 0usize);
    while records < total {
        let report = delivery.poll().await.expect("poll");
        if report.delivered.is_empty() {
            // Everything read is buffered: make the interval hint due.
            clock.advance(900_000);
        }
        for d in &report.delivered {
            records += d.records as u64;
            bytes += d.raw_bytes as u64;
            objects += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    drop(delivery);
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_file(&checkpoint);
    (bytes as f64 / secs / 1e6, records as f64 / secs, objects)
}

/// Record indices of objects under `dir` not seen before (`seen`).
fn new_objects(dir: &Path, seen: &mut BTreeSet<PathBuf>, out: &mut Vec<u64>) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.to_string_lossy().ends_with(".tmp") && !seen.contains(&p) {
                let Ok(text) = std::fs::read_to_string(&p) else { continue };
                out.extend(text.lines().filter_map(|l| l.parse::<u64>().ok()));
                seen.insert(p);
            }
        }
    }
}

/// One latency run: (p50 ms, p99 ms, records).
async fn latency(store: &LogStore, dir: &Path, run: usize, args: &Args) -> (f64, f64, usize) {
    let stream = format!("latency-{run}");
    create(store, &stream).await;
    let out = dir.join(format!("latency-out-{run}"));
    let config = DeliveryConfig {
        buffering: BufferingHints { size_mib: 128, interval_secs: 1 },
        format: RecordFormat::NewlineDelimited,
        prefix: "latency/".into(),
        ..DeliveryConfig::new("latency", stream.clone())
    };
    let (delivery, _) = DeliveryStream::open(
        store.clone(),
        DirectoryDestination::new(&out),
        config,
        dir.join(format!("latency-{run}.checkpoint")),
        Arc::new(SystemClock),
    )
    .await
    .expect("open delivery stream");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(delivery.run(POLL_INTERVAL, async move {
        let _ = stop_rx.await;
    }));

    let watch_out = out.clone();
    let (watch_stop_tx, mut watch_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::task::spawn_blocking(move || {
        let mut seen = BTreeSet::new();
        let mut visible: BTreeMap<u64, Instant> = BTreeMap::new();
        loop {
            let mut found = Vec::new();
            new_objects(&watch_out, &mut seen, &mut found);
            let now = Instant::now();
            for i in found {
                visible.entry(i).or_insert(now);
            }
            if watch_stop_rx.try_recv().is_ok() {
                return visible;
            }
            std::thread::sleep(WATCH_INTERVAL);
        }
    });

    let total = (args.seconds * f64::from(args.rate)) as u64;
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let mut acked = Vec::with_capacity(total as usize);
    let mut tick = tokio::time::interval(period);
    for i in 0..total {
        tick.tick().await;
        let record = NewRecord {
            partition_key: format!("device-{}", i % 64),
            data: Bytes::from(i.to_string()),
            explicit_hash_key: None,
            producer_timestamp_ms: None,
        };
        for r in store.append(&stream, vec![record]).await.expect("append") {
            r.expect("appended");
        }
        acked.push(Instant::now());
    }
    // Wait (bounded) for the last records' objects.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = BTreeSet::new();
    let mut found = Vec::new();
    while Instant::now() < deadline {
        new_objects(&out, &mut seen, &mut found);
        if found.len() as u64 >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = watch_stop_tx.send(());
    let visible = watcher.await.expect("watcher");
    let _ = stop_tx.send(());
    runner.await.expect("delivery task");
    let mut latencies: Vec<f64> = acked
        .iter()
        .enumerate()
        .filter_map(|(i, at)| {
            visible.get(&(i as u64)).map(|v| v.saturating_duration_since(*at).as_secs_f64() * 1e3)
        })
        .collect();
    assert_eq!(latencies.len() as u64, total, "every record became visible within 10 s");
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    let _ = std::fs::remove_dir_all(&out);
    (pct(0.50), pct(0.99), latencies.len())
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

#[allow(clippy::print_stdout)]
fn main() {
    let args = parse_args();
    let wanted = |name: &str| args.filter.as_ref().is_none_or(|f| name.contains(f.as_str()));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _ = std::fs::remove_dir_all(&args.dir);
    let store = runtime.block_on(open_store(&args.dir.join("store")));
    println!(
        "weir firehose benchmark: {} run(s), {} MiB of {RECORD_BYTES} B records on {SHARDS} shards, data in {}",
        args.runs,
        args.mib,
        args.dir.display()
    );
    println!("figures: median [min..max] over runs");
    let cases = [
        ("deliver-none", (RecordFormat::AsIs, Compression::None)),
        ("deliver-gzip", (RecordFormat::AsIs, Compression::Gzip)),
        ("deliver-zstd", (RecordFormat::AsIs, Compression::Zstd)),
        ("deliver-parquet", (RecordFormat::Parquet(parquet_format()), Compression::None)),
    ];
    if cases.iter().any(|(name, _)| wanted(name)) {
        runtime.block_on(create(&store, "fill"));
        let t0 = Instant::now();
        let total = runtime.block_on(fill(&store, "fill", args.mib));
        println!("filled {total} records in {:.1} s", t0.elapsed().as_secs_f64());
        println!("MB/s: bytes of records before compression; objects: per run");
        println!(
            "{:<16} | {:>26} | {:>28} | {:>7}",
            "case", "MB/s delivered", "records/s", "objects"
        );
        for (name, output) in cases {
            let built = cfg!(feature = "parquet") || !matches!(output.0, RecordFormat::Parquet(_));
            if !wanted(name) || !built {
                continue;
            }
            let mut figs = Vec::new();
            for _ in 0..args.runs {
                figs.push(runtime.block_on(deliver(&store, &args.dir, output.clone(), total)));
            }
            let objects = figs[0].2;
            let (m0, m1, m2) = stats(figs.iter().map(|f| f.0).collect());
            let (r0, r1, r2) = stats(figs.iter().map(|f| f.1).collect());
            println!(
                "{name:<16} | {m1:>8.1} [{m0:>7.1}..{m2:>7.1}] | {r1:>10.0} [{r0:>7.0}..{r2:>7.0}] | {objects:>7}"
            );
        }
    }
    if wanted("latency") {
        let mut figs = Vec::new();
        for run in 0..args.runs {
            figs.push(runtime.block_on(latency(&store, &args.dir, run, &args)));
        }
        let records = figs[0].2;
        let (a0, a1, a2) = stats(figs.iter().map(|f| f.0).collect());
        let (b0, b1, b2) = stats(figs.iter().map(|f| f.1).collect());
        println!(
            "latency (ingest ack -> object visible, interval hint 1 s, {} records/s x {:.0} s = {records} records): \
             p50 {a1:.0} ms [{a0:.0}..{a2:.0}], p99 {b1:.0} ms [{b0:.0}..{b2:.0}]",
            args.rate, args.seconds
        );
    }
    runtime.block_on(store.close());
    drop(store);
    let _ = std::fs::remove_dir_all(&args.dir);
}
