//! Shared by the firmware tests: building the QEMU board example
//! (`firmware/boards/qemu-lm3s6965`) for `thumbv7m-none-eabi` and booting it
//! in `qemu-system-arm` with UART0 on a Unix socket.
//!
//! Needs `qemu-system-arm` and the `thumbv7m-none-eabi` target; `scripts/test`
//! installs both when they are missing.

// Each test uses its own part of this module.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What the example is built to do (`src/main.rs` there): its node id (the
/// partition key of its records, and the start of its producer id) ...
pub const NODE_ID: &str = "qemu-lm3s6965";
/// ... the ticks it samples ...
pub const SAMPLES: u32 = 16;
/// ... and a health record every this many ticks.
pub const HEALTH_EVERY: u32 = 4;

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Builds the example in release (its size-tuned profile) under the
/// workspace's target directory; returns the ELF.
pub fn build_example() -> PathBuf {
    let root = workspace_root();
    let board = root.join("firmware/boards/qemu-lm3s6965");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("firmware-boards");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--target-dir"])
        .arg(&target_dir)
        .current_dir(&board)
        // The board's `.cargo/config.toml` sets the target and the linker
        // script; flags from the outer build would replace them.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .expect("run cargo build for the board example");
    assert!(status.success(), "cargo build --release in {} failed: {status}", board.display());
    target_dir.join("thumbv7m-none-eabi/release/weir-board-qemu-lm3s6965")
}

/// A running QEMU, killed if the test ends early; its stdout (semihosting
/// output) and stderr go to files in `dir`.
pub struct Qemu {
    child: Child,
    dir: PathBuf,
    command_line: String,
}

impl Qemu {
    /// Boots `elf` on the lm3s6965evb with UART0 on the Unix socket `socket`
    /// (QEMU listens; `wait=on`: the guest starts only once a client is
    /// connected, so no byte is sent to nobody). Logs go to `dir`.
    pub fn start(elf: &Path, socket: &Path, dir: &Path) -> Self {
        let mut cmd = Command::new("qemu-system-arm");
        cmd.args(["-cpu", "cortex-m3", "-machine", "lm3s6965evb", "-nographic"])
            .args(["-monitor", "none"])
            .args(["-semihosting-config", "enable=on,target=native"])
            .arg("-serial")
            .arg(format!("unix:{},server=on,wait=on", socket.display()))
            .arg("-kernel")
            .arg(elf)
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("qemu.log")).expect("qemu log"))
            .stderr(File::create(dir.join("qemu.err")).expect("qemu stderr log"));
        let command_line = format!("{cmd:?}");
        let child = cmd.spawn().expect("start qemu-system-arm (scripts/test installs it)");
        Self { child, dir: dir.to_path_buf(), command_line }
    }

    /// Its exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("poll qemu")
    }

    /// Waits until `deadline` for it to exit.
    pub fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What the guest printed over semihosting.
    pub fn stdout(&self) -> String {
        read_log(&self.dir.join("qemu.log"))
    }

    /// The command line and both logs, for failure messages.
    pub fn context(&self) -> String {
        format!(
            "command: {}\nstdout: {}\nstderr: {}",
            self.command_line,
            self.stdout(),
            read_log(&self.dir.join("qemu.err"))
        )
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Every record of `stream` read back through the collector's Kinesis API at
/// `http` (the official AWS SDK): (shard, partition key, data), each shard's
/// records in order; empty if the stream does not exist yet.
pub fn read_kinesis(http: std::net::SocketAddr, stream: &str) -> Vec<(String, String, Vec<u8>)> {
    use aws_sdk_kinesis::config::retry::RetryConfig;
    use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
    use aws_sdk_kinesis::types::ShardIteratorType;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let conf = aws_sdk_kinesis::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(format!("http://{http}"))
            .credentials_provider(Credentials::new("weir", "weir", None, None, "weir-tests"))
            .http_client(aws_smithy_http_client::Builder::new().build_http())
            .retry_config(RetryConfig::disabled())
            .build();
        let client = aws_sdk_kinesis::Client::from_conf(conf);
        let Ok(desc) = client.describe_stream().stream_name(stream).send().await else {
            return Vec::new();
        };
        let shards: Vec<String> = desc
            .stream_description()
            .map(|d| d.shards().iter().map(|s| s.shard_id().to_owned()).collect())
            .unwrap_or_default();
        let mut out = Vec::new();
        for shard in shards {
            let mut it = client
                .get_shard_iterator()
                .stream_name(stream)
                .shard_id(&shard)
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await
                .expect("GetShardIterator")
                .shard_iterator()
                .expect("an iterator")
                .to_owned();
            loop {
                let r = client
                    .get_records()
                    .shard_iterator(&it)
                    .limit(1000)
                    .send()
                    .await
                    .expect("GetRecords");
                if r.records().is_empty() {
                    break;
                }
                for rec in r.records() {
                    out.push((
                        shard.clone(),
                        rec.partition_key().expect("partition key").to_owned(),
                        rec.data().as_ref().to_vec(),
                    ));
                }
                match r.next_shard_iterator() {
                    Some(next) => it = next.to_owned(),
                    None => break,
                }
            }
        }
        out
    })
}
