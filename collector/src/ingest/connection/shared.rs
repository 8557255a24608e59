//! What every connection of the ingest shares, and which listener accepted
//! a connection.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::ingest::appender::KnownStreams;
use crate::ingest::auth::Authenticator;
use crate::ingest::session::Sessions;
use crate::ingest::settings::Settings;

/// What every connection shares.
#[derive(Debug)]
pub struct Shared<S> {
    /// The store appends go to.
    pub store: S,
    /// Checked settings.
    pub settings: Settings,
    /// Password checks.
    pub auth: Authenticator,
    /// Sessions by client id.
    pub sessions: Sessions,
    /// Publish bytes all connections may hold (permits are bytes).
    pub budget: Arc<Semaphore>,
    /// Streams known to exist.
    pub known: KnownStreams,
    /// Cancelled when the collector shuts down.
    pub shutdown: CancellationToken,
}

/// Which listener accepted the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Plain TCP.
    Plain,
    /// TLS.
    Tls,
}
