//! What a gateway can decrypt: for each encrypted release in a catalog, the
//! data key unwrapped from its registered envelope with the gateway's own
//! keys, and a cipher per encrypted file; or why it cannot.
//!
//! Built whenever the catalog is (start, reload, registration, a key
//! envelope change), so a revocation takes effect with the next swap, and a
//! body streaming plaintext checks it again before each chunk.

use std::collections::HashMap;
use std::sync::Arc;

use super::envelope::{KeyEnvelope, Unwrappers};
use super::{FileBinding, FileCipher, Scheme};
use crate::release::manifest::SignedManifest;

/// One encrypted file, ready to decrypt.
#[derive(Debug)]
pub struct PlainView {
    pub cipher: FileCipher,
    /// The ciphertext file, and this unwrap's generation: where its decrypted
    /// segments sit in the plaintext tier.
    pub file: crate::release::manifest::Blake3,
    pub generation: u64,
    /// The plaintext's BLAKE3 (opened from the manifest's sealed digest), quoted: the ETag of the plaintext.
    pub etag: String,
    pub size: u64,
}

/// A release's data key as this gateway holds it.
#[derive(Debug)]
pub enum KeyState {
    /// Unwrapped: a view per file index (`None` for files stored in plain).
    Ready { key_id: String, files: Vec<Option<Arc<PlainView>>> },
    /// Not usable, and why (no envelope, no wrapping this gateway opens, a mismatch).
    Unavailable(String),
}

impl PlainView {
    /// The plaintext tier's key of segment `index`.
    pub fn key(&self, index: u64) -> crate::tier::PlainKey {
        crate::tier::PlainKey { generation: self.generation, file: self.file, index }
    }
}

/// A fresh generation per unwrap: the plaintext of a withdrawn key never matches a new one.
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl KeyState {
    /// The generation of a usable key (none when unavailable).
    pub fn generation(&self) -> Option<u64> {
        match self {
            KeyState::Ready { files, .. } => files.iter().flatten().map(|v| v.generation).next(),
            KeyState::Unavailable(_) => None,
        }
    }

    pub fn view(&self, index: usize) -> Result<Option<&Arc<PlainView>>, &str> {
        match self {
            KeyState::Ready { files, .. } => Ok(files.get(index).and_then(Option::as_ref)),
            KeyState::Unavailable(why) => Err(why),
        }
    }
}

/// Whether a release has encrypted files.
pub fn is_encrypted(signed: &SignedManifest) -> bool {
    signed.manifest.files.iter().any(|f| f.encryption.is_some())
}

/// Unwraps a release's data key from `envelope` and prepares its files.
pub fn unlock(signed: &SignedManifest, envelope: Option<&[u8]>, with: &Unwrappers) -> KeyState {
    let m = &signed.manifest;
    let release = format!("{}@{}", m.name, m.version);
    let Some(bytes) = envelope else {
        return KeyState::Unavailable(format!(
            "no key envelope is registered for {release}: it was never registered here, or it was destroyed"
        ));
    };
    let env = match KeyEnvelope::parse(bytes) {
        Ok(e) => e,
        Err(e) => return KeyState::Unavailable(format!("the key envelope of {release} is unusable: {e}")),
    };
    if env.name != m.name || env.version != m.version {
        return KeyState::Unavailable(format!("the registered key envelope is for {}, not {release}", env.release()));
    }
    let key = match env.open(with) {
        Ok(k) => k,
        Err(e) => return KeyState::Unavailable(e.to_string()),
    };
    let version = m.version.to_string();
    let generation = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut files = Vec::with_capacity(m.files.len());
    for f in &m.files {
        let Some(e) = &f.encryption else {
            files.push(None);
            continue;
        };
        if e.key_id != env.key_id {
            return KeyState::Unavailable(format!(
                "{} of {release} is encrypted with key {}, the envelope holds {}",
                f.path, e.key_id, env.key_id
            ));
        }
        let view = (|| {
            let scheme = Scheme::parse(&e.scheme).map_err(|x| x.to_string())?;
            let salt = e.salt_bytes().ok_or("bad salt")?;
            let at =
                FileBinding { name: &m.name, version: &version, path: &f.path, salt: &salt, chunk_size: f.chunk_size };
            let cipher = FileCipher::sized(scheme, &key, at, e.plaintext_size).map_err(|x| x.to_string())?;
            let digest = cipher.open_digest(&e.sealed_bytes().unwrap_or_default()).map_err(|x| x.to_string())?;
            Ok::<_, String>(PlainView {
                cipher,
                file: f.blake3,
                generation,
                etag: format!("\"{digest}\""),
                size: e.plaintext_size,
            })
        })();
        match view {
            Ok(v) => files.push(Some(Arc::new(v))),
            Err(why) => {
                return KeyState::Unavailable(format!("{} of {release} does not open with its key: {why}", f.path));
            }
        }
    }
    KeyState::Ready { key_id: env.key_id, files }
}

/// The key states of a catalog's encrypted releases, by release id.
pub type Keys = HashMap<crate::release::manifest::Blake3, Arc<KeyState>>;
