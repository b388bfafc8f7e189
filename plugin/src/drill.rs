//! The verification drill: fetch a release's manifest and every file through
//! more than one path (gateways, a node), verify all of it independently
//! against the signed manifest, compare the paths, and report per path.
//!
//! Every file is hashed as it streams into its chunk chaining values, so a
//! file that does not match is located to the chunk: against the published
//! chunk table (from a node path), or against another path whose bytes did
//! match.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;

use crate::btfs::{NodeClient, NodeConfig};
use crate::progress::Progress;
use crate::release::chunk::{ChunkHasher, ChunkTable};
use crate::release::keys::PublicKey;
use crate::release::manifest::{FileEntry, SignedManifest};
use crate::release::placement::Placement;

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("--via {0}: {1}")]
    Via(String, String),
}

/// One way to the release's bytes.
#[derive(Debug, Clone)]
pub enum Via {
    /// A shardgate gateway's base URL (HTTP API), with an optional API key.
    Gateway { base: String, key: Option<String>, client: reqwest::Client },
    /// A BTFS node's RPC API, with the release's placement for CIDs.
    Node { client: NodeClient, label: String, placement: Box<Placement> },
}

impl Via {
    /// `btfs-api:URL[/api/v1]` is a node (needs `placement`); anything else a gateway.
    pub fn parse(spec: &str, placement: Option<&Placement>, key: Option<&str>) -> Result<Self, DrillError> {
        let Some(url) = spec.strip_prefix("btfs-api:") else {
            let base = spec.trim_end_matches('/').to_string();
            reqwest::Url::parse(&base).map_err(|e| DrillError::Via(spec.into(), e.to_string()))?;
            crate::btfs::install_crypto_provider();
            let client = reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(Duration::from_secs(5))
                // A path that stops sending is a failure, not a hang.
                .read_timeout(Duration::from_secs(30))
                .build()
                .map_err(|e| DrillError::Via(spec.into(), e.to_string()))?;
            return Ok(Via::Gateway { base, key: key.map(str::to_string), client });
        };
        let placement = placement
            .cloned()
            .ok_or_else(|| DrillError::Via(spec.into(), "a node path needs --placement (placement.json)".into()))?;
        let u = reqwest::Url::parse(url).map_err(|e| DrillError::Via(spec.into(), e.to_string()))?;
        let prefix = match u.path().trim_end_matches('/') {
            "" => crate::btfs::DEFAULT_API_PREFIX.to_string(),
            p => p.to_string(),
        };
        let base = format!("{}://{}", u.scheme(), u.host_str().unwrap_or("127.0.0.1"))
            + &u.port().map(|p| format!(":{p}")).unwrap_or_default();
        let client = NodeClient::new(NodeConfig { url: base, api_prefix: prefix, token: None }, Duration::from_secs(5))
            .map_err(|e| DrillError::Via(spec.into(), e.to_string()))?;
        Ok(Via::Node { client, label: spec.to_string(), placement: Box::new(placement) })
    }

    pub fn label(&self) -> String {
        match self {
            Via::Gateway { base, .. } => base.clone(),
            Via::Node { label, .. } => label.clone(),
        }
    }
}

/// What one path did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PathReport {
    pub via: String,
    pub files: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Time to first byte of each file request, in milliseconds, sorted.
    pub ttfb_ms: Vec<f64>,
    pub failures: Vec<String>,
    #[serde(skip)]
    digests: BTreeMap<String, (blake3::Hash, Option<ChunkTable>)>,
}

impl PathReport {
    pub fn mb_per_s(&self) -> f64 {
        if self.seconds > 0.0 { self.bytes as f64 / self.seconds / 1e6 } else { 0.0 }
    }

