//! Starting real Weir processes for tests.
//!
//! A [`Collector`] or [`Agent`] dropped while its test panics prints its
//! `report()` (command line, log, data directory) to stderr, so every failure
//! shows the processes' context, whether or not the assertion passed it.

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a process may take to report it is ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Path of a workspace binary (built by `cargo build --workspace --bins`,
/// which the test command runs first): next to the test executable's `deps`
/// directory.
///
/// # Panics
/// When the binary is missing, with the command that builds it.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target profile directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (the test command does)",
        path.display()
    );
    path
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A `weir-collector` process running in a temp directory.
pub struct Collector {
    /// The child process.
    pub child: Child,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// File receiving its stderr (its log).
    pub log_path: PathBuf,
    /// Where the process writes what it bound once it serves.
    pub ready_path: PathBuf,
    command_line: String,
    _tmp: Option<tempfile::TempDir>,
}

impl Collector {
    /// Starts `weir-collector serve` on a fresh temp data directory with
    /// `extra` arguments and waits until it logs that it is ready.
    pub fn start(extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let mut c = Self::start_in(&data_dir, tmp.path(), extra);
        c._tmp = Some(tmp);
        c
    }

    /// Starts `weir-collector serve` on `data_dir`, logging into `log_dir`,
    /// and waits for readiness.
    pub fn start_in(data_dir: &Path, log_dir: &Path, extra: &[&str]) -> Self {
        let c = Self::spawn(data_dir, log_dir, extra);
        c.wait_ready();
        c
    }

    /// Starts the process without waiting for readiness.
    pub fn spawn(data_dir: &Path, log_dir: &Path, extra: &[&str]) -> Self {
        let bin = binary("weir-collector");
        let name = format!("collector-{}", std::process::id() ^ rand_suffix());
        let log_path = log_dir.join(format!("{name}.log"));
        let ready_path = log_dir.join(format!("{name}.ready.json"));
        let log = File::create(&log_path).expect("log file");
        let mut cmd = Command::new(&bin);
        cmd.arg("serve").arg("--data-dir").arg(data_dir).arg("--ready-file").arg(&ready_path);
        // Never the default ports (0.0.0.0:8883, 127.0.0.1:4567) in tests: free
        // loopback ports, read back from the ready file, so tests running in
        // parallel never collide. `extra` may override them (last flag wins).
        cmd.arg("--mqtts-listen").arg("127.0.0.1:0");
        cmd.arg("--http-listen").arg("127.0.0.1:0");
        if let Some(url) = test_store() {
            cmd.arg("--store").arg(url).arg("--store-prefix").arg(store_prefix(data_dir));
        }
        cmd.args(extra);
        cmd.env("RUST_LOG", "info").stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        let command_line = format!("{cmd:?}");
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {command_line}: {e}"));
        Self {
            child,
            data_dir: data_dir.to_path_buf(),
            log_path,
            ready_path,
            command_line,
            _tmp: None,
        }
    }

    /// The process's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn wait_ready(&self) {
        if !wait_for(READY_TIMEOUT, || self.ready_path.exists()) {
            panic!("collector not ready within {READY_TIMEOUT:?}\n{}", self.report());
        }
    }

    /// What the process reported once serving (its `--ready-file`): the data
    /// directory and the address of every listener it bound.
    pub fn ready(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(&self.ready_path).unwrap_or_else(|e| {
            panic!("reading {}: {e}\n{}", self.ready_path.display(), self.report())
        });
        serde_json::from_str(&text).expect("ready file is JSON")
    }

    /// The address of its HTTP listener (Kinesis and Firehose APIs,
    /// `/metrics`), from the ready file.
    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.ready()["http"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("ready file names no http address\n{}", self.report()))
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_for(timeout, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    /// Sends a signal (`"TERM"`, `"KILL"`) to the process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} failed\n{}", self.report());
    }

    /// Command line, log and data directory listing, for failure messages.
    pub fn report(&self) -> String {
        let mut out = format!(
            "command: {}\n--- log ---\n{}\n--- data dir ---\n",
            self.command_line,
            self.log()
        );
        for entry in walk(&self.data_dir) {
            let _ = writeln!(out, "{entry}");
        }
        out
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        // A failing test drops its processes while unwinding: show their
        // context whether or not the failed assertion asked for it.
        if std::thread::panicking() {
            eprintln!("--- collector (test failed) ---\n{}", self.report());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

/// Every file under `dir` with its size, for failure reports.
pub fn walk(dir: &Path) -> Vec<String> {
    files(dir)
        .into_iter()
        .map(|p| match std::fs::symlink_metadata(&p) {
            Ok(m) => format!("{} {}", p.display(), m.len()),
            Err(_) => p.display().to_string(),
        })
        .collect()
}

/// Every file (anything but a directory) under `dir`, in all its
/// subdirectories, sorted; nothing if `dir` does not exist.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            if e.metadata().is_ok_and(|m| m.is_dir()) {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for a listener a test
/// starts (bind port 0 where the process can report its port instead).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// The body of `GET <path>` from an HTTP/1.1 server on `addr` (empty if the
/// server cannot be reached), e.g. the collector's `/metrics`.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    http(addr, "GET", path).map(|(_, body)| body).unwrap_or_default()
}

/// One HTTP/1.1 request without a body: the status code and the body, or
/// `None` if the server cannot be reached or does not answer HTTP.
pub fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes()).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let out = String::from_utf8_lossy(&out);
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    // Servers send large bodies of unknown length chunked (nats-server's
    // /jsz with stream details does).
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked { dechunk(body)? } else { body.to_owned() };
    Some((status, body))
}

