//! Model-based test of the stream store.
//!
//! Random sequences of appends, reads from every kind of starting position,
//! splits, merges, simulated crashes (with torn tails) and flipped bytes run
//! against the real store on real files and against a simple in-memory model;
//! after every step the store must agree with the model. The seed of a failing
//! run is printed; `WEIR_MODEL_SEED=<n>` replays it, `WEIR_MODEL_RUNS=<n>`
//! runs more seeds.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weir_collector::store::segment::{self, RecordIn};
use weir_collector::store::{
    CreateStreamOptions, FsyncPolicy, LogStore, ManualClock, NewRecord, ReadLimits, SequenceNumber,
    ShardPosition, StartingPosition, StoreConfig, StoreError, StreamStore,
};
use weir_wire::HashRange;

const STREAM: &str = "model";
const KEYS: [&str; 12] = [
    "sensor-1",
    "sensor-2",
    "sensor-3",
    "gw/a",
    "gw/b",
    "k",
    "ключ",
    "温度",
    "x",
    "y",
    "z",
    "device-000042",
];

#[derive(Debug, Clone, PartialEq)]
struct ModelRecord {
    key: String,
    data: Vec<u8>,
    explicit_hash_key: Option<u128>,
    producer_ts: Option<u64>,
    arrival_ms: u64,
}

#[derive(Debug, Clone)]
struct ModelShard {
    range: HashRange,
    parent: Option<u64>,
    adjacent_parent: Option<u64>,
    records: Vec<ModelRecord>,
    closed: bool,
    /// Offset ranges whose batch had a byte flipped.
    corrupt: Vec<(u64, u64)>,
}

#[derive(Debug, Default)]
struct Model {
    shards: BTreeMap<u64, ModelShard>,
}

impl Model {
    fn route(&self, hash: u128) -> u64 {
        *self
            .shards
            .iter()
            .find(|(_, s)| !s.closed && s.range.contains(hash))
            .map(|(i, _)| i)
            .expect("open shards cover the key space")
    }

    fn open(&self) -> Vec<u64> {
        let mut open: Vec<(u128, u64)> = self
            .shards
            .iter()
            .filter(|(_, s)| !s.closed)
            .map(|(i, s)| (s.range.start, *i))
            .collect();
        open.sort();
        open.into_iter().map(|(_, i)| i).collect()
    }

    fn children(&self, index: u64) -> Vec<String> {
        self.shards
            .iter()
            .filter(|(_, s)| s.parent == Some(index) || s.adjacent_parent == Some(index))
            .map(|(i, _)| shard_id(*i))
            .collect()
    }

    fn corrupt_at(&self, index: u64, offset: u64) -> Option<(u64, u64)> {
        self.shards[&index].corrupt.iter().copied().find(|(a, b)| (*a..*b).contains(&offset))
    }
}

fn shard_id(i: u64) -> String {
    format!("shardId-{i:012}")
}

struct Harness {
    rng: StdRng,
    dir: PathBuf,
    clock: ManualClock,
    store: Option<LogStore>,
    model: Model,
    stream_id: u64,
    config: StoreConfig,
}

impl Harness {
    fn store(&self) -> &LogStore {
        self.store.as_ref().expect("store open")
    }

    async fn open(&mut self) {
        let store =
            LogStore::open_with_clock(&self.dir, self.config.clone(), Arc::new(self.clock.clone()))
                .await
                .expect("open store");
        self.store = Some(store);
    }

    fn shard_dir(&self, index: u64) -> PathBuf {
        self.dir.join("streams").join(self.stream_id.to_string()).join(format!("shard-{index:012}"))
    }

