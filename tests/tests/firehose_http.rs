//! The HTTP endpoint destination against the real collector process and a
//! small endpoint server in the test: Firehose's HTTP delivery contract
//! (headers, JSON body with base64 records, gzip), retries with the same
//! request id through failures, a timeout and a wrong request id until one
//! delivery succeeds, and a batch that never gets through going to the
//! backup directory after the retry duration, with the metrics counting it.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use weir_tests::harness::{Collector, files, http_get, metric_value, wait_for};

mod kinesis_support;

/// How long delivery (with its retries) may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// The collector's request timeout of the flaky endpoint, seconds.
const TIMEOUT_SECS: u64 = 1;
/// Failures with status 500 before the flaky endpoint hangs once.
const FAILURES: usize = 3;

/// One request the endpoint received.
#[derive(Debug, Clone)]
struct Seen {
    header_id: String,
    protocol: String,
    access_key: String,
    gzip: bool,
    body_id: String,
    records: Vec<String>,
}

#[derive(Clone, Default)]
struct Endpoint {
    seen: Arc<Mutex<Vec<Seen>>>,
    always_fail: bool,
    healthy: bool,
}

fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

async fn handle(
    State(ep): State<Endpoint>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let gzip = header(&headers, "content-encoding") == "gzip";
    let mut raw = body.to_vec();
    if gzip {
        let mut out = Vec::new();
        if flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out).is_err() {
            return (StatusCode::BAD_REQUEST, "bad gzip".into());
        }
        raw = out;
    }
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&raw) else {
        return (StatusCode::BAD_REQUEST, "bad json".into());
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let records = json["records"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    let data =
                        b64.decode(r["data"].as_str().unwrap_or_default()).unwrap_or_default();
                    String::from_utf8_lossy(&data).into_owned()
                })
                .collect()
        })
        .unwrap_or_default();
    let seen = Seen {
        header_id: header(&headers, "x-amz-firehose-request-id"),
        protocol: header(&headers, "x-amz-firehose-protocol-version"),
        access_key: header(&headers, "x-amz-firehose-access-key"),
        gzip,
        body_id: json["requestId"].as_str().unwrap_or_default().to_owned(),
        records,
    };
    let id = seen.body_id.clone();
    let n = {
        let mut all = ep.seen.lock().expect("lock");
        all.push(seen);
        all.len() - 1
    };
    let ok = serde_json::json!({ "requestId": id, "timestamp": 1 }).to_string();
    if ep.always_fail {
        return (StatusCode::SERVICE_UNAVAILABLE, r#"{"errorMessage":"down for good"}"#.into());
    }
    match n {
        _ if ep.healthy => (StatusCode::OK, ok),
        n if n < FAILURES => (StatusCode::INTERNAL_SERVER_ERROR, "try later".into()),
        n if n == FAILURES => {
            // Past the collector's timeout: this attempt counts as failed.
            tokio::time::sleep(Duration::from_secs(TIMEOUT_SECS * 3)).await;
            (StatusCode::OK, ok)
        }
        n if n == FAILURES + 1 => (
            StatusCode::OK,
            serde_json::json!({ "requestId": "not-the-request-id", "timestamp": 1 }).to_string(),
        ),
        _ => (StatusCode::OK, ok),
    }
}

async fn serve(ep: Endpoint) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route("/ingest", axum::routing::post(handle)).with_state(ep);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// Polls `cond` until it holds or `timeout` passes ([`wait_for`]), on a
/// thread the runtime may block: the endpoint server runs on this runtime
/// meanwhile.
fn wait_until(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    tokio::task::block_in_place(|| wait_for(timeout, cond))
}

