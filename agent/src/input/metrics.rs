//! The host metrics input: a thread that samples the machine every
//! `interval_ms` and sends each sample as one record.
//!
//! Sampled through `sysinfo` (CPU per core and total, memory, swap, load
//! average, disk usage and I/O, network interfaces, uptime); thermal zones
//! are read from `/sys/class/thermal` (sysinfo's components cover hwmon
//! sensors, not the thermal zones boards expose) and the process count is
//! the number of process directories in `/proc` (cheaper than sysinfo's full
//! process table, which this agent does not need).
//!
//! A record's data is JSON:
//!
//! ```json
//! {"metric":"cpu.core.usage","instance":"0","value":12.5,"unit":"percent","timestamp_ms":1767225600000}
//! ```
//!
//! `instance` names the core, mount point, interface or thermal zone, and is
//! absent for machine-wide metrics. Counters of I/O (`disk.read`,
//! `net.rx`, ...) are the amounts since the previous sample. The `{metric}`
//! placeholder of a partition key template is the metric name, followed by
//! `:<instance>` when there is one.
//!
//! The first sample comes after a second, then one every interval, skipping
//! ticks missed while the batcher was not reading (`block` policy, full
//! spool).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use serde::Serialize;
use sysinfo::{Disks, Networks, System};

use crate::config::MetricsInput;
use crate::event::{Chunk, Event};
use crate::stats::{Shared, now_ms};
use crate::template::{KeyContext, KeyTemplate};

/// The first sample comes this soon (or after one interval, if shorter):
/// CPU figures need two readings, and a new agent should show data quickly.
const FIRST_SAMPLE_AFTER: Duration = Duration::from_secs(1);
/// Where Linux exposes thermal zones.
const THERMAL_DIR: &str = "/sys/class/thermal";

/// One measurement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Metric name, e.g. `memory.used`.
    pub metric: &'static str,
    /// Core, mount point, interface or zone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The value.
    pub value: f64,
    /// `percent`, `bytes`, `celsius`, `seconds`, `count` or `load`.
    pub unit: &'static str,
    /// When it was sampled, ms since the Unix epoch.
    pub timestamp_ms: u64,
}

/// Samples the host.
pub struct Sampler {
    system: System,
    disks: Disks,
    networks: Networks,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler").finish_non_exhaustive()
    }
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Sampler {
    /// A sampler; its first CPU figures cover the time since its creation.
    pub fn new() -> Self {
        let mut system = System::new();
        system.refresh_cpu_usage();
        Self {
            system,
            disks: Disks::new_with_refreshed_list(),
            networks: Networks::new_with_refreshed_list(),
        }
    }

    /// Takes one sample of everything.
    pub fn sample(&mut self) -> Vec<Sample> {
        let ts = now_ms();
        let mut out = Vec::new();
        let mut add =
            |metric: &'static str, instance: Option<String>, value: f64, unit: &'static str| {
                out.push(Sample { metric, instance, value, unit, timestamp_ms: ts });
            };
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        add("cpu.usage", None, f64::from(self.system.global_cpu_usage()), "percent");
        for (i, cpu) in self.system.cpus().iter().enumerate() {
            add("cpu.core.usage", Some(i.to_string()), f64::from(cpu.cpu_usage()), "percent");
        }
        let s = &self.system;
        add("memory.total", None, s.total_memory() as f64, "bytes");
        add("memory.used", None, s.used_memory() as f64, "bytes");
        add("memory.available", None, s.available_memory() as f64, "bytes");
        add("swap.total", None, s.total_swap() as f64, "bytes");
        add("swap.used", None, s.used_swap() as f64, "bytes");
        let load = System::load_average();
        add("load.1m", None, load.one, "load");
        add("load.5m", None, load.five, "load");
        add("load.15m", None, load.fifteen, "load");
        add("uptime", None, System::uptime() as f64, "seconds");
        if let Some(n) = process_count() {
            add("processes", None, n as f64, "count");
        }
        self.disks.refresh(true);
        for d in self.disks.list() {
            let mount = Some(d.mount_point().to_string_lossy().into_owned());
            let usage = d.usage();
            add("disk.total", mount.clone(), d.total_space() as f64, "bytes");
            add("disk.available", mount.clone(), d.available_space() as f64, "bytes");
            add(
                "disk.used",
                mount.clone(),
                d.total_space().saturating_sub(d.available_space()) as f64,
                "bytes",
            );
            add("disk.read", mount.clone(), usage.read_bytes as f64, "bytes");
            add("disk.written", mount, usage.written_bytes as f64, "bytes");
        }
        self.networks.refresh(true);
        let mut nets: Vec<_> = self.networks.list().iter().collect();
        nets.sort_by(|a, b| a.0.cmp(b.0));
        for (name, n) in nets {
            let iface = Some(name.clone());
            add("net.rx", iface.clone(), n.received() as f64, "bytes");
            add("net.tx", iface.clone(), n.transmitted() as f64, "bytes");
            add("net.rx_packets", iface.clone(), n.packets_received() as f64, "count");
            add("net.tx_packets", iface.clone(), n.packets_transmitted() as f64, "count");
            add("net.rx_errors", iface.clone(), n.errors_on_received() as f64, "count");
            add("net.tx_errors", iface, n.errors_on_transmitted() as f64, "count");
        }
        for (zone, celsius) in thermal_zones(Path::new(THERMAL_DIR)) {
            add("thermal.temperature", Some(zone), celsius, "celsius");
        }
        out
    }
}

