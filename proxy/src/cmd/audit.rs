//! `shardgate audit`: export a gateway's audit trail, and check an export offline.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use shardgate::lifecycle::proto;

use super::grpc_client::{authed, status};
use super::release::{Admin, client};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Write the gateway's audit trail as JSON lines (one hash-chained entry per line).
    Export {
        /// Only entries after this sequence number (a tail, which verifies on its own from there).
        #[arg(long)]
        after: Option<u64>,
        /// Write here instead of standard output (written beside, then renamed).
        #[arg(short, long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        admin: Admin,
    },
    /// Check an exported audit trail offline: every entry's hash and its link to the one before.
    Verify {
        /// The JSON lines file `audit export` wrote.
        file: PathBuf,
        /// The file is a tail (`export --after N`): it may start after the
        /// genesis, and only its own chain is checked. Without it, a log that
        /// does not start at entry 0 is refused.
        #[arg(long)]
        tail: bool,
    },
}

/// Entries asked for per page.
const PAGE: u32 = 1000;

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    match a.action {
        Action::Verify { file, tail } => {
            let f = std::fs::File::open(&file).with_context(|| format!("{}", file.display()))?;
            let start = if tail { shardgate::audit::Start::Tail } else { shardgate::audit::Start::Genesis };
            match shardgate::audit::verify(std::io::BufReader::new(f), start) {
                Ok(v) => {
                    let range = match v.first {
                        Some(first) => format!("entries {first} to {}", first + (v.entries - 1)),
                        None => "no entries".to_string(),
                    };
                    println!("OK {}: {} entries ({range}), chain head {}", file.display(), v.entries, v.head);
                    Ok(ExitCode::SUCCESS)
                }
                Err(b) => {
                    println!("BROKEN {}: {b}", file.display());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Action::Export { after, out, admin } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(export(after, out, &admin))
        }
    }
}

async fn export(after: Option<u64>, out: Option<PathBuf>, admin: &Admin) -> anyhow::Result<ExitCode> {
    let mut c = client(admin).await?;
    let mut lines: Vec<u8> = Vec::new();
    let mut next = after;
    let mut count = 0u64;
    loop {
        let req = proto::ExportAuditRequest { after: next, limit: PAGE };
        let r = c.export_audit(authed(req, &admin.token)?).await.map_err(status)?.into_inner();
        for e in &r.entries {
            lines.extend_from_slice(e.line.as_bytes());
            lines.push(b'\n');
            next = Some(e.seq);
            count += 1;
        }
        if !r.more || r.entries.is_empty() {
            break;
        }
    }
    match out {
        None => std::io::stdout().write_all(&lines)?,
        Some(path) => {
            let tmp = path.with_extension("partial");
            std::fs::write(&tmp, &lines).with_context(|| format!("{}", tmp.display()))?;
            std::fs::rename(&tmp, &path).with_context(|| format!("{}", path.display()))?;
        }
    }
    eprintln!("exported {count} audit entries");
    Ok(ExitCode::SUCCESS)
}
