//! Kinesis's error vocabulary: the `__type` names clients switch on, and how
//! store errors map to them.
//!
//! Client errors answer HTTP 400 with `{"__type": "<Name>", "message": "..."}`
//! (in the request's encoding, plus an `x-amzn-ErrorType` header); server
//! faults answer 500 `InternalFailure`. Only this module decides which name a
//! failure gets.

use std::fmt;

use crate::store::StoreError;

/// The account id in ARNs and messages: the collector has one account.
pub const ACCOUNT_ID: &str = "000000000000";

/// Kinesis's error names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The stream or shard does not exist.
    ResourceNotFound,
    /// The stream exists already, or is not ACTIVE.
    ResourceInUse,
    /// A value is well-formed but not acceptable.
    InvalidArgument,
    /// A member breaks its constraint (length, range, pattern, required).
    Validation,
    /// A limit of the account or stream was reached.
    LimitExceeded,
    /// The shard's write budget is spent.
    ProvisionedThroughputExceeded,
    /// The shard iterator is older than five minutes.
    ExpiredIterator,
    /// The pagination token is older than five minutes.
    ExpiredNextToken,
    /// The body does not decode into the operation's input.
    Serialization,
    /// `X-Amz-Target` names no operation.
    UnknownOperation,
    /// The caller may not do this.
    AccessDenied,
    /// A fault of the collector.
    InternalFailure,
}

impl ErrorKind {
    /// The `__type` string.
    pub fn name(self) -> &'static str {
        match self {
            Self::ResourceNotFound => "ResourceNotFoundException",
            Self::ResourceInUse => "ResourceInUseException",
            Self::InvalidArgument => "InvalidArgumentException",
            Self::Validation => "ValidationException",
            Self::LimitExceeded => "LimitExceededException",
            Self::ProvisionedThroughputExceeded => "ProvisionedThroughputExceededException",
            Self::ExpiredIterator => "ExpiredIteratorException",
            Self::ExpiredNextToken => "ExpiredNextTokenException",
            Self::Serialization => "SerializationException",
            Self::UnknownOperation => "UnknownOperationException",
            Self::AccessDenied => "AccessDeniedException",
            Self::InternalFailure => "InternalFailure",
        }
    }

    /// The HTTP status it is sent with.
    pub fn status(self) -> u16 {
        match self {
            Self::InternalFailure => 500,
            _ => 400,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed API call: the name the client sees, its message and, for store
/// failures, the cause (logged, not sent).
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ApiError {
    /// The error name.
    pub kind: ErrorKind,
    /// The message sent to the client.
    pub message: String,
    /// The store error behind it, if any (boxed: errors travel in every
    /// `Result` of the API, so they stay small).
    #[source]
    pub source: Option<Box<StoreError>>,
}

impl ApiError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), source: None }
    }

    /// `InvalidArgumentException`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    /// `ResourceNotFoundException` for a stream.
    pub fn stream_not_found(stream: &str) -> Self {
        Self::new(
            ErrorKind::ResourceNotFound,
            format!("Stream {stream} under account {ACCOUNT_ID} not found."),
        )
    }

    /// `SerializationException`.
    pub fn serialization(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Serialization, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let (kind, message) = match &e {
            StoreError::StreamNotFound(s) => (
                ErrorKind::ResourceNotFound,
                format!("Stream {s} under account {ACCOUNT_ID} not found."),
            ),
            StoreError::StreamExists(s) => (
                ErrorKind::ResourceInUse,
                format!("Stream {s} under account {ACCOUNT_ID} already exists."),
            ),
            StoreError::StreamNotActive { stream, status } => (
                ErrorKind::ResourceInUse,
                format!(
                    "Stream {stream} under account {ACCOUNT_ID} not ACTIVE, instead in state {status}"
                ),
            ),
            StoreError::ShardNotFound { stream, shard } => (
                ErrorKind::ResourceNotFound,
                format!(
                    "Shard {shard} in stream {stream} under account {ACCOUNT_ID} does not exist"
                ),
            ),
            StoreError::ShardClosed { stream, shard } => (
                ErrorKind::InvalidArgument,
                format!("Shard {shard} in stream {stream} under account {ACCOUNT_ID} is closed"),
            ),
            StoreError::InvalidArgument(m) => (ErrorKind::InvalidArgument, m.clone()),
            StoreError::InvalidRecord(v) => (ErrorKind::Validation, v.to_string()),
            StoreError::LimitExceeded(m) => (ErrorKind::LimitExceeded, m.clone()),
            StoreError::ThroughputExceeded { stream, shard } => (
                ErrorKind::ProvisionedThroughputExceeded,
                format!(
                    "Rate exceeded for shard {shard} in stream {stream} under account {ACCOUNT_ID}."
                ),
            ),
            StoreError::DiskFull { .. }
            | StoreError::OutOfSpace { .. }
            | StoreError::ShardFailed { .. } => (ErrorKind::InternalFailure, e.to_string()),
            // Corruption, failed writers, I/O, shutdown: the collector's fault.
            _ => (ErrorKind::InternalFailure, "Internal service failure.".to_owned()),
        };
        Self { kind, message, source: Some(Box::new(e)) }
    }
}

/// Collects constraint violations of one request, to report them the way
/// Kinesis does: `N validation error(s) detected: Value 'v' at 'member' failed
/// to satisfy constraint: ...; ...`.
#[derive(Debug, Default)]
pub struct Violations(Vec<String>);

/// Longest rendering of a value inside a validation message.
const MAX_VALUE_IN_MESSAGE: usize = 64;

impl Violations {
    /// Records that `value` at `member` breaks `constraint`.
    pub fn add(&mut self, member: &str, value: &dyn fmt::Display, constraint: &str) {
        let mut v = value.to_string();
        if v.len() > MAX_VALUE_IN_MESSAGE {
            let cut =
                (0..=MAX_VALUE_IN_MESSAGE).rev().find(|i| v.is_char_boundary(*i)).unwrap_or(0);
            v.truncate(cut);
            v.push_str("...");
        }
        self.0
            .push(format!("Value '{v}' at '{member}' failed to satisfy constraint: {constraint}"));
    }

    /// Records that the required `member` is missing.
    pub fn missing(&mut self, member: &str) {
        self.0.push(format!(
            "Value null at '{member}' failed to satisfy constraint: Member must not be null"
        ));
    }

    /// `Ok` when nothing was recorded, else the `ValidationException`.
    ///
    /// # Errors
    /// The collected violations.
    pub fn finish(self) -> Result<(), ApiError> {
        match self.0.len() {
            0 => Ok(()),
            1 => Err(ApiError::new(
                ErrorKind::Validation,
                format!("1 validation error detected: {}", self.0[0]),
            )),
            n => Err(ApiError::new(
                ErrorKind::Validation,
                format!("{n} validation errors detected: {}", self.0.join("; ")),
            )),
        }
    }
}
