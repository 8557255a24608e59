//! The collector's configuration: a TOML file (`--config FILE`) whose every
//! key has a default, overridden by command-line flags.
//!
//! ```toml
//! data_dir = "weir-data"
//!
//! [store]
//! fsync = "always"            # always | interval:<ms> | never
//! segment_max_bytes = 134217728
//! segment_max_age_secs = 3600
//! # min_free_bytes = 268435456  # below, appends are refused [default: min(256 MiB, 1% of the disk)]
//! reopen_backoff_ms = 1000    # a failed shard is reopened from its files after this (doubling, up to 60 s)
//! # servers = ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]  # set: the JetStream backend
//! # replicas = 3               # 1 | 3 | 5, of every JetStream stream and bucket
//! # prefix = "weir"            # of JetStream stream, subject and bucket names
//! # credentials_file = "/etc/weir/nats.creds"  # or user = "..." with password = "..."
//! # tls_ca_file = "/etc/weir/nats-ca.pem"      # set: TLS to the servers
//!
//! [http]
//! listen = "127.0.0.1:4567"   # the Kinesis-compatible API, /health, /metrics
//!
//! [kinesis]
//! region = "us-east-1"        # the region in stream ARNs
//! write_limits = false        # new streams: 1 MiB/s and 1,000 records/s per shard
//!
//! [mqtt]                      # see `ingest::settings` for every key
//! tls_listen = "0.0.0.0:8883" # "off" to disable
//! listen = "127.0.0.1:1883"   # plain MQTT, off unless set
//!
//! [tls]                       # see `tls`; unset: the development CA in data_dir/tls
//!
//! [[firehose]]                # a delivery stream (any number of them)
//! name = "sensors-archive"
//! source_stream = "sensors"   # a Weir data stream
//! directory = "/var/lib/weir/archive" # default: <data_dir>/firehose/<name>
//! buffer_size_mib = 5         # 1..=128
//! buffer_interval_secs = 300  # 0..=900
//! output = "as-is"            # as-is | newline-delimited | parquet
//! compression = "none"        # none | gzip | zstd
//! prefix = "!{timestamp:yyyy/MM/dd/HH}/"
//! error_prefix = "errors/!{firehose:error-output-type}/!{timestamp:yyyy/MM/dd/HH}/"
//! retry_duration_secs = 300   # 0..=7200: then the batch goes to the error output
//! backup_directory = "/var/lib/weir/failed" # error output here instead (default:
//!                             # the destination; for http: `directory`)
//! # min_free_bytes = 16777216  # a directory's free-space reserve: below, delivery
//!                             # pauses [default: min(16 MiB, 1% of the disk)]
//!
//! [firehose.partition_keys]   # dynamic partitioning: name = JSON pointer or dotted path,
//! device = "device.id"        # used in prefix as !{partitionKeyFromQuery:device}
//!
//! [firehose.s3]               # instead of a directory: an S3-compatible bucket
//! bucket = "archive"
//! endpoint = "http://127.0.0.1:9000" # default: AWS's for the region
//! region = "us-east-1"
//! access_key_id = "..."       # default: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
//! secret_access_key = "..."
//! path_style = true           # false: virtual-hosted-style requests
//!
//! [firehose.http]             # or: Firehose's HTTP endpoint delivery contract
//! url = "https://example.com/ingest"
//! access_key = "..."          # X-Amz-Firehose-Access-Key, if set
//! gzip = false                # Content-Encoding: gzip
//! timeout_secs = 60           # 1..=600, per request
//!
//! [firehose.parquet]          # with output = "parquet" (and compression = "none"):
//! compression = "snappy"      # Parquet page compression: snappy | zstd | none
//! [[firehose.parquet.columns]] # JSON records to one Parquet file per batch
//! name = "device"
//! type = "string"             # string | int64 | double | boolean | timestamp-millis
//! path = "/meta/device"       # JSON pointer or dotted path; default: the field `name`
//! nullable = true             # missing/null: a Parquet null (false: record rejected)
//!
//! [firehose_s3]               # S3 endpoint and credentials of delivery streams created
//! endpoint = "http://127.0.0.1:9000" # through the Firehose API with an S3 destination
//! region = "us-east-1"        # (same keys as [firehose.s3], without bucket)
//! ```
//!
//! Unknown keys are errors, and every error names the file, the line and the
//! key, so a typo never silently falls back to a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::store::{FsyncPolicy, StoreConfig};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a key of the wrong type or name.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// The parser's message, naming the key.
        message: String,
    },
    /// A value is out of its range.
    #[error("{origin}: `{key}`: {message}")]
    Invalid {
        /// The file, or "command line".
        origin: String,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The whole configuration of a collector.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Data directory of the embedded store.
    pub data_dir: PathBuf,
    /// The embedded store.
    pub store: StoreSection,
    /// The HTTP listener (Kinesis API, health, metrics).
    pub http: HttpSection,
    /// Kinesis API semantics.
    pub kinesis: KinesisSection,
    /// The MQTT ingest: listeners, limits, users, ACLs, topic rules.
    pub mqtt: crate::ingest::MqttSection,
    /// TLS of the MQTT listener.
    pub tls: crate::tls::TlsSection,
    /// `[[firehose]]`: delivery streams.
    pub firehose: Vec<FirehoseSection>,
    /// `[firehose_s3]`: S3 settings of API-created S3 delivery streams.
    pub firehose_s3: Option<FirehoseS3Section>,
    /// Where the configuration came from, for error messages.
    #[serde(skip)]
    pub origin: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("weir-data"),
            store: StoreSection::default(),
            http: HttpSection::default(),
            kinesis: KinesisSection::default(),
            mqtt: crate::ingest::MqttSection::default(),
            tls: crate::tls::TlsSection::default(),
            firehose: Vec::new(),
            firehose_s3: None,
            origin: "defaults".into(),
        }
    }
}

