//! The signed release manifest (`manifest.json`, schema `shardgate.manifest/v1`,
//! or `shardgate.manifest/v2` when a file is encrypted or the release carries
//! sign-offs; v1 manifests load as they always did).
//!
//! The publisher's signature covers everything but itself and the
//! `approvals` (each approval signs the same bytes), so sign-offs are added
//! after packing without the publisher's key; they are part of
//! `manifest.json`, so the release id covers them.
//!
//! Canonical form: JSON with object keys sorted and no insignificant
//! whitespace is what gets signed (the *signing bytes*, with the `signature`
//! member left out). The file itself is the same value with the signature,
//! pretty-printed with two-space indentation and a final newline. Both forms
//! are deterministic, so the BLAKE3 hash of `manifest.json` is the release id,
//! and a file not in canonical form is refused.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::chunk::{ChunkLayout, check_chunk_size};
use super::envelope::Envelope;
use super::keys::{PublicKey, PublisherKey, b64, un_b64};

pub const SCHEMA: &str = "shardgate.manifest/v1";
/// The schema of a manifest with encrypted files or sign-offs.
pub const SCHEMA_V2: &str = "shardgate.manifest/v2";
/// What an approver's signature covers, before the manifest's signing bytes.
const APPROVAL_DOMAIN: &[u8] = b"shardgate.approval/v1\n";
pub const SIGNATURE_ALGORITHM: &str = "ed25519";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("manifest field `{field}`: {why}")]
    Field { field: String, why: String },
    #[error(
        "manifest is not in canonical form (first difference at byte offset {offset}); it was edited after signing"
    )]
    NotCanonical { offset: usize },
    #[error("manifest is not signed")]
    Unsigned,
    #[error("manifest signature does not verify against its public key {0}: the manifest was changed after signing")]
    BadSignature(PublicKey),
    #[error("manifest is signed by {0}, which is not a trusted key")]
    Untrusted(PublicKey),
}

/// A BLAKE3 hash written as 64 lowercase hex digits, as `b3sum` prints it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Blake3(pub [u8; 32]);

impl Blake3 {
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }
    pub fn hash(&self) -> blake3::Hash {
        blake3::Hash::from_bytes(self.0)
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl From<blake3::Hash> for Blake3 {
    fn from(h: blake3::Hash) -> Self {
        Self(*h.as_bytes())
    }
}

impl std::fmt::Display for Blake3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for Blake3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::str::FromStr for Blake3 {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(format!("{s:?} is not 64 lowercase hex digits"));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| e.to_string())?;
        Ok(Self(out))
    }
}

impl Serialize for Blake3 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Blake3 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentRef {
    pub name: String,
    pub version: semver::Version,
    /// BLAKE3 of the parent's `manifest.json`: its release id.
    pub manifest_blake3: Blake3,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative, `/`-separated, no `.` or `..` components.
    pub path: String,
    pub size: u64,
    pub media_type: String,
    pub blake3: Blake3,
    pub chunk_size: u64,
    /// BLAKE3 of the file's chunk table; `null` for a single-chunk file,
    /// whose one chunk is checked against `blake3` directly.
    pub chunk_table: Option<Blake3>,
    /// JSONL lines or WebDataset samples in this file, where the format tells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    /// Set when the file is encrypted: `size`, `blake3` and `chunk_table`
    /// then describe the ciphertext (see [`crate::crypt`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<FileEncryption>,
}

/// How an encrypted file was encrypted; public, like the rest of the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEncryption {
    /// `aes-256-gcm/chunked-v1` or `xchacha20-poly1305/chunked-v1`.
    pub scheme: String,
    /// The data key's id (its envelope is kept outside the release).
    pub key_id: String,
    /// 64 hex digits: the file's random salt, from which its key is derived.
    pub salt: String,
    pub plaintext_size: u64,
    /// Base64 of the plaintext's BLAKE3, sealed under the file key: only key holders read it.
    pub sealed_blake3: String,
}

impl FileEncryption {
    pub fn salt_bytes(&self) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&self.salt, &mut out).ok()?;
        Some(out)
    }

    pub fn sealed_bytes(&self) -> Option<Vec<u8>> {
        super::keys::un_b64(&self.sealed_blake3)
    }
}

/// A sign-off: a key holding `role` approved the release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    pub role: String,
    pub public_key: String,
    pub at: jiff::Timestamp,
    /// Base64 ed25519 over `shardgate.approval/v1\n<role>\n<at>\n` and the manifest's signing bytes.
    pub signature: String,
}

