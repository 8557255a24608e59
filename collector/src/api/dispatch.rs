//! The Kinesis operations by name: [`call`] takes an operation name (the
//! `X-Amz-Target` suffix), the request's encoding and body, decodes the
//! request, runs the operation (`streams`, `records`, `admin`) on an [`Api`]
//! and encodes the answer, or returns an [`ApiError`]. It knows nothing of
//! HTTP, so tests and other front ends drive it directly.
//!
//! Imports go one way: `server` → `dispatch` → the operations → `service`.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codec::Encoding;
use super::error::{ApiError, ErrorKind};
use super::service::Api;
use super::{admin, records, streams};
use crate::store::StreamStore;

/// Every operation, by its `X-Amz-Target` suffix.
pub const OPERATIONS: &[&str] = &[
    "AddTagsToStream",
    "CreateStream",
    "DecreaseStreamRetentionPeriod",
    "DeleteStream",
    "DescribeStream",
    "DescribeStreamSummary",
    "GetRecords",
    "GetShardIterator",
    "IncreaseStreamRetentionPeriod",
    "ListShards",
    "ListStreams",
    "ListTagsForStream",
    "MergeShards",
    "PutRecord",
    "PutRecords",
    "RemoveTagsFromStream",
    "SplitShard",
    "UpdateShardCount",
    "UpdateStreamMode",
];

/// Runs `operation` on a request body, answering in the same encoding.
///
/// # Errors
/// The Kinesis error to send back.
pub async fn call<S: StreamStore>(
    api: &Api<S>,
    operation: &str,
    encoding: Encoding,
    body: &[u8],
) -> Result<Bytes, ApiError> {
    async fn run<T, O, F>(encoding: Encoding, body: &[u8], f: F) -> Result<Bytes, ApiError>
    where
        T: DeserializeOwned,
        O: Serialize,
        F: AsyncFnOnce(T) -> Result<O, ApiError>,
    {
        let input: T = encoding.decode(body)?;
        let output = f(input).await?;
        encoding.encode(&output).map(Bytes::from)
    }
    match operation {
        "AddTagsToStream" => run(encoding, body, async |i| admin::add_tags(api, i).await).await,
        "CreateStream" => run(encoding, body, async |i| streams::create(api, i).await).await,
        "DecreaseStreamRetentionPeriod" => {
            run(encoding, body, async |i| admin::retention(api, i, false).await).await
        }
        "DeleteStream" => run(encoding, body, async |i| streams::delete(api, i).await).await,
        "DescribeStream" => run(encoding, body, async |i| streams::describe(api, i).await).await,
        "DescribeStreamSummary" => {
            run(encoding, body, async |i| streams::summary(api, i).await).await
        }
        "GetRecords" => run(encoding, body, async |i| records::get(api, i).await).await,
        "GetShardIterator" => run(encoding, body, async |i| records::iterator(api, i).await).await,
        "IncreaseStreamRetentionPeriod" => {
            run(encoding, body, async |i| admin::retention(api, i, true).await).await
        }
        "ListShards" => run(encoding, body, async |i| streams::list_shards(api, i).await).await,
        "ListStreams" => run(encoding, body, async |i| streams::list(api, i).await).await,
        "ListTagsForStream" => run(encoding, body, async |i| admin::list_tags(api, i).await).await,
        "MergeShards" => run(encoding, body, async |i| admin::merge(api, i).await).await,
        "PutRecord" => run(encoding, body, async |i| records::put_one(api, i).await).await,
        "PutRecords" => run(encoding, body, async |i| records::put_many(api, i).await).await,
        "RemoveTagsFromStream" => {
            run(encoding, body, async |i| admin::remove_tags(api, i).await).await
        }
        "SplitShard" => run(encoding, body, async |i| admin::split(api, i).await).await,
        "UpdateShardCount" => {
            run(encoding, body, async |i| admin::update_shard_count(api, i).await).await
        }
        "UpdateStreamMode" => run(encoding, body, async |i| admin::update_mode(api, i).await).await,
        other => Err(ApiError::new(
            ErrorKind::UnknownOperation,
            format!("Operation {other} is not supported"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::api::{ApiConfig, TokenSigner};
    use crate::store::{LogStore, ManualClock, StoreConfig};

    async fn call_json(
        api: &Api<LogStore>,
        op: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, ApiError> {
        let bytes =
            call(api, op, Encoding::Json, &serde_json::to_vec(&body).expect("json")).await?;
        Ok(serde_json::from_slice(&bytes).expect("answer is JSON"))
    }

    #[tokio::test]
    async fn iterators_and_list_shards_tokens_expire_after_five_minutes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::open(dir.path(), StoreConfig::default()).await.expect("open");
        let clock = ManualClock::new(1_000_000);
        let api = Api::new(store.clone(), TokenSigner::ephemeral(), ApiConfig::default())
            .with_clock(Arc::new(clock.clone()));
        call_json(&api, "CreateStream", serde_json::json!({"StreamName": "s", "ShardCount": 2}))
            .await
            .expect("create");
        let it = call_json(
            &api,
            "GetShardIterator",
            serde_json::json!({"StreamName": "s", "ShardId": "shardId-000000000000", "ShardIteratorType": "LATEST"}),
        )
        .await
        .expect("iterator")["ShardIterator"]
            .clone();
        let page =
            call_json(&api, "ListShards", serde_json::json!({"StreamName": "s", "MaxResults": 1}))
                .await
                .expect("ListShards");
        let token = page["NextToken"].clone();
        // Exactly five minutes later both still work.
        clock.advance(300_000);
        let r = call_json(&api, "GetRecords", serde_json::json!({"ShardIterator": it}))
            .await
            .expect("valid");
        assert!(r["NextShardIterator"].is_string());
        call_json(&api, "ListShards", serde_json::json!({"NextToken": token}))
            .await
            .expect("valid token");
        // One millisecond more and they have expired, by name.
        clock.advance(1);
        let e = call_json(&api, "GetRecords", serde_json::json!({"ShardIterator": it}))
            .await
            .expect_err("expired");
        assert_eq!(e.kind, ErrorKind::ExpiredIterator, "{e}");
        let e = call_json(&api, "ListShards", serde_json::json!({"NextToken": token}))
            .await
            .expect_err("expired");
        assert_eq!(e.kind, ErrorKind::ExpiredNextToken, "{e}");
        // The NextShardIterator of a fresh read is good for five more minutes.
        let fresh = r["NextShardIterator"].clone();
        let e = call_json(&api, "GetRecords", serde_json::json!({"ShardIterator": fresh})).await;
        assert!(e.is_ok(), "{e:?}");
        store.close().await;
    }
}
