//! The `dir` origin: local release directories as written by `shardgate pack`.
//!
//! Files are found by BLAKE3 through an index built from the manifests found
//! under the configured path. Every path joined comes from a manifest entry
//! that passed `check_path` (no `..`, no absolute paths), so a request can
//! never name a file outside the release directories.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use bytes::BytesMut;

use super::{ByteStream, OriginErrorKind, PathIndex};
use crate::release::layout::ReleaseDir;
use crate::release::manifest::{Blake3, SignedManifest};

/// Bytes per `pread` of the dir origin: the default chunk size, so each read
/// becomes exactly one chunk and a cached chunk never pins a larger buffer.
const READ_BLOCK: usize = 256 * 1024;

#[derive(Debug)]
pub struct DirIndex {
    root: PathBuf,
    paths: RwLock<PathIndex>,
}

impl DirIndex {
    /// Indexes `root`: a release directory, or a directory whose immediate
    /// subdirectories are releases. Unreadable manifests are skipped with a log line.
    pub fn scan(root: &Path) -> Self {
        let index = Self { root: root.to_path_buf(), paths: RwLock::new(PathIndex::new()) };
        if root.join(crate::release::layout::MANIFEST).is_file() {
            index.add_release(&ReleaseDir::new(root));
        } else if let Ok(entries) = std::fs::read_dir(root) {
            let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            dirs.sort();
            for d in dirs {
                if d.join(crate::release::layout::MANIFEST).is_file() {
                    index.add_release(&ReleaseDir::new(d));
                }
            }
        }
        index
    }

    pub fn root_exists(&self) -> bool {
        self.root.is_dir()
    }

    /// Adds a release directory's blobs (files, tables, manifest) to the index.
    pub fn add_release(&self, dir: &ReleaseDir) {
        let bytes = match std::fs::read(dir.manifest()) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(dir = %dir.root().display(), error = %e, "dir origin: cannot read manifest");
                return;
            }
        };
        // Only locations are taken from here; whether the release is trusted
        // and every byte is right is decided by the registry and the fetcher.
        let signed = match SignedManifest::parse(&bytes) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(dir = %dir.root().display(), error = %e, "dir origin: skipping unreadable manifest");
                return;
            }
        };
        let Ok(mut paths) = self.paths.write() else {
            return;
        };
        paths.insert(signed.id, dir.manifest());
        for f in &signed.manifest.files {
            paths.entry(f.blake3).or_insert_with(|| dir.file(&f.path));
            if let Some(t) = f.chunk_table {
                paths.entry(t).or_insert_with(|| dir.table(&t));
            }
        }
    }

    pub fn path_of(&self, hash: &Blake3) -> Option<PathBuf> {
        self.paths.read().ok().and_then(|p| p.get(hash).cloned())
    }

    /// Streams `range` of a blob: each poll runs one short blocking task that
    /// `pread`s the next `READ_BLOCK` bytes into a fresh buffer. Nothing is
    /// read ahead of the consumer, and no thread waits on a paused reader.
    pub(super) async fn read(&self, hash: Blake3, range: Range<u64>) -> Result<ByteStream, OriginErrorKind> {
        let path = self.path_of(&hash).ok_or_else(|| OriginErrorKind::NotFound(hash.to_hex()))?;
        let file = std::fs::File::open(&path).map_err(|e| OriginErrorKind::Io(format!("{}: {e}", path.display())))?;
        let state = (Some(std::sync::Arc::new(file)), range.start, range.end, path.display().to_string());
        Ok(Box::pin(futures_util::stream::unfold(state, |(file, at, end, name)| async move {
            let file = file?;
            if at >= end {
                return None;
            }
            let n = (end - at).min(READ_BLOCK as u64) as usize;
            let f = file.clone();
            let read = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = BytesMut::zeroed(n);
                loop {
                    match f.read_at(&mut buf, at) {
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e.to_string()),
                        Ok(got) => {
                            buf.truncate(got);
                            return Ok(buf.freeze());
                        }
                    }
                }
            })
            .await;
            let err = |why: String| super::OriginError {
                origin: "dir".into(),
                kind: OriginErrorKind::Io(format!("{name}: {why}")),
            };
            match read {
                Ok(Ok(b)) if b.is_empty() => {
                    Some((Err(err(format!("file ends at {at}, before {end}"))), (None, at, end, name)))
                }
                Ok(Ok(b)) => {
                    let next = at + b.len() as u64;
                    Some((Ok(b), (Some(file), next, end, name)))
                }
                Ok(Err(e)) => Some((Err(err(e)), (None, at, end, name))),
                Err(e) => Some((Err(err(e.to_string())), (None, at, end, name))),
            }
        })))
    }
}
