//! Support for the MQTT end-to-end tests: starting a collector with MQTT
//! listeners, rumqttc clients (3.1.1 and 5; plain, TLS, mutual TLS) that
//! report which publishes were acknowledged and how, and reading a stream
//! back from a stopped collector's data directory.
//!
//! Every wait is bounded: a client gives up after its deadline and reports
//! what it saw, so a broken collector fails a test instead of hanging it.

// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::tokio_rustls::rustls::ClientConfig;
use weir_collector::store::StoredRecord;
use weir_tests::harness::Collector;

/// Flags every MQTT test collector gets: a plain listener on a free port with
/// anonymous access, the TLS listener and the HTTP API on free ports.
pub const BASE_FLAGS: [&str; 7] = [
    "--mqtt-listen",
    "127.0.0.1:0",
    "--mqtts-listen",
    "127.0.0.1:0",
    "--http-listen",
    "127.0.0.1:0",
    "--allow-anonymous",
];

/// Starts a collector with [`BASE_FLAGS`] and `extra`.
pub fn start(extra: &[&str]) -> Collector {
    let mut flags: Vec<&str> = BASE_FLAGS.to_vec();
    flags.extend_from_slice(extra);
    Collector::start(&flags)
}

/// Starts a collector on an existing data directory.
pub fn start_in(data_dir: &Path, log_dir: &Path, extra: &[&str]) -> Collector {
    let mut flags: Vec<&str> = BASE_FLAGS.to_vec();
    flags.extend_from_slice(extra);
    Collector::start_in(data_dir, log_dir, &flags)
}

/// A listener address from the ready file (`"mqtt"` or `"mqtts"`).
pub fn addr(c: &Collector, which: &str) -> SocketAddr {
    c.ready()[which]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no {which} address in the ready file\n{}", c.report()))
}

/// The development CA certificate of a running collector.
pub fn ca(c: &Collector) -> PathBuf {
    c.ready()["tls_ca"]
        .as_str()
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no tls_ca in the ready file\n{}", c.report()))
}

/// A rustls client configuration trusting `ca`, presenting `identity`.
pub fn tls(ca: &Path, identity: Option<(&Path, &Path)>) -> Arc<ClientConfig> {
    weir_collector::tls::install_default_provider();
    weir_collector::tls::client_config(ca, identity).expect("client TLS configuration")
}

/// Protocol version of a test client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1.
    V4,
    /// MQTT 5.
    V5,
}

/// How a test client connects.
#[derive(Debug, Clone)]
pub struct Conn {
    /// Listener address.
    pub addr: SocketAddr,
    /// Protocol version.
    pub version: Version,
    /// Client id.
    pub client_id: String,
    /// TLS configuration, for the TLS listener.
    pub tls: Option<Arc<ClientConfig>>,
    /// User name and password.
    pub login: Option<(String, String)>,
    /// Publishes in flight.
    pub inflight: u16,
    /// Clean session / clean start.
    pub clean: bool,
}

impl Conn {
    /// A plain 3.1.1 or 5 connection with 100 publishes in flight.
    pub fn new(addr: SocketAddr, version: Version, client_id: &str) -> Self {
        Self {
            addr,
            version,
            client_id: client_id.into(),
            tls: None,
            login: None,
            inflight: 100,
            clean: true,
        }
    }

    /// Over TLS with this configuration.
    pub fn with_tls(mut self, tls: Arc<ClientConfig>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// With a user name and password.
    pub fn with_login(mut self, user: &str, password: &str) -> Self {
        self.login = Some((user.into(), password.into()));
        self
    }
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Msg {
    /// Topic.
    pub topic: String,
    /// QoS 0, 1 or 2.
    pub qos: u8,
    /// Payload.
    pub payload: Vec<u8>,
}

impl Msg {
    /// A message.
    pub fn new(topic: impl Into<String>, qos: u8, payload: impl Into<Vec<u8>>) -> Self {
        Self { topic: topic.into(), qos, payload: payload.into() }
    }
}

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Acknowledged (QoS 0: written to the socket).
    Ok,
    /// Refused with this MQTT 5 reason code.
    Refused(u8),
    /// Handed to the connection, no acknowledgement seen.
    InFlight,
    /// Never sent.
    Unsent,
}

/// What a client saw.
#[derive(Debug, Clone)]
pub struct Report {
    /// One per message, in order.
    pub acks: Vec<Ack>,
    /// CONNACK code (3.1.1 return code or MQTT 5 reason code), if one came.
    pub connack: Option<u8>,
    /// Reason code of a DISCONNECT from the server (MQTT 5).
    pub disconnect: Option<u8>,
    /// The error that ended the connection, if any.
    pub error: Option<String>,
}

impl Report {
    /// Indices of acknowledged messages.
    pub fn acked(&self) -> Vec<usize> {
        self.acks.iter().enumerate().filter(|(_, a)| **a == Ack::Ok).map(|(i, _)| i).collect()
    }