    pub fn ttfb_p(&self, q: f64) -> f64 {
        if self.ttfb_ms.is_empty() {
            return 0.0;
        }
        let i = ((self.ttfb_ms.len() - 1) as f64 * q).round() as usize;
        self.ttfb_ms[i.min(self.ttfb_ms.len() - 1)]
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DrillReport {
    pub release: String,
    pub release_id: String,
    pub paths: Vec<PathReport>,
    /// Differences between paths (manifests or files that do not agree).
    pub disagreements: Vec<String>,
}

impl DrillReport {
    pub fn ok(&self) -> bool {
        self.disagreements.is_empty() && self.paths.iter().all(|p| p.failures.is_empty())
    }
}

/// A body: its bytes as they arrive, or why it could not be had.
async fn open(
    via: &Via,
    what: Target<'_>,
) -> Result<futures_util::stream::BoxStream<'static, Result<bytes::Bytes, String>>, String> {
    match (via, what) {
        (Via::Gateway { base, key, client }, t) => {
            let url = match t {
                Target::Manifest { name, version } => format!("{base}/v1/datasets/{name}/{version}/manifest"),
                Target::File { name, version, entry } => {
                    format!("{base}/v1/datasets/{name}/{version}/files/{}", entry.path)
                }
                Target::Table { .. } => return Err("a gateway does not serve chunk tables".into()),
            };
            let mut req = client.get(&url);
            if let Some(k) = key {
                req = req.bearer_auth(k);
            }
            let resp = req.send().await.map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                return Err(format!("HTTP {status}: {}", body.chars().take(200).collect::<String>()));
            }
            Ok(resp.bytes_stream().map(|r| r.map_err(|e| e.to_string())).boxed())
        }
        (Via::Node { client, placement, .. }, t) => {
            let (cid, size) = match t {
                Target::Manifest { .. } => {
                    let cid = placement.manifest_cid.clone().ok_or("the placement has no manifest CID")?;
                    (cid, 16 << 20)
                }
                Target::File { entry, .. } => {
                    let b = placement
                        .blobs
                        .get(&entry.blake3)
                        .ok_or_else(|| format!("the placement has no CID for {}", entry.path))?;
                    (b.cid.clone(), entry.size)
                }
                Target::Table { hash, size } => {
                    let b = placement.blobs.get(&hash).ok_or("the placement has no CID for the chunk table")?;
                    (b.cid.clone(), size)
                }
            };
            let resp = client.cat(&cid, 0, size.max(1), Duration::from_secs(30)).await.map_err(|e| e.to_string())?;
            Ok(resp.bytes_stream().map(|r| r.map_err(|e| e.to_string())).boxed())
        }
    }
}

#[derive(Clone, Copy)]
enum Target<'a> {
    Manifest { name: &'a str, version: &'a str },
    File { name: &'a str, version: &'a str, entry: &'a FileEntry },
    Table { hash: crate::release::manifest::Blake3, size: u64 },
}

/// Manifests and chunk tables are small; a path that sends more is refused.
const MAX_METADATA: usize = 64 << 20;

async fn read_all(via: &Via, t: Target<'_>) -> Result<Vec<u8>, String> {
    let mut s = open(via, t).await?;
    let mut out = Vec::new();
    while let Some(piece) = s.next().await {
        out.extend_from_slice(&piece?);
        if out.len() > MAX_METADATA {
            return Err(format!("more than {MAX_METADATA} bytes of metadata"));
        }
    }
    Ok(out)
}

