//! One MQTT connection: CONNECT and authentication, then the loop that reads
//! packets, appends them window by window and acknowledges them once durable;
//! keep-alive, session takeover, and closing with a reason.
//!
//! # The loop
//!
//! One task per connection owns the socket. Packets read while a window is
//! being appended are queued; when the window completes, its acknowledgements
//! are written (in packet order, as MQTT requires) and the queue becomes the
//! next window (see [`super::appender`]). So one connection has at most one
//! window in the store at a time, which keeps its publishes in order, and
//! every window carries whatever arrived during the previous one's fsync, so
//! a client with many publishes in flight gets them appended in large groups.
//!
//! # Backpressure
//!
//! The socket is not read while the connection holds
//! [`MAX_PENDING_PUBLISHES`] unacknowledged publishes, nor before it holds
//! budget for the next PUBLISH frame: every publish takes its frame's size
//! from the ingest-wide memory budget (`mqtt.memory_budget_bytes`) until it
//! is durable, and a frame larger than the read buffer takes it before its
//! body is read. When the disk is slower than the network, the store's
//! bounded shard queues make appends wait, windows stop completing, and the
//! connections stop reading: TCP flow control pushes back on the clients and
//! memory stays bounded. A packet must be complete [`PACKET_TIMEOUT`] after
//! its first byte, so a stalled client cannot hold budget forever.
//!
//! # Refusals
//!
//! A malformed packet or protocol violation closes the connection after an
//! MQTT 5 DISCONNECT with its reason code and a log line; publishes received
//! before it are still appended and acknowledged. A refused publish (topic,
//! key, payload, ACL, quota) gets a negative PUBACK/PUBREC in MQTT 5; MQTT
//! 3.1.1 has none, so the connection is closed after the acknowledgements of
//! the publishes before it. A refused QoS 0 publish (no acknowledgement to
//! carry the refusal) closes the connection in both versions.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::OptionFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::appender::{Client, ConnState, Done, KnownStreams, Plan, Publish, Work};
use super::auth::Authenticator;
use super::packet::{
    self, ConnackProps, ConnectInfo, Inbound, ProtocolError, PublishIn, Reason, Sniff, Version,
};
use super::session::{AttachError, Attached, SessionState, Sessions};
use super::settings::Settings;
use crate::store::StreamStore;

/// Read buffer of an idle connection; larger frames get room of their own.
pub const READ_BUFFER_BYTES: usize = 16 * 1024;
/// Largest CONNECT (client id, credentials, will) accepted.
pub const MAX_CONNECT_BYTES: usize = 64 * 1024;
/// Time from accept to a complete CONNECT.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a write to a client may take before the client is considered gone.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Unacknowledged publishes (queued plus being appended) per connection
/// before it stops reading: ten times a typical client's in-flight window, so
/// fast clients keep the disk busy and slow disks push back quickly.
pub const MAX_PENDING_PUBLISHES: usize = 1024;
/// Highest MQTT 5 topic alias a client may set.
pub const TOPIC_ALIAS_MAX: u16 = 64;
/// Longest client id accepted.
pub const MAX_CLIENT_ID_BYTES: usize = 256;
/// Time a packet may take from its first byte to its last. A half-sent
/// PUBLISH holds memory budget; this bounds how long a stalled (or hostile)
/// client can keep it, whatever its keep-alive.
pub const PACKET_TIMEOUT: Duration = Duration::from_secs(60);

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

