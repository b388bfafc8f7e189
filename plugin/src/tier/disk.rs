//! The disk tier: a second level of verified chunks on local disk, under its
//! own byte budget, for hot sets larger than memory.
//!
//! - One file per chunk, `chunks/<2 hex>/<file hash>.<chunk size>.<index>`,
//!   written to `tmp/` and renamed into place, so a name never points at a
//!   half-written chunk. No fsync: a chunk torn by a crash fails verification
//!   when it is read back, and every read back is verified (disks corrupt).
//! - The index is in memory (moka, LRU, weighted by bytes rounded up to 4 KiB
//!   blocks) and rebuilt by scanning the directory at start, so a restarted
//!   gateway is warm.
//! - Writes and deletions run on one writer thread. Serving only queues them:
//!   a chunk is offered after verification and dropped (and counted) when the
//!   queue already holds `write_queue` bytes, so a slow disk never slows serving.
//! - Eviction (budget), purges (takedown) and bad reads remove the index entry
//!   first and queue the file's deletion; a reader that races a deletion sees
//!   a missing file and falls back to the origin.
//! - Each file's chunk table is kept while the tier holds any of the file's
//!   chunks, `tables/<file hash>.<chunk size>`, so a restarted gateway can
//!   check chunks read back without asking an origin (it serves them with
//!   every origin down). The writer writes it with the file's first chunk and
//!   deletes it when the last one is evicted or purged; it is 32 bytes per
//!   chunk, outside the byte budget. A table read back is verified like one
//!   from an origin (against its hash and the file's root) by the caller.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak, mpsc};
use std::time::SystemTime;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;

use super::ChunkKey;
use crate::pagecache::NoWait;
use crate::release::chunk::ChunkTable;
use crate::release::manifest::Blake3;

/// Disk space is used in blocks; the budget counts them.
const BLOCK: u64 = 4096;

/// Why the disk tier could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DiskTierError {
    #[error("disk tier {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Counters the disk tier keeps (registered by the gateway's metrics).
#[derive(Debug, Clone, Default)]
pub struct DiskCounters {
    /// Chunks written.
    pub writes: Counter,
    /// Chunks not written because the write queue was full.
    pub dropped: Counter,
    /// Writes or deletions that failed.
    pub errors: Counter,
    /// Chunks removed to keep the budget.
    pub evictions: Counter,
}

enum Job {
    /// A verified chunk, and the file's table when the fetcher has it.
    Write(ChunkKey, Bytes, Option<Arc<ChunkTable>>),
    Remove(ChunkKey),
    /// A file's table, written if the tier holds chunks of it and not the table.
    WriteTable(Blake3, Arc<ChunkTable>),
    /// Deletes a file's table if no chunk of it is left.
    RemoveTable(FileKey),
    /// Deletes a file's table (it failed verification, or is damaged).
    DropTable(FileKey),
    /// Every chunk of a file, on disk and in the index.
    Purge(Blake3),
    /// Answered once every job queued before it is done. The first pass runs
    /// the index's pending evictions and goes to the back of the queue behind
    /// the deletions they queue.
    Flush(mpsc::Sender<()>, bool),
}

type Hasher = foldhash::fast::RandomState;

/// A file as chunked at one chunk size: what one chunk table covers.
type FileKey = (Blake3, u64);

/// How many chunks of a file the index holds, and whether its table is on disk.
#[derive(Debug, Default)]
struct FileState {
    chunks: u32,
    table: bool,
}

type Files = Arc<std::sync::Mutex<HashMap<FileKey, FileState, Hasher>>>;

fn lock_files(files: &Files) -> std::sync::MutexGuard<'_, HashMap<FileKey, FileState, Hasher>> {
    // The map holds counts only; one left by a panic is still usable.
    files.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Inner {
    root: PathBuf,
    /// Held (an exclusive lock on `root/LOCK`) while the tier is open.
    _lock: fs::File,
    index: moka::sync::Cache<ChunkKey, u32, Hasher>,
    jobs: mpsc::Sender<Job>,
    /// Bytes offered and not yet written.
    pending: AtomicU64,
    queue_limit: u64,
    counters: DiskCounters,
    /// Whether the file system takes `RWF_NOWAIT` reads.
    nowait: NoWait,
    /// Files with chunks in the index (kept by the index's insertions and its
    /// eviction listener), to keep exactly their tables on disk.
    files: Files,
}

