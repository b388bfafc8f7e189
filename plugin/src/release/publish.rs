//! `publish`: adds a packed release to BTFS nodes, each blob (files, chunk
//! tables, the manifest) pinned on at least the release's replication target
//! of them, and records where each blob went in `placement.json` (its CID and
//! the nodes holding it), saved after every add so a rerun after an
//! interruption adds only what is missing (or what a node lost).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::layout::ReleaseDir;
use super::manifest::{Blake3, SignedManifest};
use super::pack::write_synced;
use super::placement::{BlobKind, BlobPlacement, PLACEMENT_SCHEMA, Placement};
use crate::btfs::{NodeClient, NodeError};
use crate::progress::Progress;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Manifest(String),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(
        "{path}: sent bytes hash to {sent}, manifest says {expected}; the release directory is damaged (run `shardgate verify`)"
    )]
    Mismatch { path: String, sent: Blake3, expected: Blake3 },
    #[error("replication target {target} needs at least {target} nodes; {given} given")]
    TooFewNodes { target: usize, given: usize },
    #[error("{path}: pinned on {got} of the {target} nodes the replication target asks for; {why}")]
    UnderReplicated { path: String, got: usize, target: usize, why: String },
    #[error(
        "{path}: node {node} gave CID {got}, but the release placed it as {expected} (do the nodes add with different settings?)"
    )]
    CidMismatch { path: String, node: String, got: String, expected: String },
}

/// A node's name in `placement.json`: its API base URL.
pub fn node_id(node: &NodeClient) -> String {
    node.config().url.trim_end_matches('/').to_string()
}

#[derive(Debug)]
pub struct PublishOutcome {
    pub placement: Placement,
    /// Blob copies added (a blob added to two nodes counts twice).
    pub added: usize,
    /// Blob copies found already pinned.
    pub already_present: usize,
    pub bytes_added: u64,
    /// The replication target applied.
    pub target: usize,
    /// The distinct nodes given.
    pub nodes: usize,
}

struct Blob {
    hash: Blake3,
    path: PathBuf,
    name: String,
    size: u64,
    kind: BlobKind,
}

