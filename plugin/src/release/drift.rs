//! The drift gate: how a release differs from its parent, and whether that
//! is within the thresholds its publisher set.
//!
//! A release is profiled from its files: the file list, JSONL lines and
//! WebDataset samples as records (each with a hash of its bytes), and the
//! label distribution when a label field is named. Two profiles give a
//! [`Report`]; [`Thresholds`] (the meta file's `[drift]` table) say which
//! figures refuse publication.
//!
//! Memory: one 8-byte hash per record of each release.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};

use serde::{Deserialize, Serialize};

use super::layout::ReleaseDir;
use super::manifest::{Blake3, FileEntry};
use crate::progress::Progress;

#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    #[error("{path}: {why}")]
    Read { path: String, why: String },
    #[error("meta file key `{key}`: {why}")]
    Meta { key: String, why: String },
    #[error("meta file is not valid TOML: {0}")]
    Syntax(String),
}

/// The meta file's `[drift]` table. Unset figures are not checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// The JSONL field or WebDataset member extension (such as `cls`) that
    /// holds a record's label. Default: the envelope's `label_taxonomy.field`.
    #[serde(default)]
    pub label_field: Option<String>,
    /// Most files the release may drop.
    #[serde(default)]
    pub max_files_removed: Option<u64>,
    /// Most files added, removed or changed, as a percentage of the parent's files.
    #[serde(default)]
    pub max_files_changed_pct: Option<f64>,
    /// Largest change in total bytes, as a percentage of the parent's.
    #[serde(default)]
    pub max_bytes_change_pct: Option<f64>,
    /// Largest change in record count, as a percentage of the parent's.
    #[serde(default)]
    pub max_records_change_pct: Option<f64>,
    /// Largest total variation distance between the label distributions (0 to 1).
    #[serde(default)]
    pub max_label_shift: Option<f64>,
    /// Least share of the parent's records (by hash) still in the release, in percent.
    #[serde(default)]
    pub min_overlap_pct: Option<f64>,
}

/// Splits a meta file into the envelope's TOML and the `[drift]` thresholds.
pub fn split_meta(text: &str) -> Result<(String, Option<Thresholds>), DriftError> {
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| DriftError::Syntax(e.to_string()))?;
    let drift = match table.remove("drift") {
        None => None,
        Some(v) => {
            let t: Thresholds = serde_path_to_error::deserialize(v).map_err(|e| DriftError::Meta {
                key: format!("drift.{}", e.path()),
                why: e.into_inner().to_string(),
            })?;
            for (key, v) in [
                ("max_files_changed_pct", t.max_files_changed_pct),
                ("max_bytes_change_pct", t.max_bytes_change_pct),
                ("max_records_change_pct", t.max_records_change_pct),
                ("min_overlap_pct", t.min_overlap_pct),
                ("max_label_shift", t.max_label_shift.map(|x| x * 100.0)),
            ] {
                if v.is_some_and(|x| !(x.is_finite() && (0.0..=100.0).contains(&x))) {
                    return Err(DriftError::Meta {
                        key: format!("drift.{key}"),
                        why: "must be within 0..100 (0..1 for a shift)".into(),
                    });
                }
            }
            Some(t)
        }
    };
    let rest = toml::to_string(&table).map_err(|e| DriftError::Meta { key: "(meta)".into(), why: e.to_string() })?;
    Ok((rest, drift))
}

/// What a release holds, for comparison.
#[derive(Debug, Default, Clone)]
pub struct Profile {
    pub files: BTreeMap<String, (Blake3, u64)>,
    pub records: u64,
    pub labels: BTreeMap<String, u64>,
    hashes: HashSet<u64>,
}

fn read_err(path: &std::path::Path, e: impl std::fmt::Display) -> DriftError {
    DriftError::Read { path: path.display().to_string(), why: e.to_string() }
}

