//! What a delivery stream is: its source, buffering hints, output format,
//! compression and prefix. Bounds are Kinesis Data Firehose's.

use super::error::FirehoseError;
use super::prefix::PrefixTemplate;

/// Smallest size hint, MiB.
pub const MIN_BUFFER_SIZE_MIB: u32 = 1;
/// Largest size hint, MiB.
pub const MAX_BUFFER_SIZE_MIB: u32 = 128;
/// Size hint when none is given, MiB.
pub const DEFAULT_BUFFER_SIZE_MIB: u32 = 5;
/// Shortest interval hint, seconds (0: flush at every poll).
pub const MIN_BUFFER_INTERVAL_SECS: u32 = 0;
/// Longest interval hint, seconds.
pub const MAX_BUFFER_INTERVAL_SECS: u32 = 900;
/// Interval hint when none is given, seconds.
pub const DEFAULT_BUFFER_INTERVAL_SECS: u32 = 300;
/// Longest delivery stream name.
pub const MAX_NAME_CHARS: usize = 64;
/// Prefix used when none is given (Firehose's `YYYY/MM/dd/HH/`).
pub const DEFAULT_PREFIX: &str = "!{timestamp:yyyy/MM/dd/HH}/";
/// Error output prefix used when none is given.
pub const DEFAULT_ERROR_PREFIX: &str =
    "errors/!{firehose:error-output-type}/!{timestamp:yyyy/MM/dd/HH}/";
/// Longest retry duration, seconds (Firehose's bound).
pub const MAX_RETRY_DURATION_SECS: u32 = 7_200;
/// Retry duration when none is given, seconds (Firehose's default).
pub const DEFAULT_RETRY_DURATION_SECS: u32 = 300;
/// Most dynamic partitioning keys of a delivery stream (the partitioner's
/// bound).
pub use super::partition::MAX_PARTITION_KEYS;

/// Buffering hints: a batch is flushed when either is reached, whichever
/// comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferingHints {
    /// Size of a batch's records before compression (with their newlines
    /// when newline-delimited), MiB.
    pub size_mib: u32,
    /// Age of a batch's first buffered record, seconds.
    pub interval_secs: u32,
}

impl Default for BufferingHints {
    fn default() -> Self {
        Self { size_mib: DEFAULT_BUFFER_SIZE_MIB, interval_secs: DEFAULT_BUFFER_INTERVAL_SECS }
    }
}

impl BufferingHints {
    /// Checks the bounds.
    ///
    /// # Errors
    /// [`FirehoseError::BufferSize`] or [`FirehoseError::BufferInterval`].
    pub fn validate(&self) -> Result<(), FirehoseError> {
        if !(MIN_BUFFER_SIZE_MIB..=MAX_BUFFER_SIZE_MIB).contains(&self.size_mib) {
            return Err(FirehoseError::BufferSize {
                mib: self.size_mib,
                min: MIN_BUFFER_SIZE_MIB,
                max: MAX_BUFFER_SIZE_MIB,
            });
        }
        if !(MIN_BUFFER_INTERVAL_SECS..=MAX_BUFFER_INTERVAL_SECS).contains(&self.interval_secs) {
            return Err(FirehoseError::BufferInterval {
                secs: self.interval_secs,
                min: MIN_BUFFER_INTERVAL_SECS,
                max: MAX_BUFFER_INTERVAL_SECS,
            });
        }
        Ok(())
    }

    /// The size hint in bytes.
    pub fn size_bytes(&self) -> usize {
        self.size_mib as usize * 1024 * 1024
    }

    /// The interval hint in ms.
    pub fn interval_ms(&self) -> u64 {
        u64::from(self.interval_secs) * 1_000
    }
}

/// How records are laid out in an object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RecordFormat {
    /// Data blobs concatenated as they are (Firehose's behaviour).
    #[default]
    AsIs,
    /// Each data blob followed by `\n`.
    NewlineDelimited,
    /// JSON records converted to one Parquet file per batch with this schema
    /// (see [`parquet`](super::parquet)); the outer compression must be none.
    Parquet(super::parquet::ParquetFormat),
}

/// Compression of an object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    /// None.
    #[default]
    None,
    /// gzip (one member); objects end in `.gz`.
    Gzip,
    /// zstd (one frame); objects end in `.zst`.
    Zstd,
}

impl Compression {
    /// The object name's extension, with its dot (empty for none).
    pub fn extension(self) -> &'static str {
        match self {
            Self::None => "",
            Self::Gzip => ".gz",
            Self::Zstd => ".zst",
        }
    }
}

/// One delivery stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryConfig {
    /// Its name (1 to 64 characters of `[a-zA-Z0-9_.-]`); part of every
    /// object name and of the checkpoint.
    pub name: String,
    /// The Weir data stream it reads, from the oldest retained record.
    pub source_stream: String,
    /// When batches are flushed.
    pub buffering: BufferingHints,
    /// Record layout.
    pub format: RecordFormat,
    /// Object compression.
    pub compression: Compression,
    /// Prefix template of object keys ([`DEFAULT_PREFIX`] if empty).
    pub prefix: String,
    /// Prefix template of error output ([`DEFAULT_ERROR_PREFIX`] if empty);
    /// may use `!{firehose:error-output-type}`.
    pub error_prefix: String,
    /// How long a failing batch is retried before it goes to the error
    /// output, seconds (0..=[`MAX_RETRY_DURATION_SECS`]).
    pub retry_duration_secs: u32,
    /// Dynamic partitioning: `!{partitionKeyFromQuery:<name>}` of the prefix
    /// is the value at `query` of the record's JSON, by name (see
    /// [`JsonQuery`](super::query::JsonQuery)).
    pub partition_keys: Vec<(String, String)>,
}

