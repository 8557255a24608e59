//! MQTT packets as the ingest sees them, whatever the protocol version:
//! framing, the protocol sniff of a CONNECT, decoding with rumqttc's
//! `mqttbytes` codecs (v4 = MQTT 3.1.1, v5 = MQTT 5) and encoding the few
//! packets a server sends.
//!
//! - `protocol`: [`Version`], [`Reason`] (MQTT 5 reason codes),
//!   [`ProtocolError`];
//! - `frame`: [`frame_header`] (size and flags checked before the body is
//!   read) and [`sniff_connect`];
//! - `decode`: [`decode_connect`] and [`decode`] (under `catch_unwind`);
//! - `encode`: the packets the server writes (`write_*`).
//!
//! The files import only `protocol` (and, in tests, each other's functions
//! through this module); callers use `crate::ingest::packet::...`.

mod decode;
mod encode;
mod frame;
mod protocol;

pub use decode::{ConnectInfo, Inbound, PublishIn, decode, decode_connect};
pub use encode::{
    AckKind, ConnackProps, write_ack, write_connack, write_disconnect, write_pingresp,
    write_suback_refused, write_unsuback,
};
pub use frame::{FrameHeader, Sniff, frame_header, sniff_connect};
pub use protocol::{ProtocolError, Reason, Version};
