//! `shardgate serve` as a process: signals, reload, bad config, hostile requests.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

fn get(url: &str) -> (u16, Vec<u8>) {
    let out = Command::new("curl").args(["-s", "-o", "-", "-w", "\n%{http_code}", url]).output().unwrap();
    let mut body = out.stdout;
    let pos = body.iter().rposition(|&b| b == b'\n').unwrap();
    let code = String::from_utf8_lossy(&body[pos + 1..]).parse().unwrap_or(0);
    body.truncate(pos);
    (code, body)
}

const BIG: usize = 48 << 20;

/// Two releases, A and B, packed with the same key; config serving `which`.
fn setup(d: &Path) {
    keygen(d);
    for name in ["rel-a", "rel-b"] {
        let src = d.join(format!("src-{name}"));
        std::fs::create_dir_all(&src).unwrap();
        // rel-a is large enough that a response outlives the kernel's socket buffers.
        let size = if name == "rel-a" { BIG } else { 3_000_000 };
        std::fs::write(src.join("data.bin"), vec![name.len() as u8; size]).unwrap();
        ok(&["pack", src.to_str().unwrap(), "--name", name, "--version", "1.0.0", "--key", "key", "--out", name], d);
    }
}

fn write_config(d: &Path, releases: &[&str], extra: &str) {
    let mut text =
        String::from("[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"10s\"\n[trust]\nkeys = [\"key.pub\"]\n");
    for r in releases {
        text.push_str(&format!("[[releases]]\nmanifest = \"{r}/manifest.json\"\n"));
    }
    text.push_str("[[origins]]\nkind = \"dir\"\npath = \".\"\n");
    text.push_str(extra);
    std::fs::write(d.join("gw.toml"), text).unwrap();
}

#[test]
fn sighup_reloads_releases_and_keeps_the_old_config_when_the_new_one_is_bad() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    write_config(d, &["rel-a"], "");
    let srv = Server::start(&d.join("gw.toml"));
    assert_eq!(get(&format!("{}/v1/datasets/rel-a/1.0.0/files/data.bin", srv.base)).0, 200);
    assert_eq!(get(&format!("{}/v1/datasets/rel-b/1.0.0/files/data.bin", srv.base)).0, 404);

    write_config(d, &["rel-a", "rel-b"], "");
    srv.signal("HUP");
    let t0 = Instant::now();
    while get(&format!("{}/v1/datasets/rel-b/1.0.0/files/data.bin", srv.base)).0 != 200 {
        assert!(t0.elapsed() < Duration::from_secs(10), "reload did not add rel-b: {}", srv.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    // A broken config is refused; both releases keep serving.
    std::fs::write(d.join("gw.toml"), "[server]\nlisten = 12\n").unwrap();
    srv.signal("HUP");
    let t0 = Instant::now();
    while !srv.logs().contains("reload refused") {
        assert!(t0.elapsed() < Duration::from_secs(10), "no refusal logged: {}", srv.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(&format!("{}/v1/datasets/rel-a/1.0.0/files/data.bin", srv.base)).0, 200);
    assert_eq!(get(&format!("{}/v1/datasets/rel-b/1.0.0/files/data.bin", srv.base)).0, 200);
}

#[test]
fn sigterm_drains_an_in_flight_response_then_exits_cleanly() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    write_config(d, &["rel-a"], "");
    let mut srv = Server::start(&d.join("gw.toml"));
    // A slow reader: request the file, read a little, then signal.
    let mut s = TcpStream::connect(&srv.addr).unwrap();
    write!(s, "GET /v1/datasets/rel-a/1.0.0/files/data.bin HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut first = [0u8; 4096];
    let n = s.read(&mut first).unwrap();
    assert!(n > 0);
    srv.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    // New connections are refused while the old response drains.
    assert!(
        TcpStream::connect_timeout(&srv.addr.parse().unwrap(), Duration::from_secs(1)).is_err(),
        "still accepting after SIGTERM"
    );
    let mut rest = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => rest.extend_from_slice(&buf[..n]),
            Err(e) => panic!("drain cut the response: {e}"),
        }
        // The server closes after the response completes (connection: close on shutdown) or keeps it; stop at full length.
        let total = n_body(&first[..n], &rest);
        if total >= BIG {
            break;
        }
    }
    assert_eq!(n_body(&first[..n], &rest), BIG, "the in-flight response was not completed");
    assert!(rest.iter().all(|&b| b == 5), "drained bytes differ from the release");
    drop(s);
    assert_eq!(srv.wait_exit(Duration::from_secs(15)), Some(0), "{}", srv.logs());
}

