//! `weir-collector streams create|list|describe|delete|split|merge|resize`.

use std::io::Write;

use anyhow::Context;
use serde_json::{Value, json};

use super::DEFAULT_ENDPOINT;
use super::client::{Client, str_field};
use super::time::format_ms;

/// `streams` arguments.
#[derive(clap::Args)]
pub struct StreamsArgs {
    /// The collector's Kinesis API.
    #[arg(long, global = true, default_value = DEFAULT_ENDPOINT)]
    endpoint: String,
    #[command(subcommand)]
    command: StreamsCommand,
}

#[derive(clap::Subcommand)]
enum StreamsCommand {
    /// Create a stream.
    Create {
        /// Stream name (1–128 of a-z A-Z 0-9 _ . -).
        name: String,
        /// Number of shards.
        #[arg(long, default_value_t = 1)]
        shards: u32,
        /// Create it ON_DEMAND instead of PROVISIONED.
        #[arg(long)]
        on_demand: bool,
    },
    /// List streams with their status and mode.
    List,
    /// Show a stream and its shards (ranges, lineage, sequence ranges).
    Describe {
        /// Stream name.
        name: String,
    },
    /// Delete a stream and all its records.
    Delete {
        /// Stream name.
        name: String,
    },
    /// Split an open shard in two.
    Split {
        /// Stream name.
        name: String,
        /// Shard to split, e.g. shardId-000000000000.
        shard: String,
        /// First hash key of the upper child [default: the middle of the shard's range].
        #[arg(long)]
        at: Option<String>,
    },
    /// Merge two adjacent open shards.
    Merge {
        /// Stream name.
        name: String,
        /// One shard.
        shard: String,
        /// The shard adjacent to it.
        adjacent: String,
    },
    /// Reshard to COUNT open shards of even ranges (UNIFORM_SCALING).
    Resize {
        /// Stream name.
        name: String,
        /// Target open shard count (between half and double the current one).
        count: u32,
    },
}