impl FileEntry {
    /// The file's chunk geometry (always `Ok` for a validated manifest).
    pub fn layout(&self) -> Result<ChunkLayout, super::chunk::ChunkError> {
        ChunkLayout::new(self.size, self.chunk_size)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Records {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jsonl_lines: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webdataset_samples: Option<u64>,
}

impl Records {
    pub fn is_empty(&self) -> bool {
        self == &Records::default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestSignature {
    pub algorithm: String,
    pub public_key: String,
    /// Base64 of the 64-byte ed25519 signature over the signing bytes.
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: String,
    pub name: String,
    pub version: semver::Version,
    pub parent: Option<ParentRef>,
    pub created_at: jiff::Timestamp,
    pub total_bytes: u64,
    #[serde(default, skip_serializing_if = "Records::is_empty")]
    pub records: Records,
    pub files: Vec<FileEntry>,
    #[serde(default)]
    pub envelope: Envelope,
    /// Sign-offs (security, legal, …) required by the release's policy class.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<Approval>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<ManifestSignature>,
}

/// Checks a dataset name: lowercase letters, digits, `.`, `_`, `-`; starts
/// with a letter or digit; at most 128 bytes. Names appear in URLs and paths.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a dataset name (1-128 of a-z 0-9 . _ -, starting with a letter or digit)"))
    }
}

/// Checks a release-relative file path: `/`-separated normal components only.
pub fn check_path(path: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("file path {path:?} {why}"));
    if path.is_empty() || path.len() > 4096 {
        return bad("is empty or longer than 4096 bytes");
    }
    if path.contains('\\') || path.contains('\0') || path.chars().any(char::is_control) {
        return bad("contains a backslash, NUL or control character");
    }
    for comp in path.split('/') {
        if comp.is_empty() || comp == "." || comp == ".." {
            return bad("has an empty, `.` or `..` component");
        }
    }
    Ok(())
}

/// Parses a version, insisting on semver.
pub fn parse_version(v: &str) -> Result<semver::Version, String> {
    semver::Version::parse(v).map_err(|e| format!("version {v:?} is not a semantic version (like 1.4.2): {e}"))
}

impl Manifest {
    /// The bytes the signature covers: canonical compact JSON without
    /// `signature` and `approvals`.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.signature = None;
        unsigned.approvals.clear();
        canonical_json(&to_value(&unsigned), false)
    }

