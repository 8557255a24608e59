//! Settings of the embedded store: durability policy and segment sizes.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::segment::MAX_SEGMENT_BYTES;

/// When appended bytes are forced to disk before the append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// `always` (default): every acknowledged record is on disk. Appenders that
    /// arrive while a write is in flight are grouped into the next one, so many
    /// records share one `fdatasync` (group commit).
    #[default]
    Always,
    /// `interval:<ms>`: acknowledge after the write reaches the page cache and
    /// `fdatasync` at most this often; a power cut can lose that much.
    Interval(Duration),
    /// `never`: leave flushing to the kernel. Survives a process crash, not a
    /// power cut.
    Never,
}

/// A string that is not an fsync policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fsync policy {0:?}: expected `always`, `interval:<ms>` (1 to 60000) or `never`")]
pub struct ParseFsyncPolicyError(String);

impl FromStr for FsyncPolicy {
    type Err = ParseFsyncPolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            _ => {
                let ms = s
                    .strip_prefix("interval:")
                    .and_then(|ms| ms.parse::<u64>().ok())
                    .filter(|ms| (1..=60_000).contains(ms))
                    .ok_or_else(|| ParseFsyncPolicyError(s.to_owned()))?;
                Ok(Self::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Always => f.write_str("always"),
            Self::Interval(d) => write!(f, "interval:{}", d.as_millis()),
            Self::Never => f.write_str("never"),
        }
    }
}

/// Settings of a [`LogStore`](super::LogStore).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Durability of acknowledged appends.
    pub fsync: FsyncPolicy,
    /// A segment is sealed and a new one started past this size.
    pub segment_max_bytes: u64,
    /// A segment is sealed once its first record is this old, so retention can
    /// delete data at this granularity.
    pub segment_max_age: Duration,
    /// How often the background task enforces retention.
    pub retention_check_interval: Duration,
    /// Free bytes the data directory's filesystem keeps: below, appends are
    /// refused (`space`). `None`: the smaller of 256 MiB and 1% of the
    /// filesystem; `Some(0)`: no reserve.
    pub min_free_bytes: Option<u64>,
    /// How long a failed shard waits before its writer reopens it from its
    /// files (the first wait; each failed attempt doubles it, up to a minute).
    pub reopen_backoff: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            fsync: FsyncPolicy::Always,
            segment_max_bytes: 128 * 1024 * 1024,
            segment_max_age: Duration::from_secs(3600),
            retention_check_interval: Duration::from_secs(60),
            min_free_bytes: None,
            reopen_backoff: Duration::from_secs(1),
        }
    }
}

/// A setting out of its range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("store setting `{key}`: {message}")]
pub struct ConfigError {
    /// The setting's name.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

impl StoreConfig {
    /// Checks every setting's range.
    ///
    /// # Errors
    /// The first setting out of range, by name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(4096..=MAX_SEGMENT_BYTES).contains(&self.segment_max_bytes) {
            return Err(ConfigError {
                key: "segment_max_bytes",
                message: format!(
                    "{} is outside 4096..={MAX_SEGMENT_BYTES}",
                    self.segment_max_bytes
                ),
            });
        }
        if self.segment_max_age < Duration::from_secs(1) {
            return Err(ConfigError {
                key: "segment_max_age",
                message: "must be at least 1 s".into(),
            });
        }
        if self.retention_check_interval < Duration::from_millis(10) {
            return Err(ConfigError {
                key: "retention_check_interval",
                message: "must be at least 10 ms".into(),
            });
        }
        if !(Duration::from_millis(1)..=Duration::from_secs(60)).contains(&self.reopen_backoff) {
            return Err(ConfigError {
                key: "reopen_backoff",
                message: "must be between 1 ms and 60 s".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_policies() {
        assert_eq!("always".parse(), Ok(FsyncPolicy::Always));
        assert_eq!("never".parse(), Ok(FsyncPolicy::Never));
        assert_eq!("interval:250".parse(), Ok(FsyncPolicy::Interval(Duration::from_millis(250))));
        assert!("interval:0".parse::<FsyncPolicy>().is_err());
        assert!("sometimes".parse::<FsyncPolicy>().is_err());
        assert_eq!(FsyncPolicy::Interval(Duration::from_millis(5)).to_string(), "interval:5");
    }
}
