//! The verifying fetcher: turns "chunk `i` of file `F`" into verified bytes,
//! from the hot tier or from origins.
//!
//! - Chunk tables are fetched on their own lane (their own concurrency
//!   limit and cache), checked against their own hash and the file's root.
//! - Misses fetch a *span* of chunks in one origin request. Concurrent misses
//!   for the same chunk share one fetch (single flight).
//! - Each chunk is verified against the table before it is handed to anyone
//!   or inserted into the hot tier. A chunk that fails moves the span to the
//!   next origin; the bad origin is counted and logged with CID and offset.
//!
//! Invariant: nothing leaves this module unverified (unless the operator
//! turned verification off for benchmarking).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::origin::outlier::{Outliers, Turn};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{Semaphore, watch};

use crate::bufpool::ChunkBuf;
use crate::config::FetchConfig;
use crate::metrics::Metrics;
use crate::origin::{BlobRef, Origin, OriginError, OriginErrorKind};
use crate::registry::FileRef;
use crate::release::chunk::{ChunkLayout, ChunkTable, chunk_cv, open_table};
use crate::release::manifest::Blake3;
use crate::tier::{ChunkKey, DiskTier, HotTier, Tiers};
use crate::usage::{Meter, ReleaseTag};

/// Why verified bytes could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("chunk {chunk} of {file}: every origin failed ({})", Failures(.failures))]
    AllOriginsFailed { file: Blake3, chunk: u64, failures: Arc<Vec<OriginFailure>> },
    #[error("chunk table of {file}: every origin failed ({})", Failures(.failures))]
    Table { file: Blake3, failures: Arc<Vec<OriginFailure>> },
    #[error("no origin is configured")]
    NoOrigin,
    #[error("fetch of chunk {chunk} of {file} was abandoned")]
    Abandoned { file: Blake3, chunk: u64 },
    #[error("chunk {chunk} is past the end of {file}")]
    OutOfRange { file: Blake3, chunk: u64 },
}

/// What one origin did wrong in a fetch: kept per origin, so an error names
/// each and its class (an unreachable origin, or bytes that failed verification).
#[derive(Debug, Clone)]
pub enum OriginFailure {
    /// The origin could not supply the bytes.
    Error(OriginError),
    /// The origin supplied bytes that failed verification.
    BadBytes { origin: String, what: String },
    /// A limit of this gateway, no origin's doing.
    Refused(String),
}

impl std::fmt::Display for OriginFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OriginFailure::Error(e) => write!(f, "{e}"),
            OriginFailure::BadBytes { origin, what } => write!(f, "origin {origin}: {what}"),
            OriginFailure::Refused(why) => f.write_str(why),
        }
    }
}

struct Failures<'a>(&'a [OriginFailure]);

impl std::fmt::Display for Failures<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no origin could serve it");
        }
        for (i, x) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{x}")?;
        }
        Ok(())
    }
}

impl crate::error::Classify for FetchError {
    /// Integrity when any origin answered bytes that failed verification
    /// (the alarming cause, whatever the others did), else origin.
    fn class(&self) -> crate::error::ErrorClass {
        use crate::error::ErrorClass;
        match self {
            FetchError::AllOriginsFailed { failures, .. } | FetchError::Table { failures, .. } => {
                if failures.iter().any(|f| matches!(f, OriginFailure::BadBytes { .. })) {
                    ErrorClass::Integrity
                } else {
                    ErrorClass::Origin
                }
            }
            FetchError::NoOrigin => ErrorClass::Config,
            FetchError::Abandoned { .. } | FetchError::OutOfRange { .. } => ErrorClass::Client,
        }
    }
}

/// Where a chunk came from, for metering and `X-Shardgate-Cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Hot,
    Origin,
}

/// Chunks of a file that were cold at some moment (see [`Fetcher::cold_set`]).
#[derive(Debug, Clone, Default)]
pub struct ColdSet {
    /// One bitmap per covered range, sorted by start: its size follows the
    /// chunks a request covers, never the distance between its ranges (a
    /// multipart request for a huge file's first and last byte holds two bits).
    ranges: Vec<(Range<u64>, Vec<u64>)>,
}

impl ColdSet {
    /// Hot and total chunks over the ranges the set was taken for, as
    /// `Fetcher::cached` counts them (one popcount per bitmap word).
    pub fn counts(&self) -> (u64, u64) {
        self.ranges.iter().fold((0, 0), |(hot, total), (r, bits)| {
            let cold: u64 = bits.iter().map(|w| u64::from(w.count_ones())).sum();
            (hot + (r.end - r.start) - cold, total + (r.end - r.start))
        })
    }

    pub fn contains(&self, index: u64) -> bool {
        // A response covers at most `server.max_ranges` ranges; they may overlap.
        self.ranges.iter().filter(|(r, _)| r.contains(&index)).any(|(r, bits)| {
            let at = index - r.start;
            bits.get((at / 64) as usize).is_some_and(|w| w & (1 << (at % 64)) != 0)
        })
    }

    /// Words of bitmap held, for tests of the bound.
    pub fn words(&self) -> usize {
        self.ranges.iter().map(|(_, b)| b.len()).sum()
    }
}

/// What the fetcher needs to know about a file.
#[derive(Debug, Clone)]
pub struct FileSpec {
    pub blake3: Blake3,
    pub layout: ChunkLayout,
    pub table: Option<Blake3>,
    pub cid: Option<String>,
    pub table_cid: Option<String>,
    /// The release this file is read for: origin egress is counted against it.
    pub release: Option<ReleaseTag>,
    /// Where the fetcher's purge log stood when the file was resolved for
    /// this read ([`Fetcher::purge_mark`]): nothing fetched for it is cached
    /// if the file was purged since.
    pub purge_mark: u64,
}

