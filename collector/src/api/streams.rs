//! Stream life cycle and discovery: CreateStream, DeleteStream, ListStreams,
//! DescribeStream, DescribeStreamSummary, ListShards.

use super::error::{ACCOUNT_ID, ApiError, ErrorKind, Violations};
use super::model::{
    CreateStreamInput, DescribeStreamInput, DescribeStreamOutput, DescribeStreamSummaryOutput,
    Empty, ListShardsInput, ListShardsOutput, ListStreamsInput, ListStreamsOutput, Shard,
    StreamDescriptionOut, StreamDescriptionSummary, StreamInput, StreamModeDetails, StreamSummary,
};
use super::service::{
    Api, check_len, check_name, check_range, created, mode_out, monitoring, present, shard_out,
};
use super::token::{ShardsToken, TokenError};
use crate::store::backend::{DEFAULT_RETENTION_HOURS, MAX_SHARDS_PER_STREAM};
use crate::store::{
    CreateStreamOptions, ShardDescription, StreamDetails, StreamMode, StreamSettings, StreamStore,
};

/// Shards of a stream created ON_DEMAND without a shard count (as Kinesis).
pub const ON_DEMAND_INITIAL_SHARDS: u32 = 4;
/// Most streams one ListStreams page returns.
const MAX_STREAMS_PER_PAGE: usize = 100;
/// Shards per DescribeStream page when no Limit is given.
const DEFAULT_DESCRIBE_LIMIT: usize = 100;
/// Shards per ListShards page when no MaxResults is given.
const DEFAULT_LIST_SHARDS: usize = 1_000;
/// Kinesis's bounds on paging sizes.
const MAX_PAGE: i64 = 10_000;
/// Longest tag key and value.
const MAX_TAG_KEY_CHARS: usize = 128;
const MAX_TAG_VALUE_CHARS: usize = 256;

/// Parses StreamModeDetails, recording a bad value.
pub(super) fn parse_mode(
    v: &mut Violations,
    member: &str,
    details: Option<&StreamModeDetails>,
) -> Option<StreamMode> {
    let d = details?;
    match d.stream_mode.as_deref() {
        Some("PROVISIONED") => Some(StreamMode::Provisioned),
        Some("ON_DEMAND") => Some(StreamMode::OnDemand),
        Some(other) => {
            v.add(
                &format!("{member}.streamMode"),
                &other,
                "Member must satisfy enum value set: [PROVISIONED, ON_DEMAND]",
            );
            None
        }
        None => {
            v.missing(&format!("{member}.streamMode"));
            None
        }
    }
}

/// Checks tag keys and values.
pub(super) fn check_tags<'a>(
    v: &mut Violations,
    member: &str,
    tags: impl Iterator<Item = (&'a String, &'a String)>,
) {
    for (k, val) in tags {
        check_len(v, &format!("{member}.key"), k, 1, MAX_TAG_KEY_CHARS);
        check_len(v, &format!("{member}.value"), val, 0, MAX_TAG_VALUE_CHARS);
    }
}

/// Turns the store's tag limit into Kinesis's answer.
pub(super) fn tag_limit(stream: &str, e: ApiError) -> ApiError {
    if e.kind == ErrorKind::LimitExceeded {
        ApiError::invalid(format!(
            "Failed to add tags to stream {stream} under account {ACCOUNT_ID} because a given stream cannot have more than {} tags associated with it.",
            crate::store::backend::MAX_TAGS_PER_STREAM
        ))
    } else {
        e
    }
}

