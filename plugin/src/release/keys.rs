//! Publisher keys: ed25519, private key as PKCS#8 PEM (mode 0600), public key
//! as one line `ed25519:<base64>` that fits in config files and manifests.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

const PREFIX: &str = "ed25519:";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}: refusing to overwrite an existing key")]
    Exists(PathBuf),
    #[error("{path}: not an ed25519 private key in PKCS#8 PEM form ({why})")]
    BadPrivate { path: PathBuf, why: String },
    #[error("bad public key {text:?}: {why} (expected `ed25519:<base64 of 32 bytes>`)")]
    BadPublic { text: String, why: String },
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

/// A trusted or signing publisher's public key (32 bytes, checked to be a
/// valid curve point when parsed).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}", B64.encode(self.0))
    }
}

impl std::str::FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let text = s.trim();
        let bad = |why: &str| KeyError::BadPublic { text: text.chars().take(80).collect(), why: why.into() };
        let b64 = text.strip_prefix(PREFIX).ok_or_else(|| bad("missing `ed25519:` prefix"))?;
        let raw = B64.decode(b64).map_err(|e| bad(&e.to_string()))?;
        let bytes: [u8; 32] = raw.try_into().map_err(|_| bad("not 32 bytes"))?;
        VerifyingKey::from_bytes(&bytes).map_err(|e| bad(&e.to_string()))?;
        Ok(PublicKey(bytes))
    }
}

impl PublicKey {
    /// Reads a key given inline (`ed25519:...`) or as a path to a `.pub` file.
    pub fn load(spec: &str) -> Result<Self, KeyError> {
        if spec.trim_start().starts_with(PREFIX) {
            return spec.parse();
        }
        let path = Path::new(spec);
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: path.into(), source })?;
        text.parse()
    }

    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        VerifyingKey::from_bytes(&self.0)
            .is_ok_and(|k| k.verify_strict(message, &Signature::from_bytes(signature)).is_ok())
    }
}

/// A publisher's private signing key.
pub struct PublisherKey(SigningKey);

impl std::fmt::Debug for PublisherKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PublisherKey").field(&self.public()).finish()
    }
}

impl PublisherKey {
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: path.into(), source })?;
        SigningKey::from_pkcs8_pem(&text)
            .map(Self)
            .map_err(|e| KeyError::BadPrivate { path: path.into(), why: e.to_string() })
    }

    /// Writes the private key (mode 0600, never overwriting) and `PATH.pub`.
    pub fn save(&self, path: &Path) -> Result<PathBuf, KeyError> {
        let pub_path = pub_path(path);
        for p in [path, pub_path.as_path()] {
            if p.exists() {
                return Err(KeyError::Exists(p.to_path_buf()));
            }
        }
        let pem = self
            .0
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::BadPrivate { path: path.into(), why: e.to_string() })?;
        let io = |source| KeyError::Io { path: path.into(), source };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(path).map_err(io)?;
        f.write_all(pem.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::write(&pub_path, format!("{}\n", self.public()))
            .map_err(|source| KeyError::Io { path: pub_path.clone(), source })?;
        Ok(pub_path)
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

/// `KEY` -> `KEY.pub`.
pub fn pub_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

pub fn un_b64(text: &str) -> Option<Vec<u8>> {
    B64.decode(text).ok()
}
