//! One spool entry, byte by byte (integers little-endian):
//!
//! ```text
//!   0..4    magic        b"WSP1"
//!   4..8    entry_len    u32, bytes of the whole entry, header included
//!   8..12   crc32c       u32, CRC32C (Castagnoli) of bytes 12..entry_len
//!  12..20   seq          u64, entry sequence number; +1 per entry, across segments
//!  20..24   records      u32, records in the payload (for drop accounting)
//!  24..28   meta_len     u32
//!  28..28+meta_len       meta (opaque to the spool)
//!  ..entry_len           payload (opaque: the encoded wire batch)
//! ```
//!
//! [`encode_entry`] writes one; `read_entry` reads the next intact one and
//! says why it stopped at a torn or corrupt one, which is where recovery
//! cuts a segment.

use std::io::{self, Read};

/// Magic bytes that open every entry.
pub const ENTRY_MAGIC: [u8; 4] = *b"WSP1";
/// Size of an entry header.
pub const ENTRY_HEADER_BYTES: usize = 28;
/// Largest entry (a wire batch is at most 5 MiB, plus its metadata).
pub const MAX_ENTRY_BYTES: usize = 8 * 1024 * 1024;

/// One entry read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its sequence number.
    pub seq: u64,
    /// Records in its payload.
    pub records: u32,
    /// The metadata written with it.
    pub meta: Vec<u8>,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Encodes one entry.
pub fn encode_entry(seq: u64, records: u32, meta: &[u8], payload: &[u8]) -> Vec<u8> {
    let len = ENTRY_HEADER_BYTES + meta.len() + payload.len();
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&ENTRY_MAGIC);
    b.extend_from_slice(&(len as u32).to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend_from_slice(&records.to_le_bytes());
    b.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    b.extend_from_slice(meta);
    b.extend_from_slice(payload);
    let crc = crc32c::crc32c(&b[12..]);
    b[8..12].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Reads the next intact entry from `r`; `Ok(None)` at a clean end, at a torn
/// or corrupt entry (with the reason in the second field).
pub(super) fn read_entry(r: &mut impl Read) -> io::Result<Result<Option<Entry>, &'static str>> {
    let mut h = [0u8; ENTRY_HEADER_BYTES];
    let mut got = 0;
    while got < h.len() {
        match r.read(&mut h[got..])? {
            0 if got == 0 => return Ok(Ok(None)),
            0 => return Ok(Err("entry header cut short")),
            n => got += n,
        }
    }
    if h[0..4] != ENTRY_MAGIC {
        return Ok(Err("bad entry magic"));
    }
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let len = u32_at(4) as usize;
    let crc = u32_at(8);
    let meta_len = u32_at(24) as usize;
    if !(ENTRY_HEADER_BYTES..=MAX_ENTRY_BYTES).contains(&len) || meta_len > len - ENTRY_HEADER_BYTES
    {
        return Ok(Err("impossible entry length"));
    }
    let mut rest = vec![0u8; len - ENTRY_HEADER_BYTES];
    if let Err(e) = r.read_exact(&mut rest) {
        return if e.kind() == io::ErrorKind::UnexpectedEof {
            Ok(Err("entry cut short"))
        } else {
            Err(e)
        };
    }
    let mut digest = crc32c::crc32c(&h[12..]);
    digest = crc32c::crc32c_append(digest, &rest);
    if digest != crc {
        return Ok(Err("CRC32C mismatch"));
    }
    let seq = u64::from_le_bytes([h[12], h[13], h[14], h[15], h[16], h[17], h[18], h[19]]);
    let payload = rest.split_off(meta_len);
    Ok(Ok(Some(Entry { seq, records: u32_at(20), meta: rest, payload })))
}
