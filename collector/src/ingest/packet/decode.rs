//! Decoding complete frames with rumqttc's `mqttbytes` codecs (v4 = MQTT
//! 3.1.1, v5 = MQTT 5) into version-neutral packets: [`ConnectInfo`] for the
//! CONNECT, [`Inbound`] for everything after it.
//!
//! Every codec error on a complete frame is a malformed packet, never "need
//! more bytes" (framing made sure the frame is whole). Decoding is wrapped in
//! `catch_unwind` as a second line of defence: a panic in the codec on
//! hostile bytes becomes a malformed-packet error for that connection alone.

use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

use super::protocol::{ProtocolError, Version};

/// A decoded CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectInfo {
    /// Protocol version.
    pub version: Version,
    /// Client identifier (possibly empty).
    pub client_id: String,
    /// Clean session (3.1.1) / clean start (5).
    pub clean_start: bool,
    /// Keep-alive in seconds (0 = none).
    pub keep_alive: u16,
    /// User name, if given.
    pub username: Option<String>,
    /// Password, if given.
    pub password: Option<String>,
    /// The will message.
    pub will: Option<PublishIn>,
    /// MQTT 5 session expiry interval in seconds (0 = ends with the
    /// connection); 3.1.1 persistent sessions are `u32::MAX`.
    pub session_expiry: u32,
    /// MQTT 5: whether the client accepts reason strings and user properties
    /// on acknowledgements.
    pub problem_info: bool,
    /// MQTT 5: the largest packet the client accepts.
    pub client_max_packet: Option<u32>,
    /// MQTT 5: an authentication method (enhanced authentication), which this
    /// server does not support.
    pub auth_method: Option<String>,
}

/// A PUBLISH as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishIn {
    /// 0, 1 or 2.
    pub qos: u8,
    /// Packet identifier (0 at QoS 0).
    pub pkid: u16,
    /// Topic name as sent (may be empty in MQTT 5 when an alias is used).
    pub topic: Bytes,
    /// The payload.
    pub payload: Bytes,
    /// MQTT 5 topic alias.
    pub topic_alias: Option<u16>,
}

/// A decoded packet after CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// PUBLISH.
    Publish(PublishIn),
    /// PUBREL of a QoS 2 exchange.
    PubRel(u16),
    /// PINGREQ.
    PingReq,
    /// SUBSCRIBE with this many filters.
    Subscribe {
        /// Packet identifier.
        pkid: u16,
        /// How many filters.
        filters: usize,
    },
    /// UNSUBSCRIBE with this many filters.
    Unsubscribe {
        /// Packet identifier.
        pkid: u16,
        /// How many filters.
        filters: usize,
    },
    /// DISCONNECT.
    Disconnect {
        /// Its reason code (0 from MQTT 3.1.1).
        reason: u8,
        /// MQTT 5: a new session expiry interval.
        session_expiry: Option<u32>,
    },
    /// A packet a client must not send to a server that never publishes to
    /// it (CONNECT again, CONNACK, PUBACK, PUBREC, PUBCOMP, SUBACK, ...).
    Unexpected(&'static str),
}

fn malformed(e: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::Malformed(e.to_string())
}

/// Runs a codec call, turning a panic into a malformed-packet error.
fn guarded<T>(f: impl FnOnce() -> Result<T, ProtocolError>) -> Result<T, ProtocolError> {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(ProtocolError::Malformed("packet the codec cannot read".into())))
}

