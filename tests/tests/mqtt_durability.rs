//! Durability of MQTT acknowledgements under `kill -9`.
//!
//! A client publishes numbered records at QoS 1 and notes which were
//! acknowledged; the collector is killed with SIGKILL after a random number
//! of acknowledgements, restarted on the same data directory, and the client
//! re-sends what was in flight (as an MQTT client does after a reconnect),
//! for several rounds. Then: every acknowledged record is there, in order per
//! key; nothing that was never sent is there; a record appears twice only if
//! it was in flight at a crash (at-least-once, as MQTT defines it).
//!
//! Wire-format batches with a producer id and batch sequence must appear
//! exactly once, however they are re-sent: in flight at a crash, re-sent
//! after an acknowledgement was lost, re-sent on a new connection.

mod mqtt_support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use mqtt_support::*;
use rand::Rng;
use weir_wire::{OwnedBatch, OwnedRecord, encode_batch_to_vec};

/// Kill/restart rounds per test.
const ROUNDS: usize = 4;
/// New records offered per round (the kill comes before they are all sent).
const PER_ROUND: usize = 6000;
const KEYS: [&str; 5] = ["a", "b", "c", "d", "e"];
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);
/// New batches (of 20 records) offered per round.
const BATCHES_PER_ROUND: u64 = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_qos1_publishes_survive_sigkill_in_order_per_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let config = config_file(tmp.path(), "[mqtt]\nauto_create_shards = 2\n");
    let config = config.to_str().expect("utf-8 path").to_owned();
    let mut rng = rand::thread_rng();
    let mut next: HashMap<&str, u64> = HashMap::new();
    let mut acked: HashSet<(String, u64)> = HashSet::new();
    let mut unsent: HashSet<(String, u64)> = HashSet::new();
    let mut in_flight_ever: HashSet<(String, u64)> = HashSet::new();
    let mut resend: Vec<(String, u64)> = Vec::new();
    for round in 0..ROUNDS {
        let c = start_in(&data, tmp.path(), &["--config", &config]);
        let mut batch: Vec<(String, u64)> = std::mem::take(&mut resend);
        for i in 0..PER_ROUND {
            let key = KEYS[i % KEYS.len()];
            let seq = next.entry(key).or_default();
            batch.push((key.to_owned(), *seq));
            *seq += 1;
        }
        let msgs: Vec<Msg> = batch
            .iter()
            .map(|(k, s)| Msg::new(format!("weir/durable/{k}"), 1, format!("{k}:{s}")))
            .collect();
        let kill_after = rng.gen_range(300..3000);
        let conn = Conn::new(addr(&c, "mqtt"), Version::V4, "durable-client");
        let report = publish_until(&conn, msgs, ROUND_TIMEOUT, |n| {
            if n == kill_after {
                c.signal("KILL");
            }
            false
        })
        .await;
        assert!(report.error.is_some(), "round {round}: the connection should die: {report:?}");
        let acks = report.acked().len();
        assert!(
            acks >= kill_after,
            "round {round}: {acks} acks, kill after {kill_after}\n{}",
            c.report()
        );
        for (m, ack) in batch.into_iter().zip(&report.acks) {
            match ack {
                Ack::Ok => {
                    acked.insert(m);
                }
                Ack::InFlight => {
                    in_flight_ever.insert(m.clone());
                    resend.push(m);
                }
                Ack::Unsent => {
                    unsent.insert(m);
                }
                Ack::Refused(code) => panic!("round {round}: {m:?} refused with {code:#x}"),
            }
        }
        drop(c);
    }
    let records = read_stream(&data, "durable").await.expect("stream exists");
    let mut seen: HashMap<(String, u64), usize> = HashMap::new();
    let mut last: HashMap<String, u64> = HashMap::new();
    for r in &records {
        let text = String::from_utf8(r.record.data.to_vec()).expect("utf-8");
        let (key, seq) = text.split_once(':').expect("key:seq");
        let seq: u64 = seq.parse().expect("seq");
        assert_eq!(key, &*r.record.partition_key);
        assert_eq!(r.shard, shard_of(key, 2), "{key} in the wrong shard");
        let id = (key.to_owned(), seq);
        assert!(!unsent.contains(&id), "{id:?} was never sent but is stored");
        let n = seen.entry(id.clone()).or_default();
        *n += 1;
        if *n == 1 {
            if let Some(prev) = last.insert(key.to_owned(), seq) {
                assert!(prev < seq, "key {key}: {seq} first stored after {prev}");
            }
        } else {
            assert!(
                in_flight_ever.contains(&id),
                "{id:?} stored {n} times but was never in flight at a crash"
            );
        }
    }
    let dupes = seen.values().filter(|n| **n > 1).count();
    eprintln!(
        "{} acknowledged, {} in flight at a crash, {dupes} stored twice, {} records",
        acked.len(),
        in_flight_ever.len(),
        records.len()
    );
    let missing: Vec<_> = acked.iter().filter(|id| !seen.contains_key(*id)).take(10).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but lost: {missing:?} ({} acknowledged)",
        acked.len()
    );
    assert!(acked.len() >= ROUNDS * 300);
}

