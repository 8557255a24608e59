//! Store-and-forward in NOR flash (feature `flash-queue`): frames and a boot
//! counter that survive a reset.
//!
//! [`FlashQueue<S, F>`] is a [`FrameStore`] over the `sequential-storage`
//! crate's queue on any `embedded-storage-async` NOR flash `S` (a range of
//! the chip's own flash, or an external SPI NOR). It has the RAM
//! [`crate::FrameQueue`]'s semantics: numbered data frames, the oldest
//! dropped (and counted) when the flash range is full, cumulative acks, a
//! sent cursor. What differs:
//!
//! - **Reset.** [`FlashQueue::open`] on the same flash range finds every
//!   frame not yet acknowledged, and numbering continues after the newest
//!   one, so the gateway's acks keep naming the right frames. An empty range
//!   starts at the `first_seq` given.
//! - **Bound.** The flash range, not a frame count. A full range drops the
//!   oldest frames until the new one fits: the oldest page must be wholly
//!   released before it is erased, so one push may drop several frames
//!   ([`Pushed::dropped`] then names the newest of them; [`FrameStore::dropped`]
//!   counts each).
//! - **Slots.** One flash item is the frame's sequence number (4 bytes,
//!   little endian) then its bytes on the line; `F` is the buffer an item is
//!   read into, sized with [`slot_len`].
//! - **Errors.** [`FrameStore::push`] returns flash errors. Reading the next
//!   unsent frame and releasing acknowledged ones cannot report one through
//!   [`FrameStore`]: a failure there is logged and counted
//!   ([`FlashQueue::flash_errors`]) and the frame stays, to be sent or
//!   released on a later call.
//! - **Corruption.** `sequential-storage` checks every item's CRC, skips
//!   corrupted items (their frames are lost, uncounted) and repairs
//!   interrupted writes itself. A range it reports as corrupted beyond
//!   repair, or that holds items this queue cannot read (another layout), is
//!   erased when opened: its frames are lost and the erase counts as one
//!   flash error.
//! - **Flash.** `S` must be a `MultiwriteNorFlash`: releasing a frame
//!   rewrites a word of its header in place (the nRF52840's NVMC allows it;
//!   flashes with ECC words do not).
//!
//! # Sync over async
//!
//! `sequential-storage` is async (`embedded-storage-async`) and
//! [`FrameStore`] is not, so each flash operation runs to completion in
//! [`block_on`], a busy-polling executor. Wrap a blocking driver
//! (`embedded-storage`, like nrf-hal's `Nvmc`) in [`Blocking`]: its futures
//! finish on their first poll. An async driver works too, but its futures
//! are polled in a spin loop, not woken.
//!
//! Cost: every call reads the queue from its oldest item (no RAM cache), so
//! sending `n` frames reads `O(n²)` items; keep the range to a few pages.
//!
//! # Boot counter
//!
//! [`next_boot_id`] keeps a `u32` in a `sequential-storage` map on its own
//! flash range and returns it incremented, once per boot: the sampler's boot
//! id ([`crate::SamplerConfig::boot_id`]).

use core::fmt;
use core::future::Future;
use core::ops::Range;
use core::pin::pin;
use core::task::{Context, Poll, Waker};

use embedded_storage_async::nor_flash::{ErrorType, MultiwriteNorFlash, NorFlash, ReadNorFlash};
use sequential_storage::Error as StorageError;
use sequential_storage::cache::{Cache, Uncached};
use sequential_storage::map::{MapConfig, MapStorage};
use sequential_storage::queue::{QueueConfig, QueueStorage};
use weir_wire::{FrameError, FrameKind, encode_frame, max_encoded_frame_len};

use crate::queue::{FrameStore, Pushed, seq_le};

/// Bytes of the sequence number in front of each stored frame.
const SEQ_BYTES: usize = 4;

/// The map key of the boot counter.
const BOOT_COUNTER_KEY: u8 = 0;

/// `sequential-storage` without a RAM cache: every operation reads flash.
type NoCache<K = ()> = Cache<Uncached, Uncached, Uncached, K>;

/// The slot size `F` of a [`FlashQueue`] whose envelopes are up to
/// `envelope_len` bytes, on a flash with `word_size`-byte words (the larger
/// of its read and write sizes).
pub const fn slot_len(envelope_len: usize, word_size: usize) -> usize {
    (SEQ_BYTES + max_encoded_frame_len(envelope_len)).next_multiple_of(word_size)
}

/// Runs `future` to completion by polling it in a loop.
///
/// For futures that finish without being woken: those of a [`Blocking`]
/// flash finish on their first poll. An interrupt-driven future still
/// completes, but the core spins instead of sleeping meanwhile.
pub fn block_on<T>(future: impl Future<Output = T>) -> T {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        core::hint::spin_loop();
    }
}