pub(super) async fn create<S: StreamStore>(
    api: &Api<S>,
    i: CreateStreamInput,
) -> Result<Empty, ApiError> {
    let mut v = Violations::default();
    let name = api.stream_name(&mut v, i.stream_name.as_deref(), None)?;
    check_range(&mut v, "shardCount", i.shard_count, 1, 100_000);
    let mode =
        parse_mode(&mut v, "streamModeDetails", i.stream_mode_details.as_ref()).unwrap_or_default();
    let tags = i.tags.unwrap_or_default();
    check_tags(&mut v, "tags", tags.iter());
    v.finish()?;
    let name = present("streamName", name)?;
    let shard_count = match (i.shard_count, mode) {
        (Some(n), _) => n,
        (None, StreamMode::OnDemand) => i64::from(ON_DEMAND_INITIAL_SHARDS),
        (None, StreamMode::Provisioned) => {
            return Err(ApiError::invalid("ShardCount is required for PROVISIONED streams."));
        }
    };
    if shard_count > i64::from(MAX_SHARDS_PER_STREAM) {
        return Err(ApiError::new(
            ErrorKind::LimitExceeded,
            format!(
                "This request would exceed the shard limit for the account {ACCOUNT_ID} in {}. Limit: {MAX_SHARDS_PER_STREAM} shards per stream. Requested: {shard_count}.",
                api.config.region
            ),
        ));
    }
    if tags.len() > crate::store::backend::MAX_TAGS_PER_STREAM {
        return Err(tag_limit(&name, ApiError::new(ErrorKind::LimitExceeded, "")));
    }
    let settings = StreamSettings {
        mode,
        write_limits: mode == StreamMode::Provisioned && api.config.write_limits,
        tags,
    };
    let options = CreateStreamOptions {
        shard_count: u32::try_from(shard_count).unwrap_or(MAX_SHARDS_PER_STREAM),
        retention_hours: DEFAULT_RETENTION_HOURS,
    };
    api.store.create_stream_with(&name, options, settings).await?;
    Ok(Empty {})
}

pub(super) async fn delete<S: StreamStore>(
    api: &Api<S>,
    i: StreamInput,
) -> Result<Empty, ApiError> {
    let mut v = Violations::default();
    let name = api.stream_name(&mut v, i.stream_name.as_deref(), i.stream_arn.as_deref())?;
    v.finish()?;
    api.store.delete_stream(&present("streamName", name)?).await?;
    Ok(Empty {})
}

pub(super) async fn list<S: StreamStore>(
    api: &Api<S>,
    i: ListStreamsInput,
) -> Result<ListStreamsOutput, ApiError> {
    let mut v = Violations::default();
    check_range(&mut v, "limit", i.limit, 1, MAX_PAGE);
    if let Some(n) = &i.exclusive_start_stream_name {
        check_name(&mut v, "exclusiveStartStreamName", n);
    }
    if let Some(t) = &i.next_token {
        check_len(&mut v, "nextToken", t, 1, 1_048_576);
    }
    v.finish()?;
    let limit = i.limit.map_or(MAX_STREAMS_PER_PAGE, |l| (l as usize).min(MAX_STREAMS_PER_PAGE));
    let after = match &i.next_token {
        Some(t) => Some(
            api.signer
                .open_streams_token(t)
                .map_err(|_| ApiError::invalid(format!("Invalid NextToken: {t}")))?,
        ),
        None => i.exclusive_start_stream_name.clone(),
    };
    let names = api.store.list_streams().await?;
    let mut page: Vec<String> = names
        .into_iter()
        .filter(|n| after.as_deref().is_none_or(|a| n.as_str() > a))
        .take(limit + 1)
        .collect();
    let has_more = page.len() > limit;
    page.truncate(limit);
    let mut summaries = Vec::with_capacity(page.len());
    for name in &page {
        // A stream deleted since the listing is left out of the summaries.
        if let Ok(d) = api.store.stream_details(name).await {
            summaries.push(StreamSummary {
                stream_name: name.clone(),
                stream_arn: api.arn(name),
                stream_status: d.description.status.as_str(),
                stream_mode_details: mode_out(d.settings.mode),
                stream_creation_timestamp: created(d.description.created_ms),
            });
        }
    }
    let next_token = match (has_more, page.last()) {
        (true, Some(last)) => Some(api.signer.streams_token(last, api.now_ms())),
        _ => None,
    };
    Ok(ListStreamsOutput {
        stream_names: page,
        has_more_streams: has_more,
        next_token,
        stream_summaries: summaries,
    })
}

