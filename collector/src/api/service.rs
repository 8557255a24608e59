//! The Kinesis API as a service over a [`StreamStore`]: the [`Api`] value
//! every operation runs on (store, token signer, settings, clock) and what
//! operations share (stream names and ARNs, shapes of shards and streams,
//! constraint checks). `dispatch` runs an operation by name.

use std::sync::Arc;

use super::codec::Timestamp;
use super::error::{ACCOUNT_ID, ApiError, ErrorKind, Violations};
use super::model::{EnhancedMetrics, HashKeyRange, SequenceNumberRange, Shard, StreamModeOut};
use super::token::TokenSigner;
use crate::store::{Clock, ShardDescription, StreamMode, StreamStore, SystemClock};

/// Settings of the API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Region named in stream ARNs.
    pub region: String,
    /// Whether PROVISIONED streams created through the API get per-shard
    /// write limits.
    pub write_limits: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self { region: "us-east-1".into(), write_limits: false }
    }
}

/// The Kinesis API over a store.
#[derive(Debug)]
pub struct Api<S> {
    pub(super) store: S,
    pub(super) signer: TokenSigner,
    pub(super) config: ApiConfig,
    pub(super) clock: Arc<dyn Clock>,
}

impl<S: StreamStore> Api<S> {
    /// An API over `store`, signing tokens with `signer`.
    pub fn new(store: S, signer: TokenSigner, config: ApiConfig) -> Self {
        Self { store, signer, config, clock: Arc::new(SystemClock) }
    }

    /// The same API reading time from `clock` (token issue and expiry).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Now, ms since the Unix epoch.
    pub(super) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// `arn:aws:kinesis:<region>:000000000000:stream/<name>`.
    pub(super) fn arn(&self, stream: &str) -> String {
        format!("arn:aws:kinesis:{}:{ACCOUNT_ID}:stream/{stream}", self.config.region)
    }

    /// The stream a request names, by `StreamName` or `StreamARN`. A
    /// missing or malformed name is recorded in `v` (and `None` returned); an
    /// ARN of another account or region is `AccessDeniedException`.
    ///
    /// # Errors
    /// A foreign or malformed ARN, or a name and an ARN that disagree.
    pub(super) fn stream_name(
        &self,
        v: &mut Violations,
        name: Option<&str>,
        arn: Option<&str>,
    ) -> Result<Option<String>, ApiError> {
        let name_ok = name.is_none_or(|n| check_name(v, "streamName", n));
        let arn_ok = arn.is_none_or(|a| check_len(v, "streamARN", a, 1, 2048));
        match (name, arn) {
            (None, None) => {
                v.missing("streamName");
                Ok(None)
            }
            _ if !(name_ok && arn_ok) => Ok(None),
            (Some(n), None) => Ok(Some(n.to_owned())),
            (name, Some(arn)) => {
                let from_arn = self.name_from_arn(arn)?;
                match name {
                    Some(n) if n != from_arn => Err(ApiError::invalid(format!(
                        "StreamName {n} and StreamARN {arn} name different streams."
                    ))),
                    _ => Ok(Some(from_arn)),
                }
            }
        }
    }

    fn name_from_arn(&self, arn: &str) -> Result<String, ApiError> {
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        let [prefix, partition, service, region, account, resource] = parts[..] else {
            return Err(ApiError::invalid(format!("{arn} is not a stream ARN.")));
        };
        let name = resource.strip_prefix("stream/");
        let (true, Some(name)) =
            (prefix == "arn" && partition.starts_with("aws") && service == "kinesis", name)
        else {
            return Err(ApiError::invalid(format!("{arn} is not a stream ARN.")));
        };
        if account != ACCOUNT_ID || region != self.config.region {
            return Err(ApiError::new(
                ErrorKind::AccessDenied,
                format!(
                    "{arn} belongs to another account or region; this collector serves account {ACCOUNT_ID} in {}.",
                    self.config.region
                ),
            ));
        }
        Ok(name.to_owned())
    }
}

/// Takes a checked value after [`Violations::finish`] passed: a required
/// member that was missing has been reported there already.
///
/// # Errors
/// `ValidationException` naming `member` (only if the caller skipped the
/// check).
pub(super) fn present<T>(member: &str, value: Option<T>) -> Result<T, ApiError> {
    value.ok_or_else(|| {
        let mut v = Violations::default();
        v.missing(member);
        v.finish().err().unwrap_or_else(|| ApiError::new(ErrorKind::Validation, member))
    })
}

/// Stream and shard names: 1–128 of `[a-zA-Z0-9_.-]`; returns whether it was.
pub(super) fn check_name(v: &mut Violations, member: &str, name: &str) -> bool {
    if !check_len(v, member, name, 1, 128) {
        return false;
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        v.add(member, &name, "Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+");
        return false;
    }
    true
}

