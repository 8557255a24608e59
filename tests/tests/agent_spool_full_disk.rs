//! The agent's spool on a full filesystem (issue 14), under `block` and
//! under `drop_oldest`: the spool directory is a small tmpfs the test mounts
//! (root only; otherwise the tests say why they skip), filled with a ballast
//! file, while the real agent tails a log that keeps growing and ships to a
//! real collector, which is stopped for a while so the spool must hold the
//! backlog.
//!
//! What must hold, and is checked: the agent reports the full disk in its
//! status (state `disk_full`, the last error, the free bytes) and does not
//! crash; it stops reading its input while the disk is full, and the file's
//! checkpoint is exactly at the last spooled line (never past a line that
//! is not in the spool); a restart on the full disk (SIGTERM under `block`,
//! `kill -9` under `drop_oldest`) finds no torn entry; once the ballast is
//! deleted it resumes by itself, and every line written arrives at the
//! collector exactly once (read back through the Kinesis API). A full disk
//! is not the spool's bound, so `drop_oldest` drops nothing for it.
//!
//! The two tests take the two ways a disk fills: under `drop_oldest` the
//! free-space reserve (`min_free_bytes`) refuses appends before anything is
//! written, the status file staying in the spool directory; under `block`
//! the reserve is off and writes fail with ENOSPC in the middle of an entry
//! (the status file is elsewhere: nothing can be written on that disk).

mod agent_support;
mod kinesis_support;

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use agent_support::{
    NOTICE_TIMEOUT, SHIP_TIMEOUT, collector, device_cert, file_input, status, stop,
};
use aws_sdk_kinesis::types::ShardIteratorType;
use weir_tests::harness::{Agent, Collector, binary, free_port};
use weir_tests::tmpfs::{Tmpfs, free_bytes};

/// Bytes of every log line (numbered, fixed width, newline included), so
/// a file offset says how many lines lie before it.
const LINE_LEN: u64 = 64;
/// The tmpfs holding the spool.
const TMPFS_SIZE: &str = "8m";
/// The most the input may read ahead of the spool while it is paused: the
/// channel's chunks, the batcher's open batch and one poll, far below this.
const READ_AHEAD_BOUND: u64 = 4 << 20;

fn line(n: u64) -> String {
    let head = format!("{n:010} ");
    format!("{head}{}\n", "x".repeat(LINE_LEN as usize - head.len() - 1))
}

fn parse(data: &[u8]) -> Option<u64> {
    std::str::from_utf8(data).ok()?.split(' ').next()?.parse().ok()
}

/// Fills `path` until `leave` bytes are free on its filesystem.
fn ballast(fs: &Tmpfs, path: &Path, leave: u64) {
    let mut f = std::fs::File::create(path).expect("ballast");
    let block = vec![0u8; 64 * 1024];
    let free = || free_bytes(fs.path());
    while free() > leave {
        let n = (free() - leave).min(block.len() as u64) as usize;
        f.write_all(&block[..n]).expect("write ballast");
        f.flush().expect("flush ballast");
    }
}

/// Appends numbered lines to a log until stopped.
struct Writer {
    written: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(path: &Path) -> Self {
        let written = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (w, st, path) = (written.clone(), stop.clone(), path.to_path_buf());
        let handle = std::thread::spawn(move || {
            let mut f =
                std::fs::OpenOptions::new().create(true).append(true).open(path).expect("log");
            while !st.load(Ordering::Relaxed) {
                let n = w.load(Ordering::Relaxed);
                let text: String = (n..n + 20).map(line).collect();
                f.write_all(text.as_bytes()).expect("write log");
                w.store(n + 20, Ordering::Relaxed);
                // Pacing only (about 4,000 lines a second); no check waits on it.
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self { written, stop, handle: Some(handle) }
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Stops writing; returns how many lines were written.
    fn finish(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().expect("writer thread");
        }
        self.written()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.finish();
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    /// `drop_oldest`, a 1 MiB reserve: refused before writing.
    DropOldestReserve,
    /// `block`, no reserve: ENOSPC in the middle of an entry.
    BlockEnospc,
}

#[test]
fn a_full_disk_under_drop_oldest_pauses_at_the_reserve_drops_nothing_and_resumes() {
    run(Case::DropOldestReserve);
}

#[test]
fn a_full_disk_under_block_survives_enospc_mid_entry_and_a_restart_and_resumes() {
    run(Case::BlockEnospc);
}

fn is_alive(agent: &mut Agent) -> bool {
    agent.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
}

fn failure(agent: &Agent, c: &Collector) -> String {
    format!("{}\n=== collector ===\n{}", agent.report(), c.report())
}

fn run(case: Case) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(fs) = Tmpfs::mount(&tmp.path().join("spool"), TMPFS_SIZE) else { return };
    let data_dir = tmp.path().join("data");
    let port = free_port();
    let mut c = collector(&data_dir, tmp.path(), port);
    let device = match case {
        Case::DropOldestReserve => "disk-drop",
        Case::BlockEnospc => "disk-block",
    };
    let (ca, cert, key) = device_cert(&data_dir, device, tmp.path());
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).expect("logs");
    let log = logs.join("app.log");
    let (policy, reserve, status_path) = match case {
        Case::DropOldestReserve => ("drop_oldest", 1u64 << 20, fs.path().join("status.json")),
        Case::BlockEnospc => ("block", 0, tmp.path().join("status.json")),
    };
    let config = tmp.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"device_id = "{device}"

[collector]
address = "mqtts://127.0.0.1:{port}"
reconnect_min_ms = 100
reconnect_max_ms = 1000

[collector.tls]
ca_file = {ca:?}
cert_file = {cert:?}
key_file = {key:?}
server_name = "localhost"

[spool]
dir = {spool:?}
max_bytes = 16777216
when_full = "{policy}"
min_free_bytes = {reserve}

[status]
file = {status_path:?}
interval_ms = 200

[batch]
max_bytes = 65536
linger_ms = 50

{input}"#,
            spool = fs.path(),
            input = file_input("app", &logs.join("*.log"), "disk"),
        ),
    )
    .expect("write agent.toml");
    let mut agent = Agent::new(&config, &status_path, fs.path(), tmp.path());
    // Room for the reserve and about 512 KiB of spool.
    ballast(&fs, &fs.path().join("ballast"), reserve + (512 << 10));

