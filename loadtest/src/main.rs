//! shardgate-loadtest: workers that read like real data loaders, against any
//! HTTP server (shardgate, nginx, a node's gateway).
//!
//! - `webdataset`: whole-file sequential GETs;
//! - `fsspec`: HEAD, then ranged reads of `--request-size` at random offsets;
//! - `parquet`: a 64 KiB suffix read (the footer), then column-chunk ranges;
//! - `mixed`: one of the three per visit.
//!
//! Which file a worker visits next follows a Zipf law (`--zipf`), so "the
//! hottest 10 to 20 percent of files get most reads" is a setting. Every run
//! is bounded by `--duration` and optionally `--requests`.

mod report;
mod targets;
mod worker;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

use crate::report::{Report, Shared};
use crate::targets::Targets;
use crate::worker::Pattern;

#[derive(Debug, Parser)]
#[command(name = "shardgate-loadtest", version, about)]
struct Args {
    /// Base URL of a shardgate gateway (with --release), or of any server (with --urls).
    #[arg(long)]
    base: String,
    /// NAME@VERSION: read the files of this release (file list from its manifest).
    #[arg(long, conflicts_with = "urls")]
    release: Option<String>,
    /// A file listing paths under --base (one per line, optionally followed by the size).
    #[arg(long)]
    urls: Option<std::path::PathBuf>,
    #[arg(long, value_enum, default_value = "mixed")]
    pattern: Pattern,
    /// Zipf exponent of file popularity (0: uniform; 1.0 to 1.2: a small hot set).
    #[arg(long, default_value_t = 1.1)]
    zipf: f64,
    /// Concurrent workers (each one loader process).
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Connections kept per worker.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Ranged read size for fsspec (and parquet column chunks, a quarter of it).
    #[arg(long, default_value = "5MiB", value_parser = parse_size)]
    request_size: u64,
    /// How long to run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Stop after this many requests in all (whichever bound comes first).
    #[arg(long)]
    requests: Option<u64>,
    /// API key, sent as `Authorization: Bearer`.
    #[arg(long, env = "SHARDGATE_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Seed for file choice and offsets, for repeatable runs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as JSON (for scripts) instead of a table.
    #[arg(long)]
    json: bool,
    /// No progress line.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = s.find(|c: char| c.is_ascii_alphabetic()).map_or((s, ""), |i| (&s[..i], &s[i..]));
    let n: u64 = num.trim().parse().map_err(|_| format!("{s:?} is not a size like 5MiB"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}")),
    };
    n.checked_mul(mult).filter(|v| *v > 0).ok_or_else(|| format!("{s:?} is out of range"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(1)
        }
    }
}

fn run(a: Args) -> anyhow::Result<ExitCode> {
    if a.workers == 0 || a.connections == 0 {
        anyhow::bail!("--workers and --connections must be at least 1");
    }
    if !(a.zipf.is_finite() && a.zipf >= 0.0) {
        anyhow::bail!("--zipf {} must be 0 or more", a.zipf);
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(a.workers * a.connections)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        let base = a.base.trim_end_matches('/').to_string();
        let targets = match (&a.release, &a.urls) {
            (Some(r), None) => Targets::from_release(&client, &base, r, a.key.as_deref()).await?,
            (None, Some(f)) => Targets::from_list(&client, &base, f, a.key.as_deref()).await?,
            _ => anyhow::bail!("give --release NAME@VERSION (shardgate) or --urls FILE (any server)"),
        };
        let metrics_before = report::scrape(&client, &base).await;
        let shared = Arc::new(Shared::new(a.requests));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..a.workers {
            let cfg = worker::Config {
                client: client.clone(),
                targets: targets.clone(),
                pattern: a.pattern,
                zipf: a.zipf,
                request_size: a.request_size,
                key: a.key.clone(),
                seed: a.seed.wrapping_mul(1000).wrapping_add(w as u64),
                connections: a.connections,
            };
            tasks.push(tokio::spawn(worker::run(cfg, shared.clone(), stop.clone())));
        }
        // Bounded in time; the progress line once a second.
        let deadline = started + a.duration;
        while Instant::now() < deadline && !shared.done() {
            tokio::time::sleep(Duration::from_millis(250).min(deadline.saturating_duration_since(Instant::now())))
                .await;
            if !a.quiet {
                shared.progress(started.elapsed());
            }
        }
        stop.store(true, Ordering::Relaxed);
        let mut workers = Vec::new();
        for t in tasks {
            workers.push(t.await?);
        }
        let elapsed = started.elapsed();
        if !a.quiet {
            eprintln!();
        }
        let metrics_after = report::scrape(&client, &base).await;
        let report = Report::build(&a.pattern, &targets, elapsed, workers, metrics_before, metrics_after);
        if a.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.table());
        }
        Ok(if report.errors_total() == 0 { ExitCode::SUCCESS } else { ExitCode::from(2) })
    })
}
