//! Encoding the few packets a server sends: CONNACK, PUBACK/PUBREC/PUBCOMP,
//! PINGRESP, the SUBACK and UNSUBACK that refuse subscriptions, and the MQTT
//! 5 DISCONNECT, each mapping [`Reason`] to the version's codes.

use bytes::BytesMut;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

use super::protocol::{Reason, Version};

/// What the CONNACK announces to an MQTT 5 client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnackProps {
    /// Largest packet the server accepts.
    pub max_packet_size: Option<u32>,
    /// Highest topic alias the client may use.
    pub topic_alias_max: Option<u16>,
    /// The client id the server assigned (when the client sent none).
    pub assigned_client_id: Option<String>,
    /// Why the connection was refused.
    pub reason_string: Option<String>,
}

/// Appends a CONNACK.
pub fn write_connack(
    out: &mut BytesMut,
    version: Version,
    reason: Reason,
    session_present: bool,
    props: ConnackProps,
) {
    match version {
        Version::V4 => {
            let code = match reason {
                Reason::Success => v4::ConnectReturnCode::Success,
                Reason::UnsupportedProtocolVersion => v4::ConnectReturnCode::RefusedProtocolVersion,
                Reason::ClientIdentifierNotValid => v4::ConnectReturnCode::BadClientId,
                Reason::BadUserNameOrPassword => v4::ConnectReturnCode::BadUserNamePassword,
                Reason::NotAuthorized | Reason::BadAuthenticationMethod => {
                    v4::ConnectReturnCode::NotAuthorized
                }
                _ => v4::ConnectReturnCode::ServiceUnavailable,
            };
            // Writing into a BytesMut cannot fail for these sizes.
            let _ = v4::ConnAck::new(code, session_present && reason == Reason::Success).write(out);
        }
        Version::V5 => {
            use v5::ConnectReturnCode as C;
            let code = match reason {
                Reason::Success => C::Success,
                Reason::MalformedPacket => C::MalformedPacket,
                Reason::ProtocolError => C::ProtocolError,
                Reason::ImplementationSpecificError => C::ImplementationSpecificError,
                Reason::UnsupportedProtocolVersion => C::UnsupportedProtocolVersion,
                Reason::ClientIdentifierNotValid => C::ClientIdentifierNotValid,
                Reason::BadUserNameOrPassword => C::BadUserNamePassword,
                Reason::NotAuthorized => C::NotAuthorized,
                Reason::ServerUnavailable => C::ServerUnavailable,
                Reason::ServerBusy => C::ServerBusy,
                Reason::BadAuthenticationMethod => C::BadAuthenticationMethod,
                Reason::PacketTooLarge => C::PacketTooLarge,
                Reason::QuotaExceeded => C::QuotaExceeded,
                _ => C::UnspecifiedError,
            };
            let properties = v5::ConnAckProperties {
                session_expiry_interval: None,
                receive_max: None,
                max_qos: None,
                retain_available: None,
                max_packet_size: props.max_packet_size,
                assigned_client_identifier: props.assigned_client_id,
                topic_alias_max: props.topic_alias_max,
                reason_string: props.reason_string,
                user_properties: Vec::new(),
                // No subscriptions: the collector is not a broker.
                wildcard_subscription_available: Some(0),
                subscription_identifiers_available: Some(0),
                shared_subscription_available: Some(0),
                server_keep_alive: None,
                response_information: None,
                server_reference: None,
                authentication_method: None,
                authentication_data: None,
            };
            let ack = v5::ConnAck {
                session_present: session_present && reason == Reason::Success,
                code,
                properties: Some(properties),
            };
            let _ = ack.write(out);
        }
    }
}

/// Which acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    /// PUBACK (QoS 1).
    PubAck,
    /// PUBREC (QoS 2, first step).
    PubRec,
    /// PUBCOMP (QoS 2, last step).
    PubComp,
}

