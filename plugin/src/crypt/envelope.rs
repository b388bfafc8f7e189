//! The key envelope: a release's data key wrapped by key-encryption keys,
//! kept outside the release (in a gateway's registry, or as a file).
//!
//! ```json
//! {
//!   "schema": "shardgate.key-envelope/v1",
//!   "name": "cohort", "version": "1.0.0",
//!   "key_id": "k1-…", "scheme": "aes-256-gcm/chunked-v1",
//!   "age": "-----BEGIN AGE ENCRYPTED FILE-----\n…",
//!   "age_recipients": ["age1…"],
//!   "pkcs11": [{"token_label": "…", "key_label": "…", "mechanism": "aes-key-wrap-pad", "wrapped": "<base64>"}]
//! }
//! ```
//!
//! `age` is an ordinary ASCII-armored age file whose payload is the 32 raw
//! bytes of the data key: `age -d -i KEY` opens it, and `age -r … -a` makes
//! one. `age_recipients` only records who it was wrapped to (age files do
//! not name their recipients). Revocation never touches the release: wrap
//! again without a recipient, point the gateway at another identity, or
//! destroy the envelope.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use super::pkcs11::{self, Pkcs11Config};
use super::{DataKey, check_key_id};

pub const SCHEMA: &str = "shardgate.key-envelope/v1";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key envelope is not valid: {0}")]
    Invalid(String),
    #[error("{0:?} is not an age recipient (age1…)")]
    BadRecipient(String),
    #[error("{path}: {why}")]
    Identity { path: String, why: String },
    #[error("age: {0}")]
    Age(String),
    #[error(transparent)]
    Pkcs11(#[from] pkcs11::Pkcs11Error),
    #[error("nothing to wrap the data key with: give at least one age recipient or a PKCS#11 key")]
    NoWrapper,
    #[error(
        "the key envelope of {release} has no wrapping this gateway's keys open ({tried}); the key was revoked here or the gateway's wrapping key rotated"
    )]
    NoStanza { release: String, tried: String },
    #[error("the key envelope of {release} unwraps to key {got}, not {want}: it belongs to another release")]
    WrongKey { release: String, got: String, want: String },
}

/// One wrapping by a PKCS#11 token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Wrap {
    pub token_label: String,
    pub key_label: String,
    pub mechanism: String,
    /// Base64 of the wrapped key.
    pub wrapped: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEnvelope {
    pub schema: String,
    pub name: String,
    pub version: semver::Version,
    pub key_id: String,
    pub scheme: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub age_recipients: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pkcs11: Vec<Pkcs11Wrap>,
}

/// What a key holder unwraps with.
#[derive(Default)]
pub struct Unwrappers {
    pub age: Vec<age::x25519::Identity>,
    pub pkcs11: Option<Pkcs11Config>,
}

impl std::fmt::Debug for Unwrappers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unwrappers").field("age", &self.age.len()).field("pkcs11", &self.pkcs11).finish()
    }
}

/// What to wrap a new data key with.
#[derive(Debug, Default, Clone)]
pub struct Wrappers {
    pub age: Vec<age::x25519::Recipient>,
    pub pkcs11: Option<Pkcs11Config>,
}

impl Wrappers {
    pub fn is_empty(&self) -> bool {
        self.age.is_empty() && self.pkcs11.is_none()
    }
}

/// Parses an age X25519 recipient (`age1…`).
pub fn parse_recipient(s: &str) -> Result<age::x25519::Recipient, KeyError> {
    s.trim().parse().map_err(|_| KeyError::BadRecipient(s.trim().to_string()))
}

/// Reads recipients from a file: one per line, `#` comments and blank lines skipped.
pub fn read_recipients(path: &std::path::Path) -> Result<Vec<age::x25519::Recipient>, KeyError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| KeyError::Identity { path: path.display().to_string(), why: e.to_string() })?;
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(parse_recipient).collect()
}

/// Reads X25519 identities from an age identity file (as `age-keygen` writes it).
pub fn read_identities(path: &std::path::Path) -> Result<Vec<age::x25519::Identity>, KeyError> {
    let shown = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| KeyError::Identity { path: shown.clone(), why: e.to_string() })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().map(str::trim).enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let id = line.parse::<age::x25519::Identity>().map_err(|_| KeyError::Identity {
            path: shown.clone(),
            why: format!("line {} is not an age X25519 identity (AGE-SECRET-KEY-1…)", i + 1),
        })?;
        out.push(id);
    }
    if out.is_empty() {
        return Err(KeyError::Identity { path: shown, why: "holds no identity".into() });
    }
    Ok(out)
}

/// Wraps `payload` to age recipients, armored.
pub fn age_wrap(recipients: &[age::x25519::Recipient], payload: &[u8]) -> Result<String, KeyError> {
    let enc = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| KeyError::Age(e.to_string()))?;
    let mut out = Vec::new();
    let armor = age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)
        .map_err(|e| KeyError::Age(e.to_string()))?;
    let mut w = enc.wrap_output(armor).map_err(|e| KeyError::Age(e.to_string()))?;
    w.write_all(payload).map_err(|e| KeyError::Age(e.to_string()))?;
    w.finish().and_then(|a| a.finish()).map_err(|e| KeyError::Age(e.to_string()))?;
    String::from_utf8(out).map_err(|e| KeyError::Age(e.to_string()))
}

