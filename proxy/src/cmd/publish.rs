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
    /// The node's API base URL, such as http://127.0.0.1:5001.
    #[arg(long)]
    node: String,
    /// API path prefix: /api/v1 for BTFS, /api/v0 for IPFS nodes.
    #[arg(long, default_value = DEFAULT_API_PREFIX)]
    api_prefix: String,
    /// Node API token (BTFS token auth), sent as ?token=.
    #[arg(long, env = "SHARDGATE_NODE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Then register the release with this gateway's admin API (gRPC address).
    #[arg(long)]
    gateway: Option<String>,
    /// Admin token for --gateway.
    #[arg(long, env = "SHARDGATE_ADMIN_TOKEN", hide_env_values = true, requires = "gateway")]
    admin_token: Option<String>,
    /// PEM CA certificate of the gateway's gRPC listener.
    #[arg(long, requires = "gateway")]
    gateway_ca: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let node =
        NodeClient::new(NodeConfig { url: a.node, api_prefix: a.api_prefix, token: a.token }, Duration::from_secs(10))?;
    let dir = ReleaseDir::from_arg(&a.release);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let outcome = rt.block_on(publish(&dir, &node, &Bar::new()))?;
    eprintln!(
        "published {}@{}: {} blobs added ({} bytes), {} already on the node; wrote {}",
        outcome.placement.name,
        outcome.placement.version,
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
