//! Wraps and unwraps a release's 32-byte data key with an AES key-encryption
//! key (KEK) held in a PKCS#11 token (an HSM; SoftHSM2 in tests).
//!
//! The KEK never leaves the token: it is generated there sensitive and
//! non-extractable, and is only ever named by handle in C_WrapKey and
//! C_UnwrapKey. Only the data key crosses the boundary, as a session object
//! (CKA_TOKEN false) destroyed right after use. Wrapping uses
//! CKM_AES_KEY_WRAP_PAD (RFC 5649) when the token offers it, else
//! CKM_AES_KEY_WRAP (RFC 3394); both turn 32 bytes into 40.
//!
//! Each call loads the module, initializes it, logs in, works and finalizes.
//! C_Initialize and C_Finalize are process-wide, so calls are serialized.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::{AuthPin, Ulong};
use zeroize::{Zeroize, Zeroizing};

const KEY_LEN: usize = 32;
/// RFC 3394 and RFC 5649 both add one 8-byte block to a 32-byte key.
const WRAPPED_LEN: usize = KEY_LEN + 8;

static TOKEN_LOCK: Mutex<()> = Mutex::new(());

/// Where the key-encryption key lives in a PKCS#11 token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// Path to the PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so).
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// A file holding the user PIN (first line, trailing newline trimmed).
    pub pin_file: PathBuf,
    /// CKA_LABEL of the AES key-encryption key in the token.
    pub key_label: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Pkcs11Error {
    #[error("cannot load PKCS#11 module {}: {}", .module.display(), why(.source))]
    Load { module: PathBuf, source: CkError },
    #[error("cannot initialize PKCS#11 module {}: {}", .module.display(), why(.source))]
    Init { module: PathBuf, source: CkError },
    #[error("no token labelled {token:?} in PKCS#11 module {} (tokens present: {found:?})", .module.display())]
    NoToken { module: PathBuf, token: String, found: Vec<String> },
    #[error("cannot read the PKCS#11 PIN file {}: {source}", .path.display())]
    PinFile { path: PathBuf, source: std::io::Error },
    #[error("the PKCS#11 PIN file {} is empty", .path.display())]
    EmptyPin { path: PathBuf },
    #[error("token {token:?} rejected the user PIN from {}", .path.display())]
    BadPin { token: String, path: PathBuf },
    #[error("cannot log in to token {token:?}: {}", why(.source))]
    Login { token: String, source: CkError },
    #[error("token {token:?}: cannot {op}: {}", why(.source))]
    Token { token: String, op: &'static str, source: CkError },
    #[error("no AES key labelled {key:?} in token {token:?}")]
    NoKey { token: String, key: String },
    #[error("{count} AES keys are labelled {key:?} in token {token:?}; the label must name one key")]
    AmbiguousKey { token: String, key: String, count: usize },
    #[error("token {token:?} offers neither CKM_AES_KEY_WRAP_PAD nor CKM_AES_KEY_WRAP for wrapping")]
    NoMechanism { token: String },
    #[error("unknown key-wrap mechanism {mechanism:?} (expected \"aes-key-wrap-pad\" or \"aes-key-wrap\")")]
    UnknownMechanism { mechanism: String },
    #[error("wrapping the data key with {key:?} in token {token:?} ({mechanism}) failed: {}", why(.source))]
    Wrap { token: String, key: String, mechanism: &'static str, source: CkError },
    #[error(
        "unwrapping the data key with {key:?} in token {token:?} ({mechanism}) failed: wrong key or corrupt wrapped key ({})",
        why(.source)
    )]
    Unwrap { token: String, key: String, mechanism: &'static str, source: CkError },
    #[error("a wrapped data key is {WRAPPED_LEN} bytes, not {actual}")]
    WrappedLength { actual: usize },
    #[error("the unwrapped data key is {actual} bytes, not {KEY_LEN}")]
    KeyLength { actual: usize },
    #[error("cannot generate AES key {key:?} in token {token:?}: {}", why(.source))]
    GenerateKek { token: String, key: String, source: CkError },
}

/// A short form of a cryptoki error: `C_WrapKey: KeyFunctionNotPermitted`.
fn why(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => format!("C_{function:?}: {rv:?}"),
        other => other.to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WrapMech {
    Pad,
    Plain,
}

impl WrapMech {
    /// In order of preference.
    const ALL: [WrapMech; 2] = [WrapMech::Pad, WrapMech::Plain];

    fn name(self) -> &'static str {
        match self {
            WrapMech::Pad => "aes-key-wrap-pad",
            WrapMech::Plain => "aes-key-wrap",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == s)
    }

    fn mechanism(self) -> Mechanism<'static> {
        match self {
            WrapMech::Pad => Mechanism::AesKeyWrapPad,
            WrapMech::Plain => Mechanism::AesKeyWrap,
        }
    }
}