    /// The schema a manifest with these files carries. (Sign-offs are
    /// added after signing and do not change it: the publisher signed it.)
    pub fn schema_for(files: &[FileEntry]) -> &'static str {
        if files.iter().all(|f| f.encryption.is_none()) { SCHEMA } else { SCHEMA_V2 }
    }

    /// What an approver signs for `role` at `at`.
    pub fn approval_bytes(&self, role: &str, at: &jiff::Timestamp) -> Vec<u8> {
        approval_bytes(&self.signing_bytes(), role, at)
    }

    /// Adds a sign-off by `key` for `role`, replacing an earlier one by the same key for that role.
    pub fn approve(&mut self, key: &PublisherKey, role: &str, at: jiff::Timestamp) {
        let signature = b64(&key.sign(&self.approval_bytes(role, &at)));
        let public_key = key.public().to_string();
        self.approvals.retain(|a| !(a.role == role && a.public_key == public_key));
        self.approvals.push(Approval { role: role.to_string(), public_key, at, signature });
        self.approvals.sort_by(|a, b| (&a.role, &a.public_key).cmp(&(&b.role, &b.public_key)));
    }

    /// The sign-offs whose signatures verify, as (role, key).
    pub fn valid_approvals(&self) -> Vec<(&str, PublicKey)> {
        if self.approvals.is_empty() {
            return Vec::new();
        }
        let signing = self.signing_bytes();
        self.approvals
            .iter()
            .filter_map(|a| {
                let key: PublicKey = a.public_key.parse().ok()?;
                let sig: [u8; 64] = un_b64(&a.signature)?.try_into().ok()?;
                key.verify(&approval_bytes(&signing, &a.role, &a.at), &sig).then_some((a.role.as_str(), key))
            })
            .collect()
    }

    /// Re-serializes a signed manifest (after approvals changed) into its file bytes.
    pub fn to_signed(&self) -> Result<SignedManifest, ManifestError> {
        let mut bytes = canonical_json(&to_value(self), true);
        bytes.push(b'\n');
        SignedManifest::parse(&bytes)
    }

    /// Signs the manifest and returns its `manifest.json` bytes.
    pub fn sign(mut self, key: &PublisherKey) -> SignedManifest {
        self.signature = None;
        let sig = key.sign(&self.signing_bytes());
        self.signature = Some(ManifestSignature {
            algorithm: SIGNATURE_ALGORITHM.into(),
            public_key: key.public().to_string(),
            value: b64(&sig),
        });
        let mut bytes = canonical_json(&to_value(&self), true);
        bytes.push(b'\n');
        let id = Blake3::of(&bytes);
        SignedManifest { manifest: self, bytes, id, signer: key.public() }
    }

    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.binary_search_by(|f| f.path.as_str().cmp(path)).ok().map(|i| &self.files[i])
    }

    /// Structural checks every manifest must pass, signed or not.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let field = |field: &str, why: String| ManifestError::Field { field: field.into(), why };
        if self.schema != SCHEMA && self.schema != SCHEMA_V2 {
            return Err(field("schema", format!("{:?} is not {SCHEMA:?} or {SCHEMA_V2:?}", self.schema)));
        }
        if self.schema != Self::schema_for(&self.files) {
            return Err(field(
                "schema",
                format!("{SCHEMA_V2:?} is for manifests with encrypted files, and only they use it"),
            ));
        }
        for (i, pair) in self.approvals.windows(2).enumerate() {
            if (&pair[0].role, &pair[0].public_key) >= (&pair[1].role, &pair[1].public_key) {
                return Err(field(
                    &format!("approvals[{}]", i + 1),
                    "approvals are sorted by role and key, one per role and key".into(),
                ));
            }
        }
        for (i, a) in self.approvals.iter().enumerate() {
            if a.role.is_empty()
                || a.role.len() > 64
                || !a.role.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            {
                return Err(field(&format!("approvals[{i}].role"), format!("{:?} is not a role name", a.role)));
            }
        }
        let mut key_id: Option<&str> = None;
        check_name(&self.name).map_err(|w| field("name", w))?;
        if let Some(p) = &self.parent {
            check_name(&p.name).map_err(|w| field("parent.name", w))?;
        }
        let mut total: u64 = 0;
        let mut prev: Option<&str> = None;
        let mut seen_dirs = BTreeSet::new();
        for (i, f) in self.files.iter().enumerate() {
            let at = |k: &str| format!("files[{i}].{k}");
            check_path(&f.path).map_err(|w| field(&at("path"), w))?;
            if let Some(p) = prev
                && p >= f.path.as_str()
            {
                return Err(field(&at("path"), format!("{:?} is out of order or repeated", f.path)));
            }
            prev = Some(&f.path);
            let mut dir = f.path.as_str();
            while let Some((parent, _)) = dir.rsplit_once('/') {
                seen_dirs.insert(parent.to_string());
                dir = parent;
            }
            check_chunk_size(f.chunk_size).map_err(|e| field(&at("chunk_size"), e.to_string()))?;
            let has_table = ChunkLayout::new(f.size, f.chunk_size).map(|l| l.has_table()).unwrap_or(false);
            if has_table != f.chunk_table.is_some() {
                return Err(field(
                    &at("chunk_table"),
                    if has_table {
                        "missing for a multi-chunk file".into()
                    } else {
                        "present for a single-chunk file".into()
                    },
                ));
            }
            if f.media_type.is_empty()
                || f.media_type.len() > 255
                || !f.media_type.contains('/')
                || f.media_type.chars().any(|c| c.is_control())
            {
                return Err(field(&at("media_type"), format!("{:?} is not a media type", f.media_type)));
            }
            if let Some(e) = &f.encryption {
                crate::crypt::Scheme::parse(&e.scheme).map_err(|w| field(&at("encryption.scheme"), w.to_string()))?;
                crate::crypt::check_key_id(&e.key_id).map_err(|w| field(&at("encryption.key_id"), w.to_string()))?;
                if key_id.is_some_and(|k| k != e.key_id) {
                    return Err(field(
                        &at("encryption.key_id"),
                        "every encrypted file of a release has the same data key".into(),
                    ));
                }
                key_id = Some(&e.key_id);
                if e.salt_bytes().is_none() || e.salt.len() != 64 {
                    return Err(field(&at("encryption.salt"), "is not 64 hex digits".into()));
                }
                if e.sealed_bytes().is_none_or(|b| b.len() != 48) {
                    return Err(field(&at("encryption.sealed_blake3"), "is not base64 of 48 bytes".into()));
                }
                let want = crate::crypt::Segments::new(e.plaintext_size, f.chunk_size)
                    .map(|s| s.cipher_size())
                    .map_err(|w| field(&at("encryption.plaintext_size"), w.to_string()))?;
                if want != f.size {
                    return Err(field(
                        &at("size"),
                        format!("{} but {} plaintext bytes encrypt to {want}", f.size, e.plaintext_size),
                    ));
                }
            }
            total = total.checked_add(f.size).ok_or_else(|| field(&at("size"), "total overflows".into()))?;
        }
        if let Some(f) = self.files.iter().find(|f| seen_dirs.contains(&f.path)) {
            return Err(field("files", format!("{:?} is both a file and a directory", f.path)));
        }
        if total != self.total_bytes {
            return Err(field("total_bytes", format!("{} but files add up to {total}", self.total_bytes)));
        }
        Ok(())
    }
}

