//! A raw MQTT connection for byte-level tests: packets encoded with
//! rumqttc's codecs, or raw bytes, written and read back one by one.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

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
