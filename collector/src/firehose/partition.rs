//! Dynamic partitioning: object prefixes from fields of the records.
//!
//! A delivery stream may define partition keys, each a name and a
//! [`JsonQuery`] into the record's data parsed as JSON (a simpler cousin of
//! Firehose's jq MetadataExtraction): a JSON pointer (`/device/id`) or a
//! dotted path (`device.id`, `.device.id`, `tags.0`).
//!
//! The prefix uses them as `!{partitionKeyFromQuery:<name>}`; every key
//! defined must be used, and every key used must be defined. A value that is
//! a string is used as it is, a number or boolean as its JSON text. A batch
//! is split into one object per distinct combination of values, each holding
//! its records in order and named after its own first and last sequence
//! numbers (so delivering the batch again after a crash writes the same
//! objects). A record that is not JSON, lacks a key, has a null, object or
//! array value there, or a value that cannot be a path segment (empty, `.`,
//! `..`, containing `/`, `\` or NUL, longer than [`MAX_VALUE_CHARS`]) goes to
//! the error output (type `partitioning-failed`, error code
//! [`EXTRACTION_FAILED`]); nothing is dropped.

use std::collections::BTreeMap;

use super::error::FirehoseError;
use super::prefix::PrefixTemplate;
use super::query::JsonQuery;

/// Most dynamic partitioning keys of a delivery stream.
pub const MAX_PARTITION_KEYS: usize = 50;
/// Error code of records whose partition keys could not be extracted.
pub const EXTRACTION_FAILED: &str = "DynamicPartitioning.MetadataExtractionFailed";
/// Error output type of those records.
pub const PARTITIONING_FAILED: &str = "partitioning-failed";
/// Longest partition key value, characters.
pub const MAX_VALUE_CHARS: usize = 512;

/// The partition keys of a delivery stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Partitioner {
    keys: Vec<(String, JsonQuery)>,
}

impl Partitioner {
    /// Parses `(name, query)` pairs.
    ///
    /// # Errors
    /// [`FirehoseError::InvalidPartitionKey`].
    pub fn new(keys: &[(String, String)]) -> Result<Self, FirehoseError> {
        let bad = |name: &str, reason: String| FirehoseError::InvalidPartitionKey {
            name: name.chars().take(80).collect(),
            reason,
        };
        if keys.len() > MAX_PARTITION_KEYS {
            return Err(bad("", format!("more than {MAX_PARTITION_KEYS} keys")));
        }
        let mut out: Vec<(String, JsonQuery)> = Vec::with_capacity(keys.len());
        for (name, query) in keys {
            let name_ok = !name.is_empty()
                && name.len() <= 64
                && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
            if !name_ok {
                return Err(bad(name, "names are 1 to 64 characters of [a-zA-Z0-9_-]".into()));
            }
            if out.iter().any(|(n, _)| n == name) {
                return Err(bad(name, "defined twice".into()));
            }
            out.push((name.clone(), JsonQuery::parse(query).map_err(|r| bad(name, r))?));
        }
        Ok(Self { keys: out })
    }

    /// No keys: every batch is one object.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks that `prefix` uses exactly the keys defined.
    ///
    /// # Errors
    /// [`FirehoseError::InvalidPartitionKey`] naming the first key used but
    /// undefined, or defined but unused.
    pub fn check_prefix(
        &self,
        prefix: &PrefixTemplate,
        template: &str,
    ) -> Result<(), FirehoseError> {
        let used = prefix.partition_keys();
        for u in &used {
            if !self.keys.iter().any(|(n, _)| n == u) {
                return Err(FirehoseError::InvalidPartitionKey {
                    name: (*u).to_owned(),
                    reason: format!("used in prefix {template:?} but not defined"),
                });
            }
        }
        for (n, _) in &self.keys {
            if !used.contains(&n.as_str()) {
                return Err(FirehoseError::InvalidPartitionKey {
                    name: n.clone(),
                    reason: format!("defined but not used in prefix {template:?}"),
                });
            }
        }
        Ok(())
    }

    /// The values of every key in `data`.
    ///
    /// # Errors
    /// Why extraction failed, for the error output.
    pub fn extract(&self, data: &[u8]) -> Result<BTreeMap<String, String>, String> {
        let mut out = BTreeMap::new();
        if self.keys.is_empty() {
            return Ok(out);
        }
        let json: serde_json::Value =
            serde_json::from_slice(data).map_err(|e| format!("record is not JSON: {e}"))?;
        for (name, query) in &self.keys {
            let value = match query.get(&json) {
                None => return Err(format!("no value at {} for key {name:?}", query.pointer())),
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                    v.to_string()
                }
                Some(_) => {
                    return Err(format!(
                        "value at {} for key {name:?} is null, an object or an array",
                        query.pointer()
                    ));
                }
            };
            let ok = !value.is_empty()
                && value != "."
                && value != ".."
                && value.chars().count() <= MAX_VALUE_CHARS
                && !value.contains(['/', '\\', '\0']);
            if !ok {
                return Err(format!(
                    "value {:?} for key {name:?} cannot be part of an object key",
                    value.chars().take(80).collect::<String>()
                ));
            }
            out.insert(name.clone(), value);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts() {
        let p = Partitioner::new(&[("dev".into(), "device.id".into()), ("n".into(), "/n".into())])
            .expect("keys");
        let got = p.extract(br#"{"device":{"id":"d1"},"n":7}"#).expect("values");
        assert_eq!(got.get("dev").map(String::as_str), Some("d1"));
        assert_eq!(got.get("n").map(String::as_str), Some("7"));
        for bad in [
            &b"not json"[..],
            br#"{"n":1}"#,
            br#"{"device":{"id":null},"n":1}"#,
            br#"{"device":{"id":"../x"},"n":1}"#,
            br#"{"device":{"id":""},"n":1}"#,
        ] {
            assert!(p.extract(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(Partitioner::new(&[("a b".into(), "x".into())]).is_err());
        assert!(Partitioner::new(&[("a".into(), "x".into()), ("a".into(), "y".into())]).is_err());
    }
}
