//! `pack`: turns a directory into a signed release, streaming every byte once
//! (read, hash chunk by chunk, write) so memory stays bounded whatever the size.
//!
//! The release is built in a staging directory beside `OUT` and renamed into
//! place at the end, manifest last, so a crash never leaves a half release
//! that looks whole, and nothing in the source directory is ever touched.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::chunk::{ChunkError, ChunkHasher, FileDigest, check_chunk_size};
use super::drift::{DriftError, Profile, Report, Thresholds};
use super::envelope::Envelope;
use super::keys::PublisherKey;
use super::layout::{FILES_DIR, ReleaseDir, TABLES_DIR};
use super::manifest::{Blake3, FileEntry, Manifest, ParentRef, Records, SignedManifest, check_name, check_path};
use crate::progress::Progress;

const IO_BUF: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{0}: no such directory")]
    NoSuchDir(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}: symbolic links are not packed; copy the target in or remove the link")]
    Symlink(PathBuf),
    #[error("{0}: not a regular file")]
    NotAFile(PathBuf),
    #[error("{0}: file name is not UTF-8")]
    NotUtf8(PathBuf),
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error(
        "{out}: already holds release {name}@{version} (id {existing}); refusing to replace it with a different release{new}"
    )]
    OutHoldsRelease { out: PathBuf, name: String, version: String, existing: String, new: String },
    #[error("{0}: exists and is not an empty directory or a release")]
    OutNotEmpty(PathBuf),
    #[error("{0}: the input directory is empty")]
    Empty(PathBuf),
    #[error(
        "drift from the parent is past the thresholds: {}; rerun with --approve-drift \"REASON\" to publish anyway",
        breaches.join("; ")
    )]
    Drift { breaches: Vec<String>, report: Box<Report> },
    #[error(transparent)]
    DriftInput(#[from] DriftError),
    #[error("{0}: cannot tell the WebDataset sample key (members are named KEY.EXT)")]
    SampleKey(String),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PackError + '_ {
    move |source| PackError::Io { path: path.to_path_buf(), source }
}

/// How input files become release files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackFormat {
    /// Every file as it is.
    Files,
    /// Files grouped by sample key into tar shards of at most `shard_size` bytes.
    WebDataset { shard_size: u64 },
}

#[derive(Debug)]
pub struct PackOptions {
    pub dir: PathBuf,
    pub name: String,
    pub version: semver::Version,
    pub out: PathBuf,
    pub envelope: Envelope,
    pub parent: Option<ParentRef>,
    pub chunk_size: u64,
    pub format: PackFormat,
    pub created_at: jiff::Timestamp,
    /// Compare with the parent and refuse drift past the thresholds.
    pub drift: Option<DriftGate>,
    /// The data key and which files to encrypt with it.
    pub encryption: Option<PackEncryption>,
    /// The policy the release must meet (its class's encryption rules are applied).
    pub policy: Option<crate::policy::Policy>,
}

/// What `pack` encrypts, and with which key.
#[derive(Debug)]
pub struct PackEncryption {
    pub key: crate::crypt::DataKey,
    pub scheme: crate::crypt::Scheme,
    /// Release paths (globs; `*` also matches `/`) to encrypt, besides what the policy demands.
    pub globs: Vec<glob::Pattern>,
}

/// Which release paths are encrypted, and why.
struct EncryptPlan<'a> {
    enc: Option<&'a PackEncryption>,
    policy: Option<(&'a crate::policy::Policy, &'a str)>,
    name: &'a str,
    version: String,
    chunk_size: u64,
    /// Encrypt every file written (a WebDataset pack where any member must be).
    all: bool,
}

