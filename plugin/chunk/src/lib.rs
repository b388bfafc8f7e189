//! Chunk tables: per-chunk BLAKE3 chaining values that let any one chunk of a
//! file be checked alone.
//!
//! A file is cut into chunks of a power-of-two size (at least BLAKE3's own
//! 1 KiB chunk). Because the size is a power of two, every chunk is a complete
//! subtree of the file's BLAKE3 tree, so its chaining value (CV) is well
//! defined, and merging the CVs in tree order rebuilds the file's root hash.
//! That gives the two properties the release format rests on:
//!
//! 1. a table is checked once, by rebuilding the root and comparing it with
//!    the file's `blake3` in the signed manifest;
//! 2. after that, chunk `i` is checked alone by hashing it at input offset
//!    `i * chunk_size` and comparing with entry `i`.
//!
//! A file of a single chunk (size <= chunk size, including the empty file) has
//! no table: its one chunk is the whole file and is checked against the root.

use std::ops::Range;

use blake3::hazmat::{ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root};

/// BLAKE3's own chunk length: the smallest chunk size a table may use.
pub const MIN_CHUNK_SIZE: u64 = 1024;
/// The largest chunk size accepted (bounds per-chunk memory in the gateway).
pub const MAX_CHUNK_SIZE: u64 = 64 * 1024 * 1024;
/// The default chunk size: 256 KiB, the same as a BTFS node's UnixFS blocks.
pub const DEFAULT_CHUNK_SIZE: u64 = 256 * 1024;

const TABLE_MAGIC: &[u8; 4] = b"SGCT";
const TABLE_FORMAT_VERSION: u8 = 1;
/// Bytes before the first entry: magic, version, log2(chunk size), 2 reserved, file size, entry count.
pub const TABLE_HEADER_LEN: u64 = 4 + 1 + 1 + 2 + 8 + 8;
/// Bytes per table entry.
pub const CV_LEN: u64 = 32;

/// Errors about chunk geometry and table encoding.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("chunk size {0} is not a power of two between 1 KiB and 64 MiB")]
    BadChunkSize(u64),
    #[error("chunk table is {len} bytes, shorter than its {TABLE_HEADER_LEN}-byte header")]
    TableTooShort { len: u64 },
    #[error("chunk table has bad magic bytes (not a shardgate chunk table)")]
    TableMagic,
    #[error("chunk table format version {0} is not supported")]
    TableVersion(u8),
    #[error("chunk table header (byte offset {offset}): {what}")]
    TableHeader { offset: u64, what: String },
    #[error("chunk table length {len} does not match {entries} entries (expected {expected} bytes)")]
    TableLength { len: u64, entries: u64, expected: u64 },
    #[error("chunk table does not rebuild the file's root hash")]
    RootMismatch,
}

/// How a file of `size` bytes is cut into chunks of `chunk_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLayout {
    size: u64,
    chunk_size: u64,
}

impl ChunkLayout {
    pub fn new(size: u64, chunk_size: u64) -> Result<Self, ChunkError> {
        check_chunk_size(chunk_size)?;
        Ok(Self { size, chunk_size })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// Number of chunks; the empty file has one (empty) chunk.
    pub fn chunk_count(&self) -> u64 {
        self.size.div_ceil(self.chunk_size).max(1)
    }

    /// Whether the file carries a chunk table (more than one chunk).
    pub fn has_table(&self) -> bool {
        self.chunk_count() > 1
    }

    /// Byte range of chunk `index` within the file. `index` must be `< chunk_count()`.
    pub fn chunk_range(&self, index: u64) -> Range<u64> {
        let start = index.saturating_mul(self.chunk_size).min(self.size);
        let end = start.saturating_add(self.chunk_size).min(self.size);
        start..end
    }

    /// The chunks that cover the (non-empty, in-bounds) byte range.
    pub fn chunks_covering(&self, bytes: Range<u64>) -> Range<u64> {
        if bytes.start >= bytes.end {
            return 0..0;
        }
        let first = bytes.start / self.chunk_size;
        let last = (bytes.end - 1) / self.chunk_size;
        first..(last + 1).min(self.chunk_count())
    }

    /// Encoded length of this file's chunk table.
    pub fn table_len(&self) -> u64 {
        TABLE_HEADER_LEN + CV_LEN * self.chunk_count()
    }
}

/// Checks that a chunk size is a power of two within the supported bounds.
pub fn check_chunk_size(chunk_size: u64) -> Result<(), ChunkError> {
    if chunk_size.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        Ok(())
    } else {
        Err(ChunkError::BadChunkSize(chunk_size))
    }
}

