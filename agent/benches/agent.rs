//! The agent's benchmark: the real release binaries as processes, lines of
//! about 150 bytes.
//!
//! ```sh
//! cargo build --release -p weir-collector          # the collector it ships to
//! cargo bench -p weir-agent --bench agent          # 3 runs per case, medians
//! cargo bench -p weir-agent --bench agent -- --runs 5 --lines 4000000 --filter spool
//! ```
//!
//! Options: `--runs N`, `--lines N` (e2e), `--spool-lines N` (spool),
//! `--rate-seconds N`, `--inflight N` (the agent's `collector.inflight`),
//! `--dir DIR` (where files, spools and the collector's data go),
//! `--filter spool|e2e|rate|idle`.
//!
//! Cases:
//!
//! - `spool`: the agent alone, reading a file from the page cache into its
//!   spool; the collector address is a closed port, so the network is out of
//!   the way. Lines/s and MB/s from start until every line is spooled.
//! - `e2e`: a writer appends lines to a file as fast as it can; the agent
//!   tails it and ships over TLS (mutual TLS, device certificate) to a
//!   collector on this machine (fsync `always`). Lines/s and MB/s delivered:
//!   from the first write until the collector acknowledged the last line.
//! - `rate`: the same at a fixed 1,000 lines/s; agent CPU over the steady
//!   part.
//! - `idle`: a fresh agent with a file input on an empty file and a metrics
//!   input, after a few seconds: its RSS.
//!
//! Each case reports the agent's CPU (% of one core: user + system time over
//! wall time) and peak RSS (`VmHWM`). The stripped size of the release binary
//! is printed at the end.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const AGENT: &str = env!("CARGO_BIN_EXE_weir-agent");
/// Bytes of each line, newline included.
const LINE_BYTES: usize = 150;
/// How often the agent rewrites its status during the benchmark.
const STATUS_MS: u64 = 100;
/// Longest wait for any case.
const CASE_TIMEOUT: Duration = Duration::from_secs(600);

/// The agent's benchmark: the release binaries as processes.
#[derive(clap::Parser)]
struct Args {
    /// Runs per case; figures are medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Lines of the `spool` case (it is fast: many, so the 100 ms status
    /// granularity is small against the run).
    #[arg(long, default_value_t = 10_000_000)]
    spool_lines: u64,
    /// Lines of the `e2e` case.
    #[arg(long, default_value_t = 2_000_000)]
    lines: u64,
    /// Seconds of the `rate` case.
    #[arg(long, default_value_t = 30)]
    rate_seconds: u64,
    /// `collector.inflight` of the agent (default: the agent's default).
    #[arg(long)]
    inflight: Option<u32>,
    /// Where files, spools and the collector's data go.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// Only the cases whose name contains this: spool, e2e, rate or idle.
    #[arg(long)]
    filter: Option<String>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long = "bench", hide = true)]
    _bench: bool,
}

/// Line `n`: a log line of exactly [`LINE_BYTES`] bytes.
fn line(n: u64, out: &mut Vec<u8>) {
    let start = out.len();
    let _ = write!(
        out,
        "2026-01-01T00:00:00.000Z INFO gateway[1234]: request {n:012} handled in 3 ms "
    );
    while out.len() - start < LINE_BYTES - 1 {
        out.push(b'x');
    }
    out.push(b'\n');
}

fn lines(from: u64, count: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(count as usize * LINE_BYTES);
    for n in from..from + count {
        line(n, &mut out);
    }
    out
}

/// CPU time (user + system) of a process so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let total = ticks(11) + ticks(12);
    // Clock ticks are 100 per second on Linux.
    Duration::from_millis(total * 10)
}

fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn status(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn wait(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop(mut child: Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A collector on loopback with a device certificate for the agent.
struct CollectorProc {
    child: Option<Child>,
    address: String,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl CollectorProc {
    fn start(dir: &Path) -> Self {
        let bin = Path::new(AGENT).with_file_name("weir-collector");
        assert!(
            bin.exists(),
            "{} is missing: run `cargo build --release -p weir-collector` first",
            bin.display()
        );
        let data = dir.join("collector");
        let ready = dir.join("collector.ready.json");
        let log = std::fs::File::create(dir.join("collector.log")).expect("collector log");
        let child = Command::new(&bin)
            .args(["serve", "--mqtts-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&data)
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the collector");
        wait("the collector", Duration::from_secs(60), || ready.exists());
        let r = status(&ready).expect("ready file");
        let address = r["mqtts"].as_str().expect("mqtts address").to_owned();
        let ca = PathBuf::from(r["tls_ca"].as_str().expect("CA"));
        let out = Command::new(&bin)
            .args(["certs", "issue-device", "bench-agent", "--data-dir"])
            .arg(&data)
            .arg("--out")
            .arg(dir)
            .output()
            .expect("issue a device certificate");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Self {
            child: Some(child),
            address,
            ca,
            cert: dir.join("bench-agent.pem"),
            key: dir.join("bench-agent.key"),
        }
    }
}

impl Drop for CollectorProc {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            stop(c);
        }
    }
}

/// Writes the agent's configuration and starts it.
fn start_agent(
    a: &Args,
    dir: &Path,
    log_glob: &Path,
    collector: Option<&CollectorProc>,
    metrics: bool,
) -> (Child, PathBuf) {
    let spool = dir.join("spool");
    let status_file = dir.join("status.json");
    let tls = match collector {
        Some(c) => format!(
            "address = \"mqtts://{}\"\n{}[collector.tls]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\nserver_name = \"localhost\"\n",
            c.address,
            a.inflight.map(|n| format!("inflight = {n}\n")).unwrap_or_default(),
            c.ca,
            c.cert,
            c.key
        ),
        // Nothing listens there: the agent spools and the shipper waits.
        None => {
            "address = \"mqtt://127.0.0.1:9\"\nreconnect_min_ms = 60000\nreconnect_max_ms = 60000\n"
                .into()
        }
    };
    let mut toml = format!(
        "device_id = \"bench-agent\"\n[collector]\n{tls}\n[spool]\ndir = {spool:?}\nmax_bytes = 8589934592\n\
         [status]\nfile = {status_file:?}\ninterval_ms = {STATUS_MS}\n\
         [[inputs]]\nkind = \"file\"\nname = \"bench\"\npaths = [{log_glob:?}]\nstream = \"bench\"\n"
    );
    if metrics {
        toml.push_str("[[inputs]]\nkind = \"metrics\"\ninterval_ms = 1000\nstream = \"metrics\"\n");
    }
    let config = dir.join("agent.toml");
    std::fs::write(&config, toml).expect("agent config");
    let log = std::fs::File::create(dir.join("agent.log")).expect("agent log");
    let child = Command::new(AGENT)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the agent");
    (child, status_file)
}

#[derive(Debug, Clone, Copy, Default)]
struct Run {
    lines_per_s: f64,
    mb_per_s: f64,
    cpu_pct: f64,
    peak_rss_kib: u64,
    rss_kib: u64,
    /// The collector's CPU over the run, % of one core.
    collector_cpu_pct: f64,
}

fn field(s: &serde_json::Value, path: &[&str]) -> u64 {
    path.iter().fold(s, |v, k| &v[*k]).as_u64().unwrap_or(0)
}

fn spooled(s: &serde_json::Value) -> u64 {
    field(s, &["spooled", "records"])
}

fn shipped(s: &serde_json::Value) -> u64 {
    field(s, &["shipped", "records"])
}

/// The agent alone: page cache → spool.
fn spool_case(a: &Args, file_dir: &Path, run_dir: &Path) -> Run {
    let (child, status_file) = start_agent(a, run_dir, &file_dir.join("*.log"), None, false);
    let pid = child.id();
    let start = Instant::now();
    let mut peak = 0;
    wait("every line in the spool", CASE_TIMEOUT, || {
        peak = peak.max(proc_kib(pid, "VmHWM:"));
        status(&status_file).is_some_and(|s| spooled(&s) >= a.spool_lines)
    });
    let elapsed = start.elapsed();
    let cpu = cpu_time(pid);
    peak = peak.max(proc_kib(pid, "VmHWM:"));
    stop(child);
    Run {
        lines_per_s: a.spool_lines as f64 / elapsed.as_secs_f64(),
        mb_per_s: (a.spool_lines * LINE_BYTES as u64) as f64 / 1e6 / elapsed.as_secs_f64(),
        cpu_pct: 100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64(),
        peak_rss_kib: peak,
        rss_kib: 0,
        collector_cpu_pct: 0.0,
    }
}

/// A file written at full speed, shipped over TLS.
fn e2e_case(a: &Args, run_dir: &Path) -> Run {
    let collector = CollectorProc::start(run_dir);
    let logs = run_dir.join("logs");
    std::fs::create_dir_all(&logs).expect("logs dir");
    let log = logs.join("app.log");
    std::fs::write(&log, b"").expect("log");
    let (child, status_file) =
        start_agent(a, run_dir, &logs.join("*.log"), Some(&collector), false);
    let pid = child.id();
    wait("the agent connected", Duration::from_secs(60), || {
        status(&status_file).is_some_and(|s| s["connection"]["state"] == "connected")
    });
    let collector_pid = collector.child.as_ref().map_or(0, Child::id);
    let cpu0 = cpu_time(pid);
    let collector_cpu0 = cpu_time(collector_pid);
    let start = Instant::now();
    let total = a.lines;
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new().append(true).open(&log).expect("open log");
            let chunk = 10_000;
            let mut n = 0;
            while n < total {
                let count = chunk.min(total - n);
                f.write_all(&lines(n, count)).expect("write log");
                n += count;
            }
        })
    };
    let mut peak = 0;
    wait("every line acknowledged by the collector", CASE_TIMEOUT, || {
        peak = peak.max(proc_kib(pid, "VmHWM:"));
        status(&status_file).is_some_and(|s| shipped(&s) >= total)
    });
    let elapsed = start.elapsed();
    let cpu = cpu_time(pid).saturating_sub(cpu0);
    let collector_cpu = cpu_time(collector_pid).saturating_sub(collector_cpu0);
    peak = peak.max(proc_kib(pid, "VmHWM:"));
    writer.join().expect("writer");
    stop(child);
    drop(collector);
    Run {
        lines_per_s: total as f64 / elapsed.as_secs_f64(),
        mb_per_s: (total * LINE_BYTES as u64) as f64 / 1e6 / elapsed.as_secs_f64(),
        cpu_pct: 100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64(),
        peak_rss_kib: peak,
        rss_kib: 0,
        collector_cpu_pct: 100.0 * collector_cpu.as_secs_f64() / elapsed.as_secs_f64(),
    }
}

/// 1,000 lines/s over TLS: CPU over the steady part, then RSS once idle.
fn rate_case(a: &Args, run_dir: &Path) -> Run {
    const RATE: u64 = 1000;
    const TICK: Duration = Duration::from_millis(10);
    let collector = CollectorProc::start(run_dir);
    let logs = run_dir.join("logs");
    std::fs::create_dir_all(&logs).expect("logs dir");
    let log = logs.join("app.log");
    std::fs::write(&log, b"").expect("log");
    let (child, status_file) =
        start_agent(a, run_dir, &logs.join("*.log"), Some(&collector), false);
    let pid = child.id();
    wait("the agent connected", Duration::from_secs(60), || {
        status(&status_file).is_some_and(|s| s["connection"]["state"] == "connected")
    });
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).expect("open log");
    let per_tick = RATE * TICK.as_millis() as u64 / 1000;
    let ticks = a.rate_seconds * 1000 / TICK.as_millis() as u64;
    let warmup = ticks / 10;
    let start = Instant::now();
    let (mut cpu0, mut t0) = (Duration::ZERO, start);
    let mut n = 0;
    for tick in 0..ticks {
        if tick == warmup {
            cpu0 = cpu_time(pid);
            t0 = Instant::now();
        }
        f.write_all(&lines(n, per_tick)).expect("write log");
        n += per_tick;
        let next = start + TICK * (tick as u32 + 1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let cpu = cpu_time(pid).saturating_sub(cpu0);
    let steady = t0.elapsed();
    let written_in = start.elapsed();
    wait("every line acknowledged", CASE_TIMEOUT, || {
        status(&status_file).is_some_and(|s| shipped(&s) >= n)
    });
    let peak = proc_kib(pid, "VmHWM:");
    let rss = proc_kib(pid, "VmRSS:");
    stop(child);
    drop(collector);
    Run {
        lines_per_s: n as f64 / written_in.as_secs_f64(),
        mb_per_s: 0.0,
        cpu_pct: 100.0 * cpu.as_secs_f64() / steady.as_secs_f64(),
        peak_rss_kib: peak,
        rss_kib: rss,
        collector_cpu_pct: 0.0,
    }
}

/// A fresh agent with nothing to do.
fn idle_case(a: &Args, run_dir: &Path) -> Run {
    const SETTLE: Duration = Duration::from_secs(5);
    let collector = CollectorProc::start(run_dir);
    let logs = run_dir.join("logs");
    std::fs::create_dir_all(&logs).expect("logs dir");
    std::fs::write(logs.join("app.log"), b"").expect("log");
    let (child, status_file) = start_agent(a, run_dir, &logs.join("*.log"), Some(&collector), true);
    let pid = child.id();
    wait("the agent connected", Duration::from_secs(60), || {
        status(&status_file).is_some_and(|s| s["connection"]["state"] == "connected")
    });
    let cpu0 = cpu_time(pid);
    std::thread::sleep(SETTLE);
    let cpu = cpu_time(pid).saturating_sub(cpu0);
    let run = Run {
        lines_per_s: 0.0,
        mb_per_s: 0.0,
        cpu_pct: 100.0 * cpu.as_secs_f64() / SETTLE.as_secs_f64(),
        peak_rss_kib: proc_kib(pid, "VmHWM:"),
        rss_kib: proc_kib(pid, "VmRSS:"),
        collector_cpu_pct: 0.0,
    };
    stop(child);
    run
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn report(name: &str, runs: &[Run]) -> String {
    let m = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
    let (lps, lps_lo, lps_hi) = m(|r| r.lines_per_s);
    let (mbs, _, _) = m(|r| r.mb_per_s);
    let (cpu, cpu_lo, cpu_hi) = m(|r| r.cpu_pct);
    let (peak, _, peak_hi) = m(|r| r.peak_rss_kib as f64);
    let (rss, _, _) = m(|r| r.rss_kib as f64);
    let mut o = format!("{name:<34}");
    if lps > 0.0 {
        let _ = write!(o, " {lps:>11.0} lines/s ({lps_lo:.0}..{lps_hi:.0})");
    }
    if mbs > 0.0 {
        let _ = write!(o, " {mbs:>7.1} MB/s");
    }
    let _ = write!(o, "  cpu {cpu:>5.1}% of a core ({cpu_lo:.1}..{cpu_hi:.1})");
    let _ = write!(o, "  peak RSS {:.1} MiB (max {:.1})", peak / 1024.0, peak_hi / 1024.0);
    if rss > 0.0 {
        let _ = write!(o, "  RSS {:.1} MiB", rss / 1024.0);
    }
    let (collector, _, _) = m(|r| r.collector_cpu_pct);
    if collector > 0.0 {
        let _ = write!(o, "  (collector cpu {collector:.0}%)");
    }
    o
}

fn stripped_size() -> Option<u64> {
    let dir = tempfile::tempdir().ok()?;
    let copy = dir.path().join("weir-agent");
    std::fs::copy(AGENT, &copy).ok()?;
    let ok = Command::new("strip").arg(&copy).status().ok()?.success();
    ok.then(|| std::fs::metadata(&copy).ok().map(|m| m.len())).flatten()
}

fn main() {
    let a = <Args as clap::Parser>::parse();
    let root =
        tempfile::Builder::new().prefix("weir-agent-bench").tempdir_in(&a.dir).expect("bench dir");
    let wanted = |case: &str| a.filter.as_deref().is_none_or(|f| case.contains(f));
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "weir-agent benchmark: {} runs, {} lines of {LINE_BYTES} B ({} into the spool), in {}",
        a.runs,
        a.lines,
        a.spool_lines,
        root.path().display()
    );
    if wanted("spool") {
        let files = root.path().join("file");
        std::fs::create_dir_all(&files).expect("file dir");
        let path = files.join("app.log");
        let mut f = std::fs::File::create(&path).expect("bench file");
        let mut n = 0;
        while n < a.spool_lines {
            let count = 100_000.min(a.spool_lines - n);
            f.write_all(&lines(n, count)).expect("write bench file");
            n += count;
        }
        drop(f);
        // Into the page cache.
        let _ = std::fs::read(&path);
        let runs: Vec<Run> = (0..a.runs)
            .map(|i| {
                let dir = root.path().join(format!("spool-{i}"));
                std::fs::create_dir_all(&dir).expect("run dir");
                let r = spool_case(&a, &files, &dir);
                let _ = std::fs::remove_dir_all(&dir);
                r
            })
            .collect();
        let _ = writeln!(out, "{}", report("file -> spool (no network)", &runs));
    }
    if wanted("e2e") {
        let runs: Vec<Run> = (0..a.runs)
            .map(|i| {
                let dir = root.path().join(format!("e2e-{i}"));
                std::fs::create_dir_all(&dir).expect("run dir");
                let r = e2e_case(&a, &dir);
                let _ = std::fs::remove_dir_all(&dir);
                r
            })
            .collect();
        let _ = writeln!(out, "{}", report("file -> collector, TLS, full speed", &runs));
    }
    if wanted("rate") {
        let runs: Vec<Run> = (0..a.runs)
            .map(|i| {
                let dir = root.path().join(format!("rate-{i}"));
                std::fs::create_dir_all(&dir).expect("run dir");
                let r = rate_case(&a, &dir);
                let _ = std::fs::remove_dir_all(&dir);
                r
            })
            .collect();
        let _ = writeln!(out, "{}", report("file -> collector, TLS, 1,000 lines/s", &runs));
    }
    if wanted("idle") {
        let runs: Vec<Run> = (0..a.runs)
            .map(|i| {
                let dir = root.path().join(format!("idle-{i}"));
                std::fs::create_dir_all(&dir).expect("run dir");
                let r = idle_case(&a, &dir);
                let _ = std::fs::remove_dir_all(&dir);
                r
            })
            .collect();
        let _ = writeln!(out, "{}", report("idle (file + metrics inputs)", &runs));
    }
    let bin = std::fs::metadata(AGENT).map(|m| m.len()).unwrap_or(0);
    match stripped_size() {
        Some(s) => {
            let _ = writeln!(
                out,
                "binary: {:.1} MiB stripped ({:.1} MiB with line tables)",
                s as f64 / 1048576.0,
                bin as f64 / 1048576.0
            );
        }
        None => {
            let _ = writeln!(out, "binary: {:.1} MiB (strip not found)", bin as f64 / 1048576.0);
        }
    }
}