impl EncryptPlan<'_> {
    /// Whether `path` is encrypted; a path the policy says must be
    /// encrypted, with no key to do it, is refused.
    fn wants(&self, path: &str) -> Result<bool, PackError> {
        if self.all {
            return Ok(true);
        }
        let by_rule = self.policy.and_then(|(p, class)| p.must_encrypt(class, path));
        let by_flag = self.enc.is_some_and(|e| e.globs.iter().any(|g| g.matches(path)));
        if by_rule.is_none() && !by_flag {
            return Ok(false);
        }
        if self.enc.is_none() {
            return Err(crate::policy::PolicyError::Breach {
                release: format!("{}@{}", self.name, self.version),
                rule: by_rule.unwrap_or_default(),
                why: format!("{path} must be encrypted; give --recipient (age) or --pkcs11 to wrap a data key"),
            }
            .into());
        }
        Ok(true)
    }

    /// The encryptor for `path`, or `None` to store it as it is.
    fn encryptor(&self, path: &str) -> Result<Option<Encrypting>, PackError> {
        if !self.wants(path)? {
            return Ok(None);
        }
        let Some(enc) = self.enc else { return Ok(None) };
        let mut salt = [0u8; 32];
        getrandom::fill(&mut salt).map_err(|e| PackError::BadInput(format!("no randomness for a salt: {e}")))?;
        let at = crate::crypt::FileBinding {
            name: self.name,
            version: &self.version,
            path,
            salt: &salt,
            chunk_size: self.chunk_size,
        };
        let cipher = crate::crypt::FileCipher::new(enc.scheme, &enc.key, at)
            .map_err(|e| PackError::BadInput(format!("{path}: {e}")))?;
        Ok(Some(Encrypting {
            seg: cipher.segment_size() as usize,
            cipher,
            pending: Vec::new(),
            next: 0,
            plain: blake3::Hasher::new(),
            plain_size: 0,
            salt,
            scheme: enc.scheme,
            key_id: enc.key.id(),
        }))
    }
}

/// A file being encrypted as it streams to disk: one segment is held back
/// until it is known whether more follows (the last carries a flag).
struct Encrypting {
    cipher: crate::crypt::FileCipher,
    seg: usize,
    pending: Vec<u8>,
    next: u64,
    plain: blake3::Hasher,
    plain_size: u64,
    salt: [u8; 32],
    scheme: crate::crypt::Scheme,
    key_id: String,
}

/// The drift gate for a release with a parent.
#[derive(Debug)]
pub struct DriftGate {
    /// The parent's release directory (its files must be here).
    pub parent_dir: PathBuf,
    pub thresholds: Thresholds,
    /// `--approve-drift`: publish past the thresholds, recording why in the envelope.
    pub approval: Option<String>,
}

#[derive(Debug)]
pub struct PackOutcome {
    pub manifest: SignedManifest,
    /// `OUT` already held this exact release; nothing was written.
    pub unchanged: bool,
    /// The comparison with the parent, when the drift gate ran.
    pub drift: Option<Report>,
    /// The thresholds it broke (approved, or the pack would have failed).
    pub breaches: Vec<String>,
}

/// Reads a parent release's manifest for `--parent`.
pub fn parent_ref(manifest_path: &Path) -> Result<ParentRef, PackError> {
    let bytes = std::fs::read(manifest_path).map_err(io_err(manifest_path))?;
    let parent = SignedManifest::parse(&bytes)
        .map_err(|e| PackError::BadInput(format!("{}: parent manifest: {e}", manifest_path.display())))?;
    Ok(ParentRef { name: parent.manifest.name, version: parent.manifest.version, manifest_blake3: parent.id })
}

/// Media type recorded for a file; never `text/html`, which makes HTTP
/// clients such as fsspec scrape the body for links.
pub fn media_type_for(path: &str) -> String {
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    let known = match ext.as_str() {
        "tar" => Some("application/x-tar"),
        "parquet" => Some("application/vnd.apache.parquet"),
        "jsonl" | "ndjson" => Some("application/jsonl"),
        "arrow" | "feather" => Some("application/vnd.apache.arrow.file"),
        "npy" | "npz" | "safetensors" | "bin" | "idx" | "pt" => Some("application/octet-stream"),
        "html" | "htm" | "xhtml" => Some("text/plain; charset=utf-8"),
        _ => None,
    };
    if let Some(k) = known {
        return k.to_string();
    }
    let guess = mime_guess::from_path(path).first_raw().unwrap_or("application/octet-stream");
    if guess.starts_with("text/html") { "text/plain; charset=utf-8".into() } else { guess.to_string() }
}

struct InputFile {
    rel: String,
    abs: PathBuf,
    size: u64,
}