    // Phase 1: the collector is there, lines flow (the disk may be full off
    // and on, as acknowledgements free the spool's few segments).
    agent.start();
    let mut writer = Writer::start(&log);
    assert!(
        agent.wait_status(SHIP_TIMEOUT, |s| s["shipped"]["records"].as_u64() > Some(2_000)),
        "nothing flowed\n{}",
        failure(&agent, &c)
    );

    // Phase 2: the collector goes; the spool fills the disk and the agent
    // pauses reading, reporting it.
    stop(&mut c);
    let full = |s: &serde_json::Value| s["spool"]["state"] == "disk_full";
    assert!(
        agent.wait_status(NOTICE_TIMEOUT, |s| full(s)
            && s["spool"]["disk_full"]["since_ms"]
                .as_u64()
                .is_some_and(|t| s["updated_at_ms"].as_u64().unwrap_or(0) >= t + 2_000)),
        "no disk_full state lasting 2 s in the status\n{}",
        agent.report()
    );
    assert!(is_alive(&mut agent), "the agent died on a full disk\n{}", agent.report());
    let s = agent.status().expect("status");
    let path = log.to_string_lossy().into_owned();
    let spooled = status::spooled_offset(&s, 0, &path).expect("a checkpoint");
    let sp = &s["spool"];
    let message = sp["disk_full"]["last_error"]["message"].as_str().unwrap_or_default();
    match case {
        Case::DropOldestReserve => assert!(message.contains("min_free_bytes"), "{s:#}"),
        Case::BlockEnospc => assert!(message.contains("No space left"), "{s:#}"),
    }
    assert!(sp["disk_full"]["free_bytes"].as_u64().is_some(), "{s:#}");
    assert!(sp["free_bytes"].as_u64().is_some_and(|f| f < reserve + (512 << 10)), "{s:#}");
    assert_eq!(sp["min_free_bytes"].as_u64(), Some(reserve), "{s:#}");
    assert!(sp["disk_full_events"].as_u64() >= Some(1), "{s:#}");
    // The checkpoint is exactly at the last spooled line: this run started
    // at offset 0, and every record is one line.
    assert_eq!(
        spooled,
        s["spooled"]["records"].as_u64().unwrap_or(0) * LINE_LEN,
        "the checkpoint is not at the last spooled line\n{s:#}"
    );
    // Reading stays paused: the checkpoint does not move, the input reads
    // ahead a bounded amount only, while the log keeps growing.
    let written_then = writer.written();
    let updated = s["updated_at_ms"].as_u64().unwrap_or(0);
    assert!(
        agent.wait_status(NOTICE_TIMEOUT, |s| s["updated_at_ms"].as_u64() > Some(updated + 1_000)),
        "status not rewritten while the disk is full\n{}",
        agent.report()
    );
    let s2 = agent.status().expect("status");
    assert!(full(&s2), "{s2:#}");
    assert_eq!(status::spooled_offset(&s2, 0, &path), Some(spooled), "reading went on\n{s2:#}");
    let read = s2["inputs"][0]["files"][0]["read_offset"].as_u64().unwrap_or(0);
    assert!(read.saturating_sub(spooled) <= READ_AHEAD_BOUND, "read {read}, spooled {spooled}");
    assert!(writer.written() > written_then, "the writer stalled");
    assert_eq!(s2["spool"]["dropped_records"].as_u64(), Some(0), "{s2:#}");
    // `weir-agent status` says so.
    let out = Command::new(binary("weir-agent"))
        .arg("status")
        .arg("--file")
        .arg(&status_path)
        .output()
        .expect("weir-agent status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DISK FULL since"), "{text}");

    // Phase 3: a restart on the full disk.
    match case {
        Case::BlockEnospc => {
            let exit = agent.stop(Duration::from_secs(30));
            assert!(
                exit.is_some_and(|e| e.success()),
                "the agent did not stop cleanly on a full disk: {exit:?}\n{}",
                agent.report()
            );
        }
        Case::DropOldestReserve => agent.kill9(),
    }
    agent.start();
    agent.wait_running(NOTICE_TIMEOUT);
    assert!(
        agent.wait_status(NOTICE_TIMEOUT, full),
        "not disk_full after the restart\n{}",
        agent.report()
    );

    // Phase 4: the collector is back; the disk is still full, but what is
    // spooled is acknowledged and its segments go.
    let mut c = collector(&data_dir, tmp.path(), port);
    assert!(
        agent.wait_status(SHIP_TIMEOUT, |s| s["shipped"]["records"].as_u64() > Some(0)),
        "nothing shipped from the full disk\n{}",
        failure(&agent, &c)
    );

    // Phase 5: space returns: everything written arrives, once.
    std::fs::remove_file(fs.path().join("ballast")).expect("remove the ballast");
    assert!(
        agent.wait_status(NOTICE_TIMEOUT, |s| s["spool"]["state"] == "ok"),
        "the agent did not resume\n{}",
        failure(&agent, &c)
    );
    let total = writer.finish();
    let end = total * LINE_LEN;
    assert!(
        agent.wait_status(SHIP_TIMEOUT, |s| {
            status::spooled_offset(s, 0, &path) == Some(end)
                && status::drained(s)
                && s["spool"]["state"] == "ok"
        }),
        "the backlog of {total} lines did not drain\n{}",
        failure(&agent, &c)
    );
    let s = agent.status().expect("status");
    let sp = &s["spool"];
    assert!(sp["disk_full"].is_null(), "{s:#}");
    assert_eq!(sp["dropped_records"].as_u64(), Some(0), "a full disk is not the bound\n{s:#}");
    assert!(sp["disk_full_events"].as_u64() >= Some(1), "{s:#}");
    assert!(sp["disk_full_ms"].as_u64() > Some(0), "{s:#}");

    let got = read_back(&c, "disk");
    if let Err(e) = exactly_once(&got, total) {
        panic!("{e}\n{}", failure(&agent, &c));
    }
    assert!(agent.stop(Duration::from_secs(30)).is_some(), "agent did not stop");
    let agent_log = agent.log();
    assert!(
        !agent_log.contains("torn or corrupt"),
        "recovery met a torn entry the failed write should have cut back\n{agent_log}"
    );
    // Rate-limited: at most a line per 10 s (each run logs its first at
    // once), never one per attempt or record.
    let lines = agent_log.matches("the spool's filesystem is full").count();
    assert!((1..=12).contains(&lines), "{lines} disk-full log lines\n{agent_log}");
    stop(&mut c);
}

