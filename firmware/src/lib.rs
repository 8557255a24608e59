//! weir-firmware: the no_std telemetry core for microcontrollers.
//!
//! Not built yet: the firmware issue fills it with the sensor sampler, the
//! store-and-forward queue and the serial transport. Today it re-exports the
//! wire format it will speak, so that it builds for the host and for
//! `thumbv7m-none-eabi` from the first commit.
#![no_std]

pub use weir_wire as wire;
