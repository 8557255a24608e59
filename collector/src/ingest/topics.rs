//! From MQTT topic to stream and partition key.
//!
//! Two layouts are built in, tried after the configured rules:
//!
//! - `weir/<stream>/$batch`: the payload is a weir-wire envelope (a batch, or
//!   a single record) whose records keep their own partition keys;
//! - `weir/<stream>/<partition key>`: the payload is one record's data; the
//!   key is everything after the stream level, so it may contain `/`.
//!
//! A configured rule (`[[mqtt.rules]]`) maps a topic filter to a stream (a
//! name, or `topic(n)`, the n-th level, 1-based) and takes the partition key
//! from `topic(n)`, `topic(n..)` (levels n to the end, joined by `/`), the
//! client id or the authenticated identity, like an IoT rule's `topic(n)`;
//! `payload = "batch"` reads the payload as a weir-wire envelope. The first
//! rule whose filter matches wins.
//!
//! Filters follow MQTT: `+` is one level, a trailing `#` any number of levels
//! (including none), and a filter starting with a wildcard does not match a
//! topic starting with `$`.

use serde::Deserialize;

/// How a topic's payload is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadKind {
    /// The payload is one record's data.
    #[default]
    Raw,
    /// The payload is a weir-wire envelope: a batch or a single record.
    Batch,
}

/// One `[[mqtt.rules]]` entry as written in the configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuleEntry {
    /// MQTT topic filter, e.g. `tele/+/SENSOR`.
    pub filter: String,
    /// Target stream: a name, or `topic(n)`.
    pub stream: String,
    /// `topic(n)`, `topic(n..)`, `client_id` (default) or `identity`.
    #[serde(default = "default_key")]
    pub partition_key: String,
    /// `raw` (default) or `batch`.
    #[serde(default)]
    pub payload: PayloadKind,
}

fn default_key() -> String {
    "client_id".into()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum StreamSpec {
    Name(String),
    Level(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeySpec {
    Level(usize),
    LevelsFrom(usize),
    ClientId,
    Identity,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    filter: String,
    stream: StreamSpec,
    key: KeySpec,
    payload: PayloadKind,
}

/// Where a publish goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The stream.
    pub stream: String,
    /// The partition key of a raw payload (batches carry their own).
    pub key: Option<String>,
    /// How the payload is read.
    pub payload: PayloadKind,
}

/// Why a topic maps to nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// No rule matches the topic.
    #[error("no mapping rule matches topic {0:?}")]
    NoRule(String),
    /// The rule's level for the stream or key is missing or empty.
    #[error("topic {topic:?} has no {what} at level {level}")]
    MissingLevel {
        /// The topic.
        topic: String,
        /// `stream` or `partition key`.
        what: &'static str,
        /// The 1-based level.
        level: usize,
    },
    /// The rule takes the key from the identity, and the client has none.
    #[error(
        "rule for {0:?} takes the partition key from the identity, and the client is anonymous"
    )]
    NoIdentity(String),
}

/// The compiled mapping: configured rules, then the built-in layouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    rules: Vec<Rule>,
}