/// The payload of a `Transfer-Encoding: chunked` body, `None` if malformed.
fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// The value of the sample `<name>{<labels>}` in Prometheus text (`labels`
/// as written there, e.g. `delivery_stream="orders"`), if present.
pub fn metric_value(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok())
}

/// A `weir-agent` process run from a configuration file; it can be killed
/// and started again on the same spool. Its log accumulates across runs.
pub struct Agent {
    /// The running process, if any.
    pub child: Option<Child>,
    /// Its configuration file.
    pub config_path: PathBuf,
    /// Its status file (`[status] file` in the configuration).
    pub status_path: PathBuf,
    /// Its spool directory.
    pub spool_dir: PathBuf,
    /// File receiving its stderr (its log), all runs appended.
    pub log_path: PathBuf,
    /// Run the process as this user and group id (tests of permissions).
    pub run_as: Option<(u32, u32)>,
    command_line: String,
}

impl Agent {
    /// An agent for `config_path`, not started yet.
    pub fn new(config_path: &Path, status_path: &Path, spool_dir: &Path, log_dir: &Path) -> Self {
        let name = format!("agent-{}", std::process::id() ^ rand_suffix());
        Self {
            child: None,
            config_path: config_path.to_path_buf(),
            status_path: status_path.to_path_buf(),
            spool_dir: spool_dir.to_path_buf(),
            log_path: log_dir.join(format!("{name}.log")),
            run_as: None,
            command_line: String::new(),
        }
    }

