//! Changing a stream: SplitShard, MergeShards, UpdateShardCount,
//! Increase/DecreaseStreamRetentionPeriod, tags, UpdateStreamMode.

use super::error::{ApiError, ErrorKind, Violations};
use super::model::{
    AddTagsInput, Empty, ListTagsInput, ListTagsOutput, MergeShardsInput, RemoveTagsInput,
    RetentionInput, SplitShardInput, Tag, UpdateShardCountInput, UpdateShardCountOutput,
    UpdateStreamModeInput,
};
use super::service::{Api, check_len, check_name, check_range, parse_hash_key, present};
use super::streams::{check_tags, parse_mode, tag_limit};
use crate::store::backend::{MAX_RETENTION_HOURS, MAX_SHARDS_PER_STREAM, MIN_RETENTION_HOURS};
use crate::store::{SettingsChange, StreamMode, StreamStore};

/// Most tags one AddTagsToStream or RemoveTagsFromStream call carries.
const MAX_TAGS_PER_CALL: usize = 50;
/// Most tags one ListTagsForStream page returns.
const MAX_TAGS_PER_PAGE: i64 = 50;

pub(super) async fn split<S: StreamStore>(
    api: &Api<S>,
    i: SplitShardInput,
) -> Result<Empty, ApiError> {
    let mut v = Violations::default();
    let name = api.stream_name(&mut v, i.stream_name.as_deref(), i.stream_arn.as_deref())?;
    match &i.shard_to_split {
        Some(s) => {
            check_name(&mut v, "shardToSplit", s);
        }
        None => v.missing("shardToSplit"),
    }
    let key = match &i.new_starting_hash_key {
        Some(k) => parse_hash_key(&mut v, "newStartingHashKey", k, "NewStartingHashKey")?,
        None => {
            v.missing("newStartingHashKey");
            None
        }
    };
    v.finish()?;
    let name = present("streamName", name)?;
    let shard = present("shardToSplit", i.shard_to_split)?;
    let key = present("newStartingHashKey", key)?;
    api.store.split_shard(&name, &shard, key).await.map_err(|e| match e {
        // The store says why the key does not split the shard; Kinesis
        // answers that as an invalid argument naming the key.
        crate::store::StoreError::InvalidArgument(m) => ApiError::invalid(format!(
            "NewStartingHashKey {key} used in SplitShard() on shard {shard} in stream {name} is not valid: {m}"
        )),
        e => e.into(),
    })?;
    Ok(Empty {})
}

pub(super) async fn merge<S: StreamStore>(
    api: &Api<S>,
    i: MergeShardsInput,
) -> Result<Empty, ApiError> {
    let mut v = Violations::default();
    let name = api.stream_name(&mut v, i.stream_name.as_deref(), i.stream_arn.as_deref())?;
    for (member, s) in
        [("shardToMerge", &i.shard_to_merge), ("adjacentShardToMerge", &i.adjacent_shard_to_merge)]
    {
        match s {
            Some(s) => {
                check_name(&mut v, member, s);
            }
            None => v.missing(member),
        }
    }
    v.finish()?;
    let name = present("streamName", name)?;
    let a = present("shardToMerge", i.shard_to_merge)?;
    let b = present("adjacentShardToMerge", i.adjacent_shard_to_merge)?;
    api.store.merge_shards(&name, &a, &b).await?;
    Ok(Empty {})
}

