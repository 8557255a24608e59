//! `[mqtt]`: the listeners, limits, stream auto-creation, users, ACLs and
//! topic mapping rules of the MQTT ingest.
//!
//! ```toml
//! [mqtt]
//! tls_listen = "0.0.0.0:8883"      # MQTT over TLS; "off" to disable
//! listen = "127.0.0.1:1883"        # plain MQTT; off unless set
//! allow_anonymous = false          # plain listener only
//! max_packet_bytes = 5308416       # 5 MiB batches + headers
//! max_connections = 10000
//! memory_budget_bytes = 268435456  # payload bytes held by all connections
//! auto_create_streams = true
//! auto_create_shards = 1
//! builtin_topics = true            # weir/<stream>/<key> and weir/<stream>/$batch
//!
//! [[mqtt.users]]
//! name = "gateway-1"
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$..."
//!
//! [[mqtt.acl]]
//! identity = "*"
//! publish = ["weir/telemetry/%c", "weir/telemetry/$batch"]
//!
//! [[mqtt.rules]]
//! filter = "tele/+/SENSOR"
//! stream = "tasmota"
//! partition_key = "topic(2)"
//! ```

use std::net::SocketAddr;

use serde::Deserialize;

use super::auth::{Acl, AclEntry, Authenticator, UserEntry};
use super::topics::{Mapping, RuleEntry};
use crate::store::backend::MAX_SHARDS_PER_STREAM;

/// Default address of the TLS listener.
pub const DEFAULT_TLS_LISTEN: &str = "0.0.0.0:8883";
/// Default largest packet: a full 5 MiB wire batch plus room for the topic,
/// properties and envelope.
pub const DEFAULT_MAX_PACKET_BYTES: u32 = 5 * 1024 * 1024 + 64 * 1024;
/// Default cap on concurrent connections (each costs a task and a small
/// read buffer when idle).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// Default bound on publish bytes held by all connections together before
/// they are durable; connections stop reading their sockets beyond it.
pub const DEFAULT_MEMORY_BUDGET_BYTES: u64 = 256 * 1024 * 1024;
/// Default shard count of auto-created streams.
pub const DEFAULT_AUTO_CREATE_SHARDS: u32 = 1;

/// `[mqtt]` as written.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSection {
    /// Plain MQTT listener; off unless set ("off" also disables it).
    pub listen: Option<String>,
    /// MQTT over TLS listener; "off" disables it.
    pub tls_listen: String,
    /// Whether clients without credentials may connect to the plain listener.
    pub allow_anonymous: bool,
    /// Largest packet accepted, in bytes.
    pub max_packet_bytes: u32,
    /// Most concurrent connections; more are closed at accept.
    pub max_connections: u32,
    /// Publish bytes all connections may hold before their appends are
    /// durable.
    pub memory_budget_bytes: u64,
    /// Whether a publish to a missing stream creates it.
    pub auto_create_streams: bool,
    /// Shards of an auto-created stream.
    pub auto_create_shards: u32,
    /// Whether the `weir/<stream>/...` layouts apply (after the rules).
    pub builtin_topics: bool,
    /// Users and their password hashes.
    pub users: Vec<UserEntry>,
    /// Publish permissions; none means everything is allowed.
    pub acl: Vec<AclEntry>,
    /// Topic mapping rules, tried in order before the built-in layouts.
    pub rules: Vec<RuleEntry>,
}

impl Default for MqttSection {
    fn default() -> Self {
        Self {
            listen: None,
            tls_listen: DEFAULT_TLS_LISTEN.into(),
            allow_anonymous: false,
            max_packet_bytes: DEFAULT_MAX_PACKET_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            memory_budget_bytes: DEFAULT_MEMORY_BUDGET_BYTES,
            auto_create_streams: true,
            auto_create_shards: DEFAULT_AUTO_CREATE_SHARDS,
            builtin_topics: true,
            users: Vec::new(),
            acl: Vec::new(),
            rules: Vec::new(),
        }
    }
}