/// Number of processes: the numeric directories of `/proc`.
fn process_count() -> Option<usize> {
    let entries = std::fs::read_dir("/proc").ok()?;
    Some(
        entries
            .flatten()
            .filter(|e| {
                e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            })
            .count(),
    )
}

/// Each thermal zone under `dir` (`thermal_zoneN/type`, `.../temp` in
/// millidegrees Celsius), named by its type and number.
pub fn thermal_zones(dir: &Path) -> Vec<(String, f64)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut zones: Vec<(String, f64)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            let n = name.strip_prefix("thermal_zone")?.to_owned();
            let temp = std::fs::read_to_string(e.path().join("temp")).ok()?;
            let milli: f64 = temp.trim().parse().ok()?;
            let kind = std::fs::read_to_string(e.path().join("type"))
                .map(|t| t.trim().to_owned())
                .unwrap_or_default();
            let zone = if kind.is_empty() { format!("zone{n}") } else { format!("{kind}.{n}") };
            Some((zone, milli / 1000.0))
        })
        .collect();
    zones.sort_by(|a, b| a.0.cmp(&b.0));
    zones
}

/// What a metrics input needs to run.
#[derive(Debug)]
pub struct MetricsTask {
    /// Index of the input in the configuration.
    pub index: usize,
    /// The input's name.
    pub name: String,
    /// The device id (for keys).
    pub device_id: String,
    /// Partition key template.
    pub key: KeyTemplate,
    /// Settings.
    pub config: MetricsInput,
}

/// Turns samples into a chunk of records.
pub fn chunk(task: &MetricsTask, samples: &[Sample]) -> Chunk {
    let mut chunk = Chunk::new(task.index);
    let mut data = Vec::with_capacity(160);
    for s in samples {
        data.clear();
        if serde_json::to_writer(&mut data, s).is_err() {
            continue;
        }
        let metric = match &s.instance {
            Some(i) => format!("{}:{i}", s.metric),
            None => s.metric.to_owned(),
        };
        let key = task.key.expand(&KeyContext {
            device_id: &task.device_id,
            input: &task.name,
            file: "",
            metric: &metric,
            node: "",
            key: "",
        });
        chunk.push(&key, &data, Some(s.timestamp_ms), None);
    }
    chunk
}