/// Publishes the batches `seqs` on a new connection, killing the collector
/// after `kill_after` acknowledgements.
async fn publish_batches(
    c: &weir_tests::harness::Collector,
    seqs: &[u64],
    kill_after: Option<usize>,
) -> Report {
    let conn = Conn::new(addr(c, "mqtt"), Version::V5, "batch-producer");
    let msgs: Vec<Msg> =
        seqs.iter().map(|s| Msg::new("weir/batches/$batch", 1, batch(*s))).collect();
    publish_until(&conn, msgs, ROUND_TIMEOUT, |n| {
        if Some(n) == kill_after {
            c.signal("KILL");
        }
        false
    })
    .await
}

/// One batch of the test producer: 20 records over five keys.
fn batch(seq: u64) -> Vec<u8> {
    let records = (0..20)
        .map(|j| OwnedRecord::new(format!("k{}", j % 5), format!("b{seq}:{j}").into_bytes()))
        .collect();
    encode_batch_to_vec(&OwnedBatch { producer_id: "agent-7".into(), batch_seq: seq, records })
        .expect("encode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_appear_exactly_once_across_resends_reconnects_and_restarts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let config = config_file(tmp.path(), "[mqtt]\nauto_create_shards = 3\n");
    let config = config.to_str().expect("utf-8 path").to_owned();
    let mut rng = rand::thread_rng();
    let mut next_seq = 1u64;
    let mut acked: Vec<u64> = Vec::new();
    let mut resend: Vec<u64> = Vec::new();
    let mut crashed = 0;
    for round in 0..ROUNDS {
        let c = start_in(&data, tmp.path(), &["--config", &config]);
        // In flight at the last crash, then a few already acknowledged ones
        // (their acknowledgement "lost"), then new batches.
        let mut seqs: Vec<u64> = std::mem::take(&mut resend);
        let lost_acks: Vec<u64> = acked.iter().rev().take(3).copied().collect();
        seqs.extend(lost_acks.iter().rev());
        let first_new = next_seq;
        next_seq += BATCHES_PER_ROUND;
        seqs.extend(first_new..next_seq);
        let kill_after = rng.gen_range(20..300);
        let report = publish_batches(&c, &seqs, Some(kill_after)).await;
        crashed += usize::from(report.error.is_some());
        for (seq, ack) in seqs.iter().zip(&report.acks) {
            match ack {
                Ack::Ok => acked.push(*seq),
                Ack::InFlight => resend.push(*seq),
                Ack::Unsent => {}
                Ack::Refused(code) => panic!("round {round}: batch {seq} refused with {code:#x}"),
            }
        }
        // Unsent new batches are offered again next round (in order, after
        // the re-sends, so sequence numbers only ever grow per producer).
        let unsent: Vec<u64> = seqs
            .iter()
            .zip(&report.acks)
            .filter(|(_, a)| **a == Ack::Unsent)
            .map(|(s, _)| *s)
            .collect();
        resend.extend(unsent);
        drop(c);
    }
    assert!(crashed >= ROUNDS / 2, "only {crashed} of {ROUNDS} rounds were cut by the kill");
    eprintln!("{crashed} rounds cut by SIGKILL, {} batches left to re-send", resend.len());
    // A clean round: everything still in flight goes through, then every
    // batch is sent once more on a second connection (all duplicates).
    let mut c = start_in(&data, tmp.path(), &["--config", &config]);
    let report = publish_batches(&c, &resend, None).await;
    report.assert_all_ok();
    acked.extend(&resend);
    acked.sort_unstable();
    acked.dedup();
    let report = publish_batches(&c, &acked, None).await;
    report.assert_all_ok();
    let records = stop_and_read(&mut c, "batches").await.expect("stream exists");
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in &records {
        let text = String::from_utf8(r.record.data.to_vec()).expect("utf-8");
        *seen.entry(text).or_default() += 1;
        assert_eq!(r.shard, shard_of(&r.record.partition_key, 3));
    }
    let dupes: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(dupes.is_empty(), "records stored more than once: {dupes:?}");
    for seq in &acked {
        for j in 0..20 {
            assert!(seen.contains_key(&format!("b{seq}:{j}")), "batch {seq} record {j} missing");
        }
    }
    assert_eq!(records.len(), acked.len() * 20);
}
