//! Hostile clients against the real listeners: connections that hold a slot
//! and send nothing (raw TCP, a request head cut short, TLS gone quiet after
//! its handshake, HTTP/2 with no streams) must not lock out a client that
//! behaves; the gRPC listener has the same protection.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate::config::{Config, GrpcConfig, TlsConfig};
use shardgate::engine::Engine;
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEADER_READ: Duration = Duration::from_secs(3);
const SLOTS: usize = 6;

/// An HTTP/2 client preface and an empty SETTINGS frame: a connection that
/// speaks HTTP/2 and opens no stream.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[derive(Debug, Clone, Copy)]
enum Idle {
    /// Connects and sends nothing.
    Raw,
    /// Sends half a request head, then nothing.
    HalfHead,
    /// Speaks HTTP/2 (prior knowledge) and opens no stream.
    H2NoStreams,
    /// Completes a TLS handshake, then sends nothing.
    TlsQuiet,
    /// TLS with ALPN h2, the HTTP/2 preface, and no stream.
    TlsH2NoStreams,
}

type Held = Box<dyn AsyncRead + Unpin + Send>;

fn engine_config(tls: Option<&Path>) -> Config {
    let mut cfg = Config::default();
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.server.max_connections = SLOTS;
    cfg.server.header_read_timeout = HEADER_READ;
    cfg.server.idle_timeout = Duration::from_secs(60);
    cfg.server.shutdown_grace = Duration::from_secs(1);
    cfg.server.tls = tls.map(|d| TlsConfig {
        cert: d.join("tls.crt"),
        key: d.join("tls.key"),
        client_ca: None,
        client_auth: Default::default(),
    });
    cfg
}