/// Body bytes received so far, given the first read (with headers) and the rest.
fn n_body(first: &[u8], rest: &[u8]) -> usize {
    let head_end = first.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4).unwrap_or(first.len());
    first.len() - head_end + rest.len()
}

#[test]
fn a_bad_config_exits_64_with_one_line_naming_the_key() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("bad.toml"), "[hot_tier]\ncapacity = \"lots\"\n").unwrap();
    let out = run(&["serve", "--config", "bad.toml"], t.path());
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("hot_tier.capacity"), "{stderr}");
    assert_eq!(stderr.lines().filter(|l| l.starts_with("error:")).count(), 1, "{stderr}");
}

#[test]
fn config_numbers_that_once_panicked_exit_64_naming_the_key() {
    let t = tempfile::tempdir().unwrap();
    let cases = [
        ("[access.anonymous]\nrequest_rate = 1e-20\n", "request_rate"),
        ("[access.anonymous]\nrequest_rate = 1e300\n", "request_rate"),
        ("[server]\nmax_connections = 18446744073709551615\n", "server.max_connections"),
        ("[server]\nheader_read_timeout = \"1000000000y\"\n", "server.header_read_timeout"),
        ("[usage]\nretention = \"1000000000y\"\n", "usage.retention"),
        ("[fetch]\nstall_timeout = \"0s\"\n", "fetch.stall_timeout"),
    ];
    for (text, key) in cases {
        std::fs::write(t.path().join("bad.toml"), text).unwrap();
        let out = run(&["serve", "--config", "bad.toml"], t.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{text}: {stderr}");
        assert!(stderr.contains(key), "{text}: {stderr}");
        assert!(!stderr.contains("panicked"), "{text}: {stderr}");
    }
}

#[test]
fn a_failing_store_exits_1_not_64_and_names_the_store() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // Not redb files: the stores cannot be opened. That is a broken disk or
    // file, not a bad config, so the exit status is 1, not 64.
    std::fs::write(d.join("ledger.redb"), vec![0xa5u8; 8192]).unwrap();
    std::fs::write(d.join("registry.redb"), vec![0x5au8; 8192]).unwrap();
    std::fs::write(d.join("tier-is-a-file"), b"x").unwrap();
    for (extra, names) in [
        ("[usage]\nledger = \"ledger.redb\"\n", "usage ledger"),
        ("[registry]\npath = \"registry.redb\"\n", "release registry"),
        ("[disk_tier]\npath = \"tier-is-a-file\"\n", "tier-is-a-file"),
    ] {
        std::fs::write(d.join("gw.toml"), format!("[server]\nlisten = \"127.0.0.1:0\"\n{extra}")).unwrap();
        let out = run(&["serve", "--config", "gw.toml"], d);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra}: {stderr}");
        assert!(stderr.contains(names), "{extra}: {stderr}");
    }
}

