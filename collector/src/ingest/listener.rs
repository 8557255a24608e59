//! The MQTT listeners: accept loops for plain TCP and TLS, the connection
//! limit, and a shutdown that lets every connection finish its appends.
//!
//! Each accepted connection is a task (tracked, so shutdown can wait for
//! it). The TLS handshake runs inside that task, bounded by
//! [`TLS_HANDSHAKE_TIMEOUT`], so a slow or hostile client never holds up the
//! accept loop. Connections beyond `mqtt.max_connections` are closed at
//! accept.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::auth::Authenticator;
use super::connection::{self, Listener, Shared};
use super::session::Sessions;
use super::settings::Settings;
use crate::store::StreamStore;
use crate::tls::certificate_identity;

/// Time a client has to complete the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for connections to finish their appends and say
/// goodbye before the store is closed under them.
pub const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of file descriptors, typically), so the
/// loop does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Why the ingest could not start.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A listener could not bind its address.
    #[error("binding the {what} listener to {addr}: {source}")]
    Bind {
        /// `MQTT` or `MQTT over TLS`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS listener is enabled and no TLS configuration was given.
    #[error("the MQTT over TLS listener needs a TLS configuration")]
    NoTls,
    /// A `[[mqtt.users]]` entry is invalid.
    #[error("`{key}`: {message}")]
    Users {
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The running MQTT ingest.
#[derive(Debug)]
pub struct Ingest {
    /// Address of the plain listener.
    pub mqtt: Option<SocketAddr>,
    /// Address of the TLS listener.
    pub mqtts: Option<SocketAddr>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Ingest {
    /// Binds the configured listeners and starts accepting.
    ///
    /// # Errors
    /// [`IngestError::Bind`] when an address cannot be bound;
    /// [`IngestError::NoTls`] when the TLS listener is on and `tls` is `None`;
    /// [`IngestError::Users`] for an invalid user entry.
    pub async fn start<S: StreamStore + Clone>(
        store: S,
        settings: Settings,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<Self, IngestError> {
        let bind = |what: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| IngestError::Bind { what, addr, source })
        };
        let plain = match settings.listen {
            Some(addr) => Some(bind("MQTT", addr).await?),
            None => None,
        };
        let secure = match (settings.tls_listen, tls) {
            (Some(addr), Some(tls)) => {
                Some((bind("MQTT over TLS", addr).await?, TlsAcceptor::from(tls)))
            }
            (Some(_), None) => return Err(IngestError::NoTls),
            (None, _) => None,
        };
        let local = |l: &TcpListener, what: &'static str, addr: SocketAddr| {
            l.local_addr().map_err(|source| IngestError::Bind { what, addr, source })
        };
        let mqtt = match (&plain, settings.listen) {
            (Some(l), Some(addr)) => Some(local(l, "MQTT", addr)?),
            _ => None,
        };
        let mqtts = match (&secure, settings.tls_listen) {
            (Some((l, _)), Some(addr)) => Some(local(l, "MQTT over TLS", addr)?),
            _ => None,
        };
        let shutdown = CancellationToken::new();
        let auth = Authenticator::new(&settings.users)
            .map_err(|(key, message)| IngestError::Users { key, message })?;
        let connections = Arc::new(Semaphore::new(settings.max_connections));
        let shared = Arc::new(Shared {
            store,
            budget: Arc::new(Semaphore::new(settings.memory_budget_bytes)),
            settings,
            auth,
            sessions: Sessions::default(),
            known: Default::default(),
            shutdown: shutdown.clone(),
        });
        let tracker = TaskTracker::new();
        if let (Some(listener), Some(addr)) = (plain, mqtt) {
            tracing::info!(%addr, "MQTT listening");
            let (shared, connections, t) = (shared.clone(), connections.clone(), tracker.clone());
            tracker.spawn(accept_loop(listener, None, shared, connections, t));
        }
        if let (Some((listener, acceptor)), Some(addr)) = (secure, mqtts) {
            tracing::info!(%addr, "MQTT over TLS listening");
            let t = tracker.clone();
            tracker.spawn(accept_loop(listener, Some(acceptor), shared, connections, t));
        }
        Ok(Self { mqtt, mqtts, tracker, shutdown })
    }

    /// Stops accepting, tells every connection to finish (MQTT 5 clients get
    /// DISCONNECT "server shutting down") and waits up to
    /// [`SHUTDOWN_DRAIN_TIMEOUT`] for their appends to complete.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_DRAIN_TIMEOUT, self.tracker.wait()).await.is_err() {
            tracing::warn!(
                connections = self.tracker.len(),
                "MQTT connections still open after {SHUTDOWN_DRAIN_TIMEOUT:?}; closing the store under them"
            );
        }
    }
}

async fn accept_loop<S: StreamStore + Clone>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared<S>>,
    connections: Arc<Semaphore>,
    tracker: TaskTracker,
) {
    let refused = AtomicU64::new(0);
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            let n = refused.fetch_add(1, Ordering::Relaxed);
            if n.is_multiple_of(1000) {
                tracing::warn!(%peer, refused = n + 1, "connection limit reached: closing new connections");
            }
            drop(socket);
            continue;
        };
        let _ = socket.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            serve_socket(shared, socket, peer, tls).await;
            drop(permit);
        });
    }
}

async fn serve_socket<S: StreamStore + Clone>(
    shared: Arc<Shared<S>>,
    socket: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
) {
    let Some(acceptor) = tls else {
        connection::serve(shared, socket, peer, Listener::Plain, None).await;
        return;
    };
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
        Ok(Ok(stream)) => {
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(certificate_identity);
            connection::serve(shared, stream, peer, Listener::Tls, identity).await;
        }
        Ok(Err(e)) => tracing::warn!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => {
            tracing::warn!(%peer, "TLS handshake not completed within {TLS_HANDSHAKE_TIMEOUT:?}")
        }
    }
}
