//! What the sampler needs from a sensor: a name and one reading at a time.
//!
//! Readings are integers in thousandths of their unit (milli-degrees
//! Celsius, thousandths of a percent), so no floating point is needed on
//! cores without an FPU.

/// A physical quantity a sensor measures, with its metric name and unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Quantity {
    /// Degrees Celsius.
    Temperature,
    /// Relative humidity in percent.
    RelativeHumidity,
}

impl Quantity {
    /// The metric name written into records (`"temperature"`).
    pub fn metric(self) -> &'static str {
        match self {
            Self::Temperature => "temperature",
            Self::RelativeHumidity => "humidity",
        }
    }

    /// The unit written into records (`"celsius"`).
    pub fn unit(self) -> &'static str {
        match self {
            Self::Temperature => "celsius",
            Self::RelativeHumidity => "percent",
        }
    }
}

/// One reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Measurement {
    /// What was measured.
    pub quantity: Quantity,
    /// The value in thousandths of the quantity's unit.
    pub milli: i32,
}

/// A sensor the [`crate::Sampler`] can read.
pub trait Sensor {
    /// Why a reading failed (usually the driver's `Error<E>`).
    type Error;

    /// A short name for records and per-sensor partition keys: 1 to 32 bytes
    /// of ASCII letters, digits, `.`, `_` or `-`.
    fn name(&self) -> &str;

    /// Takes one reading.
    ///
    /// # Errors
    /// Whatever the sensor or its bus reports.
    fn read(&mut self) -> Result<Measurement, Self::Error>;
}