impl FileSpec {
    /// The file to read, resolved when the purge log stood at `purge_mark`
    /// ([`Fetcher::purge_mark`], taken once its release was found live).
    pub fn from_ref(f: &FileRef, purge_mark: u64) -> Option<Self> {
        let e = f.entry();
        Some(Self {
            blake3: e.blake3,
            layout: e.layout().ok()?,
            table: e.chunk_table,
            cid: f.release.cid_of(&e.blake3).map(str::to_string),
            table_cid: e.chunk_table.and_then(|t| f.release.cid_of(&t).map(str::to_string)),
            release: Some(f.release.tag()),
            purge_mark,
        })
    }
}

type ChunkResult = Result<Bytes, FetchError>;

/// Largest chunk table fetched: 8 Mi entries, e.g. a 2 TiB file in 256 KiB chunks.
const MAX_TABLE_BYTES: u64 = 256 * 1024 * 1024;

/// Chunks looked at for `X-Shardgate-Cache`.
const CACHE_SCAN: u64 = 256;

/// How often a paced read-ahead looks for other readers waiting on its next chunk.
const PACE_RECHECK: std::time::Duration = std::time::Duration::from_millis(20);
type Slot = watch::Receiver<Option<ChunkResult>>;

/// The purges so far, and the last purge of each purged file. Work that
/// began before a file's purge (a span fetching it, a read back from the
/// disk tier) still hands its verified chunks to the readers waiting for
/// them, but caches none of them after the purge: a takedown's purge is
/// final. One entry per purged file, kept for the process's life
/// (takedowns are rare).
#[derive(Debug, Default)]
struct PurgeLog {
    seq: u64,
    last: HashMap<Blake3, u64>,
}

pub struct Fetcher {
    origins: ArcSwap<Vec<Origin>>,
    hot: HotTier,
    disk: Option<DiskTier>,
    /// Decrypted segments of encrypted files (memory only).
    plain: crate::tier::PlainTier,
    /// Proven tables by (table hash, file root): a table proven for one file's
    /// root is never handed to another entry that names the same table hash
    /// with a different root (a manifest, even a trusted one, could pair them).
    tables: moka::future::Cache<(Blake3, Blake3), Arc<ChunkTable>>,
    inflight: Mutex<HashMap<ChunkKey, Slot>>,
    purges: RwLock<PurgeLog>,
    bulk: Semaphore,
    meta: Semaphore,
    cfg: FetchConfig,
    metrics: Arc<Metrics>,
    meter: Arc<Meter>,
    outliers: Outliers,
    /// Every span task, so a graceful stop can let them record their origin
    /// egress before the final usage commit.
    spans: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").field("hot", &self.hot).finish()
    }
}

/// Reports one origin attempt to outlier ejection: the first verdict
/// counts; an attempt that holds the origin's probe and ends with none (its
/// reader left) frees the probe for another request.
struct ProbeGuard<'a> {
    outliers: &'a Outliers,
    /// The origin's index in the origin list.
    index: usize,
    origin: &'a str,
    turn: Turn,
    settled: bool,
}

impl<'a> ProbeGuard<'a> {
    fn new(outliers: &'a Outliers, index: usize, origin: &'a str, turn: Turn) -> Self {
        Self { outliers, index, origin, turn, settled: false }
    }

    fn success(&mut self) {
        if !self.settled {
            self.settled = true;
            self.outliers.success(self.origin);
        }
    }

    /// Bytes that failed verification, or a body that ended short.
    fn failure(&mut self) {
        self.settled = true;
        self.outliers.failure(self.origin, false, self.turn == Turn::Probe);
    }

    /// An origin error: a timeout or stall (which costs every request that
    /// meets it the whole timer) ejects at once; a blob the origin does not
    /// hold says nothing of its health.
    fn error(&mut self, e: &OriginError) {
        match e.kind {
            OriginErrorKind::NotFound(_) => {}
            OriginErrorKind::FirstByteTimeout(_) | OriginErrorKind::Stalled(_) => {
                self.settled = true;
                self.outliers.failure(self.origin, true, self.turn == Turn::Probe);
            }
            _ => self.failure(),
        }
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if !self.settled && self.turn == Turn::Probe {
            self.outliers.probe_abandoned(self.origin);
        }
    }
}

/// Whether a read-ahead span is still running, so its reader does not start
/// a second one over the same chunks.
#[derive(Debug, Default)]
pub struct ReadAhead {
    done: std::sync::atomic::AtomicBool,
}

impl ReadAhead {
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
}

/// Removes a span's undelivered in-flight slots when its task ends, however
/// it ends (finished, failed, abandoned by its reader, or cancelled), so
/// waiters see the end of the channel and retry instead of hanging.
struct SpanGuard<'a> {
    fetcher: &'a Fetcher,
    file: Blake3,
    chunk_size: u64,
    next: &'a AtomicU64,
    /// End of the slots this span has reserved (they may be fewer than its origin request covers).
    reserved: &'a AtomicU64,
    readahead: Option<Arc<ReadAhead>>,
}

impl Drop for SpanGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.fetcher.inflight.lock() {
            for index in self.next.load(Ordering::Acquire)..self.reserved.load(Ordering::Acquire) {
                map.remove(&ChunkKey::new(self.file, self.chunk_size, index));
            }
        }
        if let Some(r) = &self.readahead {
            r.done.store(true, Ordering::Release);
        }
    }
}

impl Fetcher {
    pub fn new(
        origins: Vec<Origin>,
        tiers: Tiers,
        cfg: FetchConfig,
        table_cache_bytes: u64,
        meta_concurrency: usize,
        metrics: Arc<Metrics>,
        meter: Arc<Meter>,
    ) -> Arc<Self> {
        let tables = moka::future::Cache::builder()
            .max_capacity(table_cache_bytes)
            .weigher(|_k: &(Blake3, Blake3), t: &Arc<ChunkTable>| {
                u32::try_from(t.entries().len() * 32 + 64).unwrap_or(u32::MAX)
            })
            .build();
        let outliers = Outliers::new(cfg.outlier, metrics.origin_state.clone(), metrics.origin_ejections.clone());
        Arc::new(Self {
            origins: ArcSwap::from_pointee(origins),
            hot: tiers.hot,
            disk: tiers.disk,
            plain: tiers.plain,
            tables,
            inflight: Mutex::new(HashMap::new()),
            purges: RwLock::default(),
            bulk: Semaphore::new(cfg.max_concurrent_fetches),
            meta: Semaphore::new(meta_concurrency),
            cfg,
            metrics,
            meter,
            outliers,
            spans: tokio_util::task::TaskTracker::new(),
        })
    }