    fn random_record(&mut self) -> NewRecord {
        let key = KEYS[self.rng.gen_range(0..KEYS.len())].to_owned();
        let len = match self.rng.gen_range(0..20) {
            0 => self.rng.gen_range(1000..20_000),
            _ => self.rng.gen_range(0..200),
        };
        let data: Vec<u8> = (0..len).map(|_| self.rng.r#gen()).collect();
        RecordIn {
            partition_key: key,
            data: Bytes::from(data),
            explicit_hash_key: self.rng.gen_bool(0.1).then(|| self.rng.r#gen()),
            producer_timestamp_ms: self.rng.gen_bool(0.3).then(|| self.rng.r#gen()),
        }
    }

    async fn append(&mut self) {
        self.clock.advance(self.rng.gen_range(0..2_000));
        let n = self.rng.gen_range(1..20);
        let records: Vec<NewRecord> = (0..n).map(|_| self.random_record()).collect();
        let results = self.store().append(STREAM, records.clone()).await.expect("append");
        let now = self.clock.now();
        for (r, result) in records.into_iter().zip(results) {
            let appended = result.expect("record appended");
            let hash = r.explicit_hash_key.unwrap_or_else(|| weir_wire::hash_key(&r.partition_key));
            let index = self.model.route(hash);
            let shard = self.model.shards.get_mut(&index).expect("shard");
            assert_eq!(
                appended.shard_id,
                shard_id(index),
                "routed to the shard owning the hash key"
            );
            assert_eq!(appended.sequence, SequenceNumber::new(index, shard.records.len() as u64));
            assert_eq!(appended.arrival_ms, now);
            shard.records.push(ModelRecord {
                key: r.partition_key,
                data: r.data.to_vec(),
                explicit_hash_key: r.explicit_hash_key,
                producer_ts: r.producer_timestamp_ms,
                arrival_ms: now,
            });
        }
    }

    /// Reads a shard from `start` to its end in random-sized steps and checks
    /// every record, corrupt range and the end-of-shard signal.
    async fn read_and_check(&mut self, index: u64, start: u64) {
        let id = shard_id(index);
        let mut pos =
            ShardPosition { stream_id: self.stream_id, shard_index: index, offset: start };
        let shard = self.model.shards[&index].clone();
        let end = shard.records.len() as u64;
        let mut expected = start;
        for _ in 0..100_000 {
            let limits = ReadLimits {
                max_records: self.rng.gen_range(1..60),
                max_bytes: self.rng.gen_range(1..100_000),
            };
            match self.store().read(STREAM, pos, limits).await {
                Ok(batch) => {
                    assert!(batch.records.len() <= limits.max_records);
                    for r in &batch.records {
                        assert_eq!(
                            r.sequence,
                            SequenceNumber::new(index, expected),
                            "{id}: records in order, none skipped"
                        );
                        assert!(
                            self.model.corrupt_at(index, expected).is_none(),
                            "{id}: corrupt record {expected} returned"
                        );
                        let m = &shard.records[expected as usize];
                        assert_eq!(r.partition_key, m.key);
                        assert_eq!(&r.data[..], &m.data[..], "{id} offset {expected}: data");
                        assert_eq!(r.explicit_hash_key, m.explicit_hash_key);
                        assert_eq!(r.producer_timestamp_ms, m.producer_ts);
                        assert_eq!(r.arrival_ms, m.arrival_ms);
                        expected += 1;
                    }
                    assert_eq!(batch.next.offset, expected);
                    pos = batch.next;
                    if batch.records.is_empty() {
                        assert_eq!(expected, end, "{id}: an empty read only at the end");
                        let want = shard.closed.then(|| self.model.children(index));
                        assert_eq!(batch.end_of_shard, want, "{id}: end of shard and children");
                        return;
                    }
                }
                Err(StoreError::Corrupt { first_offset, next_offset, position, path, .. }) => {
                    let range = self.model.corrupt_at(index, expected);
                    assert_eq!(
                        range,
                        Some((first_offset, next_offset)),
                        "{id}: corruption at {expected} reported as {path:?}@{position}"
                    );
                    assert!(
                        first_offset <= expected,
                        "{id}: corrupt batch starts at or before the read position"
                    );
                    assert!(path.starts_with(self.shard_dir(index)));
                    expected = next_offset;
                    pos.offset = next_offset;
                }
                Err(e) => panic!("{id}: read failed: {e}"),
            }
        }
        panic!("{id}: read did not reach the end");
    }

    async fn read_random(&mut self) {
        let shards: Vec<u64> = self.model.shards.keys().copied().collect();
        let index = shards[self.rng.gen_range(0..shards.len())];
        let id = shard_id(index);
        let records = self.model.shards[&index].records.clone();
        let end = records.len() as u64;
        let (start, expected) = match self.rng.gen_range(0..5) {
            0 => (StartingPosition::TrimHorizon, 0),
            1 => (StartingPosition::Latest, end),
            2 if end > 0 => {
                let o = self.rng.gen_range(0..end);
                (StartingPosition::AtSequence(SequenceNumber::new(index, o)), o)
            }
            3 if end > 0 => {
                let o = self.rng.gen_range(0..end);
                (StartingPosition::AfterSequence(SequenceNumber::new(index, o)), o + 1)
            }
            _ => {
                let t = match records.get(self.rng.gen_range(0..=records.len())) {
                    Some(r) => r.arrival_ms - self.rng.gen_range(0..2),
                    None => self.clock.now() + 1,
                };
                let o = records.iter().position(|r| r.arrival_ms >= t).map_or(end, |p| p as u64);
                (StartingPosition::AtTimestamp(t), o)
            }
        };
        let pos = self.store().position(STREAM, &id, start).await.expect("position");
        assert_eq!(pos.offset, expected, "{id}: position for {start:?}");
        self.read_and_check(index, pos.offset).await;
    }

    async fn check_everything(&mut self) {
        let desc = self.store().describe_stream(STREAM).await.expect("describe");
        assert_eq!(desc.shards.len(), self.model.shards.len());
        for s in &desc.shards {
            let m = &self.model.shards[&s.index];
            assert_eq!(s.hash_range, m.range, "{}: range", s.shard_id);
            assert_eq!(s.parent_shard_id, m.parent.map(shard_id));
            assert_eq!(s.adjacent_parent_shard_id, m.adjacent_parent.map(shard_id));
            assert_eq!(s.ending_sequence.is_some(), m.closed);
        }
        let indexes: Vec<u64> = self.model.shards.keys().copied().collect();
        for i in indexes {
            self.read_and_check(i, 0).await;
        }
    }

    async fn split(&mut self) {
        let open = self.model.open();
        let index = open[self.rng.gen_range(0..open.len())];
        let range = self.model.shards[&index].range;
        if range.start == range.end {
            return;
        }
        let at = self.rng.gen_range(range.start + 1..=range.end);
        self.store().split_shard(STREAM, &shard_id(index), at).await.expect("split");
        let (low, high) = range.split_at(at).expect("model split");
        let next = *self.model.shards.keys().max().expect("shards") + 1;
        self.model.shards.get_mut(&index).expect("parent").closed = true;
        for (i, r) in [(next, low), (next + 1, high)] {
            self.model.shards.insert(
                i,
                ModelShard {
                    range: r,
                    parent: Some(index),
                    adjacent_parent: None,
                    records: vec![],
                    closed: false,
                    corrupt: vec![],
                },
            );
        }
    }

    async fn merge(&mut self) {
        let open = self.model.open();
        if open.len() < 2 {
            return;
        }
        let k = self.rng.gen_range(0..open.len() - 1);
        let (a, b) =
            if self.rng.gen_bool(0.5) { (open[k], open[k + 1]) } else { (open[k + 1], open[k]) };
        self.store().merge_shards(STREAM, &shard_id(a), &shard_id(b)).await.expect("merge");
        let range =
            self.model.shards[&a].range.merge(&self.model.shards[&b].range).expect("adjacent");
        let next = *self.model.shards.keys().max().expect("shards") + 1;
        self.model.shards.get_mut(&a).expect("a").closed = true;
        self.model.shards.get_mut(&b).expect("b").closed = true;
        self.model.shards.insert(
            next,
            ModelShard {
                range,
                parent: Some(a),
                adjacent_parent: Some(b),
                records: vec![],
                closed: false,
                corrupt: vec![],
            },
        );
    }

    /// Drops the store as a crash would leave it, tears the tail of one
    /// shard's last segment (a write that was in flight and never
    /// acknowledged), and reopens.
    async fn crash(&mut self) {
        let store = self.store.take().expect("store");
        store.close().await;
        drop(store);
        let indexes: Vec<u64> = self.model.shards.keys().copied().collect();
        let index = indexes[self.rng.gen_range(0..indexes.len())];
        let dir = self.shard_dir(index);
        let last = *segment::list_segments(&dir).expect("segments").last().expect("a segment");
        let torn: Vec<u8> = if self.rng.gen_bool(0.5) {
            let r = self.random_record();
            let mut buf = Vec::new();
            let end = self.model.shards[&index].records.len() as u64;
            segment::encode_batch(&mut buf, end, self.clock.now(), &[&r]);
            let cut = self.rng.gen_range(1..buf.len());
            buf.truncate(cut);
            buf
        } else {
            (0..self.rng.gen_range(1..64)).map(|_| self.rng.r#gen()).collect()
        };
        append_bytes(&segment::log_path(&dir, last), &torn);
        self.open().await;
    }

    /// Flips one byte inside a batch that is not the shard's newest.
    fn flip(&mut self) {
        let indexes: Vec<u64> = self.model.shards.keys().copied().collect();
        let index = indexes[self.rng.gen_range(0..indexes.len())];
        let batches = segment::list_batches(&self.shard_dir(index)).expect("batches");
        let end = self.model.shards[&index].records.len() as u64;
        let candidates: Vec<(usize, &segment::BatchLocation)> = batches
            .iter()
            .enumerate()
            .filter(|(i, b)| {
                *i + 1 < batches.len()
                    && b.len > 0
                    && self.model.corrupt_at(index, b.base_offset).is_none()
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        let (i, b) = candidates[self.rng.gen_range(0..candidates.len())];
        let next = batches.get(i + 1).map_or(end, |n| n.base_offset);
        if next == b.base_offset {
            return;
        }
        let at = b.position + self.rng.gen_range(0..b.len);
        flip_byte(&b.path, at);
        self.model.shards.get_mut(&index).expect("shard").corrupt.push((b.base_offset, next));
    }
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(path).expect("open log");
    f.write_all(bytes).expect("append");
}

fn flip_byte(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new().read(true).write(true).open(path).expect("open log");
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).expect("read");
    b[0] ^= 1 << (at % 8);
    f.write_all_at(&b, at).expect("write");
}

impl ManualClockExt for ManualClock {
    fn now(&self) -> u64 {
        weir_collector::store::Clock::now_ms(self)
    }
}

trait ManualClockExt {
    fn now(&self) -> u64;
}

async fn run_model(seed: u64, steps: usize) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = StdRng::seed_from_u64(seed);
    // Every policy keeps what it acknowledged across a process crash (only a
    // power cut tells them apart), so the model holds for all three.
    let fsync = match seed % 3 {
        0 => FsyncPolicy::Always,
        1 => FsyncPolicy::Interval(Duration::from_millis(5)),
        _ => FsyncPolicy::Never,
    };
    let config = StoreConfig {
        fsync,
        // Small segments so rolls, sealed segments and multi-segment reads happen.
        segment_max_bytes: rng.gen_range(4096..64 * 1024),
        segment_max_age: Duration::from_secs(3600),
        ..StoreConfig::default()
    };
    let mut h = Harness {
        rng,
        dir: tmp.path().to_path_buf(),
        clock: ManualClock::new(1_700_000_000_000),
        store: None,
        model: Model::default(),
        stream_id: 0,
        config,
    };
    h.open().await;
    let shards = h.rng.gen_range(1..4);
    let desc = h
        .store()
        .create_stream(STREAM, CreateStreamOptions { shard_count: shards, ..Default::default() })
        .await
        .expect("create");
    h.stream_id = desc.id;
    for s in desc.shards {
        h.model.shards.insert(
            s.index,
            ModelShard {
                range: s.hash_range,
                parent: None,
                adjacent_parent: None,
                records: vec![],
                closed: false,
                corrupt: vec![],
            },
        );
    }
    for _ in 0..steps {
        match h.rng.gen_range(0..100) {
            0..=54 => h.append().await,
            55..=79 => h.read_random().await,
            80..=85 => {
                if h.model.open().len() < 8 {
                    h.split().await;
                }
            }
            86..=90 => h.merge().await,
            91..=95 => {
                h.crash().await;
                h.check_everything().await;
            }
            _ => h.flip(),
        }
    }
    h.check_everything().await;
    h.store().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_agrees_with_the_model() {
    let seeds: Vec<u64> = match std::env::var("WEIR_MODEL_SEED") {
        Ok(s) => vec![s.parse().expect("WEIR_MODEL_SEED is a number")],
        Err(_) => {
            let runs: u64 =
                std::env::var("WEIR_MODEL_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(12);
            (0..runs).map(|i| 0x5eed_0000 + i).collect()
        }
    };
    for seed in seeds {
        let run = tokio::spawn(run_model(seed, 300));
        if let Err(e) = run.await {
            panic!("model run with WEIR_MODEL_SEED={seed} failed: {e}");
        }
    }
}
