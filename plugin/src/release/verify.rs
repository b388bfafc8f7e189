//! Offline verification of a packed release directory: the signature, every
//! chunk table against its file's root, every chunk, and every file's hash.
//! Every failure is reported with the file and byte offsets it concerns.

use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::chunk::{ChunkHasher, ChunkTable, TableCheckError, open_table};
use super::keys::PublicKey;
use super::layout::{MANIFEST, ReleaseDir};
use super::manifest::{FileEntry, ManifestError, SignedManifest};
use crate::progress::Progress;

/// One thing that is not as the manifest says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The file concerned, relative to the release directory.
    pub file: String,
    /// Byte range within that file, where it can be located.
    pub bytes: Option<Range<u64>>,
    pub what: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.bytes {
            Some(r) => write!(f, "{}: bytes {}..{} (offset {}): {}", self.file, r.start, r.end, r.start, self.what),
            None => write!(f, "{}: {}", self.file, self.what),
        }
    }
}

#[derive(Debug)]
pub struct VerifyReport {
    pub manifest: Option<SignedManifest>,
    pub files_checked: usize,
    pub bytes_checked: u64,
    pub failures: Vec<Failure>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.failures.is_empty() && self.manifest.is_some()
    }
}

/// Verifies a release directory against the trusted keys.
pub fn verify_dir(dir: &ReleaseDir, trusted: &[PublicKey], progress: &dyn Progress) -> VerifyReport {
    let mut report = VerifyReport { manifest: None, files_checked: 0, bytes_checked: 0, failures: Vec::new() };
    let bytes = match std::fs::read(dir.manifest()) {
        Ok(b) => b,
        Err(e) => {
            report.failures.push(Failure { file: MANIFEST.into(), bytes: None, what: e.to_string() });
            return report;
        }
    };
    let signed = match SignedManifest::parse(&bytes) {
        Ok(s) => s,
        Err(e) => {
            let bytes = match &e {
                ManifestError::NotCanonical { offset } => Some(*offset as u64..*offset as u64 + 1),
                _ => None,
            };
            report.failures.push(Failure { file: MANIFEST.into(), bytes, what: e.to_string() });
            return report;
        }
    };
    if let Err(e) = signed.check_trust(trusted) {
        report.failures.push(Failure { file: MANIFEST.into(), bytes: None, what: e.to_string() });
    }
    let files = &signed.manifest.files;
    progress.begin("verify", signed.manifest.total_bytes);
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).min(files.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(entry) = files.get(i) else { break };
                    let found = verify_file(dir, entry, progress);
                    if !found.is_empty() {
                        failures.lock().unwrap_or_else(|p| p.into_inner()).extend(found);
                    }
                }
            });
        }
    });
    progress.end();
    let mut found = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    found.sort_by(|a, b| {
        (&a.file, a.bytes.as_ref().map(|r| r.start)).cmp(&(&b.file, b.bytes.as_ref().map(|r| r.start)))
    });
    report.failures.extend(found);
    report.files_checked = files.len();
    report.bytes_checked = signed.manifest.total_bytes;
    report.manifest = Some(signed);
    report
}

/// Hashes a file chunk by chunk with bounded memory.
fn hash_file(path: &PathBuf, chunk_size: u64, progress: &dyn Progress) -> io::Result<super::chunk::FileDigest> {
    let mut f = File::open(path)?;
    let mut h = ChunkHasher::new(chunk_size).map_err(io::Error::other)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        progress.advance(n as u64);
    }
    Ok(h.finish())
}

fn verify_file(dir: &ReleaseDir, entry: &FileEntry, progress: &dyn Progress) -> Vec<Failure> {
    let name = format!("files/{}", entry.path);
    let fail = |bytes: Option<Range<u64>>, what: String| Failure { file: name.clone(), bytes, what };
    let mut out = Vec::new();
    let Ok(layout) = entry.layout() else {
        return vec![fail(None, "bad chunk size in manifest".into())];
    };
    let digest = match hash_file(&dir.file(&entry.path), entry.chunk_size, progress) {
        Ok(d) => d,
        Err(e) => return vec![fail(None, format!("cannot read: {e}"))],
    };
    if digest.size != entry.size {
        out.push(fail(
            Some(digest.size.min(entry.size)..digest.size.max(entry.size)),
            format!("size is {} bytes, manifest says {}", digest.size, entry.size),
        ));
    }
    let root = entry.blake3.hash();
    let data_ok = digest.root == root && digest.size == entry.size;

    let Some(table_hash) = entry.chunk_table else {
        if !data_ok {
            out.push(fail(Some(0..entry.size), format!("BLAKE3 is {}, manifest says {}", digest.root, entry.blake3)));
        }
        return out;
    };
    let table_path = dir.table(&table_hash);
    let table_name = format!("tables/{table_hash}.sgct");
    let table_bytes = match std::fs::read(&table_path) {
        Ok(b) => b,
        Err(e) => {
            out.push(Failure { file: table_name, bytes: None, what: format!("chunk table of {}: {e}", entry.path) });
            return out;
        }
    };
    match open_table(&table_bytes, &table_hash.hash(), layout, &root) {
        Ok(table) => {
            // The table is proven; every mismatching chunk is a data fault.
            let computed = digest.table.as_ref();
            for i in 0..layout.chunk_count() {
                let good = computed.and_then(|c| c.entries().get(i as usize)) == table.entries().get(i as usize);
                if !good {
                    let r = layout.chunk_range(i);
                    out.push(fail(Some(r), format!("chunk {i} does not match its chunk-table entry")));
                }
            }
            if out.is_empty() && !data_ok {
                out.push(fail(Some(0..entry.size), "file hash does not match the manifest".into()));
            }
        }
        Err(e) => {
            out.push(Failure {
                file: table_name.clone(),
                bytes: None,
                what: format!("chunk table of {}: {e}", entry.path),
            });
            out.extend(locate_table_damage(&table_bytes, &table_name, digest.table.as_ref(), data_ok, &e));
            if !data_ok {
                out.push(fail(
                    Some(0..entry.size),
                    format!("BLAKE3 is {}, manifest says {}", digest.root, entry.blake3),
                ));
            }
        }
    }
    out
}

/// With a table that failed its checks, points at the damaged bytes: entries
/// that differ from the chunks of a file whose own hash is right.
fn locate_table_damage(
    bytes: &[u8],
    table_name: &str,
    computed: Option<&ChunkTable>,
    data_ok: bool,
    err: &TableCheckError,
) -> Vec<Failure> {
    let mut out = Vec::new();
    let Some(computed) = computed.filter(|_| data_ok) else {
        return out;
    };
    let expected = computed.encode();
    if expected.len() != bytes.len() {
        return out;
    }
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != expected[i] {
            let at = i as u64;
            let what = if at < super::chunk::TABLE_HEADER_LEN {
                "table header damaged".to_string()
            } else {
                format!("entry {} damaged", ChunkTable::entry_index(at))
            };
            out.push(Failure {
                file: table_name.to_string(),
                bytes: Some(at..at + 1),
                what: format!("{what} ({err})"),
            });
            // One report per damaged entry.
            i = if at < super::chunk::TABLE_HEADER_LEN {
                super::chunk::TABLE_HEADER_LEN as usize
            } else {
                ChunkTable::entry_offset(ChunkTable::entry_index(at) + 1) as usize
            };
            continue;
        }
        i += 1;
    }
    out
}