/// A handle on the disk tier; cheap to clone. The writer thread ends when the
/// last handle is dropped.
#[derive(Clone)]
pub struct DiskTier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DiskTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskTier").field("root", &self.inner.root).field("bytes", &self.bytes()).finish()
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DiskTierError + '_ {
    move |source| DiskTierError::Io { path: path.to_path_buf(), source }
}

fn file_name(key: &ChunkKey) -> String {
    format!("{}.{}.{}", key.file, key.chunk_size, key.index)
}

fn parse_name(name: &str) -> Option<ChunkKey> {
    let mut parts = name.split('.');
    let file = parts.next()?.parse::<Blake3>().ok()?;
    let chunk_size = parts.next()?.parse().ok()?;
    let index = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some(ChunkKey { file, chunk_size, index })
}

fn weight(len: u32) -> u32 {
    u32::try_from(u64::from(len).div_ceil(BLOCK) * BLOCK).unwrap_or(u32::MAX)
}

fn table_name((file, chunk_size): FileKey) -> String {
    format!("{file}.{chunk_size}")
}

fn parse_table_name(name: &str) -> Option<FileKey> {
    let (file, chunk_size) = name.split_once('.')?;
    Some((file.parse().ok()?, chunk_size.parse().ok()?))
}

impl Inner {
    fn path(&self, key: &ChunkKey) -> PathBuf {
        let name = file_name(key);
        self.root.join("chunks").join(&name[..2]).join(name)
    }

    fn table_path(&self, file: FileKey) -> PathBuf {
        self.root.join("tables").join(table_name(file))
    }

    /// Writes `table` for `file` unless it is on disk already.
    fn write_table(&self, file: FileKey, table: &ChunkTable) {
        if lock_files(&self.files).get(&file).is_none_or(|f| f.table) {
            return;
        }
        let name = table_name(file);
        match self.place(&name, &self.table_path(file), &table.encode()) {
            Ok(()) => {
                if let Some(f) = lock_files(&self.files).get_mut(&file) {
                    f.table = true;
                }
            }
            Err(e) => {
                self.counters.errors.inc();
                tracing::warn!(root = %self.root.display(), table = %name, error = %e, "disk tier table write failed");
            }
        }
    }

    fn delete_table(&self, file: FileKey) {
        match fs::remove_file(self.table_path(file)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                self.counters.errors.inc();
                tracing::warn!(table = %table_name(file), error = %e, "disk tier table delete failed");
            }
        }
    }

    /// Writes to `tmp/` and renames into place, so `dest` is never half written.
    fn place(&self, name: &str, dest: &Path, data: &[u8]) -> io::Result<()> {
        let tmp = self.root.join("tmp").join(name);
        let placed = fs::write(&tmp, data)
            .and_then(|()| dest.parent().map_or(Ok(()), fs::create_dir_all))
            .and_then(|()| fs::rename(&tmp, dest));
        if placed.is_err() {
            // A full disk must not fill up further with half-written files.
            let _ = fs::remove_file(&tmp);
        }
        placed
    }

    fn queue(&self, job: Job) {
        // The writer outlives every handle's sender; a send can only fail
        // during teardown, when nothing needs the job any more.
        let _ = self.jobs.send(job);
    }

    /// Writes one chunk: to `tmp/`, then renamed into place, then indexed.
    fn write(&self, key: ChunkKey, data: &Bytes) -> io::Result<()> {
        let len = u32::try_from(data.len()).map_err(|_| io::Error::other("chunk larger than 4 GiB"))?;
        self.place(&file_name(&key), &self.path(&key), data)?;
        // Counted before it is indexed, so its eviction never finds it uncounted.
        lock_files(&self.files).entry((key.file, key.chunk_size)).or_default().chunks += 1;
        self.index.insert(key, len);
        Ok(())
    }
}

