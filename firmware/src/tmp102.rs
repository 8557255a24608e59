//! Driver for the TI TMP102 digital temperature sensor over I2C.
//!
//! Generic over any `embedded_hal::i2c::I2c` (embedded-hal 1.0); the driver
//! owns the bus until [`Tmp102::release`] hands it back. Existing TMP102
//! crates target embedded-hal 0.2, hence this small one.
//!
//! # Registers used
//!
//! | pointer | register | bytes (MSB first) |
//! |---------|----------|-------------------|
//! | `0x00`  | temperature | 12-bit two's complement in bits 15..4, 0.0625 °C per LSB; in extended mode (bit 0 = 1) 13 bits in bits 15..3 |
//! | `0x01`  | configuration | byte 1: `OS R1 R0 F1 F0 POL TM SD`; byte 2: `CR1 CR0 AL EM 0 0 0 0` |
//!
//! A read writes the pointer byte then reads two bytes in one transaction
//! (`write_read`); a configuration write sends the pointer and both bytes.
//! Configuration changes read the register first so that bits the driver
//! does not manage (alert polarity, conversion rate, extended mode) keep the
//! values the board set.

use core::fmt;

use embedded_hal::i2c::I2c;

use crate::sensor::{Measurement, Quantity, Sensor};

const REG_TEMPERATURE: u8 = 0x00;
const REG_CONFIG: u8 = 0x01;
/// Shutdown bit, in the configuration register's first byte.
const CONFIG_SD: u8 = 0x01;
/// Extended-mode flag, bit 0 of the temperature register's second byte.
const TEMP_EM: u8 = 0x01;

/// The I2C address, set by what the ADD0 pin is wired to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Address {
    /// ADD0 to ground: `0x48`.
    #[default]
    Gnd,
    /// ADD0 to V+: `0x49`.
    Vcc,
    /// ADD0 to SDA: `0x4A`.
    Sda,
    /// ADD0 to SCL: `0x4B`.
    Scl,
}

impl Address {
    /// The 7-bit bus address.
    pub fn bits(self) -> u8 {
        match self {
            Self::Gnd => 0x48,
            Self::Vcc => 0x49,
            Self::Sda => 0x4A,
            Self::Scl => 0x4B,
        }
    }
}

/// A driver error: the bus failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Error<E> {
    /// The I2C transaction failed; the bus's own error is kept.
    I2c(E),
}

impl<E: fmt::Debug> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::I2c(e) => write!(f, "TMP102 I2C transaction failed: {e:?}"),
        }
    }
}

impl<E: core::error::Error + 'static> core::error::Error for Error<E> {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::I2c(e) => Some(e),
        }
    }
}

/// A TMP102 on an I2C bus.
#[derive(Debug)]
pub struct Tmp102<I2C> {
    i2c: I2C,
    address: u8,
}

impl<I2C: I2c> Tmp102<I2C> {
    /// A driver for the sensor at `address`. Talks to nothing until used.
    pub fn new(i2c: I2C, address: Address) -> Self {
        Self { i2c, address: address.bits() }
    }

    /// The temperature in milli-degrees Celsius (0.0625 °C steps, rounded
    /// toward zero to the milli-degree).
    ///
    /// # Errors
    /// [`Error::I2c`] if the transaction fails.
    pub fn read_temperature(&mut self) -> Result<i32, Error<I2C::Error>> {
        let [msb, lsb] = self.read_register(REG_TEMPERATURE)?;
        let word = i16::from_be_bytes([msb, lsb]);
        // Arithmetic shift keeps the sign; extended mode has one more bit.
        let sixteenths = if lsb & TEMP_EM != 0 { word >> 3 } else { word >> 4 };
        Ok(i32::from(sixteenths) * 125 / 2)
    }

    /// Stops conversions (about 0.5 µA); the last temperature stays
    /// readable.
    ///
    /// # Errors
    /// [`Error::I2c`] if a transaction fails.
    pub fn shutdown(&mut self) -> Result<(), Error<I2C::Error>> {
        self.update_config(|first| first | CONFIG_SD)
    }

