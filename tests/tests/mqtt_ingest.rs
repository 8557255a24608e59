//! MQTT ingest end to end: rumqttc clients (3.1.1 and 5) over plain TCP, TLS
//! with a password and mutual TLS with a device certificate publish at QoS
//! 0, 1 and 2; the records are then read back from the stopped collector's
//! data directory and must be in the right stream and shard, with the right
//! key and data, in order per key. Also: wire-format batches, mapping rules,
//! refusals with MQTT 5 reason codes, QoS 2 de-duplication, topic aliases,
//! session takeover and shutdown.

mod mqtt_support;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use mqtt_support::*;
use rumqttc::v5::mqttbytes::v5::{Packet as P5, PublishProperties};
use weir_collector::store::CreateStreamOptions;
use weir_tests::harness::{Collector, binary};
use weir_wire::{OwnedBatch, OwnedRecord, encode_batch_to_vec};

const PUBLISH_TIMEOUT: Duration = Duration::from_secs(60);

fn issue_device(c: &Collector, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let out = Command::new(binary("weir-collector"))
        .args(["certs", "issue-device", name, "--data-dir"])
        .arg(&c.data_dir)
        .output()
        .expect("run certs issue-device");
    assert!(out.status.success(), "issue-device: {}", String::from_utf8_lossy(&out.stderr));
    let dir = c.data_dir.join("tls/devices");
    (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_kind_lands_records_in_the_right_stream_and_shard() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hash = weir_collector::ingest::hash_password("gw-secret").expect("hash");
    let config = config_file(
        tmp.path(),
        &format!(
            "[mqtt]\nauto_create_shards = 4\n\n[[mqtt.users]]\nname = \"gateway\"\npassword_hash = \"{hash}\"\n"
        ),
    );
    let mut c = start(&["--config", config.to_str().expect("utf-8 path")]);
    let (cert, key) = issue_device(&c, "dev-m");
    let ca = ca(&c);
    let (plain, secure) = (addr(&c, "mqtt"), addr(&c, "mqtts"));
    let server_only = tls(&ca, None);
    let mutual = tls(&ca, Some((&cert, &key)));
    let clients = [
        ("v4-plain", Conn::new(plain, Version::V4, "v4-plain")),
        ("v5-plain", Conn::new(plain, Version::V5, "v5-plain")),
        (
            "v4-tls",
            Conn::new(secure, Version::V4, "v4-tls")
                .with_tls(server_only.clone())
                .with_login("gateway", "gw-secret"),
        ),
        (
            "v5-tls",
            Conn::new(secure, Version::V5, "v5-tls")
                .with_tls(server_only)
                .with_login("gateway", "gw-secret"),
        ),
        ("v4-mtls", Conn::new(secure, Version::V4, "dev-m").with_tls(mutual.clone())),
        ("v5-mtls", Conn::new(secure, Version::V5, "dev-m").with_tls(mutual)),
    ];
    const PER_CLIENT: usize = 60;
    let mut expected: HashMap<(String, String), usize> = HashMap::new();
    for (name, conn) in &clients {
        let msgs: Vec<Msg> = (0..PER_CLIENT)
            .map(|i| {
                let key = format!("{name}-{}", i % 7);
                *expected.entry((key.clone(), format!("{name}:{i}"))).or_default() += 1;
                Msg::new(format!("weir/telemetry/{key}"), (i % 3) as u8, format!("{name}:{i}"))
            })
            .collect();
        let report = publish(conn, msgs, PUBLISH_TIMEOUT).await;
        assert_eq!(report.connack, Some(0), "{name}: {report:?}\n{}", c.report());
        report.assert_all_ok();
    }
    let records = stop_and_read(&mut c, "telemetry").await.expect("stream auto-created");
    assert_eq!(records.len(), clients.len() * PER_CLIENT, "{}", c.report());
    let mut last_index: HashMap<String, usize> = HashMap::new();
    for r in &records {
        let key = r.record.partition_key.to_string();
        let data = String::from_utf8(r.record.data.to_vec()).expect("utf-8 data");
        let n = expected.get_mut(&(key.clone(), data.clone()));
        assert!(n.is_some_and(|n| std::mem::take(n) == 1), "unexpected or duplicate {key} {data}");
        assert_eq!(r.shard, shard_of(&key, 4), "{key} in the wrong shard");
        let i: usize = data.rsplit(':').next().and_then(|i| i.parse().ok()).expect("index");
        if let Some(prev) = last_index.insert(key.clone(), i) {
            assert!(prev < i, "{key}: {prev} stored before {i}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_keep_their_keys_and_rules_map_other_layouts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = config_file(
        tmp.path(),
        r#"
[[mqtt.rules]]
filter = "tele/+/SENSOR"
stream = "tasmota"
partition_key = "topic(2)"

[[mqtt.rules]]
filter = "gw/+/up"
stream = "topic(2)"
partition_key = "client_id"

[[mqtt.rules]]
filter = "fw/batch"
stream = "firmware"
payload = "batch"
"#,
    );
    let mut c = start(&["--config", config.to_str().expect("utf-8 path")]);
    let plain = addr(&c, "mqtt");
    let batch = OwnedBatch {
        producer_id: "agent-1".into(),
        batch_seq: 1,
        records: (0..100)
            .map(|i| {
                let mut r =
                    OwnedRecord::new(format!("host-{}", i % 5), format!("line {i}").into_bytes());
                if i == 7 {
                    r.explicit_hash_key = Some(42);
                    r.producer_timestamp_ms = Some(1_700_000_000_000);
                }
                r
            })
            .collect(),
    };
    let batch_bytes = encode_batch_to_vec(&batch).expect("encode batch");
    let firmware = encode_batch_to_vec(&OwnedBatch {
        producer_id: "mcu-9".into(),
        batch_seq: 3,
        records: vec![OwnedRecord::new("sensor-a", b"21.5C".to_vec())],
    })
    .expect("encode batch");
    let single = weir_wire::encode_record_to_vec(&weir_wire::Record::new("one", b"single record"))
        .expect("encode record");
    let msgs = vec![
        Msg::new("tele/plug-3/SENSOR", 1, r#"{"Power":12}"#),
        Msg::new("gw/site-a/up", 1, "uplink"),
        Msg::new("fw/batch", 1, firmware),
        Msg::new("weir/agents/$batch", 1, batch_bytes.clone()),
        // The same batch again (a lost acknowledgement): kept once.
        Msg::new("weir/agents/$batch", 1, batch_bytes),
        Msg::new("weir/agents/$batch", 2, single),
    ];
    let report = publish(&Conn::new(plain, Version::V5, "gw-7"), msgs, PUBLISH_TIMEOUT).await;
    report.assert_all_ok();
    c.signal("TERM");
    assert!(c.wait_exit(Duration::from_secs(30)).is_some(), "{}", c.report());
    let read = |s: &'static str| read_stream(&c.data_dir, s);
    let tasmota = read("tasmota").await.expect("tasmota");
    assert_eq!(tasmota.len(), 1);
    assert_eq!(tasmota[0].record.partition_key, "plug-3");
    assert_eq!(&tasmota[0].record.data[..], br#"{"Power":12}"#);
    let site = read("site-a").await.expect("site-a");
    assert_eq!(
        (&*site[0].record.partition_key, &site[0].record.data[..]),
        ("gw-7", &b"uplink"[..])
    );
    let fw = read("firmware").await.expect("firmware");
    assert_eq!((&*fw[0].record.partition_key, &fw[0].record.data[..]), ("sensor-a", &b"21.5C"[..]));
    let agents = read("agents").await.expect("agents");
    assert_eq!(agents.len(), 101, "the re-sent batch is not appended twice");
    let mut by_data: HashMap<Vec<u8>, &Read> = HashMap::new();
    for r in &agents {
        assert!(by_data.insert(r.record.data.to_vec(), r).is_none(), "duplicate record");
    }
    let seventh = by_data[&b"line 7".to_vec()];
    assert_eq!(seventh.record.partition_key, "host-2");
    assert_eq!(seventh.record.explicit_hash_key, Some(42));
    assert_eq!(seventh.record.producer_timestamp_ms, Some(1_700_000_000_000));
    assert_eq!(by_data[&b"single record".to_vec()].record.partition_key, "one");
    // Per key, batch order is kept.
    let mut last: HashMap<&str, usize> = HashMap::new();
    for r in agents.iter().filter(|r| r.record.data.starts_with(b"line ")) {
        let i: usize = std::str::from_utf8(&r.record.data[5..]).expect("utf-8").parse().expect("n");
        if let Some(prev) = last.insert(&*r.record.partition_key, i) {
            assert!(prev < i);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_get_reason_codes_in_v5_and_close_v311_connections() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    weir_tests::harness::create_stream_for(
        &data,
        "known",
        CreateStreamOptions::default(),
        Default::default(),
    )
    .await;
    let config = config_file(tmp.path(), "[mqtt]\nauto_create_streams = false\n");
    let mut c = start_in(&data, tmp.path(), &["--config", config.to_str().expect("utf-8 path")]);
    let plain = addr(&c, "mqtt");
    let long_key = "k".repeat(300);
    let msgs = vec![
        Msg::new("weir/known/k1", 1, "ok1"),
        Msg::new("weir/unknown/k", 1, "no such stream"),
        Msg::new(format!("weir/known/{long_key}"), 1, "key too long"),
        Msg::new("weir/known/k2", 1, vec![0u8; 1024 * 1024 + 1]),
        Msg::new("weir/known/$batch", 1, "not an envelope"),
        Msg::new("elsewhere/x", 1, "no rule"),
        Msg::new("weir/known/k3", 2, "ok2"),
    ];
    let report = publish(&Conn::new(plain, Version::V5, "v5"), msgs, PUBLISH_TIMEOUT).await;
    assert_eq!(
        report.acks,
        vec![
            Ack::Ok,
            Ack::Refused(0x90),
            Ack::Refused(0x90),
            Ack::Refused(0x99),
            Ack::Refused(0x99),
            Ack::Refused(0x90),
            Ack::Ok
        ],
        "{report:?}\n{}",
        c.report()
    );
    assert_eq!(report.error, None, "the v5 connection stays open");

    // The acknowledgement of k4 may be written just before the close, and
    // rumqttc drops what it read with the end of the stream: only the store
    // can tell that k4 was appended.
    let msgs = vec![Msg::new("weir/known/k4", 1, "ok3"), Msg::new("weir/unknown/k", 1, "refused")];
    let report = publish(&Conn::new(plain, Version::V4, "v4"), msgs, PUBLISH_TIMEOUT).await;
    assert_ne!(report.acks[1], Ack::Ok, "{report:?}");
    assert!(report.error.is_some(), "a 3.1.1 client is disconnected: {report:?}");
    assert!(c.log().contains("closing connection: publish refused"), "{}", c.log());

    let records = stop_and_read(&mut c, "known").await.expect("known");
    let stored: Vec<(&str, &[u8])> =
        records.iter().map(|r| (&*r.record.partition_key, &r.record.data[..])).collect();
    assert_eq!(stored, vec![("k1", &b"ok1"[..]), ("k3", b"ok2"), ("k4", b"ok3")]);
    assert!(read_stream(&c.data_dir, "unknown").await.is_none(), "no stream was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_duplicates_are_appended_once_also_across_a_persistent_session() {
    let mut c = start(&[]);
    let plain = addr(&c, "mqtt");
    let mut raw = Raw::connect_v4(plain, "q2").await;
    raw.send4(publish4("weir/q2/k", 2, 7, b"once")).await;
    assert!(matches!(raw.recv4().await, Some(rumqttc::Packet::PubRec(r)) if r.pkid == 7));
    let mut again = rumqttc::Publish::new("weir/q2/k", rumqttc::QoS::ExactlyOnce, b"once".to_vec());
    again.pkid = 7;
    again.dup = true;
    raw.send4(rumqttc::Packet::Publish(again)).await;
    assert!(matches!(raw.recv4().await, Some(rumqttc::Packet::PubRec(r)) if r.pkid == 7));
    raw.send4(rumqttc::Packet::PubRel(rumqttc::PubRel::new(7))).await;
    assert!(matches!(raw.recv4().await, Some(rumqttc::Packet::PubComp(r)) if r.pkid == 7));
    // After release the id is free: a new message with it is a new record.
    raw.send4(publish4("weir/q2/k", 2, 7, b"twice")).await;
    assert!(matches!(raw.recv4().await, Some(rumqttc::Packet::PubRec(r)) if r.pkid == 7));
    raw.send4(rumqttc::Packet::PubRel(rumqttc::PubRel::new(7))).await;
    assert!(matches!(raw.recv4().await, Some(rumqttc::Packet::PubComp(r)) if r.pkid == 7));
    drop(raw);

    // A persistent session keeps the QoS 2 state across a reconnect.
    let persistent = |clean: bool| {
        let mut connect = rumqttc::Connect::new("q2-persistent");
        connect.keep_alive = 60;
        connect.clean_session = clean;
        rumqttc::Packet::Connect(connect)
    };
    let mut raw = Raw::connect(plain).await;
    raw.send4(persistent(false)).await;
    assert!(matches!(raw.recv4().await, Some(rumqttc::Packet::ConnAck(_))));
    raw.send4(publish4("weir/q2/p", 2, 9, b"persisted")).await;
    assert!(matches!(raw.recv4().await, Some(rumqttc::Packet::PubRec(r)) if r.pkid == 9));
    drop(raw);
    let mut raw = Raw::connect(plain).await;
    raw.send4(persistent(false)).await;
    match raw.recv4().await {
        Some(rumqttc::Packet::ConnAck(a)) => assert!(a.session_present, "{a:?}"),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let mut resent =
        rumqttc::Publish::new("weir/q2/p", rumqttc::QoS::ExactlyOnce, b"persisted".to_vec());
    resent.pkid = 9;
    resent.dup = true;
    raw.send4(rumqttc::Packet::Publish(resent)).await;
    assert!(matches!(raw.recv4().await, Some(rumqttc::Packet::PubRec(r)) if r.pkid == 9));
    raw.send4(rumqttc::Packet::PubRel(rumqttc::PubRel::new(9))).await;
    assert!(matches!(raw.recv4().await, Some(rumqttc::Packet::PubComp(r)) if r.pkid == 9));
    raw.send4(rumqttc::Packet::Disconnect).await;
    drop(raw);

    let records = stop_and_read(&mut c, "q2").await.expect("q2");
    let data: Vec<&[u8]> = records.iter().map(|r| &r.record.data[..]).collect();
    assert_eq!(data.iter().filter(|d| **d == b"once").count(), 1, "{data:?}");
    assert_eq!(data.iter().filter(|d| **d == b"twice").count(), 1, "{data:?}");
    assert_eq!(data.iter().filter(|d| **d == b"persisted").count(), 1, "{data:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_aliases_resolve_and_invalid_ones_disconnect() {
    let mut c = start(&[]);
    let plain = addr(&c, "mqtt");
    let mut raw = Raw::connect_v5(plain, "alias").await;
    let aliased = |topic: &str, alias: u16, pkid: u16, payload: &'static [u8]| {
        let mut p = rumqttc::v5::mqttbytes::v5::Publish::new(
            topic,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            payload,
            Some(PublishProperties { topic_alias: Some(alias), ..Default::default() }),
        );
        p.pkid = pkid;
        P5::Publish(p)
    };
    raw.send5(aliased("weir/alias/k", 1, 1, b"first")).await;
    assert!(matches!(raw.recv5().await, Some(P5::PubAck(a)) if a.pkid == 1));
    raw.send5(aliased("", 1, 2, b"second")).await;
    assert!(matches!(raw.recv5().await, Some(P5::PubAck(a)) if a.pkid == 2));
    raw.send5(aliased("", 99, 3, b"bad alias")).await;
    match raw.recv5().await {
        Some(P5::Disconnect(d)) => assert_eq!(d.reason_code as u8, 0x94),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert!(raw.closed().await);
    let records = stop_and_read(&mut c, "alias").await.expect("alias");
    let got: Vec<(&str, &[u8])> =
        records.iter().map(|r| (&*r.record.partition_key, &r.record.data[..])).collect();
    assert_eq!(got, vec![("k", &b"first"[..]), ("k", b"second")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_takes_the_session_over() {
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut c = start(&[]);
    let plain = addr(&c, "mqtt");
    let mut opts = MqttOptions::new("same-id", "127.0.0.1", plain.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (first, mut first_loop) = AsyncClient::new(opts, 10);
    first
        .try_publish(
            "weir/takeover/a",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "from the first",
        )
        .expect("queue");
    let watcher = tokio::spawn(async move {
        let mut acked = false;
        loop {
            match tokio::time::timeout(Duration::from_secs(30), first_loop.poll()).await {
                Ok(Ok(Event::Incoming(P5::PubAck(_)))) => acked = true,
                Ok(Ok(Event::Incoming(P5::Disconnect(d)))) => {
                    return (acked, Some(d.reason_code as u8));
                }
                Ok(Ok(_)) => {}
                Ok(Err(rumqttc::v5::ConnectionError::MqttState(
                    rumqttc::v5::StateError::ServerDisconnect { reason_code, .. },
                ))) => return (acked, Some(reason_code as u8)),
                Ok(Err(_)) | Err(_) => return (acked, None),
            }
        }
    });
    // Wait until the first connection's publish is acknowledged, then connect
    // the second with the same client id.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = false;
    while !seen && std::time::Instant::now() < deadline {
        seen = weir_tests::harness::stream_has_data(&c.data_dir, "takeover").await;
        if !seen {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(seen, "{}", c.report());
    let report = publish(
        &Conn::new(plain, Version::V5, "same-id"),
        vec![Msg::new("weir/takeover/b", 1, "from the second")],
        PUBLISH_TIMEOUT,
    )
    .await;
    report.assert_all_ok();
    let (acked, reason) = tokio::time::timeout(Duration::from_secs(40), watcher)
        .await
        .expect("first client finished")
        .expect("join");
    assert!(acked, "the first connection's publish was acknowledged");
    assert_eq!(reason, Some(0x8E), "session taken over");
    drop(first);
    let records = stop_and_read(&mut c, "takeover").await.expect("takeover");
    let data: Vec<&[u8]> = records.iter().map(|r| &r.record.data[..]).collect();
    assert_eq!(data, vec![&b"from the first"[..], b"from the second"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_v5_clients_and_keeps_what_was_acknowledged() {
    let mut c = start(&[]);
    let plain = addr(&c, "mqtt");
    let mut raw = Raw::connect_v5(plain, "bye").await;
    let mut p = rumqttc::v5::mqttbytes::v5::Publish::new(
        "weir/bye/k",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        &b"before shutdown"[..],
        None,
    );
    p.pkid = 1;
    raw.send5(P5::Publish(p)).await;
    assert!(matches!(raw.recv5().await, Some(P5::PubAck(a)) if a.pkid == 1));
    c.signal("TERM");
    match raw.recv5().await {
        Some(P5::Disconnect(d)) => assert_eq!(d.reason_code as u8, 0x8B),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert!(c.wait_exit(Duration::from_secs(30)).is_some_and(|s| s.success()), "{}", c.report());
    let records = read_stream(&c.data_dir, "bye").await.expect("bye");
    assert_eq!(&records[0].record.data[..], b"before shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_shard_write_limits_answer_quota_exceeded() {
    use weir_collector::store::StreamSettings;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let settings = StreamSettings { write_limits: true, ..StreamSettings::default() };
    weir_tests::harness::create_stream_for(
        &data,
        "limited",
        CreateStreamOptions::default(),
        settings,
    )
    .await;
    let mut c = start_in(&data, tmp.path(), &[]);
    let plain = addr(&c, "mqtt");
    // One shard takes 1,000 records per second: a burst of 1,500 goes over.
    let msgs: Vec<Msg> = (0..1500).map(|i| Msg::new("weir/limited/k", 1, format!("{i}"))).collect();
    let mut conn = Conn::new(plain, Version::V5, "burst");
    conn.inflight = 1000;
    let report = publish(&conn, msgs, PUBLISH_TIMEOUT).await;
    let ok = report.acks.iter().filter(|a| **a == Ack::Ok).count();
    let quota = report.acks.iter().filter(|a| **a == Ack::Refused(0x97)).count();
    assert_eq!(ok + quota, 1500, "{report:?}");
    assert!(quota > 0 && ok >= 1000, "{ok} acknowledged, {quota} over quota");
    assert_eq!(report.error, None);
    let records = stop_and_read(&mut c, "limited").await.expect("limited");
    assert_eq!(records.len(), ok, "exactly the acknowledged records are stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wills_are_appended_when_a_client_goes_away_without_disconnect() {
    let mut c = start(&[]);
    let plain = addr(&c, "mqtt");
    let connect = |id: &str, keep_alive: u16| {
        let mut connect = rumqttc::Connect::new(id);
        connect.keep_alive = keep_alive;
        connect.last_will = Some(rumqttc::LastWill::new(
            format!("weir/wills/{id}"),
            "offline",
            rumqttc::QoS::AtLeastOnce,
            false,
        ));
        rumqttc::Packet::Connect(connect)
    };
    // Socket dropped: the will is appended.
    let mut raw = Raw::connect(plain).await;
    raw.send4(connect("dropped", 60)).await;
    assert!(matches!(raw.recv4().await, Some(rumqttc::Packet::ConnAck(_))));
    drop(raw);
    // Clean DISCONNECT: no will.
    let mut raw = Raw::connect(plain).await;
    raw.send4(connect("polite", 60)).await;
    assert!(matches!(raw.recv4().await, Some(rumqttc::Packet::ConnAck(_))));
    raw.send4(rumqttc::Packet::Disconnect).await;
    assert!(raw.closed().await);
    // Silent past 1.5 x keep-alive: closed by the server, will appended.
    let mut raw = Raw::connect(plain).await;
    raw.send4(connect("silent", 1)).await;
    assert!(matches!(raw.recv4().await, Some(rumqttc::Packet::ConnAck(_))));
    let started = std::time::Instant::now();
    assert!(raw.closed().await, "keep-alive not enforced");
    assert!(started.elapsed() >= Duration::from_millis(1400), "closed too early");
    // Shutdown waits for each connection's task, wills included.
    let seen = weir_tests::harness::wait_for(Duration::from_secs(10), || {
        c.log().contains("keep-alive expired")
    });
    assert!(seen, "{}", c.report());
    let records = stop_and_read(&mut c, "wills").await.expect("wills");
    let mut keys: Vec<&str> = records.iter().map(|r| &*r.record.partition_key).collect();
    keys.sort_unstable();
    assert_eq!(keys, vec!["dropped", "silent"]);
    assert!(records.iter().all(|r| &r.record.data[..] == b"offline"));
}
