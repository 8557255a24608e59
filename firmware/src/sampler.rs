//! The sampler: sensor readings in, one queued wire frame per tick out.
//!
//! Each tick ([`Sampler::start`] .. [`Tick::read`] per sensor ..
//! [`Tick::finish`]) builds one batch envelope in the sampler's `B`-byte
//! buffer with the wire crate's `batch_encoder` (no allocator, no copy),
//! whose producer id is `<node id>@<boot id>` and whose batch sequence
//! number is the frame's sequence number, and queues it as one data frame
//! in any [`FrameStore`] (the RAM [`crate::FrameQueue`], or the flash queue).
//! Every `health_every` ticks, starting with the first, the batch opens with
//! a health record.
//!
//! # Producer id and boot id
//!
//! The boot id (8 lowercase hex digits) makes each boot of a node its own
//! producer: a node whose RAM queue restarts its sequence numbers after a
//! reset does not send batches the gateway would take for retransmits of the
//! previous boot's (it dedupes per producer id and sequence number). Boards
//! take it from a boot counter in flash (`flash_queue::next_boot_id`, feature
//! `flash-queue`) or any value that changes per boot (a clock, a random
//! number). Records keep the plain node id as their
//! partition key, so all boots of a node land on the same shard.
//!
//! # Records
//!
//! Partition key: the node id, or `<node id>/<sensor name>` with
//! [`KeyMode::PerSensor`] (health records always use the node id). The
//! producer timestamp is the wall-clock time given to [`Sampler::start`], if
//! the node has one. Data is one JSON object, the shape of weir-agent's
//! metrics input, values in the quantity's unit with three decimals:
//!
//! ```json
//! {"metric":"temperature","sensor":"tmp102","value":21.500,"unit":"celsius","uptime_ms":5000}
//! {"metric":"weir.health","frames_dropped":0,"frames_queued":3,"sensor_errors":0,"uptime_ms":5000}
//! ```
//!
//! `frames_dropped` and `sensor_errors` count since boot; `frames_queued`
//! is the queue length when the tick started.

use core::convert::Infallible;
use core::fmt::{self, Write as _};

use heapless::String;
use weir_wire::{
    BatchEncoder, EncodeError, FrameError, MAX_FRAME_PAYLOAD, MAX_PRODUCER_ID_BYTES, Record,
    batch_encoder, max_encoded_frame_len,
};

use crate::queue::{FrameStore, Pushed};
use crate::sensor::{Measurement, Sensor};

/// Longest node id, in bytes: the producer id `<node id>@<boot id>` must fit
/// the wire's [`MAX_PRODUCER_ID_BYTES`].
pub const MAX_NODE_ID_BYTES: usize = MAX_PRODUCER_ID_BYTES - BOOT_SUFFIX_BYTES;

/// `@` and 8 hex digits.
const BOOT_SUFFIX_BYTES: usize = 9;

/// Longest sensor name, in bytes.
pub const MAX_SENSOR_NAME_BYTES: usize = 32;

/// Room for the longest partition key: node id, `/`, sensor name.
const KEY_BYTES: usize = MAX_PRODUCER_ID_BYTES + 1 + MAX_SENSOR_NAME_BYTES;

/// Room for one record's JSON: the longest (a health record with every
/// counter at its maximum) is under 150 bytes.
const DATA_BYTES: usize = 192;

/// Which partition key a sensor's records get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum KeyMode {
    /// The node id: all of a node's records on one shard, in order.
    #[default]
    Node,
    /// `<node id>/<sensor name>`: sensors spread over shards, each in order.
    PerSensor,
}

/// How a [`Sampler`] is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplerConfig<'a> {
    /// The node's id: the records' partition key and the first part of the
    /// batches' producer id, 1 to [`MAX_NODE_ID_BYTES`] (55) bytes.
    pub node_id: &'a str,
    /// This boot's id, different on every boot: the batches' producer id is
    /// `<node_id>@<boot_id as 8 lowercase hex digits>`.
    pub boot_id: u32,
    /// Partition keys per node or per sensor.
    pub keys: KeyMode,
    /// A health record every this many ticks (at least 1).
    pub health_every: u32,
}

impl SamplerConfig<'_> {
    /// Checks the configuration.
    ///
    /// # Errors
    /// [`ConfigError::InvalidNodeId`] unless `node_id` is 1 to
    /// [`MAX_NODE_ID_BYTES`] bytes;
    /// [`ConfigError::ZeroHealthInterval`] if `health_every` is 0.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bytes = self.node_id.len();
        if bytes == 0 || bytes > MAX_NODE_ID_BYTES {
            return Err(ConfigError::InvalidNodeId { bytes });
        }
        if self.health_every == 0 {
            return Err(ConfigError::ZeroHealthInterval);
        }
        Ok(())
    }
}

