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
//! lm3s6965 has no calibrated clock the example needs). Ticks are paced
//! [`TICK_PACE_MS`] apart in host time (SysTick, which QEMU runs from the
//! host clock), so a gateway's acks arrive while it runs. After the last tick
//! the example prints its link counters (`link: acks .. queued ..`) over
//! semihosting; if the gateway acknowledged anything it waits up to
//! [`ACK_WAIT_MS`] for every frame to be acknowledged and fails otherwise.
//! Without a gateway (nothing ever acked) it ends right away.
#![no_std]
#![no_main]

#[cfg(feature = "defmt")]
use defmt_semihosting as _; // the global defmt logger

use core::convert::Infallible;
use core::ptr;

use cortex_m::peripheral::SYST;
use cortex_m::peripheral::syst::SystClkSource;
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
/// Host milliseconds between ticks.
const TICK_PACE_MS: u64 = 50;
/// Host milliseconds a gateway that acks gets to acknowledge every frame.
const ACK_WAIT_MS: u64 = 10_000;
/// SysTick counts per host millisecond (QEMU's lm3s6965 core clock).
const SYSTICK_PER_MS: u32 = 12_000;

/// Host time from SysTick (QEMU drives it from the host clock).
struct Clock {
    syst: SYST,
    ms: u64,
}

impl Clock {
    fn new(mut syst: SYST) -> Self {
        syst.set_clock_source(SystClkSource::Core);
        syst.set_reload(SYSTICK_PER_MS - 1);
        syst.clear_current();
        syst.enable_counter();
        Self { syst, ms: 0 }
    }

    /// Host milliseconds since [`Clock::new`]; call it at least once a
    /// millisecond (a missed wrap only makes waits longer).
    fn now_ms(&mut self) -> u64 {
        if self.syst.has_wrapped() {
            self.ms += 1;
        }
        self.ms
    }
}

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

/// This boot's id, part of the batches' producer id: the host's clock in
/// seconds (semihosting `SYS_TIME`), so each run is its own producer. A real
/// board keeps a boot counter in flash instead
/// (`weir_firmware::flash_queue::next_boot_id`); QEMU's lm3s6965 does not
/// emulate flash programming.
fn boot_id() -> u32 {
    // SAFETY: SYS_TIME takes no parameter block; it only returns a number.
    let seconds = unsafe { cortex_m_semihosting::syscall!(TIME) };
    seconds as u32
}

/// Samples [`SAMPLES`] ticks and sends their frames; `Err` on the first
/// failure.
fn run() -> Result<(), ()> {
    let config = SamplerConfig {
        node_id: NODE_ID,
        boot_id: boot_id(),
        keys: KeyMode::Node,
        health_every: HEALTH_EVERY,
    };
    // The big buffers live in statics (counted by `size` as .bss), not on
    // the stack.
    let sampler = Sampler::<ENVELOPE>::new(&config).map_err(drop)?;
    let sampler = cortex_m::singleton!(: Sampler<ENVELOPE> = sampler).ok_or(())?;
    let queue = cortex_m::singleton!(: FrameQueue<QUEUE, FRAME> = FrameQueue::new()).ok_or(())?;
    let mut sensor = Tmp102::new(FakeI2c::new(), Address::Gnd);
    let mut link = Link::new(Uart0::new(), ACK_TIMEOUT_MS);
    let mut rx = [0u8; 32];
    let mut clock = Clock::new(cortex_m::Peripherals::take().ok_or(())?.SYST);

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
        let pace_until = clock.now_ms() + TICK_PACE_MS;
        while clock.now_ms() < pace_until {
            let n = link.transport_mut().read_available(&mut rx);
            link.receive(&rx[..n], queue, now_ms);
        }
    }
    // A gateway that acknowledged anything must acknowledge everything.
    let last_ms = u64::from(SAMPLES) * TICK_MS;
    let wait_until = clock.now_ms() + ACK_WAIT_MS;
    while link.stats().acks > 0 && !queue.is_empty() && clock.now_ms() < wait_until {
        let n = link.transport_mut().read_available(&mut rx);
        link.receive(&rx[..n], queue, last_ms);
    }
    let stats = link.stats();
    #[cfg(not(feature = "defmt"))]
    cortex_m_semihosting::hprintln!(
        "link: acks {} queued {} sent {} retransmits {} bad {}",
        stats.acks,
        queue.len(),
        stats.frames_sent,
        stats.retransmits,
        stats.bad_frames
    );
    #[cfg(feature = "defmt")]
    defmt::info!("link: acks {} queued {}", stats.acks, queue.len());
    if stats.acks > 0 && !queue.is_empty() {
        return Err(());
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
