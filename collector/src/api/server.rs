//! The HTTP side: `POST /` (the Kinesis API), `GET /health`, `GET /metrics`.
//!
//! Requests name their operation in `X-Amz-Target: Kinesis_20131202.<Op>`
//! (or `Firehose_20150804.<Op>`, served by [`FirehoseApi`] when present) and
//! their encoding in `Content-Type`. Memory is bounded: a body is read only
//! after one of [`MAX_IN_FLIGHT_REQUESTS`] permits is taken (later requests
//! wait: backpressure, not loss), and never past [`MAX_REQUEST_BYTES`].
//! Failed requests (InternalFailure) log one line per operation and cause
//! per [`LOG_INTERVAL`](crate::log_limit::LOG_INTERVAL), with their count.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;

use super::codec::Encoding;
use super::dispatch::{self, OPERATIONS};
use super::error::{ApiError, ErrorKind};
use super::firehose::{self, FirehoseApi};
use super::metrics;
use super::model::ErrorBody;
use super::service::Api;
use crate::log_limit::{LogLimit, store_fault};
use crate::store::StreamStore;

/// Largest request body: 5 MiB of PutRecords data is 6.7 MiB as base64, plus
/// up to 500 partition keys and the JSON around them.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;
/// Requests whose bodies may be in memory at once (so at most
/// `MAX_IN_FLIGHT_REQUESTS * MAX_REQUEST_BYTES` = 1 GiB of request bodies).
pub const MAX_IN_FLIGHT_REQUESTS: usize = 128;
/// The `X-Amz-Target` prefix of Kinesis Data Streams.
pub const TARGET_PREFIX: &str = "Kinesis_20131202.";

struct HttpState<S> {
    api: Api<S>,
    firehose: Option<FirehoseApi<S>>,
    in_flight: Semaphore,
    metrics: Option<PrometheusHandle>,
    request_ids: AtomicU64,
    id_prefix: u32,
}

/// The HTTP routes over `api`.
pub fn router<S: StreamStore + Clone>(api: Api<S>) -> Router {
    router_with_firehose(api, None)
}

/// The HTTP routes over `api` and, when given, the Firehose API.
pub fn router_with_firehose<S: StreamStore + Clone>(
    api: Api<S>,
    firehose: Option<FirehoseApi<S>>,
) -> Router {
    let state = Arc::new(HttpState {
        api,
        firehose,
        in_flight: Semaphore::new(MAX_IN_FLIGHT_REQUESTS),
        metrics: metrics::install(),
        request_ids: AtomicU64::new(0),
        id_prefix: rand::random(),
    });
    Router::new()
        .route("/", post(kinesis::<S>))
        .route("/health", get(health::<S>))
        .route("/metrics", get(prometheus::<S>))
        .with_state(state)
}

/// Serves `api` on `listener` until `shutdown` resolves, then finishes the
/// requests in progress.
///
/// # Errors
/// The listener failed.
pub async fn serve<S: StreamStore + Clone>(
    listener: tokio::net::TcpListener,
    api: Api<S>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_firehose(listener, api, None, shutdown).await
}

/// As [`serve`], with the Firehose API too.
///
/// # Errors
/// The listener failed.
pub async fn serve_with_firehose<S: StreamStore + Clone>(
    listener: tokio::net::TcpListener,
    api: Api<S>,
    firehose: Option<FirehoseApi<S>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router_with_firehose(api, firehose))
        .with_graceful_shutdown(shutdown)
        .await
}

/// `ok` (200), or 503 with `{"status":"degraded","reason":...}` while the
/// store cannot take appends (its disk below the free-space reserve).
async fn health<S: StreamStore + Clone>(State(state): State<Arc<HttpState<S>>>) -> Response {
    match state.api.store.degraded() {
        None => "ok\n".into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "status": "degraded", "reason": reason }).to_string(),
        )
            .into_response(),
    }
}

async fn prometheus<S: StreamStore + Clone>(State(state): State<Arc<HttpState<S>>>) -> Response {
    match &state.metrics {
        Some(h) => {
            // Asking refreshes the store's gauges (free bytes, failed shards),
            // so they are there from the first scrape, not the first fault.
            let _ = state.api.store.degraded();
            h.run_upkeep();
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.render()).into_response()
        }
        None => {
            (StatusCode::SERVICE_UNAVAILABLE, "metrics recorder not installed\n").into_response()
        }
    }
}

