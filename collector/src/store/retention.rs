//! Retention: deletes whole segments whose newest record is older than the
//! stream's retention period, and closed shards left with no record; never
//! anything younger. A background task runs it every
//! `retention_check_interval`; tests call [`LogStore::enforce_retention`]
//! after moving an injected clock.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use super::catalog::shard_dir;
use super::error::StoreError;
use super::log_store::{Inner, LogStore, blocking};
use super::shard::shard_id;
use super::stream::StreamState;

/// What one retention pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RetentionReport {
    /// Whole segments deleted.
    pub segments_deleted: usize,
    /// Closed shards removed because all their records expired.
    pub shards_removed: usize,
}

impl LogStore {
    pub(super) fn spawn_retention_task(&self) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let every = self.inner.config.retention_check_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                if let Err(e) = (LogStore { inner }).enforce_retention().await {
                    tracing::warn!(error = %e, "retention pass failed");
                }
            }
        });
    }

    /// Deletes expired segments and fully expired closed shards of every
    /// stream. Runs periodically on its own; tests call it after moving the
    /// clock.
    ///
    /// # Errors
    /// An I/O failure deleting files or saving the catalog.
    pub async fn enforce_retention(&self) -> Result<RetentionReport, StoreError> {
        let mut report = RetentionReport::default();
        let now = self.inner.clock.now_ms();
        let streams: Vec<Arc<StreamState>> =
            self.inner.streams.read().map(|s| s.values().cloned().collect()).unwrap_or_default();
        for stream in streams {
            let retention_ms = stream.retention_ms.load(Ordering::Acquire);
            let cutoff = now.saturating_sub(retention_ms);
            let mut drained = Vec::new();
            for handle in stream.all_shards() {
                let writer = handle.writer();
                let open = writer.is_some();
                let shared = handle.shared.clone();
                let (n, active_expired) =
                    blocking(move || Ok(shared.delete_expired(cutoff, open)?)).await?;
                report.segments_deleted += n;
                if let (true, Some(w)) = (active_expired, writer) {
                    w.seal().await?;
                    let shared = handle.shared.clone();
                    let (n, _) = blocking(move || Ok(shared.delete_expired(cutoff, true)?)).await?;
                    report.segments_deleted += n;
                }
                if !open && handle.shared.is_drained() {
                    drained.push(handle.shared.index);
                }
            }
            if !drained.is_empty() {
                report.shards_removed +=
                    self.remove_drained_shards(&stream, &drained, cutoff).await?;
            }
        }
        Ok(report)
    }

    /// Removes closed shards that hold no record any more and were closed
    /// before the retention cutoff, from the catalog and from disk.
    pub(super) async fn remove_drained_shards(
        &self,
        stream: &StreamState,
        drained: &[u64],
        cutoff: u64,
    ) -> Result<usize, StoreError> {
        let mut catalog = self.inner.catalog.lock().await;
        let mut next = catalog.clone();
        let Some(meta) = next.stream_mut(&stream.name).filter(|m| m.id == stream.id) else {
            return Ok(0);
        };
        let before = meta.shards.len();
        meta.shards.retain(|s| {
            !(drained.contains(&s.index) && s.closed.is_some_and(|c| c.closed_ms < cutoff))
        });
        let removed: Vec<u64> =
            drained.iter().copied().filter(|i| meta.shard(*i).is_none()).collect();
        if meta.shards.len() == before {
            return Ok(0);
        }
        let root = self.inner.root.clone();
        let id = stream.id;
        let save = next.clone();
        blocking(move || save.save(&root)).await?;
        *catalog = next;
        if let Ok(mut shards) = stream.shards.write() {
            for i in &removed {
                shards.remove(i);
            }
        }
        for i in &removed {
            let dir = shard_dir(&self.inner.root, id, *i);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove an expired shard's directory");
            }
            tracing::info!(stream = %stream.name, shard = %shard_id(*i), "closed shard expired and removed");
        }
        Ok(removed.len())
    }
}
