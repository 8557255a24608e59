//! weir-agent: the Linux device agent.
//!
//! ```text
//!  file input (thread per input: tail → multiline) --+
//!  metrics input (thread per input: sysinfo) --------+
//!  serial input (thread per input: frames, acks) ----+--> bounded channel --> batcher (thread)
//!                                                                               | wire batch + checkpoints
//!                                                                               v
//!                   collector <-- MQTT/TLS QoS 1 <-- shipper (task) <-- cursor -- spool (disk)
//!                              --> PUBACK --------> ack: release the spooled entry
//! ```
//!
//! Inputs produce records; the [`batcher`] groups them per target stream
//! into wire batches and appends each to the on-disk [`spool`] together with
//! the file [`checkpoint`] table; the [`shipper`] sends spooled batches over
//! MQTT/TLS and releases them only after the collector's acknowledgement.
//! [`run`] wires it all and runs until its shutdown future resolves;
//! `main.rs` only parses arguments, sets up logging and waits for a signal.

pub mod backoff;
pub mod batcher;
pub mod checkpoint;
pub mod config;
pub mod event;
pub mod input;
pub mod log_limit;
pub mod multiline;
pub mod producer;
pub mod prometheus;
pub mod shipper;
pub mod spool;
pub mod stats;
pub mod status;
pub mod tail;
pub mod template;
pub mod tls;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::batcher::{Batcher, BatcherSetup};
use crate::checkpoint::Table;
use crate::config::{Config, InputKind};
use crate::event::EVENT_CHANNEL_CAPACITY;
use crate::spool::{Spool, SpoolError};
use crate::stats::{Shared, lock, now_ms};
use crate::status::{ConnectionStatus, Counts, FileStatus, InputStatus, SpoolStatus, Status};