#[test]
fn the_reloader_survives_a_config_that_once_panicked_and_applies_the_next_good_one() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    write_config(d, &["rel-a"], "");
    let srv = Server::start(&d.join("gw.toml"));
    assert_eq!(get(&format!("{}/v1/datasets/rel-a/1.0.0/files/data.bin", srv.base)).0, 200);
    // This value used to panic the reload task; every later SIGHUP was then ignored.
    write_config(d, &["rel-a", "rel-b"], "[access.anonymous]\nrequest_rate = 1e-20\n");
    srv.signal("HUP");
    let t0 = Instant::now();
    while !srv.logs().contains("reload refused") {
        assert!(t0.elapsed() < Duration::from_secs(10), "no refusal logged: {}", srv.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(srv.logs().contains("request_rate"), "{}", srv.logs());
    assert!(!srv.logs().contains("panicked"), "{}", srv.logs());
    assert_eq!(get(&format!("{}/v1/datasets/rel-b/1.0.0/files/data.bin", srv.base)).0, 404);
    // The next good config is applied: the reloader is alive.
    write_config(d, &["rel-a", "rel-b"], "");
    srv.signal("HUP");
    let t0 = Instant::now();
    while get(&format!("{}/v1/datasets/rel-b/1.0.0/files/data.bin", srv.base)).0 != 200 {
        assert!(t0.elapsed() < Duration::from_secs(10), "the reloader is gone: {}", srv.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_untrusted_release_is_refused_at_load_with_a_reason() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    ok(&["keygen", "--out", "other"], d);
    write_config(d, &["rel-a"], "");
    let text = std::fs::read_to_string(d.join("gw.toml")).unwrap().replace("key.pub", "other.pub");
    std::fs::write(d.join("gw.toml"), text).unwrap();
    let srv = Server::start(&d.join("gw.toml"));
    assert_eq!(get(&format!("{}/v1/datasets/rel-a/1.0.0/files/data.bin", srv.base)).0, 404);
    let t0 = Instant::now();
    while !srv.logs().contains("not a trusted key") {
        assert!(t0.elapsed() < Duration::from_secs(5), "{}", srv.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn raw(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn malformed_and_hostile_requests_get_4xx_and_the_server_stays_up() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    write_config(d, &["rel-a"], "");
    let mut srv = Server::start(&d.join("gw.toml"));
    let a = srv.addr.clone();
    let status = |r: &str| r.split(' ').nth(1).unwrap_or("").to_string();
    assert_eq!(
        status(&raw(
            &a,
            b"GET /v1/datasets/rel-a/1.0.0/files/../../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )),
        "400"
    );
    assert_eq!(status(&raw(&a, b"GET /v1/datasets/rel-a/1.0.0/files/%2e%2e%2f%2e%2e%2fgw.toml HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")), "400");
    assert_eq!(status(&raw(&a, b"GET /v1/blobs/zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")), "400");
    assert_eq!(
        status(&raw(
            &a,
            b"DELETE /v1/datasets/rel-a/1.0.0/files/data.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )),
        "405"
    );
    assert_eq!(status(&raw(&a, b"GARBAGE\r\n\r\n")), "400");
    let huge = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024));
    let r = raw(&a, huge.as_bytes());
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 431") || r.starts_with("HTTP/1.1 400"), "{r}");
    let r = raw(&a, b"GET /v1/datasets/rel-a/1.0.0/files/data.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1,2-3,4-5,6-7,8-9,10-11,12-13,14-15,16-17,18-19,20-21,22-23,24-25,26-27,28-29,30-31,32-33,34-35,36-37,38-39,40-41,42-43,44-45,46-47,48-49,50-51,52-53,54-55,56-57,58-59,60-61,62-63,64-65,66-67,68-69,70-71,72-73,74-75,76-77,78-79,80-81,82-83,84-85,86-87,88-89,90-91,92-93,94-95,96-97,98-99,100-101,102-103,104-105,106-107,108-109,110-111,112-113,114-115,116-117,118-119,120-121,122-123,124-125,126-127,128-129\r\nConnection: close\r\n\r\n");
    assert_eq!(status(&r), "416", "{}", &r[..r.len().min(300)]);
    // Still serving after all of that.
    assert_eq!(get(&format!("{}/healthz", srv.base)).0, 200);
    assert!(srv.child.try_wait().unwrap().is_none(), "server exited");
    assert!(!srv.logs().contains("panicked"), "{}", srv.logs());
}

#[test]
fn tls_with_http2_serves_verified_ranges() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    let keygen_out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .args(["-keyout", "tls.key", "-out", "tls.crt"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(keygen_out.status.success(), "{}", String::from_utf8_lossy(&keygen_out.stderr));
    write_config(d, &["rel-b"], "");
    let text = std::fs::read_to_string(d.join("gw.toml"))
        .unwrap()
        .replace("[trust]", "[server.tls]\ncert = \"tls.crt\"\nkey = \"tls.key\"\n[trust]");
    std::fs::write(d.join("gw.toml"), text).unwrap();
    let srv = Server::start(&d.join("gw.toml"));
    assert!(srv.base.starts_with("https://"), "{}", srv.base);
    let out = Command::new("curl")
        .args(["-s", "--http2", "--cacert", "tls.crt", "-r", "1000-1999", "-D", "-", "-o", "body.bin"])
        .arg(format!("{}/v1/datasets/rel-b/1.0.0/files/data.bin", srv.base))
        .current_dir(d)
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout);
    assert!(head.starts_with("HTTP/2 206"), "{head}");
    assert!(head.contains("content-range: bytes 1000-1999/3000000"), "{head}");
    assert_eq!(std::fs::read(d.join("body.bin")).unwrap(), vec![5u8; 1000]);
}

#[test]
fn a_client_certificate_names_the_tenant_over_mtls() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    let ec = EC_KEY;
    test_ca(d);
    signed_cert(d, "srv", "localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost");
    signed_cert(d, "cli", "vision-loader", "extendedKeyUsage=clientAuth");
    // A certificate from another CA with the same name must not be accepted.
    openssl(
        d,
        &[
            &["req", "-x509"][..],
            &ec,
            &["-days", "2", "-subj", "/CN=vision-loader", "-keyout", "rogue.key", "-out", "rogue.crt"],
        ]
        .concat(),
    );

    write_config(
        d,
        &["rel-b"],
        "[[tenants]]\nid = \"vision\"\ndatasets = [\"rel-*\"]\ncert_names = [\"vision-loader\"]\n",
    );
    let text = std::fs::read_to_string(d.join("gw.toml"))
        .unwrap()
        .replace("[trust]", "[server.tls]\ncert = \"srv.crt\"\nkey = \"srv.key\"\nclient_ca = \"ca.crt\"\n[trust]");
    std::fs::write(d.join("gw.toml"), text).unwrap();
    let srv = Server::start(&d.join("gw.toml"));
    let url = format!("{}/v1/datasets/rel-b/1.0.0/files/data.bin", srv.base);
    let status = |extra: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", "ca.crt", "-r", "0-9"])
            .args(extra)
            .arg(&url)
            .current_dir(d)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(status(&[]), "401", "no certificate, no key");
    assert_eq!(status(&["--cert", "cli.crt", "--key", "cli.key"]), "206", "{}", srv.logs());
    let rogue = status(&["--cert", "rogue.crt", "--key", "rogue.key"]);
    assert!(rogue == "000" || rogue == "401", "a certificate from an untrusted CA was accepted: {rogue}");
}

/// A document that marks itself when its script runs.
const SVG_WITH_SCRIPT: &str = r#"<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><script>document.documentElement.setAttribute('data-owned', 'pwned-' + document.domain)</script></svg>"#;
const XHTML_WITH_SCRIPT: &str = r#"<html xmlns="http://www.w3.org/1999/xhtml"><body><script>document.documentElement.setAttribute('data-owned', 'pwned-' + document.domain)</script></body></html>"#;

#[test]
fn dataset_files_never_run_script_in_a_browser() {
    let Some(chrome_bin) = chromium() else {
        eprintln!("skipped: chromium is not installed");
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    keygen(d);
    let src = d.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("evil.svg"), SVG_WITH_SCRIPT).unwrap();
    std::fs::write(src.join("evil.xhtml"), XHTML_WITH_SCRIPT).unwrap();
    std::fs::write(src.join("evil.xml"), XHTML_WITH_SCRIPT).unwrap();
    ok(&["pack", "src", "--name", "evil", "--version", "1.0.0", "--key", "key", "--out", "evil"], d);
    write_config(d, &["evil"], "");
    let srv = Server::start(&d.join("gw.toml"));

    // The control: the same SVG from a plain file server runs its script, so
    // the check below can see a script that runs.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut plain = Command::new("python3")
        .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1"])
        .current_dir(&src)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let control = format!("http://127.0.0.1:{port}/evil.svg");
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(10), "the control file server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let profile = tempfile::tempdir().unwrap();
    let dom = String::from_utf8_lossy(&chrome(&chrome_bin, profile.path(), &["--dump-dom"], &control)).into_owned();
    let _ = plain.kill();
    let _ = plain.wait();
    assert!(
        dom.contains("data-owned=\"pwned-127.0.0.1\""),
        "the control's script did not run, so this test cannot see one: {dom}"
    );

    for file in ["evil.svg", "evil.xhtml", "evil.xml"] {
        let url = format!("{}/v1/datasets/evil/1.0.0/files/{file}", srv.base);
        let head = Command::new("curl").args(["-s", "-D", "-", "-o", "/dev/null", &url]).output().unwrap();
        let head = String::from_utf8_lossy(&head.stdout).to_ascii_lowercase();
        // pack labels what it can recognise as inert (text/plain); the gateway
        // sends any type a browser would run (the manifest says image/svg+xml
        // for the SVG) as an opaque attachment.
        let inert = ["content-type: application/octet-stream", "content-type: text/plain"];
        assert!(inert.iter().any(|t| head.contains(t)), "{file}: {head}");
        if file == "evil.svg" {
            assert_eq!(manifest(&d.join("evil"))["files"][0]["media_type"], "image/svg+xml");
            assert!(head.contains("content-disposition: attachment"), "{file}: {head}");
        }
        assert!(head.contains("content-security-policy: sandbox"), "{file}: {head}");
        assert!(head.contains("x-content-type-options: nosniff"), "{file}: {head}");
        // An attachment renders no document, so Chromium may never finish:
        // then nothing ran. A document that ran the script would be dumped.
        let profile = tempfile::tempdir().unwrap();
        let limit = Duration::from_secs(8);
        if let Some(dom) = chrome_within(&chrome_bin, profile.path(), &["--dump-dom"], &url, limit) {
            let dom = String::from_utf8_lossy(&dom);
            assert!(
                !dom.contains("data-owned=\"pwned"),
                "{file}: a script in dataset bytes ran on the gateway's origin: {dom}"
            );
        }
    }
}
