//! Parsing and checking: TOML text → [`ConfigFile`] → [`Config`], with
//! errors ([`ConfigError`]) that name the file, the key and, for what the
//! TOML parser finds, the line (both from the parser's spans).

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};
use weir_wire::{MAX_BATCH_BYTES, MAX_BATCH_RECORDS, MAX_DATA_BYTES, MAX_FRAME_PAYLOAD};

use super::settings::*;
use super::written::*;
use crate::spool::SpoolConfig;
use crate::tail::TailConfig;
use crate::template::{KeyTemplate, Placeholders};

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
    #[error("{path}:{line}: {}{message}", key.as_ref().map(|k| format!("`{k}`: ")).unwrap_or_default())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// The key at that line, dotted, when there is one.
        key: Option<String>,
        /// The parser's message.
        message: String,
    },
    /// A value is missing or out of its range.
    #[error("{origin}: `{key}`: {message}")]
    Invalid {
        /// The file.
        origin: String,
        /// The key, dotted (`inputs[1].paths`).
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Reads and checks a configuration file.
    ///
    /// # Errors
    /// The file cannot be read, does not parse, has an unknown key, or a value
    /// is missing or out of range; the error names the file and the key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and checks TOML text as if read from `path`.
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| parse_error(text, path, &e))?;
        file.validate(&path.display().to_string())
    }
}

/// A [`ConfigError::Parse`] for an error of the TOML parser or of serde:
/// the line from the error's span, the key from the span of the entry that
/// holds it (the document parsed again, recovering from syntax errors).
fn parse_error(text: &str, path: &Path, e: &toml::de::Error) -> ConfigError {
    let at = e.span().map(|s| s.start);
    let line =
        at.map_or(0, |at| text.get(..at).map_or(0, |before| before.matches('\n').count() + 1));
    let key = at.and_then(|at| {
        let (document, _) = DeTable::parse_recoverable(text);
        key_at(document.get_ref(), at)
    });
    ConfigError::Parse {
        path: path.to_path_buf(),
        line,
        key,
        message: e.message().trim().to_owned(),
    }
}

/// The dotted key (`inputs[1].start_at`) of the innermost entry of `table`
/// whose key or value spans byte `at`.
///
/// Spans count their end: a value missing after `key =` (a syntax error,
/// recovered as an empty value) spans nothing just where the error is.
fn key_at(table: &DeTable<'_>, at: usize) -> Option<String> {
    let deeper =
        table.iter().find_map(|(k, v)| below(v, at).map(|rest| format!("{}{rest}", k.get_ref())));
    deeper.or_else(|| {
        table
            .iter()
            .find(|(k, v)| spans(k.span(), at) || spans(v.span(), at))
            .map(|(k, _)| k.get_ref().to_string())
    })
}

/// The rest of the key path (`.start_at`, `[1].start_at`) below `value`
/// (a table, or an array of tables) to the entry that spans byte `at`.
fn below(value: &Spanned<DeValue<'_>>, at: usize) -> Option<String> {
    match value.get_ref() {
        DeValue::Table(t) => key_at(t, at).map(|k| format!(".{k}")),
        DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let DeValue::Table(_) = item.get_ref() else { return None };
            let rest = below(item, at).or_else(|| spans(item.span(), at).then(String::new))?;
            Some(format!("[{i}]{rest}"))
        }),
        _ => None,
    }
}

/// Whether `at` is in `span` or at its end.
fn spans(span: std::ops::Range<usize>, at: usize) -> bool {
    (span.start..=span.end).contains(&at)
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// The device id this machine has when none is configured: `/etc/machine-id`,
/// else the host name.
pub fn default_device_id() -> Option<String> {
    let from = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty() && valid_device_id(s))
    };
    from("/etc/machine-id").or_else(|| from("/proc/sys/kernel/hostname"))
}

fn valid_device_id(id: &str) -> bool {
    (1..=MAX_DEVICE_ID_CHARS).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':'))
}

