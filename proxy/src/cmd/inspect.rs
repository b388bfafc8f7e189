use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use shardgate::release::layout::ReleaseDir;
use shardgate::release::manifest::SignedManifest;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Release directory or manifest.json.
    release: PathBuf,
    /// Print the manifest summary as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let dir = ReleaseDir::from_arg(&a.release);
    let path = dir.manifest();
    let bytes = std::fs::read(&path).with_context(|| path.display().to_string())?;
    let s = SignedManifest::parse(&bytes).with_context(|| path.display().to_string())?;
    let m = &s.manifest;
    if a.json {
        let v = serde_json::json!({
            "name": m.name, "version": m.version.to_string(), "release_id": s.id.to_hex(),
            "signer": s.signer.to_string(), "created_at": m.created_at.to_string(),
            "files": m.files.len(), "total_bytes": m.total_bytes, "records": m.records,
            "parent": m.parent, "envelope": m.envelope,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("release   {}@{}", m.name, m.version);
    println!("id        {}", s.id);
    println!("signer    {}", s.signer);
    println!("created   {}", m.created_at);
    if let Some(p) = &m.parent {
        println!("parent    {}@{} ({})", p.name, p.version, p.manifest_blake3);
    }
    println!("files     {}", m.files.len());
    println!("bytes     {} ({})", m.total_bytes, bytesize::ByteSize(m.total_bytes).display().iec());
    if let Some(n) = m.records.jsonl_lines {
        println!("records   {n} JSONL lines");
    }
    if let Some(n) = m.records.webdataset_samples {
        println!("records   {n} WebDataset samples");
    }
    let env = serde_json::to_value(&m.envelope)?;
    if let Some(obj) = env.as_object().filter(|o| !o.is_empty()) {
        println!("envelope");
        for (k, v) in obj {
            let shown = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!("  {k:<20} {shown}");
        }
    }
    println!("{:<64}  {:>14}  {:>9}  path", "blake3", "bytes", "chunk");
    for f in &m.files {
        println!(
            "{}  {:>14}  {:>9}  {}",
            f.blake3,
            f.size,
            bytesize::ByteSize(f.chunk_size).display().iec_short(),
            f.path
        );
    }
    Ok(ExitCode::SUCCESS)
}