/// Wraps `data_key` (exactly 32 bytes) with the token's AES key using CKM_AES_KEY_WRAP_PAD (RFC 5649) if the token
/// supports it, else CKM_AES_KEY_WRAP (RFC 3394). Returns (mechanism name "aes-key-wrap-pad" or "aes-key-wrap",
/// wrapped bytes).
pub fn wrap(cfg: &Pkcs11Config, data_key: &[u8; 32]) -> Result<(String, Vec<u8>), Pkcs11Error> {
    with_token(cfg, |t| {
        let kek = t.kek()?;
        let mech = t.pick_mechanism()?;
        let mut template = data_key_template(Some(data_key));
        let created = t.session.create_object(&template);
        scrub(&mut template);
        let key = created.map_err(|e| t.err("create the data key's session object", e))?;
        let wrapped = t.session.wrap_key(&mech.mechanism(), kek, key);
        t.destroy(key);
        let wrapped = wrapped.map_err(|source| Pkcs11Error::Wrap {
            token: cfg.token_label.clone(),
            key: cfg.key_label.clone(),
            mechanism: mech.name(),
            source,
        })?;
        if wrapped.len() != WRAPPED_LEN {
            return Err(Pkcs11Error::WrappedLength { actual: wrapped.len() });
        }
        Ok((mech.name().to_string(), wrapped))
    })
}

/// Unwraps bytes produced by `wrap` with the named mechanism, returning the 32-byte data key.
pub fn unwrap(cfg: &Pkcs11Config, mechanism: &str, wrapped: &[u8]) -> Result<Zeroizing<[u8; 32]>, Pkcs11Error> {
    let mech =
        WrapMech::parse(mechanism).ok_or_else(|| Pkcs11Error::UnknownMechanism { mechanism: mechanism.to_string() })?;
    if wrapped.len() != WRAPPED_LEN {
        return Err(Pkcs11Error::WrappedLength { actual: wrapped.len() });
    }
    with_token(cfg, |t| {
        let kek = t.kek()?;
        let template = data_key_template(None);
        let key =
            t.session.unwrap_key(&mech.mechanism(), kek, wrapped, &template).map_err(|source| Pkcs11Error::Unwrap {
                token: cfg.token_label.clone(),
                key: cfg.key_label.clone(),
                mechanism: mech.name(),
                source,
            })?;
        let read = t.session.get_attributes(key, &[AttributeType::Value]);
        t.destroy(key);
        let value: Zeroizing<Vec<u8>> = read
            .map_err(|e| t.err("read the unwrapped data key", e))?
            .into_iter()
            .find_map(|a| match a {
                Attribute::Value(v) => Some(Zeroizing::new(v)),
                _ => None,
            })
            .unwrap_or_default();
        if value.len() != KEY_LEN {
            return Err(Pkcs11Error::KeyLength { actual: value.len() });
        }
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        out.copy_from_slice(&value);
        Ok(out)
    })
}

