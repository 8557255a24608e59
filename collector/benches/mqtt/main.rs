//! MQTT ingest benchmark: a load generator run against the collector and, in
//! the same run, against a Mosquitto broker and a raw JetStream publisher,
//! alternating, so all see the same machine at the same half hour.
//!
//! ```text
//! cargo bench -p weir-collector --bench mqtt                         # every case, 3 runs x 3 s each
//! cargo bench -p weir-collector --bench mqtt -- --filter qos1-100B   # one case
//! cargo bench -p weir-collector --bench mqtt -- --runs 5 --seconds 5 --mosquitto 127.0.0.1:1883 \
//!     --dir /path/on/the/disk --shards 2 --fsync always
//! cargo bench -p weir-collector --bench mqtt -- --filter qos1 --connections 256 --window 16 --payload 512
//! cargo bench -p weir-collector --bench mqtt -- --filter qos1-100B --jetstream-cluster  # also R3 on 3 nodes
//! cargo bench -p weir-collector --bench mqtt -- --jetstream nats://127.0.0.1:14222      # a server of yours
//! cargo bench -p weir-collector --bench mqtt -- --weir-jetstream --jetstream-cluster \
//!     --filter qos1-100B --mosquitto off     # Weir over JetStream R1 and R3 against raw JetStream
//! cargo bench -p weir-collector --bench mqtt -- --store nats://127.0.0.1:14222 --store-replicas 1
//! ```
//!
//! `--store nats://...` runs the `weir` target on that JetStream instead of
//! its embedded store. `--weir-jetstream` adds a collector over each
//! JetStream peer's own servers: `weir-js-r1` (the single server) and, with
//! `--jetstream-cluster`, `weir-js-r3` (R3 streams on the 3-node cluster),
//! each compared in the report with the raw publishes to the same servers
//! (`weir-js-r1 / js-r1`: acknowledged messages/s, records/s for batches).
//!
//! `--connections`, `--window` (publishes in flight per connection) and
//! `--payload` (bytes per message, per record for batches) override every
//! selected case; `--mosquitto off` and `--jetstream off` leave those peers
//! out.
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
//! The JetStream peer (`jetstream`, not for the TLS case) publishes the same
//! cases with async-nats from the same number of connections and window,
//! with acknowledgements, to a file-storage stream it creates per run: target
//! `js-r1`, an R1 stream on a nats-server the bench starts on a free port
//! with its store in the bench directory (`--jetstream start`, the default;
//! skipped when nats-server is not installed), or on the server at
//! `--jetstream URL[,URL]`; with `--jetstream-cluster` also `js-r3`, an R3
//! stream on a 3-node cluster the bench starts on loopback. nats-server is
//! `$NATS_SERVER`, `nats-server` on `PATH` or `/usr/sbin/nats-server`. A batch
//! is a burst of 100 JetStream publishes (JetStream has no batch publish),
//! QoS 0 is 100 plain NATS publishes closed by one acknowledged publish.
//!
//! Reported per case and target: acknowledged messages/s (and records/s for
//! batches), MB/s of payload, and publish→acknowledgement latency p50/p99,
//! each the median of the runs with min..max.
//!
//! This file holds the options, the cases and the report; `load` is the
//! generator (connections, frames, figures), `jetstream` the JetStream peer
//! and `servers` the servers under test as processes.

mod jetstream;
mod load;
mod servers;

use std::net::SocketAddr;
use std::path::PathBuf;

use jetstream::JetStreamTarget;
use load::{Case, Figures, Mode, Target, load};
use servers::{CollectorProcess, MosquittoTls, NatsProcesses, StoreArg};

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
    /// The JetStream peer: `start` its own nats-server, a server's
    /// `URL[,URL]`, or `off`.
    #[arg(long, default_value = "start", value_parser = parse_jetstream)]
    jetstream: JetStreamPeer,
    /// Also publish to an R3 stream on a 3-node nats-server cluster the
    /// bench starts on loopback.
    #[arg(long)]
    jetstream_cluster: bool,
    /// Also run a collector over each JetStream peer's servers (targets
    /// `weir-js-r1`, and `weir-js-r3` with `--jetstream-cluster`), against
    /// the raw JetStream publishes to the same servers.
    #[arg(long)]
    weir_jetstream: bool,
    /// The `weir` target's store: `embedded` (its data directory) or
    /// `nats://HOST:PORT[,HOST:PORT...]` (a JetStream of yours).
    #[arg(long, default_value = "embedded")]
    store: String,
    /// Replicas of the `weir` target's JetStream streams (with `--store nats://`).
    #[arg(long, default_value_t = 1)]
    store_replicas: u8,
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