/// The chaining values of every chunk of a multi-chunk file.
#[derive(Clone, PartialEq, Eq)]
pub struct ChunkTable {
    layout: ChunkLayout,
    cvs: Vec<ChainingValue>,
}

impl std::fmt::Debug for ChunkTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkTable").field("layout", &self.layout).field("entries", &self.cvs.len()).finish()
    }
}

impl ChunkTable {
    pub fn layout(&self) -> ChunkLayout {
        self.layout
    }

    pub fn entries(&self) -> &[ChainingValue] {
        &self.cvs
    }

    /// Rebuilds the file's BLAKE3 root hash from the chaining values.
    pub fn root(&self) -> blake3::Hash {
        let n = self.cvs.len() as u64;
        debug_assert!(n >= 2, "tables exist only for multi-chunk files");
        let (left, right) = self.split(0, n, self.layout.size);
        merge_subtrees_root(&left, &right, Mode::Hash)
    }

    /// Merge of chunks `lo..hi` that together hold `len` bytes, split BLAKE3's way.
    fn split(&self, lo: u64, hi: u64, len: u64) -> (ChainingValue, ChainingValue) {
        let left_len = blake3::hazmat::left_subtree_len(len);
        let mid = lo + left_len / self.layout.chunk_size;
        (self.subtree(lo, mid, left_len), self.subtree(mid, hi, len - left_len))
    }

    fn subtree(&self, lo: u64, hi: u64, len: u64) -> ChainingValue {
        if hi - lo == 1 {
            return self.cvs[lo as usize];
        }
        let (l, r) = self.split(lo, hi, len);
        merge_subtrees_non_root(&l, &r, Mode::Hash)
    }

    /// Checks the table against the file's root hash from the manifest.
    pub fn check_root(&self, root: &blake3::Hash) -> Result<(), ChunkError> {
        if &self.root() == root { Ok(()) } else { Err(ChunkError::RootMismatch) }
    }

    /// Whether `data` is exactly chunk `index` of the file.
    pub fn verify_chunk(&self, index: u64, data: &[u8]) -> bool {
        let Some(expected) = self.cvs.get(index as usize) else {
            return false;
        };
        let range = self.layout.chunk_range(index);
        data.len() as u64 == range.end - range.start && &chunk_cv(range.start, data) == expected
    }

    /// Encodes the table in its on-disk form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.layout.table_len() as usize);
        out.extend_from_slice(TABLE_MAGIC);
        out.push(TABLE_FORMAT_VERSION);
        out.push(self.layout.chunk_size.trailing_zeros() as u8);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.layout.size.to_le_bytes());
        out.extend_from_slice(&(self.cvs.len() as u64).to_le_bytes());
        for cv in &self.cvs {
            out.extend_from_slice(cv);
        }
        out
    }

    /// Decodes a table, checking every header field and the exact length.
    pub fn decode(bytes: &[u8]) -> Result<Self, ChunkError> {
        let len = bytes.len() as u64;
        if len < TABLE_HEADER_LEN {
            return Err(ChunkError::TableTooShort { len });
        }
        if &bytes[0..4] != TABLE_MAGIC {
            return Err(ChunkError::TableMagic);
        }
        if bytes[4] != TABLE_FORMAT_VERSION {
            return Err(ChunkError::TableVersion(bytes[4]));
        }
        let shift = bytes[5];
        if shift >= 64 {
            return Err(ChunkError::TableHeader { offset: 5, what: format!("chunk size 2^{shift}") });
        }
        if bytes[6] != 0 || bytes[7] != 0 {
            return Err(ChunkError::TableHeader { offset: 6, what: "reserved bytes are not zero".into() });
        }
        let chunk_size = 1u64 << shift;
        let size = u64::from_le_bytes(fixed8(&bytes[8..16]));
        let entries = u64::from_le_bytes(fixed8(&bytes[16..24]));
        let layout = ChunkLayout::new(size, chunk_size)
            .map_err(|e| ChunkError::TableHeader { offset: 5, what: e.to_string() })?;
        if entries != layout.chunk_count() || entries < 2 {
            return Err(ChunkError::TableHeader {
                offset: 16,
                what: format!(
                    "{entries} entries, but a {size}-byte file in {chunk_size}-byte chunks has {}{}",
                    layout.chunk_count(),
                    if layout.has_table() { "" } else { " and no table" }
                ),
            });
        }
        let expected = layout.table_len();
        if len != expected {
            return Err(ChunkError::TableLength { len, entries, expected });
        }
        let cvs = bytes[TABLE_HEADER_LEN as usize..]
            .chunks_exact(CV_LEN as usize)
            .map(|c| {
                let mut cv = [0u8; 32];
                cv.copy_from_slice(c);
                cv
            })
            .collect();
        Ok(Self { layout, cvs })
    }

    /// Entry index holding byte `offset` of the encoded table (`offset >= TABLE_HEADER_LEN`).
    pub fn entry_index(offset: u64) -> u64 {
        offset.saturating_sub(TABLE_HEADER_LEN) / CV_LEN
    }

    /// Byte offset of entry `index` within the encoded table.
    pub fn entry_offset(index: u64) -> u64 {
        TABLE_HEADER_LEN + CV_LEN * index
    }
}

