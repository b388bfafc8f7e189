//! `shardgate keys`: key envelopes of encrypted releases (show, rewrap,
//! register with a gateway, export, destroy) and PKCS#11 set-up.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use shardgate::crypt::DataKey;
use shardgate::crypt::envelope::{self, KeyEnvelope, Unwrappers, Wrappers};
use shardgate::crypt::pkcs11::{self, Pkcs11Config};
use shardgate::lifecycle::proto;

use super::ConfigError;
use super::grpc_client::{authed, status};
use super::release::{Admin, client, split_release};

/// Who a new data key is wrapped to.
#[derive(Debug, clap::Args)]
pub struct WrapArgs {
    /// Wrap the data key to this age recipient (age1…; repeatable).
    #[arg(long = "recipient", value_name = "AGE_RECIPIENT")]
    pub recipients: Vec<String>,
    /// Wrap to every recipient in this file (one per line, # comments; repeatable).
    #[arg(long = "recipients-file", value_name = "FILE")]
    pub recipients_files: Vec<PathBuf>,
    /// Also wrap with the AES key of a PKCS#11 token, described by a TOML file
    /// (module, token_label, pin_file, key_label).
    #[arg(long, value_name = "FILE")]
    pub pkcs11: Option<PathBuf>,
}

impl WrapArgs {
    pub fn wrappers(&self) -> anyhow::Result<Wrappers> {
        let mut age = Vec::new();
        for r in &self.recipients {
            age.push(envelope::parse_recipient(r)?);
        }
        for f in &self.recipients_files {
            age.extend(envelope::read_recipients(f)?);
        }
        let pkcs11 = self.pkcs11.as_deref().map(load_pkcs11).transpose()?;
        Ok(Wrappers { age, pkcs11 })
    }
}

/// What a key holder opens an envelope with.
#[derive(Debug, clap::Args)]
pub struct UnwrapArgs {
    /// An age identity file (as age-keygen writes it; repeatable).
    #[arg(long = "identity", short = 'i', value_name = "FILE")]
    pub identities: Vec<PathBuf>,
    /// A PKCS#11 token's key (TOML: module, token_label, pin_file, key_label).
    #[arg(long = "pkcs11-unwrap", value_name = "FILE")]
    pub pkcs11_unwrap: Option<PathBuf>,
}

impl UnwrapArgs {
    pub fn unwrappers(&self) -> anyhow::Result<Unwrappers> {
        let mut age = Vec::new();
        for f in &self.identities {
            age.extend(envelope::read_identities(f)?);
        }
        let pkcs11 = self.pkcs11_unwrap.as_deref().map(load_pkcs11).transpose()?;
        Ok(Unwrappers { age, pkcs11 })
    }
}

pub fn load_pkcs11(path: &std::path::Path) -> anyhow::Result<Pkcs11Config> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    Ok(toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.message())))?)
}