impl DeliveryConfig {
    /// A delivery stream of `source_stream` with the defaults.
    pub fn new(name: impl Into<String>, source_stream: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            source_stream: source_stream.into(),
            buffering: BufferingHints::default(),
            format: RecordFormat::default(),
            compression: Compression::default(),
            prefix: String::new(),
            error_prefix: String::new(),
            retry_duration_secs: DEFAULT_RETRY_DURATION_SECS,
            partition_keys: Vec::new(),
        }
    }

    /// Checks everything and parses the prefix.
    ///
    /// # Errors
    /// The first invalid setting.
    pub fn validate(&self) -> Result<PrefixTemplate, FirehoseError> {
        let name_ok = !self.name.is_empty()
            && self.name.chars().count() <= MAX_NAME_CHARS
            && self.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !name_ok {
            return Err(FirehoseError::InvalidName(self.name.chars().take(80).collect()));
        }
        self.buffering.validate()?;
        self.check_parquet()?;
        if self.retry_duration_secs > MAX_RETRY_DURATION_SECS {
            return Err(FirehoseError::RetryDuration {
                secs: self.retry_duration_secs,
                max: MAX_RETRY_DURATION_SECS,
            });
        }
        let template = if self.prefix.is_empty() { DEFAULT_PREFIX } else { &self.prefix };
        let prefix = PrefixTemplate::parse(template)?;
        if prefix.uses_error_output_type() {
            return Err(FirehoseError::InvalidPrefix {
                template: template.chars().take(80).collect(),
                reason: "`!{firehose:error-output-type}` belongs in the error output prefix".into(),
            });
        }
        self.partitioner()?.check_prefix(&prefix, template)?;
        self.error_prefix_template()?;
        Ok(prefix)
    }

    /// The extension of object names: `.parquet` for Parquet output, else
    /// the compression's.
    pub fn extension(&self) -> &'static str {
        match self.format {
            RecordFormat::Parquet(_) => ".parquet",
            _ => self.compression.extension(),
        }
    }

    /// Parquet output needs the `parquet` feature and no outer compression.
    fn check_parquet(&self) -> Result<(), FirehoseError> {
        if let RecordFormat::Parquet(_) = self.format {
            if !cfg!(feature = "parquet") {
                return Err(FirehoseError::InvalidFormat(
                    super::parquet::ConvertError::NotBuilt.to_string(),
                ));
            }
            if self.compression != Compression::None {
                return Err(FirehoseError::InvalidFormat(
                    "Parquet compresses its own pages: the compression must be none".into(),
                ));
            }
        }
        Ok(())
    }

    /// The parsed error output prefix.
    ///
    /// # Errors
    /// [`FirehoseError::InvalidPrefix`].
    pub fn error_prefix_template(&self) -> Result<PrefixTemplate, FirehoseError> {
        let template =
            if self.error_prefix.is_empty() { DEFAULT_ERROR_PREFIX } else { &self.error_prefix };
        let t = PrefixTemplate::parse(template)?;
        if !t.partition_keys().is_empty() {
            return Err(FirehoseError::InvalidPrefix {
                template: template.chars().take(80).collect(),
                reason: "the error output prefix cannot use `!{partitionKeyFromQuery:...}`".into(),
            });
        }
        Ok(t)
    }

    /// The parsed partition keys.
    ///
    /// # Errors
    /// [`FirehoseError::InvalidPartitionKey`].
    pub fn partitioner(&self) -> Result<super::partition::Partitioner, FirehoseError> {
        super::partition::Partitioner::new(&self.partition_keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        let mut c = DeliveryConfig::new("d", "s");
        assert!(c.validate().is_ok());
        c.buffering.size_mib = 0;
        assert!(matches!(c.validate(), Err(FirehoseError::BufferSize { .. })));
        c.buffering.size_mib = 129;
        assert!(matches!(c.validate(), Err(FirehoseError::BufferSize { .. })));
        c.buffering.size_mib = 128;
        c.buffering.interval_secs = 901;
        assert!(matches!(c.validate(), Err(FirehoseError::BufferInterval { .. })));
        c.buffering.interval_secs = 0;
        assert!(c.validate().is_ok());
        c.buffering.interval_secs = 0;
        c.retry_duration_secs = 7_201;
        assert!(matches!(c.validate(), Err(FirehoseError::RetryDuration { .. })));
        c.retry_duration_secs = 0;
        c.prefix = "p/!{partitionKeyFromQuery:id}/".into();
        assert!(matches!(c.validate(), Err(FirehoseError::InvalidPartitionKey { .. })));
        c.partition_keys = vec![("id".into(), "/device/id".into())];
        assert!(c.validate().is_ok());
        c.error_prefix = "e/!{partitionKeyFromQuery:id}/".into();
        assert!(matches!(c.validate(), Err(FirehoseError::InvalidPrefix { .. })));
        c.error_prefix = String::new();
        c.name = "a/b".into();
        assert!(matches!(c.validate(), Err(FirehoseError::InvalidName(_))));
    }
}