fn approval_bytes(signing: &[u8], role: &str, at: &jiff::Timestamp) -> Vec<u8> {
    let mut out = APPROVAL_DOMAIN.to_vec();
    out.extend_from_slice(format!("{role}\n{at}\n").as_bytes());
    out.extend_from_slice(signing);
    out
}

/// A parsed `manifest.json` with its exact bytes and release id.
#[derive(Debug, Clone)]
pub struct SignedManifest {
    pub manifest: Manifest,
    /// The file's bytes, as published.
    pub bytes: Vec<u8>,
    /// BLAKE3 of `bytes`.
    pub id: Blake3,
    pub signer: PublicKey,
}

impl SignedManifest {
    /// Parses and checks a manifest: JSON, structure, canonical form, and that
    /// the signature verifies against the embedded key. Trust is separate:
    /// see [`SignedManifest::check_trust`].
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let manifest: Manifest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                ManifestError::Json(inner.to_string())
            } else {
                ManifestError::Field { field: path, why: inner.to_string() }
            }
        })?;
        de.end().map_err(|e| ManifestError::Json(e.to_string()))?;
        manifest.validate()?;
        let mut canonical = canonical_json(&to_value(&manifest), true);
        canonical.push(b'\n');
        if canonical != bytes {
            let offset =
                canonical.iter().zip(bytes).position(|(a, b)| a != b).unwrap_or(canonical.len().min(bytes.len()));
            return Err(ManifestError::NotCanonical { offset });
        }
        let sig = manifest.signature.as_ref().ok_or(ManifestError::Unsigned)?;
        let field = |f: &str, why: String| ManifestError::Field { field: format!("signature.{f}"), why };
        if sig.algorithm != SIGNATURE_ALGORITHM {
            return Err(field("algorithm", format!("{:?} is not {SIGNATURE_ALGORITHM:?}", sig.algorithm)));
        }
        let signer: PublicKey =
            sig.public_key.parse().map_err(|e: super::keys::KeyError| field("public_key", e.to_string()))?;
        let value: [u8; 64] = un_b64(&sig.value)
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| field("value", "not base64 of 64 bytes".into()))?;
        if !signer.verify(&manifest.signing_bytes(), &value) {
            return Err(ManifestError::BadSignature(signer));
        }
        Ok(Self { id: Blake3::of(bytes), bytes: bytes.to_vec(), manifest, signer })
    }

    /// Fails unless the signer is one of `trusted`.
    pub fn check_trust(&self, trusted: &[PublicKey]) -> Result<(), ManifestError> {
        if trusted.contains(&self.signer) { Ok(()) } else { Err(ManifestError::Untrusted(self.signer.clone())) }
    }
}

fn to_value(m: &Manifest) -> Value {
    // Serializing plain data structs to a Value cannot fail (string keys only).
    serde_json::to_value(m).unwrap_or(Value::Null)
}

/// Canonical JSON: keys sorted by their UTF-8 bytes, compact or pretty with
/// two-space indentation. Independent of serde_json's map ordering features.
pub fn canonical_json(v: &Value, pretty: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    write_value(&mut out, v, pretty, 0);
    out
}

fn write_value(out: &mut Vec<u8>, v: &Value, pretty: bool, depth: usize) {
    let newline = |out: &mut Vec<u8>, depth: usize| {
        if pretty {
            out.push(b'\n');
            out.extend(std::iter::repeat_n(b' ', depth * 2));
        }
    };
    match v {
        Value::Object(map) => {
            if map.is_empty() {
                out.extend_from_slice(b"{}");
                return;
            }
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                newline(out, depth + 1);
                write_scalar(out, &Value::String((*k).clone()));
                out.extend_from_slice(if pretty { b": " } else { b":" });
                write_value(out, &map[*k], pretty, depth + 1);
            }
            newline(out, depth);
            out.push(b'}');
        }
        Value::Array(items) => {
            if items.is_empty() {
                out.extend_from_slice(b"[]");
                return;
            }
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                newline(out, depth + 1);
                write_value(out, item, pretty, depth + 1);
            }
            newline(out, depth);
            out.push(b']');
        }
        scalar => write_scalar(out, scalar),
    }
}

fn write_scalar(out: &mut Vec<u8>, v: &Value) {
    // serde_json's own formatting of strings and numbers; writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
}

#[cfg(test)]
mod tests;
