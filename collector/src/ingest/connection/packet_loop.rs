//! The packet loop of an accepted connection, and [`serve`], which runs a
//! connection from its first byte to its close.
//!
//! # The loop
//!
//! One task per connection owns the socket. Packets read while a window is
//! being appended are queued; when the window completes, its acknowledgements
//! are written (in packet order, as MQTT requires) and the queue becomes the
//! next window (see [`crate::ingest::appender`]). So one connection has at most one
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

use bytes::BytesMut;
use futures_util::future::OptionFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::{AcquireError, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::close::{Close, publish_will};
use super::handshake::{Connected, TOPIC_ALIAS_MAX, handshake};
use super::shared::{Listener, Shared};
use super::socket::{close, write_out};
use crate::ingest::appender::{Client, ConnState, Done, Plan, Publish, Work};
use crate::ingest::packet::{self, Inbound, ProtocolError, PublishIn, Reason, Version};
use crate::ingest::session::{Attached, SessionState};
use crate::store::StreamStore;

/// Read buffer of an idle connection; larger frames get room of their own.
pub const READ_BUFFER_BYTES: usize = 16 * 1024;
/// Unacknowledged publishes (queued plus being appended) per connection
/// before it stops reading: ten times a typical client's in-flight window, so
/// fast clients keep the disk busy and slow disks push back quickly.
pub const MAX_PENDING_PUBLISHES: usize = 1024;
/// Time a packet may take from its first byte to its last. A half-sent
/// PUBLISH holds memory budget; this bounds how long a stalled (or hostile)
/// client can keep it, whatever its keep-alive.
pub const PACKET_TIMEOUT: Duration = Duration::from_secs(60);

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
    let Some(connected) =
        handshake(&shared, &mut io, &mut inbuf, peer, listener, cert_identity).await
    else {
        return;
    };
    let Connected { info, client_id, identity, attached, out } = connected;
    let version = info.version;
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
        let (reason, message) = close.disconnect(self.peer, &self.client_id);
        // Every append has finished: the session may pass to a new
        // connection before the last bytes go out.
        let keep = (self.session_expiry > 0).then(|| {
            let ttl = (self.session_expiry != u32::MAX)
                .then(|| Duration::from_secs(u64::from(self.session_expiry)));
            (SessionState { qos2_received: std::mem::take(&mut self.state.qos2_received) }, ttl)
        });
        self.shared.sessions.detach(&self.client_id, attached, keep);
        let publish_will = close.publishes_will();
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
            let client = Client { client_id: &self.client_id, identity: self.identity.as_deref() };
            self::publish_will(&self.shared, client, will).await;
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
