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
    /// Check the release against this policy file and say whether it meets its class's rules.
    #[arg(long, env = "SHARDGATE_POLICY")]
    policy: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let dir = ReleaseDir::from_arg(&a.release);
    let path = dir.manifest();
    let bytes = std::fs::read(&path).with_context(|| path.display().to_string())?;
    let s = SignedManifest::parse(&bytes).with_context(|| path.display().to_string())?;
    let m = &s.manifest;
    let valid = m.valid_approvals();
    let approvals: Vec<serde_json::Value> = m
        .approvals
        .iter()
        .map(|ap| {
            let ok = valid.iter().any(|(r, k)| *r == ap.role && k.to_string() == ap.public_key);
            serde_json::json!({ "role": ap.role, "public_key": ap.public_key, "at": ap.at.to_string(), "valid": ok })
        })
        .collect();
    let policy = match &a.policy {
        None => None,
        Some(p) => {
            let policy = shardgate::policy::Policy::load(p)?;
            Some((policy.class_name(m).to_string(), policy.check(m).err().map(|e| e.to_string())))
        }
    };
    if a.json {
        let encrypted: Vec<serde_json::Value> = m
            .files
            .iter()
            .filter_map(|f| f.encryption.as_ref().map(|e| serde_json::json!({"path": f.path, "scheme": e.scheme, "key_id": e.key_id, "plaintext_size": e.plaintext_size})))
            .collect();
        let v = serde_json::json!({
            "name": m.name, "version": m.version.to_string(), "release_id": s.id.to_hex(),
            "signer": s.signer.to_string(), "created_at": m.created_at.to_string(),
            "files": m.files.len(), "total_bytes": m.total_bytes, "records": m.records,
            "parent": m.parent, "envelope": m.envelope, "approvals": approvals, "encrypted_files": encrypted,
            "policy": policy.as_ref().map(|(c, e)| serde_json::json!({"class": c, "meets_rules": e.is_none(), "breach": e})),
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
    for ap in &approvals {
        let mark = if ap["valid"].as_bool() == Some(true) { "valid" } else { "INVALID" };
        println!(
            "sign-off  {} by {} at {} ({mark})",
            ap["role"].as_str().unwrap_or(""),
            ap["public_key"].as_str().unwrap_or(""),
            ap["at"].as_str().unwrap_or("")
        );
    }
    if let Some((class, breach)) = &policy {
        match breach {
            None => println!("policy    class {class}: meets its rules"),
            Some(e) => println!("policy    class {class}: {e}"),
        }
    }
    println!("{:<64}  {:>14}  {:>9}  path", "blake3", "bytes", "chunk");
    for f in &m.files {
        let enc = match &f.encryption {
            Some(e) => format!("  [encrypted {} key {}, {} bytes plaintext]", e.scheme, e.key_id, e.plaintext_size),
            None => String::new(),
        };
        println!(
            "{}  {:>14}  {:>9}  {}{enc}",
            f.blake3,
            f.size,
            bytesize::ByteSize(f.chunk_size).display().iec_short(),
            f.path
        );
    }
    Ok(ExitCode::SUCCESS)
}
