//! The protocol's vocabulary, whatever the version: [`Version`], the MQTT 5
//! reason codes the ingest uses ([`Reason`]; MQTT 3.1.1 maps the few it has)
//! and why a connection's input was refused ([`ProtocolError`]).

/// The protocol version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5 (protocol level 5).
    V5,
}

/// MQTT 5 reason codes the ingest uses (MQTT 3.1.1 maps the few it has).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Reason {
    /// 0x00.
    Success = 0x00,
    /// 0x04: the client asks for its will to be published.
    DisconnectWithWill = 0x04,
    /// 0x80.
    UnspecifiedError = 0x80,
    /// 0x81.
    MalformedPacket = 0x81,
    /// 0x82.
    ProtocolError = 0x82,
    /// 0x83.
    ImplementationSpecificError = 0x83,
    /// 0x84.
    UnsupportedProtocolVersion = 0x84,
    /// 0x85.
    ClientIdentifierNotValid = 0x85,
    /// 0x86.
    BadUserNameOrPassword = 0x86,
    /// 0x87.
    NotAuthorized = 0x87,
    /// 0x88.
    ServerUnavailable = 0x88,
    /// 0x89.
    ServerBusy = 0x89,
    /// 0x8B.
    ServerShuttingDown = 0x8B,
    /// 0x8C.
    BadAuthenticationMethod = 0x8C,
    /// 0x8D.
    KeepAliveTimeout = 0x8D,
    /// 0x8E.
    SessionTakenOver = 0x8E,
    /// 0x90.
    TopicNameInvalid = 0x90,
    /// 0x92.
    PacketIdentifierNotFound = 0x92,
    /// 0x94.
    TopicAliasInvalid = 0x94,
    /// 0x95.
    PacketTooLarge = 0x95,
    /// 0x97.
    QuotaExceeded = 0x97,
    /// 0x99.
    PayloadFormatInvalid = 0x99,
}

impl Reason {
    /// Whether the code reports a failure (0x80 and above).
    pub fn is_error(self) -> bool {
        self as u8 >= 0x80
    }
}

/// Why a connection's input was refused. Each closes the connection; MQTT 5
/// clients are told [`ProtocolError::reason`] first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Bytes that are not a valid packet.
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// A packet larger than the maximum packet size.
    #[error("packet of {size} bytes is larger than the maximum of {max}")]
    TooLarge {
        /// The frame's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A well-formed packet where the protocol does not allow it.
    #[error("protocol error: {0}")]
    Violation(String),
    /// A topic alias out of range or never set.
    #[error("invalid topic alias: {0}")]
    TopicAlias(String),
}

impl ProtocolError {
    /// The MQTT 5 reason code of the DISCONNECT that reports it.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Malformed(_) => Reason::MalformedPacket,
            Self::TooLarge { .. } => Reason::PacketTooLarge,
            Self::Violation(_) => Reason::ProtocolError,
            Self::TopicAlias(_) => Reason::TopicAliasInvalid,
        }
    }
}
