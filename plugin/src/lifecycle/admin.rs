//! Admin operations on the gateway (register, tag, deprecate, take down);
//! `shardgate.admin.v1.AdminService` over them (with pre-warm and listing)
//! is in [`crate::grpc::admin`].
//!
//! Each change runs under the gateway's admin lock: read the catalog, write
//! the store durably, then swap in a new catalog. A request sees the old
//! catalog or the new one, never half of a change.

use tonic::Status;

use super::{Deprecation, ReleaseState, StoreError, Takedown, check_tag};
use crate::audit::{Event, actor};
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

/// Whether the gateway can decrypt a release after a key envelope change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    pub name: String,
    pub version: String,
    pub key_id: String,
    /// Why it cannot decrypt, if it cannot.
    pub reason: Option<String>,
}

/// What `register_release` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub name: String,
    pub version: String,
    pub release_id: String,
    pub already_registered: bool,
}

pub(crate) fn version(v: &str) -> Result<semver::Version, AdminError> {
    semver::Version::parse(v).map_err(|e| AdminError::Invalid(format!("{v:?} is not a version: {e}")))
}

pub(crate) async fn blocking<T: Send + 'static>(
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
        if let Some(p) = &self.security().policy {
            p.check(&release.signed.manifest).map_err(|e| AdminError::FailedPrecondition(e.to_string()))?;
        }
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
        // What the publisher did before registering is recorded with it: the
        // sign-offs the release carries and where it was published.
        let approvals: Vec<serde_json::Value> = release
            .signed
            .manifest
            .approvals
            .iter()
            .map(|a| serde_json::json!({"role": a.role, "public_key": a.public_key, "at": a.at.to_string()}))
            .collect();
        let mut audit = Event::new(&actor(), "register")
            .release(&name, &ver, Some(id.to_hex()))
            .with("signer", release.signed.signer.to_string())
            .with("approvals", approvals);
        if let Some(p) = &release.placement {
            let mut nodes: Vec<&str> = p.blobs.values().flat_map(|b| b.nodes.iter().map(String::as_str)).collect();
            nodes.sort_unstable();
            nodes.dedup();
            audit = audit
                .with("manifest_cid", p.manifest_cid.clone().unwrap_or_default())
                .with("published_on", nodes.into_iter().map(str::to_string).collect::<Vec<_>>());
        }
        blocking(move || store.put_release(&n, &v, &manifest, placement.as_deref(), audit)).await?;
        let mut next = (*current).clone();
        if current.release(&name, &ver).is_none() {
            next.insert(release).map_err(|e| AdminError::Invalid(e.to_string()))?;
        }
        next.mark_registered(&name, &ver);
        self.secure(&mut next).await?;
        self.metrics().releases.set(next.release_count() as i64);
        self.registry().replace(next);
        tracing::info!(release = %format!("{name}@{ver}"), id = %id, "release registered");
        Ok(reg(false))
    }

    /// The key state of `name@v` in `c`, as a status.
    fn key_status(c: &Catalog, name: &str, v: &semver::Version, key_id: String) -> KeyStatus {
        let reason = match c.release(name, v) {
            None => Some(format!("{name}@{v} is not served here yet; the envelope is kept for when it is")),
            Some(r) => match c.key_state(&r.signed.id).map(|k| &**k) {
                None => Some(format!("{name}@{v} has no encrypted files")),
                Some(crate::crypt::access::KeyState::Unavailable(why)) => Some(why.clone()),
                Some(crate::crypt::access::KeyState::Ready { .. }) => None,
            },
        };
        KeyStatus { name: name.to_string(), version: v.to_string(), key_id, reason }
    }

    /// Re-checks keys after an envelope changed in the store. If that fails,
    /// the release's old key is withdrawn anyway (the catalog is swapped with
    /// it unavailable): a revocation is never lost to a store error.
    async fn secure_after_key_change(
        &self,
        next: &mut Catalog,
        name: &str,
        v: &semver::Version,
    ) -> Result<(), AdminError> {
        if let Err(e) = self.secure(next).await {
            if let Some(r) = next.release(name, v).cloned() {
                let why = format!("its key envelope changed and the registry could not be re-read: {e}");
                next.set_key_state(r.signed.id, std::sync::Arc::new(crate::crypt::access::KeyState::Unavailable(why)));
                self.registry().replace(next.clone());
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Registers (or replaces) a release's key envelope, and says whether
    /// the gateway can decrypt the release with it.
    pub async fn put_key_envelope(&self, bytes: Vec<u8>) -> Result<KeyStatus, AdminError> {
        let env = crate::crypt::envelope::KeyEnvelope::parse(&bytes).map_err(|e| AdminError::Invalid(e.to_string()))?;
        let _guard = self.admin_lock().lock().await;
        let current = self.registry().snapshot();
        if let Some(r) = current.release(&env.name, &env.version)
            && let Some(f) = r.signed.manifest.files.iter().find_map(|f| f.encryption.as_ref())
            && f.key_id != env.key_id
        {
            return Err(AdminError::Invalid(format!(
                "the envelope holds key {}, but {} is encrypted with key {}",
                env.key_id,
                env.release(),
                f.key_id
            )));
        }
        let store = self.store().clone();
        let (n, v) = (env.name.clone(), env.version.clone());
        let audit = Event::new(&actor(), "key_envelope_put")
            .release(&n, &v, current.release(&n, &v).map(|r| r.signed.id.to_hex()))
            .with("key_id", env.key_id.clone());
        blocking(move || store.put_key_envelope(&n, &v, &bytes, audit)).await?;
        let mut next = (*current).clone();
        self.secure_after_key_change(&mut next, &env.name, &env.version).await?;
        let status = Self::key_status(&next, &env.name, &env.version, env.key_id.clone());
        self.registry().replace(next);
        tracing::info!(release = %env.release(), key = %env.key_id, usable = status.reason.is_none(), "key envelope registered");
        Ok(status)
    }

    /// Destroys a release's key envelope: the gateway stops decrypting it with this swap.
    pub async fn delete_key_envelope(&self, name: &str, ver: &str) -> Result<KeyStatus, AdminError> {
        let v = version(ver)?;
        let _guard = self.admin_lock().lock().await;
        let store = self.store().clone();
        let (n, vv) = (name.to_string(), v.clone());
        let id = self.registry().snapshot().release(name, &v).map(|r| r.signed.id.to_hex());
        let audit = Event::new(&actor(), "key_envelope_delete").release(name, &v, id);
        let old = blocking(move || {
            let old = store.key_envelope(&n, &vv)?;
            let key_id =
                old.as_deref().and_then(|o| crate::crypt::envelope::KeyEnvelope::parse(o).ok()).map(|e| e.key_id);
            store.delete_key_envelope(&n, &vv, audit.with("key_id", key_id.unwrap_or_default()))?;
            Ok(old)
        })
        .await?;
        let Some(old) = old else {
            return Err(AdminError::NotFound(format!("no key envelope is registered for {name}@{v}")));
        };
        let key_id = crate::crypt::envelope::KeyEnvelope::parse(&old).map(|e| e.key_id).unwrap_or_default();
        let mut next = (*self.registry().snapshot()).clone();
        self.secure_after_key_change(&mut next, name, &v).await?;
        let status = Self::key_status(&next, name, &v, key_id);
        self.registry().replace(next);
        tracing::info!(release = %format!("{name}@{v}"), "key envelope destroyed");
        Ok(status)
    }

    /// The registered key envelope (wrapped keys only).
    pub async fn get_key_envelope(&self, name: &str, ver: &str) -> Result<Vec<u8>, AdminError> {
        let v = version(ver)?;
        let store = self.store().clone();
        let (n, vv) = (name.to_string(), v.clone());
        blocking(move || store.key_envelope(&n, &vv))
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("no key envelope is registered for {name}@{v}")))
    }

    /// Up to `limit` audit entries after `after` (from the first when `None`).
    pub async fn audit_entries(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<crate::audit::Entry>, AdminError> {
        let store = self.store().clone();
        blocking(move || store.audit_entries(after, limit)).await
    }

    /// Appends an event that changes nothing else (a repair) to the audit trail.
    pub async fn audit(&self, event: Event) -> Result<crate::audit::Entry, AdminError> {
        let store = self.store().clone();
        blocking(move || store.audit(event)).await
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
        let who = actor();
        let id = |name: &str, v: &semver::Version| current.release(name, v).map(|r| r.signed.id.to_hex());
        let audit = match &change {
            Change::Tag { name, tag, version, previous } => Event::new(&who, "tag")
                .release(name, version, id(name, version))
                .with("tag", tag.clone())
                .with("previous", previous.clone().unwrap_or_default()),
            Change::State { name, version, state, event } => {
                let was = current.state(name, version);
                let ev = match (event, &state.taken_down, &state.deprecated) {
                    (StateEvent::Takedown, Some(t), _) => {
                        let ev = Event::new(&who, "takedown").with("reason", t.reason.clone());
                        // A second takedown replaces the reason: the entry keeps the one it replaced.
                        match &was.taken_down {
                            Some(before) => ev.with("previous_reason", before.reason.clone()),
                            None => ev,
                        }
                    }
                    (StateEvent::Deprecate, _, Some(d)) => Event::new(&who, "deprecate")
                        .with("reason", d.reason.clone())
                        .with("successor", d.successor.as_ref().map(ToString::to_string).unwrap_or_default())
                        .with("sunset", d.sunset.unwrap_or(0)),
                    _ => Event::new(&who, "state").with("state", state.label()),
                };
                ev.release(name, version, id(name, version))
            }
        };
        let lifecycle = blocking(move || {
            match &c {
                Change::Tag { name, tag, version, .. } => store.set_tag(name, tag, version, audit)?,
                Change::State { name, version, state, .. } => store.set_state(name, version, state, audit)?,
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
            Ok(Change::State { name: name.into(), version: v.clone(), state, event: StateEvent::Deprecate })
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
                Ok(Change::State { name: name.into(), version: v.clone(), state, event: StateEvent::Takedown })
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
    State { name: String, version: semver::Version, state: ReleaseState, event: StateEvent },
}

/// Which admin call changed a release's state, for its audit entry.
#[derive(Debug, Clone, Copy)]
enum StateEvent {
    Deprecate,
    Takedown,
}