/// A blocking `embedded-storage` NOR flash as an `embedded-storage-async`
/// one, for `sequential-storage`: each operation runs when first polled.
#[derive(Debug)]
pub struct Blocking<T>(pub T);

impl<T: ErrorType> ErrorType for Blocking<T> {
    type Error = T::Error;
}

impl<T: embedded_storage::nor_flash::ReadNorFlash> ReadNorFlash for Blocking<T> {
    const READ_SIZE: usize = T::READ_SIZE;

    async fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.0.read(offset, bytes)
    }

    fn capacity(&self) -> usize {
        self.0.capacity()
    }
}

impl<T: embedded_storage::nor_flash::NorFlash> NorFlash for Blocking<T> {
    const WRITE_SIZE: usize = T::WRITE_SIZE;
    const ERASE_SIZE: usize = T::ERASE_SIZE;

    async fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        self.0.erase(from, to)
    }

    async fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        self.0.write(offset, bytes)
    }
}

impl<T: embedded_storage::nor_flash::MultiwriteNorFlash> MultiwriteNorFlash for Blocking<T> {}

/// Why a flash operation failed. `E` is the flash driver's error.
#[derive(Debug)]
pub enum FlashError<E> {
    /// The flash range does not start and end on erase-page boundaries, is
    /// too small (a queue needs 1 page, the boot counter 2), or the flash's
    /// pages or words do not suit `sequential-storage`.
    BadRange,
    /// The frame is longer than the queue's slot (`F`); nothing was stored.
    Frame(FrameError),
    /// `sequential-storage` (or the driver below it) failed.
    Storage(StorageError<E>),
}

impl<E> From<StorageError<E>> for FlashError<E> {
    fn from(e: StorageError<E>) -> Self {
        Self::Storage(e)
    }
}

impl<E: fmt::Debug> fmt::Display for FlashError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadRange => f.write_str("flash range not usable (page alignment or size)"),
            Self::Frame(e) => write!(f, "frame not encoded: {e}"),
            Self::Storage(e) => write!(f, "flash storage failed: {e:?}"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for FlashError<E> {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Frame(e) => Some(e),
            Self::BadRange | Self::Storage(_) => None,
        }
    }
}

/// The sequence number of a stored item, or `None` if it is too short to be
/// one of ours.
fn item_seq(item: &[u8]) -> Option<u32> {
    let head: [u8; SEQ_BYTES] = item.get(..SEQ_BYTES)?.try_into().ok()?;
    (item.len() > SEQ_BYTES).then_some(u32::from_le_bytes(head))
}

/// What a scan of the flash range found.
struct Scan {
    len: usize,
    newest: Option<u32>,
}

/// A bounded queue of encoded data frames in NOR flash, kept across resets.
/// `F` is the slot size: [`slot_len`] of the largest envelope.
pub struct FlashQueue<S: MultiwriteNorFlash, const F: usize> {
    storage: QueueStorage<S, NoCache>,
    buf: [u8; F],
    /// Frames stored.
    len: usize,
    /// Frames at the front sent since the last rewind.
    sent: usize,
    next_seq: u32,
    dropped: u32,
    ignored_acks: u32,
    flash_errors: u32,
}

impl<S: MultiwriteNorFlash, const F: usize> fmt::Debug for FlashQueue<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlashQueue")
            .field("len", &self.len)
            .field("sent", &self.sent)
            .field("next_seq", &self.next_seq)
            .field("dropped", &self.dropped)
            .field("ignored_acks", &self.ignored_acks)
            .field("flash_errors", &self.flash_errors)
            .finish_non_exhaustive()
    }
}

impl<S: MultiwriteNorFlash, const F: usize> FlashQueue<S, F> {
    /// The flash's word: items and reads are padded to it.
    const WORD: usize = if S::WRITE_SIZE > S::READ_SIZE { S::WRITE_SIZE } else { S::READ_SIZE };

    /// The longest item a read into `buf` can hold (reads are word-padded).
    const ITEM_CAPACITY: usize = F - F % Self::WORD;

