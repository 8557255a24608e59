//! The HTTP endpoint destination: Firehose's HTTP delivery contract.
//!
//! Each batch is one `POST` to the endpoint's URL with the JSON body
//!
//! ```json
//! {"requestId": "<id>", "timestamp": 1700000000000, "records": [{"data": "<base64>"}]}
//! ```
//!
//! and the headers `X-Amz-Firehose-Request-Id: <id>`,
//! `X-Amz-Firehose-Protocol-Version: 1.0`, `X-Amz-Firehose-Access-Key` when
//! an access key is configured, `Content-Type: application/json` and, with
//! gzip content encoding, `Content-Encoding: gzip` (the body gzipped). The
//! request id is derived from the batch's source
//! ([`request_id`](super::destination::request_id)): the same for every
//! attempt, also after a restart, so the endpoint can drop duplicates.
//!
//! Only a `200` whose JSON body has `"requestId"` equal to the request's
//! counts as delivered. Anything else (connection failure, timeout, another
//! status, a wrong or missing request id) fails the attempt, with error code
//! `HttpEndpoint.ConnectionFailed`, `HttpEndpoint.Timeout`,
//! `HttpEndpoint.ResponseErrorCode` or
//! `HttpEndpoint.InvalidResponseFromDestination`; the delivery stream retries
//! and eventually writes the batch to its backup directory (error output type
//! `http-endpoint-failed`).

use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::config::Compression;
use super::destination::{Batch, Destination};
use super::encode::compress;
use super::error::FirehoseError;

/// Default request timeout, seconds.
pub const DEFAULT_TIMEOUT_SECS: u32 = 60;
/// Longest request timeout, seconds.
pub const MAX_TIMEOUT_SECS: u32 = 600;
/// Most bytes of a response body read.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The settings of an HTTP endpoint destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Sent as `X-Amz-Firehose-Access-Key`, if set.
    #[serde(default)]
    pub access_key: Option<String>,
    /// Gzip the request body (`Content-Encoding: gzip`).
    #[serde(default)]
    pub gzip: bool,
    /// Timeout of one request, seconds (1..=[`MAX_TIMEOUT_SECS`]).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u32,
}

fn default_timeout() -> u32 {
    DEFAULT_TIMEOUT_SECS
}

impl HttpSettings {
    /// Checks the URL and the timeout.
    ///
    /// # Errors
    /// [`FirehoseError::InvalidDestination`].
    pub fn validate(&self) -> Result<(), FirehoseError> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(FirehoseError::InvalidDestination(format!(
                "url {:?} is not http:// or https://",
                self.url.chars().take(200).collect::<String>()
            )));
        }
        if !(1..=MAX_TIMEOUT_SECS).contains(&self.timeout_secs) {
            return Err(FirehoseError::InvalidDestination(format!(
                "timeout {} s is outside 1..={MAX_TIMEOUT_SECS} s",
                self.timeout_secs
            )));
        }
        Ok(())
    }
}

/// Delivers batches to an HTTP endpoint (see the module header).
#[derive(Debug, Clone)]
pub struct HttpDestination {
    client: reqwest::Client,
    settings: HttpSettings,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestBody<'a> {
    request_id: &'a str,
    timestamp: u64,
    records: Vec<RecordBody>,
}

#[derive(Serialize)]
struct RecordBody {
    data: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResponseBody {
    request_id: Option<String>,
    error_message: Option<String>,
}

/// The request body of a batch: Firehose's JSON, gzipped if asked.
fn request_body(
    request_id: &str,
    records: &[bytes::Bytes],
    gzip: bool,
) -> Result<Vec<u8>, FirehoseError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let body = RequestBody {
        request_id,
        timestamp,
        records: records.iter().map(|d| RecordBody { data: b64.encode(d) }).collect(),
    };
    let json = serde_json::to_vec(&body)
        .map_err(|e| rejected("HttpEndpoint.RequestFailed", e.to_string()))?;
    compress(json, if gzip { Compression::Gzip } else { Compression::None })
}

fn rejected(code: &str, message: impl Into<String>) -> FirehoseError {
    FirehoseError::Rejected { code: code.to_owned(), message: message.into() }
}

impl HttpDestination {
    /// A destination with `settings`.
    ///
    /// # Errors
    /// Invalid settings, or a client that cannot be built.
    pub fn new(settings: &HttpSettings) -> Result<Self, FirehoseError> {
        settings.validate()?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(u64::from(settings.timeout_secs)))
            .build()
            .map_err(|e| FirehoseError::InvalidDestination(format!("HTTP client: {e}")))?;
        Ok(Self { client, settings: settings.clone() })
    }
}

impl Destination for HttpDestination {
    async fn put(&self, key: &str, _body: Vec<u8>) -> Result<(), FirehoseError> {
        Err(FirehoseError::InvalidDestination(format!(
            "an HTTP endpoint stores no objects ({key:?} needs a backup directory)"
        )))
    }

    async fn deliver(&self, batch: Batch) -> Result<(), FirehoseError> {
        // Base64, JSON and gzip of a whole batch are CPU work: off the
        // runtime's threads.
        let (request_id, records, gzip) =
            (batch.request_id.clone(), batch.records, self.settings.gzip);
        let body = tokio::task::spawn_blocking(move || request_body(&request_id, &records, gzip))
            .await
            .map_err(|_| FirehoseError::Cancelled)??;
        let mut request = self
            .client
            .post(&self.settings.url)
            .header("Content-Type", "application/json")
            .header("X-Amz-Firehose-Request-Id", &batch.request_id)
            .header("X-Amz-Firehose-Protocol-Version", "1.0");
        if let Some(k) = &self.settings.access_key {
            request = request.header("X-Amz-Firehose-Access-Key", k);
        }
        if gzip {
            request = request.header("Content-Encoding", "gzip");
        }
        let request = request.body(body);
        let mut response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                rejected("HttpEndpoint.Timeout", format!("no response in time: {e}"))
            } else {
                rejected("HttpEndpoint.ConnectionFailed", e.to_string())
            }
        })?;
        let status = response.status();
        let mut text = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_RESPONSE_BYTES.saturating_sub(text.len());
                    text.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if room <= chunk.len() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => {
                    return Err(rejected("HttpEndpoint.Timeout", format!("response body: {e}")));
                }
                Err(e) => return Err(rejected("HttpEndpoint.ConnectionFailed", e.to_string())),
            }
        }
        let excerpt = || String::from_utf8_lossy(&text[..text.len().min(512)]).into_owned();
        if status != reqwest::StatusCode::OK {
            return Err(rejected(
                "HttpEndpoint.ResponseErrorCode",
                format!("status {}: {}", status.as_u16(), excerpt()),
            ));
        }
        let parsed: ResponseBody = serde_json::from_slice(&text).map_err(|e| {
            rejected(
                "HttpEndpoint.InvalidResponseFromDestination",
                format!("response is not Firehose's JSON ({e}): {}", excerpt()),
            )
        })?;
        if parsed.request_id.as_deref() != Some(batch.request_id.as_str()) {
            return Err(rejected(
                "HttpEndpoint.InvalidResponseFromDestination",
                format!(
                    "response names request id {:?}, not {:?}{}",
                    parsed.request_id.unwrap_or_default(),
                    batch.request_id,
                    parsed.error_message.map(|m| format!(" ({m})")).unwrap_or_default()
                ),
            ));
        }
        Ok(())
    }

    fn wants_body(&self) -> bool {
        false
    }

    fn stores_objects(&self) -> bool {
        false
    }

    fn error_output_type(&self) -> &'static str {
        "http-endpoint-failed"
    }
}
