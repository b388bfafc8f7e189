//! The registry of served releases: which manifests are trusted and loaded,
//! and how a name, version and path (or a BLAKE3) resolve to a file.
//!
//! A [`Catalog`] is immutable; the registry swaps in a new one atomically on
//! reload (and, later, on publish), so readers never lock. Nothing here
//! fetches file bytes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::ReleaseSource;
use crate::lifecycle::{Lifecycle, ReleaseState};
use crate::origin::Origin;
use crate::release::keys::PublicKey;
use crate::release::layout::ReleaseDir;
use crate::release::manifest::{Blake3, FileEntry, SignedManifest};
use crate::release::placement::Placement;
use crate::usage::ReleaseTag;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{what}: {why}")]
    Source { what: String, why: String },
    #[error("release {name}@{version} (id {id}): {why}")]
    Refused { name: String, version: String, id: String, why: String },
}

/// One served release.
#[derive(Debug)]
pub struct Release {
    pub signed: SignedManifest,
    pub placement: Option<Placement>,
    tag: ReleaseTag,
}

impl Release {
    pub fn new(signed: SignedManifest, placement: Option<Placement>) -> Self {
        let m = &signed.manifest;
        let tag = ReleaseTag { dataset: Arc::from(m.name.as_str()), version: Arc::from(m.version.to_string()) };
        Self { signed, placement, tag }
    }

    /// The release's name and version, as metering keys.
    pub fn tag(&self) -> ReleaseTag {
        self.tag.clone()
    }

    pub fn name(&self) -> &str {
        &self.signed.manifest.name
    }

    pub fn version(&self) -> &semver::Version {
        &self.signed.manifest.version
    }

    pub fn cid_of(&self, hash: &Blake3) -> Option<&str> {
        self.placement.as_ref().and_then(|p| p.cid_of(hash))
    }
}

/// A file of a served release, with what the fetcher needs to find and check it.
#[derive(Debug, Clone)]
pub struct FileRef {
    pub release: Arc<Release>,
    pub index: usize,
}

impl FileRef {
    pub fn entry(&self) -> &FileEntry {
        &self.release.signed.manifest.files[self.index]
    }
}

/// An immutable snapshot of what is served, with the tags and states in
/// force; changed by building a new one and swapping it in.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    releases: BTreeMap<String, BTreeMap<semver::Version, Arc<Release>>>,
    /// Every release holding a file, by the file's hash.
    by_blake3: HashMap<Blake3, Vec<FileRef>>,
    /// Every release holding a file, by the hash of the file's chunk table.
    by_table: HashMap<Blake3, Vec<FileRef>>,
    lifecycle: Lifecycle,
    /// Releases registered over the admin API (the rest come from config).
    registered: HashSet<(String, semver::Version)>,
    /// The data keys of encrypted releases, as this gateway holds them, by release id.
    keys: crate::crypt::access::Keys,
    /// Releases that break their policy class, by release id, with the breach.
    refused: HashMap<Blake3, String>,
}

/// What a `{version}` path segment named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    Version(semver::Version),
    /// A tag, and the version it points at.
    Tag(String, semver::Version),
}

impl Resolved {
    pub fn version(&self) -> &semver::Version {
        match self {
            Resolved::Version(v) | Resolved::Tag(_, v) => v,
        }
    }
}

impl Catalog {
    pub fn insert(&mut self, release: Release) -> Result<(), LoadError> {
        let release = Arc::new(release);
        let versions = self.releases.entry(release.name().to_string()).or_default();
        if let Some(existing) = versions.get(release.version()) {
            if existing.signed.id != release.signed.id {
                return Err(LoadError::Refused {
                    name: release.name().into(),
                    version: release.version().to_string(),
                    id: release.signed.id.to_hex(),
                    why: format!(
                        "a different release with this name and version is already served (id {})",
                        existing.signed.id
                    ),
                });
            }
            return Ok(());
        }
        versions.insert(release.version().clone(), release.clone());
        for (i, f) in release.signed.manifest.files.iter().enumerate() {
            self.by_blake3.entry(f.blake3).or_default().push(FileRef { release: release.clone(), index: i });
            if let Some(t) = f.chunk_table {
                self.by_table.entry(t).or_default().push(FileRef { release: release.clone(), index: i });
            }
        }
        Ok(())
    }