pub(super) async fn describe<S: StreamStore>(
    api: &Api<S>,
    i: DescribeStreamInput,
) -> Result<DescribeStreamOutput, ApiError> {
    let mut v = Violations::default();
    let name = api.stream_name(&mut v, i.stream_name.as_deref(), i.stream_arn.as_deref())?;
    check_range(&mut v, "limit", i.limit, 1, MAX_PAGE);
    if let Some(s) = &i.exclusive_start_shard_id {
        check_name(&mut v, "exclusiveStartShardId", s);
    }
    v.finish()?;
    let name = present("streamName", name)?;
    let d = api.store.stream_details(&name).await?;
    let limit = i.limit.map_or(DEFAULT_DESCRIBE_LIMIT, |l| l as usize);
    // Shard ids are fixed-width, so string order is index order.
    let mut shards: Vec<Shard> = d
        .description
        .shards
        .iter()
        .filter(|s| i.exclusive_start_shard_id.as_deref().is_none_or(|x| s.shard_id.as_str() > x))
        .take(limit + 1)
        .map(shard_out)
        .collect();
    let has_more_shards = shards.len() > limit;
    shards.truncate(limit);
    Ok(DescribeStreamOutput {
        stream_description: StreamDescriptionOut {
            stream_arn: api.arn(&name),
            stream_name: name,
            stream_status: d.description.status.as_str(),
            stream_mode_details: mode_out(d.settings.mode),
            shards,
            has_more_shards,
            retention_period_hours: d.description.retention_hours,
            stream_creation_timestamp: created(d.description.created_ms),
            enhanced_monitoring: monitoring(),
            encryption_type: "NONE",
        },
    })
}

pub(super) async fn summary<S: StreamStore>(
    api: &Api<S>,
    i: StreamInput,
) -> Result<DescribeStreamSummaryOutput, ApiError> {
    let mut v = Violations::default();
    let name = api.stream_name(&mut v, i.stream_name.as_deref(), i.stream_arn.as_deref())?;
    v.finish()?;
    let name = present("streamName", name)?;
    let d = api.store.stream_details(&name).await?;
    Ok(DescribeStreamSummaryOutput {
        stream_description_summary: StreamDescriptionSummary {
            stream_arn: api.arn(&name),
            stream_name: name,
            stream_status: d.description.status.as_str(),
            stream_mode_details: mode_out(d.settings.mode),
            retention_period_hours: d.description.retention_hours,
            stream_creation_timestamp: created(d.description.created_ms),
            enhanced_monitoring: monitoring(),
            encryption_type: "NONE",
            open_shard_count: d.description.open_shards().count(),
            consumer_count: 0,
        },
    })
}

/// ListShards' ShardFilter, parsed.
#[derive(Debug, Clone, Copy)]
enum Filter<'a> {
    AfterShardId(&'a str),
    AtTrimHorizon,
    FromTrimHorizon,
    AtLatest,
    AtTimestamp(u64),
    FromTimestamp(u64),
}

impl Filter<'_> {
    fn keeps(&self, s: &ShardDescription, d: &StreamDetails) -> bool {
        let life = d.lifetimes.get(&s.index);
        let closed_ms = life.and_then(|l| l.closed_ms);
        let created_ms = life.map_or(0, |l| l.created_ms);
        let retained = |id: &Option<String>| {
            id.as_ref().is_some_and(|p| d.description.shards.iter().any(|x| &x.shard_id == p))
        };
        let root = !retained(&s.parent_shard_id) && !retained(&s.adjacent_parent_shard_id);
        match *self {
            Self::AfterShardId(id) => s.shard_id.as_str() > id,
            Self::AtTrimHorizon => root,
            Self::FromTrimHorizon => true,
            Self::AtLatest => s.ending_sequence.is_none(),
            Self::AtTimestamp(t) => (root || created_ms <= t) && closed_ms.is_none_or(|c| c > t),
            Self::FromTimestamp(t) => closed_ms.is_none_or(|c| c > t),
        }
    }
}

