//! Admin operations on the gateway (register, tag, deprecate, take down,
//! pre-warm, list) and `shardgate.admin.v1.AdminService` over them.
//!
//! Each change runs under the gateway's admin lock: read the catalog, write
//! the store durably, then swap in a new catalog. A request sees the old
//! catalog or the new one, never half of a change.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::proto::admin_service_server::AdminService;
use super::proto::{self};
use super::{Deprecation, ReleaseState, StoreError, Takedown, check_tag};
use crate::gateway::Gateway;
use crate::registry::{self, Catalog, LoadError};
use crate::release::manifest::SignedManifest;
use crate::usage::unix_now;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "{name}@{version} is already registered as release {existing}; releases are immutable, so release {offered} is refused"
    )]
    AlreadyExists { name: String, version: String, existing: String, offered: String },
    #[error("{0}")]
    Untrusted(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<AdminError> for Status {
    fn from(e: AdminError) -> Self {
        let msg = e.to_string();
        match e {
            AdminError::AlreadyExists { .. } => Status::already_exists(msg),
            AdminError::Untrusted(_) => Status::permission_denied(msg),
            AdminError::Invalid(_) => Status::invalid_argument(msg),
            AdminError::NotFound(_) => Status::not_found(msg),
            AdminError::FailedPrecondition(_) => Status::failed_precondition(msg),
            AdminError::Unavailable(_) | AdminError::Store(_) => Status::unavailable(msg),
        }
    }
}

/// What `register_release` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub name: String,
    pub version: String,
    pub release_id: String,
    pub already_registered: bool,
}

fn version(v: &str) -> Result<semver::Version, AdminError> {
    semver::Version::parse(v).map_err(|e| AdminError::Invalid(format!("{v:?} is not a version: {e}")))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, AdminError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| AdminError::Unavailable(e.to_string()))?.map_err(Into::into)
}

impl Gateway {
    fn served(&self, c: &Catalog, name: &str, v: &semver::Version) -> Result<(), AdminError> {
        c.release(name, v).map(|_| ()).ok_or_else(|| AdminError::NotFound(format!("{name}@{v} is not served here")))
    }

    /// Registers a signed release. The same manifest again is a success; a
    /// different one for a served name and version is refused, naming both.
    pub async fn register_release(
        &self,
        manifest: Vec<u8>,
        placement: Option<Vec<u8>>,
    ) -> Result<Registration, AdminError> {
        let signed = SignedManifest::parse(&manifest).map_err(|e| AdminError::Invalid(format!("manifest: {e}")))?;
        let trusted = crate::gateway::trusted_keys(&self.config()).map_err(|e| AdminError::Invalid(e.to_string()))?;
        signed.check_trust(&trusted).map_err(|e| AdminError::Untrusted(e.to_string()))?;
        let release = registry::release_from_bytes(&manifest, placement.as_deref(), &trusted).map_err(|e| match e {
            LoadError::Source { why, .. } | LoadError::Refused { why, .. } => AdminError::Invalid(why),
        })?;
        let (name, ver, id) = (release.name().to_string(), release.version().clone(), release.signed.id);
        let reg = |already| Registration {
            name: name.clone(),
            version: ver.to_string(),
            release_id: id.to_hex(),
            already_registered: already,
        };
        let _guard = self.admin_lock().lock().await;
        let current = self.registry().snapshot();
        if let Some(existing) = current.release(&name, &ver) {
            if existing.signed.id != id {
                return Err(AdminError::AlreadyExists {
                    name,
                    version: ver.to_string(),
                    existing: existing.signed.id.to_hex(),
                    offered: id.to_hex(),
                });
            }
            if current.is_registered(&name, &ver) {
                return Ok(reg(true));
            }
        }
        let store = self.store().clone();
        let (n, v) = (name.clone(), ver.clone());
        blocking(move || store.put_release(&n, &v, &manifest, placement.as_deref())).await?;
        let mut next = (*current).clone();
        if current.release(&name, &ver).is_none() {
            next.insert(release).map_err(|e| AdminError::Invalid(e.to_string()))?;
        }
        next.mark_registered(&name, &ver);
        self.metrics().releases.set(next.release_count() as i64);
        self.registry().replace(next);
        tracing::info!(release = %format!("{name}@{ver}"), id = %id, "release registered");
        Ok(reg(false))
    }