impl DiskTier {
    /// Opens (creating) the tier at `root` and indexes the chunks already
    /// there, oldest first; chunks beyond `capacity` are evicted. Blocking:
    /// it scans the directory.
    pub fn open(root: &Path, capacity: u64, queue_limit: u64, counters: DiskCounters) -> Result<Self, DiskTierError> {
        let chunks = root.join("chunks");
        let tables = root.join("tables");
        let tmp = root.join("tmp");
        fs::create_dir_all(&chunks).map_err(io_err(&chunks))?;
        fs::create_dir_all(&tables).map_err(io_err(&tables))?;
        // One gateway per directory: two would delete each other's files.
        let lock_path = root.join("LOCK");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        // A tier closed just before (a restart in the same process) lets go
        // within moments; another live gateway does not.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while let Err(e) = lock.try_lock() {
            if std::time::Instant::now() >= deadline {
                return Err(DiskTierError::Io {
                    path: lock_path,
                    source: io::Error::other(format!("the directory is in use by another shardgate ({e})")),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Leftovers of writes cut short by a crash.
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;

        let (tx, rx) = mpsc::channel::<Job>();
        let evict_tx = tx.clone();
        let evictions = counters.evictions.clone();
        let files: Files = Arc::default();
        let counted = files.clone();
        let index = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .weigher(|_k: &ChunkKey, len: &u32| weight(*len))
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .support_invalidation_closures()
            .eviction_listener(move |k: Arc<ChunkKey>, _len, cause| {
                use moka::notification::RemovalCause;
                if cause == RemovalCause::Replaced {
                    return;
                }
                if cause == RemovalCause::Size {
                    evictions.inc();
                }
                let _ = evict_tx.send(Job::Remove(*k));
                let file = (k.file, k.chunk_size);
                let mut files = lock_files(&counted);
                if let Some(f) = files.get_mut(&file) {
                    f.chunks = f.chunks.saturating_sub(1);
                    if f.chunks == 0 {
                        files.remove(&file);
                        let _ = evict_tx.send(Job::RemoveTable(file));
                    }
                }
            })
            .build_with_hasher(Hasher::default());
        let inner = Arc::new(Inner {
            root: root.to_path_buf(),
            _lock: lock,
            index,
            jobs: tx,
            pending: AtomicU64::new(0),
            queue_limit,
            counters,
            nowait: NoWait::new(true),
            files,
        });

        let found = scan(&chunks).map_err(io_err(&chunks))?;
        let count = found.len();
        {
            let mut files = lock_files(&inner.files);
            for (_, key, _) in &found {
                files.entry((key.file, key.chunk_size)).or_default().chunks += 1;
            }
        }
        let kept = scan_tables(&tables, &inner.files).map_err(io_err(&tables))?;
        for (_, key, len) in found {
            inner.index.insert(key, len);
        }
        // Chunks beyond the budget go now; so do the tables of files left without any.
        inner.index.run_pending_tasks();
        tracing::info!(root = %root.display(), chunks = count, bytes = inner.index.weighted_size(), tables = kept, "disk tier open");

        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("shardgate-disk".into())
            .spawn(move || writer(weak, rx))
            .map_err(io_err(root))?;
        Ok(Self { inner })
    }

    pub fn contains(&self, key: &ChunkKey) -> bool {
        self.inner.index.contains_key(key)
    }

    /// Queues a verified chunk for writing, unless it is already on disk or
    /// the queue is full (then it is dropped and counted). Never blocks.
    /// `table` is the file's verified chunk table (written with the file's
    /// first chunk), if the caller has it.
    pub fn offer(&self, key: ChunkKey, chunk: &Bytes, table: Option<&Arc<ChunkTable>>) {
        let inner = &self.inner;
        if inner.index.contains_key(&key) {
            return;
        }
        let len = chunk.len() as u64;
        let pending = inner.pending.fetch_add(len, Ordering::AcqRel);
        // An empty queue always takes one chunk, however large, so a chunk
        // size above `write_queue` still reaches the disk.
        if pending > 0 && pending + len > inner.queue_limit {
            inner.pending.fetch_sub(len, Ordering::AcqRel);
            inner.counters.dropped.inc();
            return;
        }
        inner.queue(Job::Write(key, chunk.clone(), table.cloned()));
    }

    /// Reads a chunk back if all of it is in the page cache, without waiting
    /// for the disk, for the async threads. (The open and the length check
    /// may still read the directory or inode from disk when the kernel has
    /// dropped them; on a warm tier they are cached lookups.) `None` when it
    /// is not in the index, not all cached, of the wrong length, or on any
    /// error: [`Self::read_unverified`] then answers, and reports what is
    /// wrong. The bytes are **not verified**.
    pub fn read_cached_unverified(&self, key: &ChunkKey) -> Option<Bytes> {
        if !self.inner.nowait.enabled() {
            return None;
        }
        let len = self.inner.index.get(key)?;
        let file = fs::File::open(self.inner.path(key)).ok()?;
        if file.metadata().ok()?.len() != u64::from(len) {
            return None;
        }
        let mut buf = crate::bufpool::ChunkBuf::new(len as usize);
        let got = self.inner.nowait.read(&file, buf.as_mut(), 0)?;
        (got == buf.len()).then(|| buf.freeze())
    }

    /// Reads a chunk back (blocking: call it off the async threads). `None`
    /// when it is not on disk (or was deleted meanwhile). The bytes are
    /// **not verified**: the caller checks them before use.
    pub fn read_unverified(&self, key: &ChunkKey) -> io::Result<Option<Bytes>> {
        let Some(len) = self.inner.index.get(key) else { return Ok(None) };
        let read = read_exact_file(&self.inner.path(key), u64::from(len), "chunk file")?;
        if read.is_none() {
            self.inner.index.invalidate(key);
        }
        Ok(read.map(Bytes::from))
    }

    /// Queues a verified chunk table for writing, for a file whose chunks
    /// the tier holds without it (written before with verification off, or
    /// its table was dropped). A no-op on the writer for any other file.
    pub fn offer_table(&self, file: Blake3, table: &Arc<ChunkTable>) {
        self.inner.queue(Job::WriteTable(file, table.clone()));
    }

    /// Reads the chunk table of `file` at `chunk_size`, `len` bytes, back
    /// (blocking: call it off the async threads). `None` when it is not on
    /// disk; an error when it is not `len` bytes long. The bytes are **not
    /// verified**: the caller checks them against the table's hash.
    pub fn read_table_unverified(&self, file: Blake3, chunk_size: u64, len: u64) -> io::Result<Option<Vec<u8>>> {
        read_exact_file(&self.inner.table_path((file, chunk_size)), len, "chunk table file")
    }

    /// Drops a chunk table (it failed verification, or is damaged); it is
    /// written again when the fetcher next offers it.
    pub fn remove_table(&self, file: Blake3, chunk_size: u64) {
        self.inner.queue(Job::DropTable((file, chunk_size)));
    }

    /// Drops a chunk (it failed verification, or is damaged).
    pub fn remove(&self, key: &ChunkKey) {
        // The file is deleted when the index next runs its maintenance (the
        // writer thread runs it); a read meanwhile misses.
        self.inner.index.invalidate(key);
    }

    /// Drops every chunk of a file, and its chunk table: at once from the
    /// index, and on the writer thread (after every write queued before this
    /// call) from the index again and from disk, by listing the file's shard
    /// directory, so no chunk survives in a file or in the queue.
    pub fn purge_file(&self, file: Blake3) -> Result<(), String> {
        self.inner.index.invalidate_entries_if(move |k, _| k.file == file).map_err(|e| e.to_string())?;
        self.inner.queue(Job::Purge(file));
        Ok(())
    }

    /// Bytes the tier holds (in 4 KiB blocks).
    pub fn bytes(&self) -> u64 {
        self.inner.index.weighted_size()
    }

    /// Chunks the tier holds.
    pub fn chunks(&self) -> u64 {
        self.inner.index.entry_count()
    }

    /// Waits (up to `timeout`) until every write and deletion queued before
    /// this call has been carried out. Blocking; for tests and orderly shutdown.
    pub fn flush(&self, timeout: std::time::Duration) -> bool {
        self.inner.index.run_pending_tasks();
        let (tx, rx) = mpsc::channel();
        self.inner.queue(Job::Flush(tx, true));
        rx.recv_timeout(timeout).is_ok()
    }
}

/// Whether a read error means the file should be dropped. Only a shortage
/// that passes (out of descriptors or memory, an interrupted or would-block
/// call) keeps the file, and sends this one read to an origin; anything else
/// (the wrong length, cut short, EIO, a corrupt file system, permissions)
/// drops it, so a file that cannot be read neither holds budget nor hides
/// its chunks from being written again.
pub fn read_error_is_damage(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let passing = [Errno::MFILE, Errno::NFILE, Errno::NOMEM, Errno::INTR, Errno::AGAIN];
    !e.raw_os_error().is_some_and(|code| passing.iter().any(|p| p.raw_os_error() == code))
}

/// The whole of the file at `path`, which must be `len` bytes long (`what`
/// names it in errors); `None` when it does not exist.
fn read_exact_file(path: &Path, len: u64, what: &str) -> io::Result<Option<Vec<u8>>> {
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let on_disk = file.metadata()?.len();
    if on_disk != len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} holds {on_disk} bytes, {len} expected"),
        ));
    }
    let mut buf = Vec::with_capacity(len as usize);
    (&mut file).take(len).read_to_end(&mut buf)?;
    if buf.len() as u64 != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{what} ended after {} of {len} bytes", buf.len()),
        ));
    }
    Ok(Some(buf))
}

