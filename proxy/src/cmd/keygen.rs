use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use shardgate::release::keys::PublisherKey;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Private key file to create (mode 0600); the public key goes to KEY.pub.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let key = PublisherKey::generate()?;
    let pub_path = key.save(&a.out).context("keygen")?;
    eprintln!("wrote {} (private, 0600) and {}", a.out.display(), pub_path.display());
    println!("{}", key.public());
    Ok(ExitCode::SUCCESS)
}
