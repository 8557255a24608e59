//! Retention: deletes whole segments whose newest record is older than the
//! stream's retention period, and closed shards left with no record; never
//! anything younger. The store runs `enforce` every
//! `retention_check_interval`; tests call
//! [`LogStore::enforce_retention`](super::LogStore::enforce_retention) after
//! moving an injected clock.

use std::sync::Arc;

use super::catalog::Catalog;
use super::env::{StoreEnv, blocking};
use super::error::StoreError;
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

/// Deletes expired segments and fully expired closed shards of `streams`;
/// `catalog` is locked only to remove shards from it.
///
/// # Errors
/// An I/O failure deleting files or saving the catalog.
pub(super) async fn enforce(
    env: &StoreEnv,
    catalog: &tokio::sync::Mutex<Catalog>,
    streams: Vec<Arc<StreamState>>,
) -> Result<RetentionReport, StoreError> {
    let mut report = RetentionReport::default();
    let now = env.now_ms();
    for stream in streams {
        let cutoff = now.saturating_sub(stream.retention_ms());
        let mut drained = Vec::new();
        for handle in stream.all_shards() {
            let writer = handle.writer();
            let open = writer.is_some();
            let shared = handle.shared().clone();
            let (n, active_expired) =
                blocking(move || Ok(shared.delete_expired(cutoff, open)?)).await?;
            report.segments_deleted += n;
            if let (true, Some(w)) = (active_expired, writer) {
                w.seal().await?;
                let shared = handle.shared().clone();
                let (n, _) = blocking(move || Ok(shared.delete_expired(cutoff, true)?)).await?;
                report.segments_deleted += n;
            }
            if !open && handle.shared().is_drained() {
                drained.push(handle.shared().index);
            }
        }
        if !drained.is_empty() {
            let mut catalog = catalog.lock().await;
            report.shards_removed +=
                remove_drained_shards(env, &mut catalog, &stream, &drained, cutoff).await?;
        }
    }
    Ok(report)
}

/// Removes closed shards that hold no record any more and were closed
/// before the retention cutoff, from the catalog and from disk.
async fn remove_drained_shards(
    env: &StoreEnv,
    catalog: &mut Catalog,
    stream: &StreamState,
    drained: &[u64],
    cutoff: u64,
) -> Result<usize, StoreError> {
    let mut next = catalog.clone();
    let Some(meta) = next.stream_mut(stream.name()).filter(|m| m.id == stream.id()) else {
        return Ok(0);
    };
    let before = meta.shards.len();
    meta.shards.retain(|s| {
        !(drained.contains(&s.index) && s.closed.is_some_and(|c| c.closed_ms < cutoff))
    });
    let removed: Vec<u64> = drained.iter().copied().filter(|i| meta.shard(*i).is_none()).collect();
    if meta.shards.len() == before {
        return Ok(0);
    }
    env.save_catalog(catalog, next).await?;
    stream.remove_shards(&removed);
    for i in &removed {
        let dir = env.shard_dir(stream.id(), *i);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove an expired shard's directory");
        }
        tracing::info!(stream = %stream.name(), shard = %shard_id(*i), "closed shard expired and removed");
    }
    Ok(removed.len())
}
