//! Sensitive datasets: chunked AEAD over release files, and the data key's
//! envelope.
//!
//! **Format** (`SEGMENTS` below). An encrypted file's plaintext is cut into
//! segments of `chunk_size - 16` bytes; segment `i` encrypts to ciphertext
//! chunk `i` of exactly `chunk_size` bytes (the last one shorter), so the
//! ciphertext is an ordinary release file: its BLAKE3 and chunk table are
//! public and any node, gateway or auditor checks the stored bytes without a
//! key, and any chunk decrypts on its own, so a range read decrypts only the
//! chunks it covers. A file of `p` plaintext bytes has
//! `n = max(1, ceil(p / (chunk_size - 16)))` segments and `p + 16 n`
//! ciphertext bytes (an empty file is one 16-byte tag, so cutting a file to
//! nothing is detected too).
//!
//! **Binding.** Each file has its own 32-byte random salt; its key is
//! `BLAKE3-derive_key("shardgate file key v1", data_key || salt)`, so no two
//! files (or releases) share a key and a nonce. The nonce is the segment
//! index (big-endian u64) and a last-segment flag byte, zero-padded at the
//! front to the AEAD's nonce length (the STREAM construction); the
//! associated data names the scheme, the release (name and version) and the
//! file path. A chunk reordered, moved to another file
//! or release, or a file cut after a full segment fails to decrypt, even
//! for someone holding the data key.
//!
//! **Plaintext digest.** The BLAKE3 of the plaintext (what `b3sum` prints
//! for the decrypted file) is *sealed*: AEAD-encrypted under the file key
//! with the nonce index `u64::MAX` and flag 2, never used by a segment.
//! Only key holders can read it; a public plaintext hash would let anyone
//! confirm a guess of low-entropy content.
//!
//! **Key id.** `k1-` and the first 16 bytes (hex) of
//! `BLAKE3-derive_key("shardgate data key id v1", data_key)`: it names the
//! key without revealing it, and commits to it, so an envelope that unwraps
//! to another key is caught before any chunk is tried.

pub mod access;
pub mod envelope;
pub mod file;
pub mod pkcs11;

use std::ops::Range;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use zeroize::Zeroizing;

use crate::release::manifest::Blake3;

/// The AEAD tag each segment adds.
pub const TAG_LEN: u64 = 16;
const FILE_KEY_CONTEXT: &str = "shardgate file key v1";
const KEY_ID_CONTEXT: &str = "shardgate data key id v1";
const AD_DOMAIN: &[u8] = b"shardgate.aead/v1\0";
/// The nonce index of the sealed plaintext digest (no segment has it).
const DIGEST_INDEX: u64 = u64::MAX;
const DIGEST_FLAG: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptError {
    #[error("{0:?} is not an encryption scheme (use aes-256-gcm or xchacha20-poly1305)")]
    UnknownScheme(String),
    #[error("{0}")]
    Geometry(String),
    #[error(
        "segment {index} does not decrypt: the chunk was altered, moved from another place, or the key is not this file's"
    )]
    Auth { index: u64 },
    #[error("the sealed plaintext digest does not open with this key")]
    Digest,
    #[error("{0:?} is not a data key id (k1- and 32 hex digits)")]
    BadKeyId(String),
}

/// An AEAD scheme for release files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheme {
    /// AES-256-GCM: fastest where the CPU has AES instructions.
    #[default]
    Aes256Gcm,
    /// XChaCha20-Poly1305: constant time everywhere, no hardware support needed.
    XChaCha20Poly1305,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Aes256Gcm => "aes-256-gcm/chunked-v1",
            Scheme::XChaCha20Poly1305 => "xchacha20-poly1305/chunked-v1",
        }
    }

    /// Parses a scheme name as a manifest or envelope writes it (`aes-256-gcm/chunked-v1`).
    pub fn parse(s: &str) -> Result<Self, CryptError> {
        match s {
            "aes-256-gcm/chunked-v1" => Ok(Scheme::Aes256Gcm),
            "xchacha20-poly1305/chunked-v1" => Ok(Scheme::XChaCha20Poly1305),
            other => Err(CryptError::UnknownScheme(other.to_string())),
        }
    }

    /// Parses a scheme as a person types it: the full name or the short one (`aes-256-gcm`).
    pub fn parse_short(s: &str) -> Result<Self, CryptError> {
        match s {
            "aes-256-gcm" => Ok(Scheme::Aes256Gcm),
            "xchacha20-poly1305" => Ok(Scheme::XChaCha20Poly1305),
            other => Self::parse(other),
        }
    }
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A release's data key: 32 random bytes, wiped from memory when dropped,
/// never printed.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey({})", self.id())
    }
}

