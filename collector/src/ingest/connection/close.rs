//! How a connection ends: why ([`Close`]), what the client is told (the
//! MQTT 5 DISCONNECT reason, and the log line), and the will, which is
//! appended when the client went away without asking not to.
//!
//! Closes for a refused publish (MQTT 3.1.1 has no negative acknowledgement)
//! and wills not appended log one line per reason per
//! [`LOG_INTERVAL`](crate::log_limit::LOG_INTERVAL) with their count: a
//! 3.1.1 client reconnecting into a full disk is refused once a connection.

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Instant;

use bytes::Bytes;

use super::shared::Shared;
use crate::ingest::appender::{Client, ConnState, Plan, Publish, Work};
use crate::ingest::packet::{ProtocolError, PublishIn, Reason};
use crate::log_limit::LogLimit;
use crate::store::StreamStore;

/// Connections closed for a refused publish, by reason.
static REFUSED: LazyLock<LogLimit> = LazyLock::new(LogLimit::new);
/// Wills not appended, by reason.
static WILLS: LazyLock<LogLimit> = LazyLock::new(LogLimit::new);

/// Why a connection ends.
#[derive(Debug)]
pub(super) enum Close {
    /// DISCONNECT from the client; `will` when it asked for its will.
    Client { will: bool },
    /// The client closed the socket.
    Eof,
    /// Reading or writing failed.
    Io(std::io::Error),
    /// A malformed packet or protocol violation.
    Protocol(ProtocolError),
    /// A publish refused where no negative acknowledgement exists.
    Refused(Reason, String),
    /// No packet within 1.5 times the keep-alive.
    KeepAlive,
    /// Another connection took the session over.
    TakenOver,
    /// The collector is shutting down.
    Shutdown,
}

impl Close {
    /// The DISCONNECT reason code and string for this close (none: nothing
    /// to say, or nobody to say it to), logging why the connection ends.
    pub(super) fn disconnect(
        &self,
        peer: SocketAddr,
        client_id: &str,
    ) -> (Option<Reason>, Option<String>) {
        match self {
            Self::Client { .. } | Self::Eof => (None, None),
            Self::Io(e) => {
                tracing::debug!(peer = %peer, client_id, error = %e, "connection lost");
                (None, None)
            }
            Self::Protocol(e) => {
                tracing::warn!(peer = %peer, client_id, error = %e, "closing connection: {e}");
                (Some(e.reason()), Some(e.to_string()))
            }
            Self::Refused(reason, message) => {
                if let Some(count) = REFUSED.hit(&format!("{reason:?}"), 1, Instant::now()) {
                    tracing::warn!(peer = %peer, client_id, reason = ?reason, connections = count, "closing connection: publish refused: {message}");
                }
                (Some(*reason), Some(message.clone()))
            }
            Self::KeepAlive => {
                tracing::info!(peer = %peer, client_id, "closing connection: keep-alive expired");
                (Some(Reason::KeepAliveTimeout), None)
            }
            Self::TakenOver => {
                tracing::info!(peer = %peer, client_id, "closing connection: session taken over");
                (Some(Reason::SessionTakenOver), None)
            }
            Self::Shutdown => (Some(Reason::ServerShuttingDown), None),
        }
    }

    /// Whether the client's will is published: not when it disconnected
    /// normally, was taken over, or the collector is shutting down.
    pub(super) fn publishes_will(&self) -> bool {
        match self {
            Self::Client { will } => *will,
            Self::TakenOver | Self::Shutdown => false,
            _ => true,
        }
    }
}

/// Appends the will of a client that went away without DISCONNECT, as a
/// QoS 0 publish of that client.
pub(super) async fn publish_will<S: StreamStore + Clone>(
    shared: &Shared<S>,
    client: Client<'_>,
    will: PublishIn,
) {
    let Ok(topic) = String::from_utf8(will.topic.to_vec()) else { return };
    let work = Work::Publish(Publish {
        qos: 0,
        pkid: 0,
        topic: topic.clone(),
        payload: Bytes::clone(&will.payload),
        permit: None,
    });
    let settings = &shared.settings;
    let mut state = ConnState::default();
    let plan = Plan::build(vec![work], client, &settings.mapping, &settings.acl, &mut state);
    let done =
        plan.execute(shared.store.clone(), shared.known.clone(), settings.auto_create_shards).await;
    match done.outcomes.first() {
        Some(o) if o.reason.is_error() => {
            if let Some(count) = WILLS.hit(&format!("{:?}", o.reason), 1, Instant::now()) {
                tracing::warn!(
                    client_id = client.client_id,
                    topic,
                    reason = ?o.reason,
                    wills = count,
                    "will not appended: {}",
                    o.message.as_deref().unwrap_or_default()
                );
            }
        }
        _ => tracing::debug!(client_id = client.client_id, topic, "will appended"),
    }
}
