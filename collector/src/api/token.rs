//! Shard iterators and pagination tokens: opaque to clients, tamper-evident,
//! and short-lived.
//!
//! A token is standard base64 of
//!
//! ```text
//!   0      version   u8 = 1
//!   1      kind      u8: 1 shard iterator, 2 ListShards token, 3 ListStreams token
//!   2..10  issued    u64 LE, ms since the Unix epoch
//!   then the kind's fields (u64 LE numbers, strings as u8 length + UTF-8)
//!   last 16 bytes: HMAC-SHA256 over everything before, truncated
//! ```
//!
//! The key is 32 random bytes kept in `<data-dir>/api-token.key` (created on
//! first start, mode 0600), so tokens survive a restart of the collector but
//! cannot be forged or edited: a token whose MAC does not verify is refused as
//! invalid before any field is trusted. Shard iterators and ListShards tokens
//! expire [`TOKEN_LIFETIME_MS`] after they were issued, as in Kinesis.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::store::ShardPosition;

/// How long a shard iterator or a ListShards token stays valid (5 minutes).
pub const TOKEN_LIFETIME_MS: u64 = 5 * 60 * 1000;
/// The key file in the data directory.
pub const KEY_FILE: &str = "api-token.key";
const KEY_BYTES: usize = 32;
const MAC_BYTES: usize = 16;
const VERSION: u8 = 1;
const KIND_ITERATOR: u8 = 1;
const KIND_SHARDS: u8 = 2;
const KIND_STREAMS: u8 = 3;
/// Longest token a client may send (Kinesis's ShardIterator limit).
pub const MAX_TOKEN_CHARS: usize = 512;

type HmacSha256 = Hmac<Sha256>;

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token of ours (bad base64, wrong layout, bad MAC, wrong kind).
    #[error("invalid token")]
    Invalid,
    /// A valid token issued more than [`TOKEN_LIFETIME_MS`] ago.
    #[error("token issued at {issued_ms} ms has expired")]
    Expired {
        /// When it was issued, ms since the epoch.
        issued_ms: u64,
    },
}

/// Why the key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct KeyError {
    op: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Signs and verifies tokens with one key.
#[derive(Clone)]
pub struct TokenSigner {
    key: [u8; KEY_BYTES],
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

/// What a shard iterator names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IteratorToken {
    /// The stream's name (GetRecords carries no stream name).
    pub stream: String,
    /// The position (stream id, shard, offset).
    pub position: ShardPosition,
    /// When it was issued, ms since the epoch.
    pub issued_ms: u64,
}

/// Where a ListShards page continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardsToken {
    /// The stream's name.
    pub stream: String,
    /// The stream's id (a re-created stream does not accept old tokens).
    pub stream_id: u64,
    /// The last shard index returned.
    pub after_index: u64,
    /// The page size asked for first.
    pub max_results: u32,
    /// When it was issued.
    pub issued_ms: u64,
}

