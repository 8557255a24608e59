//! Bad input and load: malformed packets (fuzzed bytes on raw sockets,
//! truncated frames, wrong protocol levels, 10 MiB length prefixes, protocol
//! violations) close only the offending connection, with the MQTT 5 reason
//! code and a log line; a thousand concurrent connections are served; a disk
//! slower than the clients makes the collector stop reading instead of
//! growing memory. Throughout, a well-behaved client is unaffected.

mod mqtt_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use mqtt_support::*;
use rand::{Rng, SeedableRng};
use rumqttc::v5::mqttbytes::v5::Packet as P5;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

/// Fuzzed connections in the malformed-input test.
const FUZZ_CONNECTIONS: usize = 400;
/// Connections held open at once in the load test.
const CONCURRENT_CONNECTIONS: usize = 1000;
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(120);

fn v4_connect(client_id: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    let mut c = rumqttc::Connect::new(client_id);
    c.keep_alive = 60;
    rumqttc::Packet::Connect(c).write(&mut b, 1 << 20).expect("encode");
    b.to_vec()
}

fn v5_connect(client_id: &str) -> Vec<u8> {
    use rumqttc::v5::mqttbytes::v5::Connect;
    let mut b = BytesMut::new();
    let c = Connect {
        keep_alive: 60,
        client_id: client_id.into(),
        clean_start: true,
        properties: None,
    };
    P5::Connect(c, None, None).write(&mut b, None).expect("encode");
    b.to_vec()
}

/// A CONNECT with another protocol name and level.
fn connect_with_level(name: &[u8], level: u8) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(name.len() as u16).to_be_bytes());
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, 0x02, 0x00, 0x3C, 0x00, 0x01, b'x']);
    let mut frame = vec![0x10, body.len() as u8];
    frame.extend(body);
    frame
}