    /// Fetches `spec` (a path or `cid:<CID>`) through the gateway's origins.
    pub async fn fetch_source(&self, spec: &str) -> Result<Vec<u8>, AdminError> {
        registry::read_source(spec, &self.fetcher().origins(), |b| Ok(b.to_vec()))
            .await
            .map_err(AdminError::Unavailable)
    }

    /// Applies a lifecycle change: store first, then the catalog.
    async fn change_lifecycle(
        &self,
        f: impl FnOnce(&Catalog) -> Result<Change, AdminError>,
    ) -> Result<(Catalog, Change), AdminError> {
        let _guard = self.admin_lock().lock().await;
        let current = self.registry().snapshot();
        let change = f(&current)?;
        let store = self.store().clone();
        let c = change.clone();
        let lifecycle = blocking(move || {
            match &c {
                Change::Tag { name, tag, version, .. } => store.set_tag(name, tag, version)?,
                Change::State { name, version, state } => store.set_state(name, version, state)?,
            }
            store.lifecycle()
        })
        .await?;
        let mut next = (*current).clone();
        next.set_lifecycle(lifecycle);
        self.registry().replace(next.clone());
        Ok((next, change))
    }

    /// Points `tag` at `version`; returns the version it pointed at before.
    pub async fn set_tag(&self, name: &str, tag: &str, ver: &str) -> Result<Option<String>, AdminError> {
        check_tag(tag).map_err(AdminError::Invalid)?;
        let v = version(ver)?;
        let (_, change) = self
            .change_lifecycle(|c| {
                self.served(c, name, &v)?;
                if c.state(name, &v).taken_down.is_some() {
                    return Err(AdminError::FailedPrecondition(format!(
                        "{name}@{v} is taken down; it cannot be tagged"
                    )));
                }
                let previous = c.lifecycle().tag(name, tag).map(ToString::to_string);
                Ok(Change::Tag { name: name.into(), tag: tag.into(), version: v.clone(), previous })
            })
            .await?;
        tracing::info!(dataset = name, tag, version = %v, "tag set");
        Ok(match change {
            Change::Tag { previous, .. } => previous,
            Change::State { .. } => None,
        })
    }

    pub async fn deprecate(
        &self,
        name: &str,
        ver: &str,
        successor: Option<&str>,
        sunset: Option<i64>,
        reason: &str,
    ) -> Result<(), AdminError> {
        let v = version(ver)?;
        let successor = successor.map(version).transpose()?;
        self.change_lifecycle(|c| {
            self.served(c, name, &v)?;
            if let Some(s) = &successor {
                if s == &v {
                    return Err(AdminError::Invalid(format!("{name}@{v} cannot succeed itself")));
                }
                self.served(c, name, s)?;
            }
            let mut state = c.state(name, &v);
            state.deprecated =
                Some(Deprecation { successor: successor.clone(), sunset, reason: reason.to_string(), at: unix_now() });
            Ok(Change::State { name: name.into(), version: v.clone(), state })
        })
        .await?;
        tracing::info!(release = %format!("{name}@{v}"), "release deprecated");
        Ok(())
    }