async fn kinesis<S: StreamStore + Clone>(
    State(state): State<Arc<HttpState<S>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let encoding = Encoding::from_content_type(
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
    );
    let id = format!(
        "{:08x}-{:016x}",
        state.id_prefix,
        state.request_ids.fetch_add(1, Ordering::Relaxed)
    );
    let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or("");
    let (operation, is_firehose) = match target.strip_prefix(firehose::TARGET_PREFIX) {
        Some(op) if state.firehose.is_some() => (op, true),
        _ => (target.strip_prefix(TARGET_PREFIX).unwrap_or(target), false),
    };
    let known = if is_firehose { firehose::OPERATIONS } else { OPERATIONS };
    let label = known.iter().find(|o| **o == operation).copied().unwrap_or("unknown");
    let result = handle(&state, operation, is_firehose, encoding, &headers, body).await;
    match result {
        Ok(bytes) => {
            metrics::request(label, "ok");
            let mut r = Response::new(Body::from(bytes));
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(encoding.content_type()));
            if let Ok(v) = HeaderValue::from_str(&id) {
                h.insert("x-amzn-requestid", v);
            }
            r
        }
        Err(e) => {
            metrics::request(label, e.kind.name());
            if e.kind == ErrorKind::InternalFailure {
                // One line per operation and cause per LOG_INTERVAL: a full
                // disk fails every PutRecord.
                static FAILED: LazyLock<LogLimit> = LazyLock::new(LogLimit::new);
                let fault = e.source.as_deref().and_then(store_fault).unwrap_or("internal");
                if let Some(count) = FAILED.hit(&format!("{label}/{fault}"), 1, Instant::now()) {
                    tracing::warn!(operation, request_id = %id, requests = count, error = %e, cause = ?e.source, "request failed");
                }
            } else {
                tracing::debug!(operation, request_id = %id, error = %e, "request refused");
            }
            error_response(encoding, &e, &id)
        }
    }
}

async fn handle<S: StreamStore + Clone>(
    state: &HttpState<S>,
    operation: &str,
    is_firehose: bool,
    encoding: Encoding,
    headers: &HeaderMap,
    body: Body,
) -> Result<bytes::Bytes, ApiError> {
    if is_firehose && !firehose::OPERATIONS.contains(&operation) {
        return Err(ApiError::new(
            ErrorKind::UnknownOperation,
            format!("X-Amz-Target {operation:?} names no Firehose_20150804 operation"),
        ));
    }
    if !is_firehose && !OPERATIONS.contains(&operation) {
        return Err(ApiError::new(
            ErrorKind::UnknownOperation,
            format!("X-Amz-Target {operation:?} names no Kinesis_20131202 operation"),
        ));
    }
    let too_large = || {
        ApiError::new(
            ErrorKind::Serialization,
            format!("Request body exceeds {MAX_REQUEST_BYTES} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REQUEST_BYTES as u64) {
        return Err(too_large());
    }
    let _permit = state
        .in_flight
        .acquire()
        .await
        .map_err(|_| ApiError::new(ErrorKind::InternalFailure, "server is shutting down"))?;
    let body = axum::body::to_bytes(body, MAX_REQUEST_BYTES).await.map_err(|_| too_large())?;
    match &state.firehose {
        Some(f) if is_firehose => f.call(operation, encoding, &body).await,
        _ => dispatch::call(&state.api, operation, encoding, &body).await,
    }
}

fn error_response(encoding: Encoding, e: &ApiError, id: &str) -> Response {
    let body = ErrorBody { kind: e.kind.name(), message: &e.message };
    let bytes = encoding
        .encode(&body)
        .unwrap_or_else(|_| format!("{{\"__type\":\"{}\"}}", e.kind.name()).into_bytes());
    let status = StatusCode::from_u16(e.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (status, Body::from(bytes)).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(encoding.content_type()));
    h.insert("x-amzn-errortype", HeaderValue::from_static(e.kind.name()));
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert("x-amzn-requestid", v);
    }
    r
}
