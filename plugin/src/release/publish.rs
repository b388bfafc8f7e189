//! `publish`: adds a packed release to a BTFS node and records where each
//! blob went in `placement.json`, saved after every add so a rerun after an
//! interruption adds only what is missing (or what the node lost).

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
}

#[derive(Debug)]
pub struct PublishOutcome {
    pub placement: Placement,
    pub added: usize,
    pub already_present: usize,
    pub bytes_added: u64,
}

struct Blob {
    hash: Blake3,
    path: PathBuf,
    name: String,
    size: u64,
    kind: BlobKind,
}

/// Publishes the release in `dir` to the node.
pub async fn publish(
    dir: &ReleaseDir,
    node: &NodeClient,
    progress: &dyn Progress,
) -> Result<PublishOutcome, PublishError> {
    let manifest_path = dir.manifest();
    let bytes =
        std::fs::read(&manifest_path).map_err(|source| PublishError::Io { path: manifest_path.clone(), source })?;
    let signed = SignedManifest::parse(&bytes)
        .map_err(|e| PublishError::Manifest(format!("{}: {e}", manifest_path.display())))?;
    let m = &signed.manifest;

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

    let total: u64 = blobs.values().map(|b| b.size).sum::<u64>() + manifest_blob.size;
    progress.begin("publish", total);
    let (mut added, mut already_present, mut bytes_added) = (0, 0, 0u64);
    for blob in blobs.values().chain(std::iter::once(&manifest_blob)) {
        if let Some(p) = placement.blobs.get(&blob.hash)
            && node.is_pinned(&p.cid).await?
        {
            already_present += 1;
            progress.advance(blob.size);
            continue;
        }
        let (cid, sent) = node.add_file(&blob.path, &blob.name, &|n| progress.advance(n)).await?;
        let sent = Blake3::from(sent);
        if sent != blob.hash {
            return Err(PublishError::Mismatch { path: blob.path.display().to_string(), sent, expected: blob.hash });
        }
        added += 1;
        bytes_added += blob.size;
        if blob.kind == BlobKind::Manifest {
            placement.manifest_cid = Some(cid.clone());
        }
        placement.blobs.insert(blob.hash, BlobPlacement { cid, size: blob.size, kind: blob.kind });
        write_synced(&placement_path, &placement.to_bytes()).map_err(|e| PublishError::Io {
            path: placement_path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    if placement.manifest_cid.is_none() {
        placement.manifest_cid = placement.cid_of(&signed.id).map(str::to_string);
        write_synced(&placement_path, &placement.to_bytes()).map_err(|e| PublishError::Io {
            path: placement_path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    progress.end();
    Ok(PublishOutcome { placement, added, already_present, bytes_added })
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
