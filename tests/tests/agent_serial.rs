//! The agent's `serial` input against a node the test plays on a Unix
//! socket: frames encoded with weir-wire, with corrupted frames (a flipped
//! byte: CRC mismatch), a truncated frame, garbage between delimiters, an
//! oversized frame and a retransmitted duplicate in between. The real
//! `weir-agent` ships to a real collector over mutual TLS; the records are
//! read back through the Kinesis API (the AWS SDK).
//!
//! Checks: the agent acks, on the same socket, the highest sequence number
//! spooled in order, holding the frames after a missing one until the node
//! sends it again (its retransmission after the ack timeout); exactly the
//! good frames' records arrive, once each, in sequence order and with the
//! node's partition key; the bad frames, duplicates and a frame the node no
//! longer had are counted in the status; after an agent restart, a frame
//! the node sends again (its ack was lost) is recognised from the spool's
//! checkpoint and not shipped twice.

mod agent_support;
mod firmware_support;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use agent_support::{AgentSetup, FAST_BATCH, SHIP_TIMEOUT, collector, device_cert, mqtts_addr};
use weir_tests::harness::{Agent, Collector};
use weir_wire::{
    FeedResult, FrameDecoder, FrameKind, OwnedBatch, OwnedRecord, encode_batch_to_vec,
    encode_frame, max_encoded_frame_len,
};

/// The node the test plays.
const PRODUCER: &str = "node-a@0000002a";
/// Its records' partition key.
const NODE_KEY: &str = "node-a";
const STREAM: &str = "serial";
/// The input's bound on frame payloads (the oversized frame is larger).
const MAX_FRAME_BYTES: usize = 1024;
/// How long the agent may take to connect, spool and ack.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Data frame `seq`: a batch of `seq % 3 + 1` JSON records `{"seq":..,"i":..}`.
fn data_frame(seq: u32) -> Vec<u8> {
    let records = (0..seq % 3 + 1)
        .map(|i| OwnedRecord {
            partition_key: NODE_KEY.into(),
            data: format!(r#"{{"seq":{seq},"i":{i}}}"#).into_bytes(),
            explicit_hash_key: None,
            producer_timestamp_ms: Some(1_767_225_600_000 + u64::from(seq)),
        })
        .collect();
    let batch = OwnedBatch { producer_id: PRODUCER.into(), batch_seq: u64::from(seq), records };
    frame(FrameKind::Data, seq, &encode_batch_to_vec(&batch).expect("encode batch"))
}

fn frame(kind: FrameKind, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; max_encoded_frame_len(payload.len())];
    let n = encode_frame(kind, seq, payload, &mut out).expect("encode frame");
    out.truncate(n);
    out
}

/// The (seq, i) of every record of the given good frames, in order.
fn expected(seqs: &[u32]) -> Vec<(u64, u64)> {
    seqs.iter().flat_map(|&s| (0..u64::from(s % 3 + 1)).map(move |i| (u64::from(s), i))).collect()
}

/// Accepts the agent's connection, waiting at most `timeout`.
fn accept(listener: &UnixListener, timeout: Duration, agent: &Agent) -> UnixStream {
    listener.set_nonblocking(true).expect("nonblocking listener");
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).expect("blocking stream");
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "the agent did not connect within {timeout:?}\n{}",
                    agent.report()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Reads ack frames from the agent until one carries `seq`; returns every