/// Chunk files under `chunks/`, oldest first.
fn scan(chunks: &Path) -> io::Result<Vec<(SystemTime, ChunkKey, u32)>> {
    let mut found = Vec::new();
    for shard in fs::read_dir(chunks)? {
        let shard = shard?;
        if !shard.file_type()?.is_dir() {
            continue;
        }
        for entry in fs::read_dir(shard.path())? {
            let entry = entry?;
            let name = entry.file_name();
            let key = name.to_str().and_then(parse_name);
            let meta = entry.metadata()?;
            match (key, u32::try_from(meta.len())) {
                (Some(key), Ok(len)) if meta.is_file() && len > 0 => {
                    found.push((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), key, len));
                }
                _ => tracing::warn!(path = %entry.path().display(), "not a chunk file; left alone"),
            }
        }
    }
    found.sort_by_key(|(t, _, _)| *t);
    Ok(found)
}

/// Marks the tables on disk of files with chunks, and deletes the others
/// (entries that are not tables are left alone, and one that cannot be
/// deleted is logged, not fatal); returns how many are kept.
fn scan_tables(tables: &Path, files: &Files) -> io::Result<usize> {
    let mut files = lock_files(files);
    let mut kept = 0;
    for entry in fs::read_dir(tables)? {
        let entry = entry?;
        match entry.file_name().to_str().and_then(parse_table_name) {
            Some(file) => match files.get_mut(&file) {
                Some(f) => {
                    f.table = true;
                    kept += 1;
                }
                None => {
                    if let Err(e) = fs::remove_file(entry.path()) {
                        tracing::warn!(path = %entry.path().display(), error = %e, "could not delete a stale chunk table");
                    }
                }
            },
            None => tracing::warn!(path = %entry.path().display(), "not a chunk table; left alone"),
        }
    }
    Ok(kept)
}