/// For setting up a token in tests and by operators: generates an AES-256 key-encryption key labelled `cfg.key_label`
/// in the token (CKA_TOKEN true, CKA_SENSITIVE true, CKA_EXTRACTABLE false, CKA_WRAP true, CKA_UNWRAP true,
/// CKA_ENCRYPT/DECRYPT true), unless one with that label exists already. Returns true if it created one.
pub fn ensure_kek(cfg: &Pkcs11Config) -> Result<bool, Pkcs11Error> {
    with_token(cfg, |t| {
        if !t.keks()?.is_empty() {
            return Ok(false);
        }
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(Ulong::new(32)),
            Attribute::Label(cfg.key_label.as_bytes().to_vec()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Wrap(true),
            Attribute::Unwrap(true),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
        ];
        t.session.generate_key(&Mechanism::AesKeyGen, &template).map_err(|source| Pkcs11Error::GenerateKek {
            token: cfg.token_label.clone(),
            key: cfg.key_label.clone(),
            source,
        })?;
        Ok(true)
    })
}

/// A logged-in read-write session on the configured token.
struct Ctx<'a> {
    cfg: &'a Pkcs11Config,
    pkcs11: &'a Pkcs11,
    slot: Slot,
    session: Session,
}

impl Ctx<'_> {
    fn err(&self, op: &'static str, source: CkError) -> Pkcs11Error {
        Pkcs11Error::Token { token: self.cfg.token_label.clone(), op, source }
    }

    fn keks(&self) -> Result<Vec<ObjectHandle>, Pkcs11Error> {
        let label = Attribute::Label(self.cfg.key_label.as_bytes().to_vec());
        let template = [Attribute::Class(ObjectClass::SECRET_KEY), Attribute::KeyType(KeyType::AES), label];
        self.session.find_objects(&template).map_err(|e| self.err("search for the key-encryption key", e))
    }

    fn kek(&self) -> Result<ObjectHandle, Pkcs11Error> {
        let (token, key) = (self.cfg.token_label.clone(), self.cfg.key_label.clone());
        match self.keks()?.as_slice() {
            [one] => Ok(*one),
            [] => Err(Pkcs11Error::NoKey { token, key }),
            many => Err(Pkcs11Error::AmbiguousKey { token, key, count: many.len() }),
        }
    }

    fn pick_mechanism(&self) -> Result<WrapMech, Pkcs11Error> {
        let offered = self.pkcs11.get_mechanism_list(self.slot).map_err(|e| self.err("list mechanisms", e))?;
        for m in WrapMech::ALL {
            let ty: MechanismType = m.mechanism().mechanism_type();
            if offered.contains(&ty)
                && self.pkcs11.get_mechanism_info(self.slot, ty).is_ok_and(|i| i.wrap() && i.unwrap())
            {
                return Ok(m);
            }
        }
        Err(Pkcs11Error::NoMechanism { token: self.cfg.token_label.clone() })
    }

    /// Best effort: session objects also vanish when the session closes.
    fn destroy(&self, object: ObjectHandle) {
        if let Err(e) = self.session.destroy_object(object) {
            tracing::warn!(token = %self.cfg.token_label, error = %why(&e), "cannot destroy a data key's session object");
        }
    }
}

fn with_token<T>(cfg: &Pkcs11Config, f: impl FnOnce(&Ctx<'_>) -> Result<T, Pkcs11Error>) -> Result<T, Pkcs11Error> {
    let pin = read_pin(&cfg.pin_file)?;
    let _serial = TOKEN_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let pkcs11 = Pkcs11::new(&cfg.module).map_err(|source| Pkcs11Error::Load { module: cfg.module.clone(), source })?;
    let owned = match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => true,
        // Another user in this process initialized the module: share it and leave it initialized.
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => false,
        Err(source) => return Err(Pkcs11Error::Init { module: cfg.module.clone(), source }),
    };
    // The session (inside the context) is closed before C_Finalize.
    let result = open(cfg, &pkcs11, &pin).and_then(|ctx| f(&ctx));
    if owned && let Err(e) = pkcs11.finalize() {
        tracing::warn!(module = %cfg.module.display(), error = %why(&e), "C_Finalize failed");
    }
    result
}