/// Why a connection ends.
#[derive(Debug)]
enum Close {
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

type WindowFuture = Pin<Box<dyn Future<Output = Done> + Send>>;
type BudgetFuture =
    Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// Serves one accepted connection until it ends. `cert_identity` is the
/// identity of a verified client certificate.
pub async fn serve<S, IO>(
    shared: Arc<Shared<S>>,
    mut io: IO,
    peer: SocketAddr,
    listener: Listener,
    cert_identity: Option<String>,
) where
    S: StreamStore + Clone,
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut inbuf = BytesMut::with_capacity(READ_BUFFER_BYTES);
    let frame = match tokio::time::timeout(CONNECT_TIMEOUT, read_first_frame(&mut io, &mut inbuf))
        .await
    {
        Ok(Ok(frame)) => frame,
        Ok(Err(FirstFrame::Eof)) => {
            tracing::debug!(%peer, "connection closed before CONNECT");
            return;
        }
        Ok(Err(FirstFrame::Io(e))) => {
            tracing::debug!(%peer, error = %e, "reading CONNECT failed");
            return;
        }
        Ok(Err(FirstFrame::Protocol(e))) => {
            tracing::warn!(%peer, error = %e, "refused connection: bad first packet");
            close(&mut io).await;
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, timeout = ?CONNECT_TIMEOUT, "refused connection: no CONNECT in time");
            close(&mut io).await;
            return;
        }
    };
    let version = match packet::sniff_connect(&frame) {
        Ok(Sniff::V4) => Version::V4,
        Ok(Sniff::V5) => Version::V5,
        Ok(Sniff::Unsupported(level)) => {
            tracing::warn!(%peer, level, "refused connection: unsupported protocol level");
            let mut out = BytesMut::new();
            packet::write_connack(
                &mut out,
                Version::V4,
                Reason::UnsupportedProtocolVersion,
                false,
                ConnackProps::default(),
            );
            let _ = write_out(&mut io, &mut out).await;
            close(&mut io).await;
            return;
        }
        Err(e) => {
            tracing::warn!(%peer, error = %e, "refused connection: not an MQTT CONNECT");
            close(&mut io).await;
            return;
        }
    };
    let info = match packet::decode_connect(version, frame) {
        Ok(info) => info,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "refused connection: malformed CONNECT");
            // MQTT 3.1.1 closes without a CONNACK; MQTT 5 says why first.
            match version {
                Version::V4 => close(&mut io).await,
                Version::V5 => refuse(&mut io, version, e.reason(), e.to_string()).await,
            }
            return;
        }
    };
    let connected = match accept(&shared, &mut io, peer, listener, cert_identity, &info).await {
        Some(c) => c,
        None => return,
    };
    let Accepted { client_id, identity, attached, assigned } = connected;
    let mut out = BytesMut::with_capacity(256);
    packet::write_connack(
        &mut out,
        version,
        Reason::Success,
        attached.session_present,
        ConnackProps {
            max_packet_size: u32::try_from(shared.settings.max_packet_bytes).ok(),
            topic_alias_max: Some(TOPIC_ALIAS_MAX),
            assigned_client_id: assigned.then(|| client_id.clone()),
            reason_string: None,
        },
    );
    tracing::debug!(%peer, client_id, identity = identity.as_deref().unwrap_or("-"), ?version, "connected");
    let keep_alive =
        (info.keep_alive > 0).then(|| Duration::from_millis(u64::from(info.keep_alive) * 1500));
    let state = ConnState {
        qos2_received: attached.state.qos2_received.clone(),
        failed_batches: Default::default(),
    };
    let conn = Conn {
        shared,
        io,
        peer,
        version,
        client_id,
        identity,
        problem_info: info.problem_info,
        client_max_packet: info.client_max_packet,
        keep_alive,
        session_expiry: info.session_expiry,
        takeover: attached.takeover.clone(),
        inbuf,
        out,
        pending: Vec::new(),
        inflight: None,
        inflight_len: 0,
        budget_wait: None,
        next_permit: None,
        state,
        aliases: Default::default(),
        close: None,
        last_packet: Instant::now(),
        partial_since: None,
    };
    conn.run(info.will, attached).await;
}

enum FirstFrame {
    Eof,
    Io(std::io::Error),
    Protocol(ProtocolError),
}

