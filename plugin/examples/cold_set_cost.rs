//! The work metering does before a response's headers, across file sizes:
//! `Fetcher::cold_set`, the snapshot of which chunks a response needs are
//! cold (its origin bytes). It must follow the chunks a request covers, not
//! the file's size or the distance between its ranges.
//!
//! For each file size: a multipart request for the first and the last byte,
//! and a 1 MiB range in the middle, on an empty hot tier. Prints nanoseconds
//! per snapshot and the bitmap words it holds.
//!
//! `cargo run --release -p shardgate --example cold_set_cost`

use std::sync::Arc;
use std::time::Instant;

use shardgate::config::FetchConfig;
use shardgate::fetch::{Fetcher, FileSpec};
use shardgate::metrics::Metrics;
use shardgate::release::chunk::ChunkLayout;
use shardgate::release::manifest::Blake3;
use shardgate::tier::{HotTier, Tiers};
use shardgate::usage::Meter;

const CHUNK: u64 = 256 * 1024;

fn main() {
    let fetcher = Fetcher::new(
        Vec::new(),
        Tiers { hot: HotTier::new(64 << 20), disk: None, plain: shardgate::tier::PlainTier::new(0) },
        FetchConfig::default(),
        1 << 20,
        1,
        Arc::new(Metrics::new()),
        Arc::new(Meter::default()),
    );
    println!("| file size | request | ns per snapshot | bitmap words |");
    println!("|---|---|---|---|");
    for (label, size) in [("1 GiB", 1u64 << 30), ("1 TiB", 1 << 40), ("1 PiB", 1 << 50)] {
        let Ok(layout) = ChunkLayout::new(size, CHUNK) else { continue };
        let spec = FileSpec {
            blake3: Blake3([7; 32]),
            layout,
            table: None,
            cid: None,
            table_cid: None,
            release: None,
            purge_mark: 0,
        };
        let last = layout.chunk_count() - 1;
        let mid = layout.chunk_count() / 2;
        for (what, ranges) in [
            ("bytes=0-0,-1 (multipart)", vec![0..1, last..last + 1]),
            ("1 MiB in the middle", std::iter::once(mid..mid + 4).collect()),
        ] {
            let n = 20_000u32;
            let t0 = Instant::now();
            let mut words = 0;
            for _ in 0..n {
                words = std::hint::black_box(fetcher.cold_set(&spec, &ranges)).words();
            }
            let ns = t0.elapsed().as_nanos() / u128::from(n);
            println!("| {label} | {what} | {ns} | {words} |");
        }
    }
}