/// ack seen. Panics after [`ACK_TIMEOUT`].
fn wait_ack(stream: &mut UnixStream, seq: u32, agent: &Agent) -> Vec<u32> {
    let mut decoder = FrameDecoder::<64>::new();
    let mut acks = Vec::new();
    let deadline = Instant::now() + ACK_TIMEOUT;
    let mut buf = [0u8; 256];
    while !acks.contains(&seq) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no ack {seq} within {ACK_TIMEOUT:?} (got {acks:?})\n{}",
            agent.report()
        );
        stream.set_read_timeout(Some(left)).expect("read timeout");
        let n = match stream.read(&mut buf) {
            Ok(0) => panic!("the agent closed the line (acks {acks:?})\n{}", agent.report()),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => panic!("reading acks: {e}"),
        };
        let mut input = &buf[..n];
        loop {
            match decoder.feed(input) {
                FeedResult::Consumed => break,
                FeedResult::Frame { frame, remaining } => {
                    assert_eq!(frame.kind, FrameKind::Ack, "the agent sends only acks");
                    acks.push(frame.seq);
                    input = remaining;
                }
                FeedResult::Error { error, .. } => panic!("bad frame from the agent: {error}"),
            }
        }
    }
    acks
}

/// (seq, i) of the records read back, checking their key and that they are
/// JSON from this test.
fn read_back(http: std::net::SocketAddr) -> Vec<(u64, u64)> {
    firmware_support::read_kinesis(http, STREAM)
        .into_iter()
        .map(|(_, key, data)| {
            assert_eq!(key, NODE_KEY, "records keep the node's partition key");
            let v: serde_json::Value = serde_json::from_slice(&data).expect("JSON record");
            (v["seq"].as_u64().expect("seq"), v["i"].as_u64().expect("i"))
        })
        .collect()
}