pub(super) async fn list_shards<S: StreamStore>(
    api: &Api<S>,
    i: ListShardsInput,
) -> Result<ListShardsOutput, ApiError> {
    let mut v = Violations::default();
    check_range(&mut v, "maxResults", i.max_results, 1, MAX_PAGE);
    if let Some(s) = &i.exclusive_start_shard_id {
        check_name(&mut v, "exclusiveStartShardId", s);
    }
    if let Some(t) = &i.next_token {
        check_len(&mut v, "nextToken", t, 1, 1_048_576);
    }
    let filter = match &i.shard_filter {
        None => None,
        Some(f) => {
            let kind = f.kind.as_deref();
            let filter = match kind {
                Some("AFTER_SHARD_ID") => f.shard_id.as_deref().map(Filter::AfterShardId),
                Some("AT_TRIM_HORIZON") => Some(Filter::AtTrimHorizon),
                Some("FROM_TRIM_HORIZON") => Some(Filter::FromTrimHorizon),
                Some("AT_LATEST") => Some(Filter::AtLatest),
                Some("AT_TIMESTAMP") => f.timestamp.map(|t| Filter::AtTimestamp(t.to_ms())),
                Some("FROM_TIMESTAMP") => f.timestamp.map(|t| Filter::FromTimestamp(t.to_ms())),
                Some(other) => {
                    v.add("shardFilter.type", &other, "Member must satisfy enum value set: [AFTER_SHARD_ID, AT_TRIM_HORIZON, FROM_TRIM_HORIZON, AT_LATEST, AT_TIMESTAMP, FROM_TIMESTAMP]");
                    Some(Filter::FromTrimHorizon)
                }
                None => {
                    v.missing("shardFilter.type");
                    Some(Filter::FromTrimHorizon)
                }
            };
            match (filter, kind) {
                (Some(f), _) => Some(f),
                (None, Some("AFTER_SHARD_ID")) => {
                    return Err(ApiError::invalid(
                        "ShardId must be given with the AFTER_SHARD_ID filter.",
                    ));
                }
                (None, _) => {
                    return Err(ApiError::invalid(
                        "Timestamp must be given with the AT_TIMESTAMP and FROM_TIMESTAMP filters.",
                    ));
                }
            }
        }
    };
    let (name, after, limit, token_stream_id) = match &i.next_token {
        Some(token) => {
            v.finish()?;
            if i.stream_name.is_some() || i.stream_arn.is_some() {
                return Err(ApiError::invalid(
                    "NextToken and StreamName cannot be provided together.",
                ));
            }
            let t = api.signer.open_shards_token(token, api.now_ms()).map_err(|e| match e {
                TokenError::Expired { .. } => ApiError::new(
                    ErrorKind::ExpiredNextToken,
                    "The timestamp of the NextToken has expired; call ListShards without a NextToken.",
                ),
                TokenError::Invalid => ApiError::invalid(format!("Invalid NextToken: {token}")),
            })?;
            let limit = i.max_results.map_or(t.max_results as usize, |m| m as usize);
            (t.stream, Some(crate::store::shard::shard_id(t.after_index)), limit, Some(t.stream_id))
        }
        None => {
            let name =
                api.stream_name(&mut v, i.stream_name.as_deref(), i.stream_arn.as_deref())?;
            v.finish()?;
            let limit = i.max_results.map_or(DEFAULT_LIST_SHARDS, |m| m as usize);
            (present("streamName", name)?, i.exclusive_start_shard_id.clone(), limit, None)
        }
    };
    let d = api.store.stream_details(&name).await?;
    if token_stream_id.is_some_and(|id| id != d.description.id) {
        return Err(ApiError::invalid("NextToken belongs to a stream since deleted."));
    }
    let shards: Vec<&ShardDescription> = d
        .description
        .shards
        .iter()
        .filter(|s| after.as_deref().is_none_or(|a| s.shard_id.as_str() > a))
        .filter(|s| filter.is_none_or(|f| f.keeps(s, &d)))
        .take(limit + 1)
        .collect();
    let more = shards.len() > limit;
    let page: Vec<&ShardDescription> = shards.into_iter().take(limit).collect();
    let next_token = match (more, page.last()) {
        (true, Some(last)) => Some(api.signer.shards_token(&ShardsToken {
            stream: name.clone(),
            stream_id: d.description.id,
            after_index: last.index,
            max_results: u32::try_from(limit).unwrap_or(u32::MAX),
            issued_ms: api.now_ms(),
        })),
        _ => None,
    };
    Ok(ListShardsOutput { shards: page.into_iter().map(shard_out).collect(), next_token })
}