/// Runs a `streams` command.
pub async fn run(args: StreamsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.endpoint)?;
    let mut out = std::io::stdout().lock();
    match args.command {
        StreamsCommand::Create { name, shards, on_demand } => {
            let mode = if on_demand { "ON_DEMAND" } else { "PROVISIONED" };
            client
                .call(
                    "CreateStream",
                    json!({"StreamName": name, "ShardCount": shards, "StreamModeDetails": {"StreamMode": mode}}),
                )
                .await?;
            writeln!(out, "created {name} ({shards} shards, {mode})")?;
        }
        StreamsCommand::List => {
            let mut token: Option<String> = None;
            writeln!(out, "{:<40} {:<9} {:<12} CREATED", "NAME", "STATUS", "MODE")?;
            loop {
                let body = match &token {
                    Some(t) => json!({"NextToken": t}),
                    None => json!({}),
                };
                let page = client.call("ListStreams", body).await?;
                for s in page["StreamSummaries"].as_array().into_iter().flatten() {
                    let created = s["StreamCreationTimestamp"].as_f64().unwrap_or(0.0);
                    writeln!(
                        out,
                        "{:<40} {:<9} {:<12} {}",
                        str_field(s, "StreamName")?,
                        str_field(s, "StreamStatus")?,
                        s["StreamModeDetails"]["StreamMode"].as_str().unwrap_or("-"),
                        format_ms((created * 1000.0) as u64)
                    )?;
                }
                match page["NextToken"].as_str() {
                    Some(t) => token = Some(t.to_owned()),
                    None => break,
                }
            }
        }
        StreamsCommand::Describe { name } => {
            let s = client.call("DescribeStreamSummary", json!({"StreamName": name})).await?;
            let s = &s["StreamDescriptionSummary"];
            writeln!(out, "stream     {}", str_field(s, "StreamName")?)?;
            writeln!(out, "arn        {}", str_field(s, "StreamARN")?)?;
            writeln!(out, "status     {}", str_field(s, "StreamStatus")?)?;
            writeln!(
                out,
                "mode       {}",
                s["StreamModeDetails"]["StreamMode"].as_str().unwrap_or("-")
            )?;
            writeln!(out, "retention  {} h", s["RetentionPeriodHours"])?;
            writeln!(out, "open       {} shards", s["OpenShardCount"])?;
            writeln!(out)?;
            writeln!(
                out,
                "{:<22} {:<7} {:<22} {:<40} HASH RANGE",
                "SHARD", "STATE", "PARENTS", "SEQUENCE RANGE"
            )?;
            for shard in list_shards(&client, &name).await? {
                let parents: Vec<&str> = ["ParentShardId", "AdjacentParentShardId"]
                    .iter()
                    .filter_map(|k| shard[*k].as_str())
                    .collect();
                let end = shard["SequenceNumberRange"]["EndingSequenceNumber"].as_str();
                writeln!(
                    out,
                    "{:<22} {:<7} {:<22} {}..{} {}..{}",
                    str_field(&shard, "ShardId")?,
                    if end.is_some() { "closed" } else { "open" },
                    if parents.is_empty() { "-".to_owned() } else { parents.join(",") },
                    shard["SequenceNumberRange"]["StartingSequenceNumber"].as_str().unwrap_or("?"),
                    end.unwrap_or(""),
                    shard["HashKeyRange"]["StartingHashKey"].as_str().unwrap_or("?"),
                    shard["HashKeyRange"]["EndingHashKey"].as_str().unwrap_or("?"),
                )?;
            }
        }
        StreamsCommand::Delete { name } => {
            client.call("DeleteStream", json!({"StreamName": name})).await?;
            writeln!(out, "deleted {name}")?;
        }
        StreamsCommand::Split { name, shard, at } => {
            let at = match at {
                Some(a) => a,
                None => middle_of(&client, &name, &shard).await?,
            };
            client
                .call(
                    "SplitShard",
                    json!({"StreamName": name, "ShardToSplit": shard, "NewStartingHashKey": at}),
                )
                .await?;
            writeln!(out, "split {shard} of {name} at {at}")?;
        }
        StreamsCommand::Merge { name, shard, adjacent } => {
            client
                .call(
                    "MergeShards",
                    json!({"StreamName": name, "ShardToMerge": shard, "AdjacentShardToMerge": adjacent}),
                )
                .await?;
            writeln!(out, "merged {shard} and {adjacent} of {name}")?;
        }
        StreamsCommand::Resize { name, count } => {
            let r = client
                .call(
                    "UpdateShardCount",
                    json!({"StreamName": name, "TargetShardCount": count, "ScalingType": "UNIFORM_SCALING"}),
                )
                .await?;
            writeln!(
                out,
                "resized {name} from {} to {} open shards",
                r["CurrentShardCount"], r["TargetShardCount"]
            )?;
        }
    }
    Ok(())
}

/// Every shard of a stream, following ListShards pages.
pub async fn list_shards(client: &Client, stream: &str) -> anyhow::Result<Vec<Value>> {
    let mut shards = Vec::new();
    let mut body = json!({"StreamName": stream});
    loop {
        let page = client.call("ListShards", body).await?;
        shards.extend(page["Shards"].as_array().into_iter().flatten().cloned());
        match page["NextToken"].as_str() {
            Some(t) => body = json!({"NextToken": t}),
            None => return Ok(shards),
        }
    }
}

/// The hash key in the middle of a shard's range (where a split makes two
/// even halves).
async fn middle_of(client: &Client, stream: &str, shard: &str) -> anyhow::Result<String> {
    let shards = list_shards(client, stream).await?;
    let s = shards
        .iter()
        .find(|s| s["ShardId"].as_str() == Some(shard))
        .with_context(|| format!("no shard {shard} in stream {stream}"))?;
    let key = |k: &str| -> anyhow::Result<u128> {
        str_field(&s["HashKeyRange"], k)?.parse::<u128>().with_context(|| format!("{k} of {shard}"))
    };
    let (start, end) = (key("StartingHashKey")?, key("EndingHashKey")?);
    Ok((start + (end - start) / 2 + 1).to_string())
}
