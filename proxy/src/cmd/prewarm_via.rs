//! `shardgate release prewarm NAME@V --via LB`: warms a release across a
//! fleet, each file on the member that serves it.
//!
//! The plan (`POST .../manifest`: the files, and the version a tag resolved
//! to) and then one `POST .../files/{path}` per file go through the
//! balancer. It hashes the file's path, so each pre-warm lands on the member
//! the file's reads land on. Each answer streams progress lines naming the
//! member, which is how the report says who warmed what. A file whose member
//! went away mid-way (a deploy) is sent again; the balancer then picks the
//! member that took the file over.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use serde::Deserialize;
use shardgate::http::route::encode_path;

use super::release::split_release;

/// Tries per file: the first, and two more if the member went away.
const TRIES: u32 = 3;
/// Longest progress line accepted.
const MAX_LINE: usize = 64 << 10;

#[derive(Debug, Deserialize)]
struct Plan {
    version: String,
    files: Vec<PlanFile>,
}

#[derive(Debug, Clone, Deserialize)]
struct PlanFile {
    path: String,
    size: u64,
}

/// One progress line from a member.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Line {
    instance: String,
    chunks_done: u64,
    chunks_total: u64,
    bytes_done: u64,
    chunks_fetched: u64,
    done: bool,
    error: Option<String>,
    reason: Option<String>,
}

/// What one member warmed.
#[derive(Debug)]
struct Warmed {
    instance: String,
    path: String,
    chunks: u64,
    chunks_fetched: u64,
    bytes: u64,
}

/// Why one file's pre-warm failed, and whether another try may help.
struct Failed {
    why: String,
    retry: bool,
}

fn failed(why: impl Into<String>, retry: bool) -> Failed {
    Failed { why: why.into(), retry }
}

/// An error and its causes.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// The error message of a refusal (`{"error": ...}`), or its first bytes.
fn refusal(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}

pub async fn run(release: &str, only: Vec<String>, via: &str, jobs: usize, token: &str) -> anyhow::Result<ExitCode> {
    let (name, segment) = split_release(release)?;
    let base = via.trim_end_matches('/');
    let parsed = reqwest::Url::parse(base).with_context(|| format!("--via {via:?} is not a URL"))?;
    anyhow::ensure!(matches!(parsed.scheme(), "http" | "https"), "--via {via:?} must be an http or https URL");
    shardgate::btfs::install_crypto_provider();
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()?;

    let url = format!("{base}/v1/datasets/{}/{}/manifest", encode_path(&name), encode_path(&segment));
    let resp = http.post(&url).bearer_auth(token).send().await.map_err(|e| anyhow::anyhow!("{url}: {}", chain(&e)))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| anyhow::anyhow!("{url}: {}", chain(&e)))?;
    anyhow::ensure!(status.is_success(), "{url}: {status}: {}", refusal(&body));
    let plan: Plan = serde_json::from_slice(&body).with_context(|| format!("{url}: not a pre-warm plan"))?;
    let files: Vec<PlanFile> = if only.is_empty() {
        plan.files.clone()
    } else {
        only.iter()
            .map(|p| {
                plan.files
                    .iter()
                    .find(|f| &f.path == p)
                    .cloned()
                    .with_context(|| format!("{name}@{} has no file {p:?}", plan.version))
            })
            .collect::<anyhow::Result<_>>()?
    };

    let bar = indicatif::ProgressBar::with_draw_target(
        Some(files.iter().map(|f| f.size).sum()),
        indicatif::ProgressDrawTarget::stderr_with_hz(8),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template("prewarm [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let bar = Mutex::new(bar);
    let version = plan.version.clone();
    // Warmed on the path loaders read: a tag's path hashes to its own member,
    // so `NAME@latest` warms the members that `/NAME/latest/...` reads reach.
    let segment = segment.as_str();
    let outcomes: Vec<(PlanFile, Result<Warmed, String>)> = futures_util::stream::iter(files)
        .map(|f| {
            let (http, bar, name) = (&http, &bar, &name);
            async move {
                let url = format!(
                    "{base}/v1/datasets/{}/{}/files/{}",
                    encode_path(name),
                    encode_path(segment),
                    encode_path(&f.path)
                );
                let mut tries = 0;
                let got = loop {
                    tries += 1;
                    match warm_one(http, &url, &f.path, token, bar).await {
                        Ok(w) => break Ok(w),
                        Err(e) if e.retry && tries < TRIES => {
                            tokio::time::sleep(Duration::from_secs(u64::from(tries))).await;
                        }
                        Err(e) => break Err(e.why),
                    }
                };
                (f, got)
            }
        })
        .buffer_unordered(jobs)
        .collect()
        .await;
    let bar = bar.into_inner().unwrap_or_else(|p| p.into_inner());
    bar.finish_and_clear();
    report(release, &version, base, outcomes)
}

/// Sends one file's pre-warm and follows its progress lines to the end.
async fn warm_one(
    http: &reqwest::Client,
    url: &str,
    path: &str,
    token: &str,
    bar: &Mutex<indicatif::ProgressBar>,
) -> Result<Warmed, Failed> {
    let mut shown = 0u64;
    let set = |shown: &mut u64, to: u64| {
        let bar = bar.lock().unwrap_or_else(|p| p.into_inner());
        bar.set_position((bar.position() + to).saturating_sub(*shown));
        bar.set_message(path.to_string());
        *shown = to;
    };
    let result = async {
        let mut resp = http
            .post(url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| failed(format!("{url}: {}", chain(&e)), true))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await.unwrap_or_default();
            // A balancer with no member up, or a member shutting down, may do better next time.
            let retry = matches!(status.as_u16(), 502..=504);
            return Err(failed(format!("{status}: {}", refusal(&body)), retry));
        }
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let piece = match resp.chunk().await {
                Ok(Some(p)) => p,
                Ok(None) => return Err(failed("the answer ended before the pre-warm did", true)),
                Err(e) => return Err(failed(format!("the answer was cut: {}", chain(&e)), true)),
            };
            buf.extend_from_slice(&piece);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let text: Vec<u8> = buf.drain(..=nl).collect();
                let line: Line =
                    serde_json::from_slice(&text).map_err(|e| failed(format!("not a progress line: {e}"), false))?;
                set(&mut shown, line.bytes_done);
                if let Some(why) = line.error {
                    // Stopped because the member is shutting down: the file moves to another.
                    let retry = matches!(line.reason.as_deref(), Some("stopped" | "ended"));
                    return Err(failed(format!("{} ({}): {why}", line.instance, url), retry));
                }
                if line.done {
                    return Ok(Warmed {
                        instance: line.instance,
                        path: path.to_string(),
                        chunks: line.chunks_total.max(line.chunks_done),
                        chunks_fetched: line.chunks_fetched,
                        bytes: line.bytes_done,
                    });
                }
            }
            if buf.len() > MAX_LINE {
                return Err(failed(format!("a progress line is over {} KiB", MAX_LINE >> 10), false));
            }
        }
    }
    .await;
    if result.is_err() {
        // Not warmed (yet): take its bytes off the bar.
        set(&mut shown, 0);
    }
    result
}

