//! shardgate-loadtest against a real shardgate engine (dir origin) and
//! against a server that ignores ranges.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use shardgate::config::{ByteSize, Config, OriginConfig, ReleaseSource};
use shardgate::gateway::Gateway;
use shardgate::progress::Silent;
use shardgate::release::envelope::Envelope;
use shardgate::release::keys::PublisherKey;
use shardgate::release::pack::{PackFormat, PackOptions, pack};

fn loadtest(args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shardgate-loadtest")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    (out.status.code().unwrap_or(-1), json, stderr)
}

#[test]
fn mixed_loaders_against_shardgate_report_latency_and_hit_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..12u32 {
        let bytes: Vec<u8> = (0..(200_000 + i * 50_000)).map(|j| (j.wrapping_mul(31) ^ i) as u8).collect();
        std::fs::write(src.join(format!("shard-{i:02}.bin")), bytes).unwrap();
    }
    let key = PublisherKey::generate().unwrap();
    let out = dir.path().join("rel");
    let opts = PackOptions {
        dir: src,
        name: "lt".into(),
        version: "1.0.0".parse().unwrap(),
        out: out.clone(),
        envelope: Envelope::default(),
        parent: None,
        chunk_size: 64 * 1024,
        format: PackFormat::Files,
        created_at: jiff::Timestamp::from_second(1_700_000_000).unwrap(),
        drift: None,
        encryption: None,
        policy: None,
    };
    pack(&opts, &key, &Silent).unwrap();
    let mut cfg = Config::default();
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.trust.keys = vec![key.public().to_string()];
    cfg.releases = vec![ReleaseSource { manifest: out.join("manifest.json").display().to_string(), placement: None }];
    cfg.origins = vec![OriginConfig::Dir { name: None, path: out.clone() }];
    cfg.hot_tier.capacity = ByteSize(64 << 20);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let base = rt.block_on(async {
        let gw = Gateway::start(cfg.clone()).await.unwrap();
        let listener = shardgate::http::server::bind(&cfg.server).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(shardgate::http::server::serve(
            gw,
            listener,
            None,
            cfg.server.clone(),
            false,
            std::future::pending(),
        ));
        format!("http://{addr}")
    });
    let (code, r, stderr) = loadtest(&[
        "--base",
        &base,
        "--release",
        "lt@1.0.0",
        "--pattern",
        "mixed",
        "--workers",
        "3",
        "--request-size",
        "128KiB",
        "--requests",
        "150",
        "--duration",
        "30s",
        "--json",
        "--quiet",
    ]);
    assert_eq!(code, 0, "{stderr} {r}");
    assert_eq!(r["errors"], serde_json::json!({}));
    let requests = r["requests"].as_u64().unwrap();
    assert!((140..=150).contains(&requests), "{r}");
    assert!(r["bytes"].as_u64().unwrap() > 1_000_000);
    assert!(r["ttfb"]["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(r["latency"]["p99_ms"].as_f64().unwrap() >= r["latency"]["p50_ms"].as_f64().unwrap());
    let ratio = r["hot_tier_hit_ratio"].as_f64().expect("shardgate's /metrics gives a hit ratio");
    assert!(ratio > 0.0 && ratio <= 1.0, "{ratio}");
    let bytes = r["cached_byte_ratio"].as_f64().expect("shardgate's /metrics gives a byte ratio");
    // The first reads of each file are cold, the rest hot.
    assert!(bytes > 0.0 && bytes < 1.0, "{bytes}");
    assert_eq!(r["stall_seconds"].as_array().unwrap().len(), 3);
    assert!(r["range_warning"].is_null());
}

#[test]
fn a_server_that_ignores_ranges_is_named() {
    // Answers every request with the whole 1 MiB body and 200, Range or not.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming().take(200) {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut buf) else { return };
                    if n == 0 {
                        return;
                    }
                    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n";
                    let body = vec![7u8; 1 << 20];
                    if buf[..n].starts_with(b"HEAD") {
                        let _ = s.write_all(head);
                    } else if s.write_all(head).and_then(|()| s.write_all(&body)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let list = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(list.path(), "data/a.bin 1048576\n").unwrap();
    let (code, r, _) = loadtest(&[
        "--base",
        &format!("http://{addr}"),
        "--urls",
        list.path().to_str().unwrap(),
        "--pattern",
        "fsspec",
        "--workers",
        "1",
        "--requests",
        "9",
        "--duration",
        "20s",
        "--json",
        "--quiet",
    ]);
    assert_eq!(code, 2, "errors make a non-zero exit: {r}");
    // Three visits: a HEAD and two ranged reads each; every ranged read got the whole file.
    assert_eq!(r["errors"]["range_ignored"], 6, "{r}");
    assert!(r["range_warning"].as_str().unwrap().contains("mishandles HTTP ranges"), "{r}");
}
