use std::path::PathBuf;
use std::process::ExitCode;

use shardgate::release::keys::PublicKey;
use shardgate::release::layout::ReleaseDir;
use shardgate::release::verify::verify_dir;

use super::ConfigError;
use crate::progress::Bar;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Release directory or manifest.json.
    release: PathBuf,
    /// Trusted publisher key: a KEY.pub file or `ed25519:...`. Repeatable.
    #[arg(long, required = true)]
    trust: Vec<String>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let trusted = a
        .trust
        .iter()
        .map(|t| PublicKey::load(t).map_err(|e| ConfigError(format!("--trust {t}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
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