fn walk(dir: &Path) -> Result<Vec<InputFile>, PackError> {
    let meta = std::fs::metadata(dir).map_err(|_| PackError::NoSuchDir(dir.to_path_buf()))?;
    if !meta.is_dir() {
        return Err(PackError::NoSuchDir(dir.to_path_buf()));
    }
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(dir).follow_links(false).min_depth(1) {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(dir).to_path_buf();
            PackError::Io { path, source: e.into_io_error().unwrap_or_else(|| io::Error::other("walk failed")) }
        })?;
        let ft = entry.file_type();
        if ft.is_dir() {
            continue;
        }
        if ft.is_symlink() {
            return Err(PackError::Symlink(entry.path().to_path_buf()));
        }
        if !ft.is_file() {
            return Err(PackError::NotAFile(entry.path().to_path_buf()));
        }
        let rel_path = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        let mut parts = Vec::new();
        for c in rel_path.components() {
            parts.push(c.as_os_str().to_str().ok_or_else(|| PackError::NotUtf8(entry.path().to_path_buf()))?);
        }
        let rel = parts.join("/");
        check_path(&rel).map_err(PackError::BadInput)?;
        let size = entry.metadata().map_err(|e| PackError::Io { path: entry.path().into(), source: e.into() })?.len();
        files.push(InputFile { rel, abs: entry.path().to_path_buf(), size });
    }
    if files.is_empty() {
        return Err(PackError::Empty(dir.to_path_buf()));
    }
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(files)
}

/// What `OUT` holds before packing.
enum OutState {
    Absent,
    EmptyDir,
    Release { id: String },
}

fn inspect_out(out: &Path, name: &str, version: &semver::Version) -> Result<OutState, PackError> {
    match std::fs::metadata(out) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(OutState::Absent),
        Err(e) => return Err(io_err(out)(e)),
        Ok(m) if !m.is_dir() => return Err(PackError::OutNotEmpty(out.to_path_buf())),
        Ok(_) => {}
    }
    let dir = ReleaseDir::new(out);
    match std::fs::read(dir.manifest()) {
        Ok(bytes) => {
            let id = Blake3::of(&bytes).to_hex();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let (n, ver) = (v["name"].as_str().unwrap_or("?"), v["version"].as_str().unwrap_or("?"));
            if n != name || ver != version.to_string() {
                return Err(PackError::OutHoldsRelease {
                    out: out.into(),
                    name: n.into(),
                    version: ver.into(),
                    existing: id,
                    new: String::new(),
                });
            }
            Ok(OutState::Release { id })
        }
        Err(_) => {
            let mut it = std::fs::read_dir(out).map_err(io_err(out))?;
            if it.next().is_some() { Err(PackError::OutNotEmpty(out.to_path_buf())) } else { Ok(OutState::EmptyDir) }
        }
    }
}

/// Removes the staging directory unless the pack completed.
struct Staging {
    path: PathBuf,
    keep: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A writer that hashes chunk by chunk and counts newlines on the way to disk.
struct HashingWriter {
    file: io::BufWriter<File>,
    path: PathBuf,
    hasher: ChunkHasher,
    count_lines: bool,
    newlines: u64,
    last_byte: Option<u8>,
    /// Set when the file is encrypted: bytes written are plaintext, bytes stored ciphertext.
    enc: Option<Encrypting>,
}

/// What an encrypted file's entry records beyond the ciphertext's digest.
struct Encrypted {
    meta: crate::release::manifest::FileEncryption,
}

impl HashingWriter {
    fn encrypting(mut self, enc: Option<Encrypting>) -> Self {
        // Line counts of an encrypted file would tell about its plaintext: none are kept.
        if enc.is_some() {
            self.count_lines = false;
        }
        self.enc = enc;
        self
    }

    /// Stores bytes (ciphertext, or the file as it is) and hashes them.
    fn store(file: &mut io::BufWriter<File>, hasher: &mut ChunkHasher, bytes: &[u8]) -> io::Result<()> {
        file.write_all(bytes)?;
        hasher.update(bytes);
        Ok(())
    }