impl TokenSigner {
    /// A signer with the key of `data_dir`, created there on first use.
    ///
    /// # Errors
    /// The key file cannot be read or written, or has the wrong size.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, KeyError> {
        let path = data_dir.join(KEY_FILE);
        let err = |op, source| KeyError { op, path: path.clone(), source };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let key: [u8; KEY_BYTES] = bytes.as_slice().try_into().map_err(|_| {
                    err(
                        "read",
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("expected {KEY_BYTES} bytes, found {}", bytes.len()),
                        ),
                    )
                })?;
                Ok(Self { key })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; KEY_BYTES] = rand::random();
                let tmp = data_dir.join(format!("{KEY_FILE}.tmp"));
                let write = || -> std::io::Result<()> {
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&tmp)?;
                    f.write_all(&key)?;
                    f.sync_all()?;
                    std::fs::rename(&tmp, &path)?;
                    std::fs::File::open(data_dir)?.sync_all()
                };
                write().map_err(|e| err("write", e))?;
                Ok(Self { key })
            }
            Err(e) => Err(err("read", e)),
        }
    }

    /// A signer with a key shared by several collectors (kept by the store).
    pub fn from_key(key: [u8; KEY_BYTES]) -> Self {
        Self { key }
    }

    /// A signer with a fresh random key (tests, benchmarks).
    pub fn ephemeral() -> Self {
        Self { key: rand::random() }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length; this cannot fail.
        <HmacSha256 as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    }

    fn seal(&self, kind: u8, issued_ms: u64, fields: &[u8]) -> String {
        let mut buf = Vec::with_capacity(10 + fields.len() + MAC_BYTES);
        buf.push(VERSION);
        buf.push(kind);
        buf.extend_from_slice(&issued_ms.to_le_bytes());
        buf.extend_from_slice(fields);
        let mut mac = self.mac();
        mac.update(&buf);
        let tag = mac.finalize().into_bytes();
        buf.extend_from_slice(&tag[..MAC_BYTES]);
        BASE64.encode(buf)
    }

    /// Verifies a token's MAC and kind; returns (issued, fields).
    fn open(&self, kind: u8, token: &str) -> Result<(u64, Vec<u8>), TokenError> {
        if token.len() > MAX_TOKEN_CHARS {
            return Err(TokenError::Invalid);
        }
        let buf = BASE64.decode(token).map_err(|_| TokenError::Invalid)?;
        if buf.len() < 10 + MAC_BYTES {
            return Err(TokenError::Invalid);
        }
        let (body, tag) = buf.split_at(buf.len() - MAC_BYTES);
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_truncated_left(tag).map_err(|_| TokenError::Invalid)?;
        if body[0] != VERSION || body[1] != kind {
            return Err(TokenError::Invalid);
        }
        let mut issued = [0u8; 8];
        issued.copy_from_slice(&body[2..10]);
        Ok((u64::from_le_bytes(issued), body[10..].to_vec()))
    }

    /// A shard iterator for `stream` at `position`.
    pub fn iterator(&self, stream: &str, position: ShardPosition, now_ms: u64) -> String {
        let mut f = Vec::with_capacity(25 + stream.len());
        put_str(&mut f, stream);
        f.extend_from_slice(&position.stream_id.to_le_bytes());
        f.extend_from_slice(&position.shard_index.to_le_bytes());
        f.extend_from_slice(&position.offset.to_le_bytes());
        self.seal(KIND_ITERATOR, now_ms, &f)
    }

    /// Verifies a shard iterator and checks its age.
    ///
    /// # Errors
    /// [`TokenError::Invalid`] for anything not issued by this key as an
    /// iterator; [`TokenError::Expired`] past its lifetime.
    pub fn open_iterator(&self, token: &str, now_ms: u64) -> Result<IteratorToken, TokenError> {
        let (issued_ms, f) = self.open(KIND_ITERATOR, token)?;
        let mut r = Reader(&f);
        let stream = r.str()?;
        let position =
            ShardPosition { stream_id: r.u64()?, shard_index: r.u64()?, offset: r.u64()? };
        r.end()?;
        check_age(issued_ms, now_ms)?;
        Ok(IteratorToken { stream, position, issued_ms })
    }

    /// A ListShards continuation token.
    pub fn shards_token(&self, t: &ShardsToken) -> String {
        let mut f = Vec::with_capacity(21 + t.stream.len());
        put_str(&mut f, &t.stream);
        f.extend_from_slice(&t.stream_id.to_le_bytes());
        f.extend_from_slice(&t.after_index.to_le_bytes());
        f.extend_from_slice(&t.max_results.to_le_bytes());
        self.seal(KIND_SHARDS, t.issued_ms, &f)
    }

    /// Verifies a ListShards token and checks its age.
    ///
    /// # Errors
    /// As [`open_iterator`](Self::open_iterator).
    pub fn open_shards_token(&self, token: &str, now_ms: u64) -> Result<ShardsToken, TokenError> {
        let (issued_ms, f) = self.open(KIND_SHARDS, token)?;
        let mut r = Reader(&f);
        let t = ShardsToken {
            stream: r.str()?,
            stream_id: r.u64()?,
            after_index: r.u64()?,
            max_results: r.u32()?,
            issued_ms,
        };
        r.end()?;
        check_age(issued_ms, now_ms)?;
        Ok(t)
    }

    /// A ListStreams continuation token: the last name returned.
    pub fn streams_token(&self, after: &str, now_ms: u64) -> String {
        let mut f = Vec::with_capacity(1 + after.len());
        put_str(&mut f, after);
        self.seal(KIND_STREAMS, now_ms, &f)
    }

    /// Verifies a ListStreams token (these do not expire).
    ///
    /// # Errors
    /// [`TokenError::Invalid`].
    pub fn open_streams_token(&self, token: &str) -> Result<String, TokenError> {
        let (_, f) = self.open(KIND_STREAMS, token)?;
        let mut r = Reader(&f);
        let after = r.str()?;
        r.end()?;
        Ok(after)
    }
}