    /// Counts origin bytes (and those of them that failed verification) against the file's release.
    fn egress(&self, file: &FileSpec, bytes: u64, failed: u64) {
        if let Some(r) = &file.release {
            self.meter.record_egress(r, bytes, failed);
        }
    }

    pub fn hot(&self) -> &HotTier {
        &self.hot
    }

    pub fn disk(&self) -> Option<&DiskTier> {
        self.disk.as_ref()
    }

    /// Whether a chunk is in a cache tier (memory or disk): no origin request is needed for it.
    fn cached_key(&self, key: &ChunkKey) -> bool {
        self.hot.contains(key) || self.disk.as_ref().is_some_and(|d| d.contains(key))
    }

    /// Drops every chunk of a file from both tiers. Chunks that reads which
    /// resolved the file before this call fetch or read back later are not
    /// cached.
    pub fn purge_file(&self, file: Blake3) -> Result<(), String> {
        // Held throughout: an insertion is either before it (and dropped by
        // it) or after it (and checked against it), never in between.
        let mut log = self.purges.write().unwrap_or_else(PoisonError::into_inner);
        log.seq += 1;
        let seq = log.seq;
        log.last.insert(file, seq);
        self.hot.purge_file(file)?;
        self.plain.purge_file(file);
        match &self.disk {
            Some(d) => d.purge_file(file),
            None => Ok(()),
        }
    }

    /// Where the purge log stands: taken when a read resolves its file
    /// ([`FileSpec::purge_mark`]), so the spans and read-aheads the read
    /// starts later cache nothing of a file purged after that.
    pub fn purge_mark(&self) -> u64 {
        self.purges.read().unwrap_or_else(PoisonError::into_inner).seq
    }

    /// The decrypted segments of a plaintext read, if cached.
    pub fn plain_segment(&self, key: &crate::tier::PlainKey) -> Option<Bytes> {
        let b = self.plain.get(key);
        if b.is_some() {
            self.metrics.plain_tier_hits.inc();
        }
        b
    }

    /// Keeps a segment decrypted from verified ciphertext of the file read
    /// at `mark`, unless the file was purged since.
    pub fn keep_plain_segment(&self, key: crate::tier::PlainKey, mark: u64, segment: Bytes) {
        self.cache_unless_purged(key.file, mark, || self.plain.insert(key, segment));
    }

    /// Drops decrypted segments of every key generation not in `live`.
    pub fn retain_plain_generations(&self, live: std::collections::HashSet<u64>) {
        self.plain.retain_generations(live);
    }

    /// Bytes of decrypted segments held.
    pub fn plain_bytes(&self) -> u64 {
        self.plain.bytes()
    }

    /// Runs `cache` (which puts a chunk of `file` in a tier) unless the file
    /// was purged after `mark`.
    fn cache_unless_purged(&self, file: Blake3, mark: u64, cache: impl FnOnce()) {
        let log = self.purges.read().unwrap_or_else(PoisonError::into_inner);
        if log.last.get(&file).is_some_and(|&purged| purged > mark) {
            tracing::debug!(%file, "chunk fetched across a purge of its file; not cached");
            return;
        }
        cache();
    }

    /// Chunk `key` from the disk tier, verified again (disks corrupt) and
    /// offered to the hot tier. A chunk that fails verification, or whose
    /// read error says it is damaged, is dropped from the disk tier; the
    /// caller fetches it (after a passing read error, the chunk is kept).
    async fn from_disk(self: &Arc<Self>, file: &Arc<FileSpec>, key: ChunkKey) -> Option<Bytes> {
        let disk = self.disk.as_ref()?;
        if !disk.contains(&key) {
            return None;
        }
        // The common case, a warm tier: the chunk table is known and the
        // chunk is in the page cache, so it is read and checked right here,
        // without a task or thread hop.
        if let Some(table) = self.cached_table(file).await
            && let Some(data) = disk.read_cached_unverified(&key)
        {
            return self.check_disk_chunk(file, table.as_deref(), key, data);
        }
        // Its own task: reading a chunk table holds origin streams, which are
        // not `Sync`, and response bodies must be.
        let (this, file) = (self.clone(), file.clone());
        tokio::spawn(async move { this.read_disk(&file, key).await }).await.ok().flatten()
    }

    async fn read_disk(&self, file: &FileSpec, key: ChunkKey) -> Option<Bytes> {
        let disk = self.disk.as_ref()?;
        let d = disk.clone();
        let read = tokio::task::spawn_blocking(move || d.read_unverified(&key)).await.ok()?;
        let data = match read {
            Ok(Some(data)) => data,
            Ok(None) => return None,
            Err(e) if crate::tier::disk::read_error_is_damage(&e) => {
                tracing::warn!(file = %file.blake3, chunk = key.index, error = %e, "disk tier chunk is damaged; dropped and fetched again");
                disk.remove(&key);
                return None;
            }
            Err(e) => {
                tracing::warn!(file = %file.blake3, chunk = key.index, error = %e, "disk tier read failed; kept, and fetched from an origin this time");
                return None;
            }
        };
        let table = self.table(file).await.ok()?;
        self.check_disk_chunk(file, table.as_deref(), key, data)
    }