impl Mapping {
    /// Compiles rules; with `builtin`, the `weir/...` layouts follow them.
    ///
    /// # Errors
    /// `(key, message)`: the first invalid entry, named
    /// `mqtt.rules[i].<field>`.
    pub fn new(entries: &[RuleEntry], builtin: bool) -> Result<Self, (String, String)> {
        let mut rules = Vec::with_capacity(entries.len() + 2);
        for (i, e) in entries.iter().enumerate() {
            let key = |field: &str| format!("mqtt.rules[{i}].{field}");
            if !valid_filter(&e.filter) {
                return Err((key("filter"), format!("{:?} is not a valid topic filter", e.filter)));
            }
            let stream = match parse_level(&e.stream) {
                Some(LevelRef::One(n)) => StreamSpec::Level(n),
                Some(LevelRef::From(_)) => {
                    return Err((key("stream"), "a stream is one level: `topic(n)`".into()));
                }
                None if is_stream_name(&e.stream) => StreamSpec::Name(e.stream.clone()),
                None => {
                    return Err((
                        key("stream"),
                        format!(
                            "{:?} is neither `topic(n)` nor a stream name (1 to 128 of a-z, A-Z, 0-9, '_', '.', '-')",
                            e.stream
                        ),
                    ));
                }
            };
            let partition_key = match e.partition_key.as_str() {
                "client_id" => KeySpec::ClientId,
                "identity" => KeySpec::Identity,
                other => match parse_level(other) {
                    Some(LevelRef::One(n)) => KeySpec::Level(n),
                    Some(LevelRef::From(n)) => KeySpec::LevelsFrom(n),
                    None => {
                        return Err((
                            key("partition_key"),
                            format!(
                                "{other:?} is not `topic(n)`, `topic(n..)`, `client_id` or `identity`"
                            ),
                        ));
                    }
                },
            };
            rules.push(Rule {
                filter: e.filter.clone(),
                stream,
                key: partition_key,
                payload: e.payload,
            });
        }
        if builtin {
            rules.push(Rule {
                filter: "weir/+/$batch".into(),
                stream: StreamSpec::Level(2),
                key: KeySpec::ClientId,
                payload: PayloadKind::Batch,
            });
            rules.push(Rule {
                filter: "weir/+/#".into(),
                stream: StreamSpec::Level(2),
                key: KeySpec::LevelsFrom(3),
                payload: PayloadKind::Raw,
            });
        }
        Ok(Self { rules })
    }

    /// Maps a topic name.
    ///
    /// # Errors
    /// [`MapError`] when no rule matches or the matching rule's levels are
    /// missing.
    pub fn map(
        &self,
        topic: &str,
        client_id: &str,
        identity: Option<&str>,
    ) -> Result<Target, MapError> {
        let rule = self
            .rules
            .iter()
            .find(|r| matches(&r.filter, topic))
            .ok_or_else(|| MapError::NoRule(topic.to_owned()))?;
        let level =
            |n: usize, what: &'static str| {
                topic.split('/').nth(n - 1).filter(|l| !l.is_empty()).ok_or_else(|| {
                    MapError::MissingLevel { topic: topic.to_owned(), what, level: n }
                })
            };
        let stream = match &rule.stream {
            StreamSpec::Name(n) => n.clone(),
            StreamSpec::Level(n) => level(*n, "stream")?.to_owned(),
        };
        let key = match rule.payload {
            PayloadKind::Batch => None,
            PayloadKind::Raw => Some(match rule.key {
                KeySpec::Level(n) => level(n, "partition key")?.to_owned(),
                KeySpec::LevelsFrom(n) => {
                    let rest: Vec<&str> = topic.split('/').skip(n - 1).collect();
                    let joined = rest.join("/");
                    if joined.is_empty() {
                        return Err(MapError::MissingLevel {
                            topic: topic.to_owned(),
                            what: "partition key",
                            level: n,
                        });
                    }
                    joined
                }
                KeySpec::ClientId => client_id.to_owned(),
                KeySpec::Identity => identity
                    .map(str::to_owned)
                    .ok_or_else(|| MapError::NoIdentity(topic.to_owned()))?,
            }),
        };
        Ok(Target { stream, key, payload: rule.payload })
    }
}

enum LevelRef {
    One(usize),
    From(usize),
}

/// `topic(n)` or `topic(n..)` with n ≥ 1.
fn parse_level(s: &str) -> Option<LevelRef> {
    let inner = s.strip_prefix("topic(")?.strip_suffix(')')?;
    match inner.strip_suffix("..") {
        Some(n) => n.parse().ok().filter(|n| *n >= 1).map(LevelRef::From),
        None => inner.parse().ok().filter(|n| *n >= 1).map(LevelRef::One),
    }
}

fn is_stream_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Whether `topic` is a valid topic name for PUBLISH: non-empty, no
/// wildcards, no NUL, at most 65,535 bytes.
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= usize::from(u16::MAX) && !topic.contains(['+', '#', '\0'])
}

/// Whether `filter` is a valid topic filter: `+` alone in its level, `#`
/// alone in the last level.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    levels.iter().enumerate().all(|(i, l)| match *l {
        "+" => true,
        "#" => i == last,
        l => !l.contains(['+', '#']),
    })
}

