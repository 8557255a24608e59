//! weir-wire: the bytes that cross Weir's process boundaries.
//!
//! Everything a device, an agent and the collector exchange is defined here and
//! nowhere else: the [`hash`] rule that maps a partition key to a shard, the
//! [`validate`] limits every producer and the collector agree on, and (in the
//! modules filled by the record-format work) records, batches, the versioned
//! envelope and the serial frame used on microcontroller links.
//!
//! The crate is `#![no_std]` and allocation-free by default so firmware can use
//! it; the `alloc`/`std` features add owned types for hosts.
#![no_std]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod hash;
pub mod validate;

pub use hash::{HashRange, HashRangeError, hash_key};
pub use validate::{
    MAX_BATCH_BYTES, MAX_BATCH_RECORDS, MAX_DATA_BYTES, MAX_PARTITION_KEY_CHARS, ValidationError,
    validate_data, validate_partition_key,
};
