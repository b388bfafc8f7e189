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
use std::sync::atomic::{AtomicU32, Ordering};

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

/// Inserts between two runs of the cache's pending work. The cache makes an
/// insert visible (and its bytes held) at once, but weighs it and evicts for
/// it only when it applies its write log: by itself when 64 writes or reads
/// are queued, or 300 ms after its last run, and only if no other thread is
/// running it. Until then the tier is over its budget by the inserts queued,
/// up to 64 chunks of 256 KiB (16 MiB) and more under contention, over a byte
/// budget that operators size RAM by. Every 16th insert runs the work itself,
/// waiting for a run already under way rather than skipping it, so at most
/// about 16 inserts are ever unweighed. (Evicted chunks are freed a little
/// later still: the cache's map reclaims removed entries by epoch.)
const APPLY_EVERY: u32 = 16;
// The counter wraps: a power of two keeps every 16th insert a runner across the wrap.
const _: () = assert!(APPLY_EVERY.is_power_of_two());

/// The tiers a fetcher reads before going to an origin.
#[derive(Debug, Clone)]
pub struct Tiers {
    pub hot: HotTier,
    pub disk: Option<DiskTier>,
    pub plain: PlainTier,
}

#[derive(Clone)]
pub struct HotTier {
    cache: moka::sync::Cache<ChunkKey, Bytes, Hasher>,
    capacity: u64,
    /// Inserts so far, wrapping: every [`APPLY_EVERY`]th runs the cache's pending work.
    inserts: Arc<AtomicU32>,
    /// How often chunks are asked for: decides which chunks read back from
    /// the disk tier earn a place in memory. Kept only with a disk tier.
    popularity: Option<Arc<Popularity>>,
}

impl std::fmt::Debug for HotTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotTier").field("bytes", &self.cache.weighted_size()).finish()
    }
}

impl HotTier {
    /// A hot tier in front of origins only.
    pub fn new(capacity_bytes: u64) -> Self {
        Self::build(capacity_bytes, None)
    }

    /// A hot tier in front of a disk tier: it also counts lookups, to admit
    /// only popular chunks read back from disk ([`Self::insert_promoted`]).
    pub fn with_disk_admission(capacity_bytes: u64) -> Self {
        let entries = capacity_bytes / crate::release::chunk::DEFAULT_CHUNK_SIZE;
        Self::build(capacity_bytes, Some(Arc::new(Popularity::new(entries))))
    }

    fn build(capacity_bytes: u64, popularity: Option<Arc<Popularity>>) -> Self {
        let victims = popularity.clone();
        let cache = moka::sync::Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|_k: &ChunkKey, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
            .support_invalidation_closures()
            // LRU, not TinyLFU: TinyLFU refuses a new entry whose frequency is
            // not above the victim's, which drops every read-ahead chunk (read
            // zero times so far) once the tier is full.
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            // Runs inside the cache's maintenance, under its lock: it must never
            // call back into the cache (insert, run_pending_tasks), or it deadlocks.
            .eviction_listener(move |k: Arc<ChunkKey>, _v, cause| {
                if let Some(p) = &victims
                    && cause == moka::notification::RemovalCause::Size
                {
                    p.evicted(&k);
                }
            })
            .build_with_hasher(Hasher::default());
        Self { cache, capacity: capacity_bytes, inserts: Arc::default(), popularity }
    }

    /// The chunk, if it is in memory. With a disk tier behind, every lookup,
    /// hit or miss, counts towards the chunk's popularity.
    pub fn get(&self, key: &ChunkKey) -> Option<Bytes> {
        if let Some(p) = &self.popularity {
            p.record(key);
        }
        self.cache.get(key)
    }

    pub fn contains(&self, key: &ChunkKey) -> bool {
        self.cache.contains_key(key)
    }

    /// Inserts a chunk that has been verified.
    pub fn insert_verified(&self, key: ChunkKey, chunk: Bytes) {
        self.insert(key, chunk);
    }