/// The value of the metric `name{delivery_stream="stream"}`, 0 if absent.
fn metric(text: &str, name: &str, stream: &str) -> u64 {
    metric_value(text, name, &format!("delivery_stream=\"{stream}\"")).map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_the_same_request_id_then_delivers_once_or_backs_up() {
    let flaky = Endpoint::default();
    let down = Endpoint { always_fail: true, ..Endpoint::default() };
    let flaky_addr = serve(flaky.clone()).await;
    let down_addr = serve(down.clone()).await;

    let tmp = tempfile::tempdir().expect("tempdir");
    let data_dir = tmp.path().join("data");
    let backup = tmp.path().join("backup");
    let config = tmp.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[firehose]]
name = "to-flaky"
source_stream = "events"
buffer_size_mib = 1
buffer_interval_secs = 1
retry_duration_secs = 120
[firehose.http]
url = "http://{flaky_addr}/ingest"
access_key = "sesame"
gzip = true
timeout_secs = {TIMEOUT_SECS}

[[firehose]]
name = "to-down"
source_stream = "events"
buffer_size_mib = 1
buffer_interval_secs = 1
retry_duration_secs = 2
backup_directory = {backup:?}
[firehose.http]
url = "http://{down_addr}/ingest"
"#,
            backup = backup.display().to_string()
        ),
    )
    .expect("config");
    let config_arg = config.display().to_string();
    let collector =
        Collector::start_in(&data_dir, tmp.path(), &["--config", &config_arg, "--fsync", "never"]);
    let addr = collector.http_addr();
    let kinesis = kinesis_support::sdk(addr);
    kinesis.create_stream().stream_name("events").shard_count(1).send().await.expect("create");
    let wanted: Vec<String> = (0..20).map(|i| format!("{{\"event\":{i}}}")).collect();
    kinesis_support::put_all(&kinesis, "events", &wanted).await;

    // The flaky endpoint: 3 x 500, a timeout, a wrong request id, then 200.
    let delivered = wait_until(DELIVERY_TIMEOUT, || {
        let seen = flaky.seen.lock().expect("lock");
        seen.len() > FAILURES + 2
    });
    let seen = flaky.seen.lock().expect("lock").clone();
    assert!(delivered, "{} requests: {seen:?}\n{}", seen.len(), collector.report());
    let id = seen[0].header_id.clone();
    assert_eq!(id.split('-').map(str::len).collect::<Vec<_>>(), [8, 4, 4, 4, 12], "{id}");
    for s in &seen {
        assert_eq!(s.header_id, id, "the same request id on every attempt");
        assert_eq!(s.body_id, id);
        assert_eq!(s.protocol, "1.0");
        assert_eq!(s.access_key, "sesame");
        assert!(s.gzip);
        assert_eq!(s.records, wanted, "the batch, base64 in the body, in order");
    }
    // Delivered once: the checkpoint moved on, and the metrics say so.
    let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
    let text = loop {
        let text = http_get(addr, "/metrics");
        let done = metric(&text, "weir_firehose_delivered_records_total", "to-flaky") == 20
            && metric(&text, "weir_firehose_failed_records_total", "to-down") == 20;
        if done {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}\n{}", collector.report());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        metric(&text, "weir_firehose_retried_records_total", "to-flaky"),
        20 * (FAILURES as u64 + 2),
        "{text}"
    );
    assert_eq!(metric(&text, "weir_firehose_delivered_records_total", "to-down"), 0);
    assert_eq!(flaky.seen.lock().expect("lock").len(), FAILURES + 3, "no request after the 200");

    // The endpoint that always fails: the batch is in the backup directory,
    // with the reason, after the 2 s retry duration.
    let backed_up = files(&backup);
    assert_eq!(backed_up.len(), 1, "{backed_up:?}");
    let key = backed_up[0].strip_prefix(&backup).expect("under backup").display().to_string();
    assert!(key.starts_with("errors/http-endpoint-failed/"), "{key}");
    assert!(key.ends_with(".json"), "{key}");
    let text = std::fs::read_to_string(&backed_up[0]).expect("read");
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut got = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        assert_eq!(v["errorCode"], "HttpEndpoint.ResponseErrorCode", "{v}");
        assert!(v["errorMessage"].as_str().is_some_and(|m| m.contains("503")), "{v}");
        assert!(v["attemptsMade"].as_u64().is_some_and(|n| n >= 2), "{v}");
        let raw = b64.decode(v["rawData"].as_str().expect("rawData")).expect("base64");
        got.push(String::from_utf8(raw).expect("utf-8"));
    }
    assert_eq!(got, wanted);
    let down_seen = down.seen.lock().expect("lock").clone();
    assert!(down_seen.len() >= 2, "retried");
    assert!(down_seen.iter().all(|s| s.header_id == down_seen[0].header_id && !s.gzip));
    assert_ne!(down_seen[0].header_id, id, "request ids differ per delivery stream");
}

