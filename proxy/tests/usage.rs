//! Usage durability with the real binary under load: SIGTERM loses nothing,
//! kill -9 loses at most one commit interval. Both compare what the clients
//! received with what the ledger holds after a restart.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardgate::usage::{Counters, Ledger, RecordKey};
use support::*;

const FILE: usize = 8 << 20;
const RANGE: u64 = 1 << 20;

/// A release, a tenant, and a config with a ledger file and 1 s commits.
fn setup(d: &Path) -> String {
    keygen(d);
    let src = d.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("data.bin"), (0..FILE).map(|i| (i % 251) as u8).collect::<Vec<_>>()).unwrap();
    ok(&["pack", src.to_str().unwrap(), "--name", "rel", "--version", "1.0.0", "--key", "key", "--out", "rel"], d);
    let (key, hash) = shardgate::tenant::new_key().unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"20s\"\n[trust]\nkeys = [\"key.pub\"]\n\
         [[releases]]\nmanifest = \"rel/manifest.json\"\n[[origins]]\nkind = \"dir\"\npath = \".\"\n\
         [[tenants]]\nid = \"team-a\"\nkeys = [\"{hash}\"]\ndatasets = [\"rel\"]\n\
         [usage]\nledger = \"state/usage.redb\"\ncommit_interval = \"1s\"\n"
    );
    std::fs::write(d.join("gw.toml"), text).unwrap();
    key
}

/// One response as a client saw it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    done: Instant,
    body: u64,
    complete: bool,
}

/// GETs 1 MiB ranges over fresh connections until `stop`, or a bound on time or count.
fn load(addr: String, key: String, seed: u64, stop: Arc<AtomicBool>, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut x = seed;
    let t0 = Instant::now();
    for _ in 0..5000 {
        if stop.load(Ordering::Relaxed) || t0.elapsed() > Duration::from_secs(30) {
            break;
        }
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let start = (x >> 33) % (FILE as u64 - RANGE);
        let Ok(mut s) = TcpStream::connect(&addr) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let req = format!(
            "GET /v1/datasets/rel/1.0.0/files/data.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
             Range: bytes={start}-{}\r\nConnection: close\r\n\r\n",
            start + RANGE - 1
        );
        if s.write_all(req.as_bytes()).is_err() {
            continue;
        }
        let mut buf = Vec::with_capacity(RANGE as usize + 1024);
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) else { continue };
        let head = String::from_utf8_lossy(&buf[..head_end]);
        if !head.starts_with("HTTP/1.1 206") {
            continue;
        }
        let body = (buf.len() - head_end) as u64;
        seen.lock().unwrap().push(Seen { done: Instant::now(), body, complete: body == RANGE });
    }
}

struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn start_load(addr: &str, key: &str) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let threads = (0..4)
        .map(|i| {
            let (a, k, s, v) = (addr.to_string(), key.to_string(), stop.clone(), seen.clone());
            std::thread::spawn(move || load(a, k, i + 1, s, v))
        })
        .collect();
    Load { stop, seen, threads }
}

impl Load {
    fn finish(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        self.seen.lock().unwrap().clone()
    }
}

/// Restarts the gateway on the same ledger and stops it cleanly, which
/// closes every window; then reads the tenant's totals from the file.
fn ledger_after_restart(d: &Path) -> Counters {
    let mut srv = Server::start(&d.join("gw.toml"));
    srv.signal("TERM");
    assert_eq!(srv.wait_exit(Duration::from_secs(30)), Some(0), "{}", srv.logs());
    let ledger = Ledger::open(Some(&d.join("state/usage.redb")), None).unwrap();
    let mut total = Counters::default();
    for e in ledger.list(0, 1_000_000, None).unwrap() {
        if let RecordKey::TenantUsage { tenant, .. } = &e.record.key {
            assert_eq!(&**tenant, "team-a");
            total.add(&e.record.counters);
        }
    }
    total
}