    /// Takes a release down; drops from the hot tier the files no live
    /// release still uses. Returns how many files were dropped.
    pub async fn takedown(&self, name: &str, ver: &str, reason: &str) -> Result<u64, AdminError> {
        let v = version(ver)?;
        if reason.trim().is_empty() {
            return Err(AdminError::Invalid("a takedown needs a reason".into()));
        }
        let (catalog, _) = self
            .change_lifecycle(|c| {
                self.served(c, name, &v)?;
                let mut state = c.state(name, &v);
                state.taken_down = Some(Takedown { reason: reason.to_string(), at: unix_now() });
                Ok(Change::State { name: name.into(), version: v.clone(), state })
            })
            .await?;
        let mut purged = 0;
        if let Some(r) = catalog.release(name, &v) {
            for f in &r.signed.manifest.files {
                if !catalog.live_uses(&f.blake3) {
                    if let Err(e) = self.fetcher().purge_file(f.blake3) {
                        tracing::warn!(file = %f.blake3, error = %e, "hot-tier purge failed");
                        continue;
                    }
                    purged += 1;
                }
            }
        }
        self.metrics().hot_purged_files.inc_by(purged);
        tracing::warn!(release = %format!("{name}@{v}"), reason, purged_files = purged, "release taken down");
        Ok(purged)
    }
}

/// A lifecycle change to record.
#[derive(Debug, Clone)]
enum Change {
    Tag { name: String, tag: String, version: semver::Version, previous: Option<String> },
    State { name: String, version: semver::Version, state: ReleaseState },
}

/// Pre-warms one release at a time, so pre-warming never takes more than
/// one span's worth of origin and CPU from foreground traffic.
static PREWARM: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

#[derive(Debug, Clone)]
pub struct AdminApi {
    gw: Arc<Gateway>,
    stop: watch::Receiver<bool>,
}

impl AdminApi {
    pub fn new(gw: Arc<Gateway>, stop: watch::Receiver<bool>) -> Self {
        Self { gw, stop }
    }
}