/// CreateDeliveryStream with an HttpEndpointDestinationConfiguration: direct
/// puts reach the endpoint (no gzip, no access key), and Describe shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_created_http_endpoint_delivery_stream_delivers() {
    use aws_sdk_firehose::primitives::Blob;
    use aws_sdk_firehose::types::{
        HttpEndpointBufferingHints, HttpEndpointConfiguration,
        HttpEndpointDestinationConfiguration, HttpEndpointRequestConfiguration,
        HttpEndpointRetryOptions, Record, S3DestinationConfiguration,
    };
    let endpoint = Endpoint { healthy: true, ..Endpoint::default() };
    let endpoint_addr = serve(endpoint.clone()).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let collector =
        Collector::start_in(&tmp.path().join("data"), tmp.path(), &["--fsync", "never"]);
    let addr = collector.http_addr();
    let client = kinesis_support::firehose_sdk(addr);
    let url = format!("http://{endpoint_addr}/ingest");
    let http = HttpEndpointDestinationConfiguration::builder()
        .endpoint_configuration(
            HttpEndpointConfiguration::builder().url(&url).name("test").build().expect("endpoint"),
        )
        .buffering_hints(
            HttpEndpointBufferingHints::builder().size_in_mbs(1).interval_in_seconds(1).build(),
        )
        .request_configuration(
            HttpEndpointRequestConfiguration::builder()
                .content_encoding(aws_sdk_firehose::types::ContentEncoding::None)
                .build(),
        )
        .retry_options(HttpEndpointRetryOptions::builder().duration_in_seconds(30).build())
        .s3_configuration(
            S3DestinationConfiguration::builder()
                .role_arn("arn:aws:iam::000000000000:role/r")
                .bucket_arn("arn:aws:s3:::unused-backup")
                .build()
                .expect("s3 backup"),
        )
        .build();
    client
        .create_delivery_stream()
        .delivery_stream_name("api-to-http")
        .http_endpoint_destination_configuration(http)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create: {e:?}\n{}", collector.report()));
    let d = client
        .describe_delivery_stream()
        .delivery_stream_name("api-to-http")
        .send()
        .await
        .expect("describe")
        .delivery_stream_description
        .expect("description");
    let desc = d.destinations[0].http_endpoint_destination_description.clone().expect("http");
    assert_eq!(desc.endpoint_configuration.and_then(|e| e.url), Some(url));

    let wanted: Vec<String> = (0..25).map(|i| format!("direct-{i}")).collect();
    let records: Vec<Record> = wanted
        .iter()
        .map(|w| Record::builder().data(Blob::new(w.as_bytes())).build().expect("record"))
        .collect();
    client
        .put_record_batch()
        .delivery_stream_name("api-to-http")
        .set_records(Some(records))
        .send()
        .await
        .expect("put batch");
    let ok = wait_until(DELIVERY_TIMEOUT, || {
        endpoint.seen.lock().expect("lock").iter().map(|s| s.records.len()).sum::<usize>()
            >= wanted.len()
    });
    assert!(ok, "{}", collector.report());
    let seen = endpoint.seen.lock().expect("lock").clone();
    let got: Vec<String> = seen.iter().flat_map(|s| s.records.clone()).collect();
    assert_eq!(got, wanted);
    assert!(seen.iter().all(|s| !s.gzip && s.access_key.is_empty() && s.protocol == "1.0"));
}
