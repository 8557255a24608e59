//! The S3 destination against the real collector process and a local
//! S3-protocol server (moto, `python3 -m moto.server`, installed by
//! scripts/test): records of a Weir stream land in the bucket, gzipped,
//! under the configured prefix, each exactly once; read back with
//! `object_store`.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::ObjectStore;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use weir_tests::harness::{Collector, free_port, http};

mod kinesis_support;

/// How long the S3 server may take to start.
const SERVER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long delivery may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);
const BUCKET: &str = "weir-archive";

/// A moto S3 server on a free port, killed on drop.
struct S3Server {
    child: Child,
    endpoint: String,
    log: std::path::PathBuf,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status code of a bodiless request to the S3 server.
fn status(addr: SocketAddr, method: &str, path: &str) -> Option<u16> {
    http(addr, method, path).map(|(status, _)| status)
}

impl S3Server {
    async fn start(log_dir: &std::path::Path) -> Self {
        let port = free_port();
        let log = log_dir.join("moto.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("starting python3 -m moto.server (scripts/test installs moto[server])");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let me = Self { child, endpoint: format!("http://{addr}"), log };
        let deadline = tokio::time::Instant::now() + SERVER_TIMEOUT;
        while status(addr, "GET", "/moto-api/") != Some(200) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "moto server not ready in {SERVER_TIMEOUT:?}: {}",
                std::fs::read_to_string(&me.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(status(addr, "PUT", &format!("/{BUCKET}")), Some(200), "create bucket");
        me
    }

    fn client(&self) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .expect("client")
    }
}

/// Every object under `prefix`: key and decompressed body.
async fn objects(s3: &AmazonS3, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let prefix = object_store::path::Path::from(prefix);
    let metas: Vec<object_store::ObjectMeta> =
        s3.list(Some(&prefix)).try_collect().await.expect("list");
    let mut out = BTreeMap::new();
    for m in metas {
        let raw = s3.get(&m.location).await.expect("get").bytes().await.expect("body");
        let key = m.location.to_string();
        let body = if key.ends_with(".gz") {
            let mut body = Vec::new();
            flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut body).expect("gunzip");
            body
        } else {
            raw.to_vec()
        };
        out.insert(key, body);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_each_record_once_to_the_bucket() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(tmp.path()).await;
    let data_dir = tmp.path().join("data");
    let config = tmp.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[firehose]]
name = "to-s3"
source_stream = "events"
buffer_size_mib = 1
buffer_interval_secs = 1
output = "newline-delimited"
compression = "gzip"
prefix = "data/site=!{{partitionKeyFromQuery:site}}/!{{timestamp:yyyy/MM/dd}}/"
[firehose.partition_keys]
site = "site"
[firehose.s3]
bucket = "{BUCKET}"
endpoint = "{endpoint}"
access_key_id = "test"
secret_access_key = "test"
"#,
            endpoint = server.endpoint
        ),
    )
    .expect("config");
    let config_arg = config.display().to_string();
    let collector =
        Collector::start_in(&data_dir, tmp.path(), &["--config", &config_arg, "--fsync", "never"]);
    let addr = collector.http_addr();
    let kinesis = kinesis_support::sdk(addr);
    kinesis.create_stream().stream_name("events").shard_count(2).send().await.expect("create");
    let wanted: Vec<String> =
        (0..300).map(|i| format!(r#"{{"n":{i},"site":"s{}"}}"#, i % 3)).collect();
    kinesis_support::put_all(&kinesis, "events", &wanted).await;

    let s3 = server.client();
    let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
    let objs = loop {
        let objs = objects(&s3, "data").await;
        let lines: usize = objs.values().map(|b| String::from_utf8_lossy(b).lines().count()).sum();
        if lines >= wanted.len() {
            break objs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{lines} of {} records in the bucket: {:?}\n{}\n--- moto ---\n{}",
            wanted.len(),
            objs.keys().collect::<Vec<_>>(),
            collector.report(),
            std::fs::read_to_string(&server.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (key, body) in &objs {
        let rest = key.strip_prefix("data/site=").expect("partitioned prefix");
        let (site, rest) = rest.split_once('/').expect("site");
        let name = rest.rsplit('/').next().expect("name");
        assert!(name.starts_with("to-s3-shardId-00000000000"), "{key}");
        assert!(name.ends_with(".gz"), "{key}");
        for line in String::from_utf8(body.clone()).expect("utf-8").lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("JSON record");
            assert_eq!(v["site"], site, "{key}");
            *counts.entry(line.to_owned()).or_insert(0) += 1;
        }
    }
    let expected: BTreeMap<String, usize> = wanted.iter().map(|w| (w.clone(), 1)).collect();
    assert_eq!(counts, expected, "every record exactly once");
    assert!(objects(&s3, "errors").await.is_empty(), "no error output");
}

/// CreateDeliveryStream with an ExtendedS3DestinationConfiguration (dynamic
/// partitioning by a MetadataExtraction query, newline delimiters, gzip):
/// direct puts land in the bucket named by BucketARN at the endpoint of
/// `[firehose_s3]`, partitioned, each once; Describe shows the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_created_s3_delivery_stream_partitions_into_the_bucket() {
    use aws_sdk_firehose::primitives::Blob;
    use aws_sdk_firehose::types::{
        BufferingHints, CompressionFormat, DynamicPartitioningConfiguration,
        ExtendedS3DestinationConfiguration, ProcessingConfiguration, Processor, ProcessorParameter,
        ProcessorParameterName, ProcessorType, Record, RetryOptions,
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = S3Server::start(tmp.path()).await;
    let data_dir = tmp.path().join("data");
    let config = tmp.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "[firehose_s3]\nendpoint = \"{}\"\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\n",
            server.endpoint
        ),
    )
    .expect("config");
    let config_arg = config.display().to_string();
    let collector =
        Collector::start_in(&data_dir, tmp.path(), &["--config", &config_arg, "--fsync", "never"]);
    let addr = collector.http_addr();
    let client = kinesis_support::firehose_sdk(addr);
    let param = |name: ProcessorParameterName, value: &str| {
        ProcessorParameter::builder()
            .parameter_name(name)
            .parameter_value(value)
            .build()
            .expect("parameter")
    };
    let s3 = ExtendedS3DestinationConfiguration::builder()
        .role_arn("arn:aws:iam::000000000000:role/firehose")
        .bucket_arn(format!("arn:aws:s3:::{BUCKET}"))
        .prefix("api/device=!{partitionKeyFromQuery:device}/")
        .error_output_prefix("api-errors/!{firehose:error-output-type}/")
        .compression_format(CompressionFormat::Gzip)
        .buffering_hints(BufferingHints::builder().size_in_mbs(1).interval_in_seconds(1).build())
        .dynamic_partitioning_configuration(
            DynamicPartitioningConfiguration::builder()
                .enabled(true)
                .retry_options(RetryOptions::builder().duration_in_seconds(60).build())
                .build(),
        )
        .processing_configuration(
            ProcessingConfiguration::builder()
                .enabled(true)
                .processors(
                    Processor::builder()
                        .r#type(ProcessorType::MetadataExtraction)
                        .parameters(param(
                            ProcessorParameterName::MetadataExtractionQuery,
                            "{device:.device.id}",
                        ))
                        .parameters(param(ProcessorParameterName::JsonParsingEngine, "JQ-1.6"))
                        .build()
                        .expect("processor"),
                )
                .processors(
                    Processor::builder()
                        .r#type(ProcessorType::AppendDelimiterToRecord)
                        .build()
                        .expect("processor"),
                )
                .build(),
        )
        .build()
        .expect("s3 configuration");
    client
        .create_delivery_stream()
        .delivery_stream_name("api-to-s3")
        .extended_s3_destination_configuration(s3)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create: {e:?}\n{}", collector.report()));
    let d = client
        .describe_delivery_stream()
        .delivery_stream_name("api-to-s3")
        .send()
        .await
        .expect("describe")
        .delivery_stream_description
        .expect("description");
    let dest = d.destinations[0].extended_s3_destination_description.clone().expect("S3");
    assert_eq!(dest.bucket_arn, format!("arn:aws:s3:::{BUCKET}"));
    assert_eq!(dest.prefix.as_deref(), Some("api/device=!{partitionKeyFromQuery:device}/"));
    assert_eq!(dest.compression_format, CompressionFormat::Gzip);

    let wanted: Vec<String> =
        (0..90).map(|i| format!(r#"{{"i":{i},"device":{{"id":"dev{}"}}}}"#, i % 3)).collect();
    let mut records: Vec<Record> = wanted
        .iter()
        .map(|w| Record::builder().data(Blob::new(w.as_bytes())).build().expect("record"))
        .collect();
    records.push(Record::builder().data(Blob::new("not json")).build().expect("record"));
    let out = client
        .put_record_batch()
        .delivery_stream_name("api-to-s3")
        .set_records(Some(records))
        .send()
        .await
        .expect("put batch");
    assert_eq!(out.failed_put_count, 0);

    let store = server.client();
    let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
    loop {
        let objs = objects(&store, "api").await;
        let errs = objects(&store, "api-errors").await;
        let lines: usize = objs.values().map(|b| String::from_utf8_lossy(b).lines().count()).sum();
        if lines >= wanted.len() && !errs.is_empty() {
            let mut got = Vec::new();
            for (key, body) in &objs {
                let device = key
                    .strip_prefix("api/device=")
                    .and_then(|r| r.split('/').next())
                    .expect("partitioned key");
                for line in String::from_utf8(body.clone()).expect("utf-8").lines() {
                    assert!(line.contains(&format!("\"id\":\"{device}\"")), "{key}: {line}");
                    got.push(line.to_owned());
                }
            }
            got.sort();
            let mut want = wanted.clone();
            want.sort();
            assert_eq!(got, want, "every record exactly once");
            assert_eq!(errs.len(), 1);
            let (key, body) = errs.iter().next().expect("error object");
            assert!(key.starts_with("api-errors/partitioning-failed/"), "{key}");
            let text = String::from_utf8_lossy(body);
            assert!(text.contains("DynamicPartitioning.MetadataExtractionFailed"), "{text}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{lines} of {} records: {:?}\n{}",
            wanted.len(),
            objs.keys().collect::<Vec<_>>(),
            collector.report()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