pub(super) async fn update_shard_count<S: StreamStore>(
    api: &Api<S>,
    i: UpdateShardCountInput,
) -> Result<UpdateShardCountOutput, ApiError> {
    let mut v = Violations::default();
    let name = api.stream_name(&mut v, i.stream_name.as_deref(), i.stream_arn.as_deref())?;
    match i.target_shard_count {
        Some(_) => check_range(&mut v, "targetShardCount", i.target_shard_count, 1, 100_000),
        None => v.missing("targetShardCount"),
    }
    match i.scaling_type.as_deref() {
        Some("UNIFORM_SCALING") => {}
        Some(other) => {
            v.add("scalingType", &other, "Member must satisfy enum value set: [UNIFORM_SCALING]")
        }
        None => v.missing("scalingType"),
    }
    v.finish()?;
    let name = present("streamName", name)?;
    let target = present("targetShardCount", i.target_shard_count)?;
    let current = api.store.describe_stream(&name).await?.open_shards().count();
    // Kinesis's limits on one UpdateShardCount: at most double, at least half.
    let current_i = current as i64;
    if target > current_i * 2 {
        return Err(ApiError::new(
            ErrorKind::LimitExceeded,
            format!(
                "UpdateShardCount cannot scale up stream {name} above double its current open shard count ({current}); asked for {target}."
            ),
        ));
    }
    if target * 2 < current_i {
        return Err(ApiError::new(
            ErrorKind::LimitExceeded,
            format!(
                "UpdateShardCount cannot scale down stream {name} below half its current open shard count ({current}); asked for {target}."
            ),
        ));
    }
    if target > i64::from(MAX_SHARDS_PER_STREAM) {
        return Err(ApiError::new(
            ErrorKind::LimitExceeded,
            format!(
                "A stream has at most {MAX_SHARDS_PER_STREAM} open shards; asked for {target}."
            ),
        ));
    }
    let target_u32 = u32::try_from(target).unwrap_or(MAX_SHARDS_PER_STREAM);
    api.store.update_shard_count(&name, target_u32).await?;
    Ok(UpdateShardCountOutput {
        stream_arn: api.arn(&name),
        stream_name: name,
        current_shard_count: current,
        target_shard_count: target_u32 as usize,
    })
}

pub(super) async fn retention<S: StreamStore>(
    api: &Api<S>,
    i: RetentionInput,
    increase: bool,
) -> Result<Empty, ApiError> {
    let mut v = Violations::default();
    let name = api.stream_name(&mut v, i.stream_name.as_deref(), i.stream_arn.as_deref())?;
    match i.retention_period_hours {
        Some(_) => {
            check_range(&mut v, "retentionPeriodHours", i.retention_period_hours, 1, 1_000_000)
        }
        None => v.missing("retentionPeriodHours"),
    }
    v.finish()?;
    let name = present("streamName", name)?;
    let hours = present("retentionPeriodHours", i.retention_period_hours)?;
    if hours < i64::from(MIN_RETENTION_HOURS) {
        return Err(ApiError::invalid(format!(
            "Minimum allowed retention period is {MIN_RETENTION_HOURS} hours. Requested retention period ({hours} hours) is too short."
        )));
    }
    if hours > i64::from(MAX_RETENTION_HOURS) {
        return Err(ApiError::invalid(format!(
            "Maximum allowed retention period is {MAX_RETENTION_HOURS} hours. Requested retention period ({hours} hours) is too long."
        )));
    }
    let current = i64::from(api.store.describe_stream(&name).await?.retention_hours);
    if increase && hours < current {
        return Err(ApiError::invalid(format!(
            "Requested retention period ({hours} hours) for stream {name} can not be shorter than existing retention period ({current} hours). Use DecreaseRetentionPeriod API."
        )));
    }
    if !increase && hours > current {
        return Err(ApiError::invalid(format!(
            "Requested retention period ({hours} hours) for stream {name} can not be longer than existing retention period ({current} hours). Use IncreaseRetentionPeriod API."
        )));
    }
    let hours = u32::try_from(hours).unwrap_or(MAX_RETENTION_HOURS);
    api.store.set_retention(&name, hours).await?;
    Ok(Empty {})
}