    fn insert(&self, key: ChunkKey, chunk: Bytes) {
        self.cache.insert(key, chunk);
        // Exactly one insert in every APPLY_EVERY runs the work, however many threads insert.
        let n = self.inserts.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if n.is_multiple_of(APPLY_EVERY) {
            self.cache.run_pending_tasks();
        }
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
        let admit = room || self.popularity.as_ref().is_none_or(|p| p.outranks_last_victim(&key));
        if admit {
            self.insert(key, chunk);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> ChunkKey {
        ChunkKey::new(Blake3::from(blake3::hash(b"file")), 4096, i)
    }

    #[test]
    fn a_full_tier_admits_from_disk_only_what_is_asked_for_more_than_the_last_victim() {
        let hot = HotTier::with_disk_admission(4 * 4096);
        let chunk = Bytes::from(vec![0u8; 4096]);
        // Room: admitted whatever its popularity.
        for i in 0..4 {
            assert!(hot.insert_promoted(key(i), chunk.clone()));
        }
        // An origin chunk always goes in, and pushes out the least recently
        // used chunk (never asked for) for room.
        hot.insert_verified(key(10), chunk.clone());
        hot.cache.run_pending_tasks();
        assert_eq!(hot.cache.entry_count(), 4);
        // Never asked for: stays on disk. Asked for more often than the victim: goes in.
        assert!(!hot.insert_promoted(key(20), chunk.clone()));
        for _ in 0..8 {
            hot.get(&key(21));
        }
        assert!(hot.insert_promoted(key(21), chunk.clone()));
        assert!(hot.contains(&key(21)));
    }

    #[test]
    fn the_tier_maps_at_most_a_batch_of_chunks_over_its_budget() {
        let hot = HotTier::new(4 * 4096);
        for i in 0..200 {
            hot.insert_verified(key(i), Bytes::from(vec![0u8; 4096]));
            // Entries are visible, and hold memory, before the cache weighs them.
            let held = hot.cache.iter().count();
            assert!(held <= 4 + APPLY_EVERY as usize, "{held} chunks held after insert {i}, budget 4");
        }
    }

    #[test]
    fn without_a_disk_tier_nothing_is_counted() {
        let hot = HotTier::new(4096);
        hot.get(&key(1));
        assert!(hot.popularity.is_none());
    }
}

/// Where a decrypted segment sits: the unwrapped key's generation (a fresh
/// one per unwrap, so a revoked or replaced key's plaintext never matches),
/// the ciphertext file and the segment index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlainKey {
    pub generation: u64,
    pub file: Blake3,
    pub index: u64,
}

/// Decrypted segments of encrypted files read often, in memory only (never
/// on disk): a hot plaintext range then costs what a plain one does. Filled
/// only from verified ciphertext that decrypted; emptied of a key's segments
/// when the key is withdrawn, and of a file's when it is purged.
#[derive(Clone)]
pub struct PlainTier {
    cache: Option<moka::sync::Cache<PlainKey, Bytes, Hasher>>,
}

impl std::fmt::Debug for PlainTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainTier").field("bytes", &self.bytes()).finish()
    }
}

impl PlainTier {
    /// A plaintext tier of `capacity_bytes` (0: none; every read decrypts).
    pub fn new(capacity_bytes: u64) -> Self {
        let cache = (capacity_bytes > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(capacity_bytes)
                .weigher(|_k: &PlainKey, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
                .support_invalidation_closures()
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build_with_hasher(Hasher::default())
        });
        Self { cache }
    }

    pub fn get(&self, key: &PlainKey) -> Option<Bytes> {
        self.cache.as_ref()?.get(key)
    }

    /// Keeps a segment that was decrypted from verified ciphertext.
    pub fn insert(&self, key: PlainKey, segment: Bytes) {
        if let Some(c) = &self.cache {
            c.insert(key, segment);
        }
    }

    /// Drops every segment decrypted with a key generation not in `live`.
    pub fn retain_generations(&self, live: std::collections::HashSet<u64>) {
        if let Some(c) = &self.cache {
            let _ = c.invalidate_entries_if(move |k, _| !live.contains(&k.generation));
        }
    }

    /// Drops every segment of `file`.
    pub fn purge_file(&self, file: Blake3) {
        if let Some(c) = &self.cache {
            let _ = c.invalidate_entries_if(move |k, _| k.file == file);
        }
    }

    /// Bytes held, once pending invalidations and evictions have run.
    pub fn bytes(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| {
            c.run_pending_tasks();
            c.weighted_size()
        })
    }
}
