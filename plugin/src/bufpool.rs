//! Recycled chunk buffers: for reads from files (the dir origin, the disk
//! tier), and for chunks put together from an HTTP origin's pieces.
//!
//! A fresh 256 KiB buffer costs page faults, and zeroing by the allocator or
//! the kernel: about a tenth of the gateway's time on a cold stream. A chunk
//! buffer goes back to a small process-wide free list when the last `Bytes`
//! of its chunk drops (the hot tier evicted it, and no response holds it),
//! and the next read fills it again. The free list is bounded, so idle
//! buffers never hold more than [`MAX_FREE`] x [`BUF_LEN`] bytes.
//!
//! A recycled buffer holds an earlier chunk's bytes. [`ChunkBuf`] only ever
//! exposes the prefix the caller says it filled, so none of them can reach
//! a client (and every chunk is verified before it is served anyway).

use std::sync::Mutex;

use bytes::Bytes;

/// The size of pooled buffers: the default chunk size and the dir origin's
/// read block. Buffers of other sizes (a file's short last chunk, other
/// chunk sizes) are allocated to their exact size and freed as usual, so a
/// cached chunk never pins more memory than it weighs.
pub(crate) const BUF_LEN: usize = crate::release::chunk::DEFAULT_CHUNK_SIZE as usize;

/// Idle buffers kept at most (8 MiB). In steady state a read takes back a
/// buffer an eviction just freed, but evicted chunks come back in bursts:
/// the hot tier evicts once per 16 inserts (`tier::APPLY_EVERY`), and its
/// map frees removed entries later, by epoch, at times several runs' worth at
/// once. A list shorter than a burst drops most of it, and the reads after
/// it allocate and fault in fresh buffers. Measured on a cold stream (512 MiB
/// through a fresh gateway with a 64 MiB tier): 28,000 page faults with a
/// list of 16, 18,900 with 32 or 64.
const MAX_FREE: usize = 32;

static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A buffer for one chunk: `len` bytes that the caller fills, then
/// [`ChunkBuf::freeze`]s into `Bytes`.
pub(crate) struct ChunkBuf {
    data: Vec<u8>,
    len: usize,
}

impl ChunkBuf {
    /// A buffer of `len` bytes whose contents are unspecified (a recycled
    /// one holds old bytes): fill it, then [`Self::truncate`] to what was filled.
    pub(crate) fn new(len: usize) -> Self {
        let recycled = if len == BUF_LEN { FREE.lock().ok().and_then(|mut f| f.pop()) } else { None };
        Self { data: recycled.unwrap_or_else(|| vec![0; len]), len }
    }

    /// Keeps only the first `len` bytes (no-op if `len` is not shorter).
    pub(crate) fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The chunk's bytes; the buffer returns to the free list when the last
    /// clone of them drops.
    pub(crate) fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for ChunkBuf {
    fn as_ref(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

impl AsMut<[u8]> for ChunkBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.data[..self.len]
    }
}

impl Drop for ChunkBuf {
    fn drop(&mut self) {
        if self.data.len() != BUF_LEN {
            return;
        }
        if let Ok(mut free) = FREE.lock()
            && free.len() < MAX_FREE
        {
            free.push(std::mem::take(&mut self.data));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_buffer_shows_only_what_was_filled() {
        let mut a = ChunkBuf::new(BUF_LEN);
        a.as_mut().fill(0xAB);
        drop(a.freeze());
        // Whether or not this one is the recycled buffer (tests share the
        // free list), only the filled prefix is visible.
        let mut b = ChunkBuf::new(BUF_LEN);
        assert_eq!(b.len(), BUF_LEN);
        b.as_mut()[..10].copy_from_slice(&[7; 10]);
        b.truncate(10);
        assert_eq!(b.freeze(), Bytes::from(vec![7u8; 10]));
    }

    #[test]
    fn other_sizes_get_exact_buffers() {
        for len in [5, BUF_LEN - 1, BUF_LEN + 1] {
            let mut b = ChunkBuf::new(len);
            assert_eq!(b.as_mut().len(), len);
            assert_eq!(b.data.len(), len, "a {len}-byte chunk pins no more than it weighs");
        }
    }
}
