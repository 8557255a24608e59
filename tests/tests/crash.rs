//! Crash test with a real process: every record the store acknowledged under
//! fsync `always` survives `kill -9` at a random moment, intact.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::Rng;
use weir_collector::store::{LogStore, ReadLimits, StartingPosition, StoreConfig, StreamStore};

/// Rounds of append, kill, recover, check on the same data directory.
const ROUNDS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_kill_9() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let bin = env!("CARGO_BIN_EXE_weir-crash-appender");
    let mut acked: HashMap<String, (String, String)> = HashMap::new();
    let mut rng = rand::thread_rng();
    for round in 0..ROUNDS {
        let mut child = Command::new(bin)
            .arg(&dir)
            .arg(round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the appender");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Kill after a random number of acknowledgements (and so at a random
        // point of a group commit), bounded in time.
        let kill_after = rng.gen_range(200..3000);
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while lines.len() < kill_after && Instant::now() < deadline {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                lines.push(l);
            }
        }
        child.kill().expect("SIGKILL the appender");
        child.wait().expect("reap the appender");
        reader.join().expect("reader thread");
        lines.extend(rx.try_iter());
        assert!(
            lines.len() >= kill_after,
            "round {round}: only {} acks before the deadline",
            lines.len()
        );
        for line in &lines {
            let parts: Vec<&str> = line.splitn(5, ' ').collect();
            // A line cut by the kill has no data field or a short one; only
            // whole lines count (each ends where the next begins).
            if parts.len() == 5 && parts[0] == "ACK" {
                acked.insert(parts[2].to_owned(), (parts[3].to_owned(), parts[4].to_owned()));
            }
        }

        // Recover in this process and check every acknowledged record.
        let store =
            LogStore::open(&dir, StoreConfig::default()).await.expect("reopen after kill -9");
        let desc = store.describe_stream("crash").await.expect("describe");
        let mut found: HashMap<String, (String, String)> = HashMap::new();
        for shard in &desc.shards {
            let mut pos = store
                .position("crash", &shard.shard_id, StartingPosition::TrimHorizon)
                .await
                .expect("position");
            loop {
                let batch = store
                    .read("crash", pos, ReadLimits { max_records: 10_000, max_bytes: 8 << 20 })
                    .await
                    .expect("read after recovery: no corruption");
                if batch.records.is_empty() {
                    break;
                }
                for r in batch.records {
                    let data = String::from_utf8(r.data.to_vec()).expect("utf8 data");
                    let prev =
                        found.insert(r.sequence.to_string(), (r.partition_key.to_string(), data));
                    assert!(prev.is_none(), "duplicate sequence number");
                }
                pos = batch.next;
            }
        }
        let mut missing = 0;
        for (seq, (key, data)) in &acked {
            match found.get(seq) {
                Some((k, d)) => {
                    assert!(k == key && d == data, "record {seq} changed: {k} {d} != {key} {data}")
                }
                None => missing += 1,
            }
        }
        assert_eq!(
            missing,
            0,
            "round {round}: {missing} of {} acknowledged records lost",
            acked.len()
        );
        store.close().await;
        drop(store);
    }
    assert!(acked.len() >= 600, "the test acknowledged too little to mean anything");
}