#[derive(Debug, Default, serde::Serialize)]
struct MemberReport {
    instance: String,
    files: Vec<String>,
    chunks: u64,
    /// Chunks that were not hot, so were fetched and verified.
    chunks_fetched: u64,
    bytes: u64,
}

fn report(
    release: &str,
    version: &str,
    via: &str,
    outcomes: Vec<(PlanFile, Result<Warmed, String>)>,
) -> anyhow::Result<ExitCode> {
    let mut members: BTreeMap<String, MemberReport> = BTreeMap::new();
    let mut failures = Vec::new();
    for (f, got) in outcomes {
        match got {
            Ok(w) => {
                let m = members
                    .entry(w.instance.clone())
                    .or_insert_with(|| MemberReport { instance: w.instance.clone(), ..MemberReport::default() });
                m.files.push(w.path);
                m.chunks += w.chunks;
                m.chunks_fetched += w.chunks_fetched;
                m.bytes += w.bytes;
            }
            Err(why) => failures.push(serde_json::json!({ "file": f.path, "error": why })),
        }
    }
    let members: Vec<MemberReport> = members
        .into_values()
        .map(|mut m| {
            m.files.sort();
            m
        })
        .collect();
    let files: usize = members.iter().map(|m| m.files.len()).sum();
    let bytes: u64 = members.iter().map(|m| m.bytes).sum();
    eprintln!(
        "prewarmed {release} ({version}) through {via}: {files} files, {} on {} members",
        bytesize::ByteSize(bytes).display().iec(),
        members.len()
    );
    for m in &members {
        eprintln!(
            "  {}: {} files, {} chunks ({} fetched, {} already hot), {}",
            m.instance,
            m.files.len(),
            m.chunks,
            m.chunks_fetched,
            m.chunks - m.chunks_fetched.min(m.chunks),
            bytesize::ByteSize(m.bytes).display().iec()
        );
    }
    for f in &failures {
        eprintln!("  failed: {}: {}", f["file"].as_str().unwrap_or(""), f["error"].as_str().unwrap_or(""));
    }
    let out = serde_json::json!({ "release": release, "version": version, "members": members, "failed": failures });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