/// `[[firehose]]`: one delivery stream reading a Weir data stream into a
/// directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FirehoseSection {
    /// Its name (1 to 64 characters of `[a-zA-Z0-9_.-]`).
    pub name: String,
    /// The Weir data stream it reads.
    pub source_stream: String,
    /// The destination directory (default `<data_dir>/firehose/<name>`).
    pub directory: Option<PathBuf>,
    /// Size hint, MiB.
    pub buffer_size_mib: u32,
    /// Interval hint, seconds.
    pub buffer_interval_secs: u32,
    /// `as-is` or `newline-delimited`.
    pub output: String,
    /// `none`, `gzip` or `zstd`.
    pub compression: String,
    /// Prefix template (empty: `!{timestamp:yyyy/MM/dd/HH}/`).
    pub prefix: String,
    /// Error output prefix template (empty: the default).
    pub error_prefix: String,
    /// Retry duration, seconds.
    pub retry_duration_secs: u32,
    /// Error output here instead of the destination.
    pub backup_directory: Option<PathBuf>,
    /// Free bytes a directory destination (and the backup directory) keeps:
    /// an object that would leave less pauses delivery (default: the
    /// smaller of 16 MiB and 1% of the filesystem).
    pub min_free_bytes: Option<u64>,
    /// Dynamic partitioning keys: name → query.
    pub partition_keys: std::collections::BTreeMap<String, String>,
    /// An S3 destination instead of the directory.
    pub s3: Option<crate::firehose::s3::S3Settings>,
    /// An HTTP endpoint destination instead of the directory.
    pub http: Option<crate::firehose::http::HttpSettings>,
    /// `[firehose.parquet]`: the schema of `output = "parquet"`.
    pub parquet: Option<crate::firehose::ParquetSchema>,
}

/// `[firehose_s3]`: the S3 endpoint and credentials of delivery streams
/// created through the Firehose API (their bucket comes from `BucketARN`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirehoseS3Section {
    /// Endpoint URL (default: AWS's).
    pub endpoint: Option<String>,
    /// Region (default `us-east-1`).
    pub region: Option<String>,
    /// Access key id (default: from the environment).
    pub access_key_id: Option<String>,
    /// Secret access key (default: from the environment).
    pub secret_access_key: Option<String>,
    /// Path-style requests (default true).
    pub path_style: Option<bool>,
}

impl FirehoseS3Section {
    /// The settings of a bucket.
    pub fn settings(&self, bucket: &str) -> crate::firehose::s3::S3Settings {
        let mut s = crate::firehose::s3::S3Settings::new(bucket);
        s.endpoint.clone_from(&self.endpoint);
        if let Some(r) = &self.region {
            s.region.clone_from(r);
        }
        s.access_key_id.clone_from(&self.access_key_id);
        s.secret_access_key.clone_from(&self.secret_access_key);
        if let Some(p) = self.path_style {
            s.path_style = p;
        }
        s
    }
}

