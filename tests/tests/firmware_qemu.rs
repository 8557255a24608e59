//! The QEMU board example (`firmware/boards/qemu-lm3s6965`) end to end on the
//! emulated lm3s6965evb: built for `thumbv7m-none-eabi`, booted in
//! `qemu-system-arm` with UART0 on a Unix socket, and the bytes it sends
//! decoded as the gateway will: serial frames with consecutive sequence
//! numbers, each a batch from the node holding plausible temperatures and a
//! health record every fourth tick.
//!
//! Needs `qemu-system-arm` and the `thumbv7m-none-eabi` target; `scripts/test`
//! installs both when they are missing.

use std::fs::File;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weir_wire::{Envelope, FeedResult, FrameDecoder, FrameKind, max_encoded_frame_len};

/// What the example is built to do (`src/main.rs` there).
const NODE_ID: &str = "qemu-lm3s6965";
const SAMPLES: u32 = 16;
const HEALTH_EVERY: u32 = 4;
/// Room for any frame the example sends (its envelopes are at most 320 bytes).
const LINE: usize = max_encoded_frame_len(1024);
/// The whole run (boot, 16 ticks, exit) takes well under a second in QEMU.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Builds the example in release (its size-tuned profile) under the
/// workspace's target directory; returns the ELF.
fn build_example() -> PathBuf {
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

/// Kills QEMU if the test ends early.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn qemu_board_example_sends_numbered_batches_over_uart0() {
    let elf = build_example();
    let tmp = tempfile::tempdir().expect("tempdir");
    let socket = tmp.path().join("uart0.sock");
    let log = tmp.path().join("qemu.log");
    let mut cmd = Command::new("qemu-system-arm");
    cmd.args(["-cpu", "cortex-m3", "-machine", "lm3s6965evb", "-nographic", "-monitor", "none"])
        .args(["-semihosting-config", "enable=on,target=native"])
        // wait=on: the guest starts only once the test is connected, so no
        // byte is sent to nobody.
        .arg("-serial")
        .arg(format!("unix:{},server=on,wait=on", socket.display()))
        .arg("-kernel")
        .arg(&elf)
        .stdin(Stdio::null())
        .stdout(File::create(&log).expect("qemu log"))
        .stderr(File::create(tmp.path().join("qemu.err")).expect("qemu stderr log"));
    let command_line = format!("{cmd:?}");
    let mut qemu = Qemu(cmd.spawn().expect("start qemu-system-arm (scripts/test installs it)"));
    let deadline = Instant::now() + RUN_TIMEOUT;
    let context = |log: &Path| {
        format!(
            "command: {command_line}\nstdout: {}\nstderr: {}",
            read_log(log),
            read_log(&log.with_file_name("qemu.err"))
        )
    };

    let mut stream = loop {
        match UnixStream::connect(&socket) {
            Ok(stream) => break stream,
            Err(e) => {
                if let Some(status) = qemu.0.try_wait().expect("poll qemu") {
                    panic!("qemu exited ({status}) before UART0 opened\n{}", context(&log));
                }
                assert!(
                    Instant::now() < deadline,
                    "UART0 socket never opened: {e}\n{}",
                    context(&log)
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };

    // QEMU closes the socket when the example exits through semihosting.
    let mut line = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "UART0 still open after {RUN_TIMEOUT:?}\n{}", context(&log));
        stream.set_read_timeout(Some(left)).expect("read timeout");
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => line.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading UART0: {e} after {} bytes\n{}", line.len(), context(&log)),
        }
    }
    let status = loop {
        if let Some(status) = qemu.0.try_wait().expect("poll qemu") {
            break status;
        }
        assert!(Instant::now() < deadline, "qemu still running\n{}", context(&log));
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "the example exited with {status}\n{}", context(&log));

    let mut decoder = FrameDecoder::<LINE>::new();
    let mut input = &line[..];
    let mut seqs = Vec::new();
    let mut temperatures = Vec::new();
    loop {
        let frame = match decoder.feed(input) {
            FeedResult::Consumed => break,
            FeedResult::Frame { frame, remaining } => {
                input = remaining;
                frame
            }
            FeedResult::Error { error, .. } => panic!("bad frame on UART0: {error}"),
        };
        assert_eq!(frame.kind, FrameKind::Data);
        let Ok(Envelope::Batch(batch)) = Envelope::decode(frame.payload) else {
            panic!("frame {} is not a batch envelope", frame.seq);
        };
        assert_eq!(batch.producer_id(), NODE_ID);
        assert_eq!(batch.batch_seq(), u64::from(frame.seq));
        let mut metrics = Vec::new();
        for record in batch.records() {
            let record = record.expect("record");
            assert_eq!(record.partition_key, NODE_ID);
            let data: serde_json::Value = serde_json::from_slice(record.data).expect("JSON data");
            let metric = data["metric"].as_str().expect("metric").to_owned();
            if metric == "temperature" {
                assert_eq!(data["sensor"], "tmp102");
                assert_eq!(data["unit"], "celsius");
                assert_eq!(data["uptime_ms"], u64::from(frame.seq) * 1_000);
                temperatures.push(data["value"].as_f64().expect("value"));
            }
            metrics.push(metric);
        }
        let expected: &[&str] = if frame.seq % HEALTH_EVERY == 0 {
            &["weir.health", "temperature"]
        } else {
            &["temperature"]
        };
        assert_eq!(metrics, expected, "records of frame {}", frame.seq);
        seqs.push(frame.seq);
    }

    assert_eq!(seqs, (0..SAMPLES).collect::<Vec<_>>(), "frame sequence numbers");
    assert!(
        temperatures.iter().all(|t| (20.0..30.0).contains(t)),
        "implausible temperatures: {temperatures:?}"
    );
    assert!(temperatures.windows(2).any(|w| w[0] != w[1]), "the temperature never changed");
}