/// Checks a stream name: 1 to 128 of `a-z A-Z 0-9 _ . -` (Kinesis's rule).
pub fn valid_stream_name(name: &str) -> bool {
    weir_wire::validate::validate_stream_name(name).is_ok()
}

/// Splits `mqtts://host:port` into its parts.
fn parse_address(address: &str) -> Result<(Scheme, String, u16), String> {
    let (scheme, rest) = if let Some(rest) = address.strip_prefix("mqtts://") {
        (Scheme::Tls, rest)
    } else if let Some(rest) = address.strip_prefix("mqtt://") {
        (Scheme::Plain, rest)
    } else {
        return Err(format!(
            "{address:?} is not an address like \"mqtts://collector.example:8883\" (or mqtt:// for plain MQTT)"
        ));
    };
    let default_port = match scheme {
        Scheme::Tls => 8883,
        Scheme::Plain => 1883,
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) =
            v6.split_once(']').ok_or_else(|| format!("{address:?}: `[` without `]`"))?;
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => return Err(format!("{address:?}: unexpected {after:?} after the host")),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', '?', '#', ' ']) {
        return Err(format!("{address:?}: the host is missing or not a host name"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{address:?}: {p:?} is not a port (1 to 65535)"))?,
    };
    Ok((scheme, host.to_owned(), port))
}

/// Most bytes a record adds to its data: a partition key of up to 256
/// characters (1 KiB) and the varints and tags around them.
const RECORD_OVERHEAD: u64 = 1024 + 32;

/// Checks that `value` is in `range`, naming `key` otherwise.
fn in_range(
    key: &str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, (String, String)> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err((key.to_owned(), format!("{value} is outside {}..={}", range.start(), range.end())))
    }
}

impl ConfigFile {
    /// Checks every value and builds the [`Config`]; `origin` names the file
    /// in errors.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad key.
    pub fn validate(&self, origin: &str) -> Result<Config, ConfigError> {
        self.check(origin).map_err(|(key, message)| ConfigError::Invalid {
            origin: origin.to_owned(),
            key,
            message,
        })
    }