    /// Opens the queue kept in `range` of `flash`: the frames stored there
    /// before a reset are queued again, unsent, and numbering continues
    /// after the newest; an empty range numbers from `first_seq`.
    ///
    /// Give it at least 2 erase pages: a page is reused only once none of
    /// its frames is left, so a full 1-page queue drops every frame to make
    /// room.
    ///
    /// # Errors
    /// [`FlashError::BadRange`] for a range `sequential-storage` cannot use;
    /// [`FlashError::Storage`] if the flash fails (also while erasing a
    /// range found unreadable).
    pub fn open(flash: S, range: Range<u32>, first_seq: u32) -> Result<Self, FlashError<S::Error>> {
        const { assert!(F > SEQ_BYTES, "a slot holds a sequence number and a frame") };
        let config = QueueConfig::try_new(range).map_err(|_| FlashError::BadRange)?;
        let mut queue = Self {
            storage: QueueStorage::new(flash, config, Cache::new_uncached()),
            buf: [0; F],
            len: 0,
            sent: 0,
            next_seq: first_seq,
            dropped: 0,
            ignored_acks: 0,
            flash_errors: 0,
        };
        let scan = match block_on(scan(&mut queue.storage, &mut queue.buf)) {
            Ok(scan) => scan,
            Err(e @ StorageError::Storage { .. }) => return Err(FlashError::Storage(e)),
            Err(_unreadable) => {
                warn!("flash queue unreadable: erasing it");
                queue.flash_errors = 1;
                block_on(queue.storage.erase_all())?;
                Scan { len: 0, newest: None }
            }
        };
        queue.len = scan.len;
        if let Some(newest) = scan.newest {
            queue.next_seq = newest.wrapping_add(1);
        }
        info!("flash queue: {} frame(s) kept, next is {}", queue.len, queue.next_seq);
        Ok(queue)
    }

    /// Frames dropped because the flash range was full, since it was opened
    /// (saturating).
    pub fn dropped(&self) -> u32 {
        self.dropped
    }

    /// Acks ignored because they named no frame of this queue (saturating).
    pub fn ignored_acks(&self) -> u32 {
        self.ignored_acks
    }

    /// Flash operations that failed in [`FrameStore::next_unsent`] or
    /// [`FrameStore::ack`], plus 1 if the range was erased when opened
    /// (saturating).
    pub fn flash_errors(&self) -> u32 {
        self.flash_errors
    }

    /// Closes the queue and hands the flash back (what is stored stays).
    pub fn release(self) -> S {
        self.storage.destroy().0
    }

    fn flash_error(&mut self, e: &StorageError<S::Error>) {
        self.flash_errors = self.flash_errors.saturating_add(1);
        warn!("flash queue: {}", error_kind(e));
    }

    /// Removes the oldest frame; returns its sequence number.
    fn pop_oldest(&mut self) -> Result<Option<u32>, StorageError<S::Error>> {
        let Some(item) = block_on(self.storage.pop(&mut self.buf))? else {
            return Ok(None);
        };
        // `open` erased a range holding items without a sequence number.
        let seq = item_seq(item).unwrap_or_default();
        self.len = self.len.saturating_sub(1);
        self.sent = self.sent.saturating_sub(1);
        Ok(Some(seq))
    }
}

/// A storage error in a word, for the log (the driver's error need not be
/// `defmt::Format`).
fn error_kind<E>(e: &StorageError<E>) -> &'static str {
    match e {
        StorageError::Storage { .. } => "driver error",
        StorageError::FullStorage => "full",
        StorageError::Corrupted { .. } => "corrupted",
        _ => "unexpected error",
    }
}

/// Counts the stored items and finds the newest sequence number.
async fn scan<S: MultiwriteNorFlash>(
    storage: &mut QueueStorage<S, NoCache>,
    buf: &mut [u8],
) -> Result<Scan, StorageError<S::Error>> {
    let mut found = Scan { len: 0, newest: None };
    let mut items = storage.iter().await?;
    while let Some(item) = items.next(buf).await? {
        match item_seq(&item) {
            Some(seq) => {
                found.len += 1;
                found.newest = Some(seq);
            }
            // Not one of ours (a range that held something else): the
            // caller erases the range.
            None => return Err(StorageError::BufferTooSmall(0)),
        }
    }
    Ok(found)
}

/// The length of the `n`th stored item (0 = oldest), read into `buf`.
async fn read_nth<S: MultiwriteNorFlash>(
    storage: &mut QueueStorage<S, NoCache>,
    buf: &mut [u8],
    n: usize,
) -> Result<Option<usize>, StorageError<S::Error>> {
    let mut items = storage.iter().await?;
    let mut i = 0;
    while let Some(item) = items.next(buf).await? {
        if i == n {
            return Ok(Some(item.len()));
        }
        i += 1;
    }
    Ok(None)
}

/// Pops the stored items numbered up to and including `seq`, counting them
/// in `released`.
async fn pop_through<S: MultiwriteNorFlash>(
    storage: &mut QueueStorage<S, NoCache>,
    buf: &mut [u8],
    seq: u32,
    released: &mut usize,
) -> Result<(), StorageError<S::Error>> {
    let mut items = storage.iter().await?;
    while let Some(item) = items.next(buf).await? {
        if !item_seq(&item).is_some_and(|s| seq_le(s, seq)) {
            break;
        }
        item.pop().await?;
        *released += 1;
    }
    Ok(())
}

