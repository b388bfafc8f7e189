use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use shardgate::crypt::envelope::KeyEnvelope;
use shardgate::release::drift::split_meta;
use shardgate::release::envelope::Envelope;
use shardgate::release::keys::PublisherKey;
use shardgate::release::layout::ReleaseDir;
use shardgate::release::manifest::parse_version;
use shardgate::release::pack::{DriftGate, PackEncryption, PackError, PackFormat, PackOptions, pack, parent_ref};

use super::{ConfigError, parse_size};
use crate::progress::Bar;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// Group files by sample key into tar shards readable by the webdataset package.
    Webdataset,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to pack.
    dir: PathBuf,
    /// Dataset name (a-z 0-9 . _ -).
    #[arg(long)]
    name: String,
    /// Semantic version, such as 1.4.2.
    #[arg(long)]
    version: String,
    /// Publisher private key (from `shardgate keygen`).
    #[arg(long)]
    key: PathBuf,
    /// Output release directory (absent or empty).
    #[arg(long)]
    out: PathBuf,
    /// Envelope metadata (license, modality, ...), TOML.
    #[arg(long)]
    meta: Option<PathBuf>,
    /// The parent release (its directory or manifest.json). Its files must be
    /// local: the drift gate compares the two releases.
    #[arg(long)]
    parent: Option<PathBuf>,
    /// Publish even though drift from the parent is past the meta file's
    /// `[drift]` thresholds; the reason, the approver and the figures go into
    /// the manifest's envelope.
    #[arg(long, value_name = "REASON", requires = "parent")]
    approve_drift: Option<String>,
    /// Chunk size, a power of two from 1KiB to 64MiB.
    #[arg(long, default_value = "256KiB", value_parser = parse_size)]
    chunk_size: u64,
    /// Repackage the files (default: every file as it is).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Largest tar shard with --format webdataset.
    #[arg(long, default_value = "512MiB", value_parser = parse_size)]
    shard_size: u64,
    #[command(flatten)]
    keys: super::keys::WrapArgs,
    /// Encrypt the files whose release path matches (a glob; `*` also matches `/`; repeatable).
    /// The policy's rules for the release's class add to these.
    #[arg(long = "encrypt", value_name = "GLOB")]
    encrypt: Vec<String>,
    /// Encryption scheme for encrypted files.
    #[arg(long, default_value = "aes-256-gcm", value_parser = ["aes-256-gcm", "xchacha20-poly1305"])]
    scheme: String,
    /// Policy file: the release's compliance_class must be in it, and its rules are applied.
    #[arg(long, env = "SHARDGATE_POLICY")]
    policy: Option<PathBuf>,
    /// Where to write the key envelope of an encrypted release (default: OUT.keys.json, beside OUT).
    /// It is never part of the release.
    #[arg(long)]
    keys_out: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let version = parse_version(&a.version).map_err(ConfigError)?;
    let key = PublisherKey::load(&a.key)?;
    let (envelope, thresholds) = match &a.meta {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?;
            let (rest, drift) = split_meta(&text).map_err(|e| ConfigError(format!("{}: {e}", p.display())))?;
            (Envelope::from_toml(&rest).with_context(|| format!("{}", p.display()))?, drift)
        }
        None => (Envelope::default(), None),
    };
    let parent_manifest = a.parent.as_deref().map(|p| ReleaseDir::from_arg(p).manifest());
    let parent = parent_manifest.as_deref().map(parent_ref).transpose()?;
    let drift = a.parent.as_ref().map(|p| DriftGate {
        parent_dir: p.clone(),
        thresholds: thresholds.unwrap_or_default(),
        approval: a.approve_drift.clone(),
    });
    let created_at = created_at()?;
    let format = match a.format {
        None => PackFormat::Files,
        Some(Format::Webdataset) => PackFormat::WebDataset { shard_size: a.shard_size },
    };
    let policy =
        a.policy.as_deref().map(shardgate::policy::Policy::load).transpose().map_err(|e| ConfigError(e.to_string()))?;
    let globs = a
        .encrypt
        .iter()
        .map(|g| glob::Pattern::new(g).map_err(|e| ConfigError(format!("--encrypt {g:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let wrappers = a.keys.wrappers()?;
    if !globs.is_empty() && wrappers.is_empty() {
        return Err(ConfigError(
            "--encrypt needs someone to wrap the data key to: --recipient, --recipients-file or --pkcs11".into(),
        )
        .into());
    }
    let scheme = shardgate::crypt::Scheme::parse_short(&a.scheme).map_err(|e| ConfigError(e.to_string()))?;
    // The data key is wrapped before a byte is packed, so a provider that fails costs nothing.
    let (encryption, envelope_file) = if wrappers.is_empty() {
        (None, None)
    } else {
        let key = shardgate::crypt::DataKey::generate().map_err(ConfigError)?;
        let env = KeyEnvelope::seal(&a.name, &version, scheme, &key, &wrappers)?;
        // `out/` and `out` name the same release; the envelope goes beside it.
        let out: PathBuf = a.out.components().collect();
        let path = a.keys_out.clone().unwrap_or_else(|| {
            let mut p = out.clone().into_os_string();
            p.push(".keys.json");
            PathBuf::from(p)
        });
        if std::path::absolute(&path)?.starts_with(std::path::absolute(&out)?) {
            return Err(ConfigError(format!(
                "--keys-out {} is inside the release; keep the key envelope outside it",
                path.display()
            ))
            .into());
        }
        if path.exists() {
            return Err(ConfigError(format!(
                "{} exists: it may hold another release's key; move it away or give --keys-out",
                path.display()
            ))
            .into());
        }
        // Written (new, never over another file) before the release, so a release is never
        // left encrypted under a key nobody holds; removed again if packing fails.
        let pending = EnvelopeFile::create(&path, &env.to_json())?;
        (Some(PackEncryption { key, scheme, globs }), Some((env, pending)))
    };
    let opts = PackOptions {
        dir: a.dir,
        name: a.name,
        version,
        out: a.out.clone(),
        envelope,
        parent,
        chunk_size: a.chunk_size,
        format,
        created_at,
        drift,
        encryption,
        policy,
    };
    let outcome = match pack(&opts, &key, &Bar::new()) {
        Ok(o) => o,
        Err(PackError::Drift { breaches, report }) => {
            eprint!("{}", report.render());
            anyhow::bail!(PackError::Drift { breaches, report });
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(report) = &outcome.drift {
        eprint!("{}", report.render());
        if !outcome.breaches.is_empty() {
            eprintln!("drift past the thresholds approved: {}", outcome.breaches.join("; "));
        }
    }
    let m = &outcome.manifest.manifest;
    let encrypted = m.files.iter().filter(|f| f.encryption.is_some()).count();
    match envelope_file {
        Some((env, pending)) if encrypted > 0 => {
            let path = pending.keep()?;
            eprintln!(
                "encrypted {encrypted} of {} files with data key {}; key envelope: {}",
                m.files.len(),
                env.key_id,
                path.display()
            );
        }
        Some(_) => {
            eprintln!("no file matched --encrypt or the policy's rules; nothing encrypted, no key envelope written")
        }
        None => {}
    }
    if outcome.unchanged {
        eprintln!("{} already holds this exact release; nothing written", a.out.display());
    }
    eprintln!(
        "packed {}@{}: {} files, {} bytes into {}",
        m.name,
        m.version,
        m.files.len(),
        m.total_bytes,
        a.out.display()
    );
    println!("{}", outcome.manifest.id);
    Ok(ExitCode::SUCCESS)
}

/// A key envelope written beside the release before packing: under a
/// temporary name until the pack succeeds, then renamed (never over a file).
struct EnvelopeFile {
    tmp: PathBuf,
    path: PathBuf,
    kept: bool,
}

impl EnvelopeFile {
    fn create(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<Self> {
        use std::io::Write;
        let mut tmp = path.to_path_buf().into_os_string();
        tmp.push(".partial");
        let tmp = PathBuf::from(tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("{}", tmp.display()))?;
        f.write_all(bytes).and_then(|()| f.sync_all()).with_context(|| format!("{}", tmp.display()))?;
        Ok(Self { tmp, path: path.to_path_buf(), kept: false })
    }

    /// Puts the envelope in place; refuses to replace a file that appeared meanwhile.
    fn keep(mut self) -> anyhow::Result<PathBuf> {
        // The release is packed: this file is now the only copy of its key. Never removed.
        self.kept = true;
        std::fs::hard_link(&self.tmp, &self.path).with_context(|| {
            format!("{}: the release was packed; its key envelope is at {}", self.path.display(), self.tmp.display())
        })?;
        let _ = std::fs::remove_file(&self.tmp);
        self.kept = true;
        Ok(self.path.clone())
    }
}

impl Drop for EnvelopeFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// `SOURCE_DATE_EPOCH` makes packs reproducible; otherwise now, to the second.
fn created_at() -> anyhow::Result<jiff::Timestamp> {
    let secs = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => {
            v.trim().parse::<i64>().map_err(|_| ConfigError(format!("SOURCE_DATE_EPOCH={v:?} is not whole seconds")))?
        }
        Err(_) => jiff::Timestamp::now().as_second(),
    };
    Ok(jiff::Timestamp::from_second(secs).map_err(|e| ConfigError(format!("SOURCE_DATE_EPOCH: {e}")))?)
}
