//! Weir firmware on QEMU's `lm3s6965evb` (Cortex-M3).
//!
//! A simulated TMP102 (a fake I2C bus whose temperature drifts) is read
//! through the real driver every tick; the sampler turns each reading into a
//! batch frame (a health record every few ticks), the frame queue keeps it
//! until acknowledged, and the link sends it over UART0. Acks the gateway
//! sends back on UART0 are fed to the link. After [`SAMPLES`] ticks the
//! program ends QEMU through semihosting (exit status 0, or 1 on any error),
//! so a test can run it bounded in time.
//!
//! With the `defmt` feature it also logs each tick with defmt over
//! semihosting (QEMU's stdout; decode it with `defmt-print -e <elf>`).
//!
//! Time is simulated: tick `n` happens at uptime `n * TICK_MS` (QEMU's
//! lm3s6965 has no calibrated clock the example needs).
#![no_std]
#![no_main]

#[cfg(feature = "defmt")]
use defmt_semihosting as _; // the global defmt logger

use core::convert::Infallible;
use core::ptr;

use cortex_m_rt::entry;
use cortex_m_semihosting::debug;
use embedded_hal::i2c::{self, ErrorKind, I2c, NoAcknowledgeSource, Operation};
use weir_firmware::tmp102::{Address, Tmp102};
use weir_firmware::wire::max_encoded_frame_len;
use weir_firmware::{FrameQueue, KeyMode, Link, Sampler, SamplerConfig};

/// The node id: producer id of every batch and partition key of its records.
const NODE_ID: &str = "qemu-lm3s6965";
/// Ticks before the program exits.
const SAMPLES: u32 = 16;
/// Simulated milliseconds between ticks.
const TICK_MS: u64 = 1_000;
/// A health record every this many ticks.
const HEALTH_EVERY: u32 = 4;
/// Largest batch envelope: a health record and one reading fit easily.
const ENVELOPE: usize = 320;
/// Bytes of one queued frame.
const FRAME: usize = max_encoded_frame_len(ENVELOPE);
/// Frames kept until acknowledged (the oldest is dropped when full).
const QUEUE: usize = 8;
/// Resend unacknowledged frames after this long without an ack; longer than
/// the run, so without a gateway every frame goes out exactly once.
const ACK_TIMEOUT_MS: u64 = 60_000;

/// A bus with one simulated TMP102 at `0x48` whose temperature drifts
/// between 20 °C and 30 °C, a little on every temperature read.
struct FakeI2c {
    pointer: u8,
    config: [u8; 2],
    /// Temperature reads so far, modulo the 160 steps of one sweep.
    step: u16,
}

impl FakeI2c {
    const ADDRESS: u8 = 0x48;

    fn new() -> Self {
        // Power-on configuration: 12-bit, 4 Hz conversions.
        Self { pointer: 0, config: [0x60, 0xA0], step: 0 }
    }

    /// The temperature register: 12-bit two's complement in 1/16 °C.
    fn temperature(&mut self) -> [u8; 2] {
        // 20.0 ..= 29.9375 °C: positive, so the u16 has the i16's bits.
        let sixteenths = 320 + (self.step * 7) % 160;
        self.step = (self.step + 1) % 160;
        (sixteenths << 4).to_be_bytes()
    }
}

impl i2c::ErrorType for FakeI2c {
    type Error = ErrorKind;
}

impl I2c for FakeI2c {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        if address != Self::ADDRESS {
            return Err(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address));
        }
        for op in operations {
            match op {
                Operation::Write(bytes) => {
                    if let [pointer, rest @ ..] = bytes {
                        self.pointer = *pointer;
                        if *pointer == 0x01 && rest.len() == 2 {
                            self.config = [rest[0], rest[1]];
                        }
                    }
                }
                Operation::Read(buf) => {
                    let value = match self.pointer {
                        0x00 => self.temperature(),
                        0x01 => self.config,
                        _ => [0, 0],
                    };
                    for (b, v) in buf.iter_mut().zip(value.iter().chain(core::iter::repeat(&0))) {
                        *b = *v;
                    }
                }
            }
        }
        Ok(())
    }
}

