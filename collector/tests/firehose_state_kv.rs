//! The firehose state in JetStream KV (`firehose::state::KvState`) against a
//! real nats-server: one lease holder at a time, takeover after the holder
//! stops renewing within lease duration + renewal interval, a stale
//! holder's checkpoint save fenced, one winner of concurrent creations, a
//! deleted definition's checkpoint not resumed by its successor; and two
//! `Manager`s over one bucket and one store: a definition created on one is
//! started and deleted on the other; after the delivering one shuts down, or
//! can no longer renew its lease (it must stop delivering by itself), the
//! other takes over with every record in exactly one object. And a
//! delivery stream reading the JetStream store itself (whose offsets are
//! not dense) delivers batch after batch.

#![cfg(feature = "jetstream")]

mod nats_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use nats_support::NatsServer;
use weir_collector::firehose::state::{
    CheckpointStore, Definition, FirehoseState, KvState, Lease, LeaseAttempt, LeaseTiming,
    StateError,
};
use weir_collector::firehose::{
    Checkpoint, DeliverySpec, FirehoseError, Manager, ManagerError, ShardCheckpoint, Source,
};
use weir_collector::store::jetstream::{JetStreamSettings, JetStreamStore};
use weir_collector::store::{LogStore, NewRecord, StoreConfig, StreamStore};

const PREFIX: &str = "t_";
/// Short leases so takeovers happen within a test's patience.
const TIMING: LeaseTiming = LeaseTiming {
    duration: Duration::from_secs(2),
    renew_every: Duration::from_millis(500),
    safety_margin: Duration::from_millis(300),
};
/// Network round trips on top of the lease bounds.
const SLACK: Duration = Duration::from_millis(500);
/// Longest wait for anything eventually true.
const PATIENCE: Duration = Duration::from_secs(20);

async fn state(server: &NatsServer, id: &str) -> KvState {
    KvState::open_with_timing(server.jetstream().await, PREFIX, id, TIMING)
        .await
        .expect("open the KV state")
}

async fn acquired(state: &KvState, name: &str, incarnation: u64) -> Lease {
    match state.acquire_lease(name, incarnation).await.expect("acquire") {
        LeaseAttempt::Acquired(lease) => lease,
        LeaseAttempt::Held { holder, .. } => panic!("{name}: lease held by {holder}"),
    }
}

/// Asks for the lease, as a delivery task does, until acquired (bounded).
async fn wait_acquired(state: &KvState, name: &str, incarnation: u64) -> Lease {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match state.acquire_lease(name, incarnation).await.expect("acquire") {
            LeaseAttempt::Acquired(lease) => return lease,
            LeaseAttempt::Held { retry_in, .. } => {
                assert!(Instant::now() < deadline, "{name}: never acquired");
                tokio::time::sleep(retry_in).await;
            }
        }
    }
}

fn checkpoint_with(next_offset: u64) -> Checkpoint {
    let mut c = Checkpoint::new("clicks", "clicks-src");
    c.stream_id = Some(1);
    c.shards.insert(
        "shardId-000000000000".into(),
        ShardCheckpoint { next_offset, done: false, pending: None },
    );
    c
}