fn http_addr(c: &Collector) -> std::net::SocketAddr {
    c.ready()["http"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no http address in the ready file\n{}", c.report()))
}

/// An agent with one serial input on `line` (`socket = ...` or `path = ...`).
fn write_agent(dir: &Path, data_dir: &Path, c: &Collector, line: &str) -> Agent {
    let (ca, cert, key) = device_cert(data_dir, "gw-serial", dir);
    let agent_dir = dir.join("agent");
    std::fs::create_dir_all(&agent_dir).expect("agent dir");
    AgentSetup {
        dir: agent_dir,
        device_id: "gw-serial".into(),
        address: mqtts_addr(c).to_string(),
        ca,
        identity: Some((cert, key)),
        spool: String::new(),
        extra: format!(
            "{FAST_BATCH}\n[[inputs]]\nkind = \"serial\"\nname = \"uart\"\n{line}\n\
             stream = \"{STREAM}\"\nmax_frame_bytes = {MAX_FRAME_BYTES}\n"
        ),
    }
    .write()
}

#[test]
fn bad_frames_are_skipped_and_counted_good_ones_shipped_once_and_acked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data_dir = tmp.path().join("data");
    let mut collector = collector(&data_dir, tmp.path(), 0);
    let http = http_addr(&collector);
    let socket = tmp.path().join("node.sock");
    let listener = UnixListener::bind(&socket).expect("bind the node's socket");
    let mut agent = write_agent(tmp.path(), &data_dir, &collector, &format!("socket = {socket:?}"));
    agent.start();
    let mut line = accept(&listener, ACK_TIMEOUT, &agent);

    // 0 good, 1 a flipped byte (CRC), 2 good, 3 cut short (its delimiter
    // arrives), garbage between two delimiters, 4 good, 5 over the size
    // bound, 6 and 7 good (7 split across two writes).
    let mut bytes = vec![0u8];
    bytes.extend(data_frame(0));
    let mut corrupt = data_frame(1);
    // Changed, and never to 0x00 (which would split it into two pieces).
    corrupt[6] = corrupt[6].wrapping_add(1).max(1);
    bytes.extend(corrupt);
    bytes.extend(data_frame(2));
    let cut = data_frame(3);
    bytes.extend(&cut[..cut.len() / 2]);
    bytes.push(0);
    bytes.extend([0x17, 0x42, 0x99, 0x00]);
    bytes.extend(data_frame(4));
    let big = OwnedBatch {
        producer_id: PRODUCER.into(),
        batch_seq: 5,
        records: vec![OwnedRecord::new(NODE_KEY, vec![b'x'; MAX_FRAME_BYTES + 100])],
    };
    let oversized = frame(FrameKind::Data, 5, &encode_batch_to_vec(&big).expect("encode"));
    bytes.extend(&oversized);
    bytes.extend(data_frame(6));
    let last = data_frame(7);
    bytes.extend(&last[..5]);
    line.write_all(&bytes).expect("write frames");
    line.flush().expect("flush");
    // Frames 1 and 3 are missing: the agent holds 2, 4, 5 and 6 (and has
    // the first bytes of 7) ...
    let held =
        |n: u64| move |s: &serde_json::Value| s["inputs"][0]["serial"]["nodes"][0]["held"] == n;
    assert!(agent.wait_status(ACK_TIMEOUT, held(4)), "frames not held\n{}", agent.report());
    // ... then the rest of 7 completes it; 0 is acknowledged, nothing after it.
    line.write_all(&last[5..]).expect("write the rest");
    assert!(agent.wait_status(ACK_TIMEOUT, held(5)), "frame 7 not held\n{}", agent.report());
    let acks = wait_ack(&mut line, 0, &agent);
    assert!(acks.iter().all(|&a| a == 0), "acked past the gap: {acks:?}");
    // The node's ack timeout: it sends everything unacknowledged again.
    let burst: Vec<u8> = std::iter::once(vec![0u8])
        .chain((1..=7).map(|seq| if seq == 5 { oversized.clone() } else { data_frame(seq) }))
        .flatten()
        .collect();
    line.write_all(&burst).expect("write the retransmission");
    let acks = [acks, wait_ack(&mut line, 7, &agent)].concat();
    assert!(acks.windows(2).all(|w| w[0] <= w[1]), "acks only move forward: {acks:?}");
    // A lost ack: the node sends 7 again and is answered at once.
    line.write_all(&data_frame(7)).expect("write frame 7 again");
    wait_ack(&mut line, 7, &agent);
    // Frame 8 is lost and the node no longer has it (its queue shed it):
    // 9 is held until the node's retransmission starts at 9.
    line.write_all(&data_frame(9)).expect("write frame 9");
    line.write_all(&data_frame(9)).expect("write frame 9 again");
    wait_ack(&mut line, 9, &agent);

    let good = [0, 1, 2, 3, 4, 6, 7, 9];
    let want = expected(&good);
    let counted = |s: &serde_json::Value| {
        let l = &s["inputs"][0]["serial"];
        s["shipped"]["records"].as_u64() == Some(want.len() as u64)
            && l["frames"] == 8
            && l["corrupt"] == 3
            && l["oversized"] == 1
            && l["duplicates"] == 7
            && l["missed"] == 1
            // The status file is rewritten every second: wait for the ack.
            && l["nodes"][0]["acked_seq"] == 9
    };
    assert!(
        agent.wait_status(SHIP_TIMEOUT, counted),
        "status does not show the frames shipped and counted\n{}",
        agent.report()
    );
    let status = agent.status().expect("status");
    let node = &status["inputs"][0]["serial"]["nodes"][0];
    assert_eq!(node["producer"], PRODUCER);
    assert_eq!((node["received_seq"].as_u64(), node["acked_seq"].as_u64()), (Some(9), Some(9)));
    assert_eq!(read_back(http), want, "exactly the good frames' records, in order");

    // The agent restarts; the node did not get the last ack and sends frame
    // 9 again, then 10. Frame 9 is known from the spool's checkpoint.
    assert!(
        agent.stop(Duration::from_secs(30)).is_some(),
        "agent did not stop\n{}",
        agent.report()
    );
    drop(line);
    agent.start();
    let mut line = accept(&listener, ACK_TIMEOUT, &agent);
    let again = [vec![0u8], data_frame(9), data_frame(10)].concat();
    line.write_all(&again).expect("write frames");
    wait_ack(&mut line, 10, &agent);
    let want = expected(&[0, 1, 2, 3, 4, 6, 7, 9, 10]);
    assert!(
        agent.wait_status(SHIP_TIMEOUT, |s| {
            s["inputs"][0]["serial"]["duplicates"] == 1
                && s["inputs"][0]["serial"]["frames"] == 1
                && s["pending_records"] == 0
                && s["spool"]["entries"] == 0
        }),
        "after the restart, frame 9 is not a duplicate or 10 is not shipped\n{}",
        agent.report()
    );
    assert_eq!(read_back(http), want, "no record twice after the restart");

    let text = std::process::Command::new(weir_tests::harness::binary("weir-agent"))
        .args(["status", "--config"])
        .arg(&agent.config_path)
        .output()
        .expect("weir-agent status");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("1 duplicates") && text.contains(&format!("node {PRODUCER}")), "{text}");

    assert!(
        agent.stop(Duration::from_secs(30)).is_some(),
        "agent did not stop\n{}",
        agent.report()
    );
    agent_support::stop(&mut collector);
}