/// UART0 of the LM3S6965 (a PL011), polled, as set up by QEMU.
struct Uart0;

impl Uart0 {
    const BASE: usize = 0x4000_C000;
    const DR: *mut u32 = Self::BASE as *mut u32;
    const FR: *const u32 = (Self::BASE + 0x18) as *const u32;
    const CTL: *mut u32 = (Self::BASE + 0x30) as *mut u32;
    /// FR: transmit FIFO full.
    const TXFF: u32 = 1 << 5;
    /// FR: receive FIFO empty.
    const RXFE: u32 = 1 << 4;

    /// Enables the UART, transmitter and receiver.
    fn new() -> Self {
        // SAFETY: UART0's control register on this chip; nothing else owns it.
        unsafe { ptr::write_volatile(Self::CTL, (1 << 9) | (1 << 8) | 1) };
        Self
    }

    fn flags() -> u32 {
        // SAFETY: UART0's flag register, read-only, always mapped.
        unsafe { ptr::read_volatile(Self::FR) }
    }

    fn write_byte(&mut self, byte: u8) {
        while Self::flags() & Self::TXFF != 0 {}
        // SAFETY: UART0's data register; `&mut self` makes this the only writer.
        unsafe { ptr::write_volatile(Self::DR, u32::from(byte)) };
    }

    /// Moves received bytes into `buf` without waiting; returns how many.
    fn read_available(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() && Self::flags() & Self::RXFE == 0 {
            // SAFETY: UART0's data register; reading pops the receive FIFO.
            let word = unsafe { ptr::read_volatile(Self::DR) };
            buf[n] = (word & 0xFF) as u8;
            n += 1;
        }
        n
    }
}

impl embedded_io::ErrorType for Uart0 {
    type Error = Infallible;
}

impl embedded_io::Write for Uart0 {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        for &b in buf {
            self.write_byte(b);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

#[entry]
fn main() -> ! {
    let status = if run().is_ok() { debug::EXIT_SUCCESS } else { debug::EXIT_FAILURE };
    #[cfg(feature = "defmt")]
    defmt::info!("done: {}", if status.is_ok() { "ok" } else { "failed" });
    debug::exit(status);
    loop {
        cortex_m::asm::wfi();
    }
}

/// Samples [`SAMPLES`] ticks and sends their frames; `Err` on the first
/// failure.
fn run() -> Result<(), ()> {
    let config =
        SamplerConfig { node_id: NODE_ID, keys: KeyMode::Node, health_every: HEALTH_EVERY };
    // The big buffers live in statics (counted by `size` as .bss), not on
    // the stack.
    let sampler = Sampler::<ENVELOPE>::new(&config).map_err(drop)?;
    let sampler = cortex_m::singleton!(: Sampler<ENVELOPE> = sampler).ok_or(())?;
    let queue = cortex_m::singleton!(: FrameQueue<QUEUE, FRAME> = FrameQueue::new()).ok_or(())?;
    let mut sensor = Tmp102::new(FakeI2c::new(), Address::Gnd);
    let mut link = Link::new(Uart0::new(), ACK_TIMEOUT_MS);
    let mut rx = [0u8; 32];

    for tick in 0..SAMPLES {
        let now_ms = u64::from(tick) * TICK_MS;
        let mut sample = sampler.start(queue, now_ms, None).map_err(drop)?;
        let _reading = sample.read(&mut sensor).map_err(drop)?;
        let _pushed = sample.finish().map_err(drop)?;
        let _sent = link.poll(queue, now_ms).map_err(drop)?;
        #[cfg(feature = "defmt")]
        defmt::info!(
            "tick {}: {} m°C, frame {}, {} frame(s) sent, {} queued",
            tick,
            _reading.milli,
            _pushed.map(|p| p.seq),
            _sent,
            queue.len()
        );
        let n = link.transport_mut().read_available(&mut rx);
        link.receive(&rx[..n], queue, now_ms);
    }
    Ok(())
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    #[cfg(feature = "defmt")]
    defmt::error!("panic");
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}
