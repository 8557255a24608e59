//! Framing, before the codec sees a byte: the fixed header gives the frame
//! length, which is checked against the maximum packet size before the body
//! is read (so a 10 MiB length prefix costs nothing), and only a complete
//! frame is handed to the codec. The reserved flag bits of the fixed header,
//! which the codec does not check, are checked here. Also the protocol sniff:
//! the name and level of a connection's first packet, read from its bytes.

use super::protocol::ProtocolError;

/// A complete frame's fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Packet type and flags.
    pub byte0: u8,
    /// Fixed header plus remaining length: the whole frame.
    pub frame_len: usize,
}

impl FrameHeader {
    /// The packet type (upper four bits).
    pub fn packet_type(&self) -> u8 {
        self.byte0 >> 4
    }

    /// Whether this is a PUBLISH.
    pub fn is_publish(&self) -> bool {
        self.packet_type() == 3
    }
}

/// Reads the fixed header at the start of `buf`: `Ok(None)` until enough bytes
/// are there to know the frame's length.
///
/// # Errors
/// [`ProtocolError::Malformed`] for a remaining length of more than four
/// bytes, an unknown packet type or reserved flag bits that are not as the
/// protocol fixes them; [`ProtocolError::TooLarge`] for a frame over
/// `max_frame`.
pub fn frame_header(buf: &[u8], max_frame: usize) -> Result<Option<FrameHeader>, ProtocolError> {
    let Some(&byte0) = buf.first() else { return Ok(None) };
    let mut remaining: usize = 0;
    let mut header_len = 1;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else { return Ok(None) };
        remaining |= usize::from(b & 0x7F) << (7 * i);
        header_len += 1;
        if b & 0x80 == 0 {
            check_flags(byte0)?;
            let frame_len = header_len + remaining;
            if frame_len > max_frame {
                return Err(ProtocolError::TooLarge { size: frame_len, max: max_frame });
            }
            return Ok(Some(FrameHeader { byte0, frame_len }));
        }
    }
    Err(ProtocolError::Malformed("remaining length longer than four bytes".into()))
}

/// The fixed header's flag bits must be 0, except PUBLISH's (free, but QoS 3
/// is invalid) and PUBREL/SUBSCRIBE/UNSUBSCRIBE's (0b0010).
fn check_flags(byte0: u8) -> Result<(), ProtocolError> {
    let (kind, flags) = (byte0 >> 4, byte0 & 0x0F);
    let ok = match kind {
        0 | 15 => {
            return Err(ProtocolError::Malformed(format!("reserved packet type {kind}")));
        }
        3 => (flags >> 1) & 0b11 != 0b11,
        6 | 8 | 10 => flags == 0b0010,
        _ => flags == 0,
    };
    if ok {
        Ok(())
    } else {
        Err(ProtocolError::Malformed(format!("invalid flags {flags:#06b} for packet type {kind}")))
    }
}

/// What the first packet of a connection says about its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// MQTT 3.1.1.
    V4,
    /// MQTT 5.
    V5,
    /// A CONNECT of a protocol version this server does not speak (MQTT 3.1,
    /// or an unknown level): answered with an MQTT 3.1.1 CONNACK "unacceptable
    /// protocol version", then closed.
    Unsupported(u8),
}

/// Reads the protocol name and level of a complete CONNECT frame.
///
/// # Errors
/// [`ProtocolError::Violation`] if the frame is not a CONNECT;
/// [`ProtocolError::Malformed`] if its protocol name is not MQTT's.
pub fn sniff_connect(frame: &[u8]) -> Result<Sniff, ProtocolError> {
    if frame.first().map(|b| b >> 4) != Some(1) {
        return Err(ProtocolError::Violation("the first packet must be CONNECT".into()));
    }
    let header_len = 1 + frame.iter().skip(1).take(4).take_while(|b| *b & 0x80 != 0).count() + 1;
    let body = frame.get(header_len..).unwrap_or_default();
    let malformed = || ProtocolError::Malformed("CONNECT without a protocol name".into());
    let (&[hi, lo], rest) = body.split_first_chunk::<2>().ok_or_else(malformed)?;
    let name_len = usize::from(u16::from_be_bytes([hi, lo]));
    let name = rest.get(..name_len).ok_or_else(malformed)?;
    let level = *rest.get(name_len).ok_or_else(malformed)?;
    match (name, level) {
        (b"MQTT", 4) => Ok(Sniff::V4),
        (b"MQTT", 5) => Ok(Sniff::V5),
        (b"MQTT" | b"MQIsdp", level) => Ok(Sniff::Unsupported(level)),
        _ => Err(ProtocolError::Malformed(format!(
            "unknown protocol name {:?}",
            String::from_utf8_lossy(name)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::packet::Reason;

    #[test]
    fn framing_checks_size_before_the_body_arrives() {
        assert_eq!(frame_header(&[], 100), Ok(None));
        assert_eq!(frame_header(&[0x30], 100), Ok(None));
        assert_eq!(frame_header(&[0x30, 0x80], 100), Ok(None));
        assert_eq!(
            frame_header(&[0x30, 0x05], 100),
            Ok(Some(FrameHeader { byte0: 0x30, frame_len: 7 }))
        );
        // 10 MiB announced in four bytes, refused on the header alone.
        let e = frame_header(&[0x30, 0x80, 0x80, 0x80, 0x05], 1 << 20).expect_err("too large");
        assert!(matches!(e, ProtocolError::TooLarge { .. }), "{e}");
        assert_eq!(e.reason(), Reason::PacketTooLarge);
        assert!(frame_header(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], usize::MAX).is_err());
        // Reserved flags and types.
        assert!(frame_header(&[0x62, 0x02], 100).is_ok()); // PUBREL 0b0010
        assert!(frame_header(&[0x60, 0x02], 100).is_err());
        assert!(frame_header(&[0x36, 0x02], 100).is_err()); // QoS 3
        assert!(frame_header(&[0xC1, 0x00], 100).is_err()); // PINGREQ with flags
        assert!(frame_header(&[0x00, 0x00], 100).is_err());
        assert!(frame_header(&[0xF0, 0x00], 100).is_err());
    }
}