/// Opens an age file (armored or binary) with any of `identities`; `None` when none opens it.
pub fn age_unwrap(
    identities: &[age::x25519::Identity],
    file: &[u8],
) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, KeyError> {
    let dec = age::Decryptor::new_buffered(age::armor::ArmoredReader::new(file))
        .map_err(|e| KeyError::Invalid(format!("age: {e}")))?;
    match dec.decrypt(identities.iter().map(|i| i as &dyn age::Identity)) {
        Ok(mut r) => {
            let mut out = Vec::new();
            // A payload longer than a key is refused below; read at most a little more.
            r.by_ref().take(64).read_to_end(&mut out).map_err(|e| KeyError::Age(e.to_string()))?;
            Ok(Some(zeroize::Zeroizing::new(out)))
        }
        Err(age::DecryptError::NoMatchingKeys) => Ok(None),
        Err(e) => Err(KeyError::Age(e.to_string())),
    }
}

impl KeyEnvelope {
    /// Wraps `key` for release `name@version`.
    pub fn seal(
        name: &str,
        version: &semver::Version,
        scheme: super::Scheme,
        key: &DataKey,
        to: &Wrappers,
    ) -> Result<Self, KeyError> {
        if to.is_empty() {
            return Err(KeyError::NoWrapper);
        }
        let age = if to.age.is_empty() { None } else { Some(age_wrap(&to.age, key.bytes())?) };
        let mut pkcs11 = Vec::new();
        if let Some(cfg) = &to.pkcs11 {
            let (mechanism, wrapped) = pkcs11::wrap(cfg, key.bytes())?;
            pkcs11.push(Pkcs11Wrap {
                token_label: cfg.token_label.clone(),
                key_label: cfg.key_label.clone(),
                mechanism,
                wrapped: crate::release::keys::b64(&wrapped),
            });
        }
        Ok(Self {
            schema: SCHEMA.into(),
            name: name.to_string(),
            version: version.clone(),
            key_id: key.id(),
            scheme: scheme.name().into(),
            age,
            age_recipients: to.age.iter().map(ToString::to_string).collect(),
            pkcs11,
        })
    }

    /// The release the envelope is for, as `name@version`.
    pub fn release(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, KeyError> {
        let env: Self = serde_json::from_slice(bytes).map_err(|e| KeyError::Invalid(e.to_string()))?;
        env.validate()?;
        Ok(env)
    }

    pub fn validate(&self) -> Result<(), KeyError> {
        if self.schema != SCHEMA {
            return Err(KeyError::Invalid(format!("schema {:?} is not {SCHEMA:?}", self.schema)));
        }
        crate::release::manifest::check_name(&self.name).map_err(KeyError::Invalid)?;
        check_key_id(&self.key_id).map_err(|e| KeyError::Invalid(e.to_string()))?;
        super::Scheme::parse(&self.scheme).map_err(|e| KeyError::Invalid(e.to_string()))?;
        if self.age.is_none() && self.pkcs11.is_empty() {
            return Err(KeyError::Invalid("it holds no wrapped key (neither `age` nor `pkcs11`)".into()));
        }
        Ok(())
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Unwraps the data key with whatever `with` holds, and checks it is the envelope's key.
    pub fn open(&self, with: &Unwrappers) -> Result<DataKey, KeyError> {
        let mut tried = Vec::new();
        let mut key = None;
        if let Some(armored) = &self.age
            && !with.age.is_empty()
        {
            tried.push(format!("{} age identit{}", with.age.len(), if with.age.len() == 1 { "y" } else { "ies" }));
            match age_unwrap(&with.age, armored.as_bytes()) {
                Ok(Some(bytes)) => {
                    key = Some(DataKey::from_bytes(&bytes).ok_or_else(|| {
                        KeyError::Invalid(format!("its age payload is {} bytes, not a 32-byte key", bytes.len()))
                    })?);
                }
                Ok(None) => {}
                // A damaged age member does not stop a PKCS#11 wrapping from being tried.
                Err(e) if with.pkcs11.is_some() && !self.pkcs11.is_empty() => tried.push(format!("age failed: {e}")),
                Err(e) => return Err(e),
            }
        }
        if key.is_none()
            && let Some(cfg) = &with.pkcs11
        {
            tried.push(format!("PKCS#11 key {:?} in token {:?}", cfg.key_label, cfg.token_label));
            if let Some(w) =
                self.pkcs11.iter().find(|w| w.token_label == cfg.token_label && w.key_label == cfg.key_label)
            {
                let wrapped = crate::release::keys::un_b64(&w.wrapped)
                    .ok_or_else(|| KeyError::Invalid("pkcs11.wrapped is not base64".into()))?;
                let k = pkcs11::unwrap(cfg, &w.mechanism, &wrapped)?;
                key = Some(
                    DataKey::from_bytes(k.as_ref())
                        .ok_or_else(|| KeyError::Invalid("the PKCS#11 wrapping does not hold a 32-byte key".into()))?,
                );
            }
        }
        let Some(key) = key else {
            let tried = if tried.is_empty() { "it has no age or PKCS#11 keys".to_string() } else { tried.join(", ") };
            return Err(KeyError::NoStanza { release: self.release(), tried });
        };
        if key.id() != self.key_id {
            return Err(KeyError::WrongKey { release: self.release(), got: key.id(), want: self.key_id.clone() });
        }
        Ok(key)
    }
}
