//! The catalog on JetStream: one KV entry per stream, changed only by
//! compare-and-set on its revision, and this collector's cache of it.
//!
//! Bucket `<prefix>_catalog` (history 1, file storage, the store's
//! replicas), keys:
//!
//! - `stream.<name>`: the stream's [`StreamMeta`] as JSON, the same shape the
//!   embedded store's `catalog.json` holds per stream (shards with hash
//!   ranges as decimal strings, lineage, `closed` with the end offset and
//!   time, retention, status, mode, write limits, tags). A shard closed by a
//!   reshard whose JetStream stream is not sealed yet has `end_offset` =
//!   [`PENDING_END`].
//! - `next_stream_id`: the next stream id, a decimal number, incremented by
//!   compare-and-set; ids are never reused.
//! - `api_token_key`: 32 random bytes, created once (create-if-absent), the
//!   key every collector signs shard iterators and page tokens with.
//!
//! Every change reads an entry, computes the next value and writes it with
//! `update(key, value, revision)`: of two collectors changing the same
//! stream at once, exactly one write succeeds; the other reads again and
//! retries its operation on the new value (or fails if it no longer
//! applies, such as a split of a shard the other closed).
//!
//! The cache keeps each stream's entry for [`CACHE_TTL`]; appends route with
//! it (a stale entry only sends records to a shard that has since been
//! sealed, whose publish fails, and the append re-reads and reroutes), while
//! administrative reads (describe, list) always read the bucket.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;

use super::super::catalog::StreamMeta;
use super::super::error::StoreError;
use super::backend_error;

/// How long a cached stream entry routes appends before it is read again.
pub const CACHE_TTL: Duration = Duration::from_secs(1);
/// `end_offset` of a closed shard whose JetStream stream is not sealed yet.
pub const PENDING_END: u64 = u64::MAX;
/// How many times a compare-and-set change is retried against newer values.
pub const MAX_CAS_RETRIES: usize = 32;
const STREAM_KEY_PREFIX: &str = "stream.";
const NEXT_ID_KEY: &str = "next_stream_id";
const TOKEN_KEY: &str = "api_token_key";

/// A stream's entry and the revision it was read at.
#[derive(Debug, Clone)]
pub struct Versioned {
    /// The stream.
    pub meta: StreamMeta,
    /// Its KV revision.
    pub revision: u64,
}

/// The catalog bucket and the cache.
pub struct KvCatalog {
    kv: kv::Store,
    cache: Mutex<HashMap<String, (Versioned, Instant)>>,
}

/// Opens `bucket`, creating it (with `replicas`) if missing. The bucket's
/// stream is created directly, with the settings a KV bucket has, since
/// async-nats's `create_key_value` first reads the account info, which it
/// cannot parse from a 2.9 server.
///
/// # Errors
/// The bucket can be neither opened nor created (for example more replicas
/// than the cluster has servers).
pub async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
    description: &str,
) -> Result<kv::Store, StoreError> {
    if let Ok(kv) = js.get_key_value(bucket).await {
        return Ok(kv);
    }
    let config = jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description.into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_bytes: -1,
        max_message_size: -1,
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        num_replicas: replicas,
        ..jetstream::stream::Config::default()
    };
    if let Err(e) = js.create_stream(config).await
        && js.get_key_value(bucket).await.is_err()
    {
        return Err(backend_error("creating the catalog bucket", e));
    }
    js.get_key_value(bucket).await.map_err(|e| backend_error("opening the catalog bucket", e))
}

impl KvCatalog {
    /// The catalog in `kv`.
    pub fn new(kv: kv::Store) -> Self {
        Self { kv, cache: Mutex::new(HashMap::new()) }
    }

    /// Reads a stream's entry from the bucket (and refreshes the cache).
    ///
    /// # Errors
    /// [`StoreError::StreamNotFound`], or the bucket cannot be read.
    pub async fn read(&self, name: &str) -> Result<Versioned, StoreError> {
        let entry = self
            .kv
            .entry(format!("{STREAM_KEY_PREFIX}{name}"))
            .await
            .map_err(|e| backend_error("reading the catalog", e))?;
        let v = match entry {
            Some(e) if e.operation == kv::Operation::Put => Versioned {
                meta: serde_json::from_slice(&e.value).map_err(|err| {
                    StoreError::InvalidArgument(format!("catalog entry of {name:?}: {err}"))
                })?,
                revision: e.revision,
            },
            _ => {
                self.forget(name);
                return Err(StoreError::StreamNotFound(name.to_owned()));
            }
        };
        if let Ok(mut c) = self.cache.lock() {
            c.insert(name.to_owned(), (v.clone(), Instant::now()));
        }
        Ok(v)
    }

    /// A stream's entry from the cache if fresh, else from the bucket.
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub async fn cached(&self, name: &str) -> Result<Versioned, StoreError> {
        let hit = self.cache.lock().ok().and_then(|c| {
            c.get(name).filter(|(_, at)| at.elapsed() < CACHE_TTL).map(|(v, _)| v.clone())
        });
        match hit {
            Some(v) => Ok(v),
            None => self.read(name).await,
        }
    }