/// Why a [`SamplerConfig`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ConfigError {
    /// `node_id` must be 1 to [`MAX_NODE_ID_BYTES`] bytes.
    InvalidNodeId {
        /// Its length in bytes.
        bytes: usize,
    },
    /// `health_every` must be at least 1.
    ZeroHealthInterval,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidNodeId { bytes } => {
                write!(f, "node_id is {bytes} bytes; it must be 1 to {MAX_NODE_ID_BYTES}")
            }
            Self::ZeroHealthInterval => f.write_str("health_every must be at least 1"),
        }
    }
}

impl core::error::Error for ConfigError {}

/// Why a tick or a reading failed. `E` is the sensor's error, `Q` the frame
/// store's ([`FrameStore::Error`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SampleError<E = Infallible, Q = FrameError> {
    /// The sensor failed; counted in the health record's `sensor_errors`.
    Sensor(E),
    /// The sensor's name is empty, longer than [`MAX_SENSOR_NAME_BYTES`], or
    /// holds a byte other than ASCII letters, digits, `.`, `_`, `-`.
    InvalidSensorName,
    /// The record did not fit the batch buffer (`B` too small for the
    /// sensors of one tick), or broke a wire limit.
    Encode(EncodeError),
    /// The envelope could not be framed or stored; nothing was queued.
    Frame(Q),
}

impl<E: fmt::Debug, Q: fmt::Display> fmt::Display for SampleError<E, Q> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sensor(e) => write!(f, "sensor read failed: {e:?}"),
            Self::InvalidSensorName => f.write_str(
                "sensor name must be 1 to 32 bytes of ASCII letters, digits, '.', '_' or '-'",
            ),
            Self::Encode(e) => write!(f, "record not encoded: {e}"),
            Self::Frame(e) => write!(f, "frame not queued: {e}"),
        }
    }
}

impl<E: fmt::Debug, Q: core::error::Error + 'static> core::error::Error for SampleError<E, Q> {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Encode(e) => Some(e),
            Self::Frame(e) => Some(e),
            Self::Sensor(_) | Self::InvalidSensorName => None,
        }
    }
}

/// A value in thousandths, written as a decimal with three places.
struct Milli(i32);

impl fmt::Display for Milli {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:03}", abs / 1000, abs % 1000)
    }
}

