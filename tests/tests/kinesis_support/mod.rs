//! Shared by the `kinesis_*` tests: a collector process with its HTTP
//! listener on port 0, and clients for it (the official AWS SDK for Rust over
//! plain HTTP, and raw HTTP for CBOR and malformed requests).

#![allow(dead_code)]

pub mod ops;

use std::net::SocketAddr;
use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::config::timeout::TimeoutConfig;
use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use weir_tests::harness::Collector;

/// How long one raw HTTP call may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// A collector with its HTTP listener on 127.0.0.1:0.
pub fn start(extra: &[&str]) -> (Collector, SocketAddr) {
    let mut args = vec!["--http-listen", "127.0.0.1:0", "--fsync", "never"];
    args.extend_from_slice(extra);
    let c = Collector::start(&args);
    let addr = c.http_addr();
    (c, addr)
}

/// The AWS SDK for Rust, pointed at the collector, with retries off (so a
/// test sees every error as the collector sent it).
pub fn sdk(addr: SocketAddr) -> Client {
    Client::from_conf(config(addr).build())
}

/// [`sdk`] whose calls fail after `timeout` (a collector killed in the
/// middle of a call then cannot hold up the test).
pub fn sdk_with_timeout(addr: SocketAddr, timeout: Duration) -> Client {
    let timeouts = TimeoutConfig::builder().operation_timeout(timeout).build();
    Client::from_conf(config(addr).timeout_config(timeouts).build())
}

/// The AWS SDK's Firehose client, pointed at the collector's HTTP listener
/// the same way (plain HTTP, retries off).
pub fn firehose_sdk(addr: SocketAddr) -> aws_sdk_firehose::Client {
    aws_sdk_firehose::Client::from_conf(
        aws_sdk_firehose::Config::builder()
            .behavior_version(aws_sdk_firehose::config::BehaviorVersion::latest())
            .region(aws_sdk_firehose::config::Region::new("us-east-1"))
            .endpoint_url(format!("http://{addr}"))
            .credentials_provider(aws_sdk_firehose::config::Credentials::new(
                "weir",
                "weir",
                None,
                None,
                "weir-tests",
            ))
            .http_client(aws_smithy_http_client::Builder::new().build_http())
            .retry_config(aws_sdk_firehose::config::retry::RetryConfig::disabled())
            .build(),
    )
}

fn config(addr: SocketAddr) -> aws_sdk_kinesis::config::Builder {
    aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(format!("http://{addr}"))
        .credentials_provider(Credentials::new("weir", "weir", None, None, "weir-tests"))
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .retry_config(RetryConfig::disabled())
}

/// Puts `records` into `stream` with PutRecords (500 at a time), each
/// record its own partition key; panics unless every entry succeeded.
pub async fn put_all(client: &Client, stream: &str, records: &[String]) {
    for chunk in records.chunks(500) {
        let entries = chunk
            .iter()
            .map(|r| {
                aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                    .partition_key(r)
                    .data(aws_sdk_kinesis::primitives::Blob::new(r.as_bytes()))
                    .build()
                    .expect("entry")
            })
            .collect();
        let out = client
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries))
            .send()
            .await
            .expect("put records");
        assert_eq!(out.failed_record_count, Some(0), "{out:?}");
    }
}

/// The error name (`__type`) of a failed SDK call.
pub fn code<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    e: &SdkError<E, R>,
) -> String {
    e.as_service_error()
        .and_then(|s| s.code())
        .map_or_else(|| format!("not a service error: {e:?}"), str::to_owned)
}

/// The error name and message of a failed call, or a panic naming what
/// succeeded instead.
#[macro_export]
macro_rules! expect_code {
    ($call:expr, $code:expr) => {{
        match $call {
            Ok(v) => panic!("expected {} but the call succeeded: {v:?}", $code),
            Err(e) => {
                let got = $crate::kinesis_support::code(&e);
                assert_eq!(got, $code, "{e:?}");
                e
            }
        }
    }};
}

/// A raw HTTP answer.
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: Bytes,
}

/// POSTs `body` to the API with `X-Amz-Target: Kinesis_20131202.<op>`
/// (`op` `None`: no target header) and `content_type`.
pub async fn post(addr: SocketAddr, op: Option<&str>, content_type: &str, body: Vec<u8>) -> Answer {
    let client: HyperClient<HttpConnector, Full<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build_http();
    let mut req =
        hyper::Request::post(format!("http://{addr}/")).header("content-type", content_type);
    if let Some(op) = op {
        req = req.header("x-amz-target", format!("Kinesis_20131202.{op}"));
    }
    let req = req.body(Full::new(Bytes::from(body))).expect("request");
    let resp = tokio::time::timeout(HTTP_TIMEOUT, client.request(req))
        .await
        .expect("answer in time")
        .expect("HTTP exchange");
    let status = resp.status().as_u16();
    let content_type =
        resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Answer { status, content_type, body }
}

/// GETs a path, returning status and body text.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let client: HyperClient<HttpConnector, Full<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build_http();
    let req = hyper::Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = tokio::time::timeout(HTTP_TIMEOUT, client.request(req))
        .await
        .expect("answer in time")
        .expect("HTTP exchange");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A sequence number as a number, for ordering checks.
pub fn seq(s: &str) -> u128 {
    s.parse().unwrap_or_else(|_| panic!("sequence number {s:?} is not decimal"))
}
