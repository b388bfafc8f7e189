//! Command-line interface: one module per command.

mod audit;
mod cost;
mod demo;
mod diff;
mod grpc_client;
mod inspect;
mod keygen;
mod keys;
mod pack;
mod prewarm_via;
mod publish;
mod release;
mod serve;
mod tenant;
mod usage;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// shardgate: signed, verified dataset releases on BTFS, served fast.
#[derive(Debug, Parser)]
#[command(name = "shardgate", version, about)]
pub struct Cli {
    /// More log output (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make an ed25519 publisher key pair.
    Keygen(keygen::Args),
    /// Pack a directory into a signed release.
    Pack(pack::Args),
    /// Summarize a release for a person.
    Inspect(inspect::Args),
    /// Check a release: signature, chunk tables, every chunk and file.
    Verify(verify::Args),
    /// Add a release to a BTFS node and write placement.json.
    Publish(publish::Args),
    /// Compare two releases: files, bytes, records, labels and record overlap (the drift report).
    Diff(diff::Args),
    /// Run the verifying range gateway.
    Serve(serve::Args),
    /// Generate, pack and serve a small dataset on 127.0.0.1, and print lines to try.
    Demo(demo::Args),
    /// Tenant administration: `tenant key` makes an API key.
    Tenant(tenant::Args),
    /// Billing: `usage token` makes a billing (or finance) token; `usage list`, `totals` and `export` read the usage API.
    Usage(usage::Args),
    /// What a release costs on BTFS: storage, retrieval and operations, in BTT and fiat.
    Cost(cost::Args),
    /// Release lifecycle on a gateway: register, tag, deprecate, take down, pre-warm, list.
    Release(release::Args),
    /// Key envelopes of encrypted releases: show, rewrap (revoke a recipient), register, export, destroy.
    Keys(keys::Args),
    /// Decrypt one file of an encrypted release from its stored ciphertext, checked against the signed manifest.
    Decrypt(keys::DecryptArgs),
    /// Add a sign-off (security, legal, …) to a packed release, as its policy class requires.
    Approve(keys::ApproveArgs),
    /// The audit trail: `audit export` from a gateway, `audit verify FILE` offline.
    Audit(audit::Args),
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Keygen(a) => keygen::run(a),
        Command::Pack(a) => pack::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Publish(a) => publish::run(a),
        Command::Diff(a) => diff::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Tenant(a) => tenant::run(a),
        Command::Usage(a) => usage::run(a),
        Command::Cost(a) => cost::run(a),
        Command::Release(a) => release::run(a),
        Command::Keys(a) => keys::run(a),
        Command::Decrypt(a) => keys::decrypt(a),
        Command::Approve(a) => keys::approve(a),
        Command::Audit(a) => audit::run(a),
    }
}

pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// An error and its causes on one line.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ").replace('\n', " ")
}

/// Exit status for an error: 64 (EX_USAGE) for bad configuration, else 1.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.is::<ConfigError>()) { 64 } else { 1 }
}

/// Marks an error as bad configuration or arguments.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Parses sizes like `256KiB`, `512MiB`, `1048576`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<u64>() {
        return Ok(n);
    }
    t.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?} is not a size like 256KiB or 512MiB ({e})"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("256KiB"), Ok(262_144));
        assert_eq!(super::parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(super::parse_size("4096"), Ok(4096));
        assert!(super::parse_size("lots").is_err());
    }
}
