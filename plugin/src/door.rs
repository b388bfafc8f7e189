//! The front door: every protocol that serves release bytes (the HTTP
//! routes, `/v1/blobs`, the C ABI, pre-warm) admits its caller and opens its
//! file here, so a rule added once holds everywhere.
//!
//! - [`admit_operator`]: an admin token, for operator work over a data
//!   protocol (pre-warm through a balancer).
//! - [`admit`]: identify the caller, authorize the dataset, check the
//!   monthly quota (bytes in flight included) and take one request from the
//!   rate. Nothing here costs an origin anything.
//! - [`open_file`], [`open_blob`], [`open_release`]: resolve name, tag or
//!   version and path in one catalog snapshot, refuse what is not served,
//!   not loaded, or taken down, and take the liveness baseline and the purge
//!   mark **before** the caller awaits anything, so a takedown that lands
//!   while the first chunk is fetched is seen before a byte leaves.
//!
//! Must not: fetch bytes, or know about any protocol's wire format.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::crypt::access::{KeyState, PlainView};
use crate::fetch::FileSpec;
use crate::gateway::Gateway;
use crate::registry::{Catalog, FileRef, Release, Resolved};
use crate::release::manifest::Blake3;
use crate::tenant::{Denied, Tenant};

/// What a caller presented.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The `Authorization` header's value, if any.
    pub authorization: Option<&'a [u8]>,
    /// Names from a verified TLS client certificate.
    pub cert_names: &'a [String],
    /// A tenant id proven by a request signature its protocol adapter checked
    /// (S3 SigV4, with the secret of an access key the tenant holds).
    pub signed_by: Option<&'a str>,
    /// The client's address (the peer, or what a trusted proxy forwarded),
    /// when the protocol has one: counted per tenant, and named in refusals.
    pub client: Option<std::net::IpAddr>,
}