/// `--jetstream`: where the JetStream peer publishes.
#[derive(Clone)]
enum JetStreamPeer {
    /// A nats-server the bench starts (in its directory, on a free port).
    Start,
    /// A running server (or cluster): its client URLs.
    Urls(Vec<String>),
    Off,
}

fn parse_jetstream(v: &str) -> Result<JetStreamPeer, String> {
    match v {
        "start" => Ok(JetStreamPeer::Start),
        "off" => Ok(JetStreamPeer::Off),
        urls if urls.split(',').all(|u| u.starts_with("nats://")) => {
            Ok(JetStreamPeer::Urls(urls.split(',').map(str::to_owned).collect()))
        }
        _ => Err(format!("{v}: not `start`, `off` or nats://HOST:PORT[,...]")),
    }
}

/// What one run sends its load to.
#[derive(Clone)]
enum Peer {
    Mqtt(Target),
    JetStream(JetStreamTarget),
}

impl Peer {
    fn name(&self) -> &'static str {
        match self {
            Peer::Mqtt(t) => t.name,
            Peer::JetStream(t) => t.name,
        }
    }

    async fn load(&self, case: &Case, stream: &str, seconds: f64) -> Result<Figures, String> {
        match self {
            Peer::Mqtt(t) => load(case, t, stream, seconds).await,
            Peer::JetStream(t) => jetstream::load(case, t, stream, seconds).await,
        }
    }
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
    let store = match args.store.as_str() {
        "embedded" => None,
        urls if urls.starts_with("nats://") => Some(StoreArg {
            urls: urls.to_owned(),
            replicas: args.store_replicas,
            prefix: format!("benchmqtt{}", std::process::id()),
        }),
        other => return Err(format!("--store {other}: expected embedded or nats://HOST:PORT")),
    };
    let collector =
        CollectorProcess::start(&args.dir.join("weir"), args.shards, &args.fsync, store.as_ref())?;
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
    let needs_jetstream = cases.iter().any(|c| !c.tls);
    let mut nats_servers: Vec<NatsProcesses> = Vec::new();
    let mut jetstream_targets: Vec<JetStreamTarget> = Vec::new();
    let mut jetstream_notes: Vec<String> = Vec::new();
    match &args.jetstream {
        JetStreamPeer::Off => {}
        _ if !needs_jetstream => {}
        JetStreamPeer::Urls(urls) => {
            jetstream_notes.push(format!("js-r1 on {}", urls.join(",")));
            jetstream_targets.push(JetStreamTarget {
                name: "js-r1",
                urls: urls.clone(),
                replicas: 1,
            });
        }
        JetStreamPeer::Start => match NatsProcesses::start(&args.dir.join("nats"), 1).await? {
            Some(nats) => {
                jetstream_notes.push(format!("js-r1 on its own {}", nats.version));
                jetstream_targets.push(JetStreamTarget {
                    name: "js-r1",
                    urls: nats.urls.clone(),
                    replicas: 1,
                });
                nats_servers.push(nats);
            }
            None => eprintln!(
                "(no nats-server: no JetStream peer; `apt-get install nats-server` or set $NATS_SERVER)"
            ),
        },
    }
    if args.jetstream_cluster && needs_jetstream {
        let nats = NatsProcesses::start(&args.dir.join("nats-cluster"), 3).await?.ok_or(
            "--jetstream-cluster: nats-server is not installed (apt-get install nats-server)",
        )?;
        jetstream_notes.push(format!("js-r3 on a 3-node loopback cluster of {}", nats.version));
        jetstream_targets.push(JetStreamTarget {
            name: "js-r3",
            urls: nats.urls.clone(),
            replicas: 3,
        });
        nats_servers.push(nats);
    }
    // Collectors over the JetStream peers' servers, same servers as the raw
    // publishes: `weir-js-r1`, `weir-js-r3`.
    let mut weir_on_jetstream: Vec<(&'static str, CollectorProcess)> = Vec::new();
    if args.weir_jetstream {
        for t in &jetstream_targets {
            let name = if t.replicas == 1 { "weir-js-r1" } else { "weir-js-r3" };
            let store = StoreArg {
                urls: t.urls.join(","),
                replicas: t.replicas as u8,
                prefix: format!("benchweir{}", t.replicas),
            };
            let dir = args.dir.join(name);
            weir_on_jetstream.push((
                name,
                CollectorProcess::start(&dir, args.shards, &args.fsync, Some(&store))?,
            ));
        }
    }
    println!(
        "MQTT ingest benchmark: {} runs x {} s per case and target (after 1 s warm-up), collector fsync {}, {} shards per stream, weir on {}",
        args.runs,
        args.seconds,
        args.fsync,
        args.shards,
        store.as_ref().map_or("its embedded store".to_owned(), |s| format!(
            "JetStream {} (R{})",
            s.urls, s.replicas
        ))
    );
    if !jetstream_notes.is_empty() {
        println!(
            "JetStream peer: acknowledged publishes to a file-storage stream, {}",
            jetstream_notes.join("; ")
        );
    }
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
        let mut targets: Vec<Peer> = Vec::new();
        if case.tls {
            targets.push(Peer::Mqtt(weir_tls.clone()));
            if let Some(m) = &mosquitto_tls {
                targets.push(Peer::Mqtt(m.target.clone()));
            }
        } else {
            targets.push(Peer::Mqtt(weir_plain.clone()));
            for (name, c) in &weir_on_jetstream {
                targets.push(Peer::Mqtt(Target { name, addr: c.mqtt, tls: None }));
            }
            if let Some(addr) = args.mosquitto {
                targets.push(Peer::Mqtt(Target { name: "mosquitto", addr, tls: None }));
            }
            targets.extend(jetstream_targets.iter().cloned().map(Peer::JetStream));
        }
        let mut results: Vec<Vec<Figures>> = vec![Vec::new(); targets.len()];
        for run in 0..args.runs {
            // Alternate which target goes first.
            for k in 0..targets.len() {
                let t = (k + run) % targets.len();
                let stream = format!("bench-{}-{run}", case.name.replace('.', "_"));
                let f = targets[t].load(case, &stream, args.seconds).await?;
                results[t].push(f);
            }
        }
        let rate = |name: &str| {
            let (_, f) = targets.iter().zip(&results).find(|(t, _)| t.name() == name)?;
            let per: fn(&Figures) -> f64 =
                if case.mode == Mode::Batch { |f| f.records_per_sec } else { |f| f.msgs_per_sec };
            Some(median(f.iter().map(per).collect()).0)
        };
        for (t, figures) in targets.iter().zip(&results) {
            let m = |f: fn(&Figures) -> f64| median(figures.iter().map(f).collect());
            let (msgs, lo, hi) = m(|f| f.msgs_per_sec);
            // Mosquitto stores nothing: its batch publishes are no records.
            let records = if case.mode == Mode::Batch && t.name() != "mosquitto" {
                format!("{:.0}", m(|f| f.records_per_sec).0)
            } else {
                "-".into()
            };
            println!(
                "{:<16} {:<10} {:>10.0} ({:>6.0}..{:<6.0}) {:>14} {:>18.1} {:>8.2} / {:<8.2}",
                case.name,
                t.name(),
                msgs,
                lo,
                hi,
                records,
                m(|f| f.mb_per_sec).0,
                m(|f| f.p50_ms).0,
                m(|f| f.p99_ms).0
            );
        }
        for (weir, raw) in [("weir-js-r1", "js-r1"), ("weir-js-r3", "js-r3")] {
            if let (Some(w), Some(r)) = (rate(weir), rate(raw)) {
                let what = if case.mode == Mode::Batch { "records/s" } else { "acked msg/s" };
                println!("{:<16} {weir} / {raw}: {:.2}x {what}", case.name, w / r.max(1.0));
            }
        }
    }
    println!("collector peak RSS: weir {} MiB", collector.peak_rss_kib() / 1024);
    for (name, c) in &weir_on_jetstream {
        println!("collector peak RSS: {name} {} MiB", c.peak_rss_kib() / 1024);
    }
    drop(mosquitto_tls);
    drop(weir_on_jetstream);
    drop(nats_servers);
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
