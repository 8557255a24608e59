//! [`FileState`]: the firehose state of a single collector, in its data
//! directory.
//!
//! - `<data-dir>/firehose-state/delivery-streams.json`: the API-created
//!   definitions, a JSON array of [`DeliverySpec`]s (pretty-printed),
//!   replaced atomically (temp file, fsync, rename, fsync the directory) with
//!   mode `0600`, as it can hold S3 and HTTP endpoint keys. Absent: none.
//! - `<data-dir>/firehose-state/<name>.checkpoint`: a delivery stream's
//!   checkpoint, the file format of [`checkpoint`](crate::firehose::checkpoint).
//!
//! Every incarnation is `0` (a deleted delivery stream's checkpoint file is
//! removed before the name can be used again) and the lease is always held:
//! the store's lock on the data directory already makes this collector the
//! only one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::{CheckpointStore, Definition, FirehoseState, Lease, LeaseAttempt, StateError};
use crate::firehose::checkpoint::Checkpoint;
use crate::firehose::error::FirehoseError;
use crate::firehose::manager::DeliverySpec;

/// The state directory under the data directory.
pub const STATE_DIR: &str = "firehose-state";
/// The file of API-created delivery streams in [`STATE_DIR`].
pub const STREAMS_FILE: &str = "delivery-streams.json";
/// The holder id of every file-state lease.
const LOCAL_HOLDER: &str = "local";

/// The state of one collector in `<data-dir>/firehose-state/`.
#[derive(Debug, Clone)]
pub struct FileState {
    dir: PathBuf,
}

impl FileState {
    /// The state under `data_dir` (nothing is read or created yet).
    pub fn new(data_dir: &Path) -> Self {
        Self { dir: data_dir.join(STATE_DIR) }
    }

    /// The checkpoint file of `name`.
    pub fn checkpoint_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.checkpoint"))
    }

    fn streams_file(&self) -> PathBuf {
        self.dir.join(STREAMS_FILE)
    }

    fn read_specs(&self) -> Result<Vec<DeliverySpec>, StateError> {
        let path = self.streams_file();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                location: path.display().to_string(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(StateError::Io { op: "reading", path, source }),
        }
    }

    fn write_specs(&self, specs: &[DeliverySpec]) -> Result<(), StateError> {
        let path = self.streams_file();
        std::fs::create_dir_all(&self.dir).map_err(|source| StateError::Io {
            op: "creating",
            path: self.dir.clone(),
            source,
        })?;
        let bytes = serde_json::to_vec_pretty(specs).map_err(|e| StateError::Corrupt {
            location: path.display().to_string(),
            reason: format!("encoding: {e}"),
        })?;
        // It can hold S3 secret keys and HTTP endpoint access keys.
        weir_wire::durable_file::replace_private_file(&path, &bytes)
            .map_err(|source| StateError::Io { op: "replacing", path: path.clone(), source })
    }
}

impl FirehoseState for FileState {
    fn shared(&self) -> bool {
        false
    }

    fn lease_timing(&self) -> Option<super::LeaseTiming> {
        None
    }

    fn load_definitions(&self) -> BoxFuture<'_, Result<Vec<Definition>, StateError>> {
        Box::pin(async move {
            Ok(self
                .read_specs()?
                .into_iter()
                .map(|spec| Definition { spec, incarnation: 0 })
                .collect())
        })
    }

    fn create_definition<'a>(
        &'a self,
        spec: &'a DeliverySpec,
    ) -> BoxFuture<'a, Result<u64, StateError>> {
        Box::pin(async move {
            let mut specs = self.read_specs()?;
            if specs.iter().any(|s| s.name == spec.name) {
                return Err(StateError::Exists(spec.name.clone()));
            }
            specs.push(spec.clone());
            self.write_specs(&specs)?;
            Ok(0)
        })
    }

    fn delete_definition<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            let mut specs = self.read_specs()?;
            let before = specs.len();
            specs.retain(|s| s.name != name);
            if specs.len() == before {
                return Err(StateError::NotFound(name.to_owned()));
            }
            self.write_specs(&specs)
        })
    }

    fn delete_checkpoint<'a>(
        &'a self,
        name: &'a str,
        _incarnation: u64,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            let path = self.checkpoint_path(name);
            match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(StateError::Io { op: "removing", path, source }),
            }
        })
    }

    fn acquire_lease<'a>(
        &'a self,
        name: &'a str,
        incarnation: u64,
    ) -> BoxFuture<'a, Result<LeaseAttempt, StateError>> {
        Box::pin(async move {
            Ok(LeaseAttempt::Acquired(Lease::new(name, LOCAL_HOLDER, 0, incarnation, None)))
        })
    }

    fn renew_lease<'a>(&'a self, _lease: &'a mut Lease) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async { Ok(()) })
    }

    fn release_lease(&self, _lease: Lease) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(async { Ok(()) })
    }

    fn checkpoints(&self, lease: &Lease) -> Arc<dyn CheckpointStore> {
        Arc::new(FileCheckpoints::new(self.checkpoint_path(lease.delivery_stream())))
    }
}

/// A checkpoint file (format in [`checkpoint`](crate::firehose::checkpoint)).
#[derive(Debug, Clone)]
pub struct FileCheckpoints {
    path: PathBuf,
}

impl FileCheckpoints {
    /// The checkpoint at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

impl CheckpointStore for FileCheckpoints {
    fn location(&self) -> PathBuf {
        self.path.clone()
    }

    fn load<'a>(
        &'a self,
        delivery_stream: &'a str,
        source_stream: &'a str,
    ) -> BoxFuture<'a, Result<Checkpoint, FirehoseError>> {
        let path = self.path.clone();
        let (name, source) = (delivery_stream.to_owned(), source_stream.to_owned());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || Checkpoint::load(&path, &name, &source))
                .await
                .map_err(|_| FirehoseError::Cancelled)?
        })
    }

    fn save(&self, checkpoint: Checkpoint) -> BoxFuture<'_, Result<(), FirehoseError>> {
        let path = self.path.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || checkpoint.save(&path))
                .await
                .map_err(|_| FirehoseError::Cancelled)?
        })
    }
}