    fn check(&self, origin: &str) -> Result<Config, (String, String)> {
        let err = |key: &str, message: String| (key.to_owned(), message);
        let device_id = match &self.device_id {
            Some(id) if valid_device_id(id) => id.clone(),
            Some(id) => {
                return Err(err(
                    "device_id",
                    format!("{id:?} is not 1 to {MAX_DEVICE_ID_CHARS} of a-z A-Z 0-9 _ . - :"),
                ));
            }
            None => default_device_id().ok_or_else(|| {
                err(
                    "device_id",
                    "not set, and neither /etc/machine-id nor the host name gives one".into(),
                )
            })?,
        };

        let c = &self.collector;
        let address = c.address.clone().ok_or_else(|| {
            err("collector.address", "missing (e.g. \"mqtts://collector.example:8883\")".into())
        })?;
        let (scheme, host, port) =
            parse_address(&address).map_err(|m| err("collector.address", m))?;
        let client_id = c.client_id.clone().unwrap_or_else(|| device_id.clone());
        if client_id.is_empty() || client_id.len() > 128 {
            return Err(err("collector.client_id", "must be 1 to 128 bytes".into()));
        }
        let keepalive = in_range("collector.keepalive_secs", c.keepalive_secs, 5..=3600)?;
        let inflight = in_range("collector.inflight", u64::from(c.inflight), 1..=256)?;
        let reconnect_min =
            in_range("collector.reconnect_min_ms", c.reconnect_min_ms, 1..=600_000)?;
        let reconnect_max =
            in_range("collector.reconnect_max_ms", c.reconnect_max_ms, reconnect_min..=3_600_000)?;
        let login = match (&c.username, &c.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            (Some(_), None) => {
                return Err(err("collector.password", "required with `collector.username`".into()));
            }
            (None, Some(_)) => {
                return Err(err("collector.username", "required with `collector.password`".into()));
            }
            (None, None) => None,
        };
        let t = &c.tls;
        let tls = match scheme {
            Scheme::Tls => {
                let ca_file = t.ca_file.clone().ok_or_else(|| {
                    err(
                        "collector.tls.ca_file",
                        "missing: the CA certificate (PEM) that signed the collector's certificate"
                            .into(),
                    )
                })?;
                let identity = match (&t.cert_file, &t.key_file) {
                    (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
                    (Some(_), None) => {
                        return Err(err(
                            "collector.tls.key_file",
                            "required with `collector.tls.cert_file`".into(),
                        ));
                    }
                    (None, Some(_)) => {
                        return Err(err(
                            "collector.tls.cert_file",
                            "required with `collector.tls.key_file`".into(),
                        ));
                    }
                    (None, None) => None,
                };
                let server_name = t.server_name.clone().unwrap_or_else(|| host.clone());
                if rustls::pki_types::ServerName::try_from(server_name.as_str()).is_err() {
                    return Err(err(
                        "collector.tls.server_name",
                        format!("{server_name:?} is not a DNS name or IP address"),
                    ));
                }
                Some(TlsFiles { ca_file, identity, server_name })
            }
            Scheme::Plain => {
                let set = [
                    ("ca_file", t.ca_file.is_some()),
                    ("cert_file", t.cert_file.is_some()),
                    ("key_file", t.key_file.is_some()),
                    ("server_name", t.server_name.is_some()),
                ];
                if let Some((k, _)) = set.iter().find(|(_, s)| *s) {
                    return Err(err(
                        &format!("collector.tls.{k}"),
                        format!("TLS settings need an mqtts:// address, not {address:?}"),
                    ));
                }
                None
            }
        };
        let collector = CollectorConfig {
            address,
            scheme,
            host,
            port,
            client_id,
            keepalive: Duration::from_secs(keepalive),
            inflight: inflight as usize,
            reconnect_min: ms(reconnect_min),
            reconnect_max: ms(reconnect_max),
            login,
            tls,
        };

        let b = &self.batch;
        let max_records =
            in_range("batch.max_records", u64::from(b.max_records), 1..=MAX_BATCH_RECORDS as u64)?;
        let max_bytes = in_range("batch.max_bytes", b.max_bytes, 1024..=MAX_BATCH_BYTES as u64)?;
        let linger = in_range("batch.linger_ms", b.linger_ms, 0..=60_000)?;
        let batch = BatchConfig {
            max_records: max_records as usize,
            max_bytes: max_bytes as usize,
            linger: ms(linger),
        };

        if self.inputs.is_empty() {
            return Err(err(
                "inputs",
                "no input: add a [[inputs]] table (kind = \"file\", \"metrics\" or \"serial\")"
                    .into(),
            ));
        }
        let mut inputs: Vec<Input> = Vec::with_capacity(self.inputs.len());
        for (i, section) in self.inputs.iter().enumerate() {
            let input = check_input(i, section)?;
            if inputs.iter().any(|other| other.name == input.name) {
                return Err(err(
                    &format!("inputs[{i}].name"),
                    format!("{:?} is the name of another input too", input.name),
                ));
            }
            inputs.push(input);
        }
        // The largest batch: `batch.max_bytes`, or one record of the
        // largest kind alone (a key of up to 1 KiB, a line or group).
        let largest_record = inputs
            .iter()
            .map(|i| match &i.kind {
                InputKind::File(f) => {
                    f.multiline.as_ref().map_or(f.tail.max_line_bytes, |m| m.max_bytes)
                }
                InputKind::Metrics(_) => 1024,
                InputKind::Serial(s) => s.max_frame_bytes,
            })
            .max()
            .unwrap_or(0) as u64
            + RECORD_OVERHEAD;
        let largest_batch = max_bytes.max(largest_record + 1024);
        let s = &self.spool;
        if s.dir.as_os_str().is_empty() {
            return Err(err("spool.dir", "is empty".into()));
        }
        let min_spool = MIN_SPOOL_BYTES.max(4 * largest_batch);
        let spool_bytes = in_range("spool.max_bytes", s.max_bytes, min_spool..=u64::MAX / 2)
            .map_err(|(k, m)| {
                (k, format!("{m} (at least four of the largest batch, {largest_batch} bytes)"))
            })?;
        let mut spool = SpoolConfig::with_max_bytes(spool_bytes, s.when_full);
        spool.min_free_bytes = match s.min_free_bytes {
            Some(b) => Some(in_range("spool.min_free_bytes", b, 0..=u64::MAX / 2)?),
            None => None,
        };
        let status_file = self.status.file.clone().unwrap_or_else(|| s.dir.join(STATUS_FILE_NAME));
        Ok(Config {
            origin: origin.to_owned(),
            device_id,
            collector,
            spool_dir: s.dir.clone(),
            spool,
            batch,
            status_file,
            status_interval: ms(in_range(
                "status.interval_ms",
                self.status.interval_ms.unwrap_or(1000),
                100..=60_000,
            )?),
            checkpoint_file: s.dir.join(CHECKPOINT_FILE_NAME),
            metrics_listen: self
                .metrics
                .listen
                .as_deref()
                .map(|l| {
                    l.parse().map_err(|_| {
                        err(
                            "metrics.listen",
                            format!("{l:?} is not HOST:PORT (e.g. \"127.0.0.1:9273\")"),
                        )
                    })
                })
                .transpose()?,
            inputs,
        })
    }
}

fn check_input(i: usize, s: &InputSection) -> Result<Input, (String, String)> {
    let key = |k: &str| format!("inputs[{i}].{k}");
    let kind = s
        .kind
        .as_deref()
        .ok_or_else(|| (key("kind"), "missing: \"file\", \"metrics\" or \"serial\"".to_owned()))?;
    let (own, placeholders): (&[&str], _) = match kind {
        "file" => (FILE_KEYS, Placeholders::File),
        "metrics" => (METRICS_KEYS, Placeholders::Metrics),
        "serial" => (SERIAL_KEYS, Placeholders::Serial),
        other => {
            return Err((
                key("kind"),
                format!("unknown input kind {other:?}: \"file\", \"metrics\" or \"serial\""),
            ));
        }
    };
    if let Some(k) = s.set_keys().into_iter().find(|k| !own.contains(k)) {
        let owner = if FILE_KEYS.contains(&k) {
            "file"
        } else if METRICS_KEYS.contains(&k) {
            "metrics"
        } else if SERIAL_KEYS.contains(&k) {
            "serial"
        } else {
            "another"
        };
        return Err((key(k), format!("only for kind = \"{owner}\" inputs, this one is {kind:?}")));
    }
    let stream =
        s.stream.clone().ok_or_else(|| (key("stream"), "missing: the target stream".to_owned()))?;
    if !valid_stream_name(&stream) {
        return Err((
            key("stream"),
            format!("{stream:?} is not 1 to {MAX_STREAM_NAME_CHARS} of a-z A-Z 0-9 _ . -"),
        ));
    }
    let default_key = match placeholders {
        Placeholders::File => "{device_id}/{file}",
        Placeholders::Metrics => "{device_id}",
        // Each record keeps the key its node gave it.
        Placeholders::Serial => "{key}",
    };
    let template =
        KeyTemplate::parse(s.partition_key.as_deref().unwrap_or(default_key), placeholders)
            .map_err(|m| (key("partition_key"), m))?;
    let (name, kind) = match kind {
        "file" => {
            let paths = s.paths.clone().unwrap_or_default();
            if paths.is_empty() {
                return Err((key("paths"), "missing: glob patterns of the files to follow".into()));
            }
            for p in &paths {
                if let Err(e) = glob::Pattern::new(p) {
                    return Err((key("paths"), format!("bad glob pattern {p:?}: {e}")));
                }
                if !Path::new(p).is_absolute() && p.starts_with('~') {
                    return Err((
                        key("paths"),
                        format!("{p:?}: `~` is not expanded; write the full path"),
                    ));
                }
            }
            let max_line = in_range(
                &key("max_line_bytes"),
                s.max_line_bytes.unwrap_or(16 * 1024),
                16..=MAX_DATA_BYTES as u64,
            )?;
            let partial = in_range(
                &key("partial_flush_ms"),
                s.partial_flush_ms.unwrap_or(5000),
                0..=86_400_000,
            )?;
            let rotate =
                in_range(&key("rotate_wait_ms"), s.rotate_wait_ms.unwrap_or(5000), 0..=86_400_000)?;
            let rescan = in_range(&key("rescan_ms"), s.rescan_ms.unwrap_or(1000), 10..=3_600_000)?;
            let poll = in_range(&key("poll_ms"), s.poll_ms.unwrap_or(250), 1..=60_000)?;
            let multiline = match &s.multiline_start {
                None => {
                    for k in ["multiline_max_bytes", "multiline_timeout_ms"] {
                        if s.set_keys().contains(&k) {
                            return Err((key(k), "needs `multiline_start`".into()));
                        }
                    }
                    None
                }
                Some(pattern) => {
                    let start = regex::bytes::Regex::new(pattern).map_err(|e| {
                        (key("multiline_start"), format!("bad regular expression: {e}"))
                    })?;
                    let max_bytes = in_range(
                        &key("multiline_max_bytes"),
                        s.multiline_max_bytes.unwrap_or(64 * 1024),
                        max_line..=MAX_DATA_BYTES as u64,
                    )?;
                    let timeout = in_range(
                        &key("multiline_timeout_ms"),
                        s.multiline_timeout_ms.unwrap_or(1000),
                        0..=3_600_000,
                    )?;
                    Some(Multiline { start, max_bytes: max_bytes as usize, timeout: ms(timeout) })
                }
            };
            let name = s.name.clone().unwrap_or_else(|| paths.join(","));
            let tail = TailConfig {
                globs: paths,
                start_at: s.start_at.unwrap_or_default(),
                max_line_bytes: max_line as usize,
                partial_flush: ms(partial),
                rotate_wait: ms(rotate),
                rescan_every: ms(rescan),
            };
            (name, InputKind::File(FileInput { tail, poll: ms(poll), multiline }))
        }
        "serial" => {
            let source = match (&s.path, &s.socket) {
                (Some(path), None) => {
                    let baud = in_range(
                        &key("baud"),
                        u64::from(s.baud.unwrap_or(DEFAULT_BAUD)),
                        50..=4_000_000,
                    )?;
                    SerialSource::Device { path: path.clone(), baud: baud as u32 }
                }
                (None, Some(path)) => {
                    if s.baud.is_some() {
                        return Err((
                            key("baud"),
                            "only for a `path` (a serial device), not a `socket`".into(),
                        ));
                    }
                    SerialSource::Socket { path: path.clone() }
                }
                (Some(_), Some(_)) => {
                    return Err((
                        key("socket"),
                        "set `path` (a serial device) or `socket`, not both".into(),
                    ));
                }
                (None, None) => {
                    return Err((
                        key("path"),
                        "missing: the serial device (e.g. \"/dev/ttyUSB0\"), or set `socket` to a Unix socket".into(),
                    ));
                }
            };
            if source.path().as_os_str().is_empty() {
                let k = if s.path.is_some() { "path" } else { "socket" };
                return Err((key(k), "is empty".into()));
            }
            let max_frame = in_range(
                &key("max_frame_bytes"),
                s.max_frame_bytes.unwrap_or(MAX_FRAME_PAYLOAD as u64),
                16..=MAX_FRAME_PAYLOAD as u64,
            )?;
            let name = s.name.clone().unwrap_or_else(|| source.path().display().to_string());
            (name, InputKind::Serial(SerialInput { source, max_frame_bytes: max_frame as usize }))
        }
        _ => {
            let interval =
                in_range(&key("interval_ms"), s.interval_ms.unwrap_or(10_000), 1000..=86_400_000)?;
            let name = s.name.clone().unwrap_or_else(|| "metrics".into());
            (name, InputKind::Metrics(MetricsInput { interval: ms(interval) }))
        }
    };
    if name.is_empty() || name.len() > 256 {
        return Err((key("name"), "must be 1 to 256 bytes".into()));
    }
    Ok(Input { name, stream, key: template, kind })
}

#[cfg(test)]
mod tests;
