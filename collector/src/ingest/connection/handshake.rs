//! A connection's first packet: the CONNECT read (within [`CONNECT_TIMEOUT`],
//! at most [`MAX_CONNECT_BYTES`]), its protocol sniffed and decoded; then
//! authentication (client certificate, user name and password, or anonymous
//! on the plain listener), the client id (assigned when empty), the session
//! attached (taking it over from an older connection of the same client id)
//! and the CONNACK. A refusal is a CONNACK with its reason (MQTT 3.1.1: a
//! closed socket where it has no code) and a log line.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::shared::{Listener, Shared};
use super::socket::{close, write_out};
use crate::ingest::packet::{
    self, ConnackProps, ConnectInfo, ProtocolError, Reason, Sniff, Version,
};
use crate::ingest::session::{AttachError, Attached};

/// Largest CONNECT (client id, credentials, will) accepted.
pub const MAX_CONNECT_BYTES: usize = 64 * 1024;
/// Time from accept to a complete CONNECT.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Highest MQTT 5 topic alias a client may set.
pub const TOPIC_ALIAS_MAX: u16 = 64;
/// Longest client id accepted.
pub const MAX_CLIENT_ID_BYTES: usize = 256;

/// A client whose CONNECT was accepted.
pub(super) struct Connected {
    /// The CONNECT.
    pub info: ConnectInfo,
    /// Its client id (assigned by the server when the client sent none).
    pub client_id: String,
    /// The authenticated identity (certificate or user name).
    pub identity: Option<String>,
    /// The session, attached to this connection.
    pub attached: Attached,
    /// The CONNACK, not yet written.
    pub out: BytesMut,
}

/// Reads the CONNECT into `inbuf` (which keeps any bytes after it) and
/// accepts the client, or refuses it and returns `None`.
pub(super) async fn handshake<S, IO>(
    shared: &Shared<S>,
    io: &mut IO,
    inbuf: &mut BytesMut,
    peer: SocketAddr,
    listener: Listener,
    cert_identity: Option<String>,
) -> Option<Connected>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let frame = match tokio::time::timeout(CONNECT_TIMEOUT, read_first_frame(io, inbuf)).await {
        Ok(Ok(frame)) => frame,
        Ok(Err(FirstFrame::Eof)) => {
            tracing::debug!(%peer, "connection closed before CONNECT");
            return None;
        }
        Ok(Err(FirstFrame::Io(e))) => {
            tracing::debug!(%peer, error = %e, "reading CONNECT failed");
            return None;
        }
        Ok(Err(FirstFrame::Protocol(e))) => {
            tracing::warn!(%peer, error = %e, "refused connection: bad first packet");
            close(io).await;
            return None;
        }
        Err(_) => {
            tracing::warn!(%peer, timeout = ?CONNECT_TIMEOUT, "refused connection: no CONNECT in time");
            close(io).await;
            return None;
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
            let _ = write_out(io, &mut out).await;
            close(io).await;
            return None;
        }
        Err(e) => {
            tracing::warn!(%peer, error = %e, "refused connection: not an MQTT CONNECT");
            close(io).await;
            return None;
        }
    };
    let info = match packet::decode_connect(version, frame) {
        Ok(info) => info,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "refused connection: malformed CONNECT");
            // MQTT 3.1.1 closes without a CONNACK; MQTT 5 says why first.
            match version {
                Version::V4 => close(io).await,
                Version::V5 => refuse(io, version, e.reason(), e.to_string()).await,
            }
            return None;
        }
    };
    let Accepted { client_id, identity, attached, assigned } =
        accept(shared, io, peer, listener, cert_identity, &info).await?;
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
    Some(Connected { info, client_id, identity, attached, out })
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
