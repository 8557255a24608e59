//! Model-based test of the agent's spool: random appends, reads, acks,
//! reopens, torn tails and fills (both policies) against a simple queue model.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::Write;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weir_agent::spool::{Appended, Cursor, FullPolicy, Spool, SpoolConfig};

#[derive(Debug, Clone, PartialEq)]
struct M {
    seq: u64,
    records: u32,
    meta: Vec<u8>,
    payload: Vec<u8>,
}

/// Returns how many appends dropped data and how many were refused as full.
fn run(seed: u64, policy: FullPolicy) -> (u32, u32) {
    let (mut drops, mut fulls) = (0, 0);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("spool");
    let mut rng = StdRng::seed_from_u64(seed);
    let config = SpoolConfig {
        max_bytes: rng.gen_range(4_000..40_000),
        segment_bytes: rng.gen_range(500..5_000),
        policy,
        // The bound is the subject here, not the disk the test runs on.
        min_free_bytes: Some(0),
    };
    let mut spool = Spool::open(&dir, config).expect("open");
    // Unacknowledged entries still on disk, oldest first.
    let mut model: VecDeque<M> = VecDeque::new();
    let mut next_seq = 0u64;
    let mut dropped_records = 0u64;
    let mut cursor = Cursor::at(0);
    let mut last_meta: Option<Vec<u8>> = None;
    for step in 0..400 {
        match rng.gen_range(0..100) {
            0..=49 => {
                let payload: Vec<u8> = (0..rng.gen_range(0..600)).map(|_| rng.r#gen()).collect();
                let meta: Vec<u8> = format!("meta-{next_seq}").into_bytes();
                let records = rng.gen_range(1..50);
                match spool.append(records, &meta, &payload).expect("append") {
                    Appended::Written { seq, dropped_records: d } => {
                        assert_eq!(seq, next_seq, "seed {seed} step {step}");
                        if policy == FullPolicy::Block {
                            assert_eq!(d, 0, "seed {seed}: `block` never drops");
                        }
                        // Drop from the model what the spool dropped: whole
                        // oldest entries whose records add up to `d`.
                        let mut left = d;
                        while left > 0 {
                            let m = model.pop_front().expect("dropped entries were in the model");
                            assert!(
                                u64::from(m.records) <= left,
                                "seed {seed}: dropped whole entries only"
                            );
                            left -= u64::from(m.records);
                        }
                        dropped_records += d;
                        drops += u32::from(d > 0);
                        model.push_back(M { seq, records, meta: meta.clone(), payload });
                        next_seq += 1;
                        last_meta = Some(meta);
                    }
                    Appended::Full => {
                        assert_eq!(policy, FullPolicy::Block, "seed {seed}: only `block` refuses");
                        fulls += 1;
                        assert!(spool.stats().bytes > 0);
                    }
                }
            }
            50..=74 => {
                // Read everything from the cursor; it must match the model.
                while let Some(e) = spool.read(&mut cursor).expect("read") {
                    let m = model
                        .iter()
                        .find(|m| m.seq == e.seq)
                        .unwrap_or_else(|| panic!("seed {seed}: read {} not in model", e.seq));
                    assert_eq!((e.records, &e.meta, &e.payload), (m.records, &m.meta, &m.payload));
                    assert!(model.front().is_some_and(|f| e.seq >= f.seq));
                }
                assert_eq!(cursor.seq, next_seq, "seed {seed}: read up to the end");
            }
            75..=89 => {
                if !model.is_empty() {
                    let k = rng.gen_range(0..=model.len());
                    let below = model.get(k).map_or(next_seq, |m| m.seq);
                    spool.ack(below).expect("ack");
                    while model.front().is_some_and(|m| m.seq < below) {
                        model.pop_front();
                    }
                }
            }
            90..=95 => {
                drop(spool);
                spool = Spool::open(&dir, config).expect("reopen");
                assert_eq!(spool.next_seq(), next_seq, "seed {seed}");
                assert_eq!(
                    spool.last_meta().map(<[u8]>::to_vec),
                    last_meta,
                    "seed {seed}: newest metadata survives"
                );
                cursor = Cursor::at(0);
            }
            _ => {
                // A torn write: garbage or a cut entry after the last one.
                drop(spool);
                let mut segs: Vec<_> = std::fs::read_dir(&dir)
                    .expect("list")
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "spool"))
                    .collect();
                segs.sort();
                if let Some(last) = segs.last() {
                    let torn: Vec<u8> = if rng.gen_bool(0.5) {
                        let e = weir_agent::spool::encode_entry(next_seq, 1, b"torn", &[7; 40]);
                        e[..rng.gen_range(1..e.len())].to_vec()
                    } else {
                        (0..rng.gen_range(1..30)).map(|_| rng.r#gen()).collect()
                    };
                    OpenOptions::new()
                        .append(true)
                        .open(last)
                        .expect("open")
                        .write_all(&torn)
                        .expect("write");
                }
                spool = Spool::open(&dir, config).expect("reopen after tear");
                assert_eq!(spool.next_seq(), next_seq, "seed {seed}: a torn tail loses no entry");
                assert_eq!(spool.last_meta().map(<[u8]>::to_vec), last_meta, "seed {seed}");
                cursor = Cursor::at(0);
            }
        }
        let stats = spool.stats();
        assert!(stats.bytes <= config.max_bytes, "seed {seed}: bound kept");
        assert_eq!(stats.state.dropped_records, dropped_records, "seed {seed}: drops counted");
        assert_eq!(stats.entries, model.len() as u64, "seed {seed} step {step}: depth");
    }
    (drops, fulls)
}