    /// Sets what this gateway can decrypt and which releases policy refuses.
    pub fn set_security(&mut self, keys: crate::crypt::access::Keys, refused: HashMap<Blake3, String>) {
        self.keys = keys;
        self.refused = refused;
    }

    /// Sets one release's key state (when the registry could not be re-read after a key change).
    pub fn set_key_state(&mut self, id: Blake3, state: Arc<crate::crypt::access::KeyState>) {
        self.keys.insert(id, state);
    }

    /// The key state of an encrypted release (`None` for a release in plain).
    pub fn key_state(&self, id: &Blake3) -> Option<&Arc<crate::crypt::access::KeyState>> {
        self.keys.get(id)
    }

    /// Why the policy refuses a release, if it does.
    pub fn refusal(&self, id: &Blake3) -> Option<&str> {
        self.refused.get(id).map(String::as_str)
    }

    /// Every served release.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Release>> {
        self.releases.values().flat_map(|v| v.values())
    }

    pub fn mark_registered(&mut self, name: &str, version: &semver::Version) {
        self.registered.insert((name.to_string(), version.clone()));
    }

    pub fn is_registered(&self, name: &str, version: &semver::Version) -> bool {
        self.registered.contains(&(name.to_string(), version.clone()))
    }

    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    pub fn set_lifecycle(&mut self, l: Lifecycle) {
        self.lifecycle = l;
    }

    /// The state of a release (active when nothing was recorded).
    pub fn state(&self, name: &str, version: &semver::Version) -> ReleaseState {
        self.lifecycle.state(name, version).cloned().unwrap_or_default()
    }

    /// A `{version}` segment: a version, or a tag that points at a served one.
    pub fn resolve(&self, name: &str, segment: &str) -> Option<Resolved> {
        if let Ok(v) = semver::Version::parse(segment) {
            return Some(Resolved::Version(v));
        }
        let v = self.lifecycle.tag(name, segment)?;
        Some(Resolved::Tag(segment.to_string(), v.clone()))
    }

    /// Whether a release that is not taken down holds the file `hash`.
    pub fn live_uses(&self, hash: &Blake3) -> bool {
        self.by_blake3.get(hash).is_some_and(|refs| {
            refs.iter().any(|f| self.state(f.release.name(), f.release.version()).taken_down.is_none())
        })
    }

    pub fn release(&self, name: &str, version: &semver::Version) -> Option<&Arc<Release>> {
        self.releases.get(name).and_then(|v| v.get(version))
    }

    pub fn versions(&self, name: &str) -> Option<&BTreeMap<semver::Version, Arc<Release>>> {
        self.releases.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = (&String, &BTreeMap<semver::Version, Arc<Release>>)> {
        self.releases.iter()
    }

    pub fn file(&self, name: &str, version: &semver::Version, path: &str) -> Option<FileRef> {
        let release = self.release(name, version)?;
        let index = release.signed.manifest.files.binary_search_by(|f| f.path.as_str().cmp(path)).ok()?;
        Some(FileRef { release: release.clone(), index })
    }

    /// A release holding the blob: a live one if any is, else a taken-down one.
    pub fn blob(&self, hash: &Blake3) -> Option<FileRef> {
        self.blob_where(hash, |_| true)
    }

    /// Like [`Catalog::blob`], among the releases whose dataset `may_read` accepts.
    pub fn blob_where(&self, hash: &Blake3, may_read: impl Fn(&str) -> bool) -> Option<FileRef> {
        self.pick(self.by_blake3.get(hash)?, may_read)
    }

    /// A file whose chunk table is `hash`, among the releases whose dataset
    /// `may_read` accepts: a live one if any is, else a taken-down one.
    pub fn table_where(&self, hash: &Blake3, may_read: impl Fn(&str) -> bool) -> Option<FileRef> {
        self.pick(self.by_table.get(hash)?, may_read)
    }

    /// Whether some release holds `hash` as a file or a chunk table.
    pub fn holds(&self, hash: &Blake3) -> bool {
        self.by_blake3.contains_key(hash) || self.by_table.contains_key(hash)
    }

    fn pick(&self, refs: &[FileRef], may_read: impl Fn(&str) -> bool) -> Option<FileRef> {
        let mut readable = refs.iter().filter(|f| may_read(f.release.name()));
        let first = readable.clone().next();
        readable.find(|f| self.state(f.release.name(), f.release.version()).taken_down.is_none()).or(first).cloned()
    }

    pub fn release_count(&self) -> usize {
        self.releases.values().map(BTreeMap::len).sum()
    }
}

