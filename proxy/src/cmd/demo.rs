use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use shardgate::config::{Config, OriginConfig, ReleaseSource};
use shardgate::release::envelope::Envelope;
use shardgate::release::keys::PublisherKey;
use shardgate::release::manifest::parse_version;
use shardgate::release::pack::{PackFormat, PackOptions, pack};

use super::serve::{run_gateway, runtime};
use crate::progress::Bar;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the demo dataset, key, releases and config (default: a new temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Address to serve on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8088")]
    listen: SocketAddr,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let dir = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| d.display().to_string())?;
            d.clone()
        }
        None => std::env::temp_dir().join(format!("shardgate-demo-{}", std::process::id())),
    };
    eprintln!("demo: writing a small dataset, a key and two releases under {}", dir.display());
    let (mut cfg, shards) = prepare(&dir, a.listen)?;
    // The finance dashboard, priced with the example pricing; the token is printed once.
    let (finance, hash) = shardgate::tenant::new_key().map_err(anyhow::Error::msg)?;
    cfg.reports.finance_tokens = vec![hash];
    std::fs::write(dir.join("shardgate.toml"), toml::to_string_pretty(&cfg)?)?;
    let rt = runtime(None)?;
    let config_path = dir.join("shardgate.toml");
    let pricing = dir.join("pricing.toml");
    let releases = dir.join("releases");
    rt.block_on(run_gateway(
        cfg,
        move || Config::load(&config_path),
        Some(Box::new(move |addr| {
            print_try_lines(addr, shards);
            println!(
                "\nFinance dashboard (usage appears once each minute's window closes):\n\n  \
                 http://{addr}/dashboard#token={finance}\n\n\
                 What a release costs on BTFS:\n\n  shardgate cost {} --pricing {} --months 6 --runs 10\n\nCtrl-C stops it.",
                releases.join("demo-text").display(),
                pricing.display()
            );
        })),
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// Generates the dataset, packs two releases, and writes the config.
/// Returns the config and the number of WebDataset shards.
pub fn prepare(dir: &Path, listen: SocketAddr) -> anyhow::Result<(Config, usize)> {
    let src = dir.join("src");
    let text_src = src.join("text");
    let img_src = src.join("images");
    std::fs::create_dir_all(&text_src)?;
    std::fs::create_dir_all(&img_src)?;
    // Text: JSONL shards, the way language-model corpora ship.
    for shard in 0..4 {
        let mut f = std::io::BufWriter::new(std::fs::File::create(text_src.join(format!("train-{shard:05}.jsonl")))?);
        for i in 0..5_000 {
            let id = shard * 5_000 + i;
            writeln!(f, "{{\"id\":{id},\"text\":\"sample {id} of the shardgate demo corpus\",\"label\":{}}}", id % 10)?;
        }
    }
    // A binary blob several chunks long, for range reads.
    let blob: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(text_src.join("embeddings.bin"), blob)?;
    // Images: samples of (.jpg-like bytes, .cls) grouped into WebDataset shards.
    for i in 0..200u32 {
        let px: Vec<u8> = (0..20_000u32).map(|j| (j ^ i.wrapping_mul(31)) as u8).collect();
        std::fs::write(img_src.join(format!("{i:06}.jpg")), px)?;
        std::fs::write(img_src.join(format!("{i:06}.cls")), format!("{}", i % 10))?;
    }
    let key_path = dir.join("publisher.key");
    let key = if key_path.exists() {
        PublisherKey::load(&key_path)?
    } else {
        let k = PublisherKey::generate()?;
        k.save(&key_path)?;
        k
    };
    let releases = dir.join("releases");
    let created_at = jiff::Timestamp::from_second(1_767_225_600).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let envelope = Envelope::from_toml("license = \"CC0-1.0\"\nintended_use = \"shardgate demo\"\n")?;
    let mut shards = 0;
    for (name, source, format) in [
        ("demo-text", &text_src, PackFormat::Files),
        ("demo-images", &img_src, PackFormat::WebDataset { shard_size: 1024 * 1024 }),
    ] {
        let opts = PackOptions {
            dir: source.clone(),
            name: name.into(),
            version: parse_version("1.0.0").map_err(anyhow::Error::msg)?,
            out: releases.join(name),
            envelope: envelope.clone(),
            parent: None,
            chunk_size: 256 * 1024,
            format,
            created_at,
            drift: None,
            encryption: None,
            policy: None,
        };
        let out = pack(&opts, &key, &Bar::new())?;
        eprintln!("demo: packed {name}@1.0.0, release id {}", out.manifest.id);
        if name == "demo-images" {
            shards = out.manifest.manifest.files.len();
        }
    }
    let mut cfg = Config::default();
    cfg.server.listen = listen;
    cfg.trust.keys = vec![key.public().to_string()];
    cfg.origins = vec![OriginConfig::Dir { name: Some("local".into()), path: releases.clone() }];
    cfg.releases = ["demo-text", "demo-images"]
        .iter()
        .map(|n| ReleaseSource {
            manifest: releases.join(n).join("manifest.json").display().to_string(),
            placement: None,
        })
        .collect();
    cfg.hot_tier.capacity = shardgate::config::ByteSize(256 * 1024 * 1024);
    let pricing = dir.join("pricing.toml");
    std::fs::write(&pricing, include_str!("../../../conf/pricing.toml"))?;
    cfg.usage.pricing = Some(pricing);
    let text = toml::to_string_pretty(&cfg)?;
    std::fs::write(dir.join("shardgate.toml"), text)?;
    Ok((cfg, shards))
}

fn print_try_lines(addr: SocketAddr, shards: usize) {
    let base = format!("http://{addr}");
    let last = shards.saturating_sub(1);
    println!(
        r#"
shardgate demo is serving two signed releases at {base}

  curl -s {base}/v1/datasets
  curl -s {base}/v1/datasets/demo-text/1.0.0/manifest | head -20
  curl -sI {base}/v1/datasets/demo-text/1.0.0/files/train-00000.jsonl
  curl -s -H 'Range: bytes=0-199' {base}/v1/datasets/demo-text/1.0.0/files/train-00000.jsonl
  curl -s {base}/metrics | grep shardgate_

  python3 - <<'PY'
import fsspec
fs = fsspec.filesystem("http")
with fs.open("{base}/v1/datasets/demo-text/1.0.0/files/embeddings.bin") as f:
    f.seek(1_000_000); print(len(f.read(65536)), "bytes from the middle, verified")
PY

  python3 -c 'import webdataset as wds; print(sum(1 for _ in wds.WebDataset("{base}/v1/datasets/demo-images/1.0.0/files/shard-{{000000..{last:06}}}.tar", shardshuffle=False)), "samples")'"#
    );
}
