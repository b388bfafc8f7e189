//! The disk tier: a restarted gateway is warm, every chunk read back is
//! verified again, and the byte budget holds.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use shardgate::config::{ByteSize, Config};
use shardgate::testing::{Fault, MockOrigin};
use shardgate::tier::ChunkKey;
use support::*;

const CHUNK: u64 = 64 * 1024;
const SIZE: usize = 2_000_000;

async fn get(url: &str) -> Vec<u8> {
    let resp = client().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap().to_vec()
}

/// Every chunk file under the tier's directory, with its size.
fn chunk_files(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(root.join("chunks")).unwrap() {
        for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let f = f.unwrap();
            out.push((f.path(), f.metadata().unwrap().len()));
        }
    }
    out.sort();
    out
}

fn with_disk(rel: &Release, m: &MockOrigin, dir: &Path, capacity: u64) -> Config {
    let mut cfg = config_for(rel, &[m]);
    // A hot tier of two chunks: reads go to the disk tier.
    cfg.hot_tier.capacity = ByteSize(CHUNK * 2);
    cfg.fetch.span = ByteSize(CHUNK * 4);
    cfg.disk_tier.path = Some(dir.to_path_buf());
    cfg.disk_tier.capacity = ByteSize(capacity);
    cfg
}

async fn flush(g: &Served) {
    let d = g.gw.fetcher().disk().unwrap().clone();
    assert!(tokio::task::spawn_blocking(move || d.flush(Duration::from_secs(10))).await.unwrap());
}