/// What a request reads, for authorization.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// Nothing in particular (discovery).
    Any,
    /// A dataset by name.
    Dataset(&'a str),
    /// A blob by hash: readable when some dataset holding it is.
    Blob(&'a Blake3),
}

/// Identifies the caller, checks that it may read the target, that its
/// monthly quota is not spent (counting bytes of responses still in
/// flight), and takes one request from its rate.
pub fn admit(gw: &Gateway, creds: Credentials<'_>, target: Target<'_>) -> Result<Arc<Tenant>, Denied> {
    let client = creds.client;
    let admitted = admit_inner(gw, creds, target);
    match (&admitted, client) {
        (Ok(t), Some(ip)) => gw.clients().seen(&t.id, ip),
        (Err(d), Some(ip)) => tracing::debug!(client = %ip, refused = %d, "request refused at the door"),
        _ => {}
    }
    admitted
}

/// Admits an operator (an admin token, `grpc.admin_tokens`) for operator
/// work over a data protocol: pre-warm sent through a balancer. A tenant's
/// key is never an operator's token.
pub fn admit_operator(gw: &Gateway, creds: Credentials<'_>) -> Result<(), Denied> {
    use crate::tenant::TokenRefusal;
    let refused = match gw.admin_tokens().check(creds.authorization) {
        Ok(()) => return Ok(()),
        Err(TokenRefusal::Missing) => "an admin token is required (Authorization: Bearer <token>)",
        Err(TokenRefusal::Malformed) => "Authorization must be `Bearer <token>`",
        Err(TokenRefusal::Unknown) => "the admin token is not valid (grpc.admin_tokens)",
    };
    if let Some(ip) = creds.client {
        tracing::debug!(client = %ip, refused, "operator request refused at the door");
    }
    Err(Denied::Unauthenticated(refused))
}

fn admit_inner(gw: &Gateway, creds: Credentials<'_>, target: Target<'_>) -> Result<Arc<Tenant>, Denied> {
    let tenants = gw.tenants();
    let tenant = match creds.signed_by {
        Some(id) => tenants
            .tenant(id)
            .cloned()
            .ok_or(Denied::Unauthenticated("the signing access key belongs to a tenant no longer configured"))?,
        None => tenants.identify(creds.authorization, creds.cert_names)?,
    };
    match target {
        Target::Any => {}
        Target::Dataset(d) => tenants.authorize(&tenant, d)?,
        Target::Blob(hash) => {
            // Held only where the caller may not read: the same answer as no such blob.
            let catalog = gw.registry().snapshot();
            let may_read = |d: &str| tenants.can_see(&tenant, d);
            if catalog.holds(hash)
                && catalog.blob_where(hash, may_read).is_none()
                && catalog.table_where(hash, may_read).is_none()
            {
                return Err(Denied::Hidden(OpenError::UnknownBlob { hash: hash.to_string() }.to_string()));
            }
        }
    }
    gw.check_quota(&tenant)?;
    tenant.admit()?;
    Ok(tenant)
}

/// Why a release or file could not be opened.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpenError {
    #[error("no dataset named {name:?} is served")]
    UnknownDataset { name: String },
    #[error("{segment:?} is neither a served version nor a tag of {name}")]
    UnknownVersion { name: String, segment: String },
    /// Not served, while some configured releases are not loaded yet: it may be one of them.
    #[error("{name}@{segment} is not served; {count} configured release(s) are not loaded yet ({why})")]
    NotLoaded { name: String, segment: String, count: usize, why: String },
    #[error("{name}@{version} has no file {path:?}")]
    UnknownFile { name: String, version: String, path: String },
    #[error("no served release holds blob {hash}")]
    UnknownBlob { hash: String },
    #[error("{name}@{version} was taken down: {reason}")]
    TakenDown { name: String, version: semver::Version, reason: String, at: i64, successor: Option<String> },
    #[error("{path}: the manifest's chunk layout is invalid")]
    BadLayout { path: String },
    /// The release breaks its policy class: never served.
    #[error("{name}@{version} is not served: {why}")]
    Refused { name: String, version: String, why: String },
    /// The reader is not cleared for the release's class.
    #[error("tenant {tenant} is not cleared for class {class:?}, which {name}@{version} is in")]
    NotCleared { tenant: String, class: String, name: String, version: String },
    /// The gateway cannot decrypt the file (no envelope, revoked, rotated).
    #[error("{name}@{version} cannot be decrypted here: {why}")]
    KeyUnavailable { name: String, version: String, why: String },
}

impl OpenError {
    /// Refusals that are the caller's or the release's standing, not a missing thing (HTTP 403).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, OpenError::Refused { .. } | OpenError::NotCleared { .. } | OpenError::KeyUnavailable { .. })
    }
}

/// Who reads an opened file: a tenant gets the plaintext of an encrypted
/// file (if cleared and the gateway holds the key); the operator (pre-warm,
/// the C ABI's chunk checks) works on the stored ciphertext.
#[derive(Debug, Clone, Copy)]
pub enum Reader<'a> {
    Tenant(&'a Tenant),
    Operator,
}

/// Whether an opened release is still served: checked before each chunk
/// leaves, re-evaluated only when the catalog has been swapped since the
/// baseline, which is taken when the file is opened.
pub struct Liveness {
    epoch: Arc<AtomicU64>,
    seen: u64,
    gw: std::sync::Weak<Gateway>,
    release: Arc<Release>,
    /// For a plaintext read: the key id it decrypts with, which must stay usable.
    key_id: Option<String>,
    /// The tenant reading, whose clearance for the release's class must hold.
    reader: Option<Arc<str>>,
}

impl std::fmt::Debug for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Liveness").field("seen", &self.seen).finish_non_exhaustive()
    }
}

/// Taken before a catalog snapshot is read: the purge mark and the catalog
/// epoch. A swap after it (even one racing the snapshot) makes the body
/// check its release again before the next chunk.
#[derive(Debug, Clone, Copy)]
struct Baseline {
    mark: u64,
    seen: u64,
}

