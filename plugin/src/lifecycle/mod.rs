//! Release lifecycle: the persistent registry of releases registered over
//! the admin API, tags, and states (deprecated, taken down).
//!
//! [`Store`] is the durable part (redb). [`Lifecycle`] is the immutable
//! snapshot the catalog carries, so a request sees one consistent view of
//! which version a tag names and what state a release is in.
//! [`admin`] is `shardgate.admin.v1.AdminService`.

pub mod admin;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::audit::{Entry, Event};

/// The generated protobuf and gRPC code of `proto/shardgate/admin/v1`.
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("shardgate.admin.v1");
}

const MANIFESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("manifests");
const PLACEMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("placements");
const STATES: TableDefinition<&str, &str> = TableDefinition::new("states");
const TAGS: TableDefinition<(&str, &str), &str> = TableDefinition::new("tags");
/// Key envelopes of encrypted releases (wrapped data keys only), by `name@version`.
const KEY_ENVELOPES: TableDefinition<&str, &[u8]> = TableDefinition::new("key_envelopes");
/// The audit trail: sequence number -> entry (canonical JSON), hash-chained.
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("release registry {path}: {why}")]
    Open { path: String, why: String },
    #[error("release registry: {0}")]
    Storage(String),
    #[error("release registry holds a record it cannot read ({key}): {why}")]
    Corrupt { key: String, why: String },
}

fn storage(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(e.to_string())
}

/// Why a release is deprecated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deprecation {
    pub successor: Option<semver::Version>,
    /// Unix seconds.
    pub sunset: Option<i64>,
    pub reason: String,
    /// Unix seconds.
    pub at: i64,
}

/// Why a release was taken down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Takedown {
    pub reason: String,
    pub at: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated: Option<Deprecation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_down: Option<Takedown>,
}

impl ReleaseState {
    pub fn label(&self) -> &'static str {
        if self.taken_down.is_some() {
            "taken_down"
        } else if self.deprecated.is_some() {
            "deprecated"
        } else {
            "active"
        }
    }

    /// The successor named by a deprecation, if any.
    pub fn successor(&self) -> Option<&semver::Version> {
        self.deprecated.as_ref().and_then(|d| d.successor.as_ref())
    }
}

/// Tags and states, as of one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lifecycle {
    pub states: HashMap<(String, semver::Version), ReleaseState>,
    /// Dataset name -> tag -> version.
    pub tags: BTreeMap<String, BTreeMap<String, semver::Version>>,
}

impl Lifecycle {
    pub fn state(&self, name: &str, version: &semver::Version) -> Option<&ReleaseState> {
        self.states.get(&(name.to_string(), version.clone()))
    }

    pub fn tag(&self, name: &str, tag: &str) -> Option<&semver::Version> {
        self.tags.get(name).and_then(|t| t.get(tag))
    }

    /// Tags that point at `version`.
    pub fn tags_of(&self, name: &str, version: &semver::Version) -> Vec<String> {
        self.tags
            .get(name)
            .map(|t| t.iter().filter(|(_, v)| *v == version).map(|(k, _)| k.clone()).collect())
            .unwrap_or_default()
    }
}

/// Checks a tag name: short, URL-safe, and never mistakable for a version.
pub fn check_tag(tag: &str) -> Result<(), String> {
    let ok_chars = tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if tag.is_empty() || tag.len() > 64 || !ok_chars || !tag.as_bytes()[0].is_ascii_alphabetic() {
        return Err(format!("tag {tag:?} must be 1-64 letters, digits, - _ . starting with a letter"));
    }
    if semver::Version::parse(tag).is_ok() {
        return Err(format!("tag {tag:?} is a version; tags can never be versions"));
    }
    Ok(())
}

/// Chains `event` after the last audit entry, inside `txn` (so the entry and
/// the change it records commit together, or neither does).
fn append(txn: &redb::WriteTransaction, event: Event) -> Result<Entry, StoreError> {
    let mut t = txn.open_table(AUDIT).map_err(storage)?;
    let (seq, prev) = match t.last().map_err(storage)? {
        Some((k, v)) => {
            let last = decode_entry(k.value(), v.value())?;
            (last.seq + 1, last.hash)
        }
        None => (0, crate::audit::GENESIS.to_string()),
    };
    let entry = Entry::chain(seq, &prev, jiff::Timestamp::now(), event);
    t.insert(seq, entry.to_line().as_slice()).map_err(storage)?;
    Ok(entry)
}

fn decode_entry(seq: u64, bytes: &[u8]) -> Result<Entry, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt { key: format!("audit entry {seq}"), why: e.to_string() })
}

/// A release registered over the admin API, as stored.
#[derive(Debug, Clone)]
pub struct Registered {
    pub manifest: Vec<u8>,
    pub placement: Option<Vec<u8>>,
}

pub(crate) fn key(name: &str, version: &semver::Version) -> String {
    format!("{name}@{version}")
}

/// The durable registry.
pub struct Store {
    db: Database,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// Opens (or creates) the registry at `path`; `None` keeps it in memory.
    pub fn open(path: Option<&Path>) -> Result<Self, StoreError> {
        let shown = crate::storage::shown(path);
        let err = |e: &dyn std::fmt::Display| StoreError::Open { path: shown.clone(), why: e.to_string() };
        let db = crate::storage::open_db(path).map_err(|e| err(&e))?;
        let txn = db.begin_write().map_err(|e| err(&e))?;
        txn.open_table(MANIFESTS).map_err(|e| err(&e))?;
        txn.open_table(PLACEMENTS).map_err(|e| err(&e))?;
        txn.open_table(STATES).map_err(|e| err(&e))?;
        txn.open_table(TAGS).map_err(|e| err(&e))?;
        txn.open_table(KEY_ENVELOPES).map_err(|e| err(&e))?;
        txn.open_table(AUDIT).map_err(|e| err(&e))?;
        txn.commit().map_err(|e| err(&e))?;
        Ok(Self { db })
    }

