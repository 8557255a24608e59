//! Writing to a client's socket and shutting it down, each bounded by
//! [`WRITE_TIMEOUT`]: a client that stops reading is considered gone.

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use std::time::Duration;

/// Time a write to a client may take before the client is considered gone.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Shuts the connection down (TLS: close_notify), bounded in time.
pub(super) async fn close<IO: AsyncWrite + Unpin>(io: &mut IO) {
    let _ = tokio::time::timeout(WRITE_TIMEOUT, io.shutdown()).await;
}

/// Writes and flushes `out`, then clears it.
pub(super) async fn write_out<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    out: &mut BytesMut,
) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let write = async {
        io.write_all(out).await?;
        io.flush().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("client did not read for {WRITE_TIMEOUT:?}"),
            ));
        }
    }
    out.clear();
    Ok(())
}