    /// Asserts that every message was acknowledged.
    pub fn assert_all_ok(&self) {
        assert!(
            self.acks.iter().all(|a| *a == Ack::Ok),
            "not all acknowledged: {:?} (error {:?}, disconnect {:?})",
            self.acks
                .iter()
                .enumerate()
                .filter(|(_, a)| **a != Ack::Ok)
                .take(10)
                .collect::<Vec<_>>(),
            self.error,
            self.disconnect
        );
    }
}

/// Publishes `msgs` in order on one connection and waits (at most
/// `timeout`) for every acknowledgement; stops at the first connection
/// error (no reconnect) and reports what it saw.
pub async fn publish(conn: &Conn, msgs: Vec<Msg>, timeout: Duration) -> Report {
    publish_until(conn, msgs, timeout, |_| false).await
}

/// Like [`publish`], calling `on_ack(acknowledged so far)` after each
/// acknowledgement; returning `true` stops publishing (messages not yet
/// handed over stay [`Ack::Unsent`]).
pub async fn publish_until(
    conn: &Conn,
    msgs: Vec<Msg>,
    timeout: Duration,
    on_ack: impl FnMut(usize) -> bool,
) -> Report {
    match conn.version {
        Version::V4 => v4::publish(conn, msgs, timeout, on_ack).await,
        Version::V5 => v5::publish(conn, msgs, timeout, on_ack).await,
    }
}

struct Tracker {
    acks: Vec<Ack>,
    qos: Vec<u8>,
    queue: VecDeque<usize>,
    inflight: HashMap<u16, usize>,
    acked: usize,
}

impl Tracker {
    fn new(msgs: &[Msg]) -> Self {
        Self {
            acks: vec![Ack::Unsent; msgs.len()],
            qos: msgs.iter().map(|m| m.qos).collect(),
            queue: (0..msgs.len()).collect(),
            inflight: HashMap::new(),
            acked: 0,
        }
    }

    fn sent(&mut self, pkid: u16) {
        if let Some(i) = self.queue.pop_front() {
            if self.qos[i] == 0 {
                self.acks[i] = Ack::Ok;
                self.acked += 1;
            } else {
                self.acks[i] = Ack::InFlight;
                self.inflight.insert(pkid, i);
            }
        }
    }

    fn done(&mut self, pkid: u16, ack: Ack) -> bool {
        match self.inflight.remove(&pkid) {
            Some(i) => {
                self.acks[i] = ack;
                self.acked += 1;
                true
            }
            None => false,
        }
    }

    fn finished(&self) -> bool {
        self.acked == self.acks.len()
    }
}

mod v4 {
    use super::*;
    use rumqttc::{
        AsyncClient, ConnectReturnCode, Event, MqttOptions, Outgoing, Packet, QoS,
        TlsConfiguration, Transport,
    };