impl DataKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self, String> {
        let mut k = Zeroizing::new([0u8; 32]);
        getrandom::fill(k.as_mut()).map_err(|e| format!("no randomness for a data key: {e}"))?;
        Ok(Self(k))
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let mut k = Zeroizing::new([0u8; 32]);
        if bytes.len() != 32 {
            return None;
        }
        k.copy_from_slice(bytes);
        Some(Self(k))
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key's public name, which commits to it.
    pub fn id(&self) -> String {
        let d = blake3::derive_key(KEY_ID_CONTEXT, self.0.as_ref());
        format!("k1-{}", hex::encode(&d[..16]))
    }
}

/// Checks a key id's form.
pub fn check_key_id(id: &str) -> Result<(), CryptError> {
    let ok = id.len() == 35
        && id.starts_with("k1-")
        && id[3..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok { Ok(()) } else { Err(CryptError::BadKeyId(id.to_string())) }
}

/// How a file's plaintext maps onto its ciphertext chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    plain_size: u64,
    /// Plaintext bytes per segment: the chunk size less the tag.
    seg: u64,
    count: u64,
}

impl Segments {
    pub fn new(plain_size: u64, chunk_size: u64) -> Result<Self, CryptError> {
        if chunk_size <= TAG_LEN * 2 {
            return Err(CryptError::Geometry(format!("chunk size {chunk_size} is too small to encrypt")));
        }
        let seg = chunk_size - TAG_LEN;
        let count = plain_size.div_ceil(seg).max(1);
        if count.checked_mul(TAG_LEN).and_then(|t| t.checked_add(plain_size)).is_none() {
            return Err(CryptError::Geometry(format!("plaintext size {plain_size} overflows")));
        }
        Ok(Self { plain_size, seg, count })
    }

    pub fn plain_size(&self) -> u64 {
        self.plain_size
    }

    /// Plaintext bytes per segment (every segment but the last is this long).
    pub fn segment_size(&self) -> u64 {
        self.seg
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The ciphertext file's size.
    pub fn cipher_size(&self) -> u64 {
        self.plain_size + self.count * TAG_LEN
    }

    /// The plaintext bytes of segment `index`.
    pub fn plain_range(&self, index: u64) -> Range<u64> {
        let start = (index * self.seg).min(self.plain_size);
        start..(start + self.seg).min(self.plain_size)
    }

    /// The segments (and so ciphertext chunks) that hold plaintext `bytes`.
    pub fn covering(&self, bytes: Range<u64>) -> Range<u64> {
        if bytes.start >= bytes.end {
            return 0..0;
        }
        bytes.start / self.seg..bytes.end.div_ceil(self.seg).min(self.count)
    }
}

enum Aead {
    /// ring's AES-GCM (AES-NI, VAES and CLMUL where the CPU has them; the same TLS stack uses it).
    Aes(Box<ring::aead::LessSafeKey>),
    XChaCha(Box<chacha20poly1305::XChaCha20Poly1305>),
}

/// The 96-bit AES-GCM nonce: the last 12 bytes of the 24-byte nonce (index and flag).
fn aes_nonce(n: &[u8; 24]) -> ring::aead::Nonce {
    let mut a = [0u8; 12];
    a.copy_from_slice(&n[12..]);
    ring::aead::Nonce::assume_unique_for_key(a)
}

/// Encrypts and decrypts the segments of one file.
pub struct FileCipher {
    scheme: Scheme,
    aead: Aead,
    ad: Vec<u8>,
    /// Plaintext bytes per segment.
    seg: u64,
    /// The file's geometry, once its plaintext size is known (always, to decrypt).
    segments: Option<Segments>,
}

impl std::fmt::Debug for FileCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCipher").field("scheme", &self.scheme).field("segments", &self.segments).finish()
    }
}

/// Where a file sits: what its chunks are bound to.
#[derive(Debug, Clone, Copy)]
pub struct FileBinding<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub path: &'a str,
    pub salt: &'a [u8; 32],
    pub chunk_size: u64,
}