    /// Verifies a chunk read back from the disk tier: offered to the hot
    /// tier when it matches (which takes it if it is popular enough, and
    /// the file was not purged since the read resolved it), dropped from
    /// the disk tier when it does not.
    /// Always verified, even with `fetch.verify = false`: nothing is fsynced,
    /// so a chunk torn by a crash may have the right length.
    fn check_disk_chunk(
        &self,
        file: &FileSpec,
        table: Option<&ChunkTable>,
        key: ChunkKey,
        data: Bytes,
    ) -> Option<Bytes> {
        let disk = self.disk.as_ref()?;
        if !chunk_matches(file, table, key.index, &data) {
            self.metrics.disk_verify_failures.inc();
            self.metrics.checksum_failures.inc();
            tracing::warn!(file = %file.blake3, chunk = key.index,
                "chunk read back from the disk tier fails verification; dropped and fetched again");
            disk.remove(&key);
            return None;
        }
        self.metrics.disk_hits.inc();
        self.cache_unless_purged(file.blake3, file.purge_mark, || {
            if !self.hot.insert_promoted(key, data.clone()) {
                self.metrics.disk_promotions_refused.inc();
            }
        });
        Some(data)
    }

    /// The file's chunk table if it needs none or it is cached (`Some(None)`
    /// for a file without a table); `None` when it would have to be fetched.
    async fn cached_table(&self, file: &FileSpec) -> Option<Option<Arc<ChunkTable>>> {
        match file.table {
            None => Some(None),
            Some(hash) => self.tables.get(&(hash, file.blake3)).await.map(Some),
        }
    }

    pub fn origins(&self) -> Arc<Vec<Origin>> {
        self.origins.load_full()
    }

    /// Waits (up to `limit`) for span tasks still running, which record the
    /// origin egress they cause as they go; called once every response has
    /// ended, before the final usage commit. Spans started later still run.
    pub async fn quiesce(&self, limit: std::time::Duration) {
        self.spans.close();
        if tokio::time::timeout(limit, self.spans.wait()).await.is_err() {
            tracing::warn!(
                spans = self.spans.len(),
                "origin fetches still running at shutdown; their egress after this is not counted"
            );
        }
        self.spans.reopen();
    }

    /// The origins in this request's order (ejected ones last), each with
    /// its guard; see [`ProbeGuard`].
    fn probe_guards<'a>(&'a self, origins: &'a [Origin]) -> Vec<ProbeGuard<'a>> {
        self.outliers
            .order(origins.iter().map(Origin::name))
            .into_iter()
            .map(|(i, turn)| ProbeGuard::new(&self.outliers, i, origins[i].name(), turn))
            .collect()
    }

    /// Outlier ejection's view of the origins.
    pub fn outliers(&self) -> &Outliers {
        &self.outliers
    }

    /// Replaces the origins (config reload). In-flight fetches finish on the
    /// old ones; what outlier ejection knows of an origin is kept by name.
    pub fn set_origins(&self, origins: Vec<Origin>, outlier: crate::config::OutlierConfig) {
        self.outliers.set_config(outlier);
        self.origins.store(Arc::new(origins));
    }

    pub fn span_chunks(&self, chunk_size: u64) -> u64 {
        (self.cfg.span.0 / chunk_size).max(1)
    }

    pub fn readahead_chunks(&self) -> u64 {
        u64::from(self.cfg.readahead_chunks)
    }

    /// How many of the chunks are in the hot tier, looking at no more than
    /// the first `CACHE_SCAN` of them (a HEAD of a huge file stays cheap).
    pub fn cached(&self, file: &FileSpec, chunks: Range<u64>) -> (u64, u64) {
        let chunks = chunks.start..chunks.end.min(chunks.start + CACHE_SCAN);
        let total = chunks.end - chunks.start;
        let hot = chunks.filter(|&i| self.cached_key(&ChunkKey::new(file.blake3, file.layout.chunk_size(), i))).count()
            as u64;
        (hot, total)
    }

    /// Which of `ranges`' chunks are not in the hot tier now: a response's
    /// bytes from those chunks are origin bytes, even when the response's own
    /// span or read-ahead has put them in the hot tier by the time it reads them.
    pub fn cold_set(&self, file: &FileSpec, ranges: &[Range<u64>]) -> ColdSet {
        let cs = file.layout.chunk_size();
        let ranges = ranges
            .iter()
            .filter(|r| r.end > r.start)
            .map(|r| {
                let mut bits = vec![0u64; (r.end - r.start).div_ceil(64) as usize];
                for i in r.clone() {
                    if !self.cached_key(&ChunkKey::new(file.blake3, cs, i)) {
                        let at = i - r.start;
                        bits[(at / 64) as usize] |= 1 << (at % 64);
                    }
                }
                (r.clone(), bits)
            })
            .collect();
        ColdSet { ranges }
    }

    /// The verified chunk table of a multi-chunk file.
    pub async fn table(&self, file: &FileSpec) -> Result<Option<Arc<ChunkTable>>, FetchError> {
        let Some(table_hash) = file.table else {
            return Ok(None);
        };
        let result = self
            .tables
            .try_get_with((table_hash, file.blake3), async {
                if let Some(t) = self.table_from_disk(file, table_hash).await {
                    return Ok(Arc::new(t));
                }
                let _lane = self.meta.acquire().await.map_err(|_| FetchError::NoOrigin)?;
                let t = Arc::new(self.fetch_table(file, table_hash).await?);
                // The disk tier may hold chunks of the file without the table
                // (dropped as bad, or written with verification off).
                if let Some(d) = &self.disk {
                    d.offer_table(file.blake3, &t);
                }
                Ok::<_, FetchError>(t)
            })
            .await;
        result.map(Some).map_err(|e| (*e).clone())
    }

