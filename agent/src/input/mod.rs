//! The inputs: each runs on its own thread and sends [`crate::event::Event`]s
//! to the batcher over the bounded channel.
//!
//! - `file`: log files, through the [`crate::tail`] tailer and optional
//!   [`crate::multiline`] grouping;
//! - `metrics`: host metrics sampled at an interval.
//!
//! The `serial` kind (frames from microcontrollers) is reserved for the
//! firmware issue; the configuration refuses it for now.

pub mod file;
pub mod metrics;