impl Baseline {
    fn take(gw: &Gateway) -> Self {
        let seen = gw.registry().epoch().load(Ordering::Acquire);
        Self { mark: gw.fetcher().purge_mark(), seen }
    }
}

impl Liveness {
    fn new(gw: &Arc<Gateway>, release: Arc<Release>, seen: u64) -> Self {
        Self { epoch: gw.registry().epoch(), seen, gw: Arc::downgrade(gw), release, key_id: None, reader: None }
    }

    /// `Ok` while the release is served and not taken down; the refusal once it is not.
    pub fn check(&mut self) -> Result<(), OpenError> {
        let now = self.epoch.load(Ordering::Acquire);
        if now == self.seen {
            return Ok(());
        }
        let Some(gw) = self.gw.upgrade() else {
            return Err(OpenError::UnknownDataset { name: self.release.name().to_string() });
        };
        let catalog = gw.registry().snapshot();
        let (name, version) = (self.release.name(), self.release.version());
        // A release that left the catalog (its key untrusted, its source
        // removed) or was replaced is no longer served either.
        match catalog.release(name, version) {
            Some(r) if r.signed.id == self.release.signed.id => {}
            _ => {
                return Err(OpenError::UnknownVersion { name: name.to_string(), segment: version.to_string() });
            }
        }
        taken_down(&catalog, name, version)?;
        if let Some(why) = catalog.refusal(&self.release.signed.id) {
            return Err(OpenError::Refused {
                name: name.to_string(),
                version: version.to_string(),
                why: why.to_string(),
            });
        }
        if let Some(id) = &self.reader {
            // A reload that withdrew the tenant's clearance (or changed the class) stops the body too.
            let tenants = gw.tenants();
            // A tenant the reload removed reads as anonymous (no clearances).
            if let Some(t) = tenants.tenant(id).or_else(|| tenants.tenant(crate::tenant::ANONYMOUS)) {
                cleared(&gw, &self.release, t)?;
            }
        }
        if let Some(want) = &self.key_id {
            // Revoked (envelope destroyed or rewrapped, wrapping key rotated) while streaming: stop.
            match catalog.key_state(&self.release.signed.id).map(|k| &**k) {
                Some(KeyState::Ready { key_id, .. }) if key_id == want => {}
                Some(KeyState::Unavailable(why)) => {
                    return Err(OpenError::KeyUnavailable {
                        name: name.to_string(),
                        version: version.to_string(),
                        why: why.clone(),
                    });
                }
                _ => {
                    return Err(OpenError::KeyUnavailable {
                        name: name.to_string(),
                        version: version.to_string(),
                        why: "its key changed".into(),
                    });
                }
            }
        }
        self.seen = now;
        Ok(())
    }
}

/// An opened file: what to stream, and the checks taken when it was opened.
#[derive(Debug)]
pub struct OpenFile {
    pub file: FileRef,
    pub spec: Arc<FileSpec>,
    /// What the version segment named (`None` for a blob).
    pub resolved: Option<Resolved>,
    /// The snapshot the file was resolved in.
    pub catalog: Arc<Catalog>,
    pub liveness: Liveness,
    /// Set when the reader gets the plaintext of an encrypted file.
    pub plain: Option<Arc<PlainView>>,
}

/// Refuses a taken-down release.
pub fn taken_down(catalog: &Catalog, name: &str, v: &semver::Version) -> Result<(), OpenError> {
    let state = catalog.state(name, v);
    match &state.taken_down {
        None => Ok(()),
        Some(t) => Err(OpenError::TakenDown {
            name: name.to_string(),
            version: v.clone(),
            reason: t.reason.clone(),
            at: t.at,
            successor: state.successor().map(|s| s.to_string()),
        }),
    }
}