    /// The file's chunk table from the disk tier, verified as one from an
    /// origin is; a table that fails, or whose read error says it is
    /// damaged, is dropped from disk (after a passing read error, it is kept).
    async fn table_from_disk(&self, file: &FileSpec, table_hash: Blake3) -> Option<ChunkTable> {
        let disk = self.disk.as_ref()?;
        let (d, f, cs, len) = (disk.clone(), file.blake3, file.layout.chunk_size(), file.layout.table_len());
        let read = tokio::task::spawn_blocking(move || d.read_table_unverified(f, cs, len)).await.ok()?;
        let bytes = match read {
            Ok(Some(b)) => b,
            Ok(None) => return None,
            Err(e) if crate::tier::disk::read_error_is_damage(&e) => {
                tracing::warn!(file = %file.blake3, table = %table_hash, error = %e, "disk tier table is damaged; dropped and fetched again");
                disk.remove_table(file.blake3, file.layout.chunk_size());
                return None;
            }
            Err(e) => {
                tracing::warn!(file = %file.blake3, table = %table_hash, error = %e, "disk tier table read failed; kept, and fetched from an origin this time");
                return None;
            }
        };
        match open_table(&bytes, &table_hash.hash(), file.layout, &file.blake3.hash()) {
            Ok(t) => {
                self.metrics.disk_table_hits.inc();
                Some(t)
            }
            Err(e) => {
                self.metrics.disk_verify_failures.inc();
                self.metrics.checksum_failures.inc();
                tracing::warn!(file = %file.blake3, table = %table_hash, error = %e,
                    "chunk table read back from the disk tier fails verification; dropped and fetched again");
                disk.remove_table(file.blake3, file.layout.chunk_size());
                None
            }
        }
    }

    async fn fetch_table(&self, file: &FileSpec, table_hash: Blake3) -> Result<ChunkTable, FetchError> {
        let len = file.layout.table_len();
        if len > MAX_TABLE_BYTES {
            return Err(FetchError::Table {
                file: file.blake3,
                failures: Arc::new(vec![OriginFailure::Refused(format!(
                    "a {len}-byte chunk table is larger than the {MAX_TABLE_BYTES}-byte limit"
                ))]),
            });
        }
        let blob = BlobRef { blake3: table_hash, cid: file.table_cid.as_deref(), size: len };
        let origins = self.origins();
        if origins.is_empty() {
            return Err(FetchError::NoOrigin);
        }
        let mut detail = Vec::new();
        // A guard per origin up front: a probe this request claimed but never
        // reached (it succeeded earlier) is handed back when the guards drop.
        let mut guards = self.probe_guards(&origins);
        for probe in guards.iter_mut() {
            let origin = &origins[probe.index];
            let label = Metrics::origin(origin.name());
            self.metrics.origin_requests.get_or_create(&label).inc();
            let bytes = match read_all(origin, blob, 0..len).await {
                Ok(b) => b,
                Err(e) => {
                    self.metrics.origin_errors.get_or_create(&label).inc();
                    probe.error(&e);
                    detail.push(OriginFailure::Error(e));
                    continue;
                }
            };
            self.metrics.origin_bytes.get_or_create(&label).inc_by(len);
            match open_table(&bytes, &table_hash.hash(), file.layout, &file.blake3.hash()) {
                Ok(t) => {
                    probe.success();
                    self.egress(file, len, 0);
                    return Ok(t);
                }
                Err(e) => {
                    probe.failure();
                    self.egress(file, len, len);
                    self.metrics.verify_failures.get_or_create(&label).inc();
                    self.metrics.checksum_failures.inc();
                    tracing::warn!(origin = origin.name(), cid = ?file.table_cid, table = %table_hash, error = %e,
                        "origin returned a bad chunk table");
                    detail.push(OriginFailure::BadBytes {
                        origin: origin.name().to_string(),
                        what: format!("chunk table {table_hash}: {e}"),
                    });
                }
            }
        }
        Err(FetchError::Table { file: file.blake3, failures: Arc::new(detail) })
    }

    /// Verified chunk `index`, from the hot tier or an origin. Chunks up to
    /// `window_end` (exclusive, at most one span) may be fetched in the same
    /// origin request.
    pub async fn chunk(
        self: &Arc<Self>,
        file: &Arc<FileSpec>,
        index: u64,
        window_end: u64,
    ) -> Result<(Bytes, Source), FetchError> {
        let count = file.layout.chunk_count();
        if index >= count {
            return Err(FetchError::OutOfRange { file: file.blake3, chunk: index });
        }
        let key = ChunkKey::new(file.blake3, file.layout.chunk_size(), index);
        if let Some(b) = self.hot.get(&key) {
            self.metrics.hot_hits.inc();
            return Ok((b, Source::Hot));
        }
        self.metrics.hot_misses.inc();
        if let Some(b) = self.from_disk(file, key).await {
            return Ok((b, Source::Hot));
        }
        let span_end = window_end.min(count).min(index + self.span_chunks(file.layout.chunk_size()));
        // A span abandoned by its reader (who hung up) is retried by its other waiters.
        let mut last = FetchError::Abandoned { file: file.blake3, chunk: index };
        for _ in 0..3 {
            let mut slot = match self.join_or_start(file, index, span_end, None, None).0 {
                Ok(slot) => slot,
                Err(hit) => return Ok((hit, Source::Hot)),
            };
            let result = match slot.wait_for(Option::is_some).await {
                Ok(v) => v.clone().unwrap_or(Err(FetchError::Abandoned { file: file.blake3, chunk: index })),
                Err(_) => Err(FetchError::Abandoned { file: file.blake3, chunk: index }),
            };
            match result {
                Ok(b) => return Ok((b, Source::Origin)),
                Err(e @ FetchError::Abandoned { .. }) => last = e,
                Err(e) => return Err(e),
            }
            if let Some(b) = self.hot.get(&key) {
                return Ok((b, Source::Hot));
            }
        }
        Err(last)
    }

