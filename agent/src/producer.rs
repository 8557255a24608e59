//! The agent's producer identity, which makes re-sent batches harmless.
//!
//! Every spool entry is one wire batch whose producer id is
//! `<device id>/<spool instance id>` and whose batch sequence number is the
//! entry's spool sequence number. The collector appends a given (producer id,
//! batch sequence number) at most once per shard, so a batch sent again after
//! a reconnect, a restart or a lost acknowledgement lands once.
//!
//! The instance id is random (64 bits, 16 hex digits), made when the spool
//! directory is first used and kept in its `instance-id` file (written
//! atomically). A spool that is wiped starts its sequence numbers at 0 again,
//! but under a new instance id, so its batches are never mistaken for the old
//! spool's. The device id is cut so that the whole producer id fits the
//! wire's [`MAX_PRODUCER_ID_BYTES`].

use std::io;
use std::path::{Path, PathBuf};

use weir_wire::MAX_PRODUCER_ID_BYTES;
use weir_wire::durable_file;

/// Name of the instance id file in the spool directory.
pub const INSTANCE_FILE: &str = "instance-id";
/// Hex digits of an instance id.
const INSTANCE_DIGITS: usize = 16;

/// Why the instance id could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    /// Reading or writing the file failed.
    #[error("spool instance id {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file holds something else than an instance id.
    #[error("spool instance id {path}: {content:?} is not 16 hex digits")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What it holds.
        content: String,
    },
}

/// Reads the spool's instance id, making one if the file does not exist.
/// `had_entries` says whether the spool was used before (a missing id then is
/// worth a warning; entries already spooled keep the producer id they were
/// encoded with, so nothing is mistaken either way).
///
/// # Errors
/// File errors, or a file that does not hold an instance id.
pub fn instance_id(spool_dir: &Path, had_entries: bool) -> Result<String, ProducerError> {
    let path = spool_dir.join(INSTANCE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if id.len() == INSTANCE_DIGITS && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(id.to_ascii_lowercase())
            } else {
                Err(ProducerError::Invalid { path, content: id.chars().take(40).collect() })
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = format!("{:016x}", rand::random::<u64>());
            if had_entries {
                tracing::warn!(path = %path.display(), "spool has history but no instance id: new batches get a new producer id");
            }
            durable_file::replace_file(&path, format!("{id}\n").as_bytes())
                .map_err(|source| ProducerError::Io { path: path.clone(), source })?;
            tracing::info!(instance = %id, "new spool instance");
            Ok(id)
        }
        Err(source) => Err(ProducerError::Io { path, source }),
    }
}

/// `<device id>/<instance id>`, the device id cut (at a character boundary)
/// so the whole id is at most [`MAX_PRODUCER_ID_BYTES`].
pub fn producer_id(device_id: &str, instance: &str) -> String {
    let room = MAX_PRODUCER_ID_BYTES.saturating_sub(instance.len() + 1);
    let mut cut = device_id.len().min(room);
    while !device_id.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}/{instance}", &device_id[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = instance_id(dir.path(), false).expect("new");
        assert_eq!(a.len(), 16);
        assert_eq!(instance_id(dir.path(), true).expect("again"), a);
        std::fs::write(dir.path().join(INSTANCE_FILE), "nonsense").expect("write");
        assert!(matches!(instance_id(dir.path(), true), Err(ProducerError::Invalid { .. })));
    }

    #[test]
    fn producer_id_fits_the_wire_limit() {
        assert_eq!(producer_id("gw-1", "00000000000000ab"), "gw-1/00000000000000ab");
        let long = "d".repeat(80);
        let id = producer_id(&long, "00000000000000ab");
        assert_eq!(id.len(), MAX_PRODUCER_ID_BYTES);
        assert!(id.ends_with("/00000000000000ab"));
        let wide = "é".repeat(40);
        let id = producer_id(&wide, "00000000000000ab");
        assert!(id.len() <= MAX_PRODUCER_ID_BYTES);
    }
}