impl Default for FirehoseSection {
    fn default() -> Self {
        Self {
            name: String::new(),
            source_stream: String::new(),
            directory: None,
            buffer_size_mib: crate::firehose::DEFAULT_BUFFER_SIZE_MIB,
            buffer_interval_secs: crate::firehose::DEFAULT_BUFFER_INTERVAL_SECS,
            output: "as-is".into(),
            compression: "none".into(),
            prefix: String::new(),
            error_prefix: String::new(),
            retry_duration_secs: crate::firehose::config::DEFAULT_RETRY_DURATION_SECS,
            backup_directory: None,
            min_free_bytes: None,
            partition_keys: std::collections::BTreeMap::new(),
            s3: None,
            http: None,
            parquet: None,
        }
    }
}

/// `[store]`: durability and segment sizes.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// `always` (default), `interval:<ms>` or `never`.
    pub fsync: String,
    /// A segment is sealed past this size.
    pub segment_max_bytes: u64,
    /// A segment is sealed once its first record is this old (seconds).
    pub segment_max_age_secs: u64,
    /// How often retention runs (seconds).
    pub retention_check_interval_secs: u64,
    /// Free bytes the data directory's filesystem keeps; below, appends are
    /// refused [default: the smaller of 256 MiB and 1% of the filesystem].
    pub min_free_bytes: Option<u64>,
    /// First wait before a failed shard is reopened from its files
    /// (milliseconds; doubles per failed attempt, up to 60 s).
    pub reopen_backoff_ms: u64,
    /// NATS servers (`nats://HOST:PORT`); set, the records live in JetStream
    /// instead of the embedded store (see `store::jetstream`).
    pub servers: Vec<String>,
    /// A NATS `.creds` file.
    pub credentials_file: Option<PathBuf>,
    /// NATS user, with `password`.
    pub user: Option<String>,
    /// NATS password, with `user`.
    pub password: Option<String>,
    /// CA certificates (PEM) the NATS servers' TLS certificates chain to.
    pub tls_ca_file: Option<PathBuf>,
    /// Replicas of every JetStream stream the store creates: 1, 3 or 5.
    pub replicas: usize,
    /// Prefix of every JetStream name the store creates.
    pub prefix: String,
}

impl Default for StoreSection {
    fn default() -> Self {
        let d = StoreConfig::default();
        Self {
            fsync: d.fsync.to_string(),
            segment_max_bytes: d.segment_max_bytes,
            segment_max_age_secs: d.segment_max_age.as_secs(),
            retention_check_interval_secs: d.retention_check_interval.as_secs(),
            min_free_bytes: None,
            reopen_backoff_ms: d.reopen_backoff.as_millis() as u64,
            servers: Vec::new(),
            credentials_file: None,
            user: None,
            password: None,
            tls_ca_file: None,
            replicas: 1,
            prefix: "weir".into(),
        }
    }
}

/// `[http]`: the HTTP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// Address to bind, `IP:PORT` (port 0 picks a free port).
    pub listen: String,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self { listen: "127.0.0.1:4567".into() }
    }
}

/// `[kinesis]`: what the Kinesis-compatible API reports and enforces.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KinesisSection {
    /// Region named in stream ARNs.
    pub region: String,
    /// Whether streams created through the API get per-shard write limits
    /// (PROVISIONED streams only).
    pub write_limits: bool,
}

impl Default for KinesisSection {
    fn default() -> Self {
        Self { region: "us-east-1".into(), write_limits: false }
    }
}