    /// Read-ahead for a reader whose next chunk is `from`: starts one origin
    /// request at the first chunk in the look-ahead window that is neither
    /// hot nor in flight, running to `to` (at most `fetch.max_span`). The
    /// request is paced by the reader: it stays at most `fetch.readahead_chunks`
    /// ahead of the position published on `pace`, and stops if the reader goes.
    pub fn prefetch(
        self: &Arc<Self>,
        file: &Arc<FileSpec>,
        from: u64,
        to: u64,
        pace: &watch::Receiver<u64>,
    ) -> Option<Arc<ReadAhead>> {
        if self.readahead_chunks() == 0 {
            return None;
        }
        let to = to.min(file.layout.chunk_count());
        let window = (from + self.readahead_chunks().max(1)).min(to);
        let gap = (from..window).find(|&i| {
            let key = ChunkKey::new(file.blake3, file.layout.chunk_size(), i);
            !self.cached_key(&key) && !self.inflight.lock().is_ok_and(|m| m.contains_key(&key))
        })?;
        let max = (self.cfg.max_span.0 / file.layout.chunk_size()).max(1);
        let handle = Arc::new(ReadAhead::default());
        // Only a span this call started belongs to this reader.
        match self.join_or_start(file, gap, to.min(gap + max), Some(pace.clone()), Some(handle.clone())) {
            (Ok(_), true) => Some(handle),
            _ => None,
        }
    }

    /// Joins the in-flight fetch of `index`, or starts a span fetch over
    /// `index..limit` (stopping early at a chunk that is hot or in flight).
    /// Returns the slot (`Err` carries a chunk that turned out to be hot) and
    /// whether this call started the span.
    fn join_or_start(
        self: &Arc<Self>,
        file: &Arc<FileSpec>,
        index: u64,
        limit: u64,
        pace: Option<watch::Receiver<u64>>,
        readahead: Option<Arc<ReadAhead>>,
    ) -> (Result<Slot, Bytes>, bool) {
        let key = ChunkKey::new(file.blake3, file.layout.chunk_size(), index);
        let Ok(mut map) = self.inflight.lock() else {
            // A poisoned map only happens after a panic elsewhere; fetch alone.
            let (tx, rx) = watch::channel(None);
            self.spawn_span(file.clone(), index..index + 1, vec![tx], None, None);
            return (Ok(rx), true);
        };
        if let Some(slot) = map.get(&key) {
            // A slot whose span ended without a value (its reader left) is
            // dead: replace it rather than wait on it again.
            if slot.has_changed().is_ok() || slot.borrow().is_some() {
                return (Ok(slot.clone()), false);
            }
            map.remove(&key);
        }
        // Delivered between our hot-tier miss and taking the lock.
        if let Some(b) = self.hot.get(&key) {
            return (Err(b), false);
        }
        let limit = limit.max(index + 1);
        // A paced read-ahead reserves slots only `ahead` chunks at a time (more
        // as its reader moves), so other readers further on fetch for themselves.
        let max_end = if pace.is_some() { limit.min(index + self.readahead_chunks().max(1)) } else { limit };
        let mut senders = Vec::new();
        let mut end = index;
        let mut mine = None;
        while end < max_end {
            let k = ChunkKey::new(file.blake3, file.layout.chunk_size(), end);
            if end > index && (map.contains_key(&k) || self.cached_key(&k)) {
                break;
            }
            let (tx, rx) = watch::channel(None);
            if end == index {
                mine = Some(rx.clone());
            }
            map.insert(k, rx);
            senders.push(tx);
            end += 1;
        }
        drop(map);
        let request_end = if pace.is_some() && end == max_end { limit } else { end };
        self.spawn_span(file.clone(), index..request_end, senders, pace, readahead);
        (mine.ok_or(Bytes::new()), true)
    }

    fn spawn_span(
        self: &Arc<Self>,
        file: Arc<FileSpec>,
        chunks: Range<u64>,
        senders: Vec<watch::Sender<Option<ChunkResult>>>,
        pace: Option<watch::Receiver<u64>>,
        readahead: Option<Arc<ReadAhead>>,
    ) {
        let this = self.clone();
        self.spans.spawn(async move {
            let next = AtomicU64::new(chunks.start);
            let reserved = AtomicU64::new(chunks.start + senders.len() as u64);
            let _guard = SpanGuard {
                fetcher: &this,
                file: file.blake3,
                chunk_size: file.layout.chunk_size(),
                next: &next,
                reserved: &reserved,
                readahead,
            };
            this.run_span(&file, chunks, senders, pace, &next, &reserved).await;
        });
    }

    /// Reserves slots for the next `readahead_chunks` chunks from `from` (up
    /// to `end`), stopping at one that is hot or in flight. False if none could be.
    fn reserve_more(
        &self,
        file: &FileSpec,
        from: u64,
        end: u64,
        senders: &mut Vec<Option<watch::Sender<Option<ChunkResult>>>>,
        reserved: &AtomicU64,
    ) -> bool {
        let Ok(mut map) = self.inflight.lock() else { return false };
        let stop = end.min(from + self.readahead_chunks().max(1));
        let mut i = from;
        while i < stop {
            let k = ChunkKey::new(file.blake3, file.layout.chunk_size(), i);
            if map.contains_key(&k) || self.cached_key(&k) {
                break;
            }
            let (tx, rx) = watch::channel(None);
            map.insert(k, rx);
            senders.push(Some(tx));
            i += 1;
        }
        reserved.store(i, Ordering::Release);
        i > from
    }

    /// Removes a delivered chunk's in-flight slot: from now on the hot tier
    /// (or a new fetch, if it was evicted) answers for it.
    fn delivered(&self, key: ChunkKey) {
        if let Ok(mut map) = self.inflight.lock() {
            map.remove(&key);
        }
    }

