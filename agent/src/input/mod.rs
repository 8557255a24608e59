//! The inputs: each runs on its own thread and sends [`crate::event::Event`]s
//! to the batcher over the bounded channel.
//!
//! - `file`: log files, through the [`crate::tail`] tailer and optional
//!   [`crate::multiline`] grouping;
//! - `metrics`: host metrics sampled at an interval;
//! - `serial`: frames from microcontroller nodes on a serial line or Unix
//!   socket, acknowledged back to the node once spooled.

pub mod file;
pub mod metrics;
pub mod serial;