/// Decodes a complete CONNECT frame of a known version.
///
/// # Errors
/// [`ProtocolError::Malformed`] for anything the codec refuses, a set
/// reserved connect flag, or a password without a user name (3.1.1).
pub fn decode_connect(version: Version, mut frame: BytesMut) -> Result<ConnectInfo, ProtocolError> {
    // Connect flags: after the fixed header, the protocol name (2 + 4 bytes)
    // and the level byte. Bit 0 is reserved and must be 0.
    let header_len = 1 + frame.iter().skip(1).take(4).take_while(|b| *b & 0x80 != 0).count() + 1;
    let flags = frame.get(header_len + 7).copied().unwrap_or(0);
    if flags & 1 != 0 {
        return Err(ProtocolError::Malformed("reserved CONNECT flag is set".into()));
    }
    if version == Version::V4 && flags & 0x40 != 0 && flags & 0x80 == 0 {
        return Err(ProtocolError::Malformed("password without a user name".into()));
    }
    let max = frame.len();
    guarded(|| match version {
        Version::V4 => match v4::Packet::read(&mut frame, max).map_err(malformed)? {
            v4::Packet::Connect(c) => Ok(ConnectInfo {
                version,
                client_id: c.client_id,
                clean_start: c.clean_session,
                keep_alive: c.keep_alive,
                username: c.login.as_ref().map(|l| l.username.clone()).filter(|u| !u.is_empty()),
                password: c.login.map(|l| l.password).filter(|_| flags & 0x40 != 0),
                will: c.last_will.map(|w| PublishIn {
                    qos: w.qos as u8,
                    pkid: 0,
                    topic: Bytes::from(w.topic.into_bytes()),
                    payload: w.message,
                    topic_alias: None,
                }),
                session_expiry: if c.clean_session { 0 } else { u32::MAX },
                problem_info: false,
                client_max_packet: None,
                auth_method: None,
            }),
            _ => Err(ProtocolError::Violation("the first packet must be CONNECT".into())),
        },
        Version::V5 => {
            match v5::Packet::read(&mut frame, Some(u32::try_from(max).unwrap_or(u32::MAX)))
                .map_err(malformed)?
            {
                v5::Packet::Connect(c, will, login) => {
                    let props = c.properties.as_ref();
                    Ok(ConnectInfo {
                        version,
                        client_id: c.client_id,
                        clean_start: c.clean_start,
                        keep_alive: c.keep_alive,
                        username: login
                            .as_ref()
                            .map(|l| l.username.clone())
                            .filter(|u| !u.is_empty()),
                        password: login.map(|l| l.password).filter(|_| flags & 0x40 != 0),
                        will: will.map(|w| PublishIn {
                            qos: w.qos as u8,
                            pkid: 0,
                            topic: w.topic,
                            payload: w.message,
                            topic_alias: None,
                        }),
                        session_expiry: props.and_then(|p| p.session_expiry_interval).unwrap_or(0),
                        problem_info: props.and_then(|p| p.request_problem_info) != Some(0),
                        client_max_packet: props.and_then(|p| p.max_packet_size),
                        auth_method: props.and_then(|p| p.authentication_method.clone()),
                    })
                }
                _ => Err(ProtocolError::Violation("the first packet must be CONNECT".into())),
            }
        }
    })
}

/// Decodes a complete frame after CONNECT.
///
/// # Errors
/// [`ProtocolError::Malformed`] for anything the codec refuses.
pub fn decode(version: Version, mut frame: BytesMut) -> Result<Inbound, ProtocolError> {
    let byte0 = frame.first().copied().unwrap_or(0);
    // A DISCONNECT with no body is "normal disconnection" in both versions,
    // and an MQTT 5 one with only a reason code has no properties; rumqttc's
    // v5 reader wants a reason byte and a property length.
    if byte0 == 0xE0 {
        match (frame.get(1), frame.get(2)) {
            (Some(&0), _) => return Ok(Inbound::Disconnect { reason: 0, session_expiry: None }),
            (Some(&1), Some(&reason)) if version == Version::V5 => {
                return Ok(Inbound::Disconnect { reason, session_expiry: None });
            }
            _ => {}
        }
    }
    let max = frame.len();
    guarded(|| match version {
        Version::V4 => Ok(match v4::Packet::read(&mut frame, max).map_err(malformed)? {
            v4::Packet::Publish(p) => Inbound::Publish(PublishIn {
                qos: p.qos as u8,
                pkid: p.pkid,
                topic: Bytes::from(p.topic.into_bytes()),
                payload: p.payload,
                topic_alias: None,
            }),
            v4::Packet::PubRel(p) => Inbound::PubRel(p.pkid),
            v4::Packet::PingReq => Inbound::PingReq,
            v4::Packet::Subscribe(s) => {
                Inbound::Subscribe { pkid: s.pkid, filters: s.filters.len() }
            }
            v4::Packet::Unsubscribe(u) => {
                Inbound::Unsubscribe { pkid: u.pkid, filters: u.topics.len() }
            }
            v4::Packet::Disconnect => Inbound::Disconnect { reason: 0, session_expiry: None },
            other => Inbound::Unexpected(v4_name(&other)),
        }),
        Version::V5 => {
            let max = Some(u32::try_from(max).unwrap_or(u32::MAX));
            Ok(match v5::Packet::read(&mut frame, max).map_err(malformed)? {
                v5::Packet::Publish(p) => Inbound::Publish(PublishIn {
                    qos: p.qos as u8,
                    pkid: p.pkid,
                    topic: p.topic,
                    payload: p.payload,
                    topic_alias: p.properties.and_then(|p| p.topic_alias),
                }),
                v5::Packet::PubRel(p) => Inbound::PubRel(p.pkid),
                v5::Packet::PingReq(_) => Inbound::PingReq,
                v5::Packet::Subscribe(s) => {
                    Inbound::Subscribe { pkid: s.pkid, filters: s.filters.len() }
                }
                v5::Packet::Unsubscribe(u) => {
                    Inbound::Unsubscribe { pkid: u.pkid, filters: u.filters.len() }
                }
                v5::Packet::Disconnect(d) => Inbound::Disconnect {
                    reason: d.reason_code as u8,
                    session_expiry: d.properties.and_then(|p| p.session_expiry_interval),
                },
                other => Inbound::Unexpected(v5_name(&other)),
            })
        }
    })
}

