//! What decrypting an encrypted release file costs, in isolation, for
//! `loadtest/bench/encrypted.sh`: `FileCipher::decrypt_segment` over every
//! 256 KiB ciphertext chunk of a file far larger than the CPU's caches, on
//! one thread, for both schemes. This is the gateway's per-chunk work for a
//! reader of the plaintext (the chunk is copied out of the verified
//! ciphertext and opened in place), without the verification before it.
//!
//! Prints, per scheme, the best of the rounds: GB/s of plaintext, nanoseconds
//! per plaintext byte and core-seconds per GB, from the thread's CPU time
//! (`/proc/thread-self/schedstat`, so other load on the machine does not
//! count; wall time where that file is missing).
//!
//! `cargo run --release -p shardgate --example decrypt_cost -- [MiB] [rounds]`
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use shardgate::crypt::{DataKey, FileBinding, FileCipher, Scheme};

const CHUNK: u64 = 256 * 1024;

/// Nanoseconds this thread has run on a CPU, if the kernel reports it.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1024);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let plain_size = mib << 20;
    let key = DataKey::generate().unwrap();
    let salt = [7u8; 32];
    let at = FileBinding { name: "bench", version: "1.0.0", path: "cold.bin", salt: &salt, chunk_size: CHUNK };
    println!("| scheme | plaintext | GB/s, one thread | ns per byte | core-s per GB |");
    println!("|---|---|---|---|---|");
    for scheme in [Scheme::Aes256Gcm, Scheme::XChaCha20Poly1305] {
        let cipher = FileCipher::sized(scheme, &key, at, plain_size).unwrap();
        let segments = *cipher.segments().unwrap();
        // The ciphertext chunks, from incompressible plaintext (a xorshift stream).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut plain = vec![0u8; segments.segment_size() as usize];
        let chunks: Vec<Vec<u8>> = (0..segments.count())
            .map(|i| {
                let r = segments.plain_range(i);
                let p = &mut plain[..(r.end - r.start) as usize];
                for b in p.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
                cipher.encrypt_segment(i, i + 1 == segments.count(), p).unwrap()
            })
            .collect();
        let mut best = f64::MAX;
        for _ in 0..rounds {
            let (c0, t0) = (thread_cpu_ns(), Instant::now());
            let mut bytes = 0u64;
            for (i, c) in chunks.iter().enumerate() {
                bytes += std::hint::black_box(cipher.decrypt_segment(i as u64, c).unwrap()).len() as u64;
            }
            let wall = t0.elapsed().as_secs_f64();
            let secs = match (c0, thread_cpu_ns()) {
                (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
                _ => wall,
            };
            assert_eq!(bytes, plain_size, "every chunk decrypts to its segment");
            best = best.min(secs);
        }
        let per_byte = best / plain_size as f64;
        println!(
            "| {} | {mib} MiB in {} chunks of 256 KiB | {:.2} | {:.3} | {:.3} |",
            scheme.name(),
            segments.count(),
            1.0 / per_byte / 1e9,
            per_byte * 1e9,
            per_byte * 1e9,
        );
    }
}
