//! The QEMU board example (`firmware/boards/qemu-lm3s6965`) end to end on the
//! emulated lm3s6965evb: built for `thumbv7m-none-eabi`, booted in
//! `qemu-system-arm` with UART0 on a Unix socket, and the bytes it sends
//! decoded as the gateway will: serial frames with consecutive sequence
//! numbers, each a batch from the node holding plausible temperatures and a
//! health record every fourth tick.
//!
//! Needs `qemu-system-arm` and the `thumbv7m-none-eabi` target; `scripts/test`
//! installs both when they are missing.

mod firmware_support;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use firmware_support::{HEALTH_EVERY, NODE_ID, Qemu, SAMPLES, build_example};
use weir_wire::{Envelope, FeedResult, FrameDecoder, FrameKind, max_encoded_frame_len};

/// Room for any frame the example sends (its envelopes are at most 320 bytes).
const LINE: usize = max_encoded_frame_len(1024);
/// The whole run (boot, 16 ticks, exit) takes about a second in QEMU.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn qemu_board_example_sends_numbered_batches_over_uart0() {
    let elf = build_example();
    let tmp = tempfile::tempdir().expect("tempdir");
    let socket = tmp.path().join("uart0.sock");
    let mut qemu = Qemu::start(&elf, &socket, tmp.path());
    let deadline = Instant::now() + RUN_TIMEOUT;

    let mut stream = loop {
        match UnixStream::connect(&socket) {
            Ok(stream) => break stream,
            Err(e) => {
                if let Some(status) = qemu.try_wait() {
                    panic!("qemu exited ({status}) before UART0 opened\n{}", qemu.context());
                }
                assert!(
                    Instant::now() < deadline,
                    "UART0 socket never opened: {e}\n{}",
                    qemu.context()
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
        assert!(!left.is_zero(), "UART0 still open after {RUN_TIMEOUT:?}\n{}", qemu.context());
        stream.set_read_timeout(Some(left)).expect("read timeout");
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => line.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading UART0: {e} after {} bytes\n{}", line.len(), qemu.context()),
        }
    }
    let status = qemu
        .wait_until(deadline)
        .unwrap_or_else(|| panic!("qemu still running\n{}", qemu.context()));
    assert!(status.success(), "the example exited with {status}\n{}", qemu.context());

    let mut decoder = FrameDecoder::<LINE>::new();
    let mut input = &line[..];
    let mut seqs = Vec::new();
    let mut temperatures = Vec::new();
    let mut first_producer: Option<String> = None;
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
        // `<node id>@<boot id>`: 8 lowercase hex digits, one per boot.
        let boot_id = batch.producer_id().strip_prefix(NODE_ID).and_then(|s| s.strip_prefix('@'));
        assert!(
            boot_id.is_some_and(|id| id.len() == 8
                && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))),
            "producer id {:?} is not <node id>@<boot id>",
            batch.producer_id()
        );
        let producer = first_producer.get_or_insert_with(|| batch.producer_id().to_owned());
        assert_eq!(batch.producer_id(), producer, "one producer id per boot");
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