fn open<'a>(cfg: &'a Pkcs11Config, pkcs11: &'a Pkcs11, pin: &AuthPin) -> Result<Ctx<'a>, Pkcs11Error> {
    let token_err =
        |op: &'static str, source: CkError| Pkcs11Error::Token { token: cfg.token_label.clone(), op, source };
    let mut found = Vec::new();
    let mut slot = None;
    for s in pkcs11.get_slots_with_token().map_err(|e| token_err("list the module's slots", e))? {
        let info = pkcs11.get_token_info(s).map_err(|e| token_err("read token info", e))?;
        let label = info.label().trim_end_matches([' ', '\0']);
        if label == cfg.token_label {
            slot = Some(s);
            break;
        }
        found.push(label.to_string());
    }
    let Some(slot) = slot else {
        return Err(Pkcs11Error::NoToken { module: cfg.module.clone(), token: cfg.token_label.clone(), found });
    };
    let session = pkcs11.open_rw_session(slot).map_err(|e| token_err("open a read-write session", e))?;
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
            return Err(Pkcs11Error::BadPin { token: cfg.token_label.clone(), path: cfg.pin_file.clone() });
        }
        Err(source) => return Err(Pkcs11Error::Login { token: cfg.token_label.clone(), source }),
    }
    Ok(Ctx { cfg, pkcs11, slot, session })
}

fn read_pin(path: &Path) -> Result<AuthPin, Pkcs11Error> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|source| Pkcs11Error::PinFile { path: path.to_path_buf(), source })?,
    );
    match pin_line(&text) {
        Some(pin) => Ok(AuthPin::from(pin)),
        None => Err(Pkcs11Error::EmptyPin { path: path.to_path_buf() }),
    }
}

/// The PIN: the first line, without its line ending.
fn pin_line(text: &str) -> Option<&str> {
    text.lines().next().filter(|l| !l.is_empty())
}

/// A session object for the data key that the token may hand back in the clear.
fn data_key_template(value: Option<&[u8; KEY_LEN]>) -> Vec<Attribute> {
    let mut template = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
    ];
    template.extend(value.map(|v| Attribute::Value(v.to_vec())));
    template
}

fn scrub(template: &mut [Attribute]) {
    for attr in template {
        if let Attribute::Value(v) = attr {
            v.zeroize();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanism_names_round_trip() {
        for m in WrapMech::ALL {
            assert_eq!(WrapMech::parse(m.name()), Some(m));
        }
        assert_eq!(WrapMech::parse("aes-gcm"), None);
        assert_eq!(WrapMech::Pad.mechanism().mechanism_type(), MechanismType::AES_KEY_WRAP_PAD);
        assert_eq!(WrapMech::Plain.mechanism().mechanism_type(), MechanismType::AES_KEY_WRAP);
    }

    #[test]
    fn pin_is_the_first_line() {
        assert_eq!(pin_line("1234\n"), Some("1234"));
        assert_eq!(pin_line("1234\r\nrest\n"), Some("1234"));
        assert_eq!(pin_line("1234"), Some("1234"));
        assert_eq!(pin_line("\n1234\n"), None);
        assert_eq!(pin_line(""), None);
    }

    #[test]
    fn errors_name_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Pkcs11Config {
            module: dir.path().join("no-such-module.so"),
            token_label: "t".into(),
            pin_file: dir.path().join("pin"),
            key_label: "k".into(),
        };
        let err = wrap(&cfg, &[7; 32]).unwrap_err();
        assert!(matches!(err, Pkcs11Error::PinFile { .. }), "{err}");
        std::fs::write(&cfg.pin_file, "1234\n").unwrap();
        let err = unwrap(&cfg, "aes-key-wrap", &[0; 40]).unwrap_err();
        assert!(matches!(err, Pkcs11Error::Load { .. }) && err.to_string().contains("no-such-module.so"), "{err}");
        let err = unwrap(&cfg, "rot13", &[0; 40]).unwrap_err();
        assert!(matches!(err, Pkcs11Error::UnknownMechanism { .. }), "{err}");
        let err = unwrap(&cfg, "aes-key-wrap-pad", &[0; 39]).unwrap_err();
        assert!(matches!(err, Pkcs11Error::WrappedLength { actual: 39 }), "{err}");
    }
}