/// The agent's version, as its binary reports it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The TLS files are unusable.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// The spool could not be opened.
    #[error("opening the spool: {0}")]
    Spool(#[from] SpoolError),
    /// The spool's instance id could not be read or made.
    #[error(transparent)]
    Producer(#[from] producer::ProducerError),
    /// A component stopped while the agent was running (a bug; the log
    /// holds its panic message).
    #[error("{component} stopped unexpectedly")]
    Died {
        /// Which one.
        component: String,
    },
    /// `[metrics] listen` could not be bound.
    #[error("metrics.listen {addr}: {source}")]
    MetricsListen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("starting the {what} thread: {source}")]
    Thread {
        /// Which one.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the agent until `shutdown` resolves, then stops the inputs, spools
/// what the batcher holds, waits briefly for acknowledgements in flight and
/// writes a last status.
///
/// # Errors
/// Start-up failures: unusable TLS files, a spool that cannot be opened, a
/// thread that cannot be started. Once running, errors are reported in the
/// status and the log, and the agent goes on; only a component that stops
/// unexpectedly (a panic) ends it early, with [`RunError::Died`].
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    tls::install_default_provider();
    let tls = match &config.collector.tls {
        Some(files) => Some(tls::client_config(files)?),
        None => {
            tracing::warn!(collector = %config.collector.address, "plain MQTT: records travel unencrypted");
            None
        }
    };
    // Bound before anything starts, so a taken port stops the agent cleanly.
    let metrics_listener = match config.metrics_listen {
        None => None,
        Some(addr) => Some(
            prometheus::bind(addr)
                .await
                .map_err(|source| RunError::MetricsListen { addr, source })?,
        ),
    };
    let spool = Spool::open(&config.spool_dir, config.spool)?;
    let had_entries = spool.next_seq() > 0;
    let instance = producer::instance_id(&config.spool_dir, had_entries)?;
    let producer_id = producer::producer_id(&config.device_id, &instance);
    let table = match spool.last_meta() {
        None => Table::default(),
        Some(meta) => Table::from_meta(meta).unwrap_or_else(|e| {
            tracing::error!(error = %e, "the spool's checkpoints do not parse; files start afresh");
            Table::default()
        }),
    };
    tracing::info!(
        device = %config.device_id,
        producer = %producer_id,
        spool = %config.spool_dir.display(),
        backlog = spool.stats().entries,
        files = table.len(),
        "weir-agent {VERSION} starting"
    );
    let spool = Arc::new(Mutex::new(spool));
    let shared = Arc::new(Shared::new(config.inputs.len()));
    let (tx, rx) = std::sync::mpsc::sync_channel(EVENT_CHANNEL_CAPACITY);

    let thread_err = |what: &str| {
        let what = what.to_owned();
        move |source| RunError::Thread { what, source }
    };
    let batcher = Batcher::new(
        BatcherSetup {
            config: config.batch,
            producer_id: producer_id.clone(),
            input_names: config.inputs.iter().map(|i| i.name.clone()).collect(),
            input_streams: config.inputs.iter().map(|i| i.stream.clone()).collect(),
            table: table.clone(),
            checkpoint_file: config.checkpoint_file.clone(),
            sync_inputs: config
                .inputs
                .iter()
                .filter(|i| matches!(i.kind, InputKind::Serial(_)))
                .map(|i| i.name.clone())
                .collect(),
        },
        spool.clone(),
        shared.clone(),
    );
    let batcher = std::thread::Builder::new()
        .name("weir-batcher".into())
        .spawn(move || batcher.run(rx))
        .map_err(thread_err("batcher"))?;

    let mut inputs = Vec::new();
    let serial_stats: Vec<Option<Arc<stats::SerialStats>>> = config
        .inputs
        .iter()
        .map(|i| matches!(i.kind, InputKind::Serial(_)).then(Arc::default))
        .collect();
    for (index, input) in config.inputs.iter().enumerate() {
        let handle = match &input.kind {
            InputKind::File(f) => input::file::spawn(
                input::file::FileTask {
                    index,
                    name: input.name.clone(),
                    device_id: config.device_id.clone(),
                    key: input.key.clone(),
                    config: f.clone(),
                    checkpoints: table.for_input(&input.name),
                },
                tx.clone(),
                shared.clone(),
            ),
            InputKind::Metrics(m) => input::metrics::spawn(
                input::metrics::MetricsTask {
                    index,
                    name: input.name.clone(),
                    device_id: config.device_id.clone(),
                    key: input.key.clone(),
                    config: *m,
                },
                tx.clone(),
                shared.clone(),
            ),
            InputKind::Serial(sc) => input::serial::spawn(
                input::serial::SerialTask {
                    index,
                    name: input.name.clone(),
                    device_id: config.device_id.clone(),
                    key: input.key.clone(),
                    config: sc.clone(),
                    checkpoints: table.for_input(&input.name),
                    spool: spool.clone(),
                    stats: serial_stats[index].clone().unwrap_or_default(),
                },
                tx.clone(),
                shared.clone(),
            ),
        };
        match handle {
            Ok(h) => inputs.push(h),
            Err(source) => {
                shared.shutdown.trigger();
                return Err(RunError::Thread { what: format!("input {}", input.name), source });
            }
        }
    }
    // The batcher stops once every input has dropped its sender.
    drop(tx);

    let shipper = tokio::spawn(shipper::run(
        shipper::ShipperSetup { collector: config.collector.clone(), tls },
        spool.clone(),
        shared.clone(),
    ));
    let reporter = Reporter {
        config: Arc::new(config),
        producer_id,
        started_at_ms: now_ms(),
        serial: serial_stats,
        write_log: Arc::default(),
    };
    let metrics_task = match metrics_listener {
        None => None,
        Some(listener) => {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "serving Prometheus metrics on /metrics");
            }
            let (reporter, shared, spool) = (reporter.clone(), shared.clone(), spool.clone());
            let stop = shared.clone();
            Some(tokio::spawn(async move {
                let status = move || reporter.status(&shared, &spool);
                prometheus::serve(listener, status, async move { stop.shutdown.wait().await })
                    .await;
            }))
        }
    };
    let status_task = {
        let (reporter, shared, spool) = (reporter.clone(), shared.clone(), spool.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(reporter.config.status_interval);
            loop {
                tokio::select! {
                    () = shared.shutdown.wait() => break,
                    _ = tick.tick() => reporter.write(&shared, &spool),
                }
            }
        })
    };

    // Wait for the stop signal, watching that no component died (a bug):
    // then the agent stops with an error, and its supervisor restarts it.
    tokio::pin!(shutdown);
    let mut watch = tokio::time::interval(WATCHDOG_INTERVAL);
    let died = loop {
        tokio::select! {
            () = &mut shutdown => break None,
            _ = watch.tick() => {
                if batcher.is_finished() {
                    break Some("the batcher".to_owned());
                }
                if shipper.is_finished() {
                    break Some("the shipper".to_owned());
                }
                if let Some(i) = inputs.iter().position(std::thread::JoinHandle::is_finished) {
                    break Some(format!("input {:?}", reporter.config.inputs[i].name));
                }
            }
        }
    };
    match &died {
        None => tracing::info!("stopping"),
        Some(what) => {
            tracing::error!(component = %what, "a component stopped unexpectedly; stopping")
        }
    }
    shared.shutdown.trigger();
    // A batcher waiting for spool space looks at the stop signal now.
    shared.space.notify();
    let joined = tokio::task::spawn_blocking(move || {
        for h in inputs {
            let _ = h.join();
        }
        let _ = batcher.join();
    });
    let _ = joined.await;
    let _ = shipper.await;
    let _ = status_task.await;
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    reporter.write(&shared, &spool);
    tracing::info!("stopped");
    match died {
        None => Ok(()),
        Some(component) => Err(RunError::Died { component }),
    }
}

/// How often [`run`] checks that its threads and tasks are alive.
const WATCHDOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Builds and writes the status file.
#[derive(Debug, Clone)]
struct Reporter {
    config: Arc<Config>,
    producer_id: String,
    started_at_ms: u64,
    /// Counters of the serial inputs, by input index.
    serial: Vec<Option<Arc<stats::SerialStats>>>,
    /// Failures to write the status file (on a full disk, every interval).
    write_log: Arc<Mutex<log_limit::LogLimit>>,
}

