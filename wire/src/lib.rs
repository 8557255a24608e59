//! weir-wire: the bytes that cross Weir's process boundaries.
//!
//! Everything a device, an agent and the collector exchange is defined here and
//! nowhere else: the [`hash`] rule that maps a partition key to a shard, the
//! [`validate`] limits every producer and the collector agree on, the
//! [`record`] and [`batch`] encodings, the versioned [`envelope`] that every
//! MQTT payload and serial data frame carries, and the serial [`frame`] used
//! on microcontroller links. Each module documents its bytes one by one; the
//! [`error`] types say why bytes were refused.
//!
//! Besides the bytes, the crate holds the few rules every side shares because
//! it is the one crate they all depend on: the stream-name rule
//! ([`validate::validate_stream_name`]), the [`backoff`] rule, and (`std`)
//! [`durable_file`].
//!
//! The layers nest: a frame carries an envelope, an envelope carries a record
//! or a batch, a batch carries records.
//!
//! ```text
//! serial line:  COBS( [type][seq u32 LE][envelope][CRC32C u32 LE] ) 0x00
//! envelope:     [version = 1][kind: 1 record | 2 batch][payload]
//! batch:        [producer id][batch seq][count u16 LE][record]...[record]
//! record:       [key][data][explicit hash key?][producer timestamp?]
//! ```
//!
//! Decoding never panics, whatever the bytes: every fault is a
//! [`DecodeError`] or [`FrameError`] value.
//!
//! The crate is `#![no_std]` and allocation-free by default so firmware can use
//! it; the `alloc`/`std` features add owned types for hosts, and `std` adds
//! [`durable_file`], the atomic file replacement both host binaries use.
#![no_std]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod backoff;
pub mod batch;
#[cfg(all(feature = "std", unix))]
pub mod durable_file;
pub mod envelope;
pub mod error;
pub mod frame;
pub mod hash;
pub mod record;
pub mod validate;

#[cfg(feature = "alloc")]
pub use batch::OwnedBatch;
pub use batch::{BatchEncoder, BatchView, Records};
pub use envelope::{
    ENVELOPE_HEADER_LEN, Envelope, EnvelopeKind, FORMAT_VERSION, batch_encoder, encode_record,
};
#[cfg(feature = "alloc")]
pub use envelope::{encode_batch_to_vec, encode_record_to_vec};
pub use error::{DecodeError, EncodeError, FrameError};
pub use frame::{
    FeedResult, Frame, FrameDecoder, FrameKind, MAX_ENCODED_FRAME_LEN, MaxFrameDecoder,
    decode_frame, encode_frame, max_encoded_frame_len,
};
pub use hash::{HashRange, HashRangeError, hash_key};
#[cfg(feature = "alloc")]
pub use record::OwnedRecord;
pub use record::Record;
pub use validate::{
    MAX_BATCH_BYTES, MAX_BATCH_RECORDS, MAX_DATA_BYTES, MAX_FRAME_PAYLOAD, MAX_PARTITION_KEY_CHARS,
    MAX_PRODUCER_ID_BYTES, ValidationError, validate_data, validate_partition_key,
};