async fn read_first_frame<IO: AsyncRead + Unpin>(
    io: &mut IO,
    inbuf: &mut BytesMut,
) -> Result<BytesMut, FirstFrame> {
    loop {
        if let Some(h) =
            packet::frame_header(inbuf, MAX_CONNECT_BYTES).map_err(FirstFrame::Protocol)?
        {
            if h.packet_type() != 1 {
                return Err(FirstFrame::Protocol(ProtocolError::Violation(
                    "the first packet must be CONNECT".into(),
                )));
            }
            if inbuf.len() >= h.frame_len {
                return Ok(inbuf.split_to(h.frame_len));
            }
            inbuf.reserve(h.frame_len - inbuf.len());
        }
        match io.read_buf(inbuf).await {
            Ok(0) => return Err(FirstFrame::Eof),
            Ok(_) => {}
            Err(e) => return Err(FirstFrame::Io(e)),
        }
    }
}

struct Accepted {
    client_id: String,
    identity: Option<String>,
    attached: Attached,
    assigned: bool,
}

/// Authenticates the client and attaches its session, or refuses it (CONNACK
/// with the reason, log line) and returns `None`.
async fn accept<S, IO>(
    shared: &Shared<S>,
    io: &mut IO,
    peer: SocketAddr,
    listener: Listener,
    cert_identity: Option<String>,
    info: &ConnectInfo,
) -> Option<Accepted>
where
    IO: AsyncWrite + Unpin,
{
    let version = info.version;
    let refused = |reason: Reason, message: String| (reason, message);
    let result: Result<(String, Option<String>, bool), (Reason, String)> = async {
        if shared.shutdown.is_cancelled() {
            return Err(refused(
                Reason::ServerUnavailable,
                "the collector is shutting down".into(),
            ));
        }
        if let Some(method) = &info.auth_method {
            return Err(refused(
                Reason::BadAuthenticationMethod,
                format!("authentication method {method:?} is not supported"),
            ));
        }
        if info.client_id.len() > MAX_CLIENT_ID_BYTES {
            return Err(refused(
                Reason::ClientIdentifierNotValid,
                format!("client id longer than {MAX_CLIENT_ID_BYTES} bytes"),
            ));
        }
        let from_cert = cert_identity.is_some();
        let identity = if let Some(id) = cert_identity {
            if !info.client_id.is_empty() && info.client_id != id {
                return Err(refused(
                    Reason::ClientIdentifierNotValid,
                    format!(
                        "client id {:?} is not the certificate's identity {id:?}",
                        info.client_id
                    ),
                ));
            }
            Some(id)
        } else if let Some(user) = &info.username {
            let password = info.password.as_deref().unwrap_or_default();
            if !shared.auth.verify(user, password).await {
                return Err(refused(
                    Reason::BadUserNameOrPassword,
                    format!("bad user name or password for {user:?}"),
                ));
            }
            Some(user.clone())
        } else if listener == Listener::Plain && shared.settings.allow_anonymous {
            None
        } else {
            return Err(refused(
                Reason::NotAuthorized,
                match listener {
                    Listener::Tls => "a client certificate or a user name and password is required",
                    Listener::Plain => {
                        "a user name and password is required (anonymous access is off)"
                    }
                }
                .into(),
            ));
        };
        let (client_id, assigned) = if info.client_id.is_empty() {
            if version == Version::V4 && !info.clean_start {
                return Err(refused(
                    Reason::ClientIdentifierNotValid,
                    "an empty client id needs a clean session".into(),
                ));
            }
            match &identity {
                // A certificate's identity becomes the client id.
                Some(id) if from_cert => (id.clone(), true),
                _ => (format!("weir-{:016x}", rand::random::<u64>()), true),
            }
        } else {
            (info.client_id.clone(), false)
        };
        Ok((client_id, identity, assigned))
    }
    .await;
    let (client_id, identity, assigned) = match result {
        Ok(r) => r,
        Err((reason, message)) => {
            tracing::warn!(%peer, client_id = info.client_id, reason = ?reason, "refused connection: {message}");
            refuse(io, version, reason, message).await;
            return None;
        }
    };
    match shared.sessions.attach(&client_id, identity.as_deref(), info.clean_start).await {
        Ok(attached) => Some(Accepted { client_id, identity, attached, assigned }),
        Err(e) => {
            let reason = match e {
                AttachError::OwnedByOther(_) => Reason::NotAuthorized,
                AttachError::TakeoverTimeout(_) => Reason::ServerBusy,
            };
            tracing::warn!(%peer, client_id, error = %e, "refused connection");
            refuse(io, version, reason, e.to_string()).await;
            None
        }
    }
}