    /// Drops a stream from the cache.
    pub fn forget(&self, name: &str) {
        if let Ok(mut c) = self.cache.lock() {
            c.remove(name);
        }
    }

    /// Writes a new stream's entry if the name is free.
    ///
    /// # Errors
    /// [`StoreError::StreamExists`], or the bucket cannot be written.
    pub async fn create(&self, meta: &StreamMeta) -> Result<u64, StoreError> {
        let value = to_json(meta)?;
        match self.kv.create(format!("{STREAM_KEY_PREFIX}{}", meta.name), value).await {
            Ok(rev) => Ok(rev),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                Err(StoreError::StreamExists(meta.name.clone()))
            }
            Err(e) => Err(backend_error("writing the catalog", e)),
        }
    }

    /// Replaces a stream's entry read at `revision`; `Ok(None)` if another
    /// collector changed it since (read again and retry).
    ///
    /// # Errors
    /// The bucket cannot be written.
    pub async fn update(
        &self,
        meta: &StreamMeta,
        revision: u64,
    ) -> Result<Option<u64>, StoreError> {
        let value = to_json(meta)?;
        match self.kv.update(format!("{STREAM_KEY_PREFIX}{}", meta.name), value, revision).await {
            Ok(rev) => {
                let v = Versioned { meta: meta.clone(), revision: rev };
                if let Ok(mut c) = self.cache.lock() {
                    c.insert(meta.name.clone(), (v, Instant::now()));
                }
                Ok(Some(rev))
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                self.forget(&meta.name);
                Ok(None)
            }
            Err(e) => Err(backend_error("writing the catalog", e)),
        }
    }

    /// Removes a stream's entry.
    ///
    /// # Errors
    /// The bucket cannot be written.
    pub async fn remove(&self, name: &str) -> Result<(), StoreError> {
        self.forget(name);
        self.kv
            .delete(format!("{STREAM_KEY_PREFIX}{name}"))
            .await
            .map_err(|e| backend_error("writing the catalog", e))
    }

    /// Every stream's entry.
    ///
    /// # Errors
    /// The bucket cannot be read.
    pub async fn all(&self) -> Result<Vec<StreamMeta>, StoreError> {
        let mut keys = self.kv.keys().await.map_err(|e| backend_error("listing the catalog", e))?;
        let mut names = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(|e| backend_error("listing the catalog", e))?;
            if let Some(name) = k.strip_prefix(STREAM_KEY_PREFIX) {
                names.push(name.to_owned());
            }
        }
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            match self.read(&n).await {
                Ok(v) => out.push(v.meta),
                Err(StoreError::StreamNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Takes the next stream id.
    ///
    /// # Errors
    /// The bucket cannot be written, or too many collectors raced.
    pub async fn next_stream_id(&self) -> Result<u64, StoreError> {
        for _ in 0..MAX_CAS_RETRIES {
            let entry =
                self.kv.entry(NEXT_ID_KEY).await.map_err(|e| backend_error("reading ids", e))?;
            let (id, revision) = match entry {
                Some(e) if e.operation == kv::Operation::Put => {
                    let id = std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or_else(|| {
                            StoreError::InvalidArgument(
                                "catalog next_stream_id is not a number".into(),
                            )
                        })?;
                    (id, Some(e.revision))
                }
                _ => (1, None),
            };
            let next = Bytes::from((id + 1).to_string());
            let won = match revision {
                Some(r) => self.kv.update(NEXT_ID_KEY, next, r).await.is_ok(),
                None => self.kv.create(NEXT_ID_KEY, next).await.is_ok(),
            };
            if won {
                return Ok(id);
            }
        }
        Err(StoreError::LimitExceeded("too many concurrent stream creations".into()))
    }

    /// The shared API token key, created on first use.
    ///
    /// # Errors
    /// The bucket cannot be read or written, or the entry is not 32 bytes.
    pub async fn token_key(&self) -> Result<[u8; 32], StoreError> {
        for _ in 0..2 {
            if let Some(v) =
                self.kv.get(TOKEN_KEY).await.map_err(|e| backend_error("reading the key", e))?
            {
                return <[u8; 32]>::try_from(v.as_ref()).map_err(|_| {
                    StoreError::InvalidArgument("catalog api_token_key is not 32 bytes".into())
                });
            }
            let key: [u8; 32] = rand::random();
            // Losing a race is fine: the next read returns the winner's key.
            let _ = self.kv.create(TOKEN_KEY, Bytes::copy_from_slice(&key)).await;
        }
        Err(StoreError::InvalidArgument("catalog api_token_key cannot be created".into()))
    }
}

fn to_json(meta: &StreamMeta) -> Result<Bytes, StoreError> {
    serde_json::to_vec(meta)
        .map(Bytes::from)
        .map_err(|e| StoreError::InvalidArgument(format!("catalog entry: {e}")))
}
