//! Decrypting a whole file offline (`shardgate decrypt`): for consumers who
//! hold the key and read the stored ciphertext themselves.
//!
//! The ciphertext is checked against the signed manifest as it streams
//! (its BLAKE3 and, for the plaintext, the sealed digest), and the output is
//! written beside its destination and renamed into place only when both
//! match: a bad file never appears under the destination's name.

use std::io::{Read, Write};
use std::path::Path;

use super::{DataKey, FileBinding, FileCipher, Scheme};
use crate::progress::Progress;
use crate::release::chunk::ChunkHasher;
use crate::release::manifest::{Blake3, Manifest};

#[derive(Debug, thiserror::Error)]
pub enum DecryptError {
    #[error("{0}")]
    Input(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {why}")]
    Integrity { path: String, why: String },
}

impl crate::error::Classify for DecryptError {
    fn class(&self) -> crate::error::ErrorClass {
        match self {
            DecryptError::Input(_) => crate::error::ErrorClass::Client,
            DecryptError::Io { .. } => crate::error::ErrorClass::Storage,
            DecryptError::Integrity { .. } => crate::error::ErrorClass::Integrity,
        }
    }
}

/// The cipher of release file `path`.
pub fn cipher_for(m: &Manifest, path: &str, key: &DataKey) -> Result<FileCipher, DecryptError> {
    let f =
        m.file(path).ok_or_else(|| DecryptError::Input(format!("{}@{} has no file {path:?}", m.name, m.version)))?;
    let e = f
        .encryption
        .as_ref()
        .ok_or_else(|| DecryptError::Input(format!("{path} is not encrypted; read it as it is")))?;
    if e.key_id != key.id() {
        return Err(DecryptError::Input(format!("{path} is encrypted with key {}, not {}", e.key_id, key.id())));
    }
    let scheme = Scheme::parse(&e.scheme).map_err(|x| DecryptError::Input(x.to_string()))?;
    let salt = e.salt_bytes().ok_or_else(|| DecryptError::Input(format!("{path}: bad salt")))?;
    let version = m.version.to_string();
    let at = FileBinding { name: &m.name, version: &version, path, salt: &salt, chunk_size: f.chunk_size };
    FileCipher::sized(scheme, key, at, e.plaintext_size).map_err(|x| DecryptError::Input(x.to_string()))
}

/// Decrypts release file `path` from `input` (its stored ciphertext) into `out`.
/// Returns the plaintext's BLAKE3.
pub fn decrypt_file(
    m: &Manifest,
    path: &str,
    key: &DataKey,
    input: &Path,
    out: &Path,
    progress: &dyn Progress,
) -> Result<Blake3, DecryptError> {
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| DecryptError::Io { path, source }
    };
    let cipher = cipher_for(m, path, key)?;
    let f = m.file(path).ok_or_else(|| DecryptError::Input(path.to_string()))?;
    let e = f.encryption.as_ref().ok_or_else(|| DecryptError::Input(path.to_string()))?;
    let sealed = cipher
        .open_digest(&e.sealed_bytes().unwrap_or_default())
        .map_err(|x| DecryptError::Integrity { path: path.to_string(), why: x.to_string() })?;
    let segments = *cipher.segments().ok_or_else(|| DecryptError::Input(path.to_string()))?;
    let mut src = std::fs::File::open(input).map_err(io(input))?;
    let len = src.metadata().map_err(io(input))?.len();
    if len != f.size {
        return Err(DecryptError::Integrity {
            path: input.display().to_string(),
            why: format!("is {len} bytes; the manifest says the ciphertext of {path} is {}", f.size),
        });
    }
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile_in(dir).map_err(io(dir))?;
    let mut hasher = ChunkHasher::new(f.chunk_size).map_err(|x| DecryptError::Input(x.to_string()))?;
    let mut plain_hash = blake3::Hasher::new();
    let mut buf = vec![0u8; f.chunk_size as usize];
    progress.begin("decrypt", e.plaintext_size);
    for i in 0..segments.count() {
        let r = segments.plain_range(i);
        let n = (r.end - r.start + super::TAG_LEN) as usize;
        src.read_exact(&mut buf[..n]).map_err(io(input))?;
        hasher.update(&buf[..n]);
        let plain = cipher
            .decrypt_segment(i, &buf[..n])
            .map_err(|x| DecryptError::Integrity { path: path.to_string(), why: x.to_string() })?;
        plain_hash.update(&plain);
        tmp.1.write_all(&plain).map_err(io(&tmp.0))?;
        progress.advance(plain.len() as u64);
    }
    progress.end();
    let root: Blake3 = hasher.finish().root.into();
    if root != f.blake3 {
        return Err(DecryptError::Integrity {
            path: input.display().to_string(),
            why: format!("ciphertext BLAKE3 is {root}, the manifest says {}", f.blake3),
        });
    }
    let digest: Blake3 = plain_hash.finalize().into();
    if digest != sealed {
        return Err(DecryptError::Integrity {
            path: path.to_string(),
            why: format!("plaintext BLAKE3 is {digest}, the sealed digest says {sealed}"),
        });
    }
    tmp.1.sync_all().map_err(io(&tmp.0))?;
    std::fs::rename(&tmp.0, out).map_err(io(out))?;
    tmp.2 = true;
    Ok(digest)
}

/// A temporary file beside the destination, removed unless kept.
struct Tmp(std::path::PathBuf, std::fs::File, bool);

impl Drop for Tmp {
    fn drop(&mut self) {
        if !self.2 {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn tempfile_in(dir: &Path) -> std::io::Result<Tmp> {
    let mut n = [0u8; 6];
    let _ = getrandom::fill(&mut n);
    let p = dir.join(format!(".shardgate-decrypt-{}", hex::encode(n)));
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    // Plaintext: readable by its owner only.
    let f = o.open(&p)?;
    Ok(Tmp(p, f, false))
}
