//! S3 access keys. SigV4 is an HMAC keyed by the secret, so the gateway
//! must hold each secret itself (unlike API keys, which it keeps only as
//! hashes). They live in one TOML file named by `s3.credentials`:
//!
//! ```toml
//! [[keys]]
//! access_key_id = "SGAK..."
//! secret_access_key = "..."
//! tenant = "acme"
//! ```
//!
//! The file must be readable by its owner only (mode 0600 or stricter); a
//! group- or world-readable file is refused at start and reload, naming the
//! file and its mode. Secrets are held in memory in wiping buffers and never
//! printed. `shardgate tenant s3-key` makes a key and appends it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Prefix of access key ids made by `shardgate tenant s3-key`.
pub const ACCESS_KEY_PREFIX: &str = "SGAK";

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "{path}: mode {mode:o} lets others read the S3 secrets; make it readable by its owner only (chmod 600 {path})"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3KeyEntry {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub tenant: String,
}

impl std::fmt::Debug for S3KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3KeyEntry").field("access_key_id", &self.access_key_id).field("tenant", &self.tenant).finish()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    keys: Vec<S3KeyEntry>,
}

/// A secret and the tenant it identifies.
pub struct Secret {
    pub secret: Zeroizing<String>,
    pub tenant: String,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret").field("tenant", &self.tenant).finish_non_exhaustive()
    }
}

/// The access keys in force, by access key id.
#[derive(Debug, Default)]
pub struct S3Keys {
    by_id: HashMap<String, Secret>,
}

impl S3Keys {
    pub fn get(&self, access_key_id: &str) -> Option<&Secret> {
        self.by_id.get(access_key_id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Reads the credentials file; `known_tenant` says whether a tenant id is configured.
    pub fn load(path: &Path, known_tenant: impl Fn(&str) -> bool) -> Result<Self, KeysError> {
        check_mode(path)?;
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| KeysError::Read { path: path.into(), source })?,
        );
        let file: File = toml::from_str(&text).map_err(|e| invalid_file(path, &text, &e))?;
        let mut by_id = HashMap::new();
        for (i, k) in file.keys.into_iter().enumerate() {
            let bad = |why: String| KeysError::Invalid { path: path.into(), why: format!("keys[{i}]: {why}") };
            if k.access_key_id.len() < 4 || !k.access_key_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(bad(format!("access_key_id {:?} must be 4 or more letters and digits", k.access_key_id)));
            }
            if k.secret_access_key.len() < 16 {
                return Err(bad("secret_access_key is shorter than 16 characters".into()));
            }
            if !known_tenant(&k.tenant) {
                return Err(bad(format!("tenant {:?} is not configured in [[tenants]]", k.tenant)));
            }
            let secret = Secret { secret: Zeroizing::new(k.secret_access_key), tenant: k.tenant };
            if by_id.insert(k.access_key_id.clone(), secret).is_some() {
                return Err(bad(format!("access_key_id {:?} appears twice", k.access_key_id)));
            }
        }
        Ok(Self { by_id })
    }
}

/// A parse error that names the line but never quotes the file (it holds secrets).
fn invalid_file(path: &Path, text: &str, e: &toml::de::Error) -> KeysError {
    let line = e.span().map(|s| text.get(..s.start).unwrap_or(text).lines().count().max(1));
    let at = line.map(|l| format!(" at line {l}")).unwrap_or_default();
    KeysError::Invalid {
        path: path.into(),
        why: format!(
            "not a credentials file{at}: expected [[keys]] tables with string access_key_id, secret_access_key and tenant"
        ),
    }
}

#[cfg(unix)]
fn check_mode(path: &Path) -> Result<(), KeysError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| KeysError::Read { path: path.into(), source })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeysError::Exposed { path: path.into(), mode });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_: &Path) -> Result<(), KeysError> {
    Ok(())
}

/// A new access key for `tenant`: 20 characters of id, 40 of secret.
pub fn new_key(tenant: &str) -> Result<S3KeyEntry, String> {
    let mut id = [0u8; 10];
    let mut secret = [0u8; 30];
    getrandom::fill(&mut id).map_err(|e| e.to_string())?;
    getrandom::fill(&mut secret).map_err(|e| e.to_string())?;
    Ok(S3KeyEntry {
        access_key_id: format!("{ACCESS_KEY_PREFIX}{}", data_encoding::BASE32_NOPAD.encode(&id)),
        secret_access_key: base64::engine::general_purpose::STANDARD.encode(secret),
        tenant: tenant.to_string(),
    })
}

/// Appends `entry` to the credentials file at `path`, creating it with mode
/// 0600 if absent; an existing file others can read is refused untouched.
pub fn append(path: &Path, entry: &S3KeyEntry) -> Result<(), KeysError> {
    use std::io::Write;
    let exists = path.exists();
    if exists {
        check_mode(path)?;
        // The file must parse before anything is added to it.
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| KeysError::Read { path: path.into(), source })?,
        );
        toml::from_str::<File>(&text).map_err(|e| invalid_file(path, &text, &e))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|source| KeysError::Read { path: path.into(), source })?;
    let block = toml::to_string(&File { keys: vec![entry.clone()] })
        .map_err(|e| KeysError::Invalid { path: path.into(), why: e.to_string() })?;
    let sep = if exists { "\n" } else { "" };
    f.write_all(format!("{sep}{block}").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|source| KeysError::Read { path: path.into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_exposed_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s3.toml");
        let a = new_key("acme").unwrap();
        let b = new_key("beta").unwrap();
        append(&path, &a).unwrap();
        append(&path, &b).unwrap();
        let keys = S3Keys::load(&path, |t| t == "acme" || t == "beta").unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.get(&a.access_key_id).unwrap().tenant, "acme");
        assert_eq!(*keys.get(&b.access_key_id).unwrap().secret, b.secret_access_key);
        let e = S3Keys::load(&path, |t| t == "acme").unwrap_err().to_string();
        assert!(e.contains("\"beta\" is not configured"), "{e}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = S3Keys::load(&path, |_| true).unwrap_err().to_string();
            assert!(e.contains("mode 644"), "{e}");
            assert!(append(&path, &new_key("acme").unwrap()).is_err());
        }
        assert!(!format!("{:?}", keys.get(&a.access_key_id).unwrap()).contains(&a.secret_access_key));
    }
}