/// The live catalog, swapped atomically.
#[derive(Debug, Default)]
pub struct Registry {
    current: ArcSwap<Catalog>,
    /// Bumped by every swap: streaming bodies re-check their release only when it moved.
    epoch: Arc<std::sync::atomic::AtomicU64>,
}

impl Registry {
    pub fn snapshot(&self) -> Arc<Catalog> {
        self.current.load_full()
    }

    pub fn replace(&self, catalog: Catalog) {
        self.current.store(Arc::new(catalog));
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// A counter that changes whenever the catalog is swapped.
    pub fn epoch(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.epoch.clone()
    }
}

/// Reads a manifest or placement given as a path or `cid:<CID>`, and
/// accepts it with `accept` (parse, signature, match). A CID is fetched from
/// each `btfs-api` origin in turn until one answers bytes that match the CID
/// (where its form can be checked) and that `accept` takes: one origin that
/// answers damaged bytes does not lose the release.
pub(crate) async fn read_source<T>(
    spec: &str,
    origins: &[Origin],
    accept: impl Fn(&[u8]) -> Result<T, String>,
) -> Result<T, String> {
    let Some(cid) = spec.strip_prefix("cid:") else {
        let bytes = tokio::fs::read(spec).await.map_err(|e| e.to_string())?;
        return accept(&bytes);
    };
    let mut tried = Vec::new();
    for origin in origins {
        let Some(node) = origin.node() else { continue };
        // Metadata is small; 16 MiB bounds a hostile answer.
        let outcome = match fetch_small(node, cid).await {
            Ok(b) => crate::btfs::cid::check(cid, &b).and_then(|()| accept(&b)),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(t) => return Ok(t),
            Err(why) => {
                tracing::warn!(origin = origin.name(), %cid, error = %why, "metadata from this origin refused; trying the next");
                tried.push(format!("origin {}: {why}", origin.name()));
            }
        }
    }
    if tried.is_empty() {
        return Err("no btfs-api origin is configured to fetch it from".into());
    }
    Err(tried.join("; "))
}

async fn fetch_small(node: &crate::btfs::NodeClient, cid: &str) -> Result<Vec<u8>, String> {
    const LIMIT: u64 = 16 * 1024 * 1024;
    let resp = node.cat(cid, 0, LIMIT, Duration::from_secs(30)).await.map_err(|e| e.to_string())?;
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    if body.len() as u64 >= LIMIT {
        return Err(format!("{cid} is larger than {LIMIT} bytes"));
    }
    Ok(body.to_vec())
}

/// A configured release that could not be loaded.
#[derive(Debug, Clone)]
pub struct Unloaded {
    pub error: String,
    /// Fetched from origins (by CID), so it may load once they heal: it is
    /// retried in the background, and requests that may be for it answer 503.
    pub retry: bool,
    /// The configured source, to retry.
    pub source: Option<ReleaseSource>,
}

impl std::fmt::Display for Unloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)
    }
}

