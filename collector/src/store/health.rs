//! Which shards are failed right now: the writers report a shard failed (a
//! failed `fsync` or write) and recovered (reopened from its files), the store
//! answers [`StreamStore::degraded`](super::StreamStore::degraded) from it and
//! `/metrics` shows the count as `weir_store_failed_shards`.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// The failed shards of one store, each with its first failure.
#[derive(Debug, Default)]
pub(super) struct FailedShards {
    /// `(stream, shard id)` → why it failed.
    failed: Mutex<BTreeMap<(String, String), String>>,
}

impl FailedShards {
    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<(String, String), String>) -> T) -> T {
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut failed);
        metrics::gauge!("weir_store_failed_shards").set(failed.len() as f64);
        out
    }

    /// The shard failed for `reason`.
    pub(super) fn failed(&self, stream: &str, shard: &str, reason: &str) {
        metrics::counter!("weir_store_shard_failures_total").increment(1);
        self.with(|f| f.insert((stream.to_owned(), shard.to_owned()), reason.to_owned()));
    }

    /// The shard takes writes again (reopened), or is gone (closed, deleted).
    pub(super) fn cleared(&self, stream: &str, shard: &str) {
        self.with(|f| f.remove(&(stream.to_owned(), shard.to_owned())));
    }

    /// A sentence naming the failed shards (the first few), if any.
    pub(super) fn describe(&self) -> Option<String> {
        /// Failed shards named in the sentence; the rest are counted.
        const NAMED: usize = 3;
        self.with(|f| {
            if f.is_empty() {
                return None;
            }
            let named: Vec<String> = f
                .iter()
                .take(NAMED)
                .map(|((stream, shard), reason)| format!("{stream}/{shard} ({reason})"))
                .collect();
            let more = f.len().saturating_sub(NAMED);
            let tail = if more > 0 { format!(" and {more} more") } else { String::new() };
            Some(format!(
                "{} shard(s) failed and refuse writes until reopened: {}{tail}",
                f.len(),
                named.join(", ")
            ))
        })
    }
}