impl Reporter {
    fn write(&self, shared: &Shared, spool: &Mutex<Spool>) {
        let status = self.status(shared, spool);
        let path = &self.config.status_file;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut log = lock(&self.write_log);
        match status::write_status(path, &status) {
            Ok(()) => {
                log.reset();
            }
            Err(e) => {
                if let Some(failures) = log.hit(std::time::Instant::now()) {
                    tracing::warn!(path = %path.display(), error = %e, failures, "writing the status file failed");
                }
            }
        }
    }

    fn status(&self, shared: &Shared, spool: &Mutex<Spool>) -> Status {
        let c = &self.config;
        let stats = lock(spool).stats();
        let checkpoints = lock(&shared.checkpoints).clone();
        let inputs: Vec<InputStatus> = c
            .inputs
            .iter()
            .zip(&shared.inputs)
            .zip(&self.serial)
            .map(|((input, s), serial)| {
                let spooled = checkpoints.for_input(&input.name);
                let files = lock(&s.files)
                    .iter()
                    .map(|(key, path, read_offset)| FileStatus {
                        path: path.clone(),
                        read_offset: *read_offset,
                        spooled_offset: spooled
                            .iter()
                            .find(|cp| checkpoint::key_of(cp) == *key)
                            .map(|cp| cp.offset),
                    })
                    .collect();
                InputStatus {
                    name: input.name.clone(),
                    kind: match input.kind {
                        InputKind::File(_) => "file".into(),
                        InputKind::Metrics(_) => "metrics".into(),
                        InputKind::Serial(_) => "serial".into(),
                    },
                    stream: input.stream.clone(),
                    records: s.records.load(Ordering::Relaxed),
                    bytes: s.bytes.load(Ordering::Relaxed),
                    lines_split: s.lines_split.load(Ordering::Relaxed),
                    rotations: s.rotations.load(Ordering::Relaxed),
                    truncations: s.truncations.load(Ordering::Relaxed),
                    errors: s.errors.load(Ordering::Relaxed),
                    last_error: s.last_error.get(),
                    files,
                    serial: serial.as_deref().map(status::serial_status),
                }
            })
            .collect();
        let sh = &shared.shipper;
        let since = sh.connected_since_ms.load(Ordering::Relaxed);
        let b = &shared.batcher;
        let now = now_ms();
        let disk_full = lock(&b.disk_full).clone();
        let blocked = b.blocked.load(Ordering::Relaxed);
        let spool_state = match (&disk_full, blocked) {
            (Some(_), _) => status::SPOOL_DISK_FULL,
            (None, true) => status::SPOOL_FULL,
            (None, false) => status::SPOOL_OK,
        };
        let disk_full_ms = b.disk_full_ms.load(Ordering::Relaxed)
            + disk_full.as_ref().map_or(0, |d| now.saturating_sub(d.since_ms));
        let last_error = std::iter::once(sh.last_error.get())
            .chain(std::iter::once(b.last_error.get()))
            .chain(shared.inputs.iter().map(|i| i.last_error.get()))
            .flatten()
            .max_by_key(|e| e.at_ms);
        Status {
            version: VERSION.into(),
            pid: std::process::id(),
            started_at_ms: self.started_at_ms,
            updated_at_ms: now,
            device_id: c.device_id.clone(),
            producer_id: self.producer_id.clone(),
            collector: c.collector.address.clone(),
            connection: ConnectionStatus {
                state: sh.state().name().into(),
                connected_since_ms: (since > 0).then_some(since),
                reconnects: sh.reconnects.load(Ordering::Relaxed),
                inflight: sh.inflight.load(Ordering::Relaxed),
                last_error: sh.last_error.get(),
            },
            spool: SpoolStatus {
                dir: c.spool_dir.clone(),
                entries: stats.entries,
                bytes: stats.bytes,
                max_bytes: c.spool.max_bytes,
                when_full: status::policy_name(c.spool.policy).into(),
                blocked,
                state: spool_state.into(),
                disk_full,
                disk_full_events: b.disk_full_events.load(Ordering::Relaxed),
                disk_full_ms,
                free_bytes: stats.free_bytes,
                min_free_bytes: stats.min_free_bytes,
                dropped_entries: stats.state.dropped_entries,
                dropped_records: stats.state.dropped_records,
                last_error: b.last_error.get(),
            },
            shipped: Counts {
                batches: sh.batches.load(Ordering::Relaxed),
                records: sh.records.load(Ordering::Relaxed),
                bytes: sh.bytes.load(Ordering::Relaxed),
            },
            spooled: Counts {
                batches: b.batches.load(Ordering::Relaxed),
                records: b.records.load(Ordering::Relaxed),
                bytes: b.bytes.load(Ordering::Relaxed),
            },
            pending_records: b.pending_records.load(Ordering::Relaxed),
            inputs,
            last_error,
        }
    }
}
