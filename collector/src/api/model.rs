//! The shapes of Kinesis requests and responses, member names as AWS spells
//! them. Every request member is optional here: which are required, and
//! their constraints, are checked by the operations so that a missing member
//! is a `ValidationException` naming it (as AWS answers), not a
//! `SerializationException`. Unknown members are ignored, as AWS does.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::codec::{Blob, Timestamp};

/// Integers are read as `i64` so that a negative or zero value is a
/// constraint violation with its value in the message.
pub type Int = i64;

// ----- requests -------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct StreamModeDetails {
    pub stream_mode: Option<String>,
}

/// CreateStream.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct CreateStreamInput {
    pub stream_name: Option<String>,
    pub shard_count: Option<Int>,
    pub stream_mode_details: Option<StreamModeDetails>,
    pub tags: Option<BTreeMap<String, String>>,
}

/// Operations that name only a stream (DeleteStream, DescribeStreamSummary).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct StreamInput {
    pub stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
}

/// ListStreams.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct ListStreamsInput {
    pub limit: Option<Int>,
    pub exclusive_start_stream_name: Option<String>,
    pub next_token: Option<String>,
}

/// DescribeStream.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct DescribeStreamInput {
    pub stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
    pub limit: Option<Int>,
    pub exclusive_start_shard_id: Option<String>,
}

/// ListShards' ShardFilter.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct ShardFilter {
    #[serde(rename = "Type")]
    pub kind: Option<String>,
    pub shard_id: Option<String>,
    pub timestamp: Option<Timestamp>,
}

/// ListShards.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct ListShardsInput {
    pub stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
    pub next_token: Option<String>,
    pub exclusive_start_shard_id: Option<String>,
    pub max_results: Option<Int>,
    pub stream_creation_timestamp: Option<Timestamp>,
    pub shard_filter: Option<ShardFilter>,
}

/// PutRecord.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct PutRecordInput {
    pub stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
    pub data: Option<Blob>,
    pub partition_key: Option<String>,
    pub explicit_hash_key: Option<String>,
    pub sequence_number_for_ordering: Option<String>,
}

/// One entry of PutRecords.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct PutRecordsRequestEntry {
    pub data: Option<Blob>,
    pub partition_key: Option<String>,
    pub explicit_hash_key: Option<String>,
}

/// PutRecords.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct PutRecordsInput {
    pub stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
    pub records: Option<Vec<PutRecordsRequestEntry>>,
}

/// GetShardIterator.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct GetShardIteratorInput {
    pub stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
    pub shard_id: Option<String>,
    pub shard_iterator_type: Option<String>,
    pub starting_sequence_number: Option<String>,
    pub timestamp: Option<Timestamp>,
}

/// GetRecords.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct GetRecordsInput {
    pub shard_iterator: Option<String>,
    pub limit: Option<Int>,
}

/// SplitShard.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct SplitShardInput {
    pub stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
    pub shard_to_split: Option<String>,
    pub new_starting_hash_key: Option<String>,
}

/// MergeShards.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct MergeShardsInput {
    pub stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
    pub shard_to_merge: Option<String>,
    pub adjacent_shard_to_merge: Option<String>,
}

/// UpdateShardCount.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct UpdateShardCountInput {
    pub stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
    pub target_shard_count: Option<Int>,
    pub scaling_type: Option<String>,
}

/// Increase/DecreaseStreamRetentionPeriod.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct RetentionInput {
    pub stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
    pub retention_period_hours: Option<Int>,
}

/// AddTagsToStream.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct AddTagsInput {
    pub stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
    pub tags: Option<BTreeMap<String, String>>,
}

/// RemoveTagsFromStream.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct RemoveTagsInput {
    pub stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
    pub tag_keys: Option<Vec<String>>,
}

/// ListTagsForStream.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct ListTagsInput {
    pub stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
    pub exclusive_start_tag_key: Option<String>,
    pub limit: Option<Int>,
}

/// UpdateStreamMode.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct UpdateStreamModeInput {
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
    pub stream_mode_details: Option<StreamModeDetails>,
}

// ----- responses ------------------------------------------------------------

