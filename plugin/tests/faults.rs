//! The integrity invariant under injected origin faults: corrupt, truncated,
//! stalled and failing origins never get an unverified byte to a client.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use shardgate::testing::{Fault, MockOrigin};
use support::*;

const CHUNK: u64 = 64 * 1024;

fn dataset() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("a/big.bin", bytes_of(2_000_000, 1)),
        ("b/mid.bin", bytes_of(300_000, 2)),
        ("c/small.txt", bytes_of(1000, 3)),
        ("d/exact.bin", bytes_of(CHUNK as usize * 4, 4)),
    ]
}

/// Reads a response fully; `Err` if the body was cut short or reset.
async fn fetch(client: &reqwest::Client, url: &str, range: Option<(u64, u64)>) -> (u16, Result<Vec<u8>, String>) {
    let mut req = client.get(url);
    if let Some((a, b)) = range {
        req = req.header("Range", format!("bytes={a}-{b}"));
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return (0, Err(e.to_string())),
    };
    let status = resp.status().as_u16();
    (status, resp.bytes().await.map(|b| b.to_vec()).map_err(|e| e.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_many_injected_faults_no_corrupt_byte_reaches_a_client() {
    let rel = Release::pack("faulty", &dataset(), CHUNK);
    let m1 = MockOrigin::start(rel.blobs.clone()).await;
    let m2 = MockOrigin::start(rel.blobs.clone()).await;
    let mut cfg = config_for(&rel, &[&m1, &m2]);
    // A tiny hot tier so most reads go back to the origins.
    cfg.hot_tier.capacity = shardgate::config::ByteSize(CHUNK * 2);
    cfg.fetch.span = shardgate::config::ByteSize(CHUNK * 2);
    let g = Served::start(cfg).await;
    let client = client();

    let faults = [
        Fault::CorruptRandom,
        Fault::CorruptAt(70_000),
        Fault::TruncateAfter(100_000),
        Fault::StallAfter { bytes: 50_000, dur: Duration::from_secs(2) },
        Fault::Status(500),
    ];
    let (mut ok, mut failed, mut corrupt) = (0u32, 0u32, 0u32);
    let mut rng = 7u64;
    for round in 0..120u64 {
        // The first origin is always faulty; the second is faulty a third of the time.
        m1.set_fault(None, Some(faults[(round % faults.len() as u64) as usize].clone()));
        m2.set_fault(None, (round % 3 == 0).then_some(Fault::CorruptRandom));
        let (path, src) = &rel.files.iter().nth((round % 4) as usize).unwrap();
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let len = src.len() as u64;
        let a = (rng >> 33) % len;
        let b = (a + (rng >> 40) % 400_000).min(len - 1);
        let range = if round % 5 == 0 { None } else { Some((a, b)) };
        let (status, body) = fetch(&client, &rel.url(&g.base, path), range).await;
        match (status, body) {
            (200 | 206, Ok(body)) => {
                let want = match range {
                    None => &src[..],
                    Some((a, b)) => &src[a as usize..=b as usize],
                };
                if body == want { ok += 1 } else { corrupt += 1 }
            }
            (200 | 206, Err(_)) | (502, _) => failed += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    m1.set_fault(None, None);
    m2.set_fault(None, None);
    assert_eq!(corrupt, 0, "a client received bytes that differ from the release");
    assert!(ok >= 60, "too few complete answers: ok={ok} failed={failed}");
    assert!(g.metric("shardgate_chunk_verify_failures_total") > 0.0, "faults were injected but none was caught");
    // Rounds where the second origin was clean must have succeeded (failover works).
    assert!(ok > 0);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_corrupt_origin_fails_over_to_the_next() {
    let rel = Release::pack("failover", &dataset(), CHUNK);
    let m1 = MockOrigin::start(rel.blobs.clone()).await;
    let m2 = MockOrigin::start(rel.blobs.clone()).await;
    // Each fault kind must fail over within its own request, so the first
    // origin must still be asked first after the last one: ejection (tested
    // on its own below) would rightly keep it out of the way.
    let mut cfg = config_for(&rel, &[&m1, &m2]);
    cfg.fetch.outlier.consecutive_failures = 0;
    let g = Served::start(cfg).await;
    let client = client();
    let src = &rel.files["a/big.bin"];

    m1.set_fault(None, Some(Fault::Status(500)));
    let (s, body) = fetch(&client, &rel.url(&g.base, "a/big.bin"), Some((0, 199_999))).await;
    assert_eq!((s, body.unwrap()), (206, src[..200_000].to_vec()));
    assert!(m2.requests() > 0, "second origin never asked");

    m1.set_fault(None, Some(Fault::CorruptAt(1_500_000)));
    let before = g.metric("shardgate_chunk_verify_failures_total");
    let (s, body) = fetch(&client, &rel.url(&g.base, "a/big.bin"), Some((1_400_000, 1_599_999))).await;
    assert_eq!((s, body.unwrap()), (206, src[1_400_000..1_600_000].to_vec()));
    assert!(g.metric("shardgate_chunk_verify_failures_total") > before, "corruption not counted");

    m1.set_fault(None, Some(Fault::StallAfter { bytes: 10_000, dur: Duration::from_secs(5) }));
    let (s, body) = fetch(&client, &rel.url(&g.base, "b/mid.bin"), None).await;
    assert_eq!((s, body.unwrap()), (200, rel.files["b/mid.bin"].clone()));
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_origin_fails_before_headers_the_answer_is_502() {
    let rel = Release::pack("allbad", &dataset(), CHUNK);
    let m1 = MockOrigin::start(rel.blobs.clone()).await;
    let g = Served::start(config_for(&rel, &[&m1])).await;
    m1.set_fault(None, Some(Fault::CorruptAt(10)));
    let resp = client().get(rel.url(&g.base, "a/big.bin")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 502);
    let text = resp.text().await.unwrap();
    assert!(text.contains("verified"), "{text}");
    g.shutdown().await;
}

async fn mid_stream_failure_aborts(http2: bool) {
    let rel = Release::pack("midstream", &dataset(), CHUNK);
    let m1 = MockOrigin::start(rel.blobs.clone()).await;
    let mut cfg = config_for(&rel, &[&m1]);
    cfg.fetch.span = shardgate::config::ByteSize(CHUNK);
    cfg.fetch.readahead_chunks = 1;
    let g = Served::start(cfg).await;
    // Chunk 10 (offset 655360..720896) is corrupt on the only origin.
    m1.set_fault(None, Some(Fault::CorruptAt(700_000)));
    let client =
        if http2 { reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().unwrap() } else { client() };
    let resp = client.get(rel.url(&g.base, "a/big.bin")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "headers go out once the first chunk is verified");
    assert_eq!(resp.content_length(), Some(2_000_000));
    let mut got = Vec::new();
    let mut resp = resp;
    let outcome = loop {
        match resp.chunk().await {
            Ok(Some(b)) => got.extend_from_slice(&b),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert!(outcome.is_err(), "a cut body must be an error to the client, not a clean end");
    let src = &rel.files["a/big.bin"];
    assert!(got.len() <= 655_360, "bytes of the corrupt chunk were sent: {}", got.len());
    assert_eq!(&got[..], &src[..got.len()], "every byte sent is the published byte");
    assert!(g.metric("shardgate_responses_aborted_total") >= 1.0);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mid_stream_failure_aborts_http1() {
    mid_stream_failure_aborts(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mid_stream_failure_resets_the_http2_stream() {
    mid_stream_failure_aborts(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_readers_cause_one_origin_request_per_chunk() {
    let rel = Release::pack("herd", &dataset(), CHUNK);
    let m1 = MockOrigin::start(rel.blobs.clone()).await;
    let mut cfg = config_for(&rel, &[&m1]);
    cfg.fetch.span = shardgate::config::ByteSize(CHUNK * 4);
    let g = Served::start(cfg).await;
    let client = client();
    let url = rel.url(&g.base, "a/big.bin");
    let readers: Vec<_> = (0..16)
        .map(|_| {
            let (c, u) = (client.clone(), url.clone());
            tokio::spawn(async move { fetch(&c, &u, None).await })
        })
        .collect();
    for r in readers {
        let (s, body) = r.await.unwrap();
        assert_eq!(s, 200);
        assert_eq!(body.unwrap(), rel.files["a/big.bin"]);
    }
    // Count how many times each chunk of the file was asked of the origin.
    let file = rel.signed.manifest.file("a/big.bin").unwrap();
    let cid = cid_for(&file.blake3);
    let mut per_chunk = vec![0u32; 2_000_000usize.div_ceil(CHUNK as usize)];
    for (c, offset, len) in m1.request_log() {
        if c == cid {
            let end = offset + len.unwrap_or(2_000_000 - offset);
            for i in offset / CHUNK..end.div_ceil(CHUNK) {
                per_chunk[i as usize] += 1;
            }
        }
    }
    assert!(per_chunk.iter().all(|&n| n == 1), "origin requests per chunk: {per_chunk:?}");
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_chunk_table_from_one_origin_is_taken_from_the_next() {
    let rel = Release::pack("badtable", &dataset(), CHUNK);
    let m1 = MockOrigin::start(rel.blobs.clone()).await;
    let m2 = MockOrigin::start(rel.blobs.clone()).await;
    let g = Served::start(config_for(&rel, &[&m1, &m2])).await;
    let table = rel.signed.manifest.file("a/big.bin").unwrap().chunk_table.unwrap();
    m1.set_fault(Some(&cid_for(&table)), Some(Fault::CorruptAt(40)));
    let (s, body) = fetch(&client(), &rel.url(&g.base, "a/big.bin"), Some((5, 5000))).await;
    assert_eq!((s, body.unwrap()), (206, rel.files["a/big.bin"][5..=5000].to_vec()));
    assert!(m2.requests_for(&cid_for(&table)) >= 1);
    assert!(g.metric("shardgate_chunk_verify_failures_total") >= 1.0);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_tier_hits_do_not_touch_the_origin() {
    let rel = Release::pack("hot", &dataset(), CHUNK);
    let m1 = MockOrigin::start(rel.blobs.clone()).await;
    let g = Served::start(config_for(&rel, &[&m1])).await;
    let url = rel.url(&g.base, "b/mid.bin");
    let r1 = client().get(&url).send().await.unwrap();
    assert_eq!(r1.headers()["x-shardgate-cache"], "miss");
    assert_eq!(r1.bytes().await.unwrap().to_vec(), rel.files["b/mid.bin"]);
    let before = m1.requests();
    let r2 = client().get(&url).header("Range", "bytes=1000-2000").send().await.unwrap();
    assert_eq!(r2.headers()["x-shardgate-cache"], "hit");
    assert_eq!(r2.bytes().await.unwrap().to_vec(), rel.files["b/mid.bin"][1000..=2000].to_vec());
    assert_eq!(m1.requests(), before, "a hot read went to the origin");
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_btfs_gateway_origin_serves_verified_ranges_and_fails_over() {
    let rel = Release::pack("viagw", &dataset(), CHUNK);
    let m1 = MockOrigin::start(rel.blobs.clone()).await;
    let m2 = MockOrigin::start(rel.blobs.clone()).await;
    let mut cfg = config_for(&rel, &[]);
    cfg.origins = [&m1, &m2]
        .iter()
        .enumerate()
        .map(|(i, m)| shardgate::config::OriginConfig::BtfsGateway {
            name: Some(format!("gw{i}")),
            url: m.url(),
            path_prefix: "/btfs".into(),
        })
        .collect();
    let g = Served::start(cfg).await;
    let src = &rel.files["a/big.bin"];
    m1.set_fault(None, Some(Fault::CorruptRandom));
    let (s, body) = fetch(&client(), &rel.url(&g.base, "a/big.bin"), Some((123_456, 1_234_567))).await;
    assert_eq!((s, body.unwrap()), (206, src[123_456..=1_234_567].to_vec()));
    assert!(m2.requests() > 0);
    assert!(g.metric("shardgate_chunk_verify_failures_total{origin=\"gw0\"}") >= 1.0);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_file_published_with_two_chunk_sizes_never_mixes_chunks() {
    // Regression: the hot tier was keyed by file hash and chunk index only,
    // so chunk 1 of a 64 KiB-chunk release answered for chunk 1 of a 16 KiB one.
    let content = bytes_of(1_000_000, 42);
    let big = Release::pack("sizes-a", &[("f.bin", content.clone())], CHUNK);
    let small = Release::pack("sizes-b", &[("f.bin", content.clone())], 16 * 1024);
    let mut blobs = big.blobs.clone();
    blobs.extend(small.blobs.clone());
    let m = MockOrigin::start(blobs).await;
    let mut cfg = config_for(&big, &[&m]);
    cfg.trust.keys.push(small.key.public().to_string());
    cfg.releases.push(shardgate::config::ReleaseSource { manifest: small.manifest_path(), placement: None });
    let g = Served::start(cfg).await;
    let c = client();
    let (s, body) = fetch(&c, &big.url(&g.base, "f.bin"), None).await;
    assert_eq!((s, body.unwrap()), (200, content.clone()));
    for (a, b) in [(16_384, 32_767), (65_536, 70_000), (100_000, 400_000), (999_000, 999_999)] {
        let (s, body) = fetch(&c, &small.url(&g.base, "f.bin"), Some((a, b))).await;
        assert_eq!((s, body.unwrap()), (206, content[a as usize..=b as usize].to_vec()), "range {a}-{b}");
    }
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_reader_does_not_hold_back_other_readers() {
    let rel = Release::pack("paused", &dataset(), CHUNK);
    let m = MockOrigin::start(rel.blobs.clone()).await;
    let mut cfg = config_for(&rel, &[&m]);
    cfg.fetch.span = shardgate::config::ByteSize(CHUNK);
    cfg.fetch.readahead_chunks = 4;
    let g = Served::start(cfg).await;
    let url = rel.url(&g.base, "a/big.bin");
    let src = rel.files["a/big.bin"].clone();
    // Reader A takes one piece of a whole-file GET and then stops reading.
    let mut a = client().get(&url).send().await.unwrap();
    let first = a.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], &src[..first.len()]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Reader B wants chunks inside and far beyond A's read-ahead; neither may wait on A.
    for (lo, hi) in [(2 * CHUNK, 3 * CHUNK + 10), (1_500_000, 1_999_999)] {
        let got = tokio::time::timeout(Duration::from_secs(10), fetch(&client(), &url, Some((lo, hi)))).await;
        let (s, body) = got.expect("a reader waited on a paused reader's read-ahead");
        assert_eq!((s, body.unwrap()), (206, src[lo as usize..=hi as usize].to_vec()));
    }
    drop(a);
    g.shutdown().await;
}

/// Reads every file of `r` once, in order, and returns how long it took.
async fn read_all_files(r: &Release, base: &str) -> Duration {
    let client = client();
    let t0 = std::time::Instant::now();
    for (path, want) in &r.files {
        let got = client.get(r.url(base, path)).send().await.unwrap();
        assert_eq!(got.status(), 200, "{path}");
        assert_eq!(&got.bytes().await.unwrap()[..], &want[..], "{path}");
    }
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalling_first_origin_is_ejected_and_costs_at_most_twice_a_healthy_one() {
    // 100 files of 1 MB. Ejection costs exactly one stall_timeout (the first
    // read that meets the stall); on loopback a read takes a few ms, so the
    // files are large enough that 100 reads outlast one 100 ms timer.
    let files: Vec<(String, Vec<u8>)> = (0..100).map(|i| (format!("f{i:03}.bin"), bytes_of(1_000_000, i))).collect();
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(p, b)| (p.as_str(), b.clone())).collect();
    let r = Release::pack("outlier", &refs, 256 * 1024);
    let healthy = MockOrigin::start(r.blobs.clone()).await;
    let stalling = MockOrigin::start(r.blobs.clone()).await;
    stalling.set_fault(None, Some(Fault::StallAfter { bytes: 0, dur: Duration::from_secs(60) }));

    // A healthy origin alone: the baseline.
    let mut cfg = config_for(&r, &[&healthy]);
    cfg.fetch.stall_timeout = Duration::from_millis(100);
    let alone = Served::start(cfg).await;
    let baseline = read_all_files(&r, &alone.base).await;
    alone.shutdown().await;

    // The stalling origin first (names: mock0 stalls, mock1 is healthy).
    let mut cfg = config_for(&r, &[&stalling, &healthy]);
    cfg.fetch.stall_timeout = Duration::from_millis(100);
    let g = Served::start(cfg).await;
    let took = read_all_files(&r, &g.base).await;
    eprintln!("100 reads: {baseline:?} with a healthy origin alone, {took:?} with a stalling one first");
    let text = g.gw.metrics().render();
    assert!(text.contains("shardgate_origin_state{origin=\"mock0\"} 1"), "{text}");
    assert!(text.contains("shardgate_origin_ejections_total{origin=\"mock0\"} 1"), "{text}");
    assert!(
        took <= baseline * 2,
        "100 reads took {took:?} with a stalling first origin, {baseline:?} with a healthy one alone"
    );
    // Without ejection every read would wait out the stall first.
    assert_eq!(stalling.requests(), 1, "the ejected origin was asked again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_origin_is_probed_and_restored_when_it_answers_well() {
    let r = Release::pack(
        "probe",
        &[("a.bin", bytes_of(8192, 1)), ("b.bin", bytes_of(8192, 2)), ("c.bin", bytes_of(8192, 3))],
        256 * 1024,
    );
    let first = MockOrigin::start(r.blobs.clone()).await;
    let second = MockOrigin::start(r.blobs.clone()).await;
    first.set_fault(None, Some(Fault::Status(500)));
    let mut cfg = config_for(&r, &[&first, &second]);
    cfg.fetch.outlier.consecutive_failures = 1;
    cfg.fetch.outlier.base_ejection = Duration::from_millis(300);
    cfg.hot_tier.capacity = shardgate::config::ByteSize(1 << 20);
    let g = Served::start(cfg).await;
    let get = |p: &str| client().get(r.url(&g.base, p)).send();
    assert_eq!(get("a.bin").await.unwrap().status(), 200);
    assert_eq!(g.gw.fetcher().outliers().standing("mock0"), shardgate::origin::outlier::Standing::Ejected);
    let asked = first.requests();
    assert_eq!(get("b.bin").await.unwrap().status(), 200);
    assert_eq!(first.requests(), asked, "an ejected origin was asked first");
    // It heals; after its ejection one request probes it and restores it.
    first.set_fault(None, None);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get("c.bin").await.unwrap().status(), 200);
    assert_eq!(first.requests(), asked + 1, "the probe did not go to the healed origin");
    assert_eq!(g.gw.fetcher().outliers().standing("mock0"), shardgate::origin::outlier::Standing::Healthy);
    assert!(g.gw.metrics().render().contains("shardgate_origin_state{origin=\"mock0\"} 0"));
}
