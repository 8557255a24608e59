//! The Firehose API as a service over a [`Manager`]: operation dispatch
//! ([`FirehoseApi::call`]), one method per operation, and what they share
//! (delivery stream names and ARNs, destination configurations into a
//! [`DeliverySpec`], manager errors as API errors). Like `api::service`, it
//! knows nothing of HTTP.

use std::sync::Arc;

use bytes::Bytes;

use super::model::{
    BufferingIn, CreateInput, HttpIn, ListInput, NameInput, PutBatchInput, PutInput, PutResult,
    S3In, destination_description,
};
use crate::api::codec::{Blob, Encoding, Timestamp};
use crate::api::error::{ACCOUNT_ID, ApiError, ErrorKind, Violations};
use crate::firehose::config::{DEFAULT_BUFFER_INTERVAL_SECS, DEFAULT_BUFFER_SIZE_MIB};
use crate::firehose::delivery::DISK_FULL;
use crate::firehose::{DeliverySpec, Manager, ManagerError, Source, default_directory};
use crate::store::NewRecord;
use crate::store::StreamStore;

/// The `X-Amz-Target` prefix of Firehose.
pub const TARGET_PREFIX: &str = "Firehose_20150804.";
/// Every Firehose operation served.
pub const OPERATIONS: &[&str] = &[
    "CreateDeliveryStream",
    "DeleteDeliveryStream",
    "DescribeDeliveryStream",
    "ListDeliveryStreams",
    "PutRecord",
    "PutRecordBatch",
];
/// Most records of one PutRecordBatch.
pub const MAX_BATCH_RECORDS: usize = 500;
/// Most bytes of data in one PutRecordBatch.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Most bytes of one record (1,000 KiB).
pub const MAX_RECORD_BYTES: usize = 1_000 * 1024;
/// Partition key of direct puts in the internal stream (one shard).
const PARTITION_KEY: &str = "firehose";

/// The Firehose API over a manager.
#[derive(Debug, Clone)]
pub struct FirehoseApi<S> {
    manager: Arc<Manager<S>>,
    region: String,
}

fn manager_error(e: ManagerError) -> ApiError {
    let kind = match &e {
        ManagerError::NotFound(_) => ErrorKind::ResourceNotFound,
        ManagerError::InUse(_) | ManagerError::FromConfig(_) => ErrorKind::ResourceInUse,
        ManagerError::NotDirectPut(_) | ManagerError::Invalid(_) => ErrorKind::InvalidArgument,
        ManagerError::Store(s) => return ApiError::from(s.clone()),
        ManagerError::State(_) => ErrorKind::InternalFailure,
    };
    ApiError::new(kind, e.to_string())
}

fn check_name(v: &mut Violations, name: Option<&String>) -> String {
    match name {
        None => {
            v.missing("deliveryStreamName");
            String::new()
        }
        Some(n) => {
            let ok = !n.is_empty()
                && n.chars().count() <= 64
                && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !ok {
                v.add(
                    "deliveryStreamName",
                    n,
                    "Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+ and have length between 1 and 64",
                );
            }
            n.clone()
        }
    }
}

/// Buffering hints of a destination configuration into a spec.
fn apply_buffering(spec: &mut DeliverySpec, b: Option<BufferingIn>) {
    let b = b.unwrap_or_default();
    if let Some(m) = b.size_in_mbs {
        spec.size_mib = m;
    }
    if let Some(s) = b.interval_in_seconds {
        spec.interval_secs = s;
    }
}

/// `{name:.path, other:.a.b}` (jq's object construction, the simple form)
/// into partition keys.
fn parse_metadata_query(q: &str) -> Result<Vec<(String, String)>, ApiError> {
    let bad = || {
        ApiError::invalid(format!(
            "MetadataExtractionQuery {q:?}: only the form {{name:.path, ...}} is supported"
        ))
    };
    let inner = q.trim().strip_prefix('{').and_then(|r| r.strip_suffix('}')).ok_or_else(bad)?;
    let mut keys = Vec::new();
    for pair in inner.split(',') {
        let (name, path) = pair.split_once(':').ok_or_else(bad)?;
        let (name, path) = (name.trim().trim_matches('"'), path.trim());
        if name.is_empty() || !path.starts_with('.') {
            return Err(bad());
        }
        keys.push((name.to_owned(), path.to_owned()));
    }
    Ok(keys)
}