    pub async fn publish(
        conn: &Conn,
        msgs: Vec<Msg>,
        timeout: Duration,
        mut on_ack: impl FnMut(usize) -> bool,
    ) -> Report {
        let mut opts =
            MqttOptions::new(conn.client_id.clone(), conn.addr.ip().to_string(), conn.addr.port());
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_clean_session(conn.clean);
        opts.set_inflight(conn.inflight);
        opts.set_max_packet_size(16 << 20, 16 << 20);
        if let Some((u, p)) = &conn.login {
            opts.set_credentials(u.clone(), p.clone());
        }
        if let Some(tls) = &conn.tls {
            opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls.clone())));
        }
        let (client, mut el) = AsyncClient::new(opts, msgs.len() + 8);
        let mut t = Tracker::new(&msgs);
        for m in &msgs {
            let qos = match m.qos {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                _ => QoS::ExactlyOnce,
            };
            if client.try_publish(m.topic.clone(), qos, false, m.payload.clone()).is_err() {
                break;
            }
        }
        let mut report = Report { acks: Vec::new(), connack: None, disconnect: None, error: None };
        let deadline = Instant::now() + timeout;
        let mut stopped = false;
        while !t.finished() && !stopped {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, el.poll()).await {
                Err(_) => {
                    report.error = Some(format!("timed out after {timeout:?}"));
                    break;
                }
                Ok(Err(e)) => {
                    report.error = Some(e.to_string());
                    if let rumqttc::ConnectionError::ConnectionRefused(code) = e {
                        report.connack = Some(code as u8);
                    }
                    break;
                }
                Ok(Ok(Event::Incoming(Packet::ConnAck(c)))) => {
                    report.connack =
                        Some(if c.code == ConnectReturnCode::Success { 0 } else { c.code as u8 });
                }
                Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                    let before = t.acked;
                    t.sent(pkid);
                    if t.acked > before && on_ack(t.acked) {
                        stopped = true;
                    }
                }
                Ok(Ok(Event::Incoming(Packet::PubAck(a)))) => {
                    if t.done(a.pkid, Ack::Ok) && on_ack(t.acked) {
                        stopped = true;
                    }
                }
                Ok(Ok(Event::Incoming(Packet::PubComp(a)))) => {
                    if t.done(a.pkid, Ack::Ok) && on_ack(t.acked) {
                        stopped = true;
                    }
                }
                Ok(Ok(_)) => {}
            }
        }
        if report.error.is_none() {
            let _ = client.try_disconnect();
            let end = Instant::now() + Duration::from_secs(2);
            while let Ok(Ok(ev)) =
                tokio::time::timeout(end.saturating_duration_since(Instant::now()), el.poll()).await
            {
                if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                    break;
                }
            }
        }
        report.acks = t.acks;
        report
    }
}

mod v5 {
    use super::*;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, PubAckReason, PubRecReason};
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    use rumqttc::{Outgoing, TlsConfiguration, Transport};

    fn puback_code(r: PubAckReason) -> u8 {
        match r {
            PubAckReason::Success => 0x00,
            PubAckReason::NoMatchingSubscribers => 0x10,
            PubAckReason::UnspecifiedError => 0x80,
            PubAckReason::ImplementationSpecificError => 0x83,
            PubAckReason::NotAuthorized => 0x87,
            PubAckReason::TopicNameInvalid => 0x90,
            PubAckReason::PacketIdentifierInUse => 0x91,
            PubAckReason::QuotaExceeded => 0x97,
            PubAckReason::PayloadFormatInvalid => 0x99,
        }
    }

    fn pubrec_code(r: PubRecReason) -> u8 {
        match r {
            PubRecReason::Success => 0x00,
            PubRecReason::NoMatchingSubscribers => 0x10,
            PubRecReason::UnspecifiedError => 0x80,
            PubRecReason::ImplementationSpecificError => 0x83,
            PubRecReason::NotAuthorized => 0x87,
            PubRecReason::TopicNameInvalid => 0x90,
            PubRecReason::PacketIdentifierInUse => 0x91,
            PubRecReason::QuotaExceeded => 0x97,
            PubRecReason::PayloadFormatInvalid => 0x99,
        }
    }

    fn connack_code(c: ConnectReturnCode) -> u8 {
        use ConnectReturnCode as C;
        match c {
            C::Success => 0x00,
            C::UnspecifiedError => 0x80,
            C::MalformedPacket => 0x81,
            C::ProtocolError => 0x82,
            C::ImplementationSpecificError => 0x83,
            C::UnsupportedProtocolVersion => 0x84,
            C::ClientIdentifierNotValid => 0x85,
            C::BadUserNamePassword => 0x86,
            C::NotAuthorized => 0x87,
            C::ServerUnavailable => 0x88,
            C::ServerBusy => 0x89,
            C::Banned => 0x8A,
            C::BadAuthenticationMethod => 0x8C,
            C::TopicNameInvalid => 0x90,
            C::PacketTooLarge => 0x95,
            C::QuotaExceeded => 0x97,
            _ => 0xFF,
        }
    }

    pub async fn publish(
        conn: &Conn,
        msgs: Vec<Msg>,
        timeout: Duration,
        mut on_ack: impl FnMut(usize) -> bool,
    ) -> Report {
        let mut opts =
            MqttOptions::new(conn.client_id.clone(), conn.addr.ip().to_string(), conn.addr.port());
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_clean_start(conn.clean);
        opts.set_max_packet_size(Some(16 << 20));
        if let Some((u, p)) = &conn.login {
            opts.set_credentials(u.clone(), p.clone());
        }
        if let Some(tls) = &conn.tls {
            opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls.clone())));
        }
        let (client, mut el) = AsyncClient::new(opts, msgs.len() + 8);
        let mut t = Tracker::new(&msgs);
        for m in &msgs {
            let qos = match m.qos {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                _ => QoS::ExactlyOnce,
            };
            if client.try_publish(m.topic.clone(), qos, false, m.payload.clone()).is_err() {
                break;
            }
        }
        let mut report = Report { acks: Vec::new(), connack: None, disconnect: None, error: None };
        let deadline = Instant::now() + timeout;
        let mut stopped = false;
        while !t.finished() && !stopped {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, el.poll()).await {
                Err(_) => {
                    report.error = Some(format!("timed out after {timeout:?}"));
                    break;
                }
                Ok(Err(e)) => {
                    report.error = Some(e.to_string());
                    match e {
                        rumqttc::v5::ConnectionError::ConnectionRefused(code) => {
                            report.connack = Some(connack_code(code));
                        }
                        rumqttc::v5::ConnectionError::MqttState(
                            rumqttc::v5::StateError::ServerDisconnect { reason_code, .. },
                        ) => report.disconnect = Some(reason_code as u8),
                        _ => {}
                    }
                    break;
                }
                Ok(Ok(Event::Incoming(Packet::ConnAck(c)))) => {
                    report.connack = Some(connack_code(c.code));
                }
                Ok(Ok(Event::Incoming(Packet::Disconnect(d)))) => {
                    report.disconnect = Some(d.reason_code as u8);
                }
                Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                    let before = t.acked;
                    t.sent(pkid);
                    if t.acked > before && on_ack(t.acked) {
                        stopped = true;
                    }
                }
                Ok(Ok(Event::Incoming(Packet::PubAck(a)))) => {
                    let code = puback_code(a.reason);
                    let ack = if code < 0x80 { Ack::Ok } else { Ack::Refused(code) };
                    if t.done(a.pkid, ack) && on_ack(t.acked) {
                        stopped = true;
                    }
                }
                Ok(Ok(Event::Incoming(Packet::PubRec(a)))) => {
                    let code = pubrec_code(a.reason);
                    if code >= 0x80 && t.done(a.pkid, Ack::Refused(code)) && on_ack(t.acked) {
                        stopped = true;
                    }
                }
                Ok(Ok(Event::Incoming(Packet::PubComp(a)))) => {
                    if t.done(a.pkid, Ack::Ok) && on_ack(t.acked) {
                        stopped = true;
                    }
                }
                Ok(Ok(_)) => {}
            }
        }
        if report.error.is_none() {
            let _ = client.try_disconnect();
            let end = Instant::now() + Duration::from_secs(2);
            while let Ok(Ok(ev)) =
                tokio::time::timeout(end.saturating_duration_since(Instant::now()), el.poll()).await
            {
                if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                    break;
                }
            }
        }
        report.acks = t.acks;
        report
    }
}