    /// Starts the process (`weir-agent --config FILE`), appending to the log.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "agent already running\n{}", self.report());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("agent log file");
        let mut bin = binary("weir-agent");
        if self.run_as.is_some() {
            // Another user may not reach the build directory (a clone under
            // a private directory, mode 0700 as `mktemp -d` makes): run a
            // copy kept beside the configuration, which the test makes
            // readable to that user.
            let dir = self.config_path.parent().expect("config directory");
            let copy = dir.join("weir-agent");
            std::fs::copy(&bin, &copy).expect("copy the agent binary");
            std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .expect("chmod the agent binary");
            bin = copy;
        }
        let mut cmd = Command::new(bin);
        cmd.arg("--config").arg(&self.config_path);
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        cmd.env("RUST_LOG", "info").stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        self.command_line = format!("{cmd:?}");
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {}: {e}", self.command_line));
        self.child = Some(child);
    }

    /// The process id of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The status file as JSON, if the agent has written one.
    pub fn status(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(&self.status_path).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Waits until the status file, written by the running process (not
    /// left by an earlier one), satisfies `cond`; `false` on timeout.
    pub fn wait_status(
        &self,
        timeout: Duration,
        mut cond: impl FnMut(&serde_json::Value) -> bool,
    ) -> bool {
        let pid = self.pid().map(u64::from);
        wait_for(timeout, || {
            self.status().is_some_and(|s| (pid.is_none() || s["pid"].as_u64() == pid) && cond(&s))
        })
    }

    /// Waits until the running process has written a status since it
    /// started (its pid is in the file).
    pub fn wait_running(&self, timeout: Duration) {
        let pid = self.pid().map(u64::from);
        if !self.wait_status(timeout, |s| s["pid"].as_u64() == pid) {
            panic!("agent wrote no status within {timeout:?}\n{}", self.report());
        }
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process with SIGTERM and waits for it to exit.
    pub fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let mut status = None;
        wait_for(timeout, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        status
    }

    /// Waits for the process to exit by itself (a refused configuration).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let mut status = None;
        wait_for(timeout, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// The log of every run so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Command line, configuration, status, log and spool listing, for
    /// failure messages.
    pub fn report(&self) -> String {
        let mut out = format!(
            "command: {}\n--- config ---\n{}\n--- status ---\n{}\n--- log ---\n{}\n--- spool ---\n",
            self.command_line,
            std::fs::read_to_string(&self.config_path).unwrap_or_default(),
            std::fs::read_to_string(&self.status_path).unwrap_or_default(),
            self.log()
        );
        for entry in walk(&self.spool_dir) {
            let _ = writeln!(out, "{entry}");
        }
        out
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- agent (test failed) ---\n{}", self.report());
        }
        self.kill9();
    }
}

/// Resident set size of a process in KiB (`VmRSS`), 0 if it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

/// Peak resident set size of a process in KiB (`VmHWM`), 0 if it is gone.
pub fn peak_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:")
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Every record of `stream` in a data directory no process has open, shard
/// by shard (each shard's records in order), with its shard id; `None` when
/// the stream does not exist.
///
/// # Panics
/// When the store cannot be opened or read (the test then fails, as it must).
pub async fn read_stream_records(
    data_dir: &Path,
    stream: &str,
) -> Option<Vec<(String, weir_collector::store::StoredRecord)>> {
    use weir_collector::store::{LogStore, StoreConfig};
    if let Some(url) = test_store() {
        return read_all(&jetstream_store(&url, data_dir).await, stream).await;
    }
    let store = LogStore::open(data_dir, StoreConfig::default()).await.expect("open the store");
    read_all(&store, stream).await
}

/// Creates a stream the way a test collector on `data_dir` will find it: in
/// the embedded store of that (unused) data directory, or in the test
/// JetStream server under the directory's prefix.
///
/// # Panics
/// When the store cannot be opened or the stream created.
pub async fn create_stream_for(
    data_dir: &Path,
    name: &str,
    options: weir_collector::store::CreateStreamOptions,
    settings: weir_collector::store::StreamSettings,
) {
    use weir_collector::store::{LogStore, StoreConfig, StreamStore};
    if let Some(url) = test_store() {
        let store = jetstream_store(&url, data_dir).await;
        store.create_stream_with(name, options, settings).await.expect("create");
        store.close().await;
        return;
    }
    let store = LogStore::open(data_dir, StoreConfig::default()).await.expect("open the store");
    store.create_stream_with(name, options, settings).await.expect("create");
    store.close().await;
}

/// Whether `stream` of a *running* test collector on `data_dir` holds a
/// record yet: its stream directory has appeared (embedded store), or a read
/// through JetStream finds one.
pub async fn stream_has_data(data_dir: &Path, stream: &str) -> bool {
    match test_store() {
        Some(_) => read_stream_records(data_dir, stream).await.is_some_and(|r| !r.is_empty()),
        None => std::fs::read_dir(data_dir.join("streams")).is_ok_and(|mut d| d.next().is_some()),
    }
}

async fn jetstream_store(
    url: &str,
    data_dir: &Path,
) -> weir_collector::store::jetstream::JetStreamStore {
    let settings = weir_collector::store::jetstream::JetStreamSettings {
        prefix: store_prefix(data_dir),
        ..weir_collector::store::jetstream::JetStreamSettings::from_url(url)
            .expect("WEIR_TEST_NATS_URL")
    };
    weir_collector::store::jetstream::JetStreamStore::connect(settings)
        .await
        .expect("connect to JetStream")
}

async fn read_all<S: weir_collector::store::StreamStore>(
    store: &S,
    stream: &str,
) -> Option<Vec<(String, weir_collector::store::StoredRecord)>> {
    use weir_collector::store::{ReadLimits, StartingPosition};
    let Ok(desc) = store.describe_stream(stream).await else {
        store.close().await;
        return None;
    };
    let mut out = Vec::new();
    for shard in &desc.shards {
        let mut pos = store
            .position(stream, &shard.shard_id, StartingPosition::TrimHorizon)
            .await
            .expect("position");
        loop {
            let batch = store
                .read(stream, pos, ReadLimits { max_records: 10_000, max_bytes: 64 << 20 })
                .await
                .expect("read");
            if batch.records.is_empty() {
                break;
            }
            out.extend(batch.records.into_iter().map(|r| (shard.shard_id.clone(), r)));
            pos = batch.next;
        }
    }
    store.close().await;
    Some(out)
}

/// The store backend the tests run against: `None` for the embedded store,
/// or the JetStream server's URL when `WEIR_TEST_STORE=nats`
/// (`WEIR_TEST_NATS_URL`, default `nats://127.0.0.1:4222`). The test command
/// runs the Kinesis API and MQTT ingest tests once per backend.
pub fn test_store() -> Option<String> {
    match std::env::var("WEIR_TEST_STORE").as_deref() {
        Ok("nats") => Some(
            std::env::var("WEIR_TEST_NATS_URL")
                .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned()),
        ),
        _ => None,
    }
}

/// The JetStream name prefix of a test collector's data directory: the same
/// directory (a restarted collector) gets the same prefix, another one a
/// fresh namespace, so tests running at once never see each other's streams.
pub fn store_prefix(data_dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data_dir.hash(&mut h);
    format!("t{:016x}", h.finish())
}
