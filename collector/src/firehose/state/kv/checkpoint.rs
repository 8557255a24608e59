//! `checkpoint.<name>` in the KV bucket: claimed by a new lease holder,
//! saved by compare-and-set on the revision of the holder's own last write,
//! tombstoned when its definition is deleted (the fencing argument is in the
//! header of `kv`).

use std::path::PathBuf;
use std::sync::Mutex;

use async_nats::jetstream::kv::{Operation, Store, UpdateErrorKind};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{CLAIM_ATTEMPTS, checkpoint_key, contended, encode, kv_error};
use crate::firehose::checkpoint::Checkpoint;
use crate::firehose::error::FirehoseError;
use crate::firehose::state::{CheckpointStore, Lease, StateError};

/// The value of `checkpoint.<name>`.
#[derive(Debug, Serialize, Deserialize)]
struct CheckpointValue {
    incarnation: u64,
    fencing_token: u64,
    holder: String,
    checkpoint: Option<Checkpoint>,
}

/// Writes the tombstone of the deleted definition `incarnation` of `name`
/// (see the module header of `kv`), unless a later incarnation owns the key.
pub(super) async fn write_tombstone(
    kv: &Store,
    bucket: &str,
    holder: &str,
    name: &str,
    incarnation: u64,
) -> Result<(), StateError> {
    let key = checkpoint_key(name);
    let value = encode(
        &CheckpointValue {
            incarnation,
            fencing_token: 0,
            holder: holder.to_owned(),
            checkpoint: None,
        },
        "checkpoint",
    )?;
    for _ in 0..CLAIM_ATTEMPTS {
        let entry = kv.entry(&key).await.map_err(kv_error("reading", &key))?;
        let expected = match entry {
            None => 0,
            Some(e) => {
                let later = e.operation == Operation::Put
                    && serde_json::from_slice::<CheckpointValue>(&e.value)
                        .is_ok_and(|v| v.incarnation > incarnation);
                if later {
                    return Ok(());
                }
                e.revision
            }
        };
        match kv.update(&key, value.clone(), expected).await {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {}
            Err(e) => return Err(kv_error("writing tombstone", &key)(e)),
        }
    }
    Err(contended(bucket, &key))
}

/// `checkpoint.<name>` as written by one lease holder: claimed by
/// [`load`](CheckpointStore::load), then saved by compare-and-set on the
/// revision of the holder's own last write (see the header of `kv`).
#[derive(Debug)]
pub(super) struct KvCheckpoints {
    kv: Store,
    bucket: String,
    key: String,
    name: String,
    holder: String,
    token: u64,
    incarnation: u64,
    /// Revision of this holder's last write; `None` before the claim and
    /// once fenced.
    revision: Mutex<Option<u64>>,
}

impl KvCheckpoints {
    pub(super) fn new(kv: Store, bucket: &str, lease: &Lease) -> Self {
        Self {
            kv,
            bucket: bucket.to_owned(),
            key: checkpoint_key(lease.delivery_stream()),
            name: lease.delivery_stream().to_owned(),
            holder: lease.holder().to_owned(),
            token: lease.token(),
            incarnation: lease.incarnation(),
            revision: Mutex::new(None),
        }
    }

    fn fenced(&self, reason: String) -> FirehoseError {
        FirehoseError::State(StateError::Fenced {
            location: format!("{}/{}", self.bucket, self.key),
            reason,
        })
    }

    fn set_revision(&self, revision: Option<u64>) {
        *self.revision.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = revision;
    }

    fn value(&self, checkpoint: Checkpoint) -> Result<Bytes, FirehoseError> {
        let value = CheckpointValue {
            incarnation: self.incarnation,
            fencing_token: self.token,
            holder: self.holder.clone(),
            checkpoint: Some(checkpoint),
        };
        encode(&value, &self.key).map_err(FirehoseError::State)
    }

    async fn claim(
        &self,
        delivery_stream: &str,
        source_stream: &str,
    ) -> Result<Checkpoint, FirehoseError> {
        let location = self.location();
        let gone = || {
            FirehoseError::State(StateError::DefinitionGone {
                name: self.name.clone(),
                incarnation: self.incarnation,
            })
        };
        for _ in 0..CLAIM_ATTEMPTS {
            let entry = self
                .kv
                .entry(&self.key)
                .await
                .map_err(kv_error("reading", &self.key))
                .map_err(FirehoseError::State)?;
            let fresh = || Checkpoint::new(delivery_stream, source_stream);
            let (expected, checkpoint) = match entry {
                None => (0, fresh()),
                Some(e) if e.operation != Operation::Put => (e.revision, fresh()),
                Some(e) => {
                    let v: CheckpointValue = serde_json::from_slice(&e.value).map_err(|err| {
                        FirehoseError::Checkpoint {
                            path: location.clone(),
                            reason: format!("not a checkpoint value: {err}"),
                        }
                    })?;
                    if v.incarnation > self.incarnation {
                        return Err(gone());
                    }
                    if v.incarnation < self.incarnation {
                        // Left by an earlier definition of the same name.
                        (e.revision, fresh())
                    } else {
                        let Some(c) = v.checkpoint else { return Err(gone()) };
                        if v.fencing_token > self.token {
                            return Err(self.fenced(format!(
                                "claimed by {:?} with fencing token {}, later than this lease's {}",
                                v.holder, v.fencing_token, self.token
                            )));
                        }
                        (e.revision, c.checked(&location, delivery_stream, source_stream)?)
                    }
                }
            };
            let value = self.value(checkpoint.clone())?;
            match self.kv.update(&self.key, value, expected).await {
                Ok(revision) => {
                    self.set_revision(Some(revision));
                    return Ok(checkpoint);
                }
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {}
                Err(e) => return Err(FirehoseError::State(kv_error("claiming", &self.key)(e))),
            }
        }
        Err(FirehoseError::State(contended(&self.bucket, &self.key)))
    }

    async fn store(&self, checkpoint: Checkpoint) -> Result<(), FirehoseError> {
        let revision = *self.revision.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(revision) = revision else {
            return Err(self.fenced("not claimed by this holder (or fenced before)".into()));
        };
        let value = self.value(checkpoint)?;
        match self.kv.update(&self.key, value, revision).await {
            Ok(revision) => {
                self.set_revision(Some(revision));
                Ok(())
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                self.set_revision(None);
                Err(self.fenced(
                    "changed since this holder's last write: a later lease holder claimed it, \
                     or the delivery stream was deleted"
                        .into(),
                ))
            }
            Err(e) => Err(FirehoseError::State(kv_error("saving", &self.key)(e))),
        }
    }
}

impl CheckpointStore for KvCheckpoints {
    fn location(&self) -> PathBuf {
        PathBuf::from(format!("nats-kv:{}/{}", self.bucket, self.key))
    }

    fn load<'a>(
        &'a self,
        delivery_stream: &'a str,
        source_stream: &'a str,
    ) -> BoxFuture<'a, Result<Checkpoint, FirehoseError>> {
        Box::pin(self.claim(delivery_stream, source_stream))
    }

    fn save(&self, checkpoint: Checkpoint) -> BoxFuture<'_, Result<(), FirehoseError>> {
        Box::pin(self.store(checkpoint))
    }
}