/// Every record of `stream`, through the Kinesis API: list the shards,
/// read each from TRIM_HORIZON to its end.
fn read_back(c: &Collector, stream: &str) -> Vec<Vec<u8>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let client = kinesis_support::sdk(c.http_addr());
    rt.block_on(async {
        let shards = client.list_shards().stream_name(stream).send().await.expect("ListShards");
        let mut out = Vec::new();
        for shard in shards.shards() {
            let it = kinesis_support::ops::iterator(
                &client,
                stream,
                shard.shard_id(),
                ShardIteratorType::TrimHorizon,
            )
            .await;
            let (records, _) = kinesis_support::ops::drain(&client, it, 10_000).await;
            out.extend(records.into_iter().map(|(_, data, _, _)| data));
        }
        out
    })
}

/// Lines `0..total` each once, in order.
fn exactly_once(got: &[Vec<u8>], total: u64) -> Result<(), String> {
    let numbers: Vec<u64> = got.iter().filter_map(|d| parse(d)).collect();
    if numbers.len() != got.len() {
        return Err(format!("{} records are not lines", got.len() - numbers.len()));
    }
    let mut seen = vec![0u32; total as usize];
    for &n in &numbers {
        match seen.get_mut(n as usize) {
            Some(s) => *s += 1,
            None => return Err(format!("line {n} was never written")),
        }
    }
    let missing: Vec<usize> = (0..seen.len()).filter(|&i| seen[i] == 0).collect();
    let doubled: Vec<usize> = (0..seen.len()).filter(|&i| seen[i] > 1).collect();
    let in_order = numbers.windows(2).all(|w| w[0] < w[1]);
    if missing.is_empty() && doubled.is_empty() && in_order {
        return Ok(());
    }
    Err(format!(
        "{} lines missing (first {:?}), {} duplicated (first {:?}), in order: {in_order}",
        missing.len(),
        &missing[..missing.len().min(10)],
        doubled.len(),
        &doubled[..doubled.len().min(10)]
    ))
}

#[test]
fn lines_are_fixed_width_and_parse_back() {
    assert_eq!(line(0).len() as u64, LINE_LEN);
    assert_eq!(line(9_999_999_999).len() as u64, LINE_LEN);
    assert_eq!(parse(line(42).as_bytes()), Some(42));
}