fn fixed8(b: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    a
}

/// Chaining value of a chunk that starts at byte `offset` of its file.
pub fn chunk_cv(offset: u64, data: &[u8]) -> ChainingValue {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(offset);
    h.update(data);
    h.finalize_non_root()
}

/// What hashing a whole file produced.
#[derive(Debug, Clone)]
pub struct FileDigest {
    pub size: u64,
    pub root: blake3::Hash,
    /// Present when the file has more than one chunk.
    pub table: Option<ChunkTable>,
}

/// Streaming hasher that produces a file's root hash and chunk table in one
/// pass with bounded memory (one chunk's hasher state plus 32 bytes a chunk).
#[derive(Debug, Clone)]
pub struct ChunkHasher {
    chunk_size: u64,
    current: blake3::Hasher,
    in_current: u64,
    total: u64,
    cvs: Vec<ChainingValue>,
}

impl ChunkHasher {
    pub fn new(chunk_size: u64) -> Result<Self, ChunkError> {
        check_chunk_size(chunk_size)?;
        Ok(Self { chunk_size, current: blake3::Hasher::new(), in_current: 0, total: 0, cvs: Vec::new() })
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.in_current == self.chunk_size {
                // A full chunk is closed only once more data arrives: a file of
                // exactly one chunk must be finalized as a root instead.
                self.cvs.push(self.current.finalize_non_root());
                self.current = blake3::Hasher::new();
                self.current.set_input_offset(self.total);
                self.in_current = 0;
            }
            let room = (self.chunk_size - self.in_current) as usize;
            let take = room.min(data.len());
            self.current.update(&data[..take]);
            self.in_current += take as u64;
            self.total += take as u64;
            data = &data[take..];
        }
    }

    pub fn finish(mut self) -> FileDigest {
        if self.cvs.is_empty() {
            return FileDigest { size: self.total, root: self.current.finalize(), table: None };
        }
        self.cvs.push(self.current.finalize_non_root());
        let layout = ChunkLayout { size: self.total, chunk_size: self.chunk_size };
        let table = ChunkTable { layout, cvs: self.cvs };
        FileDigest { size: self.total, root: table.root(), table: Some(table) }
    }
}

impl std::io::Write for ChunkHasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Verifies chunk `index` of a file, whether or not the file has a table.
///
/// `table` must already have been checked against `root` with
/// [`ChunkTable::check_root`].
pub fn verify_chunk(
    layout: &ChunkLayout,
    root: &blake3::Hash,
    table: Option<&ChunkTable>,
    index: u64,
    data: &[u8],
) -> bool {
    match table {
        Some(t) => t.layout() == *layout && t.verify_chunk(index, data),
        None => !layout.has_table() && index == 0 && data.len() as u64 == layout.size() && &blake3::hash(data) == root,
    }
}

/// Why a chunk table fetched or read for a file cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableCheckError {
    #[error("chunk table hash is {actual}, manifest says {expected}")]
    Hash { expected: String, actual: String },
    #[error(transparent)]
    Decode(#[from] ChunkError),
    #[error(
        "chunk table describes a {table_size}-byte file in {table_chunk}-byte chunks; manifest says {size} bytes in {chunk}-byte chunks"
    )]
    Layout { table_size: u64, table_chunk: u64, size: u64, chunk: u64 },
}

/// Opens a table as the gateway and `verify` do: its own hash against the
/// manifest's reference, then its header against the file's layout, then its
/// entries against the file's root.
pub fn open_table(
    bytes: &[u8],
    table_hash: &blake3::Hash,
    layout: ChunkLayout,
    root: &blake3::Hash,
) -> Result<ChunkTable, TableCheckError> {
    let actual = blake3::hash(bytes);
    if &actual != table_hash {
        return Err(TableCheckError::Hash {
            expected: table_hash.to_hex().to_string(),
            actual: actual.to_hex().to_string(),
        });
    }
    let table = ChunkTable::decode(bytes)?;
    if table.layout() != layout {
        return Err(TableCheckError::Layout {
            table_size: table.layout().size(),
            table_chunk: table.layout().chunk_size(),
            size: layout.size(),
            chunk: layout.chunk_size(),
        });
    }
    table.check_root(root)?;
    Ok(table)
}

#[cfg(test)]
mod tests;