/// Appends a PUBACK, PUBREC or PUBCOMP. MQTT 3.1.1 has no reason codes: the
/// caller never sends a failure to a 3.1.1 client. The reason string is sent
/// only when given and `max_packet` leaves room for it.
pub fn write_ack(
    out: &mut BytesMut,
    version: Version,
    kind: AckKind,
    pkid: u16,
    reason: Reason,
    reason_string: Option<String>,
    max_packet: Option<u32>,
) {
    match version {
        Version::V4 => {
            let _ = match kind {
                AckKind::PubAck => v4::PubAck::new(pkid).write(out),
                AckKind::PubRec => v4::PubRec::new(pkid).write(out),
                AckKind::PubComp => v4::PubComp::new(pkid).write(out),
            };
        }
        Version::V5 => {
            let fits = |s: &String| {
                max_packet.is_none_or(|m| usize::try_from(m).unwrap_or(usize::MAX) >= 16 + s.len())
            };
            let reason_string = reason_string.filter(|s| fits(s) && s.len() < 1024);
            let _ = match kind {
                AckKind::PubAck => v5::PubAck {
                    pkid,
                    reason: puback_reason(reason),
                    properties: reason_string.map(|r| v5::PubAckProperties {
                        reason_string: Some(r),
                        user_properties: Vec::new(),
                    }),
                }
                .write(out),
                AckKind::PubRec => v5::PubRec {
                    pkid,
                    reason: pubrec_reason(reason),
                    properties: reason_string.map(|r| v5::PubRecProperties {
                        reason_string: Some(r),
                        user_properties: Vec::new(),
                    }),
                }
                .write(out),
                AckKind::PubComp => v5::PubComp {
                    pkid,
                    reason: if reason == Reason::PacketIdentifierNotFound {
                        v5::PubCompReason::PacketIdentifierNotFound
                    } else {
                        v5::PubCompReason::Success
                    },
                    properties: None,
                }
                .write(out),
            };
        }
    }
}

fn puback_reason(reason: Reason) -> v5::PubAckReason {
    use v5::PubAckReason as R;
    match reason {
        Reason::Success => R::Success,
        Reason::ImplementationSpecificError => R::ImplementationSpecificError,
        Reason::NotAuthorized => R::NotAuthorized,
        Reason::TopicNameInvalid => R::TopicNameInvalid,
        Reason::QuotaExceeded => R::QuotaExceeded,
        Reason::PayloadFormatInvalid => R::PayloadFormatInvalid,
        _ => R::UnspecifiedError,
    }
}

fn pubrec_reason(reason: Reason) -> v5::PubRecReason {
    use v5::PubRecReason as R;
    match reason {
        Reason::Success => R::Success,
        Reason::ImplementationSpecificError => R::ImplementationSpecificError,
        Reason::NotAuthorized => R::NotAuthorized,
        Reason::TopicNameInvalid => R::TopicNameInvalid,
        Reason::QuotaExceeded => R::QuotaExceeded,
        Reason::PayloadFormatInvalid => R::PayloadFormatInvalid,
        _ => R::UnspecifiedError,
    }
}

/// Appends a PINGRESP.
pub fn write_pingresp(out: &mut BytesMut) {
    let _ = v4::PingResp.write(out);
}

/// Appends a SUBACK refusing every filter: the collector ingests, it does not
/// deliver messages to subscribers.
pub fn write_suback_refused(out: &mut BytesMut, version: Version, pkid: u16, filters: usize) {
    match version {
        Version::V4 => {
            let codes = vec![v4::SubscribeReasonCode::Failure; filters];
            let _ = v4::SubAck::new(pkid, codes).write(out);
        }
        Version::V5 => {
            let ack = v5::SubAck {
                pkid,
                return_codes: vec![v5::SubscribeReasonCode::ImplementationSpecific; filters],
                properties: None,
            };
            let _ = ack.write(out);
        }
    }
}

/// Appends an UNSUBACK ("no subscription existed" in MQTT 5).
pub fn write_unsuback(out: &mut BytesMut, version: Version, pkid: u16, filters: usize) {
    match version {
        Version::V4 => {
            let _ = v4::UnsubAck::new(pkid).write(out);
        }
        Version::V5 => {
            let ack = v5::UnsubAck {
                pkid,
                reasons: vec![v5::UnsubAckReason::NoSubscriptionExisted; filters],
                properties: None,
            };
            let _ = ack.write(out);
        }
    }
}