fn data_requests(m: &MockOrigin, cid: &str) -> usize {
    m.request_log().iter().filter(|(c, _, _)| c == cid).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gateway_serves_from_the_disk_tier_and_reverifies_every_chunk() {
    let rel = Release::pack("disky", &[("a/big.bin", bytes_of(SIZE, 9))], CHUNK);
    let src = &rel.files["a/big.bin"];
    let cid = cid_for(&rel.signed.manifest.file("a/big.bin").unwrap().blake3);
    let m = MockOrigin::start(rel.blobs.clone()).await;
    let tier = tempfile::tempdir().unwrap();

    let g = Served::start(with_disk(&rel, &m, tier.path(), 64 << 20)).await;
    assert_eq!(&get(&rel.url(&g.base, "a/big.bin")).await, src);
    flush(&g).await;
    let files = chunk_files(tier.path());
    let chunks = SIZE.div_ceil(CHUNK as usize);
    assert_eq!(files.len(), chunks, "every verified chunk is written once");
    assert_eq!(files.iter().map(|f| f.1).sum::<u64>(), SIZE as u64);
    assert_eq!(g.metric("shardgate_disk_tier_writes_total"), chunks as f64);
    let cold_requests = data_requests(&m, &cid);
    assert!(cold_requests >= 1);
    g.shutdown().await;

    // Restart: the new gateway indexes the chunks on disk and needs no data from the origin.
    let g = Served::start(with_disk(&rel, &m, tier.path(), 64 << 20)).await;
    assert_eq!(&get(&rel.url(&g.base, "a/big.bin")).await, src);
    assert_eq!(data_requests(&m, &cid), cold_requests, "a warm restart reads no file bytes from the origin");
    assert!(g.metric("shardgate_disk_tier_hits_total") >= (chunks - 2) as f64);
    assert_eq!(g.metric("shardgate_disk_tier_verify_failures_total"), 0.0);

    // The disk corrupts one chunk (a flipped byte) and truncates another: both
    // are caught on read back, dropped, and fetched again from the origin.
    let (flipped, _) = &files[3];
    let mut bytes = std::fs::read(flipped).unwrap();
    bytes[100] ^= 0x40;
    std::fs::write(flipped, bytes).unwrap();
    let (cut, len) = &files[7];
    std::fs::OpenOptions::new().write(true).open(cut).unwrap().set_len(len / 2).unwrap();
    // Out of memory too (moka may hold a little over its budget until it runs maintenance).
    let file = rel.signed.manifest.file("a/big.bin").unwrap().blake3;
    g.gw.fetcher().hot().purge_file(file).unwrap();
    let index_of = |p: &Path| -> u64 { p.extension().unwrap().to_str().unwrap().parse().unwrap() };
    let bad = [index_of(flipped) * CHUNK, index_of(cut) * CHUNK];
    let body = get(&rel.url(&g.base, "a/big.bin")).await;
    assert!(&body == src, "a corrupted disk chunk reached a client");
    assert_eq!(g.metric("shardgate_disk_tier_verify_failures_total"), 1.0);
    let refetched: Vec<u64> =
        m.request_log().iter().filter(|(c, _, _)| c == &cid).skip(cold_requests).map(|r| r.1).collect();
    assert!(
        bad.iter().all(|b| refetched.contains(b)) && refetched.iter().all(|o| bad.contains(o)),
        "the two bad chunks (at {bad:?}) were fetched again, and only they: {refetched:?}"
    );
    flush(&g).await;
    // Both were written again, whole.
    let again = chunk_files(tier.path());
    assert_eq!(again.len(), chunks);
    assert_eq!(again.iter().map(|f| f.1).sum::<u64>(), SIZE as u64);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gateway_serves_from_the_disk_tier_with_every_origin_down() {
    let rel = Release::pack("offline", &[("a/big.bin", bytes_of(SIZE, 5))], CHUNK);
    let src = &rel.files["a/big.bin"];
    let entry = rel.signed.manifest.file("a/big.bin").unwrap();
    let table_cid = cid_for(&entry.chunk_table.unwrap());
    let m = MockOrigin::start(rel.blobs.clone()).await;
    let tier = tempfile::tempdir().unwrap();

    let g = Served::start(with_disk(&rel, &m, tier.path(), 64 << 20)).await;
    assert_eq!(&get(&rel.url(&g.base, "a/big.bin")).await, src);
    flush(&g).await;
    assert_eq!(std::fs::read_dir(tier.path().join("tables")).unwrap().count(), 1, "the chunk table is kept");
    g.shutdown().await;

    // Every origin answers 503: the chunks and their table come from disk.
    m.set_fault(None, Some(Fault::Status(503)));
    let before = m.requests();
    let g = Served::start(with_disk(&rel, &m, tier.path(), 64 << 20)).await;
    assert_eq!(&get(&rel.url(&g.base, "a/big.bin")).await, src);
    assert_eq!(m.requests(), before, "nothing was asked of the origin");
    assert_eq!(g.metric("shardgate_disk_tier_table_hits_total"), 1.0);
    g.shutdown().await;

    // A corrupted table on disk is caught, dropped, and fetched again.
    m.set_fault(None, None);
    let table_file = std::fs::read_dir(tier.path().join("tables")).unwrap().next().unwrap().unwrap().path();
    let good = std::fs::read(&table_file).unwrap();
    let mut bad = good.clone();
    bad[40] ^= 0x01;
    std::fs::write(&table_file, &bad).unwrap();
    let table_requests = m.requests_for(&table_cid);
    let g = Served::start(with_disk(&rel, &m, tier.path(), 64 << 20)).await;
    assert_eq!(&get(&rel.url(&g.base, "a/big.bin")).await, src);
    assert_eq!(g.metric("shardgate_disk_tier_verify_failures_total"), 1.0);
    assert_eq!(g.metric("shardgate_disk_tier_table_hits_total"), 0.0);
    assert_eq!(m.requests_for(&table_cid), table_requests + 1, "the bad table was fetched again");
    flush(&g).await;
    assert_eq!(std::fs::read(&table_file).unwrap(), good, "and written again, whole");
    g.shutdown().await;
}

/// A purge (what a takedown does) is final: a span that was fetching the
/// file when it came caches none of the chunks it fetches after it, in
/// memory or on disk. A fetch begun after the purge caches again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_fetched_across_a_purge_are_not_cached() {
    let rel = Release::pack("fence", &[("f.bin", bytes_of(SIZE, 4))], CHUNK);
    let src = rel.files["f.bin"].clone();
    let file = rel.signed.manifest.file("f.bin").unwrap().blake3;
    let cid = cid_for(&file);
    let chunks = (SIZE as u64).div_ceil(CHUNK);
    let m = MockOrigin::start(rel.blobs.clone()).await;
    let tier = tempfile::tempdir().unwrap();
    let mut cfg = with_disk(&rel, &m, tier.path(), 64 << 20);
    cfg.fetch.stall_timeout = Duration::from_secs(5);
    // A hot tier that would hold the whole file, so a chunk missing from it
    // was not cached (rather than evicted).
    cfg.hot_tier.capacity = ByteSize(64 << 20);
    // One span fetches the whole file; it runs on after its reader leaves.
    cfg.fetch.span = ByteSize(SIZE as u64 + CHUNK);
    let g = Served::start(cfg).await;
    let stall = 3 * CHUNK + 1000;
    m.set_fault_times(Some(&cid), Fault::StallAfter { bytes: stall, dur: Duration::from_millis(1500) }, 1);
    let url = rel.url(&g.base, "f.bin");
    let reader = tokio::spawn(async move { client().get(&url).send().await.unwrap().bytes().await });
    // The origin stalls mid-file with three chunks fetched; the reader
    // leaves (a takedown cuts its body) and the file is purged.
    let t0 = std::time::Instant::now();
    while data_requests(&m, &cid) == 0 || g.metric("shardgate_chunks_verified_total") < 3.0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "the origin never reached the stall");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reader.abort();
    g.gw.fetcher().purge_file(file).unwrap();
    assert!(
        g.metric("shardgate_chunks_verified_total") < chunks as f64,
        "the purge must come before the span fetched the rest"
    );
    // The span fetches and verifies the rest after the stall.
    while g.metric("shardgate_chunks_verified_total") < chunks as f64 {
        assert!(t0.elapsed() < Duration::from_secs(10), "the span never finished");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    flush(&g).await;
    // The gateway may not have seen the reader leave before the span ran
    // ahead of it, and then fetched the reader's next chunks again: those
    // requests began after the purge, and their chunks may be cached.
    let refetched: std::collections::HashSet<u64> = m
        .request_log()
        .into_iter()
        .filter(|(c, _, _)| c == &cid)
        .skip(1)
        .flat_map(|(_, at, len)| at / CHUNK..(at + len.unwrap_or(SIZE as u64 - at)).div_ceil(CHUNK))
        .collect();
    // The indexes of the file's chunks on disk.
    let on_disk_of_file = |root: &Path| -> Vec<u64> {
        chunk_files(root)
            .into_iter()
            .filter_map(|(p, _)| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                name.starts_with(&file.to_hex()).then(|| name.rsplit('.').next().unwrap().parse().unwrap())
            })
            .collect()
    };
    let on_disk = on_disk_of_file(tier.path());
    for i in 0..chunks {
        if refetched.contains(&i) {
            continue;
        }
        assert!(!on_disk.contains(&i), "chunk {i}, fetched across the purge, was written to disk");
        let key = ChunkKey { file, chunk_size: CHUNK, index: i };
        assert!(!g.gw.fetcher().hot().contains(&key), "chunk {i}, fetched across the purge, is in the hot tier");
    }
    assert!(refetched.len() < (chunks - 3) as usize, "the span's chunks were all fetched again: {refetched:?}");
    // A fetch begun after the purge caches as usual.
    assert_eq!(get(&rel.url(&g.base, "f.bin")).await, src);
    flush(&g).await;
    assert!(!on_disk_of_file(tier.path()).is_empty(), "a fetch after the purge wrote nothing to disk");
    assert!(g.gw.fetcher().hot().weighted_bytes() > 0);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_tier_keeps_its_byte_budget_and_a_takedown_empties_it() {
    let rel = Release::pack(
        "budget",
        &[("a/one.bin", bytes_of(SIZE, 1)), ("b/two.bin", bytes_of(SIZE, 2)), ("c/three.bin", bytes_of(SIZE, 3))],
        CHUNK,
    );
    let m = MockOrigin::start(rel.blobs.clone()).await;
    let tier = tempfile::tempdir().unwrap();
    let budget = 1 << 20;
    let g = Served::start(with_disk(&rel, &m, tier.path(), budget)).await;
    for round in 0..2 {
        for path in ["a/one.bin", "b/two.bin", "c/three.bin"] {
            assert_eq!(get(&rel.url(&g.base, path)).await, rel.files[path], "{path} in round {round}");
            flush(&g).await;
            let on_disk: u64 = chunk_files(tier.path()).iter().map(|f| f.1).sum();
            assert!(on_disk <= budget, "{on_disk} bytes on disk for a {budget}-byte budget");
        }
    }
    assert!(g.metric("shardgate_disk_tier_evictions_total") > 0.0);
    let disk = g.gw.fetcher().disk().unwrap();
    assert!(disk.bytes() <= budget);
    assert!(disk.chunks() > 0);

    // A purge (what a takedown does) deletes the file's chunks from disk.
    let three = rel.signed.manifest.file("c/three.bin").unwrap().blake3;
    g.gw.fetcher().purge_file(three).unwrap();
    flush(&g).await;
    let left: Vec<_> = chunk_files(tier.path())
        .into_iter()
        .filter(|(p, _)| p.file_name().unwrap().to_string_lossy().starts_with(&three.to_hex()))
        .collect();
    assert!(left.is_empty(), "purged chunks still on disk: {left:?}");
    g.shutdown().await;

    // A smaller budget after a restart evicts down to it while indexing.
    let g = Served::start(with_disk(&rel, &m, tier.path(), 1 << 20)).await;
    flush(&g).await;
    let on_disk: u64 = chunk_files(tier.path()).iter().map(|f| f.1).sum();
    assert!(on_disk <= 1 << 20);
    g.shutdown().await;
}
