//! The cache tiers: verified chunks in memory (the hot tier), weighted by
//! bytes, and optionally on local disk (the disk tier, [`disk`]).
//!
//! Only verified chunks are ever inserted into the hot tier (the fetcher
//! verifies before it inserts), so a hit is served without hashing again.
//! Disk reads are verified again by the fetcher. Owns eviction (LRU) and the
//! admission of chunks read back from disk (TinyLFU, [`popularity`]); knows
//! nothing of origins or HTTP.

pub mod disk;
mod popularity;

use std::sync::Arc;

use bytes::Bytes;
use popularity::Popularity;

pub use disk::{DiskCounters, DiskTier, DiskTierError};

use crate::release::manifest::Blake3;

/// A chunk of a file: the file's hash, its chunk size (the same file may be
/// published with different chunk sizes, and chunk `i` then names different
/// bytes), and the chunk's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkKey {
    pub file: Blake3,
    pub chunk_size: u64,
    pub index: u64,
}

impl ChunkKey {
    pub fn new(file: Blake3, chunk_size: u64, index: u64) -> Self {
        Self { file, chunk_size, index }
    }
}

/// Keys are BLAKE3 hashes from signed manifests and chunk indexes: a fast
/// hasher is safe, and SipHash was most of a hot lookup's cost.
type Hasher = foldhash::fast::RandomState;

/// The chunk size the popularity sketch is sized for (the default).
const TYPICAL_CHUNK: u64 = 256 * 1024;

/// The tiers a fetcher reads before going to an origin.
#[derive(Debug, Clone)]
pub struct Tiers {
    pub hot: HotTier,
    pub disk: Option<DiskTier>,
}

#[derive(Clone)]
pub struct HotTier {
    cache: moka::sync::Cache<ChunkKey, Bytes, Hasher>,
    capacity: u64,
    /// How often chunks are asked for: decides which chunks read back from
    /// the disk tier earn a place in memory.
    popularity: Arc<Popularity>,
}

impl std::fmt::Debug for HotTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotTier").field("bytes", &self.cache.weighted_size()).finish()
    }
}

impl HotTier {
    pub fn new(capacity_bytes: u64) -> Self {
        let popularity = Arc::new(Popularity::new(capacity_bytes / TYPICAL_CHUNK));
        let victims = popularity.clone();
        let cache = moka::sync::Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|_k: &ChunkKey, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
            .support_invalidation_closures()
            // LRU, not TinyLFU: TinyLFU refuses a new entry whose frequency is
            // not above the victim's, which drops every read-ahead chunk (read
            // zero times so far) once the tier is full.
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .eviction_listener(move |k: Arc<ChunkKey>, _v, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    victims.evicted(&k);
                }
            })
            .build_with_hasher(Hasher::default());
        Self { cache, capacity: capacity_bytes, popularity }
    }

    /// The chunk, if it is in memory. Every lookup, hit or miss, counts
    /// towards the chunk's popularity.
    pub fn get(&self, key: &ChunkKey) -> Option<Bytes> {
        self.popularity.record(key);
        self.cache.get(key)
    }

    pub fn contains(&self, key: &ChunkKey) -> bool {
        self.cache.contains_key(key)
    }

    /// Inserts a chunk that has been verified.
    pub fn insert_verified(&self, key: ChunkKey, chunk: Bytes) {
        self.cache.insert(key, chunk);
    }

    /// Inserts a verified chunk read back from the disk tier if there is
    /// room, or if it is asked for more often than the last chunk evicted
    /// for room (TinyLFU admission). Otherwise it stays on disk only, so a
    /// chunk read once from disk does not push out one read often. Chunks
    /// from origins always go in ([`Self::insert_verified`]): a read-ahead
    /// chunk has not been asked for yet, and must be there when it is.
    /// Whether it went in.
    pub fn insert_promoted(&self, key: ChunkKey, chunk: Bytes) -> bool {
        let room = self.cache.weighted_size() + chunk.len() as u64 <= self.capacity;
        let admit = room || self.popularity.outranks_last_victim(&key);
        if admit {
            self.cache.insert(key, chunk);
        }
        admit
    }

    /// Drops every chunk of a file.
    pub fn purge_file(&self, file: Blake3) -> Result<(), String> {
        self.cache.invalidate_entries_if(move |k, _| k.file == file).map(|_| ()).map_err(|e| e.to_string())
    }

    pub fn weighted_bytes(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }
}