    fn create(path: PathBuf, chunk_size: u64, count_lines: bool) -> Result<Self, PackError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let file = File::create(&path).map_err(io_err(&path))?;
        Ok(Self {
            file: io::BufWriter::with_capacity(IO_BUF, file),
            path,
            hasher: ChunkHasher::new(chunk_size)?,
            count_lines,
            newlines: 0,
            last_byte: None,
            enc: None,
        })
    }

    fn finish(mut self) -> Result<(FileDigest, Option<u64>, Option<Encrypted>), PackError> {
        let mut encrypted = None;
        if let Some(e) = self.enc.take() {
            let last = e
                .cipher
                .encrypt_segment(e.next, true, &e.pending)
                .map_err(|err| PackError::BadInput(format!("{}: {err}", self.path.display())))?;
            Self::store(&mut self.file, &mut self.hasher, &last).map_err(io_err(&self.path))?;
            let digest: Blake3 = e.plain.finalize().into();
            encrypted = Some(Encrypted {
                meta: crate::release::manifest::FileEncryption {
                    scheme: e.scheme.name().into(),
                    key_id: e.key_id,
                    salt: hex::encode(e.salt),
                    plaintext_size: e.plain_size,
                    sealed_blake3: super::keys::b64(
                        &e.cipher.seal_digest(&digest).map_err(|err| PackError::BadInput(err.to_string()))?,
                    ),
                },
            });
        }
        let file =
            self.file.into_inner().map_err(|e| PackError::Io { path: self.path.clone(), source: e.into_error() })?;
        file.sync_data().map_err(io_err(&self.path))?;
        let lines = self.count_lines.then(|| self.newlines + u64::from(self.last_byte.is_some_and(|b| b != b'\n')));
        Ok((self.hasher.finish(), lines, encrypted))
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(e) = &mut self.enc {
            e.plain.update(buf);
            e.plain_size += buf.len() as u64;
            e.pending.extend_from_slice(buf);
            // A full segment is sealed once more bytes follow it: only then is it known not to be the last.
            let mut at = 0;
            while e.pending.len() - at > e.seg {
                let c =
                    e.cipher.encrypt_segment(e.next, false, &e.pending[at..at + e.seg]).map_err(io::Error::other)?;
                Self::store(&mut self.file, &mut self.hasher, &c)?;
                e.next += 1;
                at += e.seg;
            }
            e.pending.drain(..at);
            return Ok(buf.len());
        }
        let n = self.file.write(buf)?;
        let done = &buf[..n];
        self.hasher.update(done);
        if self.count_lines && !done.is_empty() {
            self.newlines += done.iter().filter(|&&b| b == b'\n').count() as u64;
            self.last_byte = done.last().copied();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Copies `src` into `w` and reports progress.
fn copy_from(src: &Path, w: &mut impl Write, progress: &dyn Progress) -> Result<u64, PackError> {
    let mut f = File::open(src).map_err(io_err(src))?;
    let mut buf = vec![0u8; IO_BUF];
    let mut total = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(src)(e)),
        };
        w.write_all(&buf[..n]).map_err(|e| PackError::Io { path: src.to_path_buf(), source: e })?;
        progress.advance(n as u64);
        total += n as u64;
    }
    Ok(total)
}

struct Packed {
    entry: FileEntry,
    table: Option<Vec<u8>>,
}

fn finish_entry(
    rel: String,
    digest: FileDigest,
    chunk_size: u64,
    records: Option<u64>,
    encrypted: Option<Encrypted>,
) -> Packed {
    let table = digest.table.as_ref().map(|t| t.encode());
    let entry = FileEntry {
        media_type: media_type_for(&rel),
        path: rel,
        size: digest.size,
        blake3: digest.root.into(),
        chunk_size,
        chunk_table: table.as_deref().map(Blake3::of),
        records: if encrypted.is_some() { None } else { records },
        encryption: encrypted.map(|e| e.meta),
    };
    Packed { entry, table }
}

