//! `weir-collector tail STREAM [--from ...] [--follow]`: prints a stream's
//! records, parents before children so each key's order is kept.
//!
//! Each shard is read with GetRecords until it is caught up (or, for a
//! closed shard, read to its end, when its children become readable once all
//! their parents are done). With `--follow` open shards keep being polled.
//! While replaying, a progress line on stderr shows records read and how far
//! behind the newest record the reader is.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::DEFAULT_ENDPOINT;
use super::client::{Client, KinesisError, str_field};
use super::streams::list_shards;
use super::time::{format_ms, parse_time};

/// Pause between polls of a caught-up shard with `--follow` (Kinesis allows
/// five GetRecords per second per shard).
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// Records asked for per GetRecords call.
const READ_LIMIT: u32 = 10_000;

/// `tail` arguments.
#[derive(clap::Args)]
pub struct TailArgs {
    /// Stream to read.
    stream: String,
    /// Where to start: trim-horizon (default), latest, at-seq N, at-time T
    /// (T: epoch seconds or 2024-05-01T12:00:00Z).
    #[arg(long, num_args = 1..=2, value_names = ["POSITION", "VALUE"])]
    from: Vec<String>,
    /// Keep waiting for new records.
    #[arg(long)]
    follow: bool,
    /// Print data as hex even when it is text.
    #[arg(long)]
    hex: bool,
    /// The collector's Kinesis API.
    #[arg(long, default_value = DEFAULT_ENDPOINT)]
    endpoint: String,
}

#[derive(Debug, Clone)]
enum From {
    TrimHorizon,
    Latest,
    AtSeq(String),
    AtTime(f64),
}

fn parse_from(args: &[String]) -> anyhow::Result<From> {
    match args {
        [] => Ok(From::TrimHorizon),
        [p] if p == "trim-horizon" => Ok(From::TrimHorizon),
        [p] if p == "latest" => Ok(From::Latest),
        [p, n] if p == "at-seq" => Ok(From::AtSeq(n.clone())),
        [p, t] if p == "at-time" => Ok(From::AtTime(parse_time(t)?)),
        _ => bail!("--from takes trim-horizon, latest, at-seq N or at-time T, not {args:?}"),
    }
}

struct ShardInfo {
    parents: Vec<String>,
    open: bool,
    start_seq: u128,
    end_seq: Option<u128>,
}

/// Runs `tail`.
pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    let from = parse_from(&args.from)?;
    let client = Client::new(&args.endpoint)?;
    let listing = list_shards(&client, &args.stream).await?;
    let mut shards: BTreeMap<String, ShardInfo> = BTreeMap::new();
    for s in &listing {
        let seq =
            |k: &str| s["SequenceNumberRange"][k].as_str().and_then(|x| x.parse::<u128>().ok());
        shards.insert(
            str_field(s, "ShardId")?.to_owned(),
            ShardInfo {
                parents: ["ParentShardId", "AdjacentParentShardId"]
                    .iter()
                    .filter_map(|k| s[*k].as_str().map(str::to_owned))
                    .collect(),
                open: seq("EndingSequenceNumber").is_none(),
                start_seq: seq("StartingSequenceNumber").unwrap_or(0),
                end_seq: seq("EndingSequenceNumber"),
            },
        );
    }
    // The shards to start with, and how.
    let (start, kind): (Vec<String>, Value) = match &from {
        From::TrimHorizon => (roots(&shards), json!({"ShardIteratorType": "TRIM_HORIZON"})),
        From::AtTime(t) => {
            (roots(&shards), json!({"ShardIteratorType": "AT_TIMESTAMP", "Timestamp": t}))
        }
        From::Latest => (
            shards.iter().filter(|(_, s)| s.open).map(|(id, _)| id.clone()).collect(),
            json!({"ShardIteratorType": "LATEST"}),
        ),
        From::AtSeq(n) => {
            let v: u128 = n.parse().with_context(|| format!("sequence number {n:?}"))?;
            // The shard whose range holds N with the latest start (ranges
            // of open shards have no end, so an older open shard's range
            // also holds a newer shard's numbers).
            let holder = shards
                .iter()
                .filter(|(_, s)| s.start_seq <= v && s.end_seq.is_none_or(|e| v <= e))
                .max_by_key(|(_, s)| s.start_seq)
                .map(|(id, _)| id.clone())
                .with_context(|| {
                    format!("no shard of {} holds sequence number {n}", args.stream)
                })?;
            (
                vec![holder],
                json!({"ShardIteratorType": "AT_SEQUENCE_NUMBER", "StartingSequenceNumber": n}),
            )
        }
    };
    let mut reader = Reader {
        client,
        stream: args.stream.clone(),
        hex: args.hex,
        progress: progress_bar(),
        records: 0,
        done: BTreeSet::new(),
    };
    // Active shards with their iterators; children start once every parent
    // is done, from the same time with --from at-time, else from their
    // first record.
    let child_kind = match &from {
        From::AtTime(_) => kind.clone(),
        _ => json!({"ShardIteratorType": "TRIM_HORIZON"}),
    };
    let mut active: Vec<(String, String)> = Vec::new();
    for id in start {
        let it = reader.iterator(&id, &kind).await?;
        active.push((id, it));
    }
    let mut waiting: BTreeSet<String> = BTreeSet::new();
    while !active.is_empty() {
        let mut next = Vec::with_capacity(active.len());
        let mut all_caught_up = true;
        for (id, it) in active {
            match reader.read(&id, &it).await? {
                Step::More(it) => {
                    all_caught_up = false;
                    next.push((id, it));
                }
                Step::CaughtUp(it) => {
                    if args.follow {
                        next.push((id, it));
                    }
                }
                Step::Ended(children) => {
                    reader.done.insert(id);
                    waiting.extend(children);
                }
            }
        }
        // Start the children whose parents are all done.
        let ready: Vec<String> = waiting
            .iter()
            .filter(|c| {
                shards.get(*c).is_none_or(|s| {
                    s.parents.iter().all(|p| reader.done.contains(p) || !shards.contains_key(p))
                })
            })
            .cloned()
            .collect();
        for c in ready {
            waiting.remove(&c);
            let it = reader.iterator(&c, &child_kind).await?;
            next.push((c, it));
            all_caught_up = false;
        }
        active = next;
        if all_caught_up && !active.is_empty() {
            reader.progress.finish_and_clear();
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }
    reader.progress.finish_and_clear();
    Ok(())
}

