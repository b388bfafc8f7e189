//! The native half of the shardgate Python client.
//!
//! The `blake3` Python binding hashes whole inputs; checking one chunk of a
//! file alone needs BLAKE3's subtree API (a chaining value at an input
//! offset, merged into the root), which it does not expose. This module
//! exposes exactly that, through `shardgate-chunk`, the code the gateway
//! and `shardgate verify` use, so the client and the gateway cannot
//! disagree about what a valid chunk is. Hashing runs with the GIL released.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use shardgate_chunk::{ChunkLayout, ChunkTable as Table, open_table};

fn hash(what: &str, hex: &str) -> PyResult<blake3::Hash> {
    blake3::Hash::from_hex(hex).map_err(|e| PyValueError::new_err(format!("{what} {hex:?} is not a BLAKE3 hash: {e}")))
}

/// A file's chunk table, proven against its own hash and the file's root.
#[pyclass(frozen, module = "shardgate._native")]
struct ChunkTable {
    table: Table,
}

#[pymethods]
impl ChunkTable {
    /// Decodes `data` and proves it: its BLAKE3 is `table_hash`, its header
    /// describes a `size`-byte file in `chunk_size`-byte chunks, and its
    /// entries rebuild `root`. Raises `ValueError` naming what failed.
    #[staticmethod]
    fn open(py: Python<'_>, data: &[u8], table_hash: &str, size: u64, chunk_size: u64, root: &str) -> PyResult<Self> {
        let table_hash = hash("table hash", table_hash)?;
        let root = hash("file root", root)?;
        let layout = ChunkLayout::new(size, chunk_size).map_err(|e| PyValueError::new_err(e.to_string()))?;
        let table = py
            .detach(|| open_table(data, &table_hash, layout, &root))
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(Self { table })
    }

    /// Number of chunks in the file.
    #[getter]
    fn chunk_count(&self) -> u64 {
        self.table.layout().chunk_count()
    }

    /// Whether `data` is exactly chunk `index` of the file.
    fn verify(&self, py: Python<'_>, index: u64, data: &[u8]) -> bool {
        py.detach(|| self.table.verify_chunk(index, data))
    }

    /// Checks consecutive chunks `first, first + 1, ...`, one `bytes` each,
    /// and returns how many leading chunks verify (several threads for
    /// large batches).
    fn verify_chunks(&self, py: Python<'_>, first: u64, chunks: Vec<PyBackedBytes>) -> u64 {
        py.detach(|| {
            let pieces: Vec<(u64, &[u8])> = chunks.iter().zip(first..).map(|(c, i)| (i, &c[..])).collect();
            verify_pieces(&self.table, &pieces)
        })
    }

    /// Checks consecutive chunks `first, first + 1, ...` laid end to end in
    /// `data` (whole chunks; the file's last one may be short) and returns
    /// how many leading chunks verify. Large runs are checked on several
    /// threads.
    fn verify_run(&self, py: Python<'_>, first: u64, data: &[u8]) -> u64 {
        py.detach(|| verify_run(&self.table, first, data))
    }
}

fn verify_run(table: &Table, first: u64, data: &[u8]) -> u64 {
    let layout = table.layout();
    let mut pieces = Vec::new();
    let mut at = 0usize;
    let mut index = first;
    while at < data.len() && index < layout.chunk_count() {
        let r = layout.chunk_range(index);
        let len = (r.end - r.start) as usize;
        let end = (at + len).min(data.len());
        pieces.push((index, &data[at..end]));
        at = end;
        index += 1;
    }
    verify_pieces(table, &pieces)
}

/// How many leading `(index, bytes)` pieces are exactly those chunks.
fn verify_pieces(table: &Table, pieces: &[(u64, &[u8])]) -> u64 {
    let total: usize = pieces.iter().map(|(_, d)| d.len()).sum();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let ok: Vec<bool> = if total < (1 << 20) || threads < 2 || pieces.len() < 2 {
        pieces.iter().map(|(i, d)| table.verify_chunk(*i, d)).collect()
    } else {
        let per = pieces.len().div_ceil(threads);
        std::thread::scope(|s| {
            let handles: Vec<_> = pieces
                .chunks(per)
                .map(|group| s.spawn(move || group.iter().map(|(i, d)| table.verify_chunk(*i, d)).collect::<Vec<_>>()))
                .collect();
            // A verifying thread cannot panic on any input; should one, its whole group counts as failed.
            handles
                .into_iter()
                .zip(pieces.chunks(per))
                .flat_map(|(h, g)| h.join().unwrap_or_else(|_| vec![false; g.len()]))
                .collect()
        })
    };
    ok.iter().take_while(|v| **v).count() as u64
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ChunkTable>()?;
    Ok(())
}