fn pack_files(
    files: &[InputFile],
    staging: &ReleaseDir,
    plan: &EncryptPlan<'_>,
    progress: &dyn Progress,
) -> Result<Vec<Packed>, PackError> {
    let chunk_size = plan.chunk_size;
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let is_jsonl = f.rel.ends_with(".jsonl") || f.rel.ends_with(".ndjson");
        let mut w =
            HashingWriter::create(staging.file(&f.rel), chunk_size, is_jsonl)?.encrypting(plan.encryptor(&f.rel)?);
        copy_from(&f.abs, &mut w, progress)?;
        let (digest, lines, enc) = w.finish()?;
        out.push(finish_entry(f.rel.clone(), digest, chunk_size, lines, enc));
    }
    Ok(out)
}

/// WebDataset's sample key: the path up to the first `.` of the file name.
fn sample_key(rel: &str) -> Result<(&str, &str), PackError> {
    let name_start = rel.rfind('/').map_or(0, |i| i + 1);
    match rel[name_start..].find('.') {
        Some(dot) if dot > 0 && name_start + dot + 1 < rel.len() => {
            Ok((&rel[..name_start + dot], &rel[name_start + dot + 1..]))
        }
        _ => Err(PackError::SampleKey(rel.to_string())),
    }
}

fn tar_member_len(name: &str, size: u64) -> u64 {
    let long_name = if name.len() > 100 { 512 + (name.len() as u64 + 1).div_ceil(512) * 512 } else { 0 };
    512 + long_name + size.div_ceil(512) * 512
}

fn pack_webdataset(
    files: &[InputFile],
    staging: &ReleaseDir,
    plan: &EncryptPlan<'_>,
    shard_size: u64,
    mtime: u64,
    progress: &dyn Progress,
) -> Result<Vec<Packed>, PackError> {
    let chunk_size = plan.chunk_size;
    let mut samples: BTreeMap<&str, Vec<&InputFile>> = BTreeMap::new();
    for f in files {
        let (key, _) = sample_key(&f.rel)?;
        samples.entry(key).or_default().push(f);
    }
    let mut out = Vec::new();
    let mut shard: Option<(tar::Builder<HashingWriter>, String, u64, u64)> = None;
    let close = |s: (tar::Builder<HashingWriter>, String, u64, u64), out: &mut Vec<Packed>| -> Result<(), PackError> {
        let (builder, rel, _, count) = s;
        let w = builder.into_inner().map_err(|e| PackError::Io { path: rel.clone().into(), source: e })?;
        let (digest, _, enc) = w.finish()?;
        out.push(finish_entry(rel, digest, chunk_size, Some(count), enc));
        Ok(())
    };
    for (_key, members) in samples {
        let sample_len: u64 = members.iter().map(|m| tar_member_len(&m.rel, m.size)).sum();
        if let Some(s) = &shard
            && s.2 + sample_len + 1024 > shard_size
            && s.3 > 0
        {
            let s = shard.take().ok_or_else(|| PackError::BadInput("no shard".into()))?;
            close(s, &mut out)?;
        }
        if shard.is_none() {
            let rel = format!("shard-{:06}.tar", out.len());
            let w = HashingWriter::create(staging.file(&rel), chunk_size, false)?.encrypting(plan.encryptor(&rel)?);
            let mut b = tar::Builder::new(w);
            b.mode(tar::HeaderMode::Deterministic);
            shard = Some((b, rel, 0, 0));
        }
        let Some(s) = shard.as_mut() else { continue };
        for m in members {
            let mut header = tar::Header::new_gnu();
            header.set_size(m.size);
            header.set_mode(0o644);
            header.set_mtime(mtime);
            header.set_uid(0);
            header.set_gid(0);
            header.set_entry_type(tar::EntryType::Regular);
            let file = File::open(&m.abs).map_err(io_err(&m.abs))?;
            // The header promises `size` bytes: a file that changed size since the walk is an error, not a cut.
            let mut reader = CountingReader { inner: file.take(m.size), n: 0, progress };
            s.0.append_data(&mut header, &m.rel, &mut reader).map_err(io_err(&m.abs))?;
            if reader.n != m.size {
                return Err(PackError::BadInput(format!("{}: file changed size while packing", m.abs.display())));
            }
        }
        s.2 += sample_len;
        s.3 += 1;
    }
    if let Some(s) = shard.take() {
        close(s, &mut out)?;
    }
    Ok(out)
}

struct CountingReader<'a, R> {
    inner: R,
    n: u64,
    progress: &'a dyn Progress,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