fn check_age(issued_ms: u64, now_ms: u64) -> Result<(), TokenError> {
    if now_ms.saturating_sub(issued_ms) > TOKEN_LIFETIME_MS {
        Err(TokenError::Expired { issued_ms })
    } else {
        Ok(())
    }
}

/// Strings in tokens are names of at most 255 bytes (stream names are ≤ 128).
fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = s.len().min(usize::from(u8::MAX));
    out.push(len as u8);
    out.extend_from_slice(&s.as_bytes()[..len]);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], TokenError> {
        if self.0.len() < n {
            return Err(TokenError::Invalid);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, TokenError> {
        let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| TokenError::Invalid)?;
        Ok(u64::from_le_bytes(b))
    }

    fn u32(&mut self) -> Result<u32, TokenError> {
        let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| TokenError::Invalid)?;
        Ok(u32::from_le_bytes(b))
    }

    fn str(&mut self) -> Result<String, TokenError> {
        let len = usize::from(*self.take(1)?.first().ok_or(TokenError::Invalid)?);
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| TokenError::Invalid)
    }

    fn end(&self) -> Result<(), TokenError> {
        if self.0.is_empty() { Ok(()) } else { Err(TokenError::Invalid) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POS: ShardPosition = ShardPosition { stream_id: 3, shard_index: 7, offset: 42 };

    #[test]
    fn iterators_round_trip_expire_and_refuse_tampering() {
        let s = TokenSigner::ephemeral();
        let t = s.iterator("orders", POS, 1_000);
        assert!(t.len() <= MAX_TOKEN_CHARS);
        let open = s.open_iterator(&t, 1_000 + TOKEN_LIFETIME_MS).expect("valid");
        assert_eq!((open.stream.as_str(), open.position), ("orders", POS));
        assert_eq!(
            s.open_iterator(&t, 1_001 + TOKEN_LIFETIME_MS),
            Err(TokenError::Expired { issued_ms: 1_000 })
        );
        // Flip every bit of the decoded token in turn: each must be refused.
        let raw = BASE64.decode(&t).expect("base64");
        for i in 0..raw.len() * 8 {
            let mut m = raw.clone();
            m[i / 8] ^= 1 << (i % 8);
            assert_eq!(s.open_iterator(&BASE64.encode(&m), 1_000), Err(TokenError::Invalid));
        }
        // Another key, another kind, garbage.
        assert_eq!(TokenSigner::ephemeral().open_iterator(&t, 1_000), Err(TokenError::Invalid));
        assert_eq!(s.open_streams_token(&t), Err(TokenError::Invalid));
        for junk in ["", "x", "!!!!", &"A".repeat(600)] {
            assert_eq!(s.open_iterator(junk, 0), Err(TokenError::Invalid), "{junk}");
        }
        // The longest stream name still makes a token within Kinesis's limit.
        let long = s.iterator(&"n".repeat(128), POS, 0);
        assert!(long.len() <= MAX_TOKEN_CHARS, "{}", long.len());
    }

    #[test]
    fn key_is_kept_in_the_data_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = TokenSigner::load_or_create(dir.path()).expect("create");
        let b = TokenSigner::load_or_create(dir.path()).expect("load");
        let t = a.streams_token("s", 0);
        assert_eq!(b.open_streams_token(&t).as_deref(), Ok("s"));
        std::fs::write(dir.path().join(KEY_FILE), b"short").expect("write");
        assert!(TokenSigner::load_or_create(dir.path()).is_err());
    }
}
