//! MQTT ingest: devices, agents and any stock MQTT client publish records to
//! the collector over MQTT 3.1.1 or 5, with TLS (and mutual TLS) or plain;
//! a PUBACK (QoS 1) or PUBREC (QoS 2) is sent only once the record is durable
//! in its shard, the same promise a 200 from Kinesis PutRecord makes.
//!
//! - `listener`: accept loops, connection limit, shutdown ([`Ingest`]);
//! - `connection`: one connection's protocol loop, backpressure, refusals;
//! - `appender`: a window of publishes → store appends → acknowledgements;
//! - `packet`: framing and rumqttc's `mqttbytes` codecs, version-neutral;
//! - `topics`: topic → stream and partition key (rules and built-in layouts);
//! - `auth`: passwords (Argon2) and ACLs;
//! - `session`: one live connection per client id, takeover, QoS 2 state;
//! - `settings`: the `[mqtt]` configuration section.

pub mod appender;
pub mod auth;
pub mod connection;
pub mod listener;
pub mod packet;
pub mod session;
pub mod settings;
pub mod topics;

pub use auth::{AclEntry, UserEntry, hash_password};
pub use listener::{Ingest, IngestError};
pub use settings::{MqttSection, Settings};
pub use topics::{PayloadKind, RuleEntry};