fn info(c: &Catalog, r: &registry::Release) -> proto::ReleaseInfo {
    let (name, v) = (r.name(), r.version());
    let state = c.state(name, v);
    let m = &r.signed.manifest;
    let proto_state = match state.label() {
        "taken_down" => proto::State::TakenDown,
        "deprecated" => proto::State::Deprecated,
        _ => proto::State::Active,
    };
    let reason = state
        .taken_down
        .as_ref()
        .map(|t| t.reason.clone())
        .or_else(|| state.deprecated.as_ref().map(|d| d.reason.clone()))
        .unwrap_or_default();
    proto::ReleaseInfo {
        name: name.to_string(),
        version: v.to_string(),
        release_id: r.signed.id.to_hex(),
        signer: r.signed.signer.to_string(),
        state: proto_state.into(),
        files: m.files.len() as u64,
        total_bytes: m.total_bytes,
        tags: c.lifecycle().tags_of(name, v),
        successor_version: state.successor().map(ToString::to_string).unwrap_or_default(),
        sunset: state.deprecated.as_ref().and_then(|d| d.sunset).unwrap_or(0),
        reason,
        origin: if c.is_registered(name, v) { "registry" } else { "config" }.into(),
    }
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<proto::PrewarmProgress, Status>> + Send>>;

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn register_release(
        &self,
        req: Request<proto::RegisterReleaseRequest>,
    ) -> Result<Response<proto::RegisterReleaseResponse>, Status> {
        use proto::register_release_request::{Manifest, Placement};
        let r = req.into_inner();
        let manifest = match r.manifest {
            Some(Manifest::ManifestBytes(b)) => b,
            Some(Manifest::ManifestCid(cid)) => self.gw.fetch_source(&format!("cid:{cid}")).await?,
            None => return Err(Status::invalid_argument("manifest_bytes or manifest_cid is required")),
        };
        let placement = match r.placement {
            Some(Placement::PlacementBytes(b)) => Some(b),
            Some(Placement::PlacementCid(cid)) => Some(self.gw.fetch_source(&format!("cid:{cid}")).await?),
            None => None,
        };
        let reg = self.gw.register_release(manifest, placement).await?;
        Ok(Response::new(proto::RegisterReleaseResponse {
            name: reg.name,
            version: reg.version,
            release_id: reg.release_id,
            already_registered: reg.already_registered,
        }))
    }

    async fn set_tag(&self, req: Request<proto::SetTagRequest>) -> Result<Response<proto::SetTagResponse>, Status> {
        let r = req.into_inner();
        let previous = self.gw.set_tag(&r.name, &r.tag, &r.version).await?;
        Ok(Response::new(proto::SetTagResponse { previous_version: previous.unwrap_or_default() }))
    }

    async fn deprecate(
        &self,
        req: Request<proto::DeprecateRequest>,
    ) -> Result<Response<proto::DeprecateResponse>, Status> {
        let r = req.into_inner();
        let successor = Some(r.successor_version.as_str()).filter(|s| !s.is_empty());
        let sunset = Some(r.sunset).filter(|s| *s > 0);
        self.gw.deprecate(&r.name, &r.version, successor, sunset, &r.reason).await?;
        Ok(Response::new(proto::DeprecateResponse {}))
    }

    async fn takedown(
        &self,
        req: Request<proto::TakedownRequest>,
    ) -> Result<Response<proto::TakedownResponse>, Status> {
        let r = req.into_inner();
        let purged = self.gw.takedown(&r.name, &r.version, &r.reason).await?;
        Ok(Response::new(proto::TakedownResponse { purged_files: purged }))
    }

    type PrewarmStream = ProgressStream;

    async fn prewarm(&self, req: Request<proto::PrewarmRequest>) -> Result<Response<Self::PrewarmStream>, Status> {
        let r = req.into_inner();
        let v = version(&r.version)?;
        // Opened through the front door before anything awaits: the purge
        // mark and liveness baseline are taken now, so a takedown that lands
        // while this waits for its turn keeps its chunks out of the tiers.
        let opened = crate::door::open_files(&self.gw, &r.name, &v.to_string(), &r.files).map_err(|e| match e {
            crate::door::OpenError::TakenDown { .. } => AdminError::FailedPrecondition(e.to_string()),
            crate::door::OpenError::BadLayout { .. } => AdminError::Invalid(e.to_string()),
            _ => AdminError::NotFound(e.to_string()),
        })?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let gw = self.gw.clone();
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            let _one_at_a_time = PREWARM.acquire().await;
            let bytes_total: u64 = opened.iter().map(|o| o.file.entry().size).sum();
            let mut p = proto::PrewarmProgress { bytes_total, ..Default::default() };
            p.chunks_total = opened.iter().map(|o| o.spec.layout.chunk_count()).sum();
            let span = gw.config().fetch.span.0;
            for mut open in opened {
                let spec = open.spec.clone();
                p.file = open.file.entry().path.clone();
                let per_span = (span / spec.layout.chunk_size()).max(1);
                let count = spec.layout.chunk_count();
                for i in 0..count {
                    if *stop.borrow_and_update() {
                        return;
                    }
                    if i % per_span == 0 && open.liveness.check().is_err() {
                        let _ = tx
                            .send(Err(Status::failed_precondition("the release was taken down during the pre-warm")))
                            .await;
                        return;
                    }
                    let end = (i - i % per_span + per_span).min(count);
                    match gw.fetcher().chunk(&spec, i, end).await {
                        Ok((b, _)) => p.bytes_done += b.len() as u64,
                        Err(e) => {
                            let _ = tx.send(Err(Status::unavailable(format!("{}: {e}", p.file)))).await;
                            return;
                        }
                    }
                    p.chunks_done += 1;
                    // Low priority: give way to foreground requests between chunks.
                    tokio::task::yield_now().await;
                    let step = (i + 1) % per_span == 0 || i + 1 == count;
                    if step && tx.send(Ok(p.clone())).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn list_releases(
        &self,
        req: Request<proto::ListReleasesRequest>,
    ) -> Result<Response<proto::ListReleasesResponse>, Status> {
        let r = req.into_inner();
        let c = self.gw.registry().snapshot();
        let releases = c
            .names()
            .filter(|(n, _)| r.name.as_deref().is_none_or(|want| want == n.as_str()))
            .flat_map(|(_, versions)| versions.values())
            .map(|rel| info(&c, rel))
            .collect();
        Ok(Response::new(proto::ListReleasesResponse { releases }))
    }
}