    async fn run_span(
        &self,
        file: &FileSpec,
        chunks: Range<u64>,
        senders: Vec<watch::Sender<Option<ChunkResult>>>,
        mut pace: Option<watch::Receiver<u64>>,
        delivered: &AtomicU64,
        reserved: &AtomicU64,
    ) {
        // Each sender is dropped as soon as its chunk is delivered: a watch
        // channel keeps its value alive, and a long span must not pin every
        // chunk it has fetched (the hot tier's budget governs those).
        let mut senders: Vec<Option<watch::Sender<Option<ChunkResult>>>> = senders.into_iter().map(Some).collect();
        let fail_rest = |senders: &mut Vec<Option<watch::Sender<Option<ChunkResult>>>>, from: u64, err: FetchError| {
            for i in from..chunks.start + senders.len() as u64 {
                let e = match &err {
                    FetchError::AllOriginsFailed { file, failures, .. } => {
                        FetchError::AllOriginsFailed { file: *file, chunk: i, failures: failures.clone() }
                    }
                    other => other.clone(),
                };
                if let Some(tx) = senders.get_mut((i - chunks.start) as usize).and_then(Option::take) {
                    let _ = tx.send(Some(Err(e)));
                }
            }
        };
        // Reader-paced spans are bounded by their reader; the rest share the bulk lane.
        let _permit = if pace.is_none() {
            match self.bulk.acquire().await {
                Ok(p) => Some(p),
                Err(_) => {
                    fail_rest(&mut senders, chunks.start, FetchError::NoOrigin);
                    return;
                }
            }
        } else {
            None
        };
        let table = if self.cfg.verify {
            match self.table(file).await {
                Ok(t) => t,
                Err(e) => {
                    fail_rest(&mut senders, chunks.start, e);
                    return;
                }
            }
        } else {
            None
        };
        let origins = self.origins();
        if origins.is_empty() {
            fail_rest(&mut senders, chunks.start, FetchError::NoOrigin);
            return;
        }
        let layout = file.layout;
        let ahead = self.readahead_chunks().max(1);
        let blob = BlobRef { blake3: file.blake3, cid: file.cid.as_deref(), size: layout.size() };
        let mut next = chunks.start;
        let mut detail = Vec::new();
        let mut guards = self.probe_guards(&origins);
        for probe in guards.iter_mut() {
            if next == chunks.end {
                break;
            }
            let origin = &origins[probe.index];
            let label = Metrics::origin(origin.name());
            let bytes = layout.chunk_range(next).start..layout.chunk_range(chunks.end - 1).end;
            self.metrics.origin_requests.get_or_create(&label).inc();
            let started = Instant::now();
            let mut stream = match origin.read(blob, bytes).await {
                Ok(s) => s,
                Err(e) => {
                    probe.error(&e);
                    self.metrics.origin_errors.get_or_create(&label).inc();
                    tracing::debug!(origin = origin.name(), error = %e, "origin read failed");
                    detail.push(OriginFailure::Error(e));
                    continue;
                }
            };
            let mut first = true;
            let own_buffers = origin.yields_own_buffers();
            // A chunk that arrives in several pieces (or in a slice of an HTTP
            // client's read buffer) is put together here.
            let mut buf: Option<ChunkBuf> = None;
            let mut filled = 0;
            'stream: loop {
                // Stay within `ahead` chunks of a pacing reader (stop if it is gone),
                // unless another reader is already waiting for a chunk we reserved.
                if let Some(p) = pace.as_mut() {
                    loop {
                        let from = (next - chunks.start) as usize;
                        let waited_on =
                            senders.get(from..).unwrap_or(&[]).iter().flatten().any(|tx| tx.receiver_count() > 1);
                        if waited_on {
                            break;
                        }
                        match tokio::time::timeout(PACE_RECHECK, p.wait_for(|pos| next < pos + ahead)).await {
                            Ok(Ok(_)) => break,
                            Ok(Err(_)) => {
                                tracing::debug!(file = %file.blake3, chunk = next, "reader gone; read-ahead stops");
                                return;
                            }
                            Err(_) => continue,
                        }
                    }
                }
                let Some(item) = stream.next().await else {
                    if next < chunks.end {
                        // The body ended before the span did, without an error.
                        let want = layout.chunk_range(chunks.end - 1).end - layout.chunk_range(chunks.start).start;
                        let got =
                            layout.chunk_range(next).start - layout.chunk_range(chunks.start).start + filled as u64;
                        let e = OriginError {
                            origin: origin.name().to_string(),
                            kind: OriginErrorKind::Short { got, want },
                        };
                        self.metrics.origin_errors.get_or_create(&label).inc();
                        probe.failure();
                        detail.push(OriginFailure::Error(e));
                    }
                    break 'stream;
                };
                let mut piece = match item {
                    Ok(p) => p,
                    Err(e) => {
                        probe.error(&e);
                        self.metrics.origin_errors.get_or_create(&label).inc();
                        tracing::warn!(origin = origin.name(), cid = ?file.cid, offset = layout.chunk_range(next).start, error = %e, "origin stream failed");
                        detail.push(OriginFailure::Error(e));
                        break 'stream;
                    }
                };
                if first {
                    first = false;
                    self.metrics
                        .origin_first_byte_seconds
                        .get_or_create(&label)
                        .observe(started.elapsed().as_secs_f64());
                }
                self.metrics.origin_bytes.get_or_create(&label).inc_by(piece.len() as u64);
                self.egress(file, piece.len() as u64, 0);
                while !piece.is_empty() {
                    let r = layout.chunk_range(next);
                    let chunk_len = (r.end - r.start) as usize;
                    let chunk = if filled == 0 && piece.len() == chunk_len && own_buffers {
                        // The piece is exactly the chunk, in a buffer of its own: keep it.
                        std::mem::take(&mut piece)
                    } else {
                        // Copy into a buffer of exactly the chunk's size (recycled
                        // when it is the default size), so a cached chunk never pins
                        // a larger origin buffer.
                        let mut b = buf.take().unwrap_or_else(|| ChunkBuf::new(chunk_len));
                        let take = (chunk_len - filled).min(piece.len());
                        b.as_mut()[filled..filled + take].copy_from_slice(&piece.split_to(take));
                        filled += take;
                        if filled < chunk_len {
                            buf = Some(b);
                            continue;
                        }
                        filled = 0;
                        b.freeze()
                    };
                    if !self.check(file, table.as_deref(), next, &chunk) {
                        probe.failure();
                        self.egress(file, 0, chunk.len() as u64);
                        self.metrics.verify_failures.get_or_create(&label).inc();
                        self.metrics.checksum_failures.inc();
                        tracing::warn!(origin = origin.name(), cid = ?file.cid, file = %file.blake3, chunk = next,
                            offset = r.start, "origin returned bytes that fail verification; trying the next origin");
                        detail.push(OriginFailure::BadBytes {
                            origin: origin.name().to_string(),
                            what: format!("chunk {next} at offset {} failed verification", r.start),
                        });
                        break 'stream;
                    }
                    probe.success();
                    let key = ChunkKey::new(file.blake3, file.layout.chunk_size(), next);
                    // Extend the reservation *before* handing over the last reserved
                    // chunk, so the reader never finds its next chunk unclaimed and
                    // starts a second origin request for it.
                    let reserved_end = chunks.start + senders.len() as u64;
                    let mut last = false;
                    if next + 1 >= reserved_end && reserved_end < chunks.end {
                        last = !self.reserve_more(file, reserved_end, chunks.end, &mut senders, reserved);
                    }
                    if next >= chunks.start + senders.len() as u64 {
                        // Not ours to deliver: someone else is fetching (or has) it.
                        return;
                    }
                    self.cache_unless_purged(file.blake3, file.purge_mark, || {
                        self.hot.insert_verified(key, chunk.clone());
                        if let Some(d) = &self.disk {
                            d.offer(key, &chunk, table.as_ref());
                        }
                    });
                    if let Some(tx) = senders.get_mut((next - chunks.start) as usize).and_then(Option::take) {
                        let _ = tx.send(Some(Ok(chunk)));
                    }
                    self.delivered(key);
                    next += 1;
                    delivered.store(next, Ordering::Release);
                    if next == chunks.end || last {
                        // Done, or the chunks after this one are someone else's.
                        return;
                    }
                }
            }
        }
        if next < chunks.end {
            let err = FetchError::AllOriginsFailed { file: file.blake3, chunk: next, failures: Arc::new(detail) };
            tracing::warn!(error = %err, "chunk unavailable from every origin");
            fail_rest(&mut senders, next, err);
        }
    }

    /// Whether `data` is chunk `index` of the file (always true when the
    /// operator turned verification off for benchmarking).
    fn check(&self, file: &FileSpec, table: Option<&ChunkTable>, index: u64, data: &[u8]) -> bool {
        if !self.cfg.verify {
            return true;
        }
        let ok = chunk_matches(file, table, index, data);
        if ok {
            self.metrics.chunks_verified.inc();
        }
        ok
    }

    /// Checks `data` as chunk `index` of the file against its verified chunk
    /// table (fetched if needed), whatever `fetch.verify` says: for hosts that
    /// serve bytes themselves.
    pub async fn verify_chunk(&self, file: &FileSpec, index: u64, data: &[u8]) -> Result<bool, FetchError> {
        if index >= file.layout.chunk_count() {
            return Err(FetchError::OutOfRange { file: file.blake3, chunk: index });
        }
        let table = self.table(file).await?;
        Ok(chunk_matches(file, table.as_deref(), index, data))
    }
}