/// The checked settings the ingest runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Plain listener address.
    pub listen: Option<SocketAddr>,
    /// TLS listener address.
    pub tls_listen: Option<SocketAddr>,
    /// Anonymous clients on the plain listener.
    pub allow_anonymous: bool,
    /// Largest packet, bytes.
    pub max_packet_bytes: usize,
    /// Most connections.
    pub max_connections: usize,
    /// Bytes all connections may hold.
    pub memory_budget_bytes: usize,
    /// Shard count for auto-created streams, if auto-creation is on.
    pub auto_create_shards: Option<u32>,
    /// Topic mapping.
    pub mapping: Mapping,
    /// Publish permissions.
    pub acl: Acl,
    /// Users (checked).
    pub users: Vec<UserEntry>,
}

fn address(key: &str, value: &str) -> Result<Option<SocketAddr>, (String, String)> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|e| {
        (key.to_owned(), format!("{value:?} is not an address like 0.0.0.0:8883 or \"off\" ({e})"))
    })
}

impl MqttSection {
    /// Checks every key and compiles users, ACLs and rules.
    ///
    /// # Errors
    /// `(key, message)` for the first invalid value, the key in dotted form
    /// (`mqtt.rules[1].filter`).
    pub fn validate(&self) -> Result<Settings, (String, String)> {
        let listen = match &self.listen {
            Some(l) => address("mqtt.listen", l)?,
            None => None,
        };
        let tls_listen = address("mqtt.tls_listen", &self.tls_listen)?;
        if !(1024..=268_435_455).contains(&self.max_packet_bytes) {
            return Err((
                "mqtt.max_packet_bytes".into(),
                format!("{} is outside 1024..=268435455", self.max_packet_bytes),
            ));
        }
        if self.max_connections == 0 {
            return Err(("mqtt.max_connections".into(), "must be at least 1".into()));
        }
        let min_budget = 2 * u64::from(self.max_packet_bytes);
        if self.memory_budget_bytes < min_budget || self.memory_budget_bytes > u64::from(u32::MAX) {
            return Err((
                "mqtt.memory_budget_bytes".into(),
                format!(
                    "{} is outside {min_budget}..={} (at least two maximum packets)",
                    self.memory_budget_bytes,
                    u32::MAX
                ),
            ));
        }
        if !(1..=MAX_SHARDS_PER_STREAM).contains(&self.auto_create_shards) {
            return Err((
                "mqtt.auto_create_shards".into(),
                format!("{} is outside 1..={MAX_SHARDS_PER_STREAM}", self.auto_create_shards),
            ));
        }
        Authenticator::new(&self.users)?;
        let acl = Acl::new(&self.acl)?;
        let mapping = Mapping::new(&self.rules, self.builtin_topics)?;
        Ok(Settings {
            listen,
            tls_listen,
            allow_anonymous: self.allow_anonymous,
            max_packet_bytes: self.max_packet_bytes as usize,
            max_connections: self.max_connections as usize,
            memory_budget_bytes: usize::try_from(self.memory_budget_bytes).unwrap_or(usize::MAX),
            auto_create_shards: self.auto_create_streams.then_some(self.auto_create_shards),
            mapping,
            acl,
            users: self.users.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let s = MqttSection::default().validate().expect("defaults");
        assert_eq!(s.tls_listen, Some("0.0.0.0:8883".parse().expect("addr")));
        assert_eq!(s.listen, None);
        assert_eq!(s.auto_create_shards, Some(1));
        assert!(!s.allow_anonymous);
    }

    #[test]
    fn errors_name_the_key() {
        let key = |s: MqttSection| s.validate().expect_err("invalid").0;
        assert_eq!(
            key(MqttSection { tls_listen: "nowhere".into(), ..Default::default() }),
            "mqtt.tls_listen"
        );
        assert_eq!(
            key(MqttSection { listen: Some("1.2.3.4".into()), ..Default::default() }),
            "mqtt.listen"
        );
        assert_eq!(
            key(MqttSection { max_packet_bytes: 10, ..Default::default() }),
            "mqtt.max_packet_bytes"
        );
        assert_eq!(
            key(MqttSection { memory_budget_bytes: 1024, ..Default::default() }),
            "mqtt.memory_budget_bytes"
        );
        assert_eq!(
            key(MqttSection { auto_create_shards: 0, ..Default::default() }),
            "mqtt.auto_create_shards"
        );
        let off = MqttSection { tls_listen: "off".into(), ..Default::default() };
        assert_eq!(off.validate().expect("off").tls_listen, None);
    }
}
