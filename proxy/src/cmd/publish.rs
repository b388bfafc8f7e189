use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use shardgate::btfs::{DEFAULT_API_PREFIX, NodeClient, NodeConfig};
use shardgate::release::layout::ReleaseDir;
use shardgate::release::publish::publish;

use crate::progress::Bar;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Release directory (from `shardgate pack`).
    release: PathBuf,
    /// A node's API base URL, such as http://127.0.0.1:5001 (repeat for several, in order of preference).
    #[arg(long = "node", required_unless_present = "nodes")]
    node: Vec<String>,
    /// Nodes from a publisher config: a TOML file with `[[nodes]]` tables (`url`, `api_prefix`, `token`).
    #[arg(long)]
    nodes: Option<PathBuf>,
    /// Pin every blob on this many nodes (default: the release's `replication_target`, else 1).
    #[arg(long)]
    replicas: Option<usize>,
    /// API path prefix of the --node nodes: /api/v1 for BTFS, /api/v0 for IPFS nodes.
    #[arg(long, default_value = DEFAULT_API_PREFIX)]
    api_prefix: String,
    /// API token of the --node nodes (BTFS token auth), sent as ?token=.
    #[arg(long, env = "SHARDGATE_NODE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The parent release directory: run the drift gate before publishing (as
    /// pack does). Past the `[drift]` thresholds of --meta, publishing is
    /// refused unless the release carries an approval from pack --approve-drift.
    #[arg(long)]
    parent: Option<PathBuf>,
    /// Meta file holding the `[drift]` thresholds, with --parent.
    #[arg(long, requires = "parent")]
    meta: Option<PathBuf>,
    /// Then register the release with this gateway's admin API (gRPC address).
    #[arg(long)]
    gateway: Option<String>,
    /// Admin token for --gateway.
    #[arg(long, env = "SHARDGATE_ADMIN_TOKEN", hide_env_values = true, requires = "gateway")]
    admin_token: Option<String>,
    /// PEM CA certificate of the gateway's gRPC listener.
    #[arg(long, requires = "gateway")]
    gateway_ca: Option<PathBuf>,
    /// Policy file: a release that breaks its class's rules (encryption,
    /// sign-offs) is refused before anything is uploaded.
    #[arg(long, env = "SHARDGATE_POLICY")]
    policy: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let mut configs: Vec<NodeConfig> = a
        .node
        .iter()
        .map(|url| NodeConfig { url: url.clone(), api_prefix: a.api_prefix.clone(), token: a.token.clone() })
        .collect();
    if let Some(path) = &a.nodes {
        let text = std::fs::read_to_string(path).with_context(|| format!("--nodes {}", path.display()))?;
        let file = shardgate::btfs::NodesFile::parse(&text)
            .map_err(|e| super::ConfigError(format!("--nodes {}: {e}", path.display())))?;
        configs.extend(file.nodes);
    }
    if configs.is_empty() {
        anyhow::bail!(super::ConfigError("no node to publish to: give --node URL or --nodes FILE".into()));
    }
    let nodes =
        configs.into_iter().map(|c| NodeClient::new(c, Duration::from_secs(10))).collect::<Result<Vec<_>, _>>()?;
    let dir = ReleaseDir::from_arg(&a.release);
    if let Some(parent) = &a.parent {
        drift_gate(&dir, parent, a.meta.as_deref())?;
    }
    if let Some(p) = &a.policy {
        use anyhow::Context;
        let policy = shardgate::policy::Policy::load(p)?;
        let bytes = std::fs::read(dir.manifest()).with_context(|| format!("{}", dir.manifest().display()))?;
        let signed = shardgate::release::manifest::SignedManifest::parse(&bytes)
            .with_context(|| format!("{}", dir.manifest().display()))?;
        policy.check(&signed.manifest)?;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let outcome = rt.block_on(publish(&dir, &nodes, a.replicas, &Bar::new()))?;
    eprintln!(
        "published {}@{} on {} of {} node(s) per blob: {} copies added ({} bytes), {} already pinned; wrote {}",
        outcome.placement.name,
        outcome.placement.version,
        outcome.target,
        outcome.nodes,
        outcome.added,
        outcome.bytes_added,
        outcome.already_present,
        dir.placement().display()
    );
    if let Some(url) = a.gateway {
        let token =
            a.admin_token.ok_or_else(|| anyhow::anyhow!("--gateway needs an admin token (SHARDGATE_ADMIN_TOKEN)"))?;
        let admin = super::release::Admin {
            endpoint: super::grpc_client::Endpoint { url: url.clone(), ca: a.gateway_ca },
            token,
        };
        let r = rt.block_on(super::release::register_dir(&a.release, &admin))?;
        let what = if r.already_registered { "already registered with" } else { "registered with" };
        eprintln!("{what} {url}: {}@{} (release {})", r.name, r.version, r.release_id);
    }
    println!("{}", outcome.placement.manifest_cid.unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}

/// The drift gate at publish time: the same report as pack, against the
/// thresholds of `meta`; an approval recorded at pack time lets it through.
fn drift_gate(dir: &ReleaseDir, parent: &std::path::Path, meta: Option<&std::path::Path>) -> anyhow::Result<()> {
    use anyhow::Context;
    use shardgate::release::drift::{Profile, Report, split_meta};
    use shardgate::release::manifest::SignedManifest;
    let load = |d: &ReleaseDir| -> anyhow::Result<SignedManifest> {
        let bytes = std::fs::read(d.manifest()).with_context(|| format!("{}", d.manifest().display()))?;
        SignedManifest::parse(&bytes).with_context(|| format!("{}", d.manifest().display()))
    };
    let pdir = ReleaseDir::from_arg(parent);
    let (child, before) = (load(dir)?, load(&pdir)?);
    if let Some(p) = &child.manifest.parent
        && p.manifest_blake3 != before.id
    {
        anyhow::bail!(super::ConfigError(format!(
            "{} names parent {}@{} ({}), not {} ({})",
            dir.manifest().display(),
            p.name,
            p.version,
            p.manifest_blake3,
            parent.display(),
            before.id
        )));
    }
    let thresholds = match meta {
        Some(m) => {
            let text = std::fs::read_to_string(m).with_context(|| format!("{}", m.display()))?;
            split_meta(&text).map_err(|e| super::ConfigError(format!("{}: {e}", m.display())))?.1.unwrap_or_default()
        }
        None => Default::default(),
    };
    let field = thresholds
        .label_field
        .clone()
        .or_else(|| child.manifest.envelope.label_taxonomy.as_ref().and_then(|l| l.field.clone()));
    let bar = Bar::new();
    let pa = Profile::of(&pdir, &before.manifest.files, field.as_deref(), &bar)?;
    let pb = Profile::of(dir, &child.manifest.files, field.as_deref(), &bar)?;
    let name = |m: &SignedManifest| format!("{}@{}", m.manifest.name, m.manifest.version);
    let report = Report::compare(&name(&before), &pa, &name(&child), &pb, field.as_deref());
    eprint!("{}", report.render());
    let breaches = report.breaches(&thresholds);
    if breaches.is_empty() {
        return Ok(());
    }
    match child.manifest.envelope.extra.get("drift_approval") {
        Some(a) => {
            eprintln!(
                "drift past the thresholds, approved at pack time: {}",
                a["reason"].as_str().unwrap_or("(no reason)")
            );
            Ok(())
        }
        None => anyhow::bail!(
            "drift from the parent is past the thresholds: {}; the release carries no approval (pack --approve-drift)",
            breaches.join("; ")
        ),
    }
}
