//! The catalog: every stream's metadata, persisted atomically.
//!
//! One JSON file, `<data-dir>/catalog.json`, holds the streams, their shards
//! (hash ranges as decimal strings, parent/child lineage, open or closed with
//! the end offset), retention and status. It is small and changes only on
//! administrative operations (create, delete, reshard, retention), so it is
//! rewritten whole each time: written to `catalog.json.tmp`, fsync'd, renamed
//! over `catalog.json`, and the directory fsync'd. A crash leaves either the
//! old or the new catalog, never a mix. A catalog that does not parse stops
//! the store from opening (it is never silently replaced).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use weir_wire::HashRange;

use super::error::StoreError;
use weir_wire::durable_file;

/// Version of the catalog's JSON layout.
pub const CATALOG_VERSION: u32 = 1;
const FILE_NAME: &str = "catalog.json";

/// All streams.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Catalog {
    /// Layout version ([`CATALOG_VERSION`]).
    pub version: u32,
    /// Id the next created stream gets; ids are never reused, so a stream
    /// created again under an old name has fresh directories and positions.
    pub next_stream_id: u64,
    /// The streams.
    pub streams: Vec<StreamMeta>,
}

impl Default for Catalog {
    fn default() -> Self {
        Self { version: CATALOG_VERSION, next_stream_id: 1, streams: Vec::new() }
    }
}

/// Life-cycle state of a stream (Kinesis's StreamStatus names).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StreamStatus {
    /// Being created.
    Creating,
    /// Readable and writable.
    Active,
    /// Being resharded or reconfigured.
    Updating,
    /// Being deleted; finished at the next start if interrupted.
    Deleting,
}

impl StreamStatus {
    /// Kinesis's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "CREATING",
            Self::Active => "ACTIVE",
            Self::Updating => "UPDATING",
            Self::Deleting => "DELETING",
        }
    }
}

/// One stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StreamMeta {
    /// Unique id; names the stream's directory.
    pub id: u64,
    /// Name (1–128 of `[a-zA-Z0-9_.-]`).
    pub name: String,
    /// Status.
    pub status: StreamStatus,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
    /// Retention period in hours (24..=8760).
    pub retention_hours: u32,
    /// Index the next created shard gets.
    pub next_shard_index: u64,
    /// Every shard not yet removed by retention, open and closed, by index.
    pub shards: Vec<ShardMeta>,
    /// Capacity mode as reported to Kinesis clients (absent: PROVISIONED).
    #[serde(default)]
    pub mode: StreamMode,
    /// Whether each shard is held to Kinesis's per-shard write limits (see
    /// `throttle`); absent: off.
    #[serde(default)]
    pub write_limits: bool,
    /// The stream's tags (at most [`MAX_TAGS_PER_STREAM`]); absent: none.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// Most tags one stream carries (Kinesis's limit).
pub const MAX_TAGS_PER_STREAM: usize = 50;

/// A stream's capacity mode (Kinesis's StreamModeDetails names).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StreamMode {
    /// Shard count set by the operator.
    #[default]
    Provisioned,
    /// Capacity managed by the collector.
    OnDemand,
}

impl StreamMode {
    /// Kinesis's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioned => "PROVISIONED",
            Self::OnDemand => "ON_DEMAND",
        }
    }
}

/// One shard.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShardMeta {
    /// Index (`shardId-<index:012>`).
    pub index: u64,
    /// First hash key, decimal.
    #[serde(with = "decimal")]
    pub hash_start: u128,
    /// Last hash key (inclusive), decimal.
    #[serde(with = "decimal")]
    pub hash_end: u128,
    /// The shard this one was split or merged from.
    pub parent: Option<u64>,
    /// The second parent of a merge.
    pub adjacent_parent: Option<u64>,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
    /// Set when the shard was closed by a reshard.
    pub closed: Option<ClosedMeta>,
}

/// How a shard was closed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClosedMeta {
    /// Offset after its last record (its records are `..end_offset`).
    pub end_offset: u64,
    /// When it was closed, ms since the Unix epoch.
    pub closed_ms: u64,
}

impl ShardMeta {
    /// An open shard `index` over `range`, created at `created_ms`, the
    /// child of `parent` (and `adjacent_parent`, for a merge) if any.
    pub fn open(
        index: u64,
        range: HashRange,
        parent: Option<u64>,
        adjacent_parent: Option<u64>,
        created_ms: u64,
    ) -> Self {
        Self {
            index,
            hash_start: range.start,
            hash_end: range.end,
            parent,
            adjacent_parent,
            created_ms,
            closed: None,
        }
    }

    /// The `count` shards of a new stream, splitting the hash key space
    /// evenly, indexes 0 to `count - 1`.
    ///
    /// # Errors
    /// [`StoreError::InvalidArgument`] for a count of 0.
    pub fn uniform(count: u64, created_ms: u64) -> Result<Vec<Self>, StoreError> {
        (0..count)
            .map(|i| {
                let r = HashRange::uniform(count, i)
                    .map_err(|e| StoreError::InvalidArgument(e.to_string()))?;
                Ok(Self::open(i, r, None, None, created_ms))
            })
            .collect()
    }

