//! The Firehose-compatible API against the real collector process, through
//! the official AWS SDK for Rust (`aws-sdk-firehose`) over plain HTTP: a
//! DirectPut delivery stream delivers exactly the records put, each once, to
//! its default directory; validation errors have Firehose's names; API-created
//! delivery streams survive a restart.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use aws_sdk_firehose::Client;
use aws_sdk_firehose::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::{
    DeliveryStreamType, ExtendedS3DestinationConfiguration, Record, Tag,
};
use weir_tests::harness::{Collector, http_get, metric_value, wait_for};

mod firehose_support;
mod kinesis_support;

/// How long delivery with a 1 s interval hint may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

fn sdk(addr: SocketAddr) -> Client {
    kinesis_support::firehose_sdk(addr)
}

fn code<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    e: &SdkError<E, R>,
) -> String {
    e.as_service_error()
        .and_then(|s| s.code())
        .map_or_else(|| format!("not a service error: {e:?}"), str::to_owned)
}

fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().key(k).value(v).build().expect("tag")
}

/// Every delivered object's records (lines), counted.
fn delivered(dir: &Path) -> BTreeMap<String, usize> {
    let objects = firehose_support::delivered(dir);
    objects.counts().into_iter().map(|(line, n)| (line.to_owned(), n)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_put_delivers_each_record_once_and_survives_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data_dir = tmp.path().join("data");
    let collector = Collector::start_in(&data_dir, tmp.path(), &["--fsync", "never"]);
    let client = sdk(collector.http_addr());

    let arn = client
        .create_delivery_stream()
        .delivery_stream_name("orders")
        .delivery_stream_type(DeliveryStreamType::DirectPut)
        .tags(tag("weir:BufferSizeMiB", "1"))
        .tags(tag("weir:BufferIntervalSeconds", "1"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("create: {e:?}\n{}", collector.report()))
        .delivery_stream_arn;
    assert_eq!(
        arn.as_deref(),
        Some("arn:aws:firehose:us-east-1:000000000000:deliverystream/orders")
    );

    let d = client
        .describe_delivery_stream()
        .delivery_stream_name("orders")
        .send()
        .await
        .expect("describe")
        .delivery_stream_description
        .expect("description");
    assert_eq!(d.delivery_stream_name, "orders");
    assert_eq!(d.delivery_stream_type, DeliveryStreamType::DirectPut);

    let wanted: Vec<String> = (0..300).map(|i| format!("record-{i:04}")).collect();
    for chunk in wanted.chunks(150) {
        let records: Vec<Record> = chunk
            .iter()
            .map(|r| Record::builder().data(Blob::new(format!("{r}\n"))).build().expect("record"))
            .collect();
        let out = client
            .put_record_batch()
            .delivery_stream_name("orders")
            .set_records(Some(records))
            .send()
            .await
            .expect("put batch");
        assert_eq!(out.failed_put_count, 0);
        assert_eq!(out.request_responses.len(), chunk.len());
        assert!(out.request_responses.iter().all(|r| r.record_id.is_some()));
    }
    let one = client
        .put_record()
        .delivery_stream_name("orders")
        .record(Record::builder().data(Blob::new("record-single\n")).build().expect("record"))
        .send()
        .await
        .expect("put record");
    assert!(!one.record_id.is_empty());

    let dir = data_dir.join("firehose").join("orders");
    let ok = wait_for(DELIVERY_TIMEOUT, || delivered(&dir).len() == wanted.len() + 1);
    assert!(ok, "not delivered in {DELIVERY_TIMEOUT:?}\n{}", collector.report());
    // The delivery stream counts exactly the records put as delivered (a
    // batch delivered twice would count twice), and the objects hold each
    // once.
    let addr = collector.http_addr();
    let counted = || {
        let text = http_get(addr, "/metrics");
        metric_value(&text, "weir_firehose_delivered_records_total", "delivery_stream=\"orders\"")
    };
    let ok = wait_for(DELIVERY_TIMEOUT, || counted() == Some((wanted.len() + 1) as f64));
    assert!(ok, "delivered count {:?}\n{}", counted(), collector.report());
    let got = delivered(&dir);
    let mut expected: BTreeMap<String, usize> = wanted.iter().map(|r| (r.clone(), 1)).collect();
    expected.insert("record-single".into(), 1);
    assert_eq!(got, expected);

    // Validation: more than 500 records, an unknown delivery stream, an S3
    // destination.
    let many: Vec<Record> =
        (0..501).map(|_| Record::builder().data(Blob::new("x")).build().expect("record")).collect();
    let e = client
        .put_record_batch()
        .delivery_stream_name("orders")
        .set_records(Some(many))
        .send()
        .await
        .expect_err("501 records");
    assert_eq!(code(&e), "ValidationException", "{e:?}");
    let e = client
        .put_record_batch()
        .delivery_stream_name("no-such-stream")
        .records(Record::builder().data(Blob::new("x")).build().expect("record"))
        .send()
        .await
        .expect_err("unknown stream");
    assert_eq!(code(&e), "ResourceNotFoundException", "{e:?}");
    let e = client
        .create_delivery_stream()
        .delivery_stream_name("to-s3")
        .extended_s3_destination_configuration(
            ExtendedS3DestinationConfiguration::builder()
                .role_arn("arn:aws:iam::000000000000:role/r")
                .bucket_arn("arn:aws:s3:::b")
                .build()
                .expect("s3 config"),
        )
        .send()
        .await
        .expect_err("S3 destination with an invalid bucket name");
    assert_eq!(code(&e), "InvalidArgumentException", "{e:?}");
    assert!(e.as_service_error().and_then(|s| s.message()).is_some_and(|m| m.contains("bucket")));
    let e = client
        .create_delivery_stream()
        .delivery_stream_name("orders")
        .send()
        .await
        .expect_err("name taken");
    assert_eq!(code(&e), "ResourceInUseException", "{e:?}");

    // Restart: the delivery stream is still there and still delivers.
    collector.signal("TERM");
    let mut collector = collector;
    assert!(collector.wait_exit(Duration::from_secs(30)).is_some(), "{}", collector.report());
    drop(collector);
    let collector = Collector::start_in(&data_dir, tmp.path(), &["--fsync", "never"]);
    let client = sdk(collector.http_addr());
    let names = client.list_delivery_streams().send().await.expect("list").delivery_stream_names;
    assert_eq!(names, vec!["orders".to_owned()]);
    client
        .put_record()
        .delivery_stream_name("orders")
        .record(Record::builder().data(Blob::new("record-after-restart\n")).build().expect("r"))
        .send()
        .await
        .expect("put after restart");
    let ok = wait_for(DELIVERY_TIMEOUT, || delivered(&dir).contains_key("record-after-restart"));
    assert!(ok, "not delivered after restart\n{}", collector.report());
    let got = delivered(&dir);
    assert!(got.values().all(|n| *n == 1), "a record delivered twice: {got:?}");
    assert_eq!(got.len(), wanted.len() + 2);

    client.delete_delivery_stream().delivery_stream_name("orders").send().await.expect("delete");
    let names = client.list_delivery_streams().send().await.expect("list").delivery_stream_names;
    assert!(names.is_empty(), "{names:?}");
}

/// A `[[firehose]]` delivery stream of the configuration and one created
/// through the API with KinesisStreamAsSource both deliver what Kinesis
/// PutRecords appended to their source stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_sources_from_config_and_api_deliver() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data_dir = tmp.path().join("data");
    let out_dir = tmp.path().join("archive");
    let config = tmp.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "[[firehose]]\nname = \"archive\"\nsource_stream = \"sensors\"\ndirectory = {:?}\n\
             buffer_size_mib = 1\nbuffer_interval_secs = 1\noutput = \"newline-delimited\"\n",
            out_dir.display().to_string()
        ),
    )
    .expect("config");
    let config_arg = config.display().to_string();
    let collector =
        Collector::start_in(&data_dir, tmp.path(), &["--config", &config_arg, "--fsync", "never"]);
    let addr = collector.http_addr();
    let firehose = sdk(addr);
    let kinesis = kinesis_support::sdk(addr);
    kinesis.create_stream().stream_name("sensors").shard_count(2).send().await.expect("create");
    firehose
        .create_delivery_stream()
        .delivery_stream_name("mirror")
        .delivery_stream_type(DeliveryStreamType::KinesisStreamAsSource)
        .kinesis_stream_source_configuration(
            aws_sdk_firehose::types::KinesisStreamSourceConfiguration::builder()
                .kinesis_stream_arn("arn:aws:kinesis:us-east-1:000000000000:stream/sensors")
                .role_arn("arn:aws:iam::000000000000:role/r")
                .build()
                .expect("source"),
        )
        .tags(tag("weir:BufferIntervalSeconds", "1"))
        .tags(tag("weir:NewlineDelimited", "true"))
        .send()
        .await
        .expect("create mirror");
    let names = firehose.list_delivery_streams().send().await.expect("list").delivery_stream_names;
    assert_eq!(names, vec!["archive".to_owned(), "mirror".to_owned()]);
    let e = firehose
        .delete_delivery_stream()
        .delivery_stream_name("archive")
        .send()
        .await
        .expect_err("declared in config");
    assert_eq!(code(&e), "ResourceInUseException", "{e:?}");

    let wanted: Vec<String> = (0..200).map(|i| format!("reading-{i:04}")).collect();
    kinesis_support::put_all(&kinesis, "sensors", &wanted).await;
    let expected: BTreeMap<String, usize> = wanted.iter().map(|r| (r.clone(), 1)).collect();
    let mirror_dir = data_dir.join("firehose").join("mirror");
    for dir in [&out_dir, &mirror_dir] {
        let ok = wait_for(DELIVERY_TIMEOUT, || delivered(dir).len() == wanted.len());
        assert!(ok, "{} not delivered\n{}", dir.display(), collector.report());
        assert_eq!(delivered(dir), expected, "{}", dir.display());
    }
}
