//! File checkpoints: where each followed file has been read up to, counting
//! only lines that are in the spool.
//!
//! # Where they live
//!
//! The table rides in the `meta` of every spool entry (see [`EntryMeta`]),
//! written in the same CRC'd entry as the batch whose lines advanced it. So
//! "this line is spooled" and "the checkpoint is past this line" are one
//! atomic write: after a `kill -9` at any moment, the newest intact entry's
//! table says exactly which lines are in the spool, and the tailers resume
//! there (from [`crate::spool::Spool::last_meta`]). Lines the batcher held but
//! had not spooled are not in the table, so they are read again.
//!
//! The table holds one [`Checkpoint`] per file input and file (device,
//! inode); the newest line's `end_offset` wins. Files a tailer starts are
//! entered at their start offset (so a file rotated while the agent is
//! stopped is found again), and files a tailer lets go are removed (so a
//! recycled inode never meets a stale checkpoint).
//!
//! A human-readable copy, `checkpoints.json` in the spool directory, is
//! written atomically (temp file, fsync, rename, fsync of the directory) for
//! operators and `weir-agent status`; the agent never reads it back.
//!
//! # Meta format (JSON)
//!
//! ```json
//! {"stream":"logs","files":{"app":[{"id":{"dev":2049,"ino":131,"fingerprint":1234,
//!   "fingerprint_len":256},"path":"/var/log/app.log","offset":81920}]}}
//! ```
//!
//! `stream` is the target stream of the entry's batch, empty for a
//! checkpoint-only entry (no records, nothing to send).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::tail::Checkpoint;

/// A file's key in the table: device and inode.
pub type FileKey = (u64, u64);

/// The key of a checkpoint.
pub fn key_of(c: &Checkpoint) -> FileKey {
    (c.id.dev, c.id.ino)
}

/// What every spool entry's `meta` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// The batch's target stream; empty for a checkpoint-only entry.
    pub stream: String,
    /// Per file input: the checkpoints of its files.
    #[serde(default)]
    pub files: BTreeMap<String, Vec<Checkpoint>>,
}

/// Only the stream of an entry's meta (what the shipper needs).
#[derive(Debug, Deserialize)]
pub struct MetaStream {
    /// The batch's target stream.
    pub stream: String,
}

/// The checkpoint table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    inputs: BTreeMap<String, HashMap<FileKey, Checkpoint>>,
}

impl Table {
    /// The table of a spool entry's meta.
    ///
    /// # Errors
    /// The meta is not the JSON this module writes.
    pub fn from_meta(meta: &[u8]) -> Result<Self, serde_json::Error> {
        let meta: EntryMeta = serde_json::from_slice(meta)?;
        let inputs = meta
            .files
            .into_iter()
            .map(|(input, list)| (input, list.into_iter().map(|c| (key_of(&c), c)).collect()))
            .collect();
        Ok(Self { inputs })
    }

    /// The checkpoints of one input, for its tailer.
    pub fn for_input(&self, input: &str) -> Vec<Checkpoint> {
        self.inputs.get(input).map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// Records `c` as the file's checkpoint (the newest wins).
    pub fn set(&mut self, input: &str, c: Checkpoint) {
        match self.inputs.get_mut(input) {
            Some(m) => {
                m.insert(key_of(&c), c);
            }
            None => {
                self.inputs.insert(input.to_owned(), HashMap::from([(key_of(&c), c)]));
            }
        }
    }

    /// Removes a file's checkpoint.
    pub fn forget(&mut self, input: &str, key: FileKey) {
        if let Some(m) = self.inputs.get_mut(input) {
            m.remove(&key);
            if m.is_empty() {
                self.inputs.remove(input);
            }
        }
    }

    /// Number of files in the table.
    pub fn len(&self) -> usize {
        self.inputs.values().map(HashMap::len).sum()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    /// The meta of an entry for `stream`, holding this table with `updates`
    /// applied on top (without changing the table: the append may be
    /// refused).
    ///
    /// # Errors
    /// Serialisation failed (it does not for the types written here).
    pub fn meta_with<'a>(
        &'a self,
        stream: &str,
        updates: impl IntoIterator<Item = (&'a str, &'a Checkpoint)>,
    ) -> Result<Vec<u8>, serde_json::Error> {
        let mut files: BTreeMap<&str, BTreeMap<FileKey, &Checkpoint>> = self
            .inputs
            .iter()
            .map(|(input, m)| (input.as_str(), m.iter().map(|(k, c)| (*k, c)).collect()))
            .collect();
        for (input, c) in updates {
            files.entry(input).or_default().insert(key_of(c), c);
        }
        #[derive(Serialize)]
        struct Out<'a> {
            stream: &'a str,
            files: BTreeMap<&'a str, Vec<&'a Checkpoint>>,
        }
        let out = Out {
            stream,
            files: files.into_iter().map(|(i, m)| (i, m.into_values().collect())).collect(),
        };
        serde_json::to_vec(&out)
    }

