//! The batcher against a real spool: batches close at their limits and
//! linger, carry the checkpoints of exactly the lines they hold, spool
//! pending lines before a file's checkpoint is added or removed, write
//! checkpoint-only entries, keep streams apart, and stop (not drop) on a full
//! spool under `block`.
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_agent::batcher::{Batcher, BatcherSetup, Stopping};
use weir_agent::checkpoint::{EntryMeta, Table};
use weir_agent::config::BatchConfig;
use weir_agent::event::{Chunk, ChunkFile, Event, NO_FILE};
use weir_agent::spool::{Cursor, FullPolicy, Spool, SpoolConfig};
use weir_agent::stats::{Shared, lock};
use weir_agent::tail::{Checkpoint, FileId};
use weir_wire::{BatchView, Envelope};

struct Fixture {
    _dir: tempfile::TempDir,
    spool: Arc<Mutex<Spool>>,
    shared: Arc<Shared>,
    batcher: Batcher,
}

fn fixture(max_records: usize, linger_ms: u64, max_spool: u64, policy: FullPolicy) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool =
        Spool::open(dir.path().join("spool"), SpoolConfig::with_max_bytes(max_spool, policy))
            .expect("spool");
    let spool = Arc::new(Mutex::new(spool));
    let shared = Arc::new(Shared::new(2));
    let setup = BatcherSetup {
        config: BatchConfig {
            max_records,
            max_bytes: 64 * 1024,
            linger: Duration::from_millis(linger_ms),
        },
        producer_id: "dev/0000000000000001".into(),
        input_names: vec!["app".into(), "metrics".into()],
        input_streams: vec!["logs".into(), "metrics".into()],
        table: Table::default(),
        checkpoint_file: dir.path().join("checkpoints.json"),
        sync_inputs: Vec::new(),
    };
    let batcher = Batcher::new(setup, spool.clone(), shared.clone());
    Fixture { _dir: dir, spool, shared, batcher }
}

fn file(ino: u64) -> ChunkFile {
    ChunkFile {
        id: FileId { dev: 1, ino, fingerprint: 3, fingerprint_len: 4 },
        path: Arc::from(Path::new("/l/app.log")),
        logical: Arc::from(Path::new("/l/app.log")),
    }
}

fn lines(input: usize, from: u64, n: u64) -> Chunk {
    let mut c = Chunk::new(input);
    c.files.push(file(9));
    for i in from..from + n {
        c.push("dev/app.log", format!("line {i}").as_bytes(), Some(1), Some((0, (i + 1) * 10)));
    }
    c
}

/// An entry read back: its meta, its records (key, data), its seq.
type Spooled = (EntryMeta, Vec<(String, Vec<u8>)>, u64);

fn entries(spool: &Arc<Mutex<Spool>>) -> Vec<Spooled> {
    let spool = lock(spool);
    let mut cursor = Cursor::at(0);
    let mut out = Vec::new();
    while let Some(e) = spool.read(&mut cursor).expect("read") {
        let meta: EntryMeta = serde_json::from_slice(&e.meta).expect("meta");
        let mut recs = Vec::new();
        if e.records > 0 {
            let Envelope::Batch(b) = Envelope::decode(&e.payload).expect("envelope") else {
                panic!("batch expected")
            };
            assert_eq!((b.producer_id(), b.batch_seq()), ("dev/0000000000000001", e.seq));
            let view: BatchView<'_> = b;
            for r in view.records() {
                let r = r.expect("record");
                recs.push((r.partition_key.to_owned(), r.data.to_vec()));
            }
            assert_eq!(recs.len(), e.records as usize);
        }
        out.push((meta, recs, e.seq));
    }
    out
}

#[test]
fn batches_close_at_max_records_with_checkpoints_of_what_they_hold() {
    let mut f = fixture(4, 10_000, 1 << 20, FullPolicy::DropOldest);
    let t0 = Instant::now();
    f.batcher.handle(Event::Records(lines(0, 0, 10)), t0).expect("records");
    let got = entries(&f.spool);
    assert_eq!(got.len(), 2, "two full batches of 4; 2 records wait");
    assert_eq!(got[0].1.len(), 4);
    assert_eq!(got[0].0.stream, "logs");
    assert_eq!(got[0].0.files["app"][0].offset, 40, "checkpoint after the 4th line");
    assert_eq!(got[1].0.files["app"][0].offset, 80);
    // The linger closes the rest.
    f.batcher.tick(t0 + Duration::from_secs(10)).expect("tick");
    let got = entries(&f.spool);
    assert_eq!(got.len(), 3);
    assert_eq!(
        got[2].1,
        vec![
            ("dev/app.log".into(), b"line 8".to_vec()),
            ("dev/app.log".into(), b"line 9".to_vec())
        ]
    );
    assert_eq!(got[2].0.files["app"][0].offset, 100);
}

