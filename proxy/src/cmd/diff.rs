use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use shardgate::release::drift::{Profile, Report};
use shardgate::release::layout::ReleaseDir;
use shardgate::release::manifest::SignedManifest;

use crate::progress::Bar;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The older release (directory or manifest.json).
    a: PathBuf,
    /// The newer release.
    b: PathBuf,
    /// JSONL field or WebDataset member extension holding the label
    /// (default: B's envelope `label_taxonomy.field`).
    #[arg(long)]
    label_field: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn open(p: &std::path::Path) -> anyhow::Result<(ReleaseDir, SignedManifest)> {
    let dir = ReleaseDir::from_arg(p);
    let bytes = std::fs::read(dir.manifest()).with_context(|| format!("{}", dir.manifest().display()))?;
    let m = SignedManifest::parse(&bytes).with_context(|| format!("{}", dir.manifest().display()))?;
    Ok((dir, m))
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let (da, ma) = open(&a.a)?;
    let (db, mb) = open(&a.b)?;
    let field = a.label_field.or_else(|| mb.manifest.envelope.label_taxonomy.as_ref().and_then(|l| l.field.clone()));
    let bar = Bar::new();
    let pa = Profile::of(&da, &ma.manifest.files, field.as_deref(), &bar)?;
    let pb = Profile::of(&db, &mb.manifest.files, field.as_deref(), &bar)?;
    let name = |m: &SignedManifest| format!("{}@{}", m.manifest.name, m.manifest.version);
    let report = Report::compare(&name(&ma), &pa, &name(&mb), &pb, field.as_deref());
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(ExitCode::SUCCESS)
}
