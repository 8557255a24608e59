//! NATS servers with JetStream for tests: one [`NatsServer`], or a
//! [`NatsCluster`] of several `nats-server` processes on loopback whose nodes
//! can be SIGKILLed and restarted on the same ports and store directories.
//!
//! Every server runs from a configuration file this module writes (nats-server
//! 2.9 syntax, the version Debian ships) into a fresh temp directory, with its
//! own JetStream store directory, free 127.0.0.1 ports for clients, routes and
//! HTTP monitoring (never 4222, the machine's shared server), and its log in a
//! file. Readiness is a condition polled on the monitoring port (`/healthz`,
//! `/jsz`) with a bounded timeout, never a guessed sleep. A server or cluster
//! dropped while its test panics prints its `report()` (command line,
//! configuration, log, store directory listing) to stderr, like the
//! collector's harness.
//!
//! The binary is `$NATS_SERVER`, else `nats-server` on `PATH`, else
//! `/usr/sbin/nats-server` (`apt-get install nats-server`).

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{free_port, http, walk};

/// How long a server or cluster may take to have JetStream ready (a meta
/// leader elected, every live peer current).
pub const NATS_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a server is started on fresh ports when one it was given was
/// taken in the meantime (ports are picked free, then bound by nats-server).
const START_ATTEMPTS: usize = 3;

/// JetStream limits of every test server: small enough that tests running in
/// parallel cannot fill the disk or the memory.
const MAX_FILE_STORE: &str = "2GB";
const MAX_MEMORY_STORE: &str = "256MB";

/// Name of the cluster every [`NatsCluster`] node joins.
const CLUSTER_NAME: &str = "weir-test";

/// The `nats-server` binary: `$NATS_SERVER`, else `nats-server` on `PATH`,
/// else `/usr/sbin/nats-server`.
///
/// # Panics
/// When none exists, with the command that installs it.
pub fn nats_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.exists(), "$NATS_SERVER is {}, which does not exist", p.display());
        return p;
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path).map(|d| d.join("nats-server")).find(|p| p.is_file())
    });
    if let Some(p) = on_path {
        return p;
    }
    let debian = PathBuf::from("/usr/sbin/nats-server");
    assert!(
        debian.exists(),
        "nats-server is missing (not $NATS_SERVER, not on PATH, not /usr/sbin/nats-server): \
         install it with `apt-get install nats-server` (scripts/test does)"
    );
    debian
}

/// One nats-server process: its ports, files and (while running) the child.
struct Node {
    server_name: String,
    client_port: u16,
    http_port: u16,
    /// Route port, for cluster nodes.
    cluster_port: Option<u16>,
    store_dir: PathBuf,
    config_path: PathBuf,
    /// Lines appended to the generated configuration (e.g. authorization).
    extra_config: String,
    log_path: PathBuf,
    child: Option<Child>,
    command_line: String,
}

impl Node {
    /// A node in `dir` (created) on fresh free ports, its configuration
    /// written, not started.
    fn new(dir: PathBuf, server_name: String, clustered: bool) -> Self {
        std::fs::create_dir_all(&dir).expect("nats node directory");
        let store_dir = dir.join("store");
        Self {
            server_name,
            client_port: free_port(),
            http_port: free_port(),
            cluster_port: clustered.then(free_port),
            config_path: dir.join("nats-server.conf"),
            extra_config: String::new(),
            log_path: dir.join("nats-server.log"),
            store_dir,
            child: None,
            command_line: String::new(),
        }
    }

    /// Writes the configuration: `routes` are the route ports of the other
    /// cluster nodes.
    fn write_config(&self, routes: &[u16]) {
        let store = self.store_dir.to_str().expect("store dir is UTF-8");
        assert!(!store.contains('"'), "store dir {store} contains a quote");
        let mut conf = format!(
            "server_name: \"{}\"\n\
             listen: \"127.0.0.1:{}\"\n\
             http: \"127.0.0.1:{}\"\n\
             jetstream {{\n  store_dir: \"{store}\"\n  max_file_store: {MAX_FILE_STORE}\n  \
             max_memory_store: {MAX_MEMORY_STORE}\n}}\n",
            self.server_name, self.client_port, self.http_port
        );
        if let Some(port) = self.cluster_port {
            let _ = write!(
                conf,
                "cluster {{\n  name: \"{CLUSTER_NAME}\"\n  listen: \"127.0.0.1:{port}\"\n  routes: [\n"
            );
            for r in routes {
                let _ = writeln!(conf, "    \"nats-route://127.0.0.1:{r}\"");
            }
            conf.push_str("  ]\n}\n");
        }
        conf.push_str(&self.extra_config);
        std::fs::write(&self.config_path, conf).expect("write nats-server.conf");
    }