/// The other kind of line: a tty. The test holds the master side of a
/// pseudo-terminal; the agent opens the slave as a serial device (raw, at
/// 115200 baud), takes the frames and acks on the same tty.
#[test]
fn a_pty_is_read_as_a_serial_device() {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    use std::os::unix::ffi::OsStringExt;

    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
    grantpt(&master).expect("grantpt");
    unlockpt(&master).expect("unlockpt");
    let slave = ptsname(&master, Vec::new()).expect("ptsname");
    let slave = std::path::PathBuf::from(std::ffi::OsString::from_vec(slave.into_bytes()));
    let mut master = std::fs::File::from(master);

    let tmp = tempfile::tempdir().expect("tempdir");
    let data_dir = tmp.path().join("data");
    let mut collector = collector(&data_dir, tmp.path(), 0);
    let http = http_addr(&collector);
    let line = format!("path = {slave:?}\nbaud = 115200");
    let mut agent = write_agent(tmp.path(), &data_dir, &collector, &line);
    agent.start();
    // Write only once the agent has made the tty raw (no echo, no line
    // editing of the frames' bytes).
    assert!(
        agent.wait_status(ACK_TIMEOUT, |s| s["inputs"][0]["serial"]["connected"] == true),
        "the agent did not open {}\n{}",
        slave.display(),
        agent.report()
    );

    // Acks come back on the master side; a thread decodes them.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut reader = master.try_clone().expect("clone the master");
    std::thread::spawn(move || {
        let mut decoder = FrameDecoder::<64>::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut input = &buf[..n];
            loop {
                match decoder.feed(input) {
                    FeedResult::Consumed => break,
                    FeedResult::Frame { frame, remaining } => {
                        if tx.send((frame.kind, frame.seq)).is_err() {
                            return;
                        }
                        input = remaining;
                    }
                    FeedResult::Error { remaining, .. } => input = remaining,
                }
            }
        }
    });

    let bytes = [vec![0u8], data_frame(0), data_frame(1), data_frame(2)].concat();
    master.write_all(&bytes).expect("write frames");
    let deadline = Instant::now() + ACK_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((FrameKind::Ack, 2)) => break,
            Ok((FrameKind::Ack, _)) => {}
            Ok(other) => panic!("the agent sent {other:?}"),
            Err(e) => panic!("no ack 2 on the tty: {e}\n{}", agent.report()),
        }
    }
    let want = expected(&[0, 1, 2]);
    assert!(
        agent.wait_status(SHIP_TIMEOUT, |s| s["shipped"]["records"].as_u64()
            == Some(want.len() as u64)),
        "the agent did not ship the tty's frames\n{}",
        agent.report()
    );
    assert_eq!(read_back(http), want);
    assert!(
        agent.stop(Duration::from_secs(30)).is_some(),
        "agent did not stop\n{}",
        agent.report()
    );
    agent_support::stop(&mut collector);
}