/// Sends `bytes` after an MQTT 5 CONNECT and expects a DISCONNECT with
/// `reason`, then the close.
async fn expect_v5_disconnect(plain: std::net::SocketAddr, what: &str, bytes: &[u8], reason: u8) {
    let mut raw = Raw::connect_v5(plain, &format!("bad-{reason:x}")).await;
    raw.send_bytes(bytes).await;
    match raw.recv5().await {
        Some(P5::Disconnect(d)) => assert_eq!(d.reason_code as u8, reason, "{what}"),
        other => panic!("{what}: expected DISCONNECT {reason:#x}, got {other:?}"),
    }
    assert!(raw.closed().await, "{what}: connection not closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_closes_only_the_offending_connection() {
    let mut c = start(&[]);
    let plain = addr(&c, "mqtt");
    let healthy_msgs: Vec<Msg> = (0..3000)
        .map(|i| Msg::new(format!("weir/healthy/k{}", i % 10), 1, format!("{i}")))
        .collect();
    let healthy_conn = Conn::new(plain, Version::V5, "healthy");
    let healthy =
        tokio::spawn(async move { publish(&healthy_conn, healthy_msgs, PUBLISH_TIMEOUT).await });

    // Protocol levels this server does not speak: CONNACK 0x01, then close.
    for (name, level) in [(&b"MQIsdp"[..], 3), (b"MQTT", 6), (b"MQTT", 0)] {
        let mut raw = Raw::connect(plain).await;
        raw.send_bytes(&connect_with_level(name, level)).await;
        match raw.recv4().await {
            Some(rumqttc::Packet::ConnAck(a)) => {
                assert_eq!(
                    a.code,
                    rumqttc::ConnectReturnCode::RefusedProtocolVersion,
                    "level {level}"
                )
            }
            other => panic!("level {level}: expected CONNACK, got {other:?}"),
        }
        assert!(raw.closed().await, "level {level}: not closed");
    }
    // Not MQTT at all, and a first packet that is not CONNECT.
    for bytes in [&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], &[0x30, 0x03, 0x00, 0x01, b'a']] {
        let mut raw = Raw::connect(plain).await;
        raw.send_bytes(bytes).await;
        assert!(raw.closed().await, "{bytes:?}: not closed");
    }
    // A 10 MiB length prefix, before and after CONNECT.
    let huge = [0x30, 0x80, 0x80, 0x80, 0x05];
    let mut raw = Raw::connect(plain).await;
    raw.send_bytes(&huge).await;
    assert!(raw.closed().await, "huge first packet: not closed");
    let mut raw = Raw::connect_v4(plain, "huge-v4").await;
    raw.send_bytes(&huge).await;
    assert!(raw.closed().await, "huge packet (3.1.1): not closed");
    expect_v5_disconnect(plain, "10 MiB length prefix", &huge, 0x95).await;
    // Malformed frames and protocol violations after an MQTT 5 CONNECT.
    expect_v5_disconnect(plain, "QoS 3", &[0x36, 0x03, 0x00, 0x01, b'a'], 0x81).await;
    expect_v5_disconnect(plain, "packet type 0", &[0x00, 0x00], 0x81).await;
    expect_v5_disconnect(plain, "5-byte length", &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], 0x81).await;
    expect_v5_disconnect(
        plain,
        "topic past the frame",
        &[0x30, 0x04, 0x00, 0x09, b'a', b'b'],
        0x81,
    )
    .await;
    expect_v5_disconnect(
        plain,
        "topic not UTF-8",
        &[0x30, 0x06, 0x00, 0x02, 0xC3, 0x28, 0x00, b'x'],
        0x81,
    )
    .await;
    expect_v5_disconnect(plain, "second CONNECT", &v5_connect("again"), 0x82).await;
    expect_v5_disconnect(plain, "PUBACK from a client", &[0x40, 0x02, 0x00, 0x01], 0x82).await;
    // A frame cut short, then the client half-closes: the partial publish
    // is dropped, the connection closed.
    let mut raw = Raw::connect_v4(plain, "truncated").await;
    let mut full = BytesMut::new();
    publish4("weir/truncated/k", 1, 1, &[7u8; 200]).write(&mut full, 1 << 20).expect("encode");
    raw.send_bytes(&full[..full.len() / 2]).await;
    raw.stream.shutdown().await.expect("half-close");
    assert!(raw.closed().await, "truncated frame: not closed");

    // Fuzz: random bytes, or a valid CONNECT followed by random bytes or by
    // valid publishes with flipped bits, on many connections at once.
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED);
    let mut tasks = JoinSet::new();
    for i in 0..FUZZ_CONNECTIONS {
        let mut bytes = Vec::new();
        match i % 3 {
            0 => {}
            1 => bytes.extend(v4_connect(&format!("fuzz-{i}"))),
            _ => bytes.extend(v5_connect(&format!("fuzz-{i}"))),
        }
        if i % 2 == 0 {
            let n = rng.gen_range(1..600);
            bytes.extend((0..n).map(|_| rng.r#gen::<u8>()));
        } else {
            let mut frames = BytesMut::new();
            for j in 0..5u16 {
                publish4("weir/fuzz/k", (j % 3) as u8, j + 1, b"payload")
                    .write(&mut frames, 1 << 20)
                    .expect("encode");
            }
            let mut frames = frames.to_vec();
            for _ in 0..rng.gen_range(1..6) {
                let at = rng.gen_range(0..frames.len());
                frames[at] ^= 1 << rng.gen_range(0..8);
            }
            bytes.extend(frames);
        }
        tasks.spawn(async move {
            let mut raw = Raw::connect(plain).await;
            raw.send_bytes(&bytes).await;
            // Read whatever comes back for a moment, then go away.
            let _ = tokio::time::timeout(Duration::from_millis(200), raw.closed()).await;
        });
        if tasks.len() >= 50 {
            tasks.join_next().await;
        }
    }
    while tasks.join_next().await.is_some() {}

    let report = tokio::time::timeout(PUBLISH_TIMEOUT, healthy)
        .await
        .expect("healthy client")
        .expect("join");
    report.assert_all_ok();
    assert!(c.child.try_wait().expect("try_wait").is_none(), "the collector died\n{}", c.report());
    let rss = rss_kib(c.child.id());
    assert!(rss < 400 * 1024, "collector RSS {rss} KiB after the fuzz");
    let log = c.log();
    assert!(log.contains("closing connection: malformed packet"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    let records = stop_and_read(&mut c, "healthy").await.expect("healthy stream");
    assert_eq!(records.len(), 3000);
    assert!(read_stream(&c.data_dir, "truncated").await.is_none(), "a cut publish was appended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_connections_leave_other_clients_unaffected() {
    let mut c = start(&[]);
    let plain = addr(&c, "mqtt");
    let baseline = rss_kib(c.child.id());
    let mut tasks = JoinSet::new();
    let mut conns = Vec::with_capacity(CONCURRENT_CONNECTIONS);
    for i in 0..CONCURRENT_CONNECTIONS {
        tasks.spawn(async move { Raw::connect_v4(plain, &format!("many-{i}")).await });
        if tasks.len() >= 100 {
            conns.push(tasks.join_next().await.expect("task").expect("join"));
        }
    }
    while let Some(r) = tasks.join_next().await {
        conns.push(r.expect("join"));
    }
    assert_eq!(conns.len(), CONCURRENT_CONNECTIONS);
    // Another client works normally while all of them are connected.
    let msgs: Vec<Msg> = (0..2000)
        .map(|i| Msg::new(format!("weir/many/other-{}", i % 7), 1, format!("{i}")))
        .collect();
    let other = tokio::spawn(async move {
        publish(&Conn::new(plain, Version::V5, "other"), msgs, PUBLISH_TIMEOUT).await
    });
    // Every held connection publishes once and gets its acknowledgement.
    let mut tasks = JoinSet::new();
    for (i, mut raw) in conns.into_iter().enumerate() {
        tasks.spawn(async move {
            raw.send4(publish4(&format!("weir/many/conn-{i}"), 1, 1, b"hello")).await;
            let acked =
                matches!(raw.recv4().await, Some(rumqttc::Packet::PubAck(a)) if a.pkid == 1);
            (acked, raw)
        });
    }
    let mut held = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (acked, raw) = r.expect("join");
        assert!(acked, "a held connection was not acknowledged\n{}", c.report());
        held.push(raw);
    }
    let peak = rss_kib(c.child.id());
    other.await.expect("join").assert_all_ok();
    assert!(
        peak < baseline + 256 * 1024,
        "RSS grew from {baseline} KiB to {peak} KiB with {CONCURRENT_CONNECTIONS} connections"
    );
    eprintln!("RSS {baseline} KiB idle, {peak} KiB with {CONCURRENT_CONNECTIONS} connections");
    drop(held);
    let records = stop_and_read(&mut c, "many").await.expect("many");
    assert_eq!(records.len(), CONCURRENT_CONNECTIONS + 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_disk_makes_the_collector_stop_reading_not_grow() {
    // A small memory budget: 8 MiB of publishes in flight for all clients
    // together, against 8 clients each keeping 100 publishes of 256 KiB
    // (25 MiB) in flight, all fsync'd one by one.
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = config_file(
        tmp.path(),
        "[mqtt]\nmax_packet_bytes = 1114112\nmemory_budget_bytes = 8388608\n",
    );
    let c = start(&["--config", config.to_str().expect("utf-8 path"), "--fsync", "always"]);
    let plain = addr(&c, "mqtt");
    let pid = c.child.id();
    let baseline = rss_kib(pid);
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let payload = vec![0xABu8; 256 * 1024];
    let mut clients = JoinSet::new();
    for i in 0..8 {
        let msgs: Vec<Msg> = (0..64)
            .map(|j| {
                Msg::new(format!("weir/heavy/c{i}"), 1, {
                    let mut p = payload.clone();
                    p[0] = j as u8;
                    p
                })
            })
            .collect();
        clients.spawn(async move {
            publish(&Conn::new(plain, Version::V4, &format!("heavy-{i}")), msgs, PUBLISH_TIMEOUT)
                .await
        });
    }
    while let Some(r) = clients.join_next().await {
        r.expect("join").assert_all_ok();
    }
    done.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let peak = peak.load(Ordering::Relaxed);
    eprintln!("RSS {baseline} KiB idle, peak {peak} KiB while 128 MiB were published");
    assert!(
        peak < baseline + 96 * 1024,
        "RSS grew from {baseline} KiB to {peak} KiB: the budget did not hold the clients back"
    );
}