#[test]
fn spool_agrees_with_the_model_drop_oldest() {
    let drops: u32 = (0..40).map(|seed| run(seed, FullPolicy::DropOldest).0).sum();
    assert!(drops > 10, "the bound was reached often enough to test dropping ({drops})");
}

#[test]
fn spool_agrees_with_the_model_block() {
    let fulls: u32 = (100..140).map(|seed| run(seed, FullPolicy::Block).1).sum();
    assert!(fulls > 10, "the bound was reached often enough to test blocking ({fulls})");
}

#[test]
fn the_synced_point_moves_only_with_an_fsync_and_covers_a_reopened_spool() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("spool");
    let config = SpoolConfig {
        max_bytes: 1 << 20,
        segment_bytes: 4_096,
        policy: FullPolicy::Block,
        min_free_bytes: Some(0),
    };
    let mut spool = Spool::open(&dir, config).expect("open");
    assert_eq!(spool.synced().next_seq, 0);
    spool.append(1, b"meta-0", b"payload").expect("append");
    spool.append(1, b"meta-1", b"payload").expect("append");
    // Appended (page cache) is not synced.
    assert_eq!((spool.synced().next_seq, spool.synced().meta.clone()), (0, None));
    // A point taken before more appends covers only what came before it.
    let point = spool.sync_point();
    spool.append(1, b"meta-2", b"payload").expect("append");
    spool.mark_synced(point.clone());
    assert_eq!(
        (spool.synced().next_seq, spool.synced().meta.as_deref()),
        (2, Some(&b"meta-1"[..]))
    );
    // An older point changes nothing.
    spool.mark_synced(weir_agent::spool::SyncPoint { next_seq: 1, meta: None });
    assert_eq!(spool.synced(), &point);
    spool.sync().expect("sync");
    assert_eq!(
        (spool.synced().next_seq, spool.synced().meta.as_deref()),
        (3, Some(&b"meta-2"[..]))
    );
    drop(spool);
    // What is on disk when the spool opens counts as synced.
    let spool = Spool::open(&dir, config).expect("reopen");
    assert_eq!(
        (spool.synced().next_seq, spool.synced().meta.as_deref()),
        (3, Some(&b"meta-2"[..]))
    );
}
