//! The `dir` origin: local release directories as written by `shardgate pack`.
//!
//! Files are found by BLAKE3 through an index built from the manifests found
//! under the configured path. Every path joined comes from a manifest entry
//! that passed `check_path` (no `..`, no absolute paths), so a request can
//! never name a file outside the release directories.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use super::{ByteStream, OriginErrorKind, PathIndex};
use crate::bufpool::ChunkBuf;
use crate::pagecache::{NoWait, read_full_at};
use crate::release::layout::ReleaseDir;
use crate::release::manifest::{Blake3, SignedManifest};

/// Bytes per `pread` of the dir origin: the default chunk size, so each read
/// becomes exactly one chunk and a cached chunk never pins a larger buffer.
const READ_BLOCK: usize = crate::bufpool::BUF_LEN;

#[derive(Debug)]
pub struct DirIndex {
    root: PathBuf,
    paths: RwLock<PathIndex>,
    /// Whether the file system takes `RWF_NOWAIT` reads.
    nowait: Arc<NoWait>,
}

impl DirIndex {
    /// Indexes `root`: a release directory, or a directory whose immediate
    /// subdirectories are releases. Unreadable manifests are skipped with a log line.
    pub fn scan(root: &Path) -> Self {
        let index = Self {
            root: root.to_path_buf(),
            paths: RwLock::new(PathIndex::new()),
            nowait: Arc::new(NoWait::new(true)),
        };
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

    /// Streams `range` of a blob, `READ_BLOCK` bytes per poll into one chunk
    /// buffer (recycled when one is free). Bytes already in the page cache
    /// are read on the spot (`preadv2` with `RWF_NOWAIT`, which never waits
    /// for the disk); the rest by one short blocking task. Nothing is read ahead of the
    /// consumer, and no thread waits on a paused reader.
    pub(super) async fn read(&self, hash: Blake3, range: Range<u64>) -> Result<ByteStream, OriginErrorKind> {
        let path = self.path_of(&hash).ok_or_else(|| OriginErrorKind::NotFound(hash.to_hex()))?;
        let file = std::fs::File::open(&path).map_err(|e| OriginErrorKind::Io(format!("{}: {e}", path.display())))?;
        let state = (Some(Arc::new(file)), range.start, range.end, path.display().to_string(), self.nowait.clone());
        Ok(Box::pin(futures_util::stream::unfold(state, |(file, at, end, name, nowait)| async move {
            let file = file?;
            if at >= end {
                return None;
            }
            let n = (end - at).min(READ_BLOCK as u64) as usize;
            let mut buf = ChunkBuf::new(n);
            let read = match nowait.read(&file, buf.as_mut(), at) {
                Some(got) => {
                    buf.truncate(got);
                    Ok(Ok(buf.freeze()))
                }
                None => {
                    let f = file.clone();
                    tokio::task::spawn_blocking(move || read_block(&f, buf, at)).await
                }
            };
            let err = |why: String| super::OriginError {
                origin: "dir".into(),
                kind: OriginErrorKind::Io(format!("{name}: {why}")),
            };
            match read {
                Ok(Ok(b)) if b.is_empty() => {
                    Some((Err(err(format!("file ends at {at}, before {end}"))), (None, at, end, name, nowait)))
                }
                Ok(Ok(b)) => {
                    let next = at + b.len() as u64;
                    Some((Ok(b), (Some(file), next, end, name, nowait)))
                }
                Ok(Err(e)) => Some((Err(err(e)), (None, at, end, name, nowait))),
                Err(e) => Some((Err(err(e.to_string())), (None, at, end, name, nowait))),
            }
        })))
    }
}

/// Fills `buf` from `at`, blocking on the disk if need be; fewer bytes at
/// the end of the file (none past it).
fn read_block(file: &std::fs::File, mut buf: ChunkBuf, at: u64) -> Result<Bytes, String> {
    let got = read_full_at(file, buf.as_mut(), at).map_err(|e| e.to_string())?;
    buf.truncate(got);
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    fn index_of(path: &Path, nowait: bool) -> (DirIndex, Blake3) {
        let hash = Blake3::from(blake3::hash(path.as_os_str().as_encoded_bytes()));
        let index = DirIndex {
            root: path.parent().unwrap_or(path).to_path_buf(),
            paths: RwLock::new(PathIndex::from([(hash, path.to_path_buf())])),
            nowait: Arc::new(NoWait::new(nowait)),
        };
        (index, hash)
    }

    async fn collect(index: &DirIndex, hash: Blake3, range: Range<u64>) -> Result<Vec<u8>, String> {
        let mut stream = index.read(hash, range).await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while let Some(piece) = stream.next().await {
            out.extend_from_slice(&piece.map_err(|e| e.to_string())?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn ranges_read_the_same_bytes_with_and_without_nowait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..3 * READ_BLOCK + 1234).map(|i| (i * 7 + i / 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        for nowait in [true, false] {
            let (index, hash) = index_of(&path, nowait);
            for range in [
                0..data.len() as u64,
                1..2,
                100_000..(2 * READ_BLOCK as u64 + 17),
                3 * READ_BLOCK as u64..data.len() as u64,
            ] {
                let got = collect(&index, hash, range.clone()).await.unwrap();
                assert_eq!(got, data[range.start as usize..range.end as usize], "range {range:?}, nowait {nowait}");
            }
        }
    }

    #[tokio::test]
    async fn a_file_shorter_than_the_range_is_an_error_naming_where_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, vec![1u8; READ_BLOCK + 10]).unwrap();
        for nowait in [true, false] {
            let (index, hash) = index_of(&path, nowait);
            let err = collect(&index, hash, 0..(2 * READ_BLOCK as u64)).await.unwrap_err();
            assert!(err.contains(&format!("file ends at {}", READ_BLOCK + 10)), "{err}");
        }
    }
}
