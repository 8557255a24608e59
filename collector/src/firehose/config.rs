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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RecordFormat {
    /// Data blobs concatenated as they are (Firehose's behaviour).
    #[default]
    AsIs,
    /// Each data blob followed by `\n`.
    NewlineDelimited,
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
        let template = if self.prefix.is_empty() { DEFAULT_PREFIX } else { &self.prefix };
        PrefixTemplate::parse(template)
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
        c.name = "a/b".into();
        assert!(matches!(c.validate(), Err(FirehoseError::InvalidName(_))));
    }
}
