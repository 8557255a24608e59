//! Weir firmware on the nRF52840-DK (Cortex-M4F, `thumbv7em-none-eabihf`).
//!
//! A TMP102 on TWIM0 (Arduino header SDA P0.26, SCL P0.27) is read every
//! [`TICK_MS`]; the sampler turns each reading into a batch frame (a health
//! record every [`HEALTH_EVERY`] ticks), the flash queue keeps it in the
//! chip's own flash until the gateway acknowledges it, and the link sends it
//! over UARTE0 at 115200 baud on the DK's J-Link virtual COM port (TXD P0.06,
//! RXD P0.08): the USB serial device (`/dev/ttyACM0`) a weir-agent on the
//! gateway reads. Between ticks the board listens for the gateway's acks.
//!
//! - **Node id**: `nrf52840-<FICR device id>`, unique per chip; the
//!   producer id adds `@<boot id>`, a boot counter kept in flash.
//! - **Flash**: the last 32K of flash, kept out of the program by
//!   `memory.x`: 24K of frame queue, 8K of boot counter. Unacknowledged
//!   frames survive a reset and numbering continues after them.
//! - **Logs**: defmt over RTT; `cargo run --release` (probe-rs) prints them.
//! - **Time**: RTC0 on the 32.768 kHz crystal; no wall clock, so records
//!   carry `uptime_ms` and no producer timestamp (the gateway stamps
//!   arrival).
#![no_std]
#![no_main]

use core::convert::Infallible;
use core::fmt::Write as _;
use core::ops::Range;

use cortex_m_rt::entry;
use defmt::{Debug2Format, error, info, warn};
use defmt_rtt as _; // the global defmt logger
use nrf52840_hal::Clocks;
use nrf52840_hal::clocks::LfOscConfiguration;
use nrf52840_hal::gpio::{Level, p0};
use nrf52840_hal::nvmc::Nvmc;
use nrf52840_hal::pac::{self, NVMC, RTC0, TIMER0, UARTE0};
use nrf52840_hal::rtc::Rtc;
use nrf52840_hal::timer::Timer;
use nrf52840_hal::twim::{self, Twim};
use nrf52840_hal::uarte::{self, Baudrate, Parity, Uarte};
use panic_probe as _; // panics end `probe-rs run` with an error
use weir_firmware::flash_queue::{Blocking, FlashQueue, next_boot_id, slot_len};
use weir_firmware::tmp102::{Address, Tmp102};
use weir_firmware::{FrameStore, KeyMode, Link, Sampler, SamplerConfig, Transport};

/// Milliseconds between ticks.
const TICK_MS: u64 = 1_000;
/// A health record every this many ticks.
const HEALTH_EVERY: u32 = 10;
/// Largest batch envelope: a health record and one reading fit easily.
const ENVELOPE: usize = 320;
/// Bytes of one flash queue slot (the nRF52840's flash words are 4 bytes).
const SLOT: usize = slot_len(ENVELOPE, 4);
/// Resend unacknowledged frames after this long without an ack.
const ACK_TIMEOUT_MS: u64 = 5_000;
/// Longest wait for ack bytes in one UARTE read, in microseconds (TIMER0
/// counts at 1 MHz).
const LISTEN_US: u32 = 50_000;

/// First byte of the flash the program does not use (`memory.x`).
const STORAGE_START: usize = 0x000F_8000;
/// Bytes of that flash: to the end of the 1 MiB.
const STORAGE_LEN: usize = 32 * 1024;
/// The frame queue's part of it (offsets into the storage), 6 pages of 4K.
const QUEUE_RANGE: Range<u32> = 0..24 * 1024;
/// The boot counter's part, 2 pages (a `sequential-storage` map needs 2).
const BOOT_RANGE: Range<u32> = 24 * 1024..32 * 1024;

/// The NVMC driver over the storage region, for `sequential-storage`.
type Flash = Blocking<Nvmc<NVMC>>;

/// UARTE0 to the gateway.
struct Gateway {
    uarte: Uarte<UARTE0>,
}

impl Transport for Gateway {
    type Error = uarte::Error;

    fn send(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        // EasyDMA reads RAM only, and `bytes` may be in flash (the link's
        // leading delimiter is a constant): copy through the stack.
        let mut chunk = [0u8; 64];
        for part in bytes.chunks(chunk.len()) {
            let buf = &mut chunk[..part.len()];
            buf.copy_from_slice(part);
            self.uarte.write(buf)?;
        }
        Ok(())
    }
}

impl Gateway {
    /// Receives into `buf` until it is full or [`LISTEN_US`] passed; returns
    /// how many bytes arrived. Bytes sent while nobody listens are lost: an
    /// ack missed that way is made up by the next one (acks are cumulative)
    /// or by a retransmission.
    fn receive(&mut self, buf: &mut [u8], timer: &mut Timer<TIMER0>) -> usize {
        match self.uarte.read_timeout(buf, timer, LISTEN_US) {
            Ok(()) => buf.len(),
            Err(uarte::Error::Timeout(n)) => n,
            Err(e) => {
                warn!("UARTE receive: {}", Debug2Format(&e));
                0
            }
        }
    }
}

