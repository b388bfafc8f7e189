//! The admin API over gRPC (`shardgate.admin.v1.AdminService`): a thin
//! adapter from protobuf to the gateway's admin operations
//! ([`crate::lifecycle::admin`]), behind admin tokens checked in
//! [`super::TokenAuth`].

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::audit::ACTOR;
use crate::gateway::Gateway;
use crate::lifecycle::admin::{AdminError, version};
use crate::lifecycle::proto::admin_service_server::AdminService;
use crate::lifecycle::proto::{self};
use crate::registry::{self, Catalog};

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

fn key_status(s: crate::lifecycle::admin::KeyStatus) -> proto::KeyEnvelopeStatus {
    proto::KeyEnvelopeStatus {
        name: s.name,
        version: s.version,
        key_id: s.key_id,
        usable: s.reason.is_none(),
        reason: s.reason.unwrap_or_default(),
    }
}

/// The admin token's id, put in the request by the token check; every
/// change made for the request is recorded in the audit trail under it.
fn actor_of<T>(req: &Request<T>) -> String {
    req.extensions().get::<super::Actor>().map(|a| a.0.clone()).unwrap_or_else(|| "admin-token:unknown".into())
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<proto::PrewarmProgress, Status>> + Send>>;

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn register_release(
        &self,
        req: Request<proto::RegisterReleaseRequest>,
    ) -> Result<Response<proto::RegisterReleaseResponse>, Status> {
        let who = actor_of(&req);
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
        let reg = ACTOR.scope(who.clone(), self.gw.register_release(manifest, placement)).await?;
        Ok(Response::new(proto::RegisterReleaseResponse {
            name: reg.name,
            version: reg.version,
            release_id: reg.release_id,
            already_registered: reg.already_registered,
        }))
    }

    async fn set_tag(&self, req: Request<proto::SetTagRequest>) -> Result<Response<proto::SetTagResponse>, Status> {
        let who = actor_of(&req);
        let r = req.into_inner();
        let previous = ACTOR.scope(who.clone(), self.gw.set_tag(&r.name, &r.tag, &r.version)).await?;
        Ok(Response::new(proto::SetTagResponse { previous_version: previous.unwrap_or_default() }))
    }

    async fn deprecate(
        &self,
        req: Request<proto::DeprecateRequest>,
    ) -> Result<Response<proto::DeprecateResponse>, Status> {
        let who = actor_of(&req);
        let r = req.into_inner();
        let successor = Some(r.successor_version.as_str()).filter(|s| !s.is_empty());
        let sunset = Some(r.sunset).filter(|s| *s > 0);
        ACTOR.scope(who.clone(), self.gw.deprecate(&r.name, &r.version, successor, sunset, &r.reason)).await?;
        Ok(Response::new(proto::DeprecateResponse {}))
    }

    async fn takedown(
        &self,
        req: Request<proto::TakedownRequest>,
    ) -> Result<Response<proto::TakedownResponse>, Status> {
        let who = actor_of(&req);
        let r = req.into_inner();
        let purged = ACTOR.scope(who.clone(), self.gw.takedown(&r.name, &r.version, &r.reason)).await?;
        Ok(Response::new(proto::TakedownResponse { purged_files: purged }))
    }

    async fn put_key_envelope(
        &self,
        req: Request<proto::PutKeyEnvelopeRequest>,
    ) -> Result<Response<proto::KeyEnvelopeStatus>, Status> {
        let who = actor_of(&req);
        let s = ACTOR.scope(who.clone(), self.gw.put_key_envelope(req.into_inner().envelope)).await?;
        Ok(Response::new(key_status(s)))
    }

    async fn delete_key_envelope(
        &self,
        req: Request<proto::KeyEnvelopeRef>,
    ) -> Result<Response<proto::KeyEnvelopeStatus>, Status> {
        let who = actor_of(&req);
        let r = req.into_inner();
        let s = ACTOR.scope(who.clone(), self.gw.delete_key_envelope(&r.name, &r.version)).await?;
        Ok(Response::new(key_status(s)))
    }

    async fn get_key_envelope(
        &self,
        req: Request<proto::KeyEnvelopeRef>,
    ) -> Result<Response<proto::GetKeyEnvelopeResponse>, Status> {
        let r = req.into_inner();
        let envelope = self.gw.get_key_envelope(&r.name, &r.version).await?;
        Ok(Response::new(proto::GetKeyEnvelopeResponse { envelope }))
    }

    type PrewarmStream = ProgressStream;

    async fn prewarm(&self, req: Request<proto::PrewarmRequest>) -> Result<Response<Self::PrewarmStream>, Status> {
        let r = req.into_inner();
        let v = version(&r.version)?;
        // Opened through the front door before anything awaits: the purge
        // mark and liveness baseline are taken now, so a takedown that lands
        // while this waits for its turn keeps its chunks out of the tiers.
        let opened = crate::door::open_files(&self.gw, &r.name, &v.to_string(), &r.files).map_err(|e| match e {
            crate::door::OpenError::TakenDown { .. } | crate::door::OpenError::Refused { .. } => {
                AdminError::FailedPrecondition(e.to_string())
            }
            crate::door::OpenError::BadLayout { .. } => AdminError::Invalid(e.to_string()),
            _ => AdminError::NotFound(e.to_string()),
        })?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let gw = self.gw.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move { crate::prewarm::warm(&gw, opened, move || *stop.borrow(), tx).await });
        let rx = tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |m| match m {
            Ok(p) => Ok(proto::PrewarmProgress {
                file: p.file,
                chunks_done: p.chunks_done,
                chunks_total: p.chunks_total,
                bytes_done: p.bytes_done,
                bytes_total: p.bytes_total,
            }),
            Err(e @ crate::prewarm::PrewarmError::TakenDown) => Err(Status::failed_precondition(e.to_string())),
            Err(e) => Err(Status::unavailable(e.to_string())),
        });
        Ok(Response::new(Box::pin(rx)))
    }

    async fn export_audit(
        &self,
        req: Request<proto::ExportAuditRequest>,
    ) -> Result<Response<proto::ExportAuditResponse>, Status> {
        let r = req.into_inner();
        let limit = if r.limit == 0 { 1000 } else { r.limit.min(10_000) } as usize;
        // One more than asked: whether more follow.
        let mut entries = self.gw.audit_entries(r.after, limit + 1).await?;
        let more = entries.len() > limit;
        entries.truncate(limit);
        let entries = entries
            .into_iter()
            .map(|e| proto::AuditLine { seq: e.seq, line: String::from_utf8_lossy(&e.to_line()).into_owned() })
            .collect();
        Ok(Response::new(proto::ExportAuditResponse { entries, more }))
    }

    async fn release_status(
        &self,
        req: Request<proto::ReleaseStatusRequest>,
    ) -> Result<Response<proto::ReleaseStatusResponse>, Status> {
        let r = req.into_inner();
        let v = version(&r.version)?;
        if self.gw.registry().snapshot().release(&r.name, &v).is_none() {
            return Err(Status::not_found(format!("{}@{v} is not served here", r.name)));
        }
        let objective = self.gw.config().pin_health.repair_objective.as_secs_f64();
        let mut out = proto::ReleaseStatusResponse {
            name: r.name.clone(),
            version: v.to_string(),
            repair_objective_seconds: objective,
            ..Default::default()
        };
        if let Some(h) = self.gw.pin_health().release(&format!("{}@{v}", r.name)) {
            out.checked = true;
            out.replication_target = h.target as u64;
            out.blobs = h.blobs as u64;
            out.under_replicated = h.under_replicated as u64;
            out.checked_at = h.checked_at;
            out.nodes = h
                .nodes
                .into_iter()
                .map(|(node, n)| proto::NodePinStatus {
                    node,
                    expected: n.expected as u64,
                    holds: n.holds as u64,
                    lost: n.lost as u64,
                    reachable: n.reachable,
                    checked_at: n.checked_at,
                    error: n.error.unwrap_or_default(),
                    spare: n.spare,
                    sample: n.sample.unwrap_or_default(),
                    sample_failed: n.sample_failed,
                })
                .collect();
            out.repairs = h
                .repairs
                .into_iter()
                .map(|x| proto::RepairStatus {
                    at: x.at,
                    node: x.node,
                    blob: x.blob,
                    source: x.source.unwrap_or_default(),
                    ok: x.ok,
                    why: x.why,
                    seconds: x.seconds,
                })
                .collect();
        }
        Ok(Response::new(out))
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