/// Appends an MQTT 5 DISCONNECT (3.1.1 has no server DISCONNECT: nothing is
/// written).
pub fn write_disconnect(
    out: &mut BytesMut,
    version: Version,
    reason: Reason,
    reason_string: Option<String>,
) {
    if version != Version::V5 {
        return;
    }
    use v5::DisconnectReasonCode as D;
    let code = match reason {
        Reason::Success => D::NormalDisconnection,
        Reason::MalformedPacket => D::MalformedPacket,
        Reason::ProtocolError => D::ProtocolError,
        Reason::ImplementationSpecificError => D::ImplementationSpecificError,
        Reason::NotAuthorized => D::NotAuthorized,
        Reason::ServerBusy => D::ServerBusy,
        Reason::ServerShuttingDown => D::ServerShuttingDown,
        Reason::KeepAliveTimeout => D::KeepAliveTimeout,
        Reason::SessionTakenOver => D::SessionTakenOver,
        Reason::TopicNameInvalid => D::TopicNameInvalid,
        Reason::TopicAliasInvalid => D::TopicAliasInvalid,
        Reason::PacketTooLarge => D::PacketTooLarge,
        Reason::QuotaExceeded => D::QuotaExceeded,
        Reason::PayloadFormatInvalid => D::PayloadFormatInvalid,
        _ => D::UnspecifiedError,
    };
    let Some(reason_string) = reason_string.filter(|s| s.len() < 1024) else {
        // rumqttc 0.25 cannot encode this one: without properties it counts
        // one byte but writes two, and with empty ones its length (2) hits
        // the special case of a bare "normal disconnection". Reason code and
        // an empty property length, by hand.
        out.extend_from_slice(&[0xE0, 0x02, code as u8, 0x00]);
        return;
    };
    let disconnect = v5::Disconnect {
        reason_code: code,
        properties: Some(v5::DisconnectProperties {
            session_expiry_interval: None,
            reason_string: Some(reason_string),
            user_properties: Vec::new(),
            server_reference: None,
        }),
    };
    let _ = disconnect.write(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::packet::{Inbound, decode, frame_header};

    #[test]
    fn v5_disconnect_frames_are_consistent() {
        for reason_string in [None, Some("bye".to_owned())] {
            let mut out = BytesMut::new();
            write_disconnect(&mut out, Version::V5, Reason::ServerShuttingDown, reason_string);
            let h = frame_header(&out, 1 << 20).expect("header").expect("complete");
            assert_eq!(h.frame_len, out.len(), "{:?}", &out[..]);
            match v5::Packet::read(&mut out, None).expect("read") {
                v5::Packet::Disconnect(d) => assert_eq!(d.reason_code as u8, 0x8B),
                other => panic!("{other:?}"),
            }
        }
        let got = decode(Version::V5, BytesMut::from(&[0xE0u8, 0x01, 0x04][..])).expect("decode");
        assert_eq!(got, Inbound::Disconnect { reason: 4, session_expiry: None });
    }

    #[test]
    fn acks_round_trip_through_the_codec() {
        let mut out = BytesMut::new();
        write_ack(
            &mut out,
            Version::V5,
            AckKind::PubAck,
            7,
            Reason::QuotaExceeded,
            Some("slow down".into()),
            None,
        );
        let max = Some(1 << 20);
        match v5::Packet::read(&mut out, max).expect("read") {
            v5::Packet::PubAck(a) => {
                assert_eq!((a.pkid, a.reason), (7, v5::PubAckReason::QuotaExceeded));
                assert_eq!(
                    a.properties.and_then(|p| p.reason_string).as_deref(),
                    Some("slow down")
                );
            }
            other => panic!("{other:?}"),
        }
        write_ack(&mut out, Version::V4, AckKind::PubRec, 9, Reason::Success, None, None);
        assert_eq!(&out[..], [0x50, 0x02, 0x00, 0x09]);
    }
}
