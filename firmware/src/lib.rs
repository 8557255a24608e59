//! weir-firmware: the `no_std` telemetry core for microcontrollers.
//!
//! A sensor node samples its sensors, turns each reading into a wire record,
//! keeps the encoded serial frames in RAM (or, with the `flash-queue`
//! feature, in NOR flash across resets) until its gateway (a weir-agent
//! reading the serial line) acknowledges them, and sends them over any
//! `embedded-io` writer:
//!
//! ```text
//! Sensor (Tmp102 over embedded-hal I2C) --read--> Sampler::start .. Tick::read .. Tick::finish
//!     one batch envelope per tick (+ a health record every `health_every` ticks)
//!     --encode_frame--> FrameStore: FrameQueue<N, F> in RAM | FlashQueue<S, F> in flash
//!                       (drop oldest when full, count drops)
//!     --Link::poll--> Transport (embedded-io Write) --serial--> gateway
//!     <--Link::receive-- Ack frames (highest sequence spooled) --> FrameStore::ack
//! ```
//!
//! No allocator: every buffer is a const-generic capacity chosen by the
//! board. Logging goes through defmt when the `defmt` feature is on and
//! compiles to nothing otherwise.
#![no_std]

#[cfg(test)]
extern crate std;

#[macro_use]
mod fmt;

#[cfg(feature = "flash-queue")]
pub mod flash_queue;
pub mod link;
pub mod queue;
pub mod sampler;
pub mod sensor;
pub mod tmp102;

pub use link::{Link, LinkStats, Transport};
pub use queue::{FrameQueue, FrameStore, Pushed};
pub use sampler::{ConfigError, KeyMode, SampleError, Sampler, SamplerConfig, Tick};
pub use sensor::{Measurement, Quantity, Sensor};
pub use tmp102::Tmp102;
pub use weir_wire as wire;