#[test]
fn started_and_forget_spool_pending_lines_first_and_reach_the_spool_alone() {
    let mut f = fixture(100, 50, 1 << 20, FullPolicy::DropOldest);
    let t0 = Instant::now();
    f.batcher.handle(Event::Records(lines(0, 0, 3)), t0).expect("records");
    let started = Checkpoint {
        id: file(10).id,
        path: "/l/new.log".into(),
        logical: "/l/new.log".into(),
        offset: 0,
    };
    f.batcher
        .handle(Event::Started { input: 0, checkpoints: vec![started.clone()] }, t0)
        .expect("started");
    let got = entries(&f.spool);
    assert_eq!(got.len(), 1, "pending lines spooled before the table changes");
    assert_eq!(got[0].0.files["app"].len(), 1);
    // No batch carries the change: a checkpoint-only entry after the linger.
    f.batcher.tick(t0 + Duration::from_millis(49)).expect("tick");
    assert_eq!(entries(&f.spool).len(), 1);
    f.batcher.tick(t0 + Duration::from_millis(50)).expect("tick");
    let got = entries(&f.spool);
    assert_eq!(got.len(), 2);
    assert!(got[1].1.is_empty() && got[1].0.stream.is_empty());
    assert_eq!(got[1].0.files["app"].len(), 2);
    f.batcher.handle(Event::Forget { input: 0, keys: vec![(1, 9)] }, t0).expect("forget");
    f.batcher.tick(t0 + Duration::from_secs(1)).expect("tick");
    let last = entries(&f.spool).pop().expect("entry");
    assert_eq!(last.0.files["app"], vec![started]);
    let from_spool = Table::from_meta(lock(&f.spool).last_meta().expect("meta")).expect("table");
    assert_eq!(&from_spool, f.batcher.table());
}

#[test]
fn streams_batch_separately() {
    let mut f = fixture(100, 10, 1 << 20, FullPolicy::DropOldest);
    let t0 = Instant::now();
    f.batcher.handle(Event::Records(lines(0, 0, 2)), t0).expect("records");
    let mut m = Chunk::new(1);
    m.push("dev", b"{\"metric\":\"uptime\"}", Some(5), None);
    f.batcher.handle(Event::Records(m), t0).expect("records");
    f.batcher.tick(t0 + Duration::from_millis(10)).expect("tick");
    let got = entries(&f.spool);
    let streams: Vec<&str> = got.iter().map(|e| e.0.stream.as_str()).collect();
    assert_eq!(streams, vec!["logs", "metrics"]);
    assert_eq!(got[1].0.files["app"][0].offset, 20, "every entry carries the whole table");
}

#[test]
fn a_full_spool_under_block_stops_the_batcher_until_space_or_shutdown() {
    let mut f = fixture(1, 0, 1 << 20, FullPolicy::Block);
    let t0 = Instant::now();
    let big = "x".repeat(60 * 1024);
    let shared = f.shared.clone();
    let stopper = std::thread::spawn(move || {
        // Stop once the batcher reports it is blocked.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !shared.batcher.blocked.load(Ordering::Relaxed) && Instant::now() < deadline {
            shared.space.wait_timeout(Duration::from_millis(5));
        }
        shared.shutdown.trigger();
    });
    let mut result = Ok(());
    for i in 0..40 {
        let mut c = Chunk::new(1);
        c.push("k", big.as_bytes(), None, Some((NO_FILE, i)));
        result = f.batcher.handle(Event::Records(c), t0);
        if result.is_err() {
            break;
        }
    }
    stopper.join().expect("join");
    assert_eq!(result, Err(Stopping));
    assert!(lock(&f.spool).stats().bytes <= 1 << 20);
    assert_eq!(lock(&f.spool).stats().state.dropped_records, 0, "block never drops");
}