/// Resolves `name` and a version or tag to a served, live release.
pub fn open_release(
    gw: &Gateway,
    name: &str,
    segment: &str,
) -> Result<(Arc<Catalog>, Resolved, Arc<Release>), OpenError> {
    let catalog = gw.registry().snapshot();
    let resolved = catalog.resolve(name, segment);
    let release = resolved.as_ref().and_then(|r| catalog.release(name, r.version()).cloned());
    let (Some(resolved), Some(release)) = (resolved, release) else {
        let unloaded: Vec<_> = gw.unloaded().iter().filter(|u| u.retry).cloned().collect();
        if !unloaded.is_empty() {
            let why = unloaded.iter().map(|u| u.to_string()).collect::<Vec<_>>().join("; ");
            return Err(OpenError::NotLoaded {
                name: name.to_string(),
                segment: segment.to_string(),
                count: unloaded.len(),
                why,
            });
        }
        if catalog.versions(name).is_none() {
            return Err(OpenError::UnknownDataset { name: name.to_string() });
        }
        return Err(OpenError::UnknownVersion { name: name.to_string(), segment: segment.to_string() });
    };
    taken_down(&catalog, name, resolved.version())?;
    refused(&catalog, &release)?;
    Ok((catalog, resolved, release))
}

/// Refuses a release that breaks its policy class.
fn refused(catalog: &Catalog, release: &Release) -> Result<(), OpenError> {
    match catalog.refusal(&release.signed.id) {
        None => Ok(()),
        Some(why) => Err(OpenError::Refused {
            name: release.name().to_string(),
            version: release.version().to_string(),
            why: why.to_string(),
        }),
    }
}

/// Whether discovery shows `release` to `tenant`: not refused by policy, and
/// the tenant is cleared for its class (dataset access is checked apart).
pub fn discoverable(gw: &Gateway, catalog: &Catalog, tenant: &Tenant, release: &Release) -> bool {
    if catalog.refusal(&release.signed.id).is_some() {
        return false;
    }
    match &gw.security().policy {
        Some(p) => p.cleared(p.class_name(&release.signed.manifest), &tenant.clearances),
        None => true,
    }
}

/// Refuses `tenant` a release whose class requires a clearance it lacks
/// (every file of it, encrypted or not, and by blob too).
pub fn cleared(gw: &Gateway, release: &Release, tenant: &Tenant) -> Result<(), OpenError> {
    let sec = gw.security();
    let Some(p) = &sec.policy else { return Ok(()) };
    let class = p.class_name(&release.signed.manifest);
    if p.cleared(class, &tenant.clearances) {
        return Ok(());
    }
    Err(OpenError::NotCleared {
        tenant: tenant.id.to_string(),
        class: class.to_string(),
        name: release.name().to_string(),
        version: release.version().to_string(),
    })
}

/// The plaintext view of an encrypted file (the reader's clearance was checked).
fn plaintext(catalog: &Catalog, file: &FileRef) -> Result<Arc<PlainView>, OpenError> {
    let r = &file.release;
    let (name, version) = (r.name().to_string(), r.version().to_string());
    let state = catalog.key_state(&r.signed.id);
    match state.map(|k| k.view(file.index)) {
        Some(Ok(Some(view))) => Ok(view.clone()),
        Some(Err(why)) => Err(OpenError::KeyUnavailable { name, version, why: why.to_string() }),
        _ => Err(OpenError::KeyUnavailable { name, version, why: "no key state for an encrypted file".into() }),
    }
}

