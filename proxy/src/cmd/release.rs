//! `shardgate release`: the admin API of a gateway, from the command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use shardgate::lifecycle::proto::admin_service_client::AdminServiceClient;
use shardgate::lifecycle::proto::{self, register_release_request};
use shardgate::release::layout::ReleaseDir;
use shardgate::tenant::new_key;

use super::grpc_client::{self, Endpoint, authed, status};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Args)]
pub struct Admin {
    #[command(flatten)]
    pub endpoint: Endpoint,
    /// Admin token.
    #[arg(long, env = "SHARDGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: String,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Make an admin token for `grpc.admin_tokens`. Printed once; only its hash goes in config.
    Token,
    /// Register a release with the gateway: a release directory (manifest and placement) or a manifest CID.
    Register {
        /// Release directory or manifest.json.
        release: Option<PathBuf>,
        /// Register by manifest CID instead (fetched by the gateway from its btfs-api origins).
        #[arg(long, conflicts_with = "release")]
        cid: Option<String>,
        /// Placement CID to go with --cid.
        #[arg(long, requires = "cid")]
        placement_cid: Option<String>,
        #[command(flatten)]
        admin: Admin,
    },
    /// Point a tag (latest, stable, any name that is not a version) at a version.
    Tag {
        name: String,
        tag: String,
        version: String,
        #[command(flatten)]
        admin: Admin,
    },
    /// Deprecate NAME@VERSION: still served, with Deprecation, Sunset and successor headers.
    Deprecate {
        release: String,
        /// The version that replaces it.
        #[arg(long)]
        successor: Option<String>,
        /// When it may stop being served (RFC 3339, e.g. 2027-01-15T00:00:00Z).
        #[arg(long)]
        sunset: Option<jiff::Timestamp>,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        admin: Admin,
    },
    /// Take NAME@VERSION down: its files and manifest answer 451.
    Takedown {
        release: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        admin: Admin,
    },
    /// Load NAME@VERSION (or some of its files) into the gateway's hot tier, showing progress.
    Prewarm {
        release: String,
        /// Only these files (repeatable).
        #[arg(long = "file")]
        files: Vec<String>,
        /// The gateway's gRPC address (one gateway warms the release).
        #[arg(long = "api", alias = "admin", alias = "gateway", required_unless_present = "via")]
        api: Option<String>,
        /// PEM CA certificate that signed the gRPC listener's TLS certificate.
        #[arg(long, requires = "api")]
        ca: Option<PathBuf>,
        /// A fleet's balancer (its HTTP URL): each file is warmed on the member the
        /// balancer sends that file to, and the report says which member warmed what.
        #[arg(long, conflicts_with = "api")]
        via: Option<String>,
        /// Files warmed at once through --via (each member warms one at a time).
        #[arg(long, default_value_t = 4, requires = "via", value_parser = clap::value_parser!(u16).range(1..=64))]
        jobs: u16,
        /// Admin token.
        #[arg(long, env = "SHARDGATE_ADMIN_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Pin health of NAME@VERSION: for each node, what it holds and when it was last checked; repairs made.
    Status {
        release: String,
        #[command(flatten)]
        admin: Admin,
    },
    /// The gateway's releases, tags and states, as JSON lines.
    List {
        name: Option<String>,
        #[command(flatten)]
        admin: Admin,
    },
}

pub fn split_release(s: &str) -> anyhow::Result<(String, String)> {
    let (n, v) = s.rsplit_once('@').with_context(|| format!("{s:?} is not NAME@VERSION"))?;
    Ok((n.to_string(), v.to_string()))
}

pub async fn client(a: &Admin) -> anyhow::Result<AdminServiceClient<tonic::transport::Channel>> {
    Ok(AdminServiceClient::new(grpc_client::connect(&a.endpoint.url, a.endpoint.ca.as_deref()).await?))
}

/// Registers a release directory's manifest and placement with a gateway.
pub async fn register_dir(dir: &Path, admin: &Admin) -> anyhow::Result<proto::RegisterReleaseResponse> {
    let rd = ReleaseDir::from_arg(dir);
    let manifest = std::fs::read(rd.manifest()).with_context(|| format!("{}", rd.manifest().display()))?;
    let placement = std::fs::read(rd.placement()).ok();
    let req = proto::RegisterReleaseRequest {
        manifest: Some(register_release_request::Manifest::ManifestBytes(manifest)),
        placement: placement.map(register_release_request::Placement::PlacementBytes),
    };
    Ok(client(admin).await?.register_release(authed(req, &admin.token)?).await.map_err(status)?.into_inner())
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    if let Action::Token = a.action {
        let (token, hash) = new_key().map_err(anyhow::Error::msg)?;
        println!("{token}");
        eprintln!(
            "Give the token above to release administrators; it is not stored anywhere and cannot be shown again."
        );
        eprintln!("Add its hash to the gateway config:\n");
        eprintln!("[grpc]\nadmin_tokens = [\"{hash}\"]");
        return Ok(ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run_admin(a.action))
}

async fn run_admin(action: Action) -> anyhow::Result<ExitCode> {
    match action {
        Action::Token => Ok(ExitCode::SUCCESS),
        Action::Register { release, cid, placement_cid, admin } => {
            let r = match (release, cid) {
                (Some(dir), None) => register_dir(&dir, &admin).await?,
                (None, Some(cid)) => {
                    let req = proto::RegisterReleaseRequest {
                        manifest: Some(register_release_request::Manifest::ManifestCid(cid)),
                        placement: placement_cid.map(register_release_request::Placement::PlacementCid),
                    };
                    client(&admin)
                        .await?
                        .register_release(authed(req, &admin.token)?)
                        .await
                        .map_err(status)?
                        .into_inner()
                }
                _ => anyhow::bail!("give a release directory or --cid"),
            };
            let what = if r.already_registered { "already registered" } else { "registered" };
            eprintln!("{what} {}@{} (release {})", r.name, r.version, r.release_id);
            Ok(ExitCode::SUCCESS)
        }
        Action::Tag { name, tag, version, admin } => {
            let req = proto::SetTagRequest { name: name.clone(), tag: tag.clone(), version: version.clone() };
            let r = client(&admin).await?.set_tag(authed(req, &admin.token)?).await.map_err(status)?.into_inner();
            let was =
                if r.previous_version.is_empty() { String::new() } else { format!(" (was {})", r.previous_version) };
            eprintln!("{name}:{tag} -> {version}{was}");
            Ok(ExitCode::SUCCESS)
        }
        Action::Deprecate { release, successor, sunset, reason, admin } => {
            let (name, version) = split_release(&release)?;
            let req = proto::DeprecateRequest {
                name,
                version,
                successor_version: successor.unwrap_or_default(),
                sunset: sunset.map(|t| t.as_second()).unwrap_or(0),
                reason,
            };
            client(&admin).await?.deprecate(authed(req, &admin.token)?).await.map_err(status)?;
            eprintln!("deprecated {release}");
            Ok(ExitCode::SUCCESS)
        }
        Action::Takedown { release, reason, admin } => {
            let (name, version) = split_release(&release)?;
            let req = proto::TakedownRequest { name, version, reason };
            let r = client(&admin).await?.takedown(authed(req, &admin.token)?).await.map_err(status)?.into_inner();
            eprintln!("took down {release}; {} files dropped from the hot tier", r.purged_files);
            Ok(ExitCode::SUCCESS)
        }
        Action::Prewarm { release, files, via: Some(via), jobs, token, .. } => {
            super::prewarm_via::run(&release, files, &via, usize::from(jobs), &token).await
        }
        Action::Prewarm { release, files, api, ca, token, .. } => {
            let admin = Admin { endpoint: Endpoint { url: api.context("--api or --via is required")?, ca }, token };
            let (name, version) = split_release(&release)?;
            let req = proto::PrewarmRequest { name, version, files };
            let mut s = client(&admin).await?.prewarm(authed(req, &admin.token)?).await.map_err(status)?.into_inner();
            let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr_with_hz(8));
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "prewarm [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            let mut last = proto::PrewarmProgress::default();
            while let Some(p) = s.message().await.map_err(status)? {
                bar.set_length(p.bytes_total);
                bar.set_position(p.bytes_done);
                bar.set_message(p.file.clone());
                last = p;
            }
            bar.finish_and_clear();
            eprintln!(
                "prewarmed {release}: {} of {} chunks, {} bytes",
                last.chunks_done, last.chunks_total, last.bytes_done
            );
            Ok(if last.chunks_done == last.chunks_total { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Action::Status { release, admin } => {
            let (name, version) = split_release(&release)?;
            let req = proto::ReleaseStatusRequest { name, version };
            let r =
                client(&admin).await?.release_status(authed(req, &admin.token)?).await.map_err(status)?.into_inner();
            let nodes: Vec<_> = r
                .nodes
                .iter()
                .map(|n| {
                    serde_json::json!({
                        "node": n.node, "expected": n.expected, "holds": n.holds, "lost": n.lost,
                        "reachable": n.reachable, "checked_at": n.checked_at, "error": n.error, "spare": n.spare,
                        "sample": n.sample, "sample_failed": n.sample_failed,
                    })
                })
                .collect();
            let repairs: Vec<_> = r
                .repairs
                .iter()
                .map(|x| {
                    serde_json::json!({
                        "at": x.at, "node": x.node, "blob": x.blob, "source": x.source, "ok": x.ok,
                        "why": x.why, "seconds": x.seconds,
                        "within_objective": x.ok && x.seconds <= r.repair_objective_seconds,
                    })
                })
                .collect();
            let v = serde_json::json!({
                "release": format!("{}@{}", r.name, r.version), "checked": r.checked,
                "replication_target": r.replication_target, "blobs": r.blobs,
                "under_replicated": r.under_replicated, "checked_at": r.checked_at,
                "repair_objective_seconds": r.repair_objective_seconds, "nodes": nodes, "repairs": repairs,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        Action::List { name, admin } => {
            let req = proto::ListReleasesRequest { name };
            let r = client(&admin).await?.list_releases(authed(req, &admin.token)?).await.map_err(status)?.into_inner();
            for rel in r.releases {
                let state = proto::State::try_from(rel.state).map(|s| s.as_str_name()).unwrap_or("STATE_UNSPECIFIED");
                let v = serde_json::json!({
                    "name": rel.name, "version": rel.version, "release_id": rel.release_id, "signer": rel.signer,
                    "state": state.trim_start_matches("STATE_").to_lowercase(), "files": rel.files,
                    "total_bytes": rel.total_bytes, "tags": rel.tags, "successor": rel.successor_version,
                    "sunset": rel.sunset, "reason": rel.reason, "origin": rel.origin,
                });
                println!("{v}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