fn v4_name(p: &v4::Packet) -> &'static str {
    match p {
        v4::Packet::Connect(_) => "a second CONNECT",
        v4::Packet::ConnAck(_) => "CONNACK",
        v4::Packet::PubAck(_) => "PUBACK",
        v4::Packet::PubRec(_) => "PUBREC",
        v4::Packet::PubComp(_) => "PUBCOMP",
        v4::Packet::SubAck(_) => "SUBACK",
        v4::Packet::UnsubAck(_) => "UNSUBACK",
        v4::Packet::PingResp => "PINGRESP",
        _ => "an unexpected packet",
    }
}

fn v5_name(p: &v5::Packet) -> &'static str {
    match p {
        v5::Packet::Connect(..) => "a second CONNECT",
        v5::Packet::ConnAck(_) => "CONNACK",
        v5::Packet::PubAck(_) => "PUBACK",
        v5::Packet::PubRec(_) => "PUBREC",
        v5::Packet::PubComp(_) => "PUBCOMP",
        v5::Packet::SubAck(_) => "SUBACK",
        v5::Packet::UnsubAck(_) => "UNSUBACK",
        v5::Packet::PingResp(_) => "PINGRESP",
        v5::Packet::Auth(_) => "AUTH (enhanced authentication is not supported)",
        _ => "an unexpected packet",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::packet::{Reason, Sniff, frame_header, sniff_connect};

    fn encode_v4(p: v4::Packet) -> BytesMut {
        let mut b = BytesMut::new();
        p.write(&mut b, 1 << 20).expect("encode");
        b
    }

    #[test]
    fn sniffs_protocol_levels() {
        let mut connect = v4::Connect::new("dev");
        connect.keep_alive = 30;
        let frame = encode_v4(v4::Packet::Connect(connect));
        assert_eq!(sniff_connect(&frame), Ok(Sniff::V4));
        let mut v3 = frame.to_vec();
        v3[8] = 3;
        assert_eq!(sniff_connect(&v3), Ok(Sniff::Unsupported(3)));
        let info = decode_connect(Version::V4, frame).expect("decode");
        assert_eq!((info.client_id.as_str(), info.keep_alive, info.clean_start), ("dev", 30, true));
        assert_eq!(
            sniff_connect(&[0x30, 0x00]).map_err(|e| e.reason()),
            Err(Reason::ProtocolError)
        );
        assert!(sniff_connect(&[0x10, 0x02, 0x00]).is_err());
        assert!(sniff_connect(&[0x10, 0x06, 0x00, 0x04, b'H', b'T', b'T', b'P']).is_err());
    }

    #[test]
    fn empty_v5_disconnect_is_normal() {
        let got = decode(Version::V5, BytesMut::from(&[0xE0u8, 0x00][..])).expect("decode");
        assert_eq!(got, Inbound::Disconnect { reason: 0, session_expiry: None });
    }

    #[test]
    fn random_frames_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..64);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
            if let Some(b) = bytes.first_mut() {
                *b = (rng.gen_range(1..15u8) << 4) | (*b & 0x0F);
            }
            for version in [Version::V4, Version::V5] {
                if let Ok(Some(h)) = frame_header(&bytes, 1 << 20)
                    && h.frame_len <= bytes.len()
                {
                    let frame = BytesMut::from(&bytes[..h.frame_len]);
                    let _ = sniff_connect(&frame);
                    let _ = decode_connect(version, frame.clone());
                    let _ = decode(version, frame);
                }
            }
        }
    }
}