/// Shards none of whose parents is still listed (the oldest retained).
fn roots(shards: &BTreeMap<String, ShardInfo>) -> Vec<String> {
    shards
        .iter()
        .filter(|(_, s)| s.parents.iter().all(|p| !shards.contains_key(p)))
        .map(|(id, _)| id.clone())
        .collect()
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

enum Step {
    /// Records remain behind this iterator.
    More(String),
    /// Caught up with the shard's newest record.
    CaughtUp(String),
    /// A closed shard read to its end; its children.
    Ended(Vec<String>),
}

struct Reader {
    client: Client,
    stream: String,
    hex: bool,
    progress: ProgressBar,
    records: u64,
    done: BTreeSet<String>,
}

impl Reader {
    async fn iterator(&self, shard: &str, kind: &Value) -> anyhow::Result<String> {
        let mut body = kind.clone();
        body["StreamName"] = json!(self.stream);
        body["ShardId"] = json!(shard);
        let r = self.client.call("GetShardIterator", body).await?;
        Ok(str_field(&r, "ShardIterator")?.to_owned())
    }

    async fn read(&mut self, shard: &str, iterator: &str) -> anyhow::Result<Step> {
        let r = match self
            .client
            .call("GetRecords", json!({"ShardIterator": iterator, "Limit": READ_LIMIT}))
            .await
        {
            Ok(r) => r,
            Err(e) => match e.downcast_ref::<KinesisError>() {
                Some(k) if k.kind == "ExpiredIteratorException" => {
                    bail!(
                        "iterator of {shard} expired (the terminal was paused for more than 5 minutes): {k}"
                    )
                }
                _ => return Err(e),
            },
        };
        let records = r["Records"].as_array().map_or(&[][..], Vec::as_slice);
        let mut out = std::io::stdout().lock();
        for rec in records {
            let data =
                BASE64.decode(str_field(rec, "Data")?).context("record data is not base64")?;
            let arrival = rec["ApproximateArrivalTimestamp"].as_f64().unwrap_or(0.0);
            writeln!(
                out,
                "{}\t{}\t{}\t{}",
                str_field(rec, "PartitionKey")?,
                str_field(rec, "SequenceNumber")?,
                format_ms((arrival * 1000.0) as u64),
                render(&data, self.hex)
            )?;
        }
        out.flush()?;
        self.records += records.len() as u64;
        let behind = r["MillisBehindLatest"].as_u64().unwrap_or(0);
        self.progress.set_message(format!(
            "{} records read; {shard} is {:.1} s behind its newest record",
            self.records,
            behind as f64 / 1000.0
        ));
        match r["NextShardIterator"].as_str() {
            None => {
                let children = r["ChildShards"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["ShardId"].as_str().map(str::to_owned))
                    .collect();
                Ok(Step::Ended(children))
            }
            Some(next) if records.is_empty() && behind == 0 => Ok(Step::CaughtUp(next.to_owned())),
            Some(next) => Ok(Step::More(next.to_owned())),
        }
    }
}

/// Data as text when it is printable UTF-8, else as hex.
fn render(data: &[u8], hex: bool) -> String {
    if !hex
        && let Ok(s) = std::str::from_utf8(data)
        && !s.chars().any(|c| c.is_control() && c != '\t')
    {
        return s.to_owned();
    }
    data.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_or_hex() {
        assert_eq!(render(b"hello\tworld", false), "hello\tworld");
        assert_eq!(render(b"hi", true), "6869");
        assert_eq!(render(&[0, 255], false), "00ff");
        assert_eq!(render(b"a\nb", false), "610a62");
    }

    #[test]
    fn parses_from() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert!(matches!(parse_from(&[]), Ok(From::TrimHorizon)));
        assert!(matches!(parse_from(&s(&["latest"])), Ok(From::Latest)));
        assert!(matches!(parse_from(&s(&["at-seq", "12"])), Ok(From::AtSeq(n)) if n == "12"));
        assert!(matches!(parse_from(&s(&["at-time", "10"])), Ok(From::AtTime(t)) if t == 10.0));
        assert!(parse_from(&s(&["sideways"])).is_err());
    }
}
