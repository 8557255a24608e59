//! Child process for the crash test: appends to a stream with fsync `always`
//! from many concurrent tasks and prints one line per acknowledged record,
//!
//! `ACK <shard id> <sequence number> <partition key> <data>`
//!
//! until it is killed or its time bound passes.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use weir_collector::store::{
    CreateStreamOptions, LogStore, NewRecord, StoreConfig, StoreError, StreamStore,
};

/// Concurrent appenders.
const TASKS: usize = 32;
/// The process stops by itself after this long if nobody kills it.
const TIME_BOUND: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().context("usage: weir-crash-appender DATA_DIR ROUND")?;
    let round = args.next().context("usage: weir-crash-appender DATA_DIR ROUND")?;
    let store = LogStore::open(&dir, StoreConfig::default()).await.context("opening the store")?;
    match store
        .create_stream("crash", CreateStreamOptions { shard_count: 4, ..Default::default() })
        .await
    {
        Ok(_) | Err(StoreError::StreamExists(_)) => {}
        Err(e) => return Err(e).context("creating the stream"),
    }
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let deadline = Instant::now() + TIME_BOUND;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        let out = out.clone();
        let round = round.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                let n = 1 + (i as usize * 7 + t) % 10;
                let records: Vec<NewRecord> = (0..n)
                    .map(|k| {
                        let pad = "x".repeat((i as usize * 13 + k * 31 + t) % 300);
                        NewRecord {
                            partition_key: format!("r{round}-t{t}"),
                            data: format!("r{round}-t{t}-i{i}-k{k}-{pad}").into(),
                            explicit_hash_key: None,
                            producer_timestamp_ms: None,
                        }
                    })
                    .collect();
                let results = store.append("crash", records.clone()).await?;
                let mut text = String::new();
                for (r, res) in records.iter().zip(results) {
                    let a = res?;
                    let data = String::from_utf8_lossy(&r.data);
                    text.push_str(&format!(
                        "ACK {} {} {} {}\n",
                        a.shard_id, a.sequence, r.partition_key, data
                    ));
                }
                if let Ok(mut o) = out.lock() {
                    o.write_all(text.as_bytes())?;
                    o.flush()?;
                }
                i += 1;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    store.close().await;
    Ok(())
}