/// Starts the input's thread.
///
/// # Errors
/// The thread could not be started.
pub fn spawn(
    task: MetricsTask,
    tx: SyncSender<Event>,
    shared: Arc<Shared>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("weir-metrics-{}", task.index))
        .spawn(move || run(&task, &tx, &shared))
}

fn run(task: &MetricsTask, tx: &SyncSender<Event>, shared: &Shared) {
    tracing::info!(input = %task.name, interval = ?task.config.interval, "metrics input started");
    let mut sampler = Sampler::new();
    let interval = task.config.interval;
    let mut next = Instant::now() + interval.min(FIRST_SAMPLE_AFTER);
    loop {
        if shared.shutdown.wait_timeout(next.saturating_duration_since(Instant::now())) {
            break;
        }
        let samples = sampler.sample();
        let c = chunk(task, &samples);
        let stats = &shared.inputs[task.index];
        stats.records.fetch_add(c.records.len() as u64, Ordering::Relaxed);
        stats.bytes.fetch_add(c.buf.len() as u64, Ordering::Relaxed);
        if tx.send(Event::Records(c)).is_err() {
            break;
        }
        next += interval;
        // Skip the ticks missed while the send waited.
        let now = Instant::now();
        if next < now {
            let missed = (now - next).as_nanos() / interval.as_nanos().max(1) + 1;
            next += interval * u32::try_from(missed).unwrap_or(u32::MAX);
        }
    }
    tracing::info!(input = %task.name, "metrics input stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::Placeholders;

    #[test]
    fn a_sample_covers_the_host() {
        let mut s = Sampler::new();
        let samples = s.sample();
        let names: std::collections::HashSet<&str> = samples.iter().map(|s| s.metric).collect();
        for m in [
            "cpu.usage",
            "cpu.core.usage",
            "memory.used",
            "swap.total",
            "load.1m",
            "uptime",
            "processes",
        ] {
            assert!(names.contains(m), "{m} missing from {names:?}");
        }
        assert!(samples.iter().find(|s| s.metric == "memory.total").is_some_and(|s| s.value > 0.0));
    }

    #[test]
    fn samples_become_json_records_with_keys() {
        let task = MetricsTask {
            index: 1,
            name: "host".into(),
            device_id: "gw-1".into(),
            key: KeyTemplate::parse("{device_id}/{metric}", Placeholders::Metrics)
                .expect("template"),
            config: MetricsInput { interval: Duration::from_secs(1) },
        };
        let samples = vec![
            Sample {
                metric: "uptime",
                instance: None,
                value: 5.0,
                unit: "seconds",
                timestamp_ms: 7,
            },
            Sample {
                metric: "cpu.core.usage",
                instance: Some("1".into()),
                value: 2.5,
                unit: "percent",
                timestamp_ms: 7,
            },
        ];
        let c = chunk(&task, &samples);
        let (key, data) = c.parts(&c.records[1]);
        assert_eq!(key, "gw-1/cpu.core.usage:1");
        let v: serde_json::Value = serde_json::from_slice(data).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"metric":"cpu.core.usage","instance":"1","value":2.5,"unit":"percent","timestamp_ms":7})
        );
        let (key, data) = c.parts(&c.records[0]);
        assert_eq!(key, "gw-1/uptime");
        assert!(!String::from_utf8_lossy(data).contains("instance"));
    }

    #[test]
    fn thermal_zones_are_read_from_sysfs_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let z = dir.path().join("thermal_zone0");
        std::fs::create_dir(&z).expect("mkdir");
        std::fs::write(z.join("type"), "cpu-thermal\n").expect("type");
        std::fs::write(z.join("temp"), "47250\n").expect("temp");
        std::fs::create_dir(dir.path().join("cooling_device0")).expect("mkdir");
        assert_eq!(thermal_zones(dir.path()), vec![("cpu-thermal.0".to_owned(), 47.25)]);
    }
}
