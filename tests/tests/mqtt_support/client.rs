//! rumqttc test clients (3.1.1 and 5; plain, TLS, mutual TLS) that publish
//! messages in order and report which were acknowledged and how; every wait
//! is bounded by the caller's timeout.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::tokio_rustls::rustls::ClientConfig;

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
    /// The MQTT 5 reason string of each message's acknowledgement, if any.
    pub reasons: Vec<Option<String>>,
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
    reasons: Vec<Option<String>>,
    qos: Vec<u8>,
    queue: VecDeque<usize>,
    inflight: HashMap<u16, usize>,
    acked: usize,
}

impl Tracker {
    fn new(msgs: &[Msg]) -> Self {
        Self {
            acks: vec![Ack::Unsent; msgs.len()],
            reasons: vec![None; msgs.len()],
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
        self.done_with(pkid, ack, None)
    }

    fn done_with(&mut self, pkid: u16, ack: Ack, reason: Option<String>) -> bool {
        match self.inflight.remove(&pkid) {
            Some(i) => {
                self.acks[i] = ack;
                self.reasons[i] = reason;
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
        let mut report = Report {
            acks: Vec::new(),
            reasons: Vec::new(),
            connack: None,
            disconnect: None,
            error: None,
        };
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
        report.reasons = t.reasons;
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
        let mut report = Report {
            acks: Vec::new(),
            reasons: Vec::new(),
            connack: None,
            disconnect: None,
            error: None,
        };
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
                    let reason = a.properties.and_then(|p| p.reason_string);
                    if t.done_with(a.pkid, ack, reason) && on_ack(t.acked) {
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
        report.reasons = t.reasons;
        report
    }
}