/// An HTTP endpoint destination configuration into a spec.
fn apply_http(spec: &mut DeliverySpec, h: HttpIn) -> Result<(), ApiError> {
    use crate::firehose::http::{DEFAULT_TIMEOUT_SECS, HttpSettings};
    use crate::firehose::manager::DestinationSpec;
    let endpoint = h.endpoint_configuration.ok_or_else(|| {
        ApiError::invalid("HttpEndpointDestinationConfiguration needs EndpointConfiguration")
    })?;
    let url = endpoint.url.ok_or_else(|| ApiError::invalid("EndpointConfiguration needs Url"))?;
    let gzip = match h.request_configuration.and_then(|r| r.content_encoding).as_deref() {
        None | Some("NONE") => false,
        Some("GZIP") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "ContentEncoding {other:?} is not NONE or GZIP"
            )));
        }
    };
    apply_buffering(spec, h.buffering_hints);
    if let Some(d) = h.retry_options.and_then(|r| r.duration_in_seconds) {
        spec.retry_duration_secs = d;
    }
    spec.destination = DestinationSpec::Http(HttpSettings {
        url,
        access_key: endpoint.access_key,
        gzip,
        timeout_secs: DEFAULT_TIMEOUT_SECS,
    });
    Ok(())
}

impl<S: StreamStore + Clone> FirehoseApi<S> {
    /// An S3 destination configuration into a spec.
    fn apply_s3(&self, spec: &mut DeliverySpec, s3: S3In) -> Result<(), ApiError> {
        use crate::firehose::manager::DestinationSpec;
        let arn = s3.bucket_arn.ok_or_else(|| ApiError::invalid("BucketARN is required"))?;
        let bucket =
            arn.strip_prefix("arn:aws:s3:::").filter(|b| !b.is_empty()).ok_or_else(|| {
                ApiError::invalid(format!("{arn:?} is not a bucket ARN (arn:aws:s3:::BUCKET)"))
            })?;
        spec.destination = DestinationSpec::S3(self.manager.s3_settings(bucket));
        spec.prefix = s3.prefix.unwrap_or_default();
        spec.error_prefix = s3.error_output_prefix.unwrap_or_default();
        apply_buffering(spec, s3.buffering_hints);
        spec.compression = match s3.compression_format.as_deref() {
            None | Some("UNCOMPRESSED") => "none".into(),
            Some("GZIP") => "gzip".into(),
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "CompressionFormat {other:?} is not available: UNCOMPRESSED or GZIP"
                )));
            }
        };
        let partitioning = s3.dynamic_partitioning_configuration.unwrap_or_default();
        if let Some(d) = partitioning.retry_options.and_then(|r| r.duration_in_seconds) {
            spec.retry_duration_secs = d;
        }
        let processing = s3.processing_configuration.unwrap_or_default();
        if processing.enabled.unwrap_or(false) {
            for p in processing.processors.unwrap_or_default() {
                match p.r#type.as_deref() {
                    Some("MetadataExtraction") => {
                        let query = p
                            .parameters
                            .unwrap_or_default()
                            .into_iter()
                            .find(|x| {
                                x.parameter_name.as_deref() == Some("MetadataExtractionQuery")
                            })
                            .and_then(|x| x.parameter_value)
                            .ok_or_else(|| {
                                ApiError::invalid(
                                    "MetadataExtraction needs MetadataExtractionQuery",
                                )
                            })?;
                        spec.partition_keys = parse_metadata_query(&query)?;
                    }
                    Some("AppendDelimiterToRecord") => spec.newline_delimited = true,
                    other => {
                        return Err(ApiError::invalid(format!(
                            "processor {:?} is not available: MetadataExtraction or \
                             AppendDelimiterToRecord",
                            other.unwrap_or_default()
                        )));
                    }
                }
            }
        }
        if partitioning.enabled.unwrap_or(false) && spec.partition_keys.is_empty() {
            return Err(ApiError::invalid(
                "dynamic partitioning needs a MetadataExtraction processor",
            ));
        }
        Ok(())
    }

    /// The API over `manager`, naming `region` in ARNs.
    pub fn new(manager: Arc<Manager<S>>, region: impl Into<String>) -> Self {
        Self { manager, region: region.into() }
    }

    fn arn(&self, name: &str) -> String {
        format!("arn:aws:firehose:{}:{ACCOUNT_ID}:deliverystream/{name}", self.region)
    }

    fn stream_arn(&self, name: &str) -> String {
        format!("arn:aws:kinesis:{}:{ACCOUNT_ID}:stream/{name}", self.region)
    }

    /// Runs `operation` on a request body.
    ///
    /// # Errors
    /// The Firehose error to send back.
    pub async fn call(
        &self,
        operation: &str,
        encoding: Encoding,
        body: &[u8],
    ) -> Result<Bytes, ApiError> {
        let out = match operation {
            "CreateDeliveryStream" => self.create(encoding.decode(body)?).await?,
            "DeleteDeliveryStream" => self.delete(encoding.decode(body)?).await?,
            "DescribeDeliveryStream" => self.describe(encoding.decode(body)?).await?,
            "ListDeliveryStreams" => self.list(encoding.decode(body)?).await?,
            "PutRecord" => self.put(encoding.decode(body)?).await?,
            "PutRecordBatch" => self.put_batch(encoding.decode(body)?).await?,
            _ => {
                return Err(ApiError::new(
                    ErrorKind::UnknownOperation,
                    format!("X-Amz-Target {operation:?} names no Firehose_20150804 operation"),
                ));
            }
        };
        encoding.encode(&out).map(Bytes::from)
    }

    async fn create(&self, i: CreateInput) -> Result<serde_json::Value, ApiError> {
        let mut v = Violations::default();
        let name = check_name(&mut v, i.delivery_stream_name.as_ref());
        v.finish()?;
        if let Some(key) = i.other.keys().find(|k| k.ends_with("DestinationConfiguration")) {
            return Err(ApiError::invalid(format!(
                "{key} is not available: Weir delivers to a directory (no destination \
                 configuration), an S3 bucket (ExtendedS3DestinationConfiguration) or an HTTP \
                 endpoint (HttpEndpointDestinationConfiguration)"
            )));
        }
        let destinations = usize::from(i.extended_s3_destination_configuration.is_some())
            + usize::from(i.s3_destination_configuration.is_some())
            + usize::from(i.http_endpoint_destination_configuration.is_some());
        if destinations > 1 {
            return Err(ApiError::invalid("give one destination configuration"));
        }
        let source = match i.delivery_stream_type.as_deref().unwrap_or("DirectPut") {
            "DirectPut" => Source::DirectPut,
            "KinesisStreamAsSource" => {
                let arn = i
                    .kinesis_stream_source_configuration
                    .and_then(|k| k.kinesis_stream_arn)
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "KinesisStreamAsSource needs KinesisStreamSourceConfiguration.KinesisStreamARN",
                        )
                    })?;
                let stream = arn
                    .strip_prefix("arn:aws:kinesis:")
                    .and_then(|rest| rest.split_once(":stream/"))
                    .map(|(_, s)| s.to_owned())
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        ApiError::invalid(format!(
                            "{arn:?} is not the ARN of a Weir stream (arn:aws:kinesis:REGION:ACCOUNT:stream/NAME)"
                        ))
                    })?;
                Source::Stream(stream)
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "DeliveryStreamType {other:?} is not supported: DirectPut or KinesisStreamAsSource"
                )));
            }
        };
        let mut spec = DeliverySpec {
            directory: default_directory(self.manager.data_dir(), &name),
            name: name.clone(),
            source,
            size_mib: DEFAULT_BUFFER_SIZE_MIB,
            interval_secs: DEFAULT_BUFFER_INTERVAL_SECS,
            newline_delimited: false,
            compression: "none".into(),
            prefix: String::new(),
            error_prefix: String::new(),
            retry_duration_secs: crate::firehose::config::DEFAULT_RETRY_DURATION_SECS,
            partition_keys: Vec::new(),
            backup_directory: None,
            min_free_bytes: None,
            destination: crate::firehose::manager::DestinationSpec::Directory,
            parquet: None,
            created_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        if let Some(s3) = i.extended_s3_destination_configuration.or(i.s3_destination_configuration)
        {
            self.apply_s3(&mut spec, s3)?;
        }
        if let Some(h) = i.http_endpoint_destination_configuration {
            apply_http(&mut spec, h)?;
        }
        for tag in i.tags.unwrap_or_default() {
            let (Some(key), value) = (tag.key, tag.value.unwrap_or_default()) else { continue };
            let number = |what: &str| {
                value.parse::<u32>().map_err(|_| {
                    ApiError::invalid(format!("tag {what}: {value:?} is not a whole number"))
                })
            };
            match key.as_str() {
                "weir:BufferSizeMiB" => spec.size_mib = number(&key)?,
                "weir:BufferIntervalSeconds" => spec.interval_secs = number(&key)?,
                "weir:Compression" => spec.compression = value.clone(),
                "weir:NewlineDelimited" => spec.newline_delimited = value == "true",
                "weir:Prefix" => spec.prefix = value.clone(),
                "weir:MinFreeBytes" => {
                    let bytes = value.parse::<u64>().map_err(|_| {
                        ApiError::invalid(format!("tag {key}: {value:?} is not a whole number"))
                    })?;
                    spec.min_free_bytes = Some(bytes);
                }
                _ => {}
            }
        }
        self.manager.create(spec).await.map_err(manager_error)?;
        Ok(serde_json::json!({ "DeliveryStreamARN": self.arn(&name) }))
    }

    async fn delete(&self, i: NameInput) -> Result<serde_json::Value, ApiError> {
        let mut v = Violations::default();
        let name = check_name(&mut v, i.delivery_stream_name.as_ref());
        v.finish()?;
        self.manager.delete(&name).await.map_err(manager_error)?;
        Ok(serde_json::json!({}))
    }

    async fn describe(&self, i: NameInput) -> Result<serde_json::Value, ApiError> {
        let mut v = Violations::default();
        let name = check_name(&mut v, i.delivery_stream_name.as_ref());
        v.finish()?;
        let (spec, from_config) = self
            .manager
            .describe(&name)
            .await
            .ok_or_else(|| manager_error(ManagerError::NotFound(name.clone())))?;
        let created = Timestamp::from_ms(spec.created_ms);
        let mut d = serde_json::json!({
            "DeliveryStreamName": spec.name,
            "DeliveryStreamARN": self.arn(&spec.name),
            "DeliveryStreamStatus": "ACTIVE",
            "DeliveryStreamType": match spec.source {
                Source::DirectPut => "DirectPut",
                Source::Stream(_) => "KinesisStreamAsSource",
            },
            "VersionId": "1",
            "CreateTimestamp": created.0,
            "HasMoreDestinations": false,
            "Destinations": [destination_description(&spec, from_config)],
        });
        if let Some(f) = self.manager.failure(&name).await {
            // Firehose's member for a failing delivery stream; the type is
            // one the SDKs know (the reason is in the details).
            let what = if f.reason == DISK_FULL {
                "delivery paused: the destination's disk is full"
            } else {
                "delivery failing"
            };
            d["FailureDescription"] = serde_json::json!({
                "Type": "UNKNOWN_ERROR",
                "Details": format!(
                    "{what} (reason {}): the batch of {} failed {} attempts since {} ms after \
                     the epoch ({} shard(s) waiting); last error: {}",
                    f.reason, f.shard_id, f.attempts, f.since_ms, f.failing_shards, f.message
                ),
            });
        }
        if let Source::Stream(s) = &spec.source {
            d["Source"] = serde_json::json!({
                "KinesisStreamSourceDescription": {
                    "KinesisStreamARN": self.stream_arn(s),
                    "DeliveryStartTimestamp": created.0,
                }
            });
        }
        Ok(serde_json::json!({ "DeliveryStreamDescription": d }))
    }

    async fn list(&self, i: ListInput) -> Result<serde_json::Value, ApiError> {
        let mut v = Violations::default();
        let limit = i.limit.unwrap_or(10);
        if !(1..=10_000).contains(&limit) {
            v.add("limit", &limit, "Member must have value between 1 and 10000");
        }
        v.finish()?;
        let wanted = i.delivery_stream_type.as_deref();
        let names: Vec<String> = self
            .manager
            .list()
            .await
            .into_iter()
            .filter(|(_, source)| match wanted {
                Some("DirectPut") => *source == Source::DirectPut,
                Some("KinesisStreamAsSource") => *source != Source::DirectPut,
                _ => true,
            })
            .map(|(n, _)| n)
            .filter(|n| i.exclusive_start_delivery_stream_name.as_ref().is_none_or(|s| n > s))
            .collect();
        let limit = usize::try_from(limit).unwrap_or(10);
        let more = names.len() > limit;
        let names: Vec<String> = names.into_iter().take(limit).collect();
        Ok(serde_json::json!({ "DeliveryStreamNames": names, "HasMoreDeliveryStreams": more }))
    }

    async fn put(&self, i: PutInput) -> Result<serde_json::Value, ApiError> {
        let mut v = Violations::default();
        let name = check_name(&mut v, i.delivery_stream_name.as_ref());
        let data = match i.record.and_then(|r| r.data) {
            None => {
                v.missing("record.data");
                Bytes::new()
            }
            Some(Blob(d)) => {
                if d.len() > MAX_RECORD_BYTES {
                    v.add(
                        "record.data",
                        &format!("{} bytes", d.len()),
                        "Member must have length less than or equal to 1024000",
                    );
                }
                d
            }
        };
        v.finish()?;
        let mut results = self.append(&name, vec![data]).await?;
        match results.pop() {
            Some(PutResult { record_id: Some(id), .. }) => {
                Ok(serde_json::json!({ "RecordId": id, "Encrypted": false }))
            }
            Some(PutResult { error_message, .. }) => Err(ApiError::new(
                ErrorKind::InternalFailure,
                error_message.unwrap_or_else(|| "the record was not stored".into()),
            )),
            None => Err(ApiError::new(ErrorKind::InternalFailure, "the record was not stored")),
        }
    }

    async fn put_batch(&self, i: PutBatchInput) -> Result<serde_json::Value, ApiError> {
        let mut v = Violations::default();
        let name = check_name(&mut v, i.delivery_stream_name.as_ref());
        let records = match i.records {
            None => {
                v.missing("records");
                Vec::new()
            }
            Some(r) => {
                if r.is_empty() || r.len() > MAX_BATCH_RECORDS {
                    v.add(
                        "records",
                        &format!("{} records", r.len()),
                        "Member must have length less than or equal to 500 and greater than or equal to 1",
                    );
                }
                r
            }
        };
        let mut data = Vec::with_capacity(records.len());
        let mut total = 0usize;
        for (n, r) in records.into_iter().enumerate() {
            match r.data {
                None => v.missing(&format!("records.{}.member.data", n + 1)),
                Some(Blob(d)) => {
                    if d.len() > MAX_RECORD_BYTES {
                        v.add(
                            &format!("records.{}.member.data", n + 1),
                            &format!("{} bytes", d.len()),
                            "Member must have length less than or equal to 1024000",
                        );
                    }
                    total += d.len();
                    data.push(d);
                }
            }
        }
        v.finish()?;
        if total > MAX_BATCH_BYTES {
            return Err(ApiError::invalid(format!(
                "Records total {total} bytes, more than the {MAX_BATCH_BYTES} bytes allowed per PutRecordBatch"
            )));
        }
        let results = self.append(&name, data).await?;
        let failed = results.iter().filter(|r| r.record_id.is_none()).count();
        Ok(serde_json::json!({
            "FailedPutCount": failed,
            "Encrypted": false,
            "RequestResponses": results,
        }))
    }

    async fn append(&self, name: &str, data: Vec<Bytes>) -> Result<Vec<PutResult>, ApiError> {
        let records = data
            .into_iter()
            .map(|data| NewRecord {
                partition_key: PARTITION_KEY.into(),
                data,
                explicit_hash_key: None,
                producer_timestamp_ms: None,
            })
            .collect();
        let results = self.manager.put(name, records).await.map_err(manager_error)?;
        Ok(results
            .into_iter()
            .map(|r| match r {
                Ok(a) => {
                    PutResult { record_id: Some(a.sequence.to_string()), ..PutResult::default() }
                }
                Err(e) => {
                    let api = ApiError::from(e);
                    PutResult {
                        record_id: None,
                        error_code: Some(if api.kind == ErrorKind::InternalFailure {
                            "ServiceUnavailableException".into()
                        } else {
                            api.kind.name().into()
                        }),
                        error_message: Some(api.message),
                    }
                }
            })
            .collect())
    }
}