fn wait_for_traffic(load: &Load, n: usize) {
    let t0 = Instant::now();
    while load.seen.lock().unwrap().len() < n {
        assert!(t0.elapsed() < Duration::from_secs(30), "the load never got going");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_under_load_loses_no_billed_byte() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let key = setup(d);
    let mut srv = Server::start(&d.join("gw.toml"));
    let load = start_load(&srv.addr, &key);
    wait_for_traffic(&load, 40);
    // Responses in flight now are drained to their end, then the ledger is flushed.
    srv.signal("TERM");
    assert_eq!(srv.wait_exit(Duration::from_secs(30)), Some(0), "{}", srv.logs());
    let seen = load.finish();
    let received: u64 = seen.iter().map(|s| s.body).sum();
    assert!(seen.iter().all(|s| s.complete), "a graceful stop cut a response");
    let ledger = ledger_after_restart(d);
    assert_eq!(ledger.bytes, received, "ledger bytes vs bytes the clients received");
    assert_eq!(ledger.requests, seen.len() as u64);
    assert_eq!(ledger.aborted_requests, 0);
}

#[test]
fn kill_9_under_load_loses_at_most_one_commit_interval() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let key = setup(d);
    let mut srv = Server::start(&d.join("gw.toml"));
    let load = start_load(&srv.addr, &key);
    wait_for_traffic(&load, 40);
    // Let at least three commits happen under load.
    std::thread::sleep(Duration::from_millis(3500));
    let killed = Instant::now();
    srv.signal("KILL");
    assert_eq!(srv.wait_exit(Duration::from_secs(10)), None, "killed by a signal, no exit code");
    let seen = load.finish();
    let received: u64 = seen.iter().map(|s| s.body).sum();
    // Everything completed more than one commit interval (1 s), plus a
    // second of slack for the commit itself on a busy machine, before the
    // kill must be in the ledger.
    let bound = killed - Duration::from_secs(2);
    let must_have: u64 = seen.iter().filter(|s| s.complete && s.done < bound).map(|s| s.body).sum();
    let ledger = ledger_after_restart(d);
    eprintln!(
        "kill -9: clients received {received} bytes in {} responses; ledger holds {}; lost {} (bound: must hold {must_have})",
        seen.len(),
        ledger.bytes,
        received - ledger.bytes.min(received)
    );
    assert!(must_have > 0);
    assert!(ledger.bytes <= received, "the ledger never holds more than was sent");
    assert!(ledger.bytes >= must_have, "lost more than one commit interval: {} < {must_have}", ledger.bytes);
}

#[test]
fn the_usage_api_serves_over_tls_with_a_billing_token() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let key = setup(d);
    // A CA and a server certificate it signed (rustls refuses a CA certificate as the server's own).
    test_ca(d);
    signed_cert(d, "tls", "localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost");
    let made = run(&["usage", "token"], d);
    let token = String::from_utf8(made.stdout).unwrap().trim().to_string();
    let stderr = String::from_utf8(made.stderr).unwrap();
    let hash = stderr.split('"').find(|s| s.starts_with("blake3:")).unwrap().to_string();
    let mut text = std::fs::read_to_string(d.join("gw.toml")).unwrap();
    text.push_str(&format!(
        "[grpc]\nlisten = \"127.0.0.1:0\"\nbilling_tokens = [\"{hash}\"]\ntls = {{ cert = \"tls.crt\", key = \"tls.key\" }}\n"
    ));
    std::fs::write(d.join("gw.toml"), text).unwrap();
    let srv = Server::start(&d.join("gw.toml"));
    let api = srv.usage_api.clone().unwrap();
    assert!(api.starts_with("https://"), "{api}");
    // Some traffic, so there is something to count (the window is still open).
    let mut s = TcpStream::connect(&srv.addr).unwrap();
    write!(s, "GET /v1/datasets/rel/1.0.0/files/data.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nRange: bytes=0-9\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    assert!(resp.starts_with(b"HTTP/1.1 206"));

    let totals = |api: &str, token: &str, ca: Option<&str>| {
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["usage", "totals", "--api", api, "--tenant", "team-a"]).current_dir(d);
        cmd.env("SHARDGATE_BILLING_TOKEN", token);
        if let Some(ca) = ca {
            cmd.args(["--ca", ca]);
        }
        cmd.output().unwrap()
    };
    let ok_out = totals(&api, &token, Some("ca.crt"));
    assert!(ok_out.status.success(), "{}", String::from_utf8_lossy(&ok_out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&ok_out.stdout).unwrap();
    assert_eq!(v["tenant"], "team-a");
    // A wrong token is refused; plaintext to the TLS port fails.
    let bad = totals(&api, "sgk_wrong", Some("ca.crt"));
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("Unauthenticated"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let plain = totals(&api.replace("https://", "http://"), &token, None);
    assert!(!plain.status.success());
}