pub(super) async fn add_tags<S: StreamStore>(
    api: &Api<S>,
    i: AddTagsInput,
) -> Result<Empty, ApiError> {
    let mut v = Violations::default();
    let name = api.stream_name(&mut v, i.stream_name.as_deref(), i.stream_arn.as_deref())?;
    match &i.tags {
        None => v.missing("tags"),
        Some(t) if t.is_empty() || t.len() > MAX_TAGS_PER_CALL => v.add(
            "tags",
            &format!("<{} tags>", t.len()),
            &format!("Member must have length between 1 and {MAX_TAGS_PER_CALL}"),
        ),
        Some(t) => check_tags(&mut v, "tags", t.iter()),
    }
    v.finish()?;
    let name = present("streamName", name)?;
    let tags = present("tags", i.tags)?.into_iter().collect();
    api.store
        .change_stream_settings(&name, vec![SettingsChange::AddTags(tags)])
        .await
        .map_err(|e| tag_limit(&name, e.into()))?;
    Ok(Empty {})
}

pub(super) async fn remove_tags<S: StreamStore>(
    api: &Api<S>,
    i: RemoveTagsInput,
) -> Result<Empty, ApiError> {
    let mut v = Violations::default();
    let name = api.stream_name(&mut v, i.stream_name.as_deref(), i.stream_arn.as_deref())?;
    match &i.tag_keys {
        None => v.missing("tagKeys"),
        Some(k) if k.is_empty() || k.len() > MAX_TAGS_PER_CALL => v.add(
            "tagKeys",
            &format!("<{} keys>", k.len()),
            &format!("Member must have length between 1 and {MAX_TAGS_PER_CALL}"),
        ),
        Some(k) => {
            for key in k {
                check_len(&mut v, "tagKeys.member", key, 1, 128);
            }
        }
    }
    v.finish()?;
    let name = present("streamName", name)?;
    let keys = present("tagKeys", i.tag_keys)?;
    api.store.change_stream_settings(&name, vec![SettingsChange::RemoveTags(keys)]).await?;
    Ok(Empty {})
}

pub(super) async fn list_tags<S: StreamStore>(
    api: &Api<S>,
    i: ListTagsInput,
) -> Result<ListTagsOutput, ApiError> {
    let mut v = Violations::default();
    let name = api.stream_name(&mut v, i.stream_name.as_deref(), i.stream_arn.as_deref())?;
    check_range(&mut v, "limit", i.limit, 1, MAX_TAGS_PER_PAGE);
    if let Some(k) = &i.exclusive_start_tag_key {
        check_len(&mut v, "exclusiveStartTagKey", k, 1, 128);
    }
    v.finish()?;
    let name = present("streamName", name)?;
    let limit = i.limit.unwrap_or(MAX_TAGS_PER_PAGE) as usize;
    let settings = api.store.stream_details(&name).await?.settings;
    let mut tags: Vec<Tag> = settings
        .tags
        .into_iter()
        .filter(|(k, _)| i.exclusive_start_tag_key.as_deref().is_none_or(|x| k.as_str() > x))
        .take(limit + 1)
        .map(|(key, value)| Tag { key, value })
        .collect();
    let has_more_tags = tags.len() > limit;
    tags.truncate(limit);
    Ok(ListTagsOutput { tags, has_more_tags })
}

pub(super) async fn update_mode<S: StreamStore>(
    api: &Api<S>,
    i: UpdateStreamModeInput,
) -> Result<Empty, ApiError> {
    let mut v = Violations::default();
    let name = api.stream_name(&mut v, None, i.stream_arn.as_deref().or(Some("")))?;
    let mode = match &i.stream_mode_details {
        Some(d) => parse_mode(&mut v, "streamModeDetails", Some(d)),
        None => {
            v.missing("streamModeDetails");
            None
        }
    };
    v.finish()?;
    let name = present("streamARN", name)?;
    let mode = present("streamModeDetails", mode)?;
    let mut changes = vec![SettingsChange::Mode(mode)];
    if mode == StreamMode::OnDemand {
        changes.push(SettingsChange::WriteLimits(false));
    } else {
        changes.push(SettingsChange::WriteLimits(api.config.write_limits));
    }
    api.store.change_stream_settings(&name, changes).await?;
    Ok(Empty {})
}
