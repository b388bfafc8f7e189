//! `placement.json`: where a release's bytes live on BTFS, mapping each
//! BLAKE3 hash (files, chunk tables, the manifest) to its CID.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::manifest::Blake3;

pub const PLACEMENT_SCHEMA: &str = "shardgate.placement/v1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    pub schema: String,
    pub name: String,
    pub version: semver::Version,
    /// The release id: BLAKE3 of `manifest.json`.
    pub manifest_blake3: Blake3,
    /// CID of `manifest.json`, once it is published.
    pub manifest_cid: Option<String>,
    pub blobs: BTreeMap<Blake3, BlobPlacement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobPlacement {
    pub cid: String,
    pub size: u64,
    pub kind: BlobKind,
    /// The nodes (API base URLs) that `publish` placed and pinned it on, in
    /// the order given. Empty in placements written before replication.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobKind {
    File,
    ChunkTable,
    Manifest,
}

impl Placement {
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let p: Placement = serde_json::from_slice(bytes).map_err(|e| format!("placement.json: {e}"))?;
        if p.schema != PLACEMENT_SCHEMA {
            return Err(format!("placement.json: schema {:?} is not {PLACEMENT_SCHEMA:?}", p.schema));
        }
        Ok(p)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let v = serde_json::to_value(self).unwrap_or_default();
        let mut b = super::manifest::canonical_json(&v, true);
        b.push(b'\n');
        b
    }

    pub fn cid_of(&self, hash: &Blake3) -> Option<&str> {
        self.blobs.get(hash).map(|b| b.cid.as_str())
    }
}