/// Loads every configured release. Releases that fail are left out and
/// reported; the rest are served.
pub async fn load(sources: &[ReleaseSource], trusted: &[PublicKey], origins: &[Origin]) -> (Catalog, Vec<Unloaded>) {
    let mut catalog = Catalog::default();
    let mut errors = Vec::new();
    for src in sources {
        let outcome = match load_source(src, trusted, origins).await {
            Ok(release) => {
                catalog.insert(release).map_err(|e| Unloaded { error: e.to_string(), retry: false, source: None })
            }
            Err(u) => Err(u),
        };
        if let Err(u) = outcome {
            errors.push(u);
        }
    }
    (catalog, errors)
}

/// Loads one configured release; a failure says whether a retry may help.
pub async fn load_source(src: &ReleaseSource, trusted: &[PublicKey], origins: &[Origin]) -> Result<Release, Unloaded> {
    let retry = src.manifest.starts_with("cid:") || src.placement.as_deref().is_some_and(|p| p.starts_with("cid:"));
    load_one(src, trusted, origins).await.map_err(|e| Unloaded {
        error: e.to_string(),
        retry,
        source: Some(src.clone()),
    })
}

async fn load_one(src: &ReleaseSource, trusted: &[PublicKey], origins: &[Origin]) -> Result<Release, LoadError> {
    let what = format!("release {}", src.manifest);
    // Parsed and checked per origin: bytes that fail either move to the next origin.
    let signed = read_source(&src.manifest, origins, |bytes| {
        let signed = SignedManifest::parse(bytes).map_err(|e| e.to_string())?;
        signed.check_trust(trusted).map_err(|e| {
            format!("release {}@{} (id {}): {e}", signed.manifest.name, signed.manifest.version, signed.id)
        })?;
        Ok(signed)
    })
    .await
    .map_err(|why| LoadError::Source { what: what.clone(), why })?;
    let refused = |why: String| refused(&signed, why);
    let placement = match &src.placement {
        Some(spec) => Some(
            read_source(spec, origins, |b| matching_placement(b, &signed))
                .await
                .map_err(|why| refused(format!("placement {spec}: {why}")))?,
        ),
        None => {
            // A local release directory may hold its placement beside the manifest.
            (!src.manifest.starts_with("cid:"))
                .then(|| ReleaseDir::from_arg(std::path::Path::new(&src.manifest)).placement())
                .and_then(|p| std::fs::read(p).ok())
                .and_then(|b| Placement::parse(&b).ok())
                .filter(|p| p.manifest_blake3 == signed.id)
        }
    };
    if !src.manifest.starts_with("cid:") {
        let dir = ReleaseDir::from_arg(std::path::Path::new(&src.manifest));
        // A release given by local path is servable by every `dir` origin.
        for index in origins.iter().filter_map(Origin::dir_index) {
            if index.path_of(&signed.id).is_none() {
                index.add_release(&dir);
            }
        }
    }
    Ok(Release::new(signed, placement))
}

/// A release from manifest and placement bytes (registered over the admin
/// API): parsed, checked against the trusted keys, placement matched.
pub fn release_from_bytes(
    manifest: &[u8],
    placement: Option<&[u8]>,
    trusted: &[PublicKey],
) -> Result<Release, LoadError> {
    let signed = SignedManifest::parse(manifest)
        .map_err(|e| LoadError::Source { what: "manifest".into(), why: e.to_string() })?;
    signed.check_trust(trusted).map_err(|e| refused(&signed, e.to_string()))?;
    let placement = placement
        .map(|b| matching_placement(b, &signed).map_err(|why| refused(&signed, format!("placement: {why}"))))
        .transpose()?;
    Ok(Release::new(signed, placement))
}

fn refused(signed: &SignedManifest, why: String) -> LoadError {
    LoadError::Refused {
        name: signed.manifest.name.clone(),
        version: signed.manifest.version.to_string(),
        id: signed.id.to_hex(),
        why,
    }
}

/// Parses a placement and checks it is this release's.
fn matching_placement(bytes: &[u8], signed: &SignedManifest) -> Result<Placement, String> {
    let p = Placement::parse(bytes)?;
    if p.manifest_blake3 != signed.id {
        return Err(format!("it is for release {}, not this one", p.manifest_blake3));
    }
    Ok(p)
}