fn record_hash(bytes: &[u8]) -> u64 {
    let h = blake3::hash(bytes);
    u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

fn label_of_json(line: &[u8], field: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    match v.get(field)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

impl Profile {
    /// Profiles the files of a release directory (`entries` from its manifest).
    pub fn of(
        dir: &ReleaseDir,
        entries: &[FileEntry],
        label_field: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<Self, DriftError> {
        let mut p = Profile::default();
        progress.begin("drift", entries.iter().map(|e| e.size).sum());
        for e in entries {
            p.files.insert(e.path.clone(), (e.blake3, e.size));
            if e.encryption.is_some() {
                // Ciphertext has no records to compare, and profiling the plaintext
                // would publish its statistics in the report: only its hash and size count.
                progress.advance(e.size);
                continue;
            }
            let path = dir.file(&e.path);
            if e.path.ends_with(".jsonl") {
                let f = File::open(&path).map_err(|err| read_err(&path, err))?;
                for line in BufReader::with_capacity(1 << 20, f).split(b'\n') {
                    let line = line.map_err(|err| read_err(&path, err))?;
                    let line = line.strip_suffix(b"\r").unwrap_or(&line);
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    p.add(record_hash(line), label_field.and_then(|f| label_of_json(line, f)));
                }
            } else if e.path.ends_with(".tar") {
                p.add_shard(&path, label_field)?;
            }
            progress.advance(e.size);
        }
        progress.end();
        Ok(p)
    }

    fn add(&mut self, hash: u64, label: Option<String>) {
        self.records += 1;
        self.hashes.insert(hash);
        if let Some(l) = label {
            *self.labels.entry(l).or_default() += 1;
        }
    }

    /// A WebDataset shard: consecutive members sharing a key are one sample,
    /// hashed over its (extension, bytes) pairs in order of extension.
    fn add_shard(&mut self, path: &std::path::Path, label_field: Option<&str>) -> Result<(), DriftError> {
        let f = File::open(path).map_err(|e| read_err(path, e))?;
        let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 20, f));
        let mut current: Option<(String, BTreeMap<String, Vec<u8>>)> = None;
        let flush = |s: Option<(String, BTreeMap<String, Vec<u8>>)>, p: &mut Profile| {
            if let Some((_, members)) = s {
                let mut h = blake3::Hasher::new();
                for (ext, bytes) in &members {
                    h.update(&(ext.len() as u64).to_le_bytes()).update(ext.as_bytes());
                    h.update(&(bytes.len() as u64).to_le_bytes()).update(bytes);
                }
                let hash = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap_or([0; 8]));
                let label =
                    label_field.and_then(|f| members.get(f)).map(|b| String::from_utf8_lossy(b).trim().to_string());
                p.add(hash, label);
            }
        };
        for entry in archive.entries().map_err(|e| read_err(path, e))? {
            let mut entry = entry.map_err(|e| read_err(path, e))?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry.path().map_err(|e| read_err(path, e))?.to_string_lossy().into_owned();
            let (dir, base) = name.rsplit_once('/').map_or(("", name.as_str()), |(d, b)| (d, b));
            let Some((stem, ext)) = base.split_once('.') else { continue };
            let key = format!("{dir}/{stem}");
            // The header's size is not trusted for an allocation.
            let mut bytes = Vec::with_capacity(entry.size().min(1 << 20) as usize);
            entry.read_to_end(&mut bytes).map_err(|e| read_err(path, e))?;
            if current.as_ref().is_none_or(|(k, _)| k != &key) {
                flush(current.take(), self);
                current = Some((key, BTreeMap::new()));
            }
            if let Some((_, m)) = current.as_mut() {
                m.insert(ext.to_string(), bytes);
            }
        }
        flush(current.take(), self);
        Ok(())
    }
}

/// How a release differs from its parent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub parent: String,
    pub release: String,
    pub files_added: Vec<String>,
    pub files_removed: Vec<String>,
    pub files_changed: Vec<String>,
    pub parent_files: u64,
    pub parent_bytes: u64,
    pub bytes: u64,
    pub parent_records: u64,
    pub records: u64,
    pub label_field: Option<String>,
    pub parent_labels: BTreeMap<String, u64>,
    pub labels: BTreeMap<String, u64>,
    /// Total variation distance between the label distributions (0 to 1).
    pub label_shift: Option<f64>,
    /// Share of the parent's distinct records still present, in percent.
    pub overlap_pct: Option<f64>,
}

fn pct_change(from: u64, to: u64) -> f64 {
    if from == 0 {
        return if to == 0 { 0.0 } else { 100.0 };
    }
    (to as f64 - from as f64).abs() / from as f64 * 100.0
}

impl Report {
    pub fn compare(
        parent_name: &str,
        parent: &Profile,
        name: &str,
        child: &Profile,
        label_field: Option<&str>,
    ) -> Self {
        let mut added = Vec::new();
        let mut changed = Vec::new();
        for (path, (h, _)) in &child.files {
            match parent.files.get(path) {
                None => added.push(path.clone()),
                Some((ph, _)) if ph != h => changed.push(path.clone()),
                Some(_) => {}
            }
        }
        let removed = parent.files.keys().filter(|p| !child.files.contains_key(*p)).cloned().collect();
        let label_shift =
            (label_field.is_some() && (!parent.labels.is_empty() || !child.labels.is_empty())).then(|| {
                let (pt, ct) = (
                    parent.labels.values().sum::<u64>().max(1) as f64,
                    child.labels.values().sum::<u64>().max(1) as f64,
                );
                let keys: std::collections::BTreeSet<&String> =
                    parent.labels.keys().chain(child.labels.keys()).collect();
                keys.iter()
                    .map(|k| {
                        let a = *parent.labels.get(*k).unwrap_or(&0) as f64 / pt;
                        let b = *child.labels.get(*k).unwrap_or(&0) as f64 / ct;
                        (a - b).abs()
                    })
                    .sum::<f64>()
                    / 2.0
            });
        let overlap_pct = (!parent.hashes.is_empty()).then(|| {
            let kept = parent.hashes.iter().filter(|h| child.hashes.contains(h)).count();
            kept as f64 / parent.hashes.len() as f64 * 100.0
        });
        Report {
            parent: parent_name.to_string(),
            release: name.to_string(),
            files_added: added,
            files_removed: removed,
            files_changed: changed,
            parent_files: parent.files.len() as u64,
            parent_bytes: parent.files.values().map(|(_, s)| s).sum(),
            bytes: child.files.values().map(|(_, s)| s).sum(),
            parent_records: parent.records,
            records: child.records,
            label_field: label_field.map(str::to_string),
            parent_labels: parent.labels.clone(),
            labels: child.labels.clone(),
            label_shift,
            overlap_pct,
        }
    }