    /// Writes the human-readable copy atomically: temp file, fsync, rename,
    /// fsync of the directory.
    ///
    /// # Errors
    /// The file operations.
    pub fn write_file(&self, path: &Path) -> io::Result<()> {
        #[derive(Serialize)]
        struct Row {
            path: String,
            offset: u64,
            dev: u64,
            ino: u64,
        }
        let view: BTreeMap<&str, Vec<Row>> = self
            .inputs
            .iter()
            .map(|(input, m)| {
                let mut rows: Vec<Row> = m
                    .values()
                    .map(|c| Row {
                        path: c.path.to_string_lossy().into_owned(),
                        offset: c.offset,
                        dev: c.id.dev,
                        ino: c.id.ino,
                    })
                    .collect();
                rows.sort_by(|a, b| a.path.cmp(&b.path));
                (input.as_str(), rows)
            })
            .collect();
        let bytes = serde_json::to_vec_pretty(&view).map_err(io::Error::other)?;
        weir_wire::durable_file::replace_file(path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tail::FileId;

    fn cp(ino: u64, offset: u64) -> Checkpoint {
        Checkpoint {
            id: FileId { dev: 1, ino, fingerprint: 7, fingerprint_len: 10 },
            path: format!("/l/{ino}.log").into(),
            logical: format!("/l/{ino}.log").into(),
            offset,
        }
    }

    #[test]
    fn meta_round_trip_with_updates_on_top() {
        let mut t = Table::default();
        t.set("app", cp(5, 10));
        t.set("app", cp(6, 20));
        t.set("other", cp(5, 99));
        let update = cp(5, 30);
        let meta = t.meta_with("logs", [("app", &update)]).expect("meta");
        let back = Table::from_meta(&meta).expect("parse");
        let mut app = back.for_input("app");
        app.sort_by_key(|c| c.id.ino);
        assert_eq!(app, vec![cp(5, 30), cp(6, 20)]);
        assert_eq!(back.for_input("other"), vec![cp(5, 99)]);
        // The table itself is unchanged until the append succeeds.
        assert!(t.for_input("app").contains(&cp(5, 10)));
        let stream: MetaStream = serde_json::from_slice(&meta).expect("stream");
        assert_eq!(stream.stream, "logs");
    }

    #[test]
    fn paths_that_are_not_utf8_keep_exact_checkpoints() {
        use std::os::unix::ffi::OsStrExt;
        let path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(b"/l/caf\xe9.log"));
        let mut t = Table::default();
        t.set("app", Checkpoint { path: path.clone(), ..cp(5, 10) });
        let meta = t.meta_with("logs", []).expect("meta");
        let back = Table::from_meta(&meta).expect("parse");
        assert_eq!(back.for_input("app")[0].path, path);
    }

    #[test]
    fn forget_removes_and_newest_wins() {
        let mut t = Table::default();
        t.set("app", cp(5, 10));
        t.set("app", cp(5, 4));
        assert_eq!(t.for_input("app"), vec![cp(5, 4)]);
        t.forget("app", (1, 5));
        assert!(t.is_empty());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn human_readable_file_is_written_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("checkpoints.json");
        let mut t = Table::default();
        t.set("app", cp(5, 10));
        t.write_file(&path).expect("write");
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(v["app"][0]["offset"], 10);
        assert!(!dir.path().join("checkpoints.json.tmp").exists());
    }
}