pub fn read_envelope(path: &std::path::Path) -> anyhow::Result<KeyEnvelope> {
    let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    KeyEnvelope::parse(&bytes).with_context(|| format!("{}", path.display()))
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Print what a key envelope holds (never a key).
    Show { envelope: PathBuf },
    /// Open an envelope and wrap the same data key again to a new set of
    /// recipients: leaving one out revokes it once the new envelope is registered.
    Rewrap {
        envelope: PathBuf,
        #[command(flatten)]
        open: UnwrapArgs,
        #[command(flatten)]
        to: WrapArgs,
        /// Where to write the new envelope.
        #[arg(long)]
        out: PathBuf,
    },
    /// Make an envelope from an age file holding the 32-byte data key (as `age -e -a` writes it).
    FromAge {
        /// The age file (armored or binary).
        age_file: PathBuf,
        /// NAME@VERSION of the release.
        release: String,
        /// The key id from the release's manifest (k1-…).
        #[arg(long)]
        key_id: String,
        /// The scheme from the manifest.
        #[arg(long, default_value = "aes-256-gcm/chunked-v1")]
        scheme: String,
        /// The recipients it was wrapped to, to record in the envelope (optional).
        #[arg(long = "recipient")]
        recipients: Vec<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Register (or replace) an envelope with a gateway; it says whether it can decrypt the release.
    Register {
        envelope: PathBuf,
        #[command(flatten)]
        admin: Admin,
    },
    /// Print the envelope a gateway holds for NAME@VERSION.
    Export {
        release: String,
        #[command(flatten)]
        admin: Admin,
    },
    /// Destroy a gateway's envelope for NAME@VERSION: it stops decrypting the release at once.
    Destroy {
        release: String,
        #[command(flatten)]
        admin: Admin,
    },
    /// Create the AES-256 key-encryption key in a PKCS#11 token (unless it exists).
    Pkcs11Init {
        /// TOML: module, token_label, pin_file, key_label.
        #[arg(long)]
        pkcs11: PathBuf,
    },
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    match a.action {
        Action::Show { envelope } => {
            let e = read_envelope(&envelope)?;
            println!("release     {}", e.release());
            println!("key id      {}", e.key_id);
            println!("scheme      {}", e.scheme);
            if e.age.is_some() {
                let to =
                    if e.age_recipients.is_empty() { "(not recorded)".into() } else { e.age_recipients.join(", ") };
                println!("age         wrapped to {to}");
            }
            for w in &e.pkcs11 {
                println!("pkcs11      token {:?}, key {:?}, {}", w.token_label, w.key_label, w.mechanism);
            }
            Ok(ExitCode::SUCCESS)
        }
        Action::Rewrap { envelope, open, to, out } => {
            let e = read_envelope(&envelope)?;
            let key = e.open(&open.unwrappers()?)?;
            let scheme = shardgate::crypt::Scheme::parse(&e.scheme)?;
            let new = KeyEnvelope::seal(&e.name, &e.version, scheme, &key, &to.wrappers()?)?;
            std::fs::write(&out, new.to_json()).with_context(|| format!("{}", out.display()))?;
            eprintln!("wrote {} for {} (key {})", out.display(), new.release(), new.key_id);
            Ok(ExitCode::SUCCESS)
        }
        Action::FromAge { age_file, release, key_id, scheme, recipients, out } => {
            let (name, version) = split_release(&release)?;
            let text = std::fs::read_to_string(&age_file).with_context(|| format!("{}", age_file.display()))?;
            let env = KeyEnvelope {
                schema: envelope::SCHEMA.into(),
                name,
                version: shardgate::release::manifest::parse_version(&version).map_err(ConfigError)?,
                key_id,
                scheme: shardgate::crypt::Scheme::parse_short(&scheme)?.name().into(),
                age: Some(text),
                age_recipients: recipients,
                pkcs11: Vec::new(),
            };
            env.validate()?;
            std::fs::write(&out, env.to_json()).with_context(|| format!("{}", out.display()))?;
            eprintln!("wrote {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Action::Pkcs11Init { pkcs11: path } => {
            let cfg = load_pkcs11(&path)?;
            let created = pkcs11::ensure_kek(&cfg)?;
            eprintln!(
                "{} AES-256 key {:?} in token {:?}",
                if created { "created" } else { "found" },
                cfg.key_label,
                cfg.token_label
            );
            Ok(ExitCode::SUCCESS)
        }
        other => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(remote(other))
        }
    }
}

async fn remote(action: Action) -> anyhow::Result<ExitCode> {
    let print = |s: proto::KeyEnvelopeStatus| {
        if s.usable {
            eprintln!("{}@{}: key {} usable; the gateway decrypts the release", s.name, s.version, s.key_id);
        } else {
            eprintln!("{}@{}: key {} not usable here: {}", s.name, s.version, s.key_id, s.reason);
        }
    };
    match action {
        Action::Register { envelope, admin } => {
            let bytes = std::fs::read(&envelope).with_context(|| format!("{}", envelope.display()))?;
            let req = proto::PutKeyEnvelopeRequest { envelope: bytes };
            let s = client(&admin).await?.put_key_envelope(authed(req, &admin.token)?).await.map_err(status)?;
            print(s.into_inner());
            Ok(ExitCode::SUCCESS)
        }
        Action::Export { release, admin } => {
            let (name, version) = split_release(&release)?;
            let req = proto::KeyEnvelopeRef { name, version };
            let r = client(&admin).await?.get_key_envelope(authed(req, &admin.token)?).await.map_err(status)?;
            use std::io::Write;
            std::io::stdout().write_all(&r.into_inner().envelope)?;
            Ok(ExitCode::SUCCESS)
        }
        Action::Destroy { release, admin } => {
            let (name, version) = split_release(&release)?;
            let req = proto::KeyEnvelopeRef { name, version };
            let s = client(&admin).await?.delete_key_envelope(authed(req, &admin.token)?).await.map_err(status)?;
            print(s.into_inner());
            Ok(ExitCode::SUCCESS)
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// `shardgate decrypt`: one file of an encrypted release, from its stored ciphertext.
#[derive(Debug, clap::Args)]
pub struct DecryptArgs {
    /// Release directory or manifest.json (signed; its signature is checked).
    release: PathBuf,
    /// The file's path in the release.
    #[arg(long)]
    path: String,
    /// The ciphertext (default: the release directory's copy of the file).
    #[arg(long = "in")]
    input: Option<PathBuf>,
    /// Where to write the plaintext (written only once it checks out).
    #[arg(long)]
    out: PathBuf,
    /// The release's key envelope.
    #[arg(long, required_unless_present = "data_key_file")]
    envelope: Option<PathBuf>,
    /// Or the raw 32-byte data key, as `age -d` prints it from the envelope's `age` member.
    #[arg(long, conflicts_with = "envelope")]
    data_key_file: Option<PathBuf>,
    #[command(flatten)]
    open: UnwrapArgs,
}

pub fn decrypt(a: DecryptArgs) -> anyhow::Result<ExitCode> {
    let dir = shardgate::release::layout::ReleaseDir::from_arg(&a.release);
    let bytes = std::fs::read(dir.manifest()).with_context(|| format!("{}", dir.manifest().display()))?;
    let signed = shardgate::release::manifest::SignedManifest::parse(&bytes)
        .with_context(|| format!("{}", dir.manifest().display()))?;
    let key = match (&a.envelope, &a.data_key_file) {
        (Some(e), _) => read_envelope(e)?.open(&a.open.unwrappers()?)?,
        (None, Some(f)) => {
            let raw = zeroize::Zeroizing::new(std::fs::read(f).with_context(|| format!("{}", f.display()))?);
            DataKey::from_bytes(&raw)
                .ok_or_else(|| ConfigError(format!("{}: {} bytes, not a 32-byte data key", f.display(), raw.len())))?
        }
        (None, None) => return Err(ConfigError("give --envelope or --data-key-file".into()).into()),
    };
    let input = a.input.clone().unwrap_or_else(|| dir.file(&a.path));
    let digest = shardgate::crypt::file::decrypt_file(
        &signed.manifest,
        &a.path,
        &key,
        &input,
        &a.out,
        &crate::progress::Bar::new(),
    )?;
    eprintln!(
        "decrypted {} to {}; ciphertext and plaintext check out against the signed manifest",
        a.path,
        a.out.display()
    );
    println!("{digest}");
    Ok(ExitCode::SUCCESS)
}

/// `shardgate approve`: add a sign-off to a packed release.
#[derive(Debug, clap::Args)]
pub struct ApproveArgs {
    /// Release directory (before publishing: the release id changes).
    release: PathBuf,
    /// The approver's ed25519 key (from `shardgate keygen`).
    #[arg(long)]
    key: PathBuf,
    /// The role signed for, as the policy's [roles] names it (security, legal, …).
    #[arg(long)]
    role: String,
    /// Check the release against this policy afterwards and say what is still missing.
    #[arg(long, env = "SHARDGATE_POLICY")]
    policy: Option<PathBuf>,
}

pub fn approve(a: ApproveArgs) -> anyhow::Result<ExitCode> {
    let dir = shardgate::release::layout::ReleaseDir::from_arg(&a.release);
    if dir.placement().exists() {
        return Err(ConfigError(format!(
            "{} is already published (placement.json exists); a sign-off changes the release id, so approve before publishing",
            dir.root().display()
        ))
        .into());
    }
    let path = dir.manifest();
    let bytes = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
    let signed =
        shardgate::release::manifest::SignedManifest::parse(&bytes).with_context(|| format!("{}", path.display()))?;
    let key = shardgate::release::keys::PublisherKey::load(&a.key)?;
    let mut m = signed.manifest;
    m.approve(&key, &a.role, jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())?);
    let next = m.to_signed()?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, &next.bytes).with_context(|| format!("{}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("{}", path.display()))?;
    eprintln!("{} approved {}@{} as {}; release id is now {}", key.public(), m.name, m.version, a.role, next.id);
    if let Some(p) = &a.policy {
        let policy = shardgate::policy::Policy::load(p)?;
        match policy.check(&next.manifest) {
            Ok(()) => eprintln!("the release meets its class's rules"),
            Err(e) => eprintln!("still missing: {e}"),
        }
    }
    println!("{}", next.id);
    Ok(ExitCode::SUCCESS)
}