    /// Every registered release.
    pub fn registered(&self) -> Result<Vec<Registered>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let m = txn.open_table(MANIFESTS).map_err(storage)?;
        let p = txn.open_table(PLACEMENTS).map_err(storage)?;
        let mut out = Vec::new();
        for row in m.iter().map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            let placement = p.get(k.value()).map_err(storage)?.map(|b| b.value().to_vec());
            out.push(Registered { manifest: v.value().to_vec(), placement });
        }
        Ok(out)
    }

    /// Stores a release's manifest (and placement). The caller has checked
    /// immutability against everything served.
    pub fn put_release(
        &self,
        name: &str,
        version: &semver::Version,
        manifest: &[u8],
        placement: Option<&[u8]>,
        audit: Event,
    ) -> Result<(), StoreError> {
        let k = key(name, version);
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut m = txn.open_table(MANIFESTS).map_err(storage)?;
            m.insert(k.as_str(), manifest).map_err(storage)?;
            if let Some(p) = placement {
                let mut t = txn.open_table(PLACEMENTS).map_err(storage)?;
                t.insert(k.as_str(), p).map_err(storage)?;
            }
        }
        append(&txn, audit)?;
        txn.commit().map_err(storage)
    }

    pub fn set_tag(&self, name: &str, tag: &str, version: &semver::Version, audit: Event) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut t = txn.open_table(TAGS).map_err(storage)?;
            t.insert((name, tag), version.to_string().as_str()).map_err(storage)?;
        }
        append(&txn, audit)?;
        txn.commit().map_err(storage)
    }

    pub fn set_state(
        &self,
        name: &str,
        version: &semver::Version,
        state: &ReleaseState,
        audit: Event,
    ) -> Result<(), StoreError> {
        let k = key(name, version);
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut t = txn.open_table(STATES).map_err(storage)?;
            t.insert(k.as_str(), serde_json::to_string(state).map_err(storage)?.as_str()).map_err(storage)?;
        }
        append(&txn, audit)?;
        txn.commit().map_err(storage)
    }

    /// Appends an event that changes nothing else (a repair, ...) to the audit trail.
    pub fn audit(&self, event: Event) -> Result<Entry, StoreError> {
        let txn = self.db.begin_write().map_err(storage)?;
        let entry = append(&txn, event)?;
        txn.commit().map_err(storage)?;
        Ok(entry)
    }

    /// Up to `limit` audit entries after sequence number `after` (from the first when `None`).
    pub fn audit_entries(&self, after: Option<u64>, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(AUDIT).map_err(storage)?;
        let from = after.map_or(0, |a| a.saturating_add(1));
        let mut out = Vec::new();
        for row in t.range(from..).map_err(storage)?.take(limit) {
            let (k, v) = row.map_err(storage)?;
            out.push(decode_entry(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Every key envelope, by `name@version`.
    pub fn key_envelopes(&self) -> Result<std::collections::HashMap<String, Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(KEY_ENVELOPES).map_err(storage)?;
        let mut out = std::collections::HashMap::new();
        for row in t.iter().map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            out.insert(k.value().to_string(), v.value().to_vec());
        }
        Ok(out)
    }

    pub fn key_envelope(&self, name: &str, version: &semver::Version) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(KEY_ENVELOPES).map_err(storage)?;
        Ok(t.get(key(name, version).as_str()).map_err(storage)?.map(|v| v.value().to_vec()))
    }

    /// Stores (or replaces) a release's key envelope.
    pub fn put_key_envelope(
        &self,
        name: &str,
        version: &semver::Version,
        env: &[u8],
        audit: Event,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut t = txn.open_table(KEY_ENVELOPES).map_err(storage)?;
            t.insert(key(name, version).as_str(), env).map_err(storage)?;
        }
        append(&txn, audit)?;
        txn.commit().map_err(storage)
    }

    /// Destroys a release's key envelope; whether there was one (recorded only if there was).
    pub fn delete_key_envelope(&self, name: &str, version: &semver::Version, audit: Event) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(storage)?;
        let had = {
            let mut t = txn.open_table(KEY_ENVELOPES).map_err(storage)?;
            t.remove(key(name, version).as_str()).map_err(storage)?.is_some()
        };
        if had {
            append(&txn, audit)?;
        }
        txn.commit().map_err(storage)?;
        Ok(had)
    }

    /// Tags and states as stored.
    pub fn lifecycle(&self) -> Result<Lifecycle, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let mut out = Lifecycle::default();
        let states = txn.open_table(STATES).map_err(storage)?;
        for row in states.iter().map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            let corrupt = |why: String| StoreError::Corrupt { key: k.value().to_string(), why };
            let (name, version) = k.value().rsplit_once('@').ok_or_else(|| corrupt("no @ in key".into()))?;
            let version = semver::Version::parse(version).map_err(|e| corrupt(e.to_string()))?;
            let state: ReleaseState = serde_json::from_str(v.value()).map_err(|e| corrupt(e.to_string()))?;
            out.states.insert((name.to_string(), version), state);
        }
        let tags = txn.open_table(TAGS).map_err(storage)?;
        for row in tags.iter().map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            let (name, tag) = k.value();
            let version = semver::Version::parse(v.value())
                .map_err(|e| StoreError::Corrupt { key: format!("{name}:{tag}"), why: e.to_string() })?;
            out.tags.entry(name.to_string()).or_default().insert(tag.to_string(), version);
        }
        Ok(out)
    }
}