impl FileCipher {
    /// A cipher for encrypting a file as it streams (its size not known yet).
    pub fn new(scheme: Scheme, key: &DataKey, at: FileBinding<'_>) -> Result<Self, CryptError> {
        let seg = Segments::new(0, at.chunk_size)?.segment_size();
        let mut h = blake3::Hasher::new_derive_key(FILE_KEY_CONTEXT);
        h.update(key.bytes());
        h.update(at.salt);
        let file_key = Zeroizing::new(*h.finalize().as_bytes());
        let aead = match scheme {
            Scheme::Aes256Gcm => {
                let key = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, file_key.as_slice())
                    .map_err(|_| CryptError::Geometry("AES-256-GCM refused a 32-byte key".into()))?;
                Aead::Aes(Box::new(ring::aead::LessSafeKey::new(key)))
            }
            Scheme::XChaCha20Poly1305 => Aead::XChaCha(Box::new(chacha20poly1305::XChaCha20Poly1305::new(
                chacha20poly1305::Key::from_slice(file_key.as_slice()),
            ))),
        };
        let mut ad = Vec::with_capacity(64 + at.path.len());
        ad.extend_from_slice(AD_DOMAIN);
        for part in [scheme.name(), at.name, at.version, at.path] {
            ad.extend_from_slice(&(part.len() as u32).to_be_bytes());
            ad.extend_from_slice(part.as_bytes());
        }
        Ok(Self { scheme, aead, ad, seg, segments: None })
    }

    /// A cipher for a file of `plain_size` bytes, which can decrypt.
    pub fn sized(scheme: Scheme, key: &DataKey, at: FileBinding<'_>, plain_size: u64) -> Result<Self, CryptError> {
        let mut c = Self::new(scheme, key, at)?;
        c.segments = Some(Segments::new(plain_size, at.chunk_size)?);
        Ok(c)
    }

    /// The file's geometry (a cipher made by [`FileCipher::new`] has none).
    pub fn segments(&self) -> Option<&Segments> {
        self.segments.as_ref()
    }

    /// Plaintext bytes per segment.
    pub fn segment_size(&self) -> u64 {
        self.seg
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// Seals `buf` in place; fails closed (the buffer is wiped) if the AEAD refuses.
    fn seal(&self, index: u64, flag: u8, buf: &mut Vec<u8>) -> Result<(), CryptError> {
        let mut n = [0u8; 24];
        n[15..23].copy_from_slice(&index.to_be_bytes());
        n[23] = flag;
        // Encryption fails only on inputs longer than the AEAD's limit (64 GiB), far above any chunk.
        let ok = match &self.aead {
            Aead::Aes(a) => {
                a.seal_in_place_append_tag(aes_nonce(&n), ring::aead::Aad::from(&self.ad[..]), buf).map_err(|_| ())
            }
            Aead::XChaCha(a) => a.encrypt_in_place((&n).into(), &self.ad, buf).map_err(|_| ()),
        };
        if ok.is_err() {
            zeroize::Zeroize::zeroize(buf);
            return Err(CryptError::Geometry(format!("segment {index} is too long to seal")));
        }
        Ok(())
    }

    fn open(&self, index: u64, flag: u8, buf: &mut Vec<u8>) -> bool {
        let mut n = [0u8; 24];
        n[15..23].copy_from_slice(&index.to_be_bytes());
        n[23] = flag;
        match &self.aead {
            Aead::Aes(a) => {
                let ok = a.open_in_place(aes_nonce(&n), ring::aead::Aad::from(&self.ad[..]), buf).is_ok();
                // ring leaves the tag in place: the plaintext is what precedes it.
                if ok {
                    buf.truncate(buf.len() - TAG_LEN as usize);
                }
                ok
            }
            Aead::XChaCha(a) => a.decrypt_in_place((&n).into(), &self.ad, buf).is_ok(),
        }
    }

    /// Encrypts segment `index`: a full segment, or the last one (at most a full segment).
    pub fn encrypt_segment(&self, index: u64, last: bool, plain: &[u8]) -> Result<Vec<u8>, CryptError> {
        let n = plain.len() as u64;
        if n > self.seg || (!last && n != self.seg) || index == DIGEST_INDEX {
            return Err(CryptError::Geometry(format!(
                "segment {index} has {n} bytes; segments hold {} bytes and only the last may hold fewer",
                self.seg
            )));
        }
        let mut buf = Vec::with_capacity(plain.len() + TAG_LEN as usize);
        buf.extend_from_slice(plain);
        self.seal(index, u8::from(last), &mut buf)?;
        Ok(buf)
    }

    /// Decrypts ciphertext chunk `index` into its plaintext segment.
    pub fn decrypt_segment(&self, index: u64, cipher: &[u8]) -> Result<Vec<u8>, CryptError> {
        let Some(s) = &self.segments else {
            return Err(CryptError::Geometry("the file's plaintext size is not known".into()));
        };
        if index >= s.count {
            return Err(CryptError::Auth { index });
        }
        let want = s.plain_range(index);
        if cipher.len() as u64 != want.end - want.start + TAG_LEN {
            return Err(CryptError::Auth { index });
        }
        let mut buf = cipher.to_vec();
        if !self.open(index, u8::from(index + 1 == s.count), &mut buf) {
            return Err(CryptError::Auth { index });
        }
        Ok(buf)
    }

    /// Seals the plaintext's BLAKE3 for the manifest.
    pub fn seal_digest(&self, digest: &Blake3) -> Result<Vec<u8>, CryptError> {
        let mut buf = digest.0.to_vec();
        self.seal(DIGEST_INDEX, DIGEST_FLAG, &mut buf)?;
        Ok(buf)
    }

    /// Opens the manifest's sealed plaintext digest.
    pub fn open_digest(&self, sealed: &[u8]) -> Result<Blake3, CryptError> {
        let mut buf = sealed.to_vec();
        if sealed.len() != 32 + TAG_LEN as usize || !self.open(DIGEST_INDEX, DIGEST_FLAG, &mut buf) {
            return Err(CryptError::Digest);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(&buf);
        Ok(Blake3(out))
    }
}

#[cfg(test)]
mod tests;
