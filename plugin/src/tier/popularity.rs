//! How often chunks are asked for, approximately: a count-min sketch (four
//! rows of saturating 8-bit counters) whose counts are halved every ten
//! lookups per chunk of capacity, so past popularity fades. It is the
//! admission test of TinyLFU (Einziger, Friedman and Manes): a chunk read
//! back from the disk tier goes into memory only if it is asked for more
//! often than the chunk last evicted for room.
//!
//! Counters are relaxed atomics updated without locks; a lost update under
//! a race makes an estimate one lower, which only nudges an admission.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use super::ChunkKey;

const ROWS: usize = 4;

pub(super) struct Popularity {
    /// `ROWS` rows of `mask + 1` counters each.
    counters: Box<[AtomicU8]>,
    mask: usize,
    /// Lookups recorded since the start; counts halve every `sample`.
    recorded: AtomicU64,
    sample: u64,
    /// Estimate of the chunk last evicted to make room.
    victim: AtomicU8,
    hasher: foldhash::fast::RandomState,
}

impl Popularity {
    /// A sketch for a tier of about `entries` chunks.
    pub(super) fn new(entries: u64) -> Self {
        let entries = entries.clamp(16, 1 << 22) as usize;
        let width = (entries * 4).next_power_of_two();
        Self {
            counters: (0..ROWS * width).map(|_| AtomicU8::new(0)).collect(),
            mask: width - 1,
            recorded: AtomicU64::new(0),
            sample: 10 * entries as u64,
            victim: AtomicU8::new(0),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    fn slots(&self, key: &ChunkKey) -> [usize; ROWS] {
        let h = self.hasher.hash_one(key);
        let width = self.mask + 1;
        // A different 64-bit rotation of one hash per row.
        std::array::from_fn(|row| row * width + (h.rotate_left(17 * row as u32) as usize & self.mask))
    }

    pub(super) fn record(&self, key: &ChunkKey) {
        for slot in self.slots(key) {
            let c = &self.counters[slot];
            let v = c.load(Ordering::Relaxed);
            if v < u8::MAX {
                c.store(v + 1, Ordering::Relaxed);
            }
        }
        if (self.recorded.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(self.sample) {
            self.age();
        }
    }

    pub(super) fn estimate(&self, key: &ChunkKey) -> u8 {
        self.slots(key).iter().map(|&s| self.counters[s].load(Ordering::Relaxed)).min().unwrap_or(0)
    }

    fn age(&self) {
        for c in self.counters.iter() {
            c.store(c.load(Ordering::Relaxed) / 2, Ordering::Relaxed);
        }
        self.victim.store(self.victim.load(Ordering::Relaxed) / 2, Ordering::Relaxed);
    }

    pub(super) fn evicted(&self, key: &ChunkKey) {
        self.victim.store(self.estimate(key), Ordering::Relaxed);
    }

    pub(super) fn outranks_last_victim(&self, key: &ChunkKey) -> bool {
        self.estimate(key) > self.victim.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::manifest::Blake3;

    fn key(i: u64) -> ChunkKey {
        ChunkKey::new(Blake3::from(blake3::hash(b"f")), 1 << 18, i)
    }

    #[test]
    fn estimates_follow_lookups_and_fade() {
        let p = Popularity::new(64);
        for _ in 0..5 {
            p.record(&key(1));
        }
        p.record(&key(2));
        assert!(p.estimate(&key(1)) >= 5, "a count-min estimate never undercounts without races");
        assert!(p.estimate(&key(1)) > p.estimate(&key(2)));
        p.evicted(&key(2));
        assert!(p.outranks_last_victim(&key(1)));
        assert!(!p.outranks_last_victim(&key(3)), "a chunk never asked for does not displace one that was");
        // Ten lookups per entry of capacity halve every count (one other
        // chunk here, so key 1's counters see no other increments unless
        // both hash to the same counter in all four rows).
        let before = p.estimate(&key(1));
        for _ in 0..(p.sample - 6) {
            p.record(&key(2));
        }
        assert_eq!(p.estimate(&key(1)), before / 2);
    }
}
