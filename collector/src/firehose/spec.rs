//! [`DeliverySpec`]: everything that defines a delivery stream, as
//! `[[firehose]]` declares it and the Firehose API creates it; the JSON of
//! its serde form is what the firehose state stores (`delivery-streams.json`,
//! the `definition.<name>` KV values). Checked into a [`DeliveryConfig`] by
//! [`DeliverySpec::delivery_config`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::config::{BufferingHints, Compression, DeliveryConfig, RecordFormat};
use super::error::FirehoseError;

/// The internal stream that holds a delivery stream's direct puts.
pub fn direct_put_stream(name: &str) -> String {
    format!("__firehose-{name}")
}

/// Where a delivery stream's records come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// PutRecord / PutRecordBatch, through the internal stream.
    DirectPut,
    /// A Weir data stream.
    Stream(String),
}

/// Everything that defines a delivery stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliverySpec {
    /// Its name.
    pub name: String,
    /// Its source.
    pub source: Source,
    /// The destination directory.
    pub directory: PathBuf,
    /// Size hint, MiB.
    pub size_mib: u32,
    /// Interval hint, seconds.
    pub interval_secs: u32,
    /// Records separated by newlines.
    pub newline_delimited: bool,
    /// `none`, `gzip` or `zstd`.
    pub compression: String,
    /// Prefix template (empty: the default).
    pub prefix: String,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
    /// Error output prefix template (empty: the default).
    #[serde(default)]
    pub error_prefix: String,
    /// Retry duration, seconds.
    #[serde(default = "default_retry_duration")]
    pub retry_duration_secs: u32,
    /// Dynamic partitioning keys: name and query.
    #[serde(default)]
    pub partition_keys: Vec<(String, String)>,
    /// Where error output goes instead of the destination.
    #[serde(default)]
    pub backup_directory: Option<PathBuf>,
    /// The free-space reserve of a directory destination and of the backup
    /// directory (`None`: the default, see
    /// [`DEFAULT_MIN_FREE_BYTES`](super::destination::DEFAULT_MIN_FREE_BYTES)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_free_bytes: Option<u64>,
    /// The destination (default: the directory `directory`).
    #[serde(default)]
    pub destination: DestinationSpec,
    /// Parquet output with this schema instead of the records as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parquet: Option<super::parquet::ParquetSchema>,
}

fn default_retry_duration() -> u32 {
    super::config::DEFAULT_RETRY_DURATION_SECS
}

/// The kind of destination of a delivery stream and its settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DestinationSpec {
    /// [`DeliverySpec::directory`].
    #[default]
    Directory,
    /// An S3-compatible bucket.
    S3(super::s3::S3Settings),
    /// An HTTP endpoint.
    Http(super::http::HttpSettings),
}

impl DeliverySpec {
    /// The stream the delivery stream reads.
    pub fn source_stream(&self) -> String {
        match &self.source {
            Source::DirectPut => direct_put_stream(&self.name),
            Source::Stream(s) => s.clone(),
        }
    }

    /// The delivery configuration, checked.
    ///
    /// # Errors
    /// The first invalid setting.
    pub fn delivery_config(&self) -> Result<DeliveryConfig, FirehoseError> {
        let compression =
            parse_compression(&self.compression).ok_or_else(|| FirehoseError::Destination {
                key: "compression".into(),
                reason: format!("{:?} is not none, gzip or zstd", self.compression),
            })?;
        let mut config = DeliveryConfig::new(self.name.clone(), self.source_stream());
        config.buffering =
            BufferingHints { size_mib: self.size_mib, interval_secs: self.interval_secs };
        config.format = if self.newline_delimited {
            RecordFormat::NewlineDelimited
        } else {
            RecordFormat::AsIs
        };
        if let Some(schema) = &self.parquet {
            let format = schema.clone().into_format();
            let format = format.map_err(|e| FirehoseError::InvalidFormat(e.to_string()))?;
            config.format = RecordFormat::Parquet(format);
        }
        config.compression = compression;
        config.prefix = self.prefix.clone();
        config.error_prefix = self.error_prefix.clone();
        config.retry_duration_secs = self.retry_duration_secs;
        config.partition_keys = self.partition_keys.clone();
        config.validate()?;
        match &self.destination {
            DestinationSpec::Directory => {}
            DestinationSpec::S3(s) => s.validate()?,
            DestinationSpec::Http(h) => h.validate()?,
        }
        Ok(config)
    }
}

/// `none`, `gzip`, `zstd` (any case; `uncompressed` for none, as Firehose
/// names it).
pub fn parse_compression(s: &str) -> Option<Compression> {
    match s.to_ascii_lowercase().as_str() {
        "" | "none" | "uncompressed" => Some(Compression::None),
        "gzip" => Some(Compression::Gzip),
        "zstd" => Some(Compression::Zstd),
        _ => None,
    }
}