    /// The shard's hash range.
    pub fn range(&self) -> HashRange {
        HashRange { start: self.hash_start, end: self.hash_end }
    }

    /// Whether it takes writes.
    pub fn is_open(&self) -> bool {
        self.closed.is_none()
    }
}

impl StreamMeta {
    /// The shard with that index.
    pub fn shard(&self, index: u64) -> Option<&ShardMeta> {
        self.shards.iter().find(|s| s.index == index)
    }

    /// Open shards, ordered by hash range.
    pub fn open_shards(&self) -> Vec<&ShardMeta> {
        let mut open: Vec<&ShardMeta> = self.shards.iter().filter(|s| s.is_open()).collect();
        open.sort_by_key(|s| s.hash_start);
        open
    }
}

impl Catalog {
    /// The stream of that name.
    pub fn stream(&self, name: &str) -> Option<&StreamMeta> {
        self.streams.iter().find(|s| s.name == name)
    }

    /// The stream of that name, mutably.
    pub fn stream_mut(&mut self, name: &str) -> Option<&mut StreamMeta> {
        self.streams.iter_mut().find(|s| s.name == name)
    }

    /// Loads the catalog of a data directory; an absent file is an empty
    /// catalog (a fresh directory).
    ///
    /// # Errors
    /// The file exists but cannot be read or parsed, or has another version.
    pub fn load(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(FILE_NAME);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(StoreError::io("read", path, e)),
        };
        let catalog: Catalog = serde_json::from_str(&text).map_err(|e| {
            StoreError::io("parse", &path, std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })?;
        if catalog.version != CATALOG_VERSION {
            return Err(StoreError::io(
                "parse",
                path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "catalog version {} (this build reads {CATALOG_VERSION})",
                        catalog.version
                    ),
                ),
            ));
        }
        Ok(catalog)
    }

    /// Writes the catalog atomically: temp file, fsync, rename, fsync dir.
    ///
    /// # Errors
    /// Any I/O failure; the previous catalog is then still in place.
    pub fn save(&self, dir: &Path) -> Result<(), StoreError> {
        let path = dir.join(FILE_NAME);
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| StoreError::io("encode", &path, std::io::Error::other(e)))?;
        durable_file::replace_file(&path, &text).map_err(|e| StoreError::io("write", path, e))
    }

    /// The directory holding a stream's shards.
    pub fn stream_dir(root: &Path, stream_id: u64) -> PathBuf {
        root.join("streams").join(stream_id.to_string())
    }
}

/// The directory of one shard.
pub fn shard_dir(root: &Path, stream_id: u64, shard_index: u64) -> PathBuf {
    Catalog::stream_dir(root, stream_id).join(format!("shard-{shard_index:012}"))
}

/// `u128` as a decimal string, as Kinesis prints hash keys.
mod decimal {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|_| D::Error::custom(format!("not a 128-bit decimal: {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(Catalog::load(dir.path()).expect("load"), Catalog::default());
        let mut c = Catalog::default();
        c.streams.push(StreamMeta {
            id: 1,
            name: "s".into(),
            status: StreamStatus::Active,
            created_ms: 5,
            retention_hours: 24,
            next_shard_index: 1,
            shards: vec![ShardMeta {
                index: 0,
                hash_start: 0,
                hash_end: u128::MAX,
                parent: None,
                adjacent_parent: None,
                created_ms: 5,
                closed: Some(ClosedMeta { end_offset: 9, closed_ms: 6 }),
            }],
            mode: StreamMode::OnDemand,
            write_limits: true,
            tags: BTreeMap::from([("team".to_owned(), "edge".to_owned())]),
        });
        c.save(dir.path()).expect("save");
        assert_eq!(Catalog::load(dir.path()).expect("load"), c);
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).expect("read");
        assert!(text.contains("\"340282366920938463463374607431768211455\""), "{text}");
        assert!(!dir.path().join("catalog.json.tmp").exists());
    }

    #[test]
    fn a_catalog_written_before_stream_settings_existed_still_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = r#"{"version":1,"next_stream_id":2,"streams":[{"id":1,"name":"s",
            "status":"ACTIVE","created_ms":5,"retention_hours":24,"next_shard_index":1,
            "shards":[{"index":0,"hash_start":"0","hash_end":"9","parent":null,
            "adjacent_parent":null,"created_ms":5,"closed":null}]}]}"#;
        std::fs::write(dir.path().join(FILE_NAME), old).expect("write");
        let c = Catalog::load(dir.path()).expect("load");
        let s = &c.streams[0];
        assert_eq!((s.mode, s.write_limits, s.tags.len()), (StreamMode::Provisioned, false, 0));
    }

    #[test]
    fn refuses_a_damaged_catalog() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE_NAME), b"{\"version\":1,").expect("write");
        let err = Catalog::load(dir.path()).expect_err("must refuse");
        assert!(err.to_string().contains("catalog.json"), "{err}");
    }
}
