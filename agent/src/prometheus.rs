//! `[metrics] listen`: the agent's counters as Prometheus text on
//! `GET /metrics`, for fleet operators who scrape their agents.
//!
//! The figures are the [`Status`] the status file carries, built fresh for
//! each scrape, so the two never disagree. Names are `weir_agent_*`;
//! counters end in `_total`; per-input series carry `input`, `kind` and
//! `stream` labels, the connection state is one series per state with the
//! current one at 1.
//!
//! # The HTTP server
//!
//! One GET of one path does not justify an HTTP stack in a binary meant for
//! small devices, so the server here is deliberately minimal: it reads the
//! request head (at most [`MAX_REQUEST_HEAD_BYTES`], within
//! [`REQUEST_TIMEOUT`]), answers `GET /metrics` (200), any other path (404)
//! or method (405), always with `Connection: close`, and serves at most
//! [`MAX_CONNECTIONS`] scrapes at once.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::status::{InputStatus, Status};

/// Longest request head read; longer ones are answered 431.
pub const MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;
/// How long a client has to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once; more connections wait to be accepted.
pub const MAX_CONNECTIONS: usize = 16;
/// The states the connection can be in (`Status::connection.state`).
const CONNECTION_STATES: [&str; 5] =
    ["starting", "connecting", "connected", "waiting to reconnect", "stopped"];

/// Prometheus text (format 0.0.4) of `s`.
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# HELP weir_agent_info The agent's version and device (always 1).\n# TYPE weir_agent_info gauge\n\
         weir_agent_info{{version=\"{}\",device_id=\"{}\",producer_id=\"{}\"}} 1",
        escape(&s.version),
        escape(&s.device_id),
        escape(&s.producer_id)
    );
    let _ = writeln!(
        o,
        "# HELP weir_agent_start_time_seconds When the agent started.\n# TYPE weir_agent_start_time_seconds gauge\n\
         weir_agent_start_time_seconds {}",
        seconds(s.started_at_ms)
    );
    let c = &s.connection;
    let mut states: Vec<&str> = CONNECTION_STATES.to_vec();
    if !states.contains(&c.state.as_str()) {
        states.push(&c.state);
    }
    let _ = writeln!(
        o,
        "# HELP weir_agent_connection_state The connection to the collector (1 for the current state).\n# TYPE weir_agent_connection_state gauge"
    );
    for state in states {
        let _ = writeln!(
            o,
            "weir_agent_connection_state{{state=\"{}\"}} {}",
            escape(state),
            u8::from(state == c.state)
        );
    }
    let plain: [(&str, &str, &str, u64); 13] = [
        ("weir_agent_reconnects_total", "counter", "Reconnections to the collector.", c.reconnects),
        ("weir_agent_inflight_batches", "gauge", "Batches sent, not acknowledged yet.", c.inflight),
        (
            "weir_agent_shipped_batches_total",
            "counter",
            "Batches acknowledged by the collector.",
            s.shipped.batches,
        ),
        (
            "weir_agent_shipped_records_total",
            "counter",
            "Records acknowledged by the collector.",
            s.shipped.records,
        ),
        (
            "weir_agent_shipped_bytes_total",
            "counter",
            "Bytes of batches acknowledged by the collector.",
            s.shipped.bytes,
        ),
        (
            "weir_agent_spooled_records_total",
            "counter",
            "Records written to the spool.",
            s.spooled.records,
        ),
        (
            "weir_agent_spooled_bytes_total",
            "counter",
            "Bytes written to the spool.",
            s.spooled.bytes,
        ),
        (
            "weir_agent_pending_records",
            "gauge",
            "Records held by the batcher, not spooled yet.",
            s.pending_records,
        ),
        (
            "weir_agent_spool_entries",
            "gauge",
            "Spool entries not acknowledged yet.",
            s.spool.entries,
        ),
        ("weir_agent_spool_bytes", "gauge", "Bytes of the spool on disk.", s.spool.bytes),
        ("weir_agent_spool_max_bytes", "gauge", "The spool's bound.", s.spool.max_bytes),
        (
            "weir_agent_spool_dropped_records_total",
            "counter",
            "Records dropped unsent by drop_oldest.",
            s.spool.dropped_records,
        ),
        (
            "weir_agent_spool_blocked",
            "gauge",
            "1 while the inputs are stopped on a full spool (block).",
            u64::from(s.spool.blocked),
        ),
    ];
    for (name, kind, help, value) in plain {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    }
    type Field = fn(&InputStatus) -> Option<u64>;
    let per_input: [(&str, &str, &str, Field); 13] = [
        ("weir_agent_input_records_total", "counter", "Records an input produced.", |i| {
            Some(i.records)
        }),
        ("weir_agent_input_bytes_total", "counter", "Data bytes an input produced.", |i| {
            Some(i.bytes)
        }),
        ("weir_agent_input_errors_total", "counter", "Errors of an input.", |i| Some(i.errors)),
        ("weir_agent_input_lines_split_total", "counter", "Pieces of over-long lines.", |i| {
            (i.kind == "file").then_some(i.lines_split)
        }),
        ("weir_agent_input_rotations_total", "counter", "Rotated or deleted files let go.", |i| {
            (i.kind == "file").then_some(i.rotations)
        }),
        (
            "weir_agent_input_truncations_total",
            "counter",
            "Truncations (copy-truncate) seen.",
            |i| (i.kind == "file").then_some(i.truncations),
        ),
        ("weir_agent_input_files", "gauge", "Files followed.", |i| {
            (i.kind == "file").then_some(i.files.len() as u64)
        }),
        ("weir_agent_serial_connected", "gauge", "1 while the serial line is open.", |i| {
            i.serial.as_ref().map(|s| u64::from(s.connected))
        }),
        ("weir_agent_serial_frames_total", "counter", "Data frames taken.", |i| {
            i.serial.as_ref().map(|s| s.frames)
        }),
        (
            "weir_agent_serial_corrupt_frames_total",
            "counter",
            "Frames that failed their checks.",
            |i| i.serial.as_ref().map(|s| s.corrupt),
        ),
        ("weir_agent_serial_duplicate_frames_total", "counter", "Retransmitted frames.", |i| {
            i.serial.as_ref().map(|s| s.duplicates)
        }),
        ("weir_agent_serial_missed_frames_total", "counter", "Frames that never arrived.", |i| {
            i.serial.as_ref().map(|s| s.missed)
        }),
        ("weir_agent_serial_node_restarts_total", "counter", "Node restarts seen.", |i| {
            i.serial.as_ref().map(|s| s.restarts)
        }),
    ];
    for (name, kind, help, field) in per_input {
        let values: Vec<(&InputStatus, u64)> =
            s.inputs.iter().filter_map(|i| field(i).map(|v| (i, v))).collect();
        if values.is_empty() {
            continue;
        }
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (i, v) in values {
            let _ = writeln!(
                o,
                "{name}{{input=\"{}\",kind=\"{}\",stream=\"{}\"}} {v}",
                escape(&i.name),
                escape(&i.kind),
                escape(&i.stream)
            );
        }
    }
    o
}

fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// A label value escaped as the text format asks (`\`, `"`, newline).
fn escape(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

/// Binds `addr`.
///
/// # Errors
/// The bind's.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves scrapes on `listener` with `status()` until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    status: impl Fn() -> Status + Send + Sync + 'static,
    stop: impl std::future::Future<Output = ()>,
) {
    let status = Arc::new(status);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(stop);
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let (stream, peer) = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let status = status.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &*status).await {
                tracing::debug!(%peer, error = %e, "metrics scrape failed");
            }
            drop(permit);
        });
    }
}

/// Reads one request head and answers it.
async fn answer(
    mut stream: TcpStream,
    status: &(dyn Fn() -> Status + Send + Sync),
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() <= MAX_REQUEST_HEAD_BYTES {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
    let (code, reason, body) = match read {
        Err(_) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(())) if head.len() > MAX_REQUEST_HEAD_BYTES => {
            (431, "Request Header Fields Too Large", String::new())
        }
        Ok(Ok(())) => {
            let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
            let mut parts = line.split(|&b| b == b' ');
            let (method, target) = (parts.next(), parts.next());
            let path = target.map(|t| t.split(|&b| b == b'?').next().unwrap_or_default());
            match (method, path) {
                (Some(b"GET"), Some(b"/metrics")) => (200, "OK", render(&status())),
                (Some(b"GET"), _) => (404, "Not Found", "try /metrics\n".into()),
                _ => (405, "Method Not Allowed", String::new()),
            }
        }
    };
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