/// A length (in characters) within `min..=max`; returns whether it was.
pub(super) fn check_len(v: &mut Violations, member: &str, s: &str, min: usize, max: usize) -> bool {
    let chars = if s.is_ascii() { s.len() } else { s.chars().count() };
    if chars < min {
        v.add(member, &s, &format!("Member must have length greater than or equal to {min}"));
        false
    } else if chars > max {
        v.add(member, &s, &format!("Member must have length less than or equal to {max}"));
        false
    } else {
        true
    }
}

/// An integer within `min..=max`, if given.
pub(super) fn check_range(v: &mut Violations, member: &str, n: Option<i64>, min: i64, max: i64) {
    match n {
        Some(n) if n < min => {
            v.add(member, &n, &format!("Member must have value greater than or equal to {min}"))
        }
        Some(n) if n > max => {
            v.add(member, &n, &format!("Member must have value less than or equal to {max}"))
        }
        _ => {}
    }
}

/// A hash key: a decimal of `0|([1-9]\d{0,38})` that fits in 128 bits.
///
/// Returns `None` after recording a pattern violation; a well-formed number
/// past 2^128-1 is an `InvalidArgumentException` (what AWS answers).
pub(super) fn parse_hash_key(
    v: &mut Violations,
    member: &str,
    s: &str,
    name: &str,
) -> Result<Option<u128>, ApiError> {
    let shaped = !s.is_empty()
        && s.len() <= 39
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    if !shaped {
        v.add(member, &s, "Member must satisfy regular expression pattern: 0|([1-9]\\d{0,38})");
        return Ok(None);
    }
    s.parse::<u128>().map(Some).map_err(|_| {
        ApiError::invalid(format!(
            "Invalid {name}. {name} must be in the range: [0, 2^128-1]. Specified value was {s}."
        ))
    })
}

/// A sequence number's shape, `0|([1-9]\d{0,128})`.
pub(super) fn check_sequence_shape(v: &mut Violations, member: &str, s: &str) -> bool {
    let shaped = !s.is_empty()
        && s.len() <= 129
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    if !shaped {
        v.add(member, &s, "Member must satisfy regular expression pattern: 0|([1-9]\\d{0,128})");
    }
    shaped
}

/// Kinesis's shard shape.
pub(super) fn shard_out(s: &ShardDescription) -> Shard {
    Shard {
        shard_id: s.shard_id.clone(),
        parent_shard_id: s.parent_shard_id.clone(),
        adjacent_parent_shard_id: s.adjacent_parent_shard_id.clone(),
        hash_key_range: HashKeyRange {
            starting_hash_key: s.hash_range.start.to_string(),
            ending_hash_key: s.hash_range.end.to_string(),
        },
        sequence_number_range: SequenceNumberRange {
            starting_sequence_number: s.starting_sequence.to_string(),
            ending_sequence_number: s.ending_sequence.map(|e| e.to_string()),
        },
    }
}

/// `StreamModeDetails`.
pub(super) fn mode_out(mode: StreamMode) -> StreamModeOut {
    StreamModeOut { stream_mode: mode.as_str() }
}

/// `EnhancedMonitoring`: none is configurable, so one empty entry (as AWS
/// reports a stream without shard-level metrics).
pub(super) fn monitoring() -> Vec<EnhancedMetrics> {
    vec![EnhancedMetrics { shard_level_metrics: Vec::new() }]
}

/// Creation time as a `Timestamp`.
pub(super) fn created(ms: u64) -> Timestamp {
    Timestamp::from_ms(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_keys_and_names_are_checked_like_aws() {
        let mut v = Violations::default();
        assert_eq!(parse_hash_key(&mut v, "k", "0", "K").ok().flatten(), Some(0));
        assert_eq!(
            parse_hash_key(&mut v, "k", &u128::MAX.to_string(), "K").ok().flatten(),
            Some(u128::MAX)
        );
        assert!(v.finish().is_ok());
        let mut v = Violations::default();
        assert!(
            parse_hash_key(&mut v, "k", "340282366920938463463374607431768211456", "K").is_err()
        );
        assert_eq!(parse_hash_key(&mut v, "k", "01", "K").ok().flatten(), None);
        assert!(!check_name(&mut v, "streamName", "a b"));
        assert!(!check_len(&mut v, "partitionKey", &"é".repeat(257), 1, 256));
        let e = v.finish().expect_err("three violations");
        assert!(e.message.starts_with("3 validation errors detected: "), "{}", e.message);
    }
}
