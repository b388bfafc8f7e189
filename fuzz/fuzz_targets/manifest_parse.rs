//! Untrusted release metadata (manifest.json and chunk tables) must be
//! rejected cleanly, never by a panic; a chunk table that decodes must
//! re-encode to exactly the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate::release::chunk::ChunkTable;
use shardgate::release::manifest::SignedManifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = SignedManifest::parse(data) {
        assert_eq!(m.bytes, data, "parsed manifest keeps different bytes");
    }
    if let Ok(t) = ChunkTable::decode(data) {
        assert_eq!(t.encode(), data, "chunk table does not round-trip");
        let _ = t.root();
    }
});