    /// Resumes continuous conversions after [`Tmp102::shutdown`].
    ///
    /// # Errors
    /// [`Error::I2c`] if a transaction fails.
    pub fn resume(&mut self) -> Result<(), Error<I2C::Error>> {
        self.update_config(|first| first & !CONFIG_SD)
    }

    /// Hands the bus back.
    pub fn release(self) -> I2C {
        self.i2c
    }

    fn read_register(&mut self, register: u8) -> Result<[u8; 2], Error<I2C::Error>> {
        let mut bytes = [0u8; 2];
        self.i2c.write_read(self.address, &[register], &mut bytes).map_err(Error::I2c)?;
        Ok(bytes)
    }

    fn update_config(&mut self, change: impl FnOnce(u8) -> u8) -> Result<(), Error<I2C::Error>> {
        let [first, second] = self.read_register(REG_CONFIG)?;
        self.i2c.write(self.address, &[REG_CONFIG, change(first), second]).map_err(Error::I2c)
    }
}

impl<I2C: I2c> Sensor for Tmp102<I2C> {
    type Error = Error<I2C::Error>;

    fn name(&self) -> &str {
        "tmp102"
    }

    fn read(&mut self) -> Result<Measurement, Self::Error> {
        let milli = self.read_temperature()?;
        Ok(Measurement { quantity: Quantity::Temperature, milli })
    }
}

#[cfg(test)]
mod tests {
    use std::vec;

    use embedded_hal::i2c::ErrorKind;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    use super::*;

    const ADDR: u8 = 0x48;

    fn temp(bytes: [u8; 2]) -> Transaction {
        Transaction::write_read(ADDR, vec![REG_TEMPERATURE], bytes.to_vec())
    }

    #[test]
    fn reads_temperatures_from_the_datasheet_table() {
        // Datasheet table 5 (12-bit) and table 6 (13-bit, extended mode).
        let expectations = [
            temp([0x7F, 0xF0]), // 127.9375 °C
            temp([0x19, 0x00]), // 25 °C
            temp([0x00, 0x10]), // 0.0625 °C
            temp([0x00, 0x00]), // 0 °C
            temp([0xFF, 0xF0]), // -0.0625 °C
            temp([0xE7, 0x00]), // -25 °C
            temp([0x4B, 0x01]), // extended: 150 °C
            temp([0xE4, 0x81]), // extended: -55 °C
        ];
        let mut i2c = Mock::new(&expectations);
        let mut sensor = Tmp102::new(i2c.clone(), Address::Gnd);
        let got: std::vec::Vec<i32> =
            (0..expectations.len()).map(|_| sensor.read_temperature().expect("read")).collect();
        assert_eq!(got, [127_937, 25_000, 62, 0, -62, -25_000, 150_000, -55_000]);
        i2c.done();
    }

    #[test]
    fn shutdown_and_resume_keep_the_other_configuration_bits() {
        let expectations = [
            Transaction::write_read(0x4A, vec![REG_CONFIG], vec![0x60, 0xA0]),
            Transaction::write(0x4A, vec![REG_CONFIG, 0x61, 0xA0]),
            Transaction::write_read(0x4A, vec![REG_CONFIG], vec![0x65, 0xB0]),
            Transaction::write(0x4A, vec![REG_CONFIG, 0x64, 0xB0]),
        ];
        let mut i2c = Mock::new(&expectations);
        let mut sensor = Tmp102::new(i2c.clone(), Address::Sda);
        sensor.shutdown().expect("shutdown");
        sensor.resume().expect("resume");
        i2c.done();
    }

    #[test]
    fn bus_errors_are_kept_and_the_bus_is_released() {
        let expectations = [temp([0, 0]).with_error(ErrorKind::Other)];
        let i2c = Mock::new(&expectations);
        let mut sensor = Tmp102::new(i2c, Address::Gnd);
        assert_eq!(sensor.read(), Err(Error::I2c(ErrorKind::Other)));
        assert_eq!(sensor.name(), "tmp102");
        let mut i2c = sensor.release();
        i2c.done();
    }
}
