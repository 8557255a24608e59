//! The shapes of Firehose requests and responses, member names as AWS spells
//! them (JSON 1.1). As on the Kinesis side (`api::model`), request members
//! are optional here and checked by the operations; unknown members are
//! ignored, except at CreateDeliveryStream, where the destinations Weir does
//! not serve are kept to be refused by name.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::codec::Blob;
use crate::api::error::ACCOUNT_ID;
use crate::firehose::DeliverySpec;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Tag {
    pub(super) key: Option<String>,
    pub(super) value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct KinesisSource {
    #[serde(rename = "KinesisStreamARN")]
    pub(super) kinesis_stream_arn: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(super) struct BufferingIn {
    #[serde(rename = "SizeInMBs")]
    pub(super) size_in_mbs: Option<u32>,
    pub(super) interval_in_seconds: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RetryIn {
    pub(super) duration_in_seconds: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(super) struct DynamicPartitioningIn {
    pub(super) enabled: Option<bool>,
    pub(super) retry_options: Option<RetryIn>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ProcessorParameterIn {
    pub(super) parameter_name: Option<String>,
    pub(super) parameter_value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ProcessorIn {
    pub(super) r#type: Option<String>,
    pub(super) parameters: Option<Vec<ProcessorParameterIn>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ProcessingIn {
    pub(super) enabled: Option<bool>,
    pub(super) processors: Option<Vec<ProcessorIn>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct S3In {
    #[serde(rename = "BucketARN")]
    pub(super) bucket_arn: Option<String>,
    pub(super) prefix: Option<String>,
    pub(super) error_output_prefix: Option<String>,
    pub(super) buffering_hints: Option<BufferingIn>,
    pub(super) compression_format: Option<String>,
    pub(super) dynamic_partitioning_configuration: Option<DynamicPartitioningIn>,
    pub(super) processing_configuration: Option<ProcessingIn>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct EndpointIn {
    pub(super) url: Option<String>,
    pub(super) access_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RequestIn {
    pub(super) content_encoding: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct HttpIn {
    pub(super) endpoint_configuration: Option<EndpointIn>,
    pub(super) buffering_hints: Option<BufferingIn>,
    pub(super) request_configuration: Option<RequestIn>,
    pub(super) retry_options: Option<RetryIn>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct CreateInput {
    pub(super) delivery_stream_name: Option<String>,
    pub(super) delivery_stream_type: Option<String>,
    pub(super) kinesis_stream_source_configuration: Option<KinesisSource>,
    pub(super) extended_s3_destination_configuration: Option<S3In>,
    pub(super) s3_destination_configuration: Option<S3In>,
    pub(super) http_endpoint_destination_configuration: Option<HttpIn>,
    pub(super) tags: Option<Vec<Tag>>,
    #[serde(flatten)]
    pub(super) other: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct NameInput {
    pub(super) delivery_stream_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ListInput {
    pub(super) limit: Option<i64>,
    pub(super) delivery_stream_type: Option<String>,
    pub(super) exclusive_start_delivery_stream_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RecordIn {
    pub(super) data: Option<Blob>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct PutInput {
    pub(super) delivery_stream_name: Option<String>,
    pub(super) record: Option<RecordIn>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct PutBatchInput {
    pub(super) delivery_stream_name: Option<String>,
    pub(super) records: Option<Vec<RecordIn>>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(super) struct PutResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) record_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) error_message: Option<String>,
}

/// A delivery stream's destination as DescribeDeliveryStream shows it.
pub(super) fn destination_description(spec: &DeliverySpec, from_config: bool) -> serde_json::Value {
    use crate::firehose::manager::DestinationSpec;
    let buffering = serde_json::json!({
        "SizeInMBs": spec.size_mib,
        "IntervalInSeconds": spec.interval_secs,
    });
    let retry = serde_json::json!({ "DurationInSeconds": spec.retry_duration_secs });
    let mut d = serde_json::json!({ "DestinationId": "destinationId-000000000001" });
    match &spec.destination {
        DestinationSpec::Directory => {
            d["WeirDirectoryDestinationDescription"] = serde_json::json!({
                "Directory": spec.directory.display().to_string(),
                "DeclaredInConfig": from_config,
                "BufferingHints": buffering,
                "CompressionFormat": spec.compression,
                "Prefix": spec.prefix,
                "ErrorOutputPrefix": spec.error_prefix,
                "RetryOptions": retry,
            });
        }
        DestinationSpec::S3(s3) => {
            let query = spec
                .partition_keys
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{k}:{}",
                        if v.starts_with(['.', '/']) { v.clone() } else { format!(".{v}") }
                    )
                })
                .collect::<Vec<_>>()
                .join(",");
            let mut processors = Vec::new();
            if !spec.partition_keys.is_empty() {
                processors.push(serde_json::json!({
                    "Type": "MetadataExtraction",
                    "Parameters": [
                        { "ParameterName": "MetadataExtractionQuery", "ParameterValue": format!("{{{query}}}") },
                        { "ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.6" },
                    ],
                }));
            }
            if spec.newline_delimited {
                processors.push(serde_json::json!({ "Type": "AppendDelimiterToRecord" }));
            }
            d["ExtendedS3DestinationDescription"] = serde_json::json!({
                "RoleARN": format!("arn:aws:iam::{ACCOUNT_ID}:role/weir"),
                "BucketARN": format!("arn:aws:s3:::{}", s3.bucket),
                "Prefix": spec.prefix,
                "ErrorOutputPrefix": spec.error_prefix,
                "BufferingHints": buffering,
                "CompressionFormat": if spec.compression == "gzip" { "GZIP" } else { "UNCOMPRESSED" },
                "EncryptionConfiguration": { "NoEncryptionConfig": "NoEncryption" },
                "DynamicPartitioningConfiguration": {
                    "Enabled": !spec.partition_keys.is_empty(),
                    "RetryOptions": retry,
                },
                "ProcessingConfiguration": {
                    "Enabled": !processors.is_empty(),
                    "Processors": processors,
                },
                "WeirDeclaredInConfig": from_config,
            });
        }
        DestinationSpec::Http(h) => {
            d["HttpEndpointDestinationDescription"] = serde_json::json!({
                "EndpointConfiguration": { "Url": h.url, "Name": spec.name },
                "BufferingHints": buffering,
                "RequestConfiguration": {
                    "ContentEncoding": if h.gzip { "GZIP" } else { "NONE" },
                },
                "RetryOptions": retry,
                "S3BackupMode": "FailedDataOnly",
                "WeirBackupDirectory": spec
                    .backup_directory
                    .as_ref()
                    .unwrap_or(&spec.directory)
                    .display()
                    .to_string(),
                "WeirDeclaredInConfig": from_config,
            });
        }
    }
    d
}