/// A record read back, with its shard.
#[derive(Debug, Clone)]
pub struct Read {
    /// Shard id.
    pub shard: String,
    /// The record.
    pub record: StoredRecord,
}

/// Stops the collector (SIGTERM, bounded wait) and reads every record of
/// `stream` from its data directory, shard by shard in order. `None` if the
/// stream does not exist.
pub async fn stop_and_read(c: &mut Collector, stream: &str) -> Option<Vec<Read>> {
    c.signal("TERM");
    let status = c.wait_exit(Duration::from_secs(30));
    assert!(status.is_some(), "collector did not stop on SIGTERM\n{}", c.report());
    read_stream(&c.data_dir, stream).await
}

/// Reads every record of `stream` from a data directory no process has open.
pub async fn read_stream(data_dir: &Path, stream: &str) -> Option<Vec<Read>> {
    let records = weir_tests::harness::read_stream_records(data_dir, stream).await?;
    Some(records.into_iter().map(|(shard, record)| Read { shard, record }).collect())
}

/// The shard a key belongs to in a stream of `shards` even shards.
pub fn shard_of(key: &str, shards: u64) -> String {
    let hash = weir_wire::hash_key(key);
    let index = (0..shards)
        .find(|i| weir_wire::HashRange::uniform(shards, *i).is_ok_and(|r| r.contains(hash)))
        .expect("some shard owns every hash");
    format!("shardId-{index:012}")
}

/// A raw MQTT connection for byte-level tests: packets are encoded with
/// rumqttc's codecs (or written as raw bytes) and read back one by one.
pub struct Raw {
    /// The socket.
    pub stream: tokio::net::TcpStream,
    buf: bytes::BytesMut,
}