/// Opens `path` of release `name@segment` (a version or a tag) for `reader`.
pub fn open_file(
    gw: &Arc<Gateway>,
    name: &str,
    segment: &str,
    path: &str,
    reader: Reader<'_>,
) -> Result<OpenFile, OpenError> {
    // Before the snapshot: a purge after the mark keeps this read's chunks
    // out of the tiers, and a swap after the epoch is checked again.
    let base = Baseline::take(gw);
    let (catalog, resolved, _) = open_release(gw, name, segment)?;
    let v = resolved.version();
    let Some(file) = catalog.file(name, v, path) else {
        return Err(OpenError::UnknownFile { name: name.to_string(), version: v.to_string(), path: path.to_string() });
    };
    let plain = match reader {
        Reader::Tenant(t) => {
            cleared(gw, &file.release, t)?;
            match file.entry().encryption {
                Some(_) => Some(plaintext(&catalog, &file)?),
                None => None,
            }
        }
        Reader::Operator => None,
    };
    let mut open = opened(gw, file, Some(resolved), catalog, base)?;
    if let Reader::Tenant(t) = reader {
        open.liveness.reader = Some(t.id.clone());
    }
    if let Some(p) = plain {
        open.liveness.key_id = open.file.entry().encryption.as_ref().map(|e| e.key_id.clone());
        open.plain = Some(p);
    }
    Ok(open)
}

/// Opens the blob `hash` in a live release that holds it and that `tenant`
/// may read; a blob held only by taken-down releases is refused as taken down.
pub fn open_blob(gw: &Arc<Gateway>, hash: &Blake3, tenant: &Tenant) -> Result<OpenFile, OpenError> {
    open_by_hash(gw, hash, tenant, |c, h, may| c.blob_where(h, may))
}

/// Opens the file whose chunk table is `hash`, as [`open_blob`] opens a file:
/// the table is then the fetcher's verified one for that file.
pub fn open_table(gw: &Arc<Gateway>, hash: &Blake3, tenant: &Tenant) -> Result<OpenFile, OpenError> {
    open_by_hash(gw, hash, tenant, |c, h, may| c.table_where(h, may))
}

fn open_by_hash(
    gw: &Arc<Gateway>,
    hash: &Blake3,
    tenant: &Tenant,
    find: impl Fn(&Catalog, &Blake3, &dyn Fn(&str) -> bool) -> Option<FileRef>,
) -> Result<OpenFile, OpenError> {
    let base = Baseline::take(gw);
    let catalog = gw.registry().snapshot();
    let tenants = gw.tenants();
    let Some(file) = find(&catalog, hash, &|d| tenants.can_see(tenant, d)) else {
        return Err(OpenError::UnknownBlob { hash: hash.to_string() });
    };
    taken_down(&catalog, file.release.name(), file.release.version())?;
    refused(&catalog, &file.release)?;
    cleared(gw, &file.release, tenant)?;
    // A blob is served as stored: the ciphertext of an encrypted file.
    let mut open = opened(gw, file, None, catalog, base)?;
    open.liveness.reader = Some(tenant.id.clone());
    Ok(open)
}

/// Opens every file of a served, live release (or the named ones), for pre-warm.
pub fn open_files(gw: &Arc<Gateway>, name: &str, segment: &str, paths: &[String]) -> Result<Vec<OpenFile>, OpenError> {
    let base = Baseline::take(gw);
    let (catalog, resolved, release) = open_release(gw, name, segment)?;
    let v = resolved.version().clone();
    if let Some(missing) = paths.iter().find(|p| catalog.file(name, &v, p).is_none()) {
        return Err(OpenError::UnknownFile { name: name.to_string(), version: v.to_string(), path: missing.clone() });
    }
    (0..release.signed.manifest.files.len())
        .map(|index| FileRef { release: release.clone(), index })
        .filter(|f| paths.is_empty() || paths.iter().any(|p| p == &f.entry().path))
        .map(|f| opened(gw, f, Some(resolved.clone()), catalog.clone(), base))
        .collect()
}

fn opened(
    gw: &Arc<Gateway>,
    file: FileRef,
    resolved: Option<Resolved>,
    catalog: Arc<Catalog>,
    base: Baseline,
) -> Result<OpenFile, OpenError> {
    let spec =
        FileSpec::from_ref(&file, base.mark).ok_or_else(|| OpenError::BadLayout { path: file.entry().path.clone() })?;
    let liveness = Liveness::new(gw, file.release.clone(), base.seen);
    Ok(OpenFile { file, spec: Arc::new(spec), resolved, catalog, liveness, plain: None })
}