/// An operation that answers `{}`.
#[derive(Debug, Default, Serialize)]
pub struct Empty {}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct StreamModeOut {
    pub stream_mode: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct HashKeyRange {
    pub starting_hash_key: String,
    pub ending_hash_key: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct SequenceNumberRange {
    pub starting_sequence_number: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ending_sequence_number: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct Shard {
    pub shard_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_shard_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adjacent_parent_shard_id: Option<String>,
    pub hash_key_range: HashKeyRange,
    pub sequence_number_range: SequenceNumberRange,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct EnhancedMetrics {
    pub shard_level_metrics: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct StreamDescriptionOut {
    pub stream_name: String,
    #[serde(rename = "StreamARN")]
    pub stream_arn: String,
    pub stream_status: &'static str,
    pub stream_mode_details: StreamModeOut,
    pub shards: Vec<Shard>,
    pub has_more_shards: bool,
    pub retention_period_hours: u32,
    pub stream_creation_timestamp: Timestamp,
    pub enhanced_monitoring: Vec<EnhancedMetrics>,
    pub encryption_type: &'static str,
}

/// DescribeStream's answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct DescribeStreamOutput {
    pub stream_description: StreamDescriptionOut,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct StreamDescriptionSummary {
    pub stream_name: String,
    #[serde(rename = "StreamARN")]
    pub stream_arn: String,
    pub stream_status: &'static str,
    pub stream_mode_details: StreamModeOut,
    pub retention_period_hours: u32,
    pub stream_creation_timestamp: Timestamp,
    pub enhanced_monitoring: Vec<EnhancedMetrics>,
    pub encryption_type: &'static str,
    pub open_shard_count: usize,
    pub consumer_count: u32,
}

/// DescribeStreamSummary's answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct DescribeStreamSummaryOutput {
    pub stream_description_summary: StreamDescriptionSummary,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct StreamSummary {
    pub stream_name: String,
    #[serde(rename = "StreamARN")]
    pub stream_arn: String,
    pub stream_status: &'static str,
    pub stream_mode_details: StreamModeOut,
    pub stream_creation_timestamp: Timestamp,
}

/// ListStreams' answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct ListStreamsOutput {
    pub stream_names: Vec<String>,
    pub has_more_streams: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
    pub stream_summaries: Vec<StreamSummary>,
}

/// ListShards' answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct ListShardsOutput {
    pub shards: Vec<Shard>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// PutRecord's answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct PutRecordOutput {
    pub shard_id: String,
    pub sequence_number: String,
    pub encryption_type: &'static str,
}

/// A sequence number written straight into the answer (no `String` per
/// record on the PutRecords path).
#[derive(Debug, Clone, Copy)]
pub struct Seq(pub crate::store::SequenceNumber);

impl Serialize for Seq {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// One entry of PutRecords' answer: a sequence number or an error.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct PutRecordsResultEntry {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence_number: Option<Seq>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}

/// PutRecords' answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct PutRecordsOutput {
    pub failed_record_count: usize,
    pub records: Vec<PutRecordsResultEntry>,
    pub encryption_type: &'static str,
}

/// GetShardIterator's answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct GetShardIteratorOutput {
    pub shard_iterator: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct RecordOut {
    pub sequence_number: String,
    pub approximate_arrival_timestamp: Timestamp,
    pub data: Blob,
    pub partition_key: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct ChildShard {
    pub shard_id: String,
    pub parent_shards: Vec<String>,
    pub hash_key_range: HashKeyRange,
}

/// GetRecords' answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct GetRecordsOutput {
    pub records: Vec<RecordOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_shard_iterator: Option<String>,
    pub millis_behind_latest: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub child_shards: Option<Vec<ChildShard>>,
}

/// UpdateShardCount's answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct UpdateShardCountOutput {
    pub stream_name: String,
    #[serde(rename = "StreamARN")]
    pub stream_arn: String,
    pub current_shard_count: usize,
    pub target_shard_count: usize,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// ListTagsForStream's answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct ListTagsOutput {
    pub tags: Vec<Tag>,
    pub has_more_tags: bool,
}

/// The body of an error answer.
#[derive(Debug, Serialize)]
#[allow(missing_docs)]
pub struct ErrorBody<'a> {
    #[serde(rename = "__type")]
    pub kind: &'static str,
    pub message: &'a str,
}