/// Publishes the release in `dir` to `nodes`: every blob pinned on at least
/// `target` of them (the release's `replication_target` when `None`, else 1),
/// tried in the order given; a node that fails is passed over.
pub async fn publish(
    dir: &ReleaseDir,
    nodes: &[NodeClient],
    target: Option<usize>,
    progress: &dyn Progress,
) -> Result<PublishOutcome, PublishError> {
    let manifest_path = dir.manifest();
    let bytes =
        std::fs::read(&manifest_path).map_err(|source| PublishError::Io { path: manifest_path.clone(), source })?;
    let signed = SignedManifest::parse(&bytes)
        .map_err(|e| PublishError::Manifest(format!("{}: {e}", manifest_path.display())))?;
    let m = &signed.manifest;
    let target = target.or(m.envelope.replication_target.map(|t| t as usize)).unwrap_or(1).max(1);
    // A node given twice (perhaps once with a trailing slash) is one node.
    let mut seen = std::collections::BTreeSet::new();
    let nodes: Vec<&NodeClient> = nodes.iter().filter(|n| seen.insert(node_id(n))).collect();
    if target > nodes.len() {
        return Err(PublishError::TooFewNodes { target, given: nodes.len() });
    }

    // Every distinct blob once: files, tables, then the manifest itself.
    let mut blobs: BTreeMap<Blake3, Blob> = BTreeMap::new();
    for f in &m.files {
        blobs.entry(f.blake3).or_insert_with(|| Blob {
            hash: f.blake3,
            path: dir.file(&f.path),
            name: f.path.rsplit('/').next().unwrap_or(&f.path).to_string(),
            size: f.size,
            kind: BlobKind::File,
        });
        if let (Some(t), Ok(layout)) = (f.chunk_table, f.layout()) {
            blobs.entry(t).or_insert_with(|| Blob {
                hash: t,
                path: dir.table(&t),
                name: format!("{t}.sgct"),
                size: layout.table_len(),
                kind: BlobKind::ChunkTable,
            });
        }
    }
    let manifest_blob = Blob {
        hash: signed.id,
        path: manifest_path.clone(),
        name: "manifest.json".into(),
        size: bytes.len() as u64,
        kind: BlobKind::Manifest,
    };

    let placement_path = dir.placement();
    let mut placement = match std::fs::read(&placement_path) {
        Ok(b) => match Placement::parse(&b) {
            Ok(p) if p.manifest_blake3 == signed.id => p,
            // A placement for another release (or damaged) is replaced, not trusted.
            _ => fresh(&signed),
        },
        Err(_) => fresh(&signed),
    };
    let save = |placement: &Placement| {
        write_synced(&placement_path, &placement.to_bytes()).map_err(|e| PublishError::Io {
            path: placement_path.clone(),
            source: std::io::Error::other(e.to_string()),
        })
    };

    let total: u64 = (blobs.values().map(|b| b.size).sum::<u64>() + manifest_blob.size) * target as u64;
    progress.begin("publish", total);
    let (mut added, mut already_present, mut bytes_added) = (0, 0, 0u64);
    for blob in blobs.values().chain(std::iter::once(&manifest_blob)) {
        let mut holders: Vec<String> = Vec::new();
        // Nodes seen not to pin it, whose add then failed: no longer holders.
        let mut lost: Vec<String> = Vec::new();
        let mut failures: Vec<String> = Vec::new();
        for node in nodes.iter().copied() {
            if holders.len() == target {
                break;
            }
            let id = node_id(node);
            let known = placement.blobs.get(&blob.hash).map(|p| p.cid.clone());
            if let Some(cid) = &known {
                match node.is_pinned(cid).await {
                    Ok(true) => {
                        already_present += 1;
                        holders.push(id);
                        progress.advance(blob.size);
                        continue;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        failures.push(e.to_string());
                        continue;
                    }
                }
            }
            let (cid, sent) = match node.add_file(&blob.path, &blob.name, &|n| progress.advance(n)).await {
                Ok(x) => x,
                Err(e @ NodeError::Io { .. }) => return Err(e.into()),
                Err(e) => {
                    if known.is_some() {
                        lost.push(id);
                    }
                    failures.push(e.to_string());
                    continue;
                }
            };
            let sent = Blake3::from(sent);
            if sent != blob.hash {
                return Err(PublishError::Mismatch {
                    path: blob.path.display().to_string(),
                    sent,
                    expected: blob.hash,
                });
            }
            if let Some(expected) = known
                && expected != cid
            {
                return Err(PublishError::CidMismatch {
                    path: blob.path.display().to_string(),
                    node: id,
                    got: cid,
                    expected,
                });
            }
            added += 1;
            bytes_added += blob.size;
            holders.push(id);
            if blob.kind == BlobKind::Manifest {
                placement.manifest_cid = Some(cid.clone());
            }
            let entry = placement.blobs.entry(blob.hash).or_insert_with(|| BlobPlacement {
                cid: cid.clone(),
                size: blob.size,
                kind: blob.kind,
                nodes: Vec::new(),
            });
            let last = holders.last().cloned().unwrap_or_default();
            if !entry.nodes.contains(&last) {
                entry.nodes.push(last);
            }
            save(&placement)?;
        }
        if holders.len() < target {
            return Err(PublishError::UnderReplicated {
                path: blob.path.display().to_string(),
                got: holders.len(),
                target,
                why: if failures.is_empty() { "no other node was given".into() } else { failures.join("; ") },
            });
        }
        // The nodes found holding it this run, in node order, then those an
        // earlier run placed it on that this run did not see lose it (not
        // asked once the target was met, unreachable, or not given this time).
        if let Some(entry) = placement.blobs.get_mut(&blob.hash) {
            let kept = entry.nodes.iter().filter(|n| !holders.contains(n) && !lost.contains(n)).cloned();
            let nodes: Vec<String> = holders.iter().cloned().chain(kept).collect();
            if entry.nodes != nodes {
                entry.nodes = nodes;
                save(&placement)?;
            }
        }
    }
    if placement.manifest_cid.is_none() {
        placement.manifest_cid = placement.cid_of(&signed.id).map(str::to_string);
        save(&placement)?;
    }
    progress.end();
    Ok(PublishOutcome { placement, added, already_present, bytes_added, target, nodes: nodes.len() })
}

fn fresh(signed: &SignedManifest) -> Placement {
    Placement {
        schema: PLACEMENT_SCHEMA.into(),
        name: signed.manifest.name.clone(),
        version: signed.manifest.version.clone(),
        manifest_blake3: signed.id,
        manifest_cid: None,
        blobs: BTreeMap::new(),
    }
}
