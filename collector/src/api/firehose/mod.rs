//! The Kinesis Data Firehose–compatible operations (`X-Amz-Target:
//! Firehose_20150804.<Op>`, JSON 1.1) over the collector's
//! [`Manager`](crate::firehose::Manager).
//!
//! Destinations: without a destination configuration, the directory
//! `<data-dir>/firehose/<name>`, whose buffering hints, compression, record
//! format and prefix are given as tags (`weir:BufferSizeMiB`,
//! `weir:BufferIntervalSeconds`, `weir:Compression`, `weir:NewlineDelimited`,
//! `weir:Prefix`). `ExtendedS3DestinationConfiguration` (or
//! `S3DestinationConfiguration`): the bucket of `BucketARN`
//! (`arn:aws:s3:::<bucket>`) at the endpoint and with the credentials of the
//! collector's `[firehose_s3]` section, with `Prefix`, `ErrorOutputPrefix`,
//! `BufferingHints`, `CompressionFormat` (`UNCOMPRESSED`, `GZIP`),
//! `DynamicPartitioningConfiguration.RetryOptions.DurationInSeconds`, and the
//! processors `MetadataExtraction` (`MetadataExtractionQuery` of the simple
//! form `{name:.path, ...}`) and `AppendDelimiterToRecord` (newline-delimited
//! output). `HttpEndpointDestinationConfiguration`: `EndpointConfiguration`
//! (`Url`, `AccessKey`), `RequestConfiguration.ContentEncoding` (`NONE`,
//! `GZIP`), `RetryOptions.DurationInSeconds`, `BufferingHints`; its error
//! output goes to `<data-dir>/firehose/<name>`. Redshift, OpenSearch, Splunk
//! and the other destinations are refused with `InvalidArgumentException`.
//!
//! `model`: the request and response shapes; `service`: [`FirehoseApi`],
//! the operations (`service` → `model`).

mod model;
mod service;

pub use service::{
    FirehoseApi, MAX_BATCH_BYTES, MAX_BATCH_RECORDS, MAX_RECORD_BYTES, OPERATIONS, TARGET_PREFIX,
};
