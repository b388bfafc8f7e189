use proptest::prelude::*;

use super::*;

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8).collect()
}

fn digest(bytes: &[u8], chunk: u64) -> FileDigest {
    let mut h = ChunkHasher::new(chunk).expect("valid chunk size");
    // Feed in uneven pieces so chunk boundaries fall inside writes.
    for piece in bytes.chunks(777) {
        h.update(piece);
    }
    h.finish()
}

/// Sizes around the chunk boundaries, plus many chunks.
fn interesting_size(chunk: u64) -> impl Strategy<Value = usize> {
    let c = chunk as usize;
    prop_oneof![Just(0usize), Just(1), Just(c - 1), Just(c), Just(c + 1), Just(2 * c), Just(3 * c - 1), (2 * c..40 * c),]
}

fn chunk_size() -> impl Strategy<Value = u64> {
    prop_oneof![Just(1024u64), Just(2048), Just(4096), Just(16384)]
}

/// Locates the chunks whose data no longer matches the table: the reference
/// model of what `verify` reports.
fn bad_chunks(table: &ChunkTable, bytes: &[u8]) -> Vec<u64> {
    let layout = table.layout();
    (0..layout.chunk_count())
        .filter(|&i| {
            let r = layout.chunk_range(i);
            !table.verify_chunk(i, &bytes[r.start as usize..r.end as usize])
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn root_equals_plain_blake3((chunk, len) in chunk_size().prop_flat_map(|c| (Just(c), interesting_size(c))), seed: u8) {
        let bytes = data(len, seed);
        let d = digest(&bytes, chunk);
        prop_assert_eq!(d.root, blake3::hash(&bytes));
        prop_assert_eq!(d.size, len as u64);
        let layout = ChunkLayout::new(len as u64, chunk).unwrap();
        prop_assert_eq!(d.table.is_some(), layout.has_table());
        if let Some(t) = &d.table {
            prop_assert_eq!(t.root(), d.root);
            prop_assert_eq!(t.entries().len() as u64, layout.chunk_count());
            // Encoding round-trips and the decoded table still rebuilds the root.
            let decoded = ChunkTable::decode(&t.encode()).unwrap();
            prop_assert_eq!(&decoded, t);
            prop_assert_eq!(t.encode().len() as u64, layout.table_len());
        }
    }

    #[test]
    fn every_chunk_verifies_alone((chunk, len) in chunk_size().prop_flat_map(|c| (Just(c), interesting_size(c))), seed: u8) {
        let bytes = data(len, seed);
        let d = digest(&bytes, chunk);
        let layout = ChunkLayout::new(len as u64, chunk).unwrap();
        for i in 0..layout.chunk_count() {
            let r = layout.chunk_range(i);
            let piece = &bytes[r.start as usize..r.end as usize];
            prop_assert!(verify_chunk(&layout, &d.root, d.table.as_ref(), i, piece), "chunk {} of {}", i, len);
            // The same bytes claimed as another chunk fail.
            if layout.chunk_count() > 1 {
                let other = (i + 1) % layout.chunk_count();
                let or = layout.chunk_range(other);
                if or.end - or.start == r.end - r.start {
                    prop_assert!(!verify_chunk(&layout, &d.root, d.table.as_ref(), other, piece));
                }
            }
        }
    }

    #[test]
    fn any_bit_flip_in_file_is_located((chunk, len) in chunk_size().prop_flat_map(|c| (Just(c), interesting_size(c))), seed: u8, pos: prop::sample::Index, bit in 0u8..8) {
        prop_assume!(len > 0);
        let bytes = data(len, seed);
        let d = digest(&bytes, chunk);
        let layout = ChunkLayout::new(len as u64, chunk).unwrap();
        let at = pos.index(len);
        let mut flipped = bytes.clone();
        flipped[at] ^= 1 << bit;
        let expected_chunk = at as u64 / chunk;
        match &d.table {
            Some(t) => prop_assert_eq!(bad_chunks(t, &flipped), vec![expected_chunk]),
            None => prop_assert!(!verify_chunk(&layout, &d.root, None, 0, &flipped)),
        }
        prop_assert_ne!(digest(&flipped, chunk).root, d.root);
    }

    #[test]
    fn any_bit_flip_in_table_is_caught((chunk, len) in chunk_size().prop_flat_map(|c| (Just(c), 2 * c as usize..20 * c as usize)), seed: u8, pos: prop::sample::Index, bit in 0u8..8) {
        let bytes = data(len, seed);
        let d = digest(&bytes, chunk);
        let table = d.table.clone().unwrap();
        let encoded = table.encode();
        let table_hash = blake3::hash(&encoded);
        let layout = table.layout();
        let at = pos.index(encoded.len());
        let mut flipped = encoded.clone();
        flipped[at] ^= 1 << bit;
        // Caught by the manifest's reference to the table.
        let caught = matches!(open_table(&flipped, &table_hash, layout, &d.root), Err(TableCheckError::Hash { .. }));
        prop_assert!(caught);
        // Caught even by a reader that skipped the table hash.
        let flipped_hash = blake3::hash(&flipped);
        prop_assert!(open_table(&flipped, &flipped_hash, layout, &d.root).is_err());
        // Located: a flipped entry is the one entry that no longer matches the data.
        if at as u64 >= TABLE_HEADER_LEN {
            let entry = (at as u64 - TABLE_HEADER_LEN) / CV_LEN;
            let bad = ChunkTable::decode(&flipped).unwrap();
            prop_assert_eq!(bad_chunks(&bad, &bytes), vec![entry]);
        }
    }
}

proptest! {
    /// `chunks_covering` against a byte-by-byte reference: exactly the chunks
    /// that hold at least one byte of the range.
    #[test]
    fn chunks_covering_matches_reference(size in 0u64..20_000, chunk in chunk_size(), a in 0u64..20_000, len in 0u64..20_000) {
        let layout = ChunkLayout::new(size, chunk).unwrap();
        let start = a.min(size);
        let end = (start + len).min(size);
        let got = layout.chunks_covering(start..end);
        let mut want: Vec<u64> = (start..end).map(|b| b / chunk).collect();
        want.dedup();
        prop_assert_eq!(got.collect::<Vec<_>>(), want);
        // Chunk ranges tile the file exactly.
        let mut next = 0;
        for i in 0..layout.chunk_count() {
            let r = layout.chunk_range(i);
            prop_assert_eq!(r.start, next);
            prop_assert!(r.end - r.start <= chunk);
            next = r.end;
        }
        prop_assert_eq!(next, size);
    }
}

#[test]
fn every_bit_of_a_small_file_and_table_is_checked() {
    // Exhaustive over a 3-chunk file: every one of its 24,576 bits.
    let chunk = 1024u64;
    let bytes = data(3 * 1024 - 5, 7);
    let d = digest(&bytes, chunk);
    let table = d.table.clone().unwrap();
    for at in 0..bytes.len() {
        for bit in 0..8 {
            let mut f = bytes.clone();
            f[at] ^= 1 << bit;
            assert_eq!(bad_chunks(&table, &f), vec![at as u64 / chunk], "byte {at} bit {bit}");
        }
    }
    let encoded = table.encode();
    let h = blake3::hash(&encoded);
    for at in 0..encoded.len() {
        for bit in 0..8 {
            let mut f = encoded.clone();
            f[at] ^= 1 << bit;
            let fh = blake3::hash(&f);
            assert!(open_table(&f, &h, table.layout(), &d.root).is_err());
            assert!(open_table(&f, &fh, table.layout(), &d.root).is_err(), "table byte {at} bit {bit}");
        }
    }
}

#[test]
fn chunk_geometry() {
    let l = ChunkLayout::new(10_000, 4096).unwrap();
    assert_eq!(l.chunk_count(), 3);
    assert_eq!(l.chunk_range(2), 8192..10_000);
    assert_eq!(l.chunks_covering(0..1), 0..1);
    assert_eq!(l.chunks_covering(4095..4097), 0..2);
    assert_eq!(l.chunks_covering(9000..10_000), 2..3);
    assert_eq!(ChunkLayout::new(0, 4096).unwrap().chunk_count(), 1);
    assert_eq!(ChunkLayout::new(1, 1000).unwrap_err(), ChunkError::BadChunkSize(1000));
    assert_eq!(ChunkLayout::new(1, 512).unwrap_err(), ChunkError::BadChunkSize(512));
}

#[test]
fn decode_rejects_garbage_with_reasons() {
    assert!(matches!(ChunkTable::decode(b"short"), Err(ChunkError::TableTooShort { .. })));
    let mut bad = vec![0u8; 64];
    bad[..4].copy_from_slice(b"XXXX");
    assert_eq!(ChunkTable::decode(&bad), Err(ChunkError::TableMagic));
}