/// Deletes the entries of `dir` whose names start with `prefix`.
fn remove_prefixed(inner: &Inner, dir: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if e.file_name().to_str().is_some_and(|n| n.starts_with(prefix))
            && let Err(err) = fs::remove_file(e.path())
        {
            inner.counters.errors.inc();
            tracing::warn!(path = %e.path().display(), error = %err, "disk tier purge failed");
        }
    }
}

fn writer(inner: Weak<Inner>, jobs: mpsc::Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        let Some(inner) = inner.upgrade() else { break };
        match job {
            Job::Write(key, data, table) => {
                let len = data.len() as u64;
                if !inner.index.contains_key(&key) && !data.is_empty() {
                    match inner.write(key, &data) {
                        Ok(()) => {
                            inner.counters.writes.inc();
                            if let Some(t) = table {
                                inner.write_table((key.file, key.chunk_size), &t);
                            }
                        }
                        Err(e) => {
                            inner.counters.errors.inc();
                            tracing::warn!(root = %inner.root.display(), chunk = %file_name(&key), error = %e, "disk tier write failed");
                        }
                    };
                    inner.index.run_pending_tasks();
                }
                inner.pending.fetch_sub(len, Ordering::AcqRel);
            }
            Job::Flush(done, true) => {
                inner.index.run_pending_tasks();
                inner.queue(Job::Flush(done, false));
            }
            Job::Flush(done, false) => {
                let _ = done.send(());
            }
            Job::Purge(file) => {
                let _ = inner.index.invalidate_entries_if(move |k, _| k.file == file);
                inner.index.run_pending_tasks();
                let hex = file.to_hex();
                remove_prefixed(&inner, &inner.root.join("chunks").join(&hex[..2]), &hex);
                lock_files(&inner.files).retain(|(f, _), _| *f != file);
                remove_prefixed(&inner, &inner.root.join("tables"), &hex);
            }
            Job::WriteTable(file, table) => inner.write_table((file, table.layout().chunk_size()), &table),
            Job::RemoveTable(file) => {
                // A chunk of the file written since its last one went: keep the table.
                if !lock_files(&inner.files).contains_key(&file) {
                    inner.delete_table(file);
                }
            }
            Job::DropTable(file) => {
                if let Some(f) = lock_files(&inner.files).get_mut(&file) {
                    f.table = false;
                }
                inner.delete_table(file);
            }
            Job::Remove(key) => {
                // Written again after this deletion was queued: keep it.
                if inner.index.contains_key(&key) {
                    continue;
                }
                match fs::remove_file(inner.path(&key)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        inner.counters.errors.inc();
                        tracing::warn!(chunk = %file_name(&key), error = %e, "disk tier delete failed");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn only_a_passing_shortage_keeps_an_unreadable_file() {
        use rustix::io::Errno;
        let err = |kind, msg: &str| io::Error::new(kind, msg.to_string());
        assert!(read_error_is_damage(&err(io::ErrorKind::InvalidData, "chunk file holds 1 bytes, 2 expected")));
        assert!(read_error_is_damage(&err(io::ErrorKind::UnexpectedEof, "chunk file ended after 1 of 2 bytes")));
        assert!(read_error_is_damage(&io::Error::from_raw_os_error(Errno::IO.raw_os_error())));
        for bad in [Errno::ACCESS, Errno::ISDIR, Errno::STALE, Errno::UCLEAN, Errno::BADMSG] {
            assert!(read_error_is_damage(&io::Error::from_raw_os_error(bad.raw_os_error())), "{bad:?}");
        }
        for passing in [Errno::MFILE, Errno::NFILE, Errno::NOMEM, Errno::INTR, Errno::AGAIN] {
            assert!(!read_error_is_damage(&io::Error::from_raw_os_error(passing.raw_os_error())), "{passing:?}");
        }
    }

    fn key(i: u64) -> ChunkKey {
        ChunkKey::new(Blake3::from(blake3::hash(b"file")), 4096, i)
    }

    fn open(root: &Path, capacity: u64, queue: u64) -> (DiskTier, DiskCounters) {
        let c = DiskCounters::default();
        (DiskTier::open(root, capacity, queue, c.clone()).unwrap(), c)
    }

    #[test]
    fn chunks_survive_a_reopen_and_leftovers_are_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let (t, _) = open(dir.path(), 1 << 20, 1 << 20);
        for i in 0..5 {
            t.offer(key(i), &Bytes::from(vec![i as u8; 4096]), None);
        }
        assert!(t.flush(Duration::from_secs(5)));
        assert_eq!(t.chunks(), 5);
        drop(t);
        std::fs::write(dir.path().join("tmp").join("half-written"), b"x").unwrap();
        std::fs::write(dir.path().join("chunks").join("README"), b"not a shard").unwrap();
        let stray = dir.path().join("chunks").join("00").join("not-a-chunk");
        std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
        std::fs::write(&stray, b"operator's file").unwrap();

        let (t, _) = open(dir.path(), 1 << 20, 1 << 20);
        assert_eq!(t.chunks(), 5);
        assert_eq!(t.read_unverified(&key(3)).unwrap().unwrap(), Bytes::from(vec![3u8; 4096]));
        assert!(t.read_unverified(&key(9)).unwrap().is_none());
        // Just read, so in the page cache: the read that never waits finds
        // all of it (unless this file system refuses such reads).
        let cached = t.read_cached_unverified(&key(3));
        if t.inner.nowait.enabled() {
            assert_eq!(cached, Some(Bytes::from(vec![3u8; 4096])));
        }
        assert!(t.read_cached_unverified(&key(9)).is_none());
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(stray.exists(), "files that are not chunks are left alone");
    }

    /// A file of 5 chunks of 4096 bytes (the size `key` uses), and its table.
    fn table() -> (Blake3, Arc<ChunkTable>) {
        let mut h = crate::release::chunk::ChunkHasher::new(4096).unwrap();
        h.update(&vec![3u8; 5 * 4096]);
        let d = h.finish();
        (Blake3::from(d.root), Arc::new(d.table.unwrap()))
    }

    fn chunk_of(file: Blake3, i: u64) -> ChunkKey {
        ChunkKey::new(file, 4096, i)
    }

    #[test]
    fn a_table_is_kept_exactly_while_chunks_of_its_file_are() {
        let dir = tempfile::tempdir().unwrap();
        let (file, table) = table();
        let len = table.layout().table_len();
        let (t, _) = open(dir.path(), 3 * 4096, 1 << 20);
        // Offered on its own before any chunk of the file is on disk: not written.
        t.offer_table(file, &table);
        assert!(t.flush(Duration::from_secs(5)));
        assert!(t.read_table_unverified(file, 4096, len).unwrap().is_none());
        // Written with the file's first chunk.
        t.offer(chunk_of(file, 0), &Bytes::from(vec![3u8; 4096]), Some(&table));
        t.offer(chunk_of(file, 1), &Bytes::from(vec![3u8; 4096]), Some(&table));
        assert!(t.flush(Duration::from_secs(5)));
        assert_eq!(t.read_table_unverified(file, 4096, len).unwrap().unwrap(), table.encode());
        let err = t.read_table_unverified(file, 4096, len + 1).unwrap_err();
        assert!(err.to_string().contains(&format!("{len} bytes, {} expected", len + 1)), "{err}");
        drop(t);

        // Survives a reopen with its chunks; a stray table of a file with no chunk does not.
        let stray = dir.path().join("tables").join(table_name((key(0).file, 4096)));
        std::fs::write(&stray, b"old").unwrap();
        let (t, _) = open(dir.path(), 3 * 4096, 1 << 20);
        assert!(t.read_table_unverified(file, 4096, len).unwrap().is_some());
        assert!(!stray.exists(), "a table without chunks is deleted at start");

        // Dropped as bad: offered again, it is written again (its chunks are still there).
        t.remove_table(file, 4096);
        assert!(t.flush(Duration::from_secs(5)));
        assert!(t.read_table_unverified(file, 4096, len).unwrap().is_none());
        t.offer_table(file, &table);
        assert!(t.flush(Duration::from_secs(5)));
        assert!(t.read_table_unverified(file, 4096, len).unwrap().is_some());

        // Other files' chunks push the budget (3 blocks) past the file's two: the table goes with the last.
        for i in 0..3 {
            t.offer(key(i), &Bytes::from(vec![0u8; 4096]), None);
            assert!(t.flush(Duration::from_secs(5)));
        }
        assert!(!t.contains(&chunk_of(file, 0)) && !t.contains(&chunk_of(file, 1)));
        assert!(t.flush(Duration::from_secs(5)));
        assert!(t.read_table_unverified(file, 4096, len).unwrap().is_none(), "evicted with the file's last chunk");

        // A purge deletes the table with the chunks.
        t.offer(chunk_of(file, 2), &Bytes::from(vec![3u8; 4096]), Some(&table));
        assert!(t.flush(Duration::from_secs(5)));
        assert!(t.read_table_unverified(file, 4096, len).unwrap().is_some());
        t.purge_file(file).unwrap();
        assert!(t.flush(Duration::from_secs(5)));
        assert!(t.read_table_unverified(file, 4096, len).unwrap().is_none(), "a purge deletes the file's table");
    }

    #[test]
    fn a_directory_in_use_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_t, _) = open(dir.path(), 1 << 20, 1 << 20);
        let err = DiskTier::open(dir.path(), 1 << 20, 1 << 20, DiskCounters::default()).unwrap_err();
        assert!(err.to_string().contains("in use by another shardgate"), "{err}");
    }

    #[test]
    fn a_chunk_file_of_the_wrong_length_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (t, _) = open(dir.path(), 1 << 20, 1 << 20);
        t.offer(key(0), &Bytes::from(vec![1u8; 4096]), None);
        assert!(t.flush(Duration::from_secs(5)));
        let path = t.inner.path(&key(0));
        std::fs::write(&path, vec![1u8; 5000]).unwrap();
        let err = t.read_unverified(&key(0)).unwrap_err();
        assert!(err.to_string().contains("5000 bytes, 4096 expected"), "{err}");
        assert!(t.read_cached_unverified(&key(0)).is_none(), "the blocking read reports a wrong length");
        t.remove(&key(0));
        assert!(t.flush(Duration::from_secs(5)));
        assert!(!path.exists());
    }

    #[test]
    fn every_offer_is_written_or_counted_as_dropped() {
        let dir = tempfile::tempdir().unwrap();
        // A queue of two chunks: a burst of offers overruns it.
        let (t, c) = open(dir.path(), 64 << 20, 2 * 65536);
        for i in 0..200 {
            t.offer(key(i), &Bytes::from(vec![0u8; 65536]), None);
        }
        assert!(t.flush(Duration::from_secs(10)));
        assert_eq!(c.writes.get() + c.dropped.get(), 200);
        assert_eq!(t.chunks(), c.writes.get());
        assert!(c.dropped.get() > 0, "a 2-chunk queue took a 200-chunk burst");
        assert_eq!(t.inner.pending.load(Ordering::Acquire), 0, "every queued byte is accounted for");
    }

    #[test]
    fn eviction_deletes_files_to_keep_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let (t, c) = open(dir.path(), 10 * 4096, 1 << 20);
        for i in 0..30 {
            t.offer(key(i), &Bytes::from(vec![0u8; 4000]), None);
            // One at a time, so nothing is dropped.
            assert!(t.flush(Duration::from_secs(5)));
        }
        let files: usize = std::fs::read_dir(dir.path().join("chunks"))
            .unwrap()
            .map(|s| std::fs::read_dir(s.unwrap().path()).unwrap().count())
            .sum();
        assert!(files <= 10, "{files} chunk files for a 10-block budget");
        assert_eq!(files as u64, t.chunks());
        assert_eq!(c.evictions.get(), 30 - t.chunks());
        // The newest survive (LRU).
        assert!(t.contains(&key(29)));
    }
}