    /// Starts the process, appending to the node's log (restarts accumulate
    /// in one file).
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} already running\n{}", self.server_name, self.report());
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("nats-server log file");
        let mut cmd = Command::new(nats_server_binary());
        cmd.arg("-c").arg(&self.config_path);
        cmd.stdin(Stdio::null()).stdout(log.try_clone().expect("log file handle")).stderr(log);
        self.command_line = format!("{cmd:?}");
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {}: {e}", self.command_line));
        self.child = Some(child);
    }

    /// SIGKILLs and reaps the process, if running.
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process is running; reaps it (and forgets it) if it exited.
    fn running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    fn monitor_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http_port))
    }

    /// `/healthz` answers `{"status":"ok"}`: JetStream is enabled and, in a
    /// cluster, current with the meta leader, its streams current.
    fn healthy(&self) -> bool {
        http(self.monitor_addr(), "GET", "/healthz")
            .is_some_and(|(status, body)| status == 200 && body.contains("\"ok\""))
    }

    /// `/jsz` with `query` (e.g. `accounts=true&streams=true`) as JSON.
    fn jsz(&self, query: &str) -> Option<serde_json::Value> {
        let (status, body) = http(self.monitor_addr(), "GET", &format!("/jsz?{query}"))?;
        if status != 200 {
            return None;
        }
        serde_json::from_str(&body).ok()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The process exited because a port it was given was taken.
    fn lost_a_port(&mut self) -> bool {
        !self.running() && self.log().contains("address already in use")
    }

    fn report(&self) -> String {
        let mut out = format!(
            "--- nats-server {} (client {}, monitor {}, route {:?}, {}) ---\ncommand: {}\n\
             --- config ---\n{}\n--- log ---\n{}\n--- store dir ---\n",
            self.server_name,
            self.client_port,
            self.http_port,
            self.cluster_port,
            if self.child.is_some() { "started" } else { "not running" },
            self.command_line,
            std::fs::read_to_string(&self.config_path).unwrap_or_default(),
            self.log()
        );
        for entry in walk(&self.store_dir) {
            let _ = writeln!(out, "{entry}");
        }
        out
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One nats-server with JetStream on a free loopback port, its store in a
/// temp directory; killed when dropped.
pub struct NatsServer {
    node: Node,
    _tmp: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server and waits until JetStream answers.
    ///
    /// # Panics
    /// When nats-server is missing or JetStream is not ready within
    /// [`NATS_READY_TIMEOUT`], with the server's report.
    pub fn start() -> Self {
        Self::start_with_config("")
    }

    /// Starts a server whose configuration also has `extra` (nats-server
    /// configuration syntax, e.g. `authorization { user: u, password: p }`).
    ///
    /// # Panics
    /// As [`Self::start`].
    pub fn start_with_config(extra: &str) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        for attempt in 1..=START_ATTEMPTS {
            let mut node = Node::new(tmp.path().join(format!("try{attempt}")), "n0".into(), false);
            node.extra_config = format!("{extra}\n");
            node.write_config(&[]);
            node.spawn();
            let deadline = Instant::now() + NATS_READY_TIMEOUT;
            loop {
                if node.healthy() && node.jsz("").is_some_and(|j| j["config"].is_object()) {
                    return Self { node, _tmp: tmp };
                }
                if node.lost_a_port() && attempt < START_ATTEMPTS {
                    break;
                }
                if !node.running() || Instant::now() >= deadline {
                    panic!(
                        "nats-server: JetStream not ready within {NATS_READY_TIMEOUT:?}\n{}",
                        node.report()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.node.client_port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.node.client_port
    }

    /// The HTTP monitoring address (`/healthz`, `/jsz`, `/varz`).
    pub fn monitor_addr(&self) -> SocketAddr {
        self.node.monitor_addr()
    }

    /// `/jsz?<query>` as JSON, `None` if the server does not answer.
    pub fn jsz(&self, query: &str) -> Option<serde_json::Value> {
        self.node.jsz(query)
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> &Path {
        &self.node.store_dir
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.node.log()
    }

    /// Command line, configuration, log and store listing, for failures.
    pub fn report(&self) -> String {
        self.node.report()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- nats-server (test failed) ---\n{}", self.node.report());
        }
        self.node.kill9();
    }
}

/// A JetStream cluster of nats-server processes on loopback, each with its
/// own client, route and monitoring ports and store directory, routes to
/// every other node, distinct server names (`n0`, `n1`, ...). Nodes can be
/// SIGKILLed and restarted on the same ports and store; all are killed when
/// the cluster is dropped.
pub struct NatsCluster {
    nodes: Vec<Node>,
    _tmp: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `n` nodes (3 is the usual size: one may fail and a quorum
    /// remains) and waits until the cluster is ready ([`Self::wait_ready`]).
    ///
    /// # Panics
    /// When `n` is 0, nats-server is missing or the cluster is not ready
    /// within [`NATS_READY_TIMEOUT`], with every node's report.
    pub fn start(n: usize) -> Self {
        assert!(n > 0, "a cluster needs at least one node");
        let tmp = tempfile::tempdir().expect("tempdir");
        for attempt in 1..=START_ATTEMPTS {
            let mut nodes: Vec<Node> = (0..n)
                .map(|i| {
                    let dir = tmp.path().join(format!("try{attempt}/n{i}"));
                    Node::new(dir, format!("n{i}"), true)
                })
                .collect();
            let routes: Vec<u16> = nodes.iter().filter_map(|n| n.cluster_port).collect();
            for (i, node) in nodes.iter().enumerate() {
                let others: Vec<u16> =
                    routes.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, p)| *p).collect();
                node.write_config(&others);
            }
            for node in &mut nodes {
                node.spawn();
            }
            match wait_cluster_ready(&mut nodes, NATS_READY_TIMEOUT) {
                Ok(()) => return Self { nodes, _tmp: tmp },
                // A port picked free was bound by someone else before the
                // node bound it: start all nodes again on fresh ports.
                Err(_) if attempt < START_ATTEMPTS && nodes.iter_mut().any(Node::lost_a_port) => {}
                Err(why) => panic!("{why}\n{}", report(&nodes)),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// The number of nodes (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes (never: [`Self::start`] refuses 0).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node's client URL, comma-joined
    /// (`nats://127.0.0.1:p1,nats://127.0.0.1:p2,...`), as `--store` takes it.
    pub fn urls(&self) -> String {
        (0..self.nodes.len()).map(|i| self.url(i)).collect::<Vec<_>>().join(",")
    }

    /// Node `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// Node `i`'s client port.
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].client_port
    }

    /// Node `i`'s server name (`n<i>`), as JetStream names its peers.
    pub fn server_name(&self, i: usize) -> &str {
        &self.nodes[i].server_name
    }

    /// Node `i`'s HTTP monitoring address.
    pub fn monitor_addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].monitor_addr()
    }

    /// Node `i`'s JetStream store directory.
    pub fn store_dir(&self, i: usize) -> &Path {
        &self.nodes[i].store_dir
    }

    /// Whether node `i`'s process is running.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.nodes[i].running()
    }

    /// SIGKILLs node `i` (no shutdown, no flush) and reaps it.
    ///
    /// # Panics
    /// When node `i` is not running.
    pub fn kill9(&mut self, i: usize) {
        assert!(self.nodes[i].running(), "node {i} is not running\n{}", self.report());
        self.nodes[i].kill9();
    }

    /// Starts node `i` again, on the same ports, configuration and store
    /// directory; returns without waiting (see [`Self::wait_ready`]).
    ///
    /// # Panics
    /// When node `i` is running.
    pub fn restart(&mut self, i: usize) {
        assert!(!self.nodes[i].running(), "node {i} is still running\n{}", self.report());
        self.nodes[i].spawn();
    }

    /// Waits until every running node answers `/healthz` (JetStream current
    /// with the meta leader, its streams current), all agree on a meta leader
    /// that is one of them, and the leader sees every other running node as a
    /// current peer. A killed node is left out; without a quorum this times
    /// out.
    ///
    /// # Panics
    /// When that does not hold within [`NATS_READY_TIMEOUT`], with every
    /// node's report and the last reason.
    pub fn wait_ready(&mut self) {
        if let Err(why) = wait_cluster_ready(&mut self.nodes, NATS_READY_TIMEOUT) {
            panic!("{why}\n{}", self.report());
        }
    }

    /// The meta leader's server name as running nodes agree on it, if they do.
    pub fn meta_leader(&mut self) -> Option<String> {
        meta_leader(&mut self.nodes).ok()
    }

    /// Node `i`'s `/jsz?<query>` as JSON, `None` if it does not answer.
    pub fn jsz(&self, i: usize, query: &str) -> Option<serde_json::Value> {
        self.nodes[i].jsz(query)
    }

    /// What node `i` reports of stream `name` in the default account (`/jsz`
    /// stream detail: `state` with `messages`, `first_seq`, `last_seq`, and
    /// `cluster` with `leader` and `replicas`), if it holds a replica.
    pub fn stream_detail(&self, i: usize, name: &str) -> Option<serde_json::Value> {
        let jsz = self.jsz(i, "accounts=true&streams=true")?;
        jsz["account_details"].as_array()?.iter().find_map(|account| {
            account["stream_detail"].as_array()?.iter().find(|s| s["name"] == name).cloned()
        })
    }

    /// Every node's report (command line, configuration, log, store).
    pub fn report(&self) -> String {
        report(&self.nodes)
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- nats cluster (test failed) ---\n{}", self.report());
        }
        for node in &mut self.nodes {
            node.kill9();
        }
    }
}

fn report(nodes: &[Node]) -> String {
    nodes.iter().map(Node::report).collect::<Vec<_>>().join("\n")
}

/// The meta leader the running nodes agree on, or why there is none.
fn meta_leader(nodes: &mut [Node]) -> Result<String, String> {
    let mut leader: Option<String> = None;
    let mut live = Vec::new();
    for node in nodes.iter_mut() {
        if !node.running() {
            continue;
        }
        live.push(node.server_name.clone());
        let jsz = node.jsz("").ok_or(format!("{}: /jsz does not answer", node.server_name))?;
        let name = jsz["meta_cluster"]["leader"].as_str().unwrap_or_default().to_owned();
        if name.is_empty() {
            return Err(format!("{}: no meta leader", node.server_name));
        }
        match &leader {
            Some(l) if *l != name => {
                return Err(format!("nodes disagree on the meta leader: {l} and {name}"));
            }
            _ => leader = Some(name),
        }
    }
    let leader = leader.ok_or("no node is running")?;
    if !live.contains(&leader) {
        return Err(format!("meta leader {leader} is not running (not re-elected yet)"));
    }
    Ok(leader)
}

/// One check of [`NatsCluster::wait_ready`]'s condition.
fn cluster_ready(nodes: &mut [Node]) -> Result<(), String> {
    for node in nodes.iter_mut() {
        if node.child.is_some() && !node.running() {
            return Err(format!("{} exited", node.server_name));
        }
    }
    for node in nodes.iter().filter(|n| n.child.is_some()) {
        if !node.healthy() {
            return Err(format!("{}: /healthz is not ok", node.server_name));
        }
    }
    let leader = meta_leader(nodes)?;
    let leader_node = nodes.iter().find(|n| n.server_name == leader).ok_or("leader not a node")?;
    let jsz = leader_node.jsz("").ok_or(format!("{leader}: /jsz does not answer"))?;
    let replicas = jsz["meta_cluster"]["replicas"].as_array().cloned().unwrap_or_default();
    for node in nodes.iter().filter(|n| n.child.is_some() && n.server_name != leader) {
        let current =
            replicas.iter().any(|r| r["name"] == node.server_name.as_str() && r["current"] == true);
        if !current {
            return Err(format!(
                "meta leader {leader} does not see {} as current",
                node.server_name
            ));
        }
    }
    Ok(())
}

/// Polls [`cluster_ready`] until it holds or `timeout` passes (then the last
/// reason); stops early when a node exits.
fn wait_cluster_ready(nodes: &mut [Node], timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let why = match cluster_ready(nodes) {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        if why.ends_with(" exited") {
            return Err(format!("nats cluster: {why}"));
        }
        if Instant::now() >= deadline {
            return Err(format!("nats cluster not ready within {timeout:?}: {why}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
