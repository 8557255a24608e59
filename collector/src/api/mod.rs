//! The Kinesis Data Streams–compatible HTTP API: the official AWS SDKs, the
//! AWS CLI and Kinesis tooling talk to the collector as they would to
//! Kinesis.
//!
//! `server` (HTTP: routes, body limits, backpressure) → `dispatch` (an
//! operation by name) → `streams`, `records`, `admin` (one function per
//! operation) → `service` (`Api` over any `StreamStore`, and the checks and
//! shapes operations share). `codec` is the only place that knows
//! JSON 1.1 and CBOR 1.1, `model` the request/response shapes, `error` the
//! error names, `token` the signed shard iterators and page tokens, `metrics`
//! the Prometheus names. `firehose` serves `Firehose_20150804.*` over the
//! collector's delivery streams (`crate::firehose::Manager`).
//!
//! **Invariant**: only this module knows Kinesis's wire shapes; the store
//! speaks its own vocabulary (`store::backend`).

pub mod admin;
pub mod codec;
pub mod dispatch;
pub mod error;
pub mod firehose;
pub mod listener;
pub mod metrics;
pub mod model;
pub mod records;
pub mod server;
pub mod service;
pub mod streams;
pub mod token;

pub use codec::Encoding;
pub use error::{ApiError, ErrorKind};
pub use firehose::FirehoseApi;
pub use listener::{HttpListener, StartError};
pub use server::{router, router_with_firehose, serve, serve_with_firehose};
pub use service::{Api, ApiConfig};
pub use token::TokenSigner;
