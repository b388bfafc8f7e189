use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use shardgate::drill::Via;
use shardgate::release::keys::PublicKey;
use shardgate::release::layout::ReleaseDir;
use shardgate::release::placement::Placement;
use shardgate::release::verify::verify_dir;

use super::ConfigError;
use crate::progress::Bar;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Release directory or manifest.json; with --via, NAME@VERSION.
    release: PathBuf,
    /// Trusted publisher key: a KEY.pub file or `ed25519:...`. Repeatable.
    #[arg(long, required = true)]
    trust: Vec<String>,
    /// The verification drill: fetch the manifest and every file through this
    /// path and compare the paths. A gateway base URL, or `btfs-api:URL` for a
    /// node (with --placement). Repeatable.
    #[arg(long)]
    via: Vec<String>,
    /// placement.json of the release, for `btfs-api:` paths.
    #[arg(long)]
    placement: Option<PathBuf>,
    /// API key for gateways that need one.
    #[arg(long, env = "SHARDGATE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// With --via: print the report as JSON.
    #[arg(long, requires = "via")]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let trusted = a
        .trust
        .iter()
        .map(|t| PublicKey::load(t).map_err(|e| ConfigError(format!("--trust {t}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if !a.via.is_empty() {
        return drill(&a, &trusted);
    }
    let dir = ReleaseDir::from_arg(&a.release);
    let report = verify_dir(&dir, &trusted, &Bar::new());
    for f in &report.failures {
        println!("FAIL {f}");
    }
    match (&report.manifest, report.failures.is_empty()) {
        (Some(m), true) => {
            println!(
                "OK {}@{} ({}): signature by {}, {} files, {} bytes verified",
                m.manifest.name, m.manifest.version, m.id, m.signer, report.files_checked, report.bytes_checked
            );
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!("verification failed: {} problem(s)", report.failures.len());
            Ok(ExitCode::FAILURE)
        }
    }
}

fn drill(a: &Args, trusted: &[PublicKey]) -> anyhow::Result<ExitCode> {
    let spec = a.release.to_string_lossy();
    let (name, version) =
        spec.rsplit_once('@').ok_or_else(|| ConfigError(format!("with --via, {spec:?} must be NAME@VERSION")))?;
    let placement = match &a.placement {
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("--placement {}", p.display()))?;
            Some(Placement::parse(&bytes).map_err(|e| ConfigError(format!("--placement {}: {e}", p.display())))?)
        }
        None => None,
    };
    let vias = a
        .via
        .iter()
        .map(|v| Via::parse(v, placement.as_ref(), a.api_key.as_deref()).map_err(|e| ConfigError(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = rt.block_on(shardgate::drill::drill(name, version, &vias, trusted, &Bar::new()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for p in &report.paths {
            println!(
                "PATH {}: {} files, {} bytes in {:.2} s ({:.1} MB/s), first byte p50 {:.1} ms p99 {:.1} ms, {} failures",
                p.via,
                p.files,
                p.bytes,
                p.seconds,
                p.mb_per_s(),
                p.ttfb_p(0.5),
                p.ttfb_p(0.99),
                p.failures.len()
            );
            for f in &p.failures {
                println!("FAIL {}: {f}", p.via);
            }
        }
        for d in &report.disagreements {
            println!("DIFFER {d}");
        }
        if report.ok() {
            println!("OK {} ({}): every path served the published bytes", report.release, report.release_id);
        }
    }
    if report.ok() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("verification drill failed");
        Ok(ExitCode::FAILURE)
    }
}