fn valid_sensor_name(name: &str) -> bool {
    (1..=MAX_SENSOR_NAME_BYTES).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Builds one frame per tick from sensor readings. `B` is the largest
/// envelope in bytes (at most [`MAX_FRAME_PAYLOAD`]); the frame store's
/// [`FrameStore::FRAME_CAPACITY`] must be at least
/// [`max_encoded_frame_len`]`(B)` (checked at compile time).
#[derive(Debug)]
pub struct Sampler<const B: usize> {
    node_id: String<MAX_NODE_ID_BYTES>,
    /// `<node id>@<boot id>`.
    producer_id: String<MAX_PRODUCER_ID_BYTES>,
    keys: KeyMode,
    health_every: u32,
    ticks: u32,
    sensor_errors: u32,
    buf: [u8; B],
}

impl<const B: usize> Sampler<B> {
    /// A sampler for the node `config` describes.
    ///
    /// # Errors
    /// Those of [`SamplerConfig::validate`].
    pub fn new(config: &SamplerConfig<'_>) -> Result<Self, ConfigError> {
        const { assert!(B <= MAX_FRAME_PAYLOAD, "an envelope must fit one frame") };
        config.validate()?;
        let invalid = ConfigError::InvalidNodeId { bytes: config.node_id.len() };
        let mut node_id = String::new();
        node_id.push_str(config.node_id).map_err(|()| invalid)?;
        let mut producer_id = String::new();
        write!(producer_id, "{}@{:08x}", config.node_id, config.boot_id).map_err(|_| invalid)?;
        Ok(Self {
            node_id,
            producer_id,
            keys: config.keys,
            health_every: config.health_every,
            ticks: 0,
            sensor_errors: 0,
            buf: [0; B],
        })
    }

    /// Starts a tick that will be queued in `queue`: opens the batch, with a
    /// health record first when one is due.
    ///
    /// `uptime_ms` is the node's monotonic clock; `timestamp_ms` its wall
    /// clock (milliseconds since the Unix epoch), if it has one.
    ///
    /// # Errors
    /// [`SampleError::Encode`] if `B` cannot hold the batch header and the
    /// health record.
    pub fn start<'s, 'q, Q: FrameStore>(
        &'s mut self,
        queue: &'q mut Q,
        uptime_ms: u64,
        timestamp_ms: Option<u64>,
    ) -> Result<Tick<'s, 'q, Q>, SampleError> {
        const {
            assert!(
                Q::FRAME_CAPACITY >= max_encoded_frame_len(B),
                "queue slots must hold a full envelope"
            )
        };
        let health_due = self.ticks.is_multiple_of(self.health_every);
        self.ticks = self.ticks.wrapping_add(1);
        let batch = batch_encoder(&mut self.buf, &self.producer_id, u64::from(queue.next_seq()))
            .map_err(SampleError::Encode)?;
        let mut tick = Tick {
            batch,
            node_id: &self.node_id,
            keys: self.keys,
            uptime_ms,
            timestamp_ms,
            sensor_errors: &mut self.sensor_errors,
            queue,
        };
        if health_due {
            tick.push_health()?;
        }
        Ok(tick)
    }

    /// Sensor reads that failed since boot (saturating).
    pub fn sensor_errors(&self) -> u32 {
        self.sensor_errors
    }

    /// The batches' producer id: `<node id>@<boot id>`.
    pub fn producer_id(&self) -> &str {
        &self.producer_id
    }
}

/// One tick in progress: read each sensor, then [`Tick::finish`].
#[derive(Debug)]
pub struct Tick<'s, 'q, Q> {
    batch: BatchEncoder<'s>,
    node_id: &'s str,
    keys: KeyMode,
    uptime_ms: u64,
    timestamp_ms: Option<u64>,
    sensor_errors: &'s mut u32,
    queue: &'q mut Q,
}

impl<Q: FrameStore> Tick<'_, '_, Q> {
    /// Reads `sensor` and adds its record to the batch.
    ///
    /// # Errors
    /// [`SampleError::InvalidSensorName`] (the sensor is not read);
    /// [`SampleError::Sensor`] if the read failed (counted);
    /// [`SampleError::Encode`] if the batch buffer is full. The tick stays
    /// usable in every case.
    pub fn read<S: Sensor>(
        &mut self,
        sensor: &mut S,
    ) -> Result<Measurement, SampleError<S::Error>> {
        let mut name = String::<MAX_SENSOR_NAME_BYTES>::new();
        if !valid_sensor_name(sensor.name()) || name.push_str(sensor.name()).is_err() {
            return Err(SampleError::InvalidSensorName);
        }
        let measurement = match sensor.read() {
            Ok(m) => m,
            Err(e) => {
                *self.sensor_errors = self.sensor_errors.saturating_add(1);
                warn!("sensor read failed");
                return Err(SampleError::Sensor(e));
            }
        };
        let mut key = String::<KEY_BYTES>::new();
        let mut data = String::<DATA_BYTES>::new();
        let written = (|| {
            key.write_str(self.node_id)?;
            if self.keys == KeyMode::PerSensor {
                write!(key, "/{name}")?;
            }
            write!(
                data,
                r#"{{"metric":"{}","sensor":"{name}","value":{},"unit":"{}","uptime_ms":{}}}"#,
                measurement.quantity.metric(),
                Milli(measurement.milli),
                measurement.quantity.unit(),
                self.uptime_ms,
            )
        })();
        // The capacities above fit the longest key and JSON.
        written.map_err(|fmt::Error| SampleError::Encode(EncodeError::BufferFull))?;
        self.push(&key, &data).map_err(SampleError::Encode)?;
        Ok(measurement)
    }

    /// Queues the batch as one frame; returns its sequence number (and what
    /// was dropped for it), or `None` if the batch is empty (no health record
    /// due and no sensor read).
    ///
    /// # Errors
    /// [`SampleError::Frame`] if the envelope cannot be framed or stored;
    /// nothing is queued then.
    pub fn finish(self) -> Result<Option<Pushed>, SampleError<Infallible, Q::Error>> {
        if self.batch.is_empty() {
            return Ok(None);
        }
        let envelope = self.batch.finish().map_err(SampleError::Encode)?;
        self.queue.push(envelope).map(Some).map_err(SampleError::Frame)
    }

    fn push_health(&mut self) -> Result<(), SampleError> {
        let mut data = String::<DATA_BYTES>::new();
        write!(
            data,
            r#"{{"metric":"weir.health","frames_dropped":{},"frames_queued":{},"sensor_errors":{},"uptime_ms":{}}}"#,
            self.queue.dropped(),
            self.queue.len(),
            self.sensor_errors,
            self.uptime_ms,
        )
        .map_err(|fmt::Error| SampleError::Encode(EncodeError::BufferFull))?;
        self.push(self.node_id, &data).map_err(SampleError::Encode)
    }

    fn push(&mut self, key: &str, data: &str) -> Result<(), EncodeError> {
        let record = Record {
            partition_key: key,
            data: data.as_bytes(),
            explicit_hash_key: None,
            producer_timestamp_ms: self.timestamp_ms,
        };
        self.batch.push(&record)
    }
}

#[cfg(test)]
mod tests;