impl<S: MultiwriteNorFlash, const F: usize> FrameStore for FlashQueue<S, F> {
    type Error = FlashError<S::Error>;

    const FRAME_CAPACITY: usize = Self::ITEM_CAPACITY - SEQ_BYTES;

    /// Encodes and stores the next data frame; when the flash range is full,
    /// drops the oldest frames until it fits.
    fn push(&mut self, envelope: &[u8]) -> Result<Pushed, Self::Error> {
        let seq = self.next_seq;
        let mut dropped = None;
        loop {
            // Popping to make room reuses the buffer: encode (again) here.
            let slot = &mut self.buf[..Self::ITEM_CAPACITY];
            let n = encode_frame(FrameKind::Data, seq, envelope, &mut slot[SEQ_BYTES..])
                .map_err(FlashError::Frame)?;
            slot[..SEQ_BYTES].copy_from_slice(&seq.to_le_bytes());
            match block_on(self.storage.push(&slot[..SEQ_BYTES + n], false)) {
                Ok(()) => break,
                Err(StorageError::FullStorage) => match self.pop_oldest()? {
                    Some(old) => {
                        self.dropped = self.dropped.saturating_add(1);
                        warn!("flash queue full: dropped frame {}", old);
                        dropped = Some(old);
                    }
                    // Full with nothing to drop: the frame can never fit.
                    None => return Err(FlashError::Storage(StorageError::FullStorage)),
                },
                Err(e) => return Err(FlashError::Storage(e)),
            }
        }
        self.len += 1;
        self.next_seq = seq.wrapping_add(1);
        Ok(Pushed { seq, dropped })
    }

    fn ack(&mut self, seq: u32) -> usize {
        if seq == self.next_seq || !seq_le(seq, self.next_seq) {
            self.ignored_acks = self.ignored_acks.saturating_add(1);
            debug!("ignored ack {} (next frame is {})", seq, self.next_seq);
            return 0;
        }
        let mut released = 0;
        let result = block_on(pop_through(&mut self.storage, &mut self.buf, seq, &mut released));
        self.len = self.len.saturating_sub(released);
        self.sent = self.sent.saturating_sub(released);
        if let Err(e) = result {
            self.flash_error(&e);
        }
        released
    }

    fn next_unsent(&mut self) -> Option<(u32, &[u8])> {
        if self.sent >= self.len {
            return None;
        }
        match block_on(read_nth(&mut self.storage, &mut self.buf, self.sent)) {
            Ok(Some(n)) => {
                let item = &self.buf[..n];
                item_seq(item).map(|seq| (seq, &item[SEQ_BYTES..]))
            }
            Ok(None) => {
                // Fewer items than counted (one was found corrupted): resync.
                self.len = self.sent;
                None
            }
            Err(e) => {
                self.flash_error(&e);
                None
            }
        }
    }

    fn mark_sent(&mut self) {
        self.sent = (self.sent + 1).min(self.len);
    }

    fn rewind(&mut self) {
        self.sent = 0;
    }

    fn in_flight(&self) -> usize {
        self.sent
    }

    fn len(&self) -> usize {
        self.len
    }

    fn next_seq(&self) -> u32 {
        self.next_seq
    }

    fn dropped(&self) -> u32 {
        self.dropped
    }
}

/// Increments the boot counter kept in `range` of `flash` and returns it:
/// 1 on the first boot of an erased range, then 2, 3, … (wrapping).
///
/// `range` must be at least 2 erase pages and not overlap a
/// [`FlashQueue`]'s.
///
/// # Errors
/// [`FlashError::BadRange`] for a range `sequential-storage` cannot use as a
/// map; [`FlashError::Storage`] if reading or writing the counter failed.
pub fn next_boot_id<S: MultiwriteNorFlash>(
    flash: &mut S,
    range: Range<u32>,
) -> Result<u32, FlashError<S::Error>> {
    let config = MapConfig::try_new(range).map_err(|_| FlashError::BadRange)?;
    let mut map = MapStorage::<u8, _, NoCache<u8>>::new(flash, config, Cache::new_uncached());
    // A key and a u32, padded to the largest flash word sequential-storage
    // supports.
    let mut buf = [0u8; 64];
    block_on(async {
        let previous = map.fetch_item::<u32>(&mut buf, &BOOT_COUNTER_KEY).await?;
        let boot_id = previous.unwrap_or(0).wrapping_add(1);
        map.store_item(&mut buf, &BOOT_COUNTER_KEY, &boot_id).await?;
        Ok(boot_id)
    })
}

#[cfg(test)]
mod tests;