    pub fn files_changed_pct(&self) -> f64 {
        let n = (self.files_added.len() + self.files_removed.len() + self.files_changed.len()) as f64;
        if self.parent_files == 0 { if n == 0.0 { 0.0 } else { 100.0 } } else { n / self.parent_files as f64 * 100.0 }
    }

    /// The figures past `t`, each as a sentence naming the threshold.
    pub fn breaches(&self, t: &Thresholds) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(max) = t.max_files_removed
            && self.files_removed.len() as u64 > max
        {
            out.push(format!("{} files removed, more than drift.max_files_removed = {max}", self.files_removed.len()));
        }
        let mut over = |key: &str, value: f64, max: Option<f64>, unit: &str| {
            if let Some(max) = max
                && value > max + 1e-9
            {
                out.push(format!("{key}: {value:.2}{unit} is above drift.{key} = {max}{unit}"));
            }
        };
        over("max_files_changed_pct", self.files_changed_pct(), t.max_files_changed_pct, "%");
        over("max_bytes_change_pct", pct_change(self.parent_bytes, self.bytes), t.max_bytes_change_pct, "%");
        over("max_records_change_pct", pct_change(self.parent_records, self.records), t.max_records_change_pct, "%");
        if let (Some(shift), Some(max)) = (self.label_shift, t.max_label_shift)
            && shift > max + 1e-9
        {
            out.push(format!("label shift {shift:.3} is above drift.max_label_shift = {max}"));
        }
        if let (Some(overlap), Some(min)) = (self.overlap_pct, t.min_overlap_pct)
            && overlap + 1e-9 < min
        {
            out.push(format!(
                "only {overlap:.2}% of the parent's records remain, below drift.min_overlap_pct = {min}%"
            ));
        }
        out
    }

    /// The report for a person.
    pub fn render(&self) -> String {
        let mut s = format!("drift {} -> {}\n", self.parent, self.release);
        s += &format!(
            "  files: {} added, {} removed, {} changed of {} ({:.2}%)\n",
            self.files_added.len(),
            self.files_removed.len(),
            self.files_changed.len(),
            self.parent_files,
            self.files_changed_pct()
        );
        for (what, list) in
            [("added", &self.files_added), ("removed", &self.files_removed), ("changed", &self.files_changed)]
        {
            for p in list.iter().take(10) {
                s += &format!("    {what} {p}\n");
            }
            if list.len() > 10 {
                s += &format!("    ... {} more {what}\n", list.len() - 10);
            }
        }
        s += &format!(
            "  bytes: {} -> {} ({:+.2}%)\n",
            self.parent_bytes,
            self.bytes,
            signed_pct(self.parent_bytes, self.bytes)
        );
        s += &format!(
            "  records: {} -> {} ({:+.2}%)\n",
            self.parent_records,
            self.records,
            signed_pct(self.parent_records, self.records)
        );
        if let Some(o) = self.overlap_pct {
            s += &format!("  overlap: {o:.2}% of the parent's records remain\n");
        }
        if let Some(f) = &self.label_field {
            s += &format!("  labels ({f}): shift {:.3}\n", self.label_shift.unwrap_or(0.0));
            let keys: std::collections::BTreeSet<&String> =
                self.parent_labels.keys().chain(self.labels.keys()).collect();
            for k in keys.iter().take(20) {
                s += &format!(
                    "    {k}: {} -> {}\n",
                    self.parent_labels.get(*k).unwrap_or(&0),
                    self.labels.get(*k).unwrap_or(&0)
                );
            }
        }
        s
    }
}

fn signed_pct(from: u64, to: u64) -> f64 {
    if from == 0 { if to == 0 { 0.0 } else { 100.0 } } else { (to as f64 - from as f64) / from as f64 * 100.0 }
}