/// Packs `opts.dir` into a signed release at `opts.out`.
pub fn pack(opts: &PackOptions, key: &PublisherKey, progress: &dyn Progress) -> Result<PackOutcome, PackError> {
    check_name(&opts.name).map_err(PackError::BadInput)?;
    check_chunk_size(opts.chunk_size)?;
    if let PackFormat::WebDataset { shard_size } = opts.format
        && shard_size < 64 * 1024
    {
        return Err(PackError::BadInput(format!("--shard-size {shard_size} is below 64 KiB")));
    }
    let files = walk(&opts.dir)?;
    let state = inspect_out(&opts.out, &opts.name, &opts.version)?;
    let release = format!("{}@{}", opts.name, opts.version);
    let class_name = match &opts.policy {
        Some(p) => {
            let name = opts.envelope.compliance_class.clone().unwrap_or_else(|| p.default_class().to_string());
            p.class(&name, &release)?;
            Some(name)
        }
        None => None,
    };
    let mut plan = EncryptPlan {
        enc: opts.encryption.as_ref(),
        policy: opts.policy.as_ref().zip(class_name.as_deref()),
        name: &opts.name,
        version: opts.version.to_string(),
        chunk_size: opts.chunk_size,
        all: false,
    };
    // Refused before anything is written: a file the policy says must be encrypted, with no key.
    // The rules and --encrypt name input paths; a WebDataset shard holding any such file is
    // encrypted whole (so every shard is, since members are spread over them).
    let mut any = false;
    for f in &files {
        any |= plan.wants(&f.rel)?;
    }
    if let PackFormat::WebDataset { .. } = opts.format {
        plan.all = any || plan.wants("shard-000000.tar")?;
    }

    let out_abs = std::path::absolute(&opts.out).map_err(io_err(&opts.out))?;
    let parent = out_abs.parent().unwrap_or(Path::new("/")).to_path_buf();
    std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let leaf = out_abs.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "release".into());
    let mut nonce = [0u8; 6];
    let _ = getrandom::fill(&mut nonce);
    let staging_path = parent.join(format!(".{leaf}.partial-{}", hex::encode(nonce)));
    std::fs::create_dir(&staging_path).map_err(io_err(&staging_path))?;
    let mut guard = Staging { path: staging_path.clone(), keep: false };
    let staging = ReleaseDir::new(&staging_path);
    std::fs::create_dir_all(staging_path.join(FILES_DIR)).map_err(io_err(&staging_path))?;
    std::fs::create_dir_all(staging_path.join(TABLES_DIR)).map_err(io_err(&staging_path))?;

    let total_in: u64 = files.iter().map(|f| f.size).sum();
    progress.begin("pack", total_in);
    let packed = match opts.format {
        PackFormat::Files => pack_files(&files, &staging, &plan, progress)?,
        PackFormat::WebDataset { shard_size } => {
            let mtime = opts.created_at.as_second().max(0) as u64;
            pack_webdataset(&files, &staging, &plan, shard_size, mtime, progress)?
        }
    };
    progress.end();

    let mut entries = Vec::with_capacity(packed.len());
    let mut records = Records::default();
    for p in packed {
        if let (Some(bytes), Some(h)) = (&p.table, &p.entry.chunk_table) {
            let path = staging.table(h);
            if !path.exists() {
                std::fs::write(&path, bytes).map_err(io_err(&path))?;
            }
        }
        if let Some(n) = p.entry.records {
            let slot = match opts.format {
                PackFormat::WebDataset { .. } => &mut records.webdataset_samples,
                PackFormat::Files => &mut records.jsonl_lines,
            };
            *slot = Some(slot.unwrap_or(0) + n);
        }
        entries.push(p.entry);
    }
    let mut envelope = opts.envelope.clone();
    let (drift, breaches) = match &opts.drift {
        None => (None, Vec::new()),
        Some(gate) => {
            let (report, breaches) = drift_gate(gate, opts, &staging, &entries, progress)?;
            if !breaches.is_empty() {
                let Some(reason) = &gate.approval else {
                    return Err(PackError::Drift { breaches, report: Box::new(report) });
                };
                envelope.extra.insert(
                    "drift_approval".into(),
                    serde_json::json!({
                        "approved_by": key.public().to_string(),
                        "reason": reason,
                        "at": opts.created_at.to_string(),
                        "breaches": breaches,
                        "report": report,
                    }),
                );
            }
            (Some(report), breaches)
        }
    };
    let manifest = Manifest {
        schema: Manifest::schema_for(&entries).into(),
        name: opts.name.clone(),
        version: opts.version.clone(),
        parent: opts.parent.clone(),
        created_at: opts.created_at,
        total_bytes: entries.iter().map(|e| e.size).sum(),
        records,
        files: entries,
        envelope,
        approvals: Vec::new(),
        signature: None,
    };
    manifest.validate().map_err(|e| PackError::BadInput(e.to_string()))?;
    if let Some(p) = &opts.policy {
        p.check_contents(&manifest)?;
    }
    let signed = manifest.sign(key);
    let manifest_path = staging.manifest();
    write_synced(&manifest_path, &signed.bytes)?;

    match state {
        OutState::Release { id } => {
            if id == signed.id.to_hex() {
                return Ok(PackOutcome { manifest: signed, unchanged: true, drift, breaches });
            }
            return Err(PackError::OutHoldsRelease {
                out: opts.out.clone(),
                name: opts.name.clone(),
                version: opts.version.to_string(),
                existing: id,
                new: format!(" (new id {})", signed.id),
            });
        }
        OutState::EmptyDir => std::fs::remove_dir(&out_abs).map_err(io_err(&out_abs))?,
        OutState::Absent => {}
    }
    std::fs::rename(&staging_path, &out_abs).map_err(io_err(&out_abs))?;
    guard.keep = true;
    if let Ok(d) = File::open(&parent) {
        let _ = d.sync_all();
    }
    Ok(PackOutcome { manifest: signed, unchanged: false, drift, breaches })
}