/// Milliseconds since boot from RTC0's 24-bit counter at 32.768 kHz, which
/// wraps every 512 s: read it more often than that.
struct Uptime {
    rtc: Rtc<RTC0>,
    last: u32,
    wraps: u64,
}

impl Uptime {
    fn now_ms(&mut self) -> u64 {
        let ticks = self.rtc.get_counter();
        if ticks < self.last {
            self.wraps += 1;
        }
        self.last = ticks;
        ((self.wraps << 24) + u64::from(ticks)) * 1_000 / 32_768
    }
}

#[entry]
fn main() -> ! {
    let Err(why) = run();
    defmt::panic!("{}", why)
}

/// Sets the board up, then samples and sends forever; returns only why the
/// setup failed.
fn run() -> Result<Infallible, &'static str> {
    let p = pac::Peripherals::take().ok_or("peripherals already taken")?;
    // The DK's crystals: UART baud rate and RTC accuracy.
    let _clocks = Clocks::new(p.CLOCK)
        .enable_ext_hfosc()
        .set_lfclk_src_external(LfOscConfiguration::NoExternalNoBypass)
        .start_lfclk();
    let rtc = Rtc::new(p.RTC0, 0).map_err(|_| "RTC0 prescaler")?;
    rtc.enable_counter();
    let mut uptime = Uptime { rtc, last: 0, wraps: 0 };

    let device_id = (u64::from(p.FICR.deviceid[1].read().bits()) << 32)
        | u64::from(p.FICR.deviceid[0].read().bits());
    let mut node_id = heapless::String::<32>::new();
    write!(node_id, "nrf52840-{device_id:016x}").map_err(|_| "node id")?;

    // SAFETY: `memory.x` keeps the linker out of this range of flash, and
    // this is the only slice made of it, made once: nothing else reads or
    // writes it while the NVMC driver owns it.
    let storage = unsafe { core::slice::from_raw_parts_mut(STORAGE_START as *mut u8, STORAGE_LEN) };
    let mut flash: Flash = Blocking(Nvmc::new(p.NVMC, storage));
    let boot_id = next_boot_id(&mut flash, BOOT_RANGE).map_err(|e| {
        error!("boot counter: {}", Debug2Format(&e));
        "boot counter unreadable"
    })?;
    let queue = FlashQueue::<Flash, SLOT>::open(flash, QUEUE_RANGE, 0).map_err(|e| {
        error!("flash queue: {}", Debug2Format(&e));
        "flash queue unusable"
    })?;
    info!(
        "node {} boot {}: {} frame(s) kept in flash, next is {}",
        node_id.as_str(),
        boot_id,
        queue.len(),
        queue.next_seq()
    );

    let config = SamplerConfig {
        node_id: &node_id,
        boot_id,
        keys: KeyMode::Node,
        health_every: HEALTH_EVERY,
    };
    let sampler = Sampler::<ENVELOPE>::new(&config).map_err(|_| "sampler configuration")?;
    // The big buffers live in statics (counted by `size` as .bss), not on
    // the stack.
    let sampler = cortex_m::singleton!(: Sampler<ENVELOPE> = sampler).ok_or("sampler")?;
    let queue = cortex_m::singleton!(: FlashQueue<Flash, SLOT> = queue).ok_or("queue")?;

    let port0 = p0::Parts::new(p.P0);
    let i2c = Twim::new(
        p.TWIM0,
        twim::Pins {
            scl: port0.p0_27.into_floating_input().degrade(),
            sda: port0.p0_26.into_floating_input().degrade(),
        },
        twim::Frequency::K100,
    );
    let mut sensor = Tmp102::new(i2c, Address::Gnd);
    let uarte = Uarte::new(
        p.UARTE0,
        uarte::Pins {
            txd: port0.p0_06.into_push_pull_output(Level::High).degrade(),
            rxd: port0.p0_08.into_floating_input().degrade(),
            cts: None,
            rts: None,
        },
        Parity::EXCLUDED,
        Baudrate::BAUD115200,
    );
    let mut link = Link::new(Gateway { uarte }, ACK_TIMEOUT_MS);
    let mut timer = Timer::new(p.TIMER0);
    let mut rx = [0u8; 64];

    loop {
        let now_ms = uptime.now_ms();
        match sampler.start(queue, now_ms, None) {
            Ok(mut tick) => {
                match tick.read(&mut sensor) {
                    Ok(m) => info!("temperature {} m°C", m.milli),
                    // Counted in the next health record.
                    Err(e) => warn!("TMP102: {}", Debug2Format(&e)),
                }
                match tick.finish() {
                    Ok(Some(pushed)) => info!("queued frame {}", pushed.seq),
                    Ok(None) => {}
                    Err(e) => error!("frame not queued: {}", Debug2Format(&e)),
                }
            }
            Err(e) => error!("tick: {}", Debug2Format(&e)),
        }
        if let Err(e) = link.poll(queue, now_ms) {
            warn!("UARTE send: {}", Debug2Format(&e));
        }
        // Listen for acks until the next tick.
        while uptime.now_ms() < now_ms + TICK_MS {
            let n = link.transport_mut().receive(&mut rx, &mut timer);
            if n > 0 {
                let released = link.receive(&rx[..n], queue, uptime.now_ms());
                if released > 0 {
                    info!("{} frame(s) acknowledged, {} queued", released, queue.len());
                }
            }
        }
    }
}