fn is_fenced(e: &FirehoseError) -> bool {
    matches!(e, FirehoseError::State(StateError::Fenced { .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_collector_holds_a_lease_at_a_time() {
    let server = NatsServer::start().await;
    let (a, b) = (state(&server, "collector-a").await, state(&server, "collector-b").await);
    let mut lease = acquired(&a, "clicks", 0).await;
    assert_eq!(lease.holder(), "collector-a");
    // For two lease durations a keeps renewing and b keeps asking.
    let until = Instant::now() + TIMING.duration * 2;
    let mut refusals = 0;
    while Instant::now() < until {
        a.renew_lease(&mut lease).await.expect("renew");
        match b.acquire_lease("clicks", 0).await.expect("ask") {
            LeaseAttempt::Held { holder, .. } => assert_eq!(holder, "collector-a"),
            LeaseAttempt::Acquired(l) => panic!("b took a renewed lease: {l:?}"),
        }
        refusals += 1;
        tokio::time::sleep(TIMING.renew_every / 2).await;
    }
    assert!(refusals >= 8, "only {refusals} attempts");
    // A lease of another delivery stream is independent.
    let other = acquired(&b, "views", 0).await;
    assert_eq!(other.holder(), "collector-b");
    // Released: b takes it at its next attempt.
    a.release_lease(lease.clone()).await.expect("release");
    let taken = acquired(&b, "clicks", 0).await;
    assert!(taken.token() > lease.token(), "fencing tokens grow: {taken:?} after {lease:?}");
    // The released holder can no longer renew.
    let err = a.renew_lease(&mut lease).await.expect_err("renewing a released lease");
    assert!(matches!(err, StateError::LeaseLost { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_lease_is_taken_within_duration_plus_renewal() {
    let server = NatsServer::start().await;
    let (a, b) = (state(&server, "collector-a").await, state(&server, "collector-b").await);
    let mut lease = acquired(&a, "clicks", 0).await;
    // b watches from the start, as a running collector does.
    assert!(matches!(b.acquire_lease("clicks", 0).await.expect("ask"), LeaseAttempt::Held { .. }));
    let mut before_last_renewal = Instant::now();
    for _ in 0..3 {
        tokio::time::sleep(TIMING.renew_every).await;
        before_last_renewal = Instant::now();
        a.renew_lease(&mut lease).await.expect("renew");
    }
    // a dies: no more renewals, no release.
    let a_stops_at = lease.valid_until().expect("a KV lease expires");
    drop(lease);
    let taken = wait_acquired(&b, "clicks", 0).await;
    let took = Instant::now();
    assert!(took > a_stops_at, "b took over before a had to stop");
    let after = took - before_last_renewal;
    assert!(after >= TIMING.duration, "taken {after:?} after the last renewal");
    let bound = TIMING.duration + TIMING.renew_every + SLACK;
    assert!(after <= bound, "taken {after:?} after the last renewal, more than {bound:?}");
    assert_eq!(taken.holder(), "collector-b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_holders_checkpoint_save_is_refused() {
    let server = NatsServer::start().await;
    let (a, b) = (state(&server, "collector-a").await, state(&server, "collector-b").await);
    let lease_a = acquired(&a, "clicks", 0).await;
    let cp_a = a.checkpoints(&lease_a);
    let loaded = cp_a.load("clicks", "clicks-src").await.expect("claim");
    assert!(loaded.shards.is_empty(), "a new checkpoint is empty");
    cp_a.save(checkpoint_with(10)).await.expect("save 10");
    cp_a.save(checkpoint_with(20)).await.expect("save 20");
    // a stalls without renewing; b takes over and claims.
    let lease_b = wait_acquired(&b, "clicks", 0).await;
    assert!(lease_b.token() > lease_a.token());
    let cp_b = b.checkpoints(&lease_b);
    let resumed = cp_b.load("clicks", "clicks-src").await.expect("claim by b");
    assert_eq!(resumed, checkpoint_with(20), "b resumes where a left off");
    // a wakes up: its save is fenced, and so is any claim with its token.
    let err = cp_a.save(checkpoint_with(30)).await.expect_err("stale save");
    assert!(is_fenced(&err), "{err}");
    let err = a.checkpoints(&lease_a).load("clicks", "clicks-src").await.expect_err("stale claim");
    assert!(is_fenced(&err), "{err}");
    // b's progress is intact and b keeps saving.
    cp_b.save(checkpoint_with(40)).await.expect("b saves");
    let again = b.checkpoints(&lease_b).load("clicks", "clicks-src").await.expect("reload");
    assert_eq!(again, checkpoint_with(40));
    // A checkpoint of another delivery stream is refused on load.
    let err = cp_b.load("views", "clicks-src").await.expect_err("foreign checkpoint");
    assert!(matches!(err, FirehoseError::Checkpoint { .. }), "{err}");
}

fn spec(name: &str, directory: &Path) -> DeliverySpec {
    DeliverySpec {
        name: name.to_owned(),
        source: Source::DirectPut,
        directory: directory.to_path_buf(),
        size_mib: 1,
        interval_secs: 0,
        newline_delimited: true,
        compression: "none".into(),
        prefix: String::new(),
        created_ms: 1_700_000_000_000,
        error_prefix: String::new(),
        retry_duration_secs: 60,
        partition_keys: Vec::new(),
        backup_directory: None,
        min_free_bytes: None,
        destination: Default::default(),
        parquet: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_name_have_exactly_one_winner() {
    let server = NatsServer::start().await;
    let (a, b) = (state(&server, "collector-a").await, state(&server, "collector-b").await);
    for i in 0..20 {
        let name = format!("race.{i}");
        let (sa, sb) = (spec(&name, Path::new("/from/a")), spec(&name, Path::new("/from/b")));
        let (ra, rb) = tokio::join!(a.create_definition(&sa), b.create_definition(&sb));
        let winner = match (ra, rb) {
            (Ok(_), Err(StateError::Exists(n))) | (Err(StateError::Exists(n)), Ok(_))
                if n == name =>
            {
                "ok"
            }
            (ra, rb) => panic!("{name}: {ra:?} / {rb:?}"),
        };
        assert_eq!(winner, "ok");
    }
    let seen_a = a.load_definitions().await.expect("load on a");
    let seen_b = b.load_definitions().await.expect("load on b");
    assert_eq!(seen_a.len(), 20);
    assert_eq!(seen_a, seen_b, "both collectors see the same winners");
    // A name with dots maps to a key and back.
    assert!(seen_a.iter().any(|d| d.spec.name == "race.7"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definition_deleted_and_created_again_does_not_resume_its_checkpoint() {
    let server = NatsServer::start().await;
    let (a, b) = (state(&server, "collector-a").await, state(&server, "collector-b").await);
    let first = a.create_definition(&spec("clicks", Path::new("/x"))).await.expect("create");
    let seen = b.load_definitions().await.expect("load on b");
    assert_eq!(seen.len(), 1, "created on a, seen on b");
    assert_eq!(seen[0].incarnation, first);
    let mut lease = acquired(&b, "clicks", first).await;
    let cp = b.checkpoints(&lease);
    cp.load("clicks", "clicks-src").await.expect("claim");
    cp.save(checkpoint_with(50)).await.expect("save");
    // Deleted on a while b still delivers.
    a.delete_definition("clicks").await.expect("delete");
    a.delete_checkpoint("clicks", first).await.expect("tombstone");
    let err = cp.save(checkpoint_with(60)).await.expect_err("save after delete");
    assert!(is_fenced(&err), "{err}");
    let err = b.checkpoints(&lease).load("clicks", "clicks-src").await.expect_err("claim");
    assert!(matches!(err, FirehoseError::State(StateError::DefinitionGone { .. })), "{err}");
    b.renew_lease(&mut lease).await.expect("the lease itself is still b's");
    b.release_lease(lease).await.expect("release");
    assert!(matches!(a.delete_definition("clicks").await, Err(StateError::NotFound(_))));
    // Created again: a greater incarnation, an empty checkpoint.
    let second = a.create_definition(&spec("clicks", Path::new("/y"))).await.expect("again");
    assert!(second > first);
    let lease = acquired(&a, "clicks", second).await;
    let fresh = a.checkpoints(&lease).load("clicks", "clicks-src").await.expect("claim");
    assert!(fresh.shards.is_empty(), "resumed the deleted definition's progress: {fresh:?}");
}

async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !cond().await {
        assert!(Instant::now() < deadline, "not within {PATIENCE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every line of every object under `dir`, with how many objects hold it.
fn delivered(dir: &Path) -> BTreeMap<String, usize> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, out);
            } else if !path.to_string_lossy().ends_with(".tmp") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    let mut seen = BTreeMap::new();
    for f in files {
        let body = std::fs::read_to_string(&f).unwrap_or_default();
        for line in body.lines() {
            *seen.entry(line.to_owned()).or_insert(0) += 1;
        }
    }
    seen
}

async fn put<S: StreamStore + Clone>(
    manager: &Manager<S>,
    name: &str,
    range: std::ops::Range<u32>,
) {
    let records = range
        .map(|i| NewRecord {
            partition_key: "k".into(),
            data: Bytes::from(format!("record-{i:04}")),
            explicit_hash_key: None,
            producer_timestamp_ms: None,
        })
        .collect();
    for r in manager.put(name, records).await.expect("put") {
        r.expect("record appended");
    }
}

async fn lease_holder(server: &NatsServer, name: &str) -> Option<String> {
    let kv = server.jetstream().await.get_key_value(format!("{PREFIX}firehose")).await.ok()?;
    let value = kv.get(format!("lease.{name}")).await.ok()??;
    let v: serde_json::Value = serde_json::from_slice(&value).ok()?;
    v.get("holder")?.as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_share_definitions_and_hand_delivery_over() {
    let server = NatsServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        LogStore::open(dir.path().join("store"), StoreConfig::default()).await.expect("open store");
    let out = dir.path().join("out");
    let mut managers = BTreeMap::new();
    for id in ["collector-a", "collector-b"] {
        let state: Arc<dyn FirehoseState> = Arc::new(state(&server, id).await);
        let data_dir = dir.path().join(id);
        let m = Manager::start_with_state(store.clone(), &data_dir, Vec::new(), None, state)
            .await
            .expect("start manager");
        managers.insert(id, m);
    }
    let (a, b) = (&managers["collector-a"], &managers["collector-b"]);
    a.create(spec("clicks", &out)).await.expect("create on a");
    // b has not read the definition yet; the state refuses the name anyway.
    let again = b.create(spec("clicks", &out)).await;
    assert!(matches!(again, Err(ManagerError::InUse(_))), "{again:?}");
    wait_for("b starts the delivery stream created on a", || async {
        b.describe("clicks").await.is_some()
    })
    .await;

    put(a, "clicks", 0..50).await;
    put(b, "clicks", 50..100).await;
    wait_for("the first 100 records delivered", || async { delivered(&out).len() == 100 }).await;
    let holder = lease_holder(&server, "clicks").await.expect("a lease holder");

    // The holder shuts down (releasing the lease); the other takes over.
    let survivor = if holder == "collector-a" { "collector-b" } else { "collector-a" };
    managers[holder.as_str()].shutdown().await;
    put(&managers[survivor], "clicks", 100..200).await;
    wait_for("all 200 records delivered", || async { delivered(&out).len() == 200 }).await;
    let seen = delivered(&out);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "records in more than one object: {twice:?}");
    assert_eq!(lease_holder(&server, "clicks").await.as_deref(), Some(survivor));

    // Deleted on the survivor: gone from the state.
    managers[survivor].delete("clicks").await.expect("delete");
    assert!(managers[survivor].describe("clicks").await.is_none());
    let s = state(&server, "observer").await;
    assert!(s.load_definitions().await.expect("load").is_empty());
    managers[survivor].shutdown().await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_stream_deleted_on_one_manager_stops_on_the_other() {
    let server = NatsServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        LogStore::open(dir.path().join("store"), StoreConfig::default()).await.expect("open store");
    let start = |id: &'static str| {
        let (store, data_dir) = (store.clone(), dir.path().join(id));
        let server = &server;
        async move {
            let state: Arc<dyn FirehoseState> = Arc::new(state(server, id).await);
            Manager::start_with_state(store, &data_dir, Vec::new(), None, state)
                .await
                .expect("start manager")
        }
    };
    let a = start("collector-a").await;
    let b = start("collector-b").await;
    b.create(spec("views", &dir.path().join("out"))).await.expect("create on b");
    wait_for("a starts it", || async { a.describe("views").await.is_some() }).await;
    b.delete("views").await.expect("delete on b");
    wait_for("a stops it", || async { a.describe("views").await.is_none() }).await;
    a.shutdown().await;
    b.shutdown().await;
    store.close().await;
}

/// A [`KvState`] whose lease writes (acquire, renew) can be cut off, as by a
/// network partition, while checkpoint writes still pass.
#[derive(Debug)]
struct Partitioned {
    inner: KvState,
    cut: AtomicBool,
}

impl Partitioned {
    fn refused<'a, T: Send + 'a>(&self, op: &'static str) -> BoxFuture<'a, Result<T, StateError>> {
        Box::pin(async move {
            Err(StateError::Kv { op, key: "lease".into(), source: "partitioned (test)".into() })
        })
    }
}

impl FirehoseState for Partitioned {
    fn shared(&self) -> bool {
        self.inner.shared()
    }
    fn lease_timing(&self) -> Option<LeaseTiming> {
        self.inner.lease_timing()
    }
    fn load_definitions(&self) -> BoxFuture<'_, Result<Vec<Definition>, StateError>> {
        self.inner.load_definitions()
    }
    fn create_definition<'a>(
        &'a self,
        spec: &'a DeliverySpec,
    ) -> BoxFuture<'a, Result<u64, StateError>> {
        self.inner.create_definition(spec)
    }
    fn delete_definition<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), StateError>> {
        self.inner.delete_definition(name)
    }
    fn delete_checkpoint<'a>(
        &'a self,
        name: &'a str,
        incarnation: u64,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        self.inner.delete_checkpoint(name, incarnation)
    }
    fn acquire_lease<'a>(
        &'a self,
        name: &'a str,
        incarnation: u64,
    ) -> BoxFuture<'a, Result<LeaseAttempt, StateError>> {
        if self.cut.load(Ordering::SeqCst) {
            return self.refused("acquiring");
        }
        self.inner.acquire_lease(name, incarnation)
    }
    fn renew_lease<'a>(&'a self, lease: &'a mut Lease) -> BoxFuture<'a, Result<(), StateError>> {
        if self.cut.load(Ordering::SeqCst) {
            return self.refused("renewing");
        }
        self.inner.renew_lease(lease)
    }
    fn release_lease(&self, lease: Lease) -> BoxFuture<'_, Result<(), StateError>> {
        self.inner.release_lease(lease)
    }
    fn checkpoints(&self, lease: &Lease) -> Arc<dyn CheckpointStore> {
        self.inner.checkpoints(lease)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_cannot_renew_stops_delivering_and_another_takes_over() {
    let server = NatsServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        LogStore::open(dir.path().join("store"), StoreConfig::default()).await.expect("open store");
    let out = dir.path().join("out");
    let a_state =
        Arc::new(Partitioned { inner: state(&server, "collector-a").await, cut: false.into() });
    let as_dyn: Arc<dyn FirehoseState> = a_state.clone();
    let a =
        Manager::start_with_state(store.clone(), &dir.path().join("a"), Vec::new(), None, as_dyn)
            .await
            .expect("start a");
    a.create(spec("clicks", &out)).await.expect("create");
    put(&a, "clicks", 0..50).await;
    wait_for("a delivers", || async { delivered(&out).len() == 50 }).await;
    assert_eq!(lease_holder(&server, "clicks").await.as_deref(), Some("collector-a"));

    // a can no longer renew: within a lease duration it must stop delivering,
    // though its checkpoint writes would still succeed.
    a_state.cut.store(true, Ordering::SeqCst);
    tokio::time::sleep(TIMING.duration).await;
    put(&a, "clicks", 50..100).await;
    // Ten polls' time: a delivering holder would have written them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(delivered(&out).len(), 50, "a kept delivering without its lease");

    // b starts and takes the lease over once it has seen it unrenewed for a
    // whole duration, then delivers the rest.
    let b_state: Arc<dyn FirehoseState> = Arc::new(state(&server, "collector-b").await);
    let b =
        Manager::start_with_state(store.clone(), &dir.path().join("b"), Vec::new(), None, b_state)
            .await
            .expect("start b");
    wait_for("b delivers the rest", || async { delivered(&out).len() == 100 }).await;
    let twice: Vec<_> = delivered(&out).into_iter().filter(|(_, n)| *n != 1).collect();
    assert!(twice.is_empty(), "records in more than one object: {twice:?}");
    assert_eq!(lease_holder(&server, "clicks").await.as_deref(), Some("collector-b"));
    a.shutdown().await;
    b.shutdown().await;
    store.close().await;
}

/// The delivery assumed dense offsets (next batch at last offset + 1) and
/// stopped after each shard's first batch on the JetStream store, whose
/// offsets are `js_seq << 16 | index`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_jetstream_store_delivery_goes_on_past_a_shards_first_batch() {
    let server = NatsServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = JetStreamSettings {
        prefix: "sparse".into(),
        ..JetStreamSettings::from_url(&server.url()).expect("settings")
    };
    let store = JetStreamStore::connect(settings).await.expect("connect the store");
    let out = dir.path().join("out");
    let manager = Manager::start_with_jetstream(
        store.clone(),
        &dir.path().join("data"),
        Vec::new(),
        None,
        store.context().clone(),
        "sparse_",
        "collector-a",
    )
    .await
    .expect("start manager");
    manager.create(spec("clicks", &out)).await.expect("create");
    // One put a batch (interval 0: each poll delivers what it read), each
    // delivered before the next is put.
    for round in 0..3u32 {
        put(&manager, "clicks", round * 10..round * 10 + 10).await;
        let want = (round as usize + 1) * 10;
        wait_for(&format!("{want} records delivered"), || async { delivered(&out).len() == want })
            .await;
    }
    let seen = delivered(&out);
    assert!(seen.values().all(|n| *n == 1), "records in more than one object: {seen:?}");
    manager.shutdown().await;
    store.close().await;
}