/// Profiles the parent and the staged release and compares them.
fn drift_gate(
    gate: &DriftGate,
    opts: &PackOptions,
    staging: &ReleaseDir,
    entries: &[FileEntry],
    progress: &dyn Progress,
) -> Result<(Report, Vec<String>), PackError> {
    let parent_dir = ReleaseDir::from_arg(&gate.parent_dir);
    let bytes = std::fs::read(parent_dir.manifest()).map_err(io_err(&parent_dir.manifest()))?;
    let parent = SignedManifest::parse(&bytes)
        .map_err(|e| PackError::BadInput(format!("{}: parent manifest: {e}", parent_dir.manifest().display())))?;
    let field = gate
        .thresholds
        .label_field
        .clone()
        .or_else(|| opts.envelope.label_taxonomy.as_ref().and_then(|l| l.field.clone()));
    let before = Profile::of(&parent_dir, &parent.manifest.files, field.as_deref(), progress)?;
    let after = Profile::of(staging, entries, field.as_deref(), progress)?;
    let report = Report::compare(
        &format!("{}@{}", parent.manifest.name, parent.manifest.version),
        &before,
        &format!("{}@{}", opts.name, opts.version),
        &after,
        field.as_deref(),
    );
    let breaches = report.breaches(&gate.thresholds);
    Ok((report, breaches))
}

/// Writes a file and syncs it to disk.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), PackError> {
    let mut f = File::create(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_are_never_html() {
        assert_eq!(media_type_for("a/b.tar"), "application/x-tar");
        assert_eq!(media_type_for("x.parquet"), "application/vnd.apache.parquet");
        assert_eq!(media_type_for("index.HTML"), "text/plain; charset=utf-8");
        assert_eq!(media_type_for("noext"), "application/octet-stream");
        assert_eq!(media_type_for("img.jpg"), "image/jpeg");
    }

    #[test]
    fn sample_keys_follow_webdataset() {
        assert_eq!(sample_key("d/abc.jpg").unwrap(), ("d/abc", "jpg"));
        assert_eq!(sample_key("abc.seg.png").unwrap(), ("abc", "seg.png"));
        assert!(sample_key("d/noext").is_err());
        assert!(sample_key(".hidden").is_err());
        assert!(sample_key("x.").is_err());
    }
}