/// Whether a valid `filter` matches a valid topic name.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut t = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match t.next() {
            Some(level) if f == "+" || f == level => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_matching_follows_mqtt() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+/c", "a/b/d"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(!matches("#", "$SYS/x"));
        assert!(matches("+/+", "/x"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
        assert!(matches("weir/+/$batch", "weir/s/$batch"));
        assert!(valid_filter("a/+/#") && valid_filter("#") && valid_filter("+"));
        assert!(!valid_filter("a/#/b") && !valid_filter("a+/b") && !valid_filter(""));
        assert!(valid_topic_name("a/b") && !valid_topic_name("a/+") && !valid_topic_name(""));
    }

    #[test]
    fn builtin_layouts() {
        let m = Mapping::new(&[], true).expect("mapping");
        let t = m.map("weir/telemetry/dev-1", "c", None).expect("raw");
        assert_eq!(t.stream, "telemetry");
        assert_eq!(t.key.as_deref(), Some("dev-1"));
        assert_eq!(t.payload, PayloadKind::Raw);
        let t = m.map("weir/telemetry/room/4/temp", "c", None).expect("nested key");
        assert_eq!(t.key.as_deref(), Some("room/4/temp"));
        let t = m.map("weir/telemetry/$batch", "c", None).expect("batch");
        assert_eq!((t.stream.as_str(), t.payload), ("telemetry", PayloadKind::Batch));
        assert!(matches!(m.map("weir/telemetry", "c", None), Err(MapError::MissingLevel { .. })));
        assert!(matches!(m.map("weir//k", "c", None), Err(MapError::MissingLevel { .. })));
        assert!(matches!(m.map("other/x", "c", None), Err(MapError::NoRule(_))));
        let none = Mapping::new(&[], false).expect("mapping");
        assert!(none.map("weir/telemetry/dev-1", "c", None).is_err());
    }

    #[test]
    fn configured_rules_come_first() {
        let rules = vec![
            RuleEntry {
                filter: "tele/+/SENSOR".into(),
                stream: "tasmota".into(),
                partition_key: "topic(2)".into(),
                payload: PayloadKind::Raw,
            },
            RuleEntry {
                filter: "site/+/#".into(),
                stream: "topic(2)".into(),
                partition_key: "topic(3..)".into(),
                payload: PayloadKind::Raw,
            },
            RuleEntry {
                filter: "weir/override/+".into(),
                stream: "elsewhere".into(),
                partition_key: "identity".into(),
                payload: PayloadKind::Raw,
            },
            RuleEntry {
                filter: "fw/up".into(),
                stream: "firmware".into(),
                partition_key: "client_id".into(),
                payload: PayloadKind::Batch,
            },
        ];
        let m = Mapping::new(&rules, true).expect("mapping");
        let t = m.map("tele/plug-3/SENSOR", "c", None).expect("tasmota");
        assert_eq!((t.stream.as_str(), t.key.as_deref()), ("tasmota", Some("plug-3")));
        let t = m.map("site/berlin/a/b", "c", None).expect("site");
        assert_eq!((t.stream.as_str(), t.key.as_deref()), ("berlin", Some("a/b")));
        let t = m.map("weir/override/x", "c", Some("alice")).expect("identity");
        assert_eq!((t.stream.as_str(), t.key.as_deref()), ("elsewhere", Some("alice")));
        assert!(matches!(m.map("weir/override/x", "c", None), Err(MapError::NoIdentity(_))));
        let t = m.map("fw/up", "c", None).expect("batch");
        assert_eq!((t.stream.as_str(), t.payload), ("firmware", PayloadKind::Batch));
    }

    #[test]
    fn invalid_rules_name_their_key() {
        let bad = |filter: &str, stream: &str, key: &str| {
            Mapping::new(
                &[RuleEntry {
                    filter: filter.into(),
                    stream: stream.into(),
                    partition_key: key.into(),
                    payload: PayloadKind::Raw,
                }],
                true,
            )
            .expect_err("invalid")
            .0
        };
        assert_eq!(bad("a/#/b", "s", "client_id"), "mqtt.rules[0].filter");
        assert_eq!(bad("a/b", "s s", "client_id"), "mqtt.rules[0].stream");
        assert_eq!(bad("a/b", "topic(0)", "client_id"), "mqtt.rules[0].stream");
        assert_eq!(bad("a/b", "topic(1..)", "client_id"), "mqtt.rules[0].stream");
        assert_eq!(bad("a/b", "s", "topic(x)"), "mqtt.rules[0].partition_key");
    }
}