impl Config {
    /// Reads and checks a TOML configuration file.
    ///
    /// # Errors
    /// The file cannot be read, does not parse, has an unknown key, or a value
    /// is out of range; the error names the file, line and key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Parses TOML text as if read from `path`.
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| {
                text.get(..s.start).map_or(0, |before| before.matches('\n').count() + 1)
            });
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                message: e.message().trim().to_owned(),
            }
        })?;
        config.origin = path.display().to_string();
        config.store_config()?;
        config.jetstream_settings()?;
        config.http_listen()?;
        config.kinesis_region()?;
        config.mqtt_settings()?;
        config.firehose_specs()?;
        Ok(config)
    }

    /// The `[[firehose]]` delivery streams, checked.
    ///
    /// # Errors
    /// The first invalid `firehose[i].*` value, by key.
    pub fn firehose_specs(&self) -> Result<Vec<crate::firehose::DeliverySpec>, ConfigError> {
        use crate::firehose::manager::DestinationSpec;
        use crate::firehose::{DeliverySpec, FirehoseError, Source};
        let mut names = std::collections::BTreeSet::new();
        let mut specs = Vec::with_capacity(self.firehose.len());
        for (i, f) in self.firehose.iter().enumerate() {
            let key = |k: &str| format!("firehose[{i}].{k}");
            if f.source_stream.is_empty() {
                return Err(self.invalid(&key("source_stream"), "is required"));
            }
            if !names.insert(f.name.clone()) {
                return Err(self.invalid(&key("name"), format!("{:?} is declared twice", f.name)));
            }
            let newline_delimited = match f.output.as_str() {
                "as-is" | "parquet" => false,
                "newline-delimited" => true,
                o => {
                    let m = format!("{o:?} is not as-is, newline-delimited or parquet");
                    return Err(self.invalid(&key("output"), m));
                }
            };
            self.check_parquet(f, &key)?;
            if crate::firehose::manager::parse_compression(&f.compression).is_none() {
                let m = format!("{:?} is not none, gzip or zstd", f.compression);
                return Err(self.invalid(&key("compression"), m));
            }
            let spec = DeliverySpec {
                name: f.name.clone(),
                source: Source::Stream(f.source_stream.clone()),
                directory: f
                    .directory
                    .clone()
                    .unwrap_or_else(|| crate::firehose::default_directory(&self.data_dir, &f.name)),
                size_mib: f.buffer_size_mib,
                interval_secs: f.buffer_interval_secs,
                newline_delimited,
                compression: f.compression.clone(),
                prefix: f.prefix.clone(),
                created_ms: 0,
                error_prefix: f.error_prefix.clone(),
                retry_duration_secs: f.retry_duration_secs,
                partition_keys: f
                    .partition_keys
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                backup_directory: f.backup_directory.clone(),
                min_free_bytes: f.min_free_bytes,
                parquet: f.parquet.clone(),
                destination: match (&f.s3, &f.http) {
                    (None, None) => DestinationSpec::Directory,
                    (Some(s), None) => DestinationSpec::S3(s.clone()),
                    (None, Some(h)) => DestinationSpec::Http(h.clone()),
                    (Some(_), Some(_)) => {
                        return Err(self.invalid(&key("s3"), "s3 and http exclude each other"));
                    }
                },
            };
            spec.delivery_config().map_err(|e| {
                let k = match &e {
                    FirehoseError::InvalidName(_) => "name",
                    FirehoseError::BufferSize { .. } => "buffer_size_mib",
                    FirehoseError::BufferInterval { .. } => "buffer_interval_secs",
                    FirehoseError::InvalidPrefix { template, .. }
                        if !f.prefix.is_empty() && f.prefix.starts_with(template.as_str()) =>
                    {
                        "prefix"
                    }
                    FirehoseError::InvalidPrefix { .. } if !f.error_prefix.is_empty() => {
                        "error_prefix"
                    }
                    FirehoseError::InvalidPrefix { .. } => "prefix",
                    FirehoseError::RetryDuration { .. } => "retry_duration_secs",
                    FirehoseError::InvalidPartitionKey { .. } => "partition_keys",
                    FirehoseError::InvalidDestination(_) if f.s3.is_some() => "s3",
                    FirehoseError::InvalidDestination(_) => "http",
                    _ => "compression",
                };
                self.invalid(&key(k), e.to_string())
            })?;
            specs.push(spec);
        }
        Ok(specs)
    }

    /// `output = "parquet"` and `[firehose.parquet]` go together; the schema
    /// and the compression (none: Parquet compresses its pages) are checked.
    fn check_parquet(
        &self,
        f: &FirehoseSection,
        key: &dyn Fn(&str) -> String,
    ) -> Result<(), ConfigError> {
        match (f.output.as_str(), &f.parquet) {
            ("parquet", None) => {
                Err(self.invalid(&key("parquet"), "output = \"parquet\" needs [firehose.parquet]"))
            }
            ("parquet", Some(_)) if !cfg!(feature = "parquet") => Err(self
                .invalid(&key("output"), "this collector was built without the `parquet` feature")),
            ("parquet", Some(_)) if !matches!(f.compression.as_str(), "" | "none") => Err(self
                .invalid(
                    &key("compression"),
                    "must be none with output = \"parquet\" ([firehose.parquet] compression \
                     compresses the pages)",
                )),
            ("parquet", Some(schema)) => schema
                .validate()
                .map_err(|e| self.invalid(&key(&format!("parquet.{}", e.key)), e.message)),
            (_, Some(_)) => Err(self.invalid(&key("parquet"), "needs output = \"parquet\"")),
            (_, None) => Ok(()),
        }
    }

    /// The MQTT ingest's settings and the TLS section, checked.
    ///
    /// # Errors
    /// The first invalid `mqtt.*` or `tls.*` value, by key.
    pub fn mqtt_settings(&self) -> Result<crate::ingest::Settings, ConfigError> {
        self.tls.validate().map_err(|(key, message)| self.invalid(&key, message))?;
        self.mqtt.validate().map_err(|(key, message)| self.invalid(&key, message))
    }

    fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.clone(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// The HTTP listener's address, checked.
    ///
    /// # Errors
    /// `http.listen` is not `IP:PORT`.
    pub fn http_listen(&self) -> Result<std::net::SocketAddr, ConfigError> {
        self.http.listen.parse().map_err(|e| {
            self.invalid("http.listen", format!("{:?} is not IP:PORT ({e})", self.http.listen))
        })
    }

    /// The region of stream ARNs, checked.
    ///
    /// # Errors
    /// `kinesis.region` is empty or holds characters other than a-z, 0-9, '-'.
    pub fn kinesis_region(&self) -> Result<&str, ConfigError> {
        let r = &self.kinesis.region;
        let ok = !r.is_empty()
            && r.len() <= 32
            && r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(r)
        } else {
            let message = format!("{r:?} is not a region name like us-east-1");
            Err(self.invalid("kinesis.region", message))
        }
    }

    /// The store settings, checked.
    ///
    /// # Errors
    /// A value out of range, by key.
    pub fn store_config(&self) -> Result<StoreConfig, ConfigError> {
        let fsync: FsyncPolicy =
            self.store.fsync.parse().map_err(|e| self.invalid("store.fsync", format!("{e}")))?;
        let config = StoreConfig {
            fsync,
            segment_max_bytes: self.store.segment_max_bytes,
            segment_max_age: Duration::from_secs(self.store.segment_max_age_secs),
            retention_check_interval: Duration::from_secs(self.store.retention_check_interval_secs),
            min_free_bytes: self.store.min_free_bytes,
            reopen_backoff: Duration::from_millis(self.store.reopen_backoff_ms),
        };
        config.validate().map_err(|e| self.invalid(&format!("store.{}", e.key), e.message))?;
        Ok(config)
    }

    /// The JetStream backend's settings, checked, if `[store] servers` is
    /// set.
    ///
    /// # Errors
    /// A wrong setting, by key.
    #[cfg(feature = "jetstream")]
    pub fn jetstream_settings(
        &self,
    ) -> Result<Option<crate::store::jetstream::JetStreamSettings>, ConfigError> {
        if self.store.servers.is_empty() {
            return Ok(None);
        }
        let s = &self.store;
        let settings = crate::store::jetstream::JetStreamSettings {
            servers: s.servers.clone(),
            credentials_file: s.credentials_file.clone(),
            user: s.user.clone(),
            password: s.password.clone(),
            tls_ca_file: s.tls_ca_file.clone(),
            replicas: s.replicas,
            prefix: s.prefix.clone(),
        };
        settings
            .validate()
            .map_err(|e| self.invalid(&format!("store.{}", e.setting), e.message))?;
        Ok(Some(settings))
    }

    /// Without the `jetstream` feature: refuses `[store] servers`.
    ///
    /// # Errors
    /// `[store] servers` is set.
    #[cfg(not(feature = "jetstream"))]
    pub fn jetstream_settings(&self) -> Result<Option<()>, ConfigError> {
        if self.store.servers.is_empty() {
            Ok(None)
        } else {
            Err(self
                .invalid("store.servers", "this collector was built without the jetstream feature"))
        }
    }
}

#[cfg(test)]
mod tests;