/// How long a raw read waits.
pub const RAW_TIMEOUT: Duration = Duration::from_secs(10);

impl Raw {
    /// Opens a TCP connection.
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        Self { stream, buf: bytes::BytesMut::new() }
    }

    /// Connects and completes an MQTT 3.1.1 CONNECT/CONNACK.
    pub async fn connect_v4(addr: SocketAddr, client_id: &str) -> Self {
        let mut raw = Self::connect(addr).await;
        let mut connect = rumqttc::Connect::new(client_id);
        connect.keep_alive = 60;
        raw.send4(rumqttc::Packet::Connect(connect)).await;
        match raw.recv4().await {
            Some(rumqttc::Packet::ConnAck(a)) if a.code == rumqttc::ConnectReturnCode::Success => {}
            other => panic!("expected CONNACK, got {other:?}"),
        }
        raw
    }

    /// Connects and completes an MQTT 5 CONNECT/CONNACK.
    pub async fn connect_v5(addr: SocketAddr, client_id: &str) -> Self {
        use rumqttc::v5::mqttbytes::v5::{Connect, ConnectReturnCode, Packet};
        let mut raw = Self::connect(addr).await;
        let connect = Connect {
            keep_alive: 60,
            client_id: client_id.into(),
            clean_start: true,
            properties: None,
        };
        raw.send5(Packet::Connect(connect, None, None)).await;
        match raw.recv5().await {
            Some(Packet::ConnAck(a)) if a.code == ConnectReturnCode::Success => {}
            other => panic!("expected CONNACK, got {other:?}"),
        }
        raw
    }

    /// Writes raw bytes; `false` if the connection is gone.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> bool {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.is_ok()
    }

    /// Writes an MQTT 3.1.1 packet.
    pub async fn send4(&mut self, p: rumqttc::Packet) {
        let mut b = bytes::BytesMut::new();
        p.write(&mut b, 64 << 20).expect("encode");
        self.send_bytes(&b).await;
    }

    /// Writes an MQTT 5 packet.
    pub async fn send5(&mut self, p: rumqttc::v5::mqttbytes::v5::Packet) {
        let mut b = bytes::BytesMut::new();
        p.write(&mut b, None).expect("encode");
        self.send_bytes(&b).await;
    }

    async fn fill(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        match tokio::time::timeout(RAW_TIMEOUT, self.stream.read_buf(&mut self.buf)).await {
            Ok(Ok(n)) => n > 0,
            _ => false,
        }
    }

    /// Reads the next MQTT 3.1.1 packet; `None` at EOF or after
    /// [`RAW_TIMEOUT`].
    pub async fn recv4(&mut self) -> Option<rumqttc::Packet> {
        loop {
            match rumqttc::Packet::read(&mut self.buf, 64 << 20) {
                Ok(p) => return Some(p),
                Err(rumqttc::Error::InsufficientBytes(_)) => {
                    if !self.fill().await {
                        return None;
                    }
                }
                Err(e) => panic!("undecodable packet from the server: {e}"),
            }
        }
    }

    /// Reads the next MQTT 5 packet; `None` at EOF or after [`RAW_TIMEOUT`].
    pub async fn recv5(&mut self) -> Option<rumqttc::v5::mqttbytes::v5::Packet> {
        use rumqttc::v5::mqttbytes::v5::Packet;
        loop {
            match Packet::read(&mut self.buf, Some(64 << 20)) {
                Ok(p) => return Some(p),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {
                    if !self.fill().await {
                        return None;
                    }
                }
                Err(e) => panic!("undecodable packet from the server: {e}"),
            }
        }
    }

    /// Whether the server closes the connection within [`RAW_TIMEOUT`]
    /// (whatever it sends before).
    pub async fn closed(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let deadline = Instant::now() + RAW_TIMEOUT;
        let mut scratch = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut scratch)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }
}

/// A 3.1.1 PUBLISH packet.
pub fn publish4(topic: &str, qos: u8, pkid: u16, payload: &[u8]) -> rumqttc::Packet {
    let qos = match qos {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    };
    let mut p = rumqttc::Publish::new(topic, qos, payload.to_vec());
    p.pkid = pkid;
    rumqttc::Packet::Publish(p)
}

/// The RSS of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Writes a configuration file into `dir` and returns its path.
pub fn config_file(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("collector.toml");
    std::fs::write(&path, toml).expect("write config");
    path
}