/// A self-signed certificate for 127.0.0.1 in `d` (`tls.crt`, `tls.key`).
fn self_signed(d: &Path) {
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args([
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .args(["-keyout", "tls.key", "-out", "tls.crt"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
}

fn tls_connector(d: &Path, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(d.join("tls.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// Opens one connection of `kind` and leaves it holding its slot.
async fn hold(kind: Idle, addr: SocketAddr, tls_dir: Option<&Path>) -> Held {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    match kind {
        Idle::Raw => Box::new(tcp),
        Idle::HalfHead => {
            tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
            Box::new(tcp)
        }
        Idle::H2NoStreams => {
            tcp.write_all(H2_PREFACE).await.unwrap();
            Box::new(tcp)
        }
        Idle::TlsQuiet | Idle::TlsH2NoStreams => {
            let h2 = matches!(kind, Idle::TlsH2NoStreams);
            let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
            let connector = tls_connector(tls_dir.unwrap(), alpn);
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let mut s = connector.connect(name, tcp).await.unwrap();
            if h2 {
                assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
                s.write_all(H2_PREFACE).await.unwrap();
                s.flush().await.unwrap();
            }
            Box::new(s)
        }
    }
}

/// Waits until the server closes `conn` (EOF or reset), reading and discarding
/// what it sends (an HTTP/2 SETTINGS or GOAWAY); `None` if it is still open at `limit`.
async fn closed_within(conn: &mut Held, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(t0.elapsed())?;
        match tokio::time::timeout(left, conn.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t0.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

async fn well_behaved_get(base: &str, tls_dir: Option<&Path>) -> (reqwest::StatusCode, Duration) {
    let mut b = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(20));
    if let Some(d) = tls_dir {
        let pem = std::fs::read(d.join("tls.crt")).unwrap();
        b = b.tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()]);
    }
    let client = b.build().unwrap();
    let t0 = Instant::now();
    let r = client.get(format!("{base}/healthz")).send().await.unwrap();
    (r.status(), t0.elapsed())
}

/// Fills every slot with `kind`, then checks that a client that behaves is
/// answered within `header_read_timeout` plus a second, and that the idle
/// connections are closed.
async fn slots_held_by(kind: Idle) {
    shardgate::btfs::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let tls = matches!(kind, Idle::TlsQuiet | Idle::TlsH2NoStreams).then(|| {
        self_signed(dir.path());
        dir.path()
    });
    let engine = Engine::start(engine_config(tls)).await.unwrap();
    let addr = engine.addr();
    let base = format!("{}://{addr}", engine.scheme());
    let mut held = Vec::new();
    for _ in 0..SLOTS {
        held.push(hold(kind, addr, tls).await);
    }
    // Let the server take all of them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, took) = well_behaved_get(&base, tls).await;
    assert_eq!(status, 200, "{kind:?}");
    assert!(
        took <= HEADER_READ + Duration::from_secs(1),
        "{kind:?}: a client that behaves waited {took:?} behind {SLOTS} idle connections"
    );
    // None of the idle connections outlives header_read_timeout by much.
    for (i, c) in held.iter_mut().enumerate() {
        let closed = closed_within(c, HEADER_READ + Duration::from_secs(2)).await;
        assert!(closed.is_some(), "{kind:?}: idle connection {i} is still open");
    }
    engine.stop().await;
}

#[tokio::test]
async fn raw_tcp_connections_that_send_nothing_do_not_lock_out_others() {
    slots_held_by(Idle::Raw).await;
}

#[tokio::test]
async fn half_sent_request_heads_do_not_lock_out_others() {
    slots_held_by(Idle::HalfHead).await;
}

#[tokio::test]
async fn http2_connections_without_streams_do_not_lock_out_others() {
    slots_held_by(Idle::H2NoStreams).await;
}

#[tokio::test]
async fn tls_connections_quiet_after_the_handshake_do_not_lock_out_others() {
    slots_held_by(Idle::TlsQuiet).await;
}

#[tokio::test]
async fn tls_http2_connections_without_streams_do_not_lock_out_others() {
    slots_held_by(Idle::TlsH2NoStreams).await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_its_timer_without_pressure() {
    // Fewer idle connections than slots: nothing presses, so only the timers close them.
    let mut cfg = engine_config(None);
    cfg.server.idle_timeout = Duration::from_secs(2);
    let engine = Engine::start(cfg).await.unwrap();
    let addr = engine.addr();
    let mut never_asked = hold(Idle::Raw, addr, None).await;
    // A keep-alive connection that made one request and then went quiet.
    let mut asked_once = TcpStream::connect(addr).await.unwrap();
    asked_once.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = asked_once.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    let mut asked_once: Held = Box::new(asked_once);

    let t = closed_within(&mut never_asked, Duration::from_secs(10)).await.expect("still open after 10 s");
    assert!(t >= HEADER_READ - Duration::from_millis(500), "closed after {t:?}, before header_read_timeout");
    let t = closed_within(&mut asked_once, Duration::from_secs(10)).await.expect("still open after 10 s");
    assert!(t <= Duration::from_secs(4), "an idle keep-alive connection lived {t:?} past its request");
    let metrics = engine.gateway().metrics().render();
    assert!(
        metrics.contains("shardgate_connections_closed_total{listener=\"http\",reason=\"header_timeout\"} 1"),
        "{metrics}"
    );
    engine.stop().await;
}

#[tokio::test]
async fn a_long_response_is_not_cut_by_the_idle_timer() {
    // A request in flight holds its connection however long it takes.
    let r = Release::pack("slowread", &[("big.bin", bytes_of(3 << 20, 5))], 256 * 1024);
    let mock = shardgate::testing::MockOrigin::start(r.blobs.clone()).await;
    let mut cfg = config_for(&r, &[&mock]);
    cfg.server.idle_timeout = Duration::from_millis(500);
    cfg.server.header_read_timeout = Duration::from_millis(500);
    let g = Served::start(cfg).await;
    let resp = client().get(r.url(&g.base, "big.bin")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut got = Vec::new();
    use futures_util::StreamExt;
    while let Some(b) = stream.next().await {
        got.extend_from_slice(&b.unwrap());
        // Read slowly: the whole body takes well over the idle timeout.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got, r.files["big.bin"]);
}

#[tokio::test]
async fn grpc_connections_that_send_nothing_do_not_lock_out_others() {
    let mut cfg = engine_config(None);
    let token = "grpc-hostile-test-token";
    cfg.grpc = Some(GrpcConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        billing_tokens: vec![format!("blake3:{}", hex::encode(shardgate::tenant::hash_key(token)))],
        admin_tokens: vec![],
        tls: None,
        max_connections: 4,
        header_read_timeout: HEADER_READ,
        idle_timeout: Duration::from_secs(60),
        write_timeout: Duration::from_secs(10),
    });
    let engine = Engine::start(cfg).await.unwrap();
    let (gaddr, _) = engine.grpc().unwrap();
    let mut held = Vec::new();
    for i in 0..4 {
        let kind = if i % 2 == 0 { Idle::Raw } else { Idle::H2NoStreams };
        held.push(hold(kind, gaddr, None).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    let check = async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{gaddr}")).unwrap().connect().await?;
        let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
        let r = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await;
        Ok::<_, Box<dyn std::error::Error>>(r?.into_inner().status)
    };
    let status = tokio::time::timeout(Duration::from_secs(20), check).await.expect("health check hung").unwrap();
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let took = t0.elapsed();
    assert!(took <= HEADER_READ + Duration::from_secs(1), "a gRPC client waited {took:?} behind idle connections");
    for (i, c) in held.iter_mut().enumerate() {
        assert!(closed_within(c, HEADER_READ + Duration::from_secs(2)).await.is_some(), "idle gRPC connection {i}");
    }
    engine.stop().await;
}

#[tokio::test]
async fn an_http2_client_that_never_opens_its_window_is_cut_after_the_write_timeout() {
    // An HTTP/2 client that takes no data never makes a socket write block
    // (it simply grants no flow-control window), so only the listener's own
    // check of bodies waiting on the client can see it.
    let r = Release::pack("stalled", &[("big.bin", bytes_of(4 << 20, 3))], 256 * 1024);
    let mock = shardgate::testing::MockOrigin::start(r.blobs.clone()).await;
    let mut cfg = config_for(&r, &[&mock]);
    cfg.server.write_timeout = Duration::from_secs(1);
    let g = Served::start(cfg).await;
    let h2 = reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().unwrap();
    let resp = h2.get(r.url(&g.base, "big.bin")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    // Hold the response without reading it.
    let t0 = Instant::now();
    let closed = "shardgate_connections_closed_total{listener=\"http\",reason=\"slow_reader\"} 1";
    while !g.gw.metrics().render().contains(closed) {
        assert!(t0.elapsed() < Duration::from_secs(6), "a client that takes nothing still holds its connection");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(t0.elapsed() >= Duration::from_millis(800), "cut before the write timeout: {:?}", t0.elapsed());
    drop(resp);
    // A client that reads is not cut, however long its body takes.
    let resp = h2.get(r.url(&g.base, "big.bin")).send().await.unwrap();
    let mut stream = resp.bytes_stream();
    let mut got = 0usize;
    use futures_util::StreamExt;
    while let Some(b) = stream.next().await {
        got += b.unwrap().len();
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(got, 4 << 20);
}

/// The S3 listener (`s3.listen`) is the same accept loop: half-sent heads
/// do not lock out an S3 client that behaves, are closed after
/// `header_read_timeout`, and an oversized head is refused.
#[tokio::test]
async fn the_s3_listener_holds_up_against_half_sent_heads_and_oversized_input() {
    shardgate::btfs::install_crypto_provider();
    let mut cfg = engine_config(None);
    cfg.s3.listen = Some("127.0.0.1:0".parse().unwrap());
    let engine = Engine::start(cfg).await.unwrap();
    let addr = engine.s3_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..SLOTS {
        held.push(hold(Idle::HalfHead, addr, None).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(20)).build().unwrap();
    let t0 = Instant::now();
    let r = client.get(format!("http://{addr}/")).send().await.unwrap();
    assert_eq!(r.status(), 200, "ListBuckets at the S3 listener's root");
    assert!(r.text().await.unwrap().contains("<ListAllMyBucketsResult"));
    assert!(t0.elapsed() <= HEADER_READ + Duration::from_secs(1), "waited {:?}", t0.elapsed());
    for (i, c) in held.iter_mut().enumerate() {
        assert!(closed_within(c, HEADER_READ + Duration::from_secs(2)).await.is_some(), "connection {i} still open");
    }
    let huge = "a".repeat(200_000);
    let r = client.get(format!("http://{addr}/bucket?prefix={huge}")).send().await;
    assert!(r.map(|r| r.status().is_client_error()).unwrap_or(true), "an oversized head must be refused");
    engine.stop().await;
}