/// Runs the drill over `vias`.
pub async fn drill(
    name: &str,
    version: &str,
    vias: &[Via],
    trusted: &[PublicKey],
    progress: &dyn Progress,
) -> Result<DrillReport, DrillError> {
    let mut report = DrillReport { release: format!("{name}@{version}"), ..Default::default() };
    // Manifests: each path's, verified; the first good one is the reference.
    let mut manifests: Vec<Option<SignedManifest>> = Vec::new();
    for via in vias {
        let mut p = PathReport { via: via.label(), ..Default::default() };
        let m = match read_all(via, Target::Manifest { name, version }).await {
            Err(e) => Err(format!("manifest: {e}")),
            Ok(bytes) => SignedManifest::parse(&bytes)
                .map_err(|e| format!("manifest: {e}"))
                .and_then(|m| m.check_trust(trusted).map(|()| m).map_err(|e| format!("manifest: {e}")))
                .and_then(|m| {
                    if m.manifest.name == name && m.manifest.version.to_string() == version {
                        Ok(m)
                    } else {
                        Err(format!("manifest is for {}@{}", m.manifest.name, m.manifest.version))
                    }
                }),
        };
        match m {
            Ok(m) => manifests.push(Some(m)),
            Err(e) => {
                p.failures.push(e);
                manifests.push(None);
            }
        }
        report.paths.push(p);
    }
    let Some(reference) = manifests.iter().flatten().next().cloned() else {
        report.disagreements.push(format!("no path gave a manifest of {} signed by a trusted key", report.release));
        return Ok(report);
    };
    report.release_id = reference.id.to_hex();
    for (i, m) in manifests.iter().enumerate() {
        if let Some(m) = m
            && m.id != reference.id
        {
            report.disagreements.push(format!(
                "{} serves release {} but {} serves {}",
                report.paths[i].via, m.id, report.paths[0].via, reference.id
            ));
        }
    }
    let files = &reference.manifest.files;
    progress.begin("drill", files.iter().map(|f| f.size).sum::<u64>() * vias.len() as u64);
    for (via, p) in vias.iter().zip(report.paths.iter_mut()) {
        let started = Instant::now();
        for entry in files {
            let t0 = Instant::now();
            let mut hasher = match ChunkHasher::new(entry.chunk_size) {
                Ok(h) => h,
                Err(e) => {
                    p.failures.push(format!("{}: {e}", entry.path));
                    continue;
                }
            };
            let mut got = 0u64;
            let mut first = true;
            let outcome = async {
                let mut s = open(via, Target::File { name, version, entry }).await?;
                while let Some(piece) = s.next().await {
                    let piece = piece.map_err(|e| format!("cut after {got} bytes: {e}"))?;
                    if first {
                        p.ttfb_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
                        first = false;
                    }
                    got += piece.len() as u64;
                    hasher.update(&piece);
                    progress.advance(piece.len() as u64);
                }
                Ok::<(), String>(())
            }
            .await;
            p.bytes += got;
            p.files += 1;
            if let Err(e) = outcome {
                p.failures.push(format!("{}: {e}", entry.path));
                continue;
            }
            let digest = hasher.finish();
            if digest.size != entry.size {
                p.failures.push(format!("{}: {} bytes, the manifest says {}", entry.path, digest.size, entry.size));
            }
            p.digests.insert(entry.path.clone(), (digest.root, digest.table));
        }
        p.seconds = started.elapsed().as_secs_f64();
        p.ttfb_ms.sort_by(f64::total_cmp);
    }
    progress.end();
    locate_failures(&mut report, vias, files).await;
    Ok(report)
}

/// Turns hash mismatches into failures located to the chunk, and records
/// files the paths disagree on.
async fn locate_failures(report: &mut DrillReport, vias: &[Via], files: &[FileEntry]) {
    for entry in files {
        let want = entry.blake3.hash();
        // A correct chunk table: published (from a node path), or any path's that matched.
        let mut good: Option<ChunkTable> = report
            .paths
            .iter()
            .filter_map(|p| p.digests.get(&entry.path))
            .find(|(root, _)| *root == want)
            .and_then(|(_, t)| t.clone());
        if good.is_none()
            && let Some(hash) = entry.chunk_table
        {
            for via in vias.iter().filter(|v| matches!(v, Via::Node { .. })) {
                let size = entry.layout().map(|l| l.table_len()).unwrap_or(0);
                if let Ok(bytes) = read_all(via, Target::Table { hash, size }).await
                    && let Ok(layout) = entry.layout()
                    && let Ok(t) = crate::release::chunk::open_table(&bytes, &hash.hash(), layout, &want)
                {
                    good = Some(t);
                    break;
                }
            }
        }
        let mut roots = Vec::new();
        for p in report.paths.iter_mut() {
            let Some((root, table)) = p.digests.get(&entry.path) else { continue };
            roots.push(*root);
            if *root == want {
                continue;
            }
            let located = match (table, &good) {
                (Some(t), Some(g)) => t.entries().iter().zip(g.entries()).position(|(a, b)| a != b).map(|i| {
                    let r = g.layout().chunk_range(i as u64);
                    format!(
                        "{}: bytes {}..{} (offset {}): chunk {i} does not match the manifest",
                        entry.path, r.start, r.end, r.start
                    )
                }),
                _ => None,
            };
            p.failures.push(located.unwrap_or_else(|| {
                format!("{}: BLAKE3 {} is not the published {}", entry.path, root.to_hex(), entry.blake3)
            }));
        }
        roots.dedup();
        if roots.len() > 1 {
            report.disagreements.push(format!("{}: the paths served different bytes", entry.path));
        }
    }
}