/// Sends a refusing CONNACK and closes.
async fn refuse<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    version: Version,
    reason: Reason,
    message: String,
) {
    let mut out = BytesMut::new();
    let props = ConnackProps { reason_string: Some(message), ..ConnackProps::default() };
    packet::write_connack(&mut out, version, reason, false, props);
    let _ = write_out(io, &mut out).await;
    close(io).await;
}

/// Shuts the connection down (TLS: close_notify), bounded in time.
async fn close<IO: AsyncWrite + Unpin>(io: &mut IO) {
    let _ = tokio::time::timeout(WRITE_TIMEOUT, io.shutdown()).await;
}

async fn write_out<IO: AsyncWrite + Unpin>(io: &mut IO, out: &mut BytesMut) -> std::io::Result<()> {
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

struct Conn<S, IO> {
    shared: Arc<Shared<S>>,
    io: IO,
    peer: SocketAddr,
    version: Version,
    client_id: String,
    identity: Option<String>,
    problem_info: bool,
    client_max_packet: Option<u32>,
    keep_alive: Option<Duration>,
    session_expiry: u32,
    takeover: CancellationToken,
    inbuf: BytesMut,
    out: BytesMut,
    pending: Vec<Work>,
    inflight: Option<WindowFuture>,
    inflight_len: usize,
    budget_wait: Option<BudgetFuture>,
    next_permit: Option<OwnedSemaphorePermit>,
    state: ConnState,
    aliases: std::collections::HashMap<u16, String>,
    close: Option<Close>,
    last_packet: Instant,
    /// When the incomplete packet at the head of `inbuf` started arriving.
    partial_since: Option<Instant>,
}

impl<S, IO> Conn<S, IO>
where
    S: StreamStore + Clone,
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn run(mut self, will: Option<PublishIn>, attached: Attached) {
        loop {
            if self.close.is_none() {
                self.decode_buffered();
            }
            if self.close.is_some() {
                self.budget_wait = None;
                self.next_permit = None;
                if matches!(self.close, Some(Close::Refused(..))) {
                    // A 3.1.1 client cannot be told about later refusals, and
                    // acknowledgements after the refused one are not sent.
                    self.pending.clear();
                }
            }
            if self.inflight.is_none() && !self.pending.is_empty() {
                self.start_window();
            }
            if matches!(self.close, Some(Close::Io(_))) {
                // The socket is gone; what was received is still appended.
                self.out.clear();
            } else if !self.out.is_empty()
                && let Err(e) = write_out(&mut self.io, &mut self.out).await
            {
                self.out.clear();
                if self.close.is_none() || matches!(self.close, Some(Close::Client { .. })) {
                    self.close = Some(Close::Io(e));
                }
            }
            if self.close.is_some() && self.inflight.is_none() && self.pending.is_empty() {
                break;
            }
            let can_read = self.close.is_none()
                && self.budget_wait.is_none()
                && self.pending.len() + self.inflight_len < MAX_PENDING_PUBLISHES;
            if !can_read {
                // Time spent holding the client back is not its silence.
                self.last_packet = Instant::now();
                self.partial_since = None;
            } else if self.inbuf.is_empty() {
                self.partial_since = None;
            } else {
                self.partial_since.get_or_insert_with(Instant::now);
            }
            let packet_deadline = self.partial_since.map(|t| t + PACKET_TIMEOUT);
            if can_read && self.inbuf.capacity() - self.inbuf.len() < 1024 {
                self.inbuf.reserve(READ_BUFFER_BYTES);
            }
            let deadline = self.keep_alive.map(|k| self.last_packet + k);
            tokio::select! {
                biased;
                () = self.takeover.cancelled(), if self.close.is_none() => {
                    self.close = Some(Close::TakenOver);
                }
                () = self.shared.shutdown.cancelled(), if self.close.is_none() => {
                    self.close = Some(Close::Shutdown);
                }
                Some(done) = OptionFuture::from(self.inflight.as_mut()), if self.inflight.is_some() => {
                    self.inflight = None;
                    self.inflight_len = 0;
                    self.finish_window(done);
                }
                Some(permit) = OptionFuture::from(self.budget_wait.as_mut()), if self.budget_wait.is_some() => {
                    self.budget_wait = None;
                    match permit {
                        Ok(p) => self.next_permit = Some(p),
                        Err(_) => self.close = Some(Close::Shutdown),
                    }
                }
                read = self.io.read_buf(&mut self.inbuf), if can_read => match read {
                    Ok(0) => self.close = Some(Close::Eof),
                    Ok(_) => {}
                    Err(e) => self.close = Some(Close::Io(e)),
                },
                () = sleep_until(deadline), if can_read && deadline.is_some() => {
                    self.close = Some(Close::KeepAlive);
                }
                () = sleep_until(packet_deadline), if can_read && packet_deadline.is_some() => {
                    self.close = Some(Close::Protocol(ProtocolError::Violation(format!(
                        "a packet was not complete {PACKET_TIMEOUT:?} after its first byte"
                    ))));
                }
                else => {
                    // Nothing left to wait for: only reachable once closing.
                    if self.close.is_none() {
                        self.close = Some(Close::Eof);
                    }
                }
            }
        }
        self.finish(will, attached).await;
    }

    /// Decodes every complete frame in the buffer, as far as the pending
    /// limit and the memory budget allow.
    fn decode_buffered(&mut self) {
        let max = self.shared.settings.max_packet_bytes;
        while self.close.is_none()
            && self.budget_wait.is_none()
            && self.pending.len() + self.inflight_len < MAX_PENDING_PUBLISHES
        {
            let header = match packet::frame_header(&self.inbuf, max) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    self.close = Some(Close::Protocol(e));
                    break;
                }
            };
            if header.is_publish() && self.next_permit.is_none() {
                let bytes = u32::try_from(header.frame_len).unwrap_or(u32::MAX);
                match self.shared.budget.clone().try_acquire_many_owned(bytes) {
                    Ok(p) => self.next_permit = Some(p),
                    Err(_) => {
                        let budget = self.shared.budget.clone();
                        self.budget_wait = Some(Box::pin(budget.acquire_many_owned(bytes)));
                        break;
                    }
                }
            }
            if self.inbuf.len() < header.frame_len {
                self.inbuf.reserve(header.frame_len - self.inbuf.len());
                break;
            }
            let frame = self.inbuf.split_to(header.frame_len);
            self.last_packet = Instant::now();
            self.partial_since = None;
            match packet::decode(self.version, frame) {
                Ok(p) => self.handle(p),
                Err(e) => self.close = Some(Close::Protocol(e)),
            }
        }
    }

    fn handle(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Publish(p) => {
                let permit = self.next_permit.take();
                match self.resolve_topic(&p) {
                    Ok(topic) => self.pending.push(Work::Publish(Publish {
                        qos: p.qos,
                        pkid: p.pkid,
                        topic,
                        payload: p.payload,
                        permit,
                    })),
                    Err(e) => self.close = Some(Close::Protocol(e)),
                }
            }
            Inbound::PubRel(pkid) => self.pending.push(Work::PubRel(pkid)),
            Inbound::PingReq => packet::write_pingresp(&mut self.out),
            Inbound::Subscribe { pkid, filters } => {
                tracing::debug!(peer = %self.peer, client_id = self.client_id, "SUBSCRIBE refused: the collector does not deliver messages");
                packet::write_suback_refused(&mut self.out, self.version, pkid, filters);
            }
            Inbound::Unsubscribe { pkid, filters } => {
                packet::write_unsuback(&mut self.out, self.version, pkid, filters);
            }
            Inbound::Disconnect { reason, session_expiry } => {
                if let Some(expiry) = session_expiry {
                    if self.session_expiry == 0 && expiry != 0 {
                        self.close = Some(Close::Protocol(ProtocolError::Violation(
                            "session expiry set on DISCONNECT after 0 on CONNECT".into(),
                        )));
                        return;
                    }
                    self.session_expiry = expiry;
                }
                self.close =
                    Some(Close::Client { will: reason == Reason::DisconnectWithWill as u8 });
            }
            Inbound::Unexpected(what) => {
                self.close = Some(Close::Protocol(ProtocolError::Violation(format!(
                    "{what} from a client"
                ))));
            }
        }
    }

    /// The topic of a publish, through MQTT 5 topic aliases.
    fn resolve_topic(&mut self, p: &PublishIn) -> Result<String, ProtocolError> {
        let topic = std::str::from_utf8(&p.topic)
            .map_err(|_| ProtocolError::Malformed("topic name is not UTF-8".into()))?;
        match p.topic_alias {
            None => Ok(topic.to_owned()),
            Some(alias) if alias == 0 || alias > TOPIC_ALIAS_MAX => Err(ProtocolError::TopicAlias(
                format!("alias {alias} is outside 1..={TOPIC_ALIAS_MAX}"),
            )),
            Some(alias) if topic.is_empty() => self.aliases.get(&alias).cloned().ok_or_else(|| {
                ProtocolError::Violation(format!("topic alias {alias} was never set"))
            }),
            Some(alias) => {
                self.aliases.insert(alias, topic.to_owned());
                Ok(topic.to_owned())
            }
        }
    }

    fn start_window(&mut self) {
        let items = std::mem::take(&mut self.pending);
        let client = Client { client_id: &self.client_id, identity: self.identity.as_deref() };
        let settings = &self.shared.settings;
        let plan = Plan::build(items, client, &settings.mapping, &settings.acl, &mut self.state);
        self.inflight_len = plan.len();
        let store = self.shared.store.clone();
        let known = self.shared.known.clone();
        let auto = settings.auto_create_shards;
        self.inflight = Some(Box::pin(plan.execute(store, known, auto)));
    }

    fn finish_window(&mut self, done: Done) {
        done.apply(&mut self.state);
        let mut fatal: Option<(Reason, String)> = None;
        for o in done.outcomes {
            let message = o.message.clone().unwrap_or_default();
            match o.ack {
                Some((kind, pkid)) => {
                    if o.reason.is_error() && self.version == Version::V4 {
                        // 3.1.1 has no negative acknowledgement.
                        if kind != packet::AckKind::PubComp {
                            fatal = Some((o.reason, message));
                            break;
                        }
                    }
                    if o.reason.is_error() {
                        tracing::debug!(peer = %self.peer, client_id = self.client_id, pkid, reason = ?o.reason, "publish refused: {message}");
                    }
                    let reason_string =
                        (self.problem_info && o.reason.is_error()).then_some(message);
                    packet::write_ack(
                        &mut self.out,
                        self.version,
                        kind,
                        pkid,
                        o.reason,
                        reason_string,
                        self.client_max_packet,
                    );
                }
                None if o.reason.is_error() => {
                    if fatal.is_none() {
                        fatal = Some((o.reason, message));
                    }
                    if self.version == Version::V4 {
                        break;
                    }
                }
                None => {}
            }
        }
        if let Some((reason, message)) = fatal
            && !matches!(self.close, Some(Close::Refused(..)))
        {
            self.close = Some(Close::Refused(reason, message));
        }
    }

    async fn finish(mut self, will: Option<PublishIn>, attached: Attached) {
        let close = self.close.take().unwrap_or(Close::Eof);
        let (reason, message) = match &close {
            Close::Client { .. } | Close::Eof => (None, None),
            Close::Io(e) => {
                tracing::debug!(peer = %self.peer, client_id = self.client_id, error = %e, "connection lost");
                (None, None)
            }
            Close::Protocol(e) => {
                tracing::warn!(peer = %self.peer, client_id = self.client_id, error = %e, "closing connection: {e}");
                (Some(e.reason()), Some(e.to_string()))
            }
            Close::Refused(reason, message) => {
                tracing::warn!(peer = %self.peer, client_id = self.client_id, reason = ?reason, "closing connection: publish refused: {message}");
                (Some(*reason), Some(message.clone()))
            }
            Close::KeepAlive => {
                tracing::info!(peer = %self.peer, client_id = self.client_id, "closing connection: keep-alive expired");
                (Some(Reason::KeepAliveTimeout), None)
            }
            Close::TakenOver => {
                tracing::info!(peer = %self.peer, client_id = self.client_id, "closing connection: session taken over");
                (Some(Reason::SessionTakenOver), None)
            }
            Close::Shutdown => (Some(Reason::ServerShuttingDown), None),
        };
        // Every append has finished: the session may pass to a new
        // connection before the last bytes go out.
        let keep = (self.session_expiry > 0).then(|| {
            let ttl = (self.session_expiry != u32::MAX)
                .then(|| Duration::from_secs(u64::from(self.session_expiry)));
            (SessionState { qos2_received: std::mem::take(&mut self.state.qos2_received) }, ttl)
        });
        self.shared.sessions.detach(&self.client_id, attached, keep);
        let publish_will = match close {
            Close::Client { will } => will,
            Close::TakenOver | Close::Shutdown => false,
            _ => true,
        };
        if let Some(reason) = reason
            && !matches!(close, Close::Io(_))
        {
            let message = message.filter(|_| self.problem_info);
            packet::write_disconnect(&mut self.out, self.version, reason, message);
        }
        if !matches!(close, Close::Io(_)) {
            let _ = write_out(&mut self.io, &mut self.out).await;
            self::close(&mut self.io).await;
        }
        if publish_will && let Some(will) = will {
            self.publish_will(will).await;
        }
    }

    /// Appends the will of a client that went away without DISCONNECT, as a
    /// QoS 0 publish of that client.
    async fn publish_will(&mut self, will: PublishIn) {
        let Ok(topic) = String::from_utf8(will.topic.to_vec()) else { return };
        let work = Work::Publish(Publish {
            qos: 0,
            pkid: 0,
            topic: topic.clone(),
            payload: Bytes::clone(&will.payload),
            permit: None,
        });
        let client = Client { client_id: &self.client_id, identity: self.identity.as_deref() };
        let settings = &self.shared.settings;
        let mut state = ConnState::default();
        let plan = Plan::build(vec![work], client, &settings.mapping, &settings.acl, &mut state);
        let done = plan
            .execute(
                self.shared.store.clone(),
                self.shared.known.clone(),
                settings.auto_create_shards,
            )
            .await;
        match done.outcomes.first() {
            Some(o) if o.reason.is_error() => tracing::warn!(
                client_id = self.client_id,
                topic,
                reason = ?o.reason,
                "will not appended: {}",
                o.message.as_deref().unwrap_or_default()
            ),
            _ => tracing::debug!(client_id = self.client_id, topic, "will appended"),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
