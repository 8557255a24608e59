//! A small Kinesis JSON client for the operator commands: one HTTP/1.1
//! connection pool (hyper) to the collector's API, plain HTTP.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Uri;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How long one API call may take before the command gives up.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response accepted (a GetRecords answer is at most 10 MiB of data,
/// base64 encoded, plus framing).
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// An error answer of the API: its `__type` and message.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct KinesisError {
    /// The error name, e.g. `ResourceNotFoundException`.
    pub kind: String,
    /// The message.
    pub message: String,
}

/// A client of one collector.
pub struct Client {
    http: HyperClient<HttpConnector, Full<Bytes>>,
    endpoint: Uri,
}

impl Client {
    /// A client of the API at `endpoint` (`http://host:port`).
    pub fn new(endpoint: &str) -> anyhow::Result<Self> {
        let uri: Uri = endpoint.parse().with_context(|| format!("endpoint {endpoint:?}"))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            bail!("endpoint {endpoint:?} must look like http://HOST:PORT");
        }
        let http = HyperClient::builder(TokioExecutor::new()).build_http();
        Ok(Self { http, endpoint: uri })
    }

    /// Calls `operation` with a JSON body; a Kinesis error comes back as a
    /// [`KinesisError`] inside the `anyhow::Error`.
    pub async fn call(&self, operation: &str, body: Value) -> anyhow::Result<Value> {
        let request = hyper::Request::post(self.endpoint.clone())
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", format!("Kinesis_20131202.{operation}"))
            .body(Full::new(Bytes::from(serde_json::to_vec(&body)?)))?;
        let response = tokio::time::timeout(CALL_TIMEOUT, self.http.request(request))
            .await
            .with_context(|| {
                format!("{operation}: no answer from {} within {CALL_TIMEOUT:?}", self.endpoint)
            })?
            .with_context(|| format!("{operation}: cannot reach {}", self.endpoint))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("{operation}: reading the answer: {e}"))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{operation}: answer ({status}) is not JSON: {}",
                String::from_utf8_lossy(&bytes)
            )
        })?;
        if !status.is_success() {
            let field = |k: &str| value.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            let kind = field("__type");
            let kind = kind.rsplit('#').next().unwrap_or("").to_owned();
            return Err(KinesisError { kind, message: field("message") }.into());
        }
        Ok(value)
    }
}

/// The string member `key` of `v`, or an error naming it.
pub fn str_field<'a>(v: &'a Value, key: &str) -> anyhow::Result<&'a str> {
    v.get(key).and_then(Value::as_str).with_context(|| format!("answer has no string {key}: {v}"))
}
