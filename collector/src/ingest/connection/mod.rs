//! One MQTT connection, one task: CONNECT and authentication, then the loop
//! that reads packets, appends them window by window and acknowledges them
//! once durable, then closing with a reason (and the will).
//!
//! - `handshake`: the CONNECT, authentication, client id, session attach
//!   (takeover), the CONNACK or a refusal;
//! - `packet_loop`: [`serve`] and the loop: windows, keep-alive, topic
//!   aliases, backpressure, refusals of publishes;
//! - `close`: why a connection ends, the DISCONNECT it sends, the will;
//! - `shared`: [`Shared`] (what every connection shares), [`Listener`];
//! - `socket`: bounded writes and shutdown.
//!
//! Imports go one way: `packet_loop` → `handshake`, `close` → `shared`,
//! `socket`.

mod close;
mod handshake;
mod packet_loop;
mod shared;
mod socket;

pub use handshake::{CONNECT_TIMEOUT, MAX_CLIENT_ID_BYTES, MAX_CONNECT_BYTES, TOPIC_ALIAS_MAX};
pub use packet_loop::{MAX_PENDING_PUBLISHES, PACKET_TIMEOUT, READ_BUFFER_BYTES, serve};
pub use shared::{Listener, Shared};
pub use socket::WRITE_TIMEOUT;
