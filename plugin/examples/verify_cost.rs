//! What verifying a chunk costs, in isolation, for `loadtest/bench/gateway.sh`:
//! the chaining value of every 256 KiB chunk of a buffer far larger than the
//! CPU's caches, compared with the table, on one thread: once with every
//! chunk coming from memory, and once with each chunk just copied into a
//! buffer (as an origin read leaves it in the gateway). Prints the rates and
//! the share of one core that verifying 1 GB/s takes.
//!
//! `cargo run --release -p shardgate --example verify_cost -- [MiB] [rounds]`

use std::time::Instant;

use shardgate::release::chunk::chunk_cv;

const CHUNK: usize = 256 * 1024;

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(512);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    // Incompressible bytes (a xorshift stream) so nothing is special-cased.
    let mut data = vec![0u8; mib << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for word in data.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes());
    }
    let table: Vec<_> = data.chunks(CHUNK).enumerate().map(|(i, c)| chunk_cv((i * CHUNK) as u64, c)).collect();
    // From memory: every chunk comes from DRAM (the worst case).
    let mut cold = f64::MAX;
    // Just read: each chunk is first copied into a buffer, as an origin read
    // or a socket receive leaves it, and only the hashing is timed.
    let mut warm = f64::MAX;
    let mut scratch = vec![0u8; CHUNK];
    for _ in 0..rounds {
        let start = Instant::now();
        let ok = data.chunks(CHUNK).enumerate().all(|(i, c)| chunk_cv((i * CHUNK) as u64, c) == table[i]);
        cold = cold.min(start.elapsed().as_secs_f64());
        assert!(ok, "every chunk verifies against its own table");
        let mut hashing = 0.0;
        for (i, c) in data.chunks(CHUNK).enumerate() {
            let s = &mut scratch[..c.len()];
            s.copy_from_slice(c);
            let start = Instant::now();
            let ok = chunk_cv((i * CHUNK) as u64, s) == table[i];
            hashing += start.elapsed().as_secs_f64();
            assert!(ok, "every chunk verifies against its own table");
        }
        warm = warm.min(hashing);
    }
    let rate = |secs: f64| data.len() as f64 / secs / 1e9;
    let (cold, warm) = (rate(cold), rate(warm));
    println!(
        "verified {mib} MiB in 256 KiB chunks on one core: just read {warm:.2} GB/s, {:.1}% of a core per GB/s; from memory {cold:.2} GB/s, {:.1}%",
        100.0 / warm,
        100.0 / cold
    );
}
