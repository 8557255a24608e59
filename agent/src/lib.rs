//! weir-agent: the Linux device agent.
//!
//! Inputs (file tailing, host metrics, serial frames) produce records; the
//! records are batched into wire batches and written to the on-disk
//! [`spool`] before anything is sent; the shipper sends spooled batches over
//! MQTT/TLS and releases them only after the collector's acknowledgement.

pub mod spool;
pub mod tail;

/// The agent's version, as its binary reports it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