/// Whether `data` is chunk `index` of the file: against the table, or for a
/// one-chunk file against the file's own hash.
fn chunk_matches(file: &FileSpec, table: Option<&ChunkTable>, index: u64, data: &[u8]) -> bool {
    match table {
        Some(t) => {
            let r = file.layout.chunk_range(index);
            data.len() as u64 == r.end - r.start
                && t.entries().get(index as usize).is_some_and(|cv| &chunk_cv(r.start, data) == cv)
        }
        None => {
            !file.layout.has_table()
                && index == 0
                && data.len() as u64 == file.layout.size()
                && blake3::hash(data) == file.blake3.hash()
        }
    }
}

async fn read_all(origin: &Origin, blob: BlobRef<'_>, range: Range<u64>) -> Result<Vec<u8>, OriginError> {
    let mut s = origin.read(blob, range.clone()).await?;
    let mut out = Vec::with_capacity((range.end - range.start) as usize);
    while let Some(piece) = s.next().await {
        out.extend_from_slice(&piece?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tier::HotTier;

    #[test]
    fn a_cold_set_holds_the_chunks_a_request_covers_not_the_file() {
        let fetcher = Fetcher::new(
            Vec::new(),
            Tiers { hot: HotTier::new(1 << 20), disk: None, plain: crate::tier::PlainTier::new(0) },
            FetchConfig::default(),
            1 << 20,
            1,
            Arc::new(Metrics::new()),
            Arc::new(Meter::default()),
        );
        // A 1 PiB file: 2^32 chunks of 256 KiB.
        let layout = ChunkLayout::new(1 << 50, 256 * 1024).unwrap_or_else(|e| panic!("{e}"));
        let spec = FileSpec {
            blake3: Blake3([1; 32]),
            layout,
            table: None,
            cid: None,
            table_cid: None,
            release: None,
            purge_mark: 0,
        };
        let last = layout.chunk_count() - 1;
        // The first and last byte (a multipart request), and a range overlapping the first.
        let ranges = [0..1, last..last + 1, 0..3];
        let cold = fetcher.cold_set(&spec, &ranges);
        assert_eq!(cold.words(), 3, "one word per covered range, however far apart");
        assert!(cold.contains(0) && cold.contains(2) && cold.contains(last));
        assert!(!cold.contains(3) && !cold.contains(last / 2));
        assert_eq!(cold.counts(), (0, 5));
    }
}
