//! Release lifecycle through the admin gRPC API and real HTTP: admin tokens,
//! immutable registration, tags, deprecation headers, takedown with 451 and
//! hot-tier purge, pre-warming, and a registry that survives a restart.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use shardgate::config::GrpcConfig;
use shardgate::lifecycle::proto::admin_service_client::AdminServiceClient;
use shardgate::lifecycle::proto::{self, register_release_request};
use shardgate::release::keys::PublisherKey;
use shardgate::testing::MockOrigin;
use support::*;
use tonic::transport::Channel;

const CHUNK: u64 = 64 * 1024;
const ADMIN: &str = "admin-secret";
const BILLING: &str = "billing-secret";

struct Fixture {
    g: Served,
    r1: Release,
    r2: Release,
    registry: tempfile::TempDir,
    cfg: shardgate::config::Config,
    grpc: std::net::SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn hash_line(token: &str) -> String {
    format!("blake3:{}", hex::encode(shardgate::tenant::hash_key(token)))
}

async fn start_grpc(g: &Served) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = GrpcConfig {
        billing_tokens: vec![hash_line(BILLING)],
        admin_tokens: vec![hash_line(ADMIN)],
        ..GrpcConfig::new(addr)
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let gw = g.gw.clone();
    tokio::spawn(async move {
        shardgate::grpc::serve(gw, &cfg, listener, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    (addr, tx)
}

/// 1.0.0 from config; 2.0.0 (same signer) to register. Both hold `common.bin`.
async fn fixture() -> Fixture {
    let common = bytes_of(300_000, 9);
    let r1 = Release::pack_with(
        "lc-data",
        "1.0.0",
        &[("a.bin", bytes_of(700_000, 1)), ("common.bin", common.clone())],
        CHUNK,
        PublisherKey::generate().unwrap(),
    );
    let r2 = Release::pack_with(
        "lc-data",
        "2.0.0",
        &[("a.bin", bytes_of(650_000, 2)), ("common.bin", common)],
        CHUNK,
        r1.key_copy(),
    );
    let mut blobs = r1.blobs.clone();
    blobs.extend(r2.blobs.clone());
    let mock = MockOrigin::start(blobs).await;
    let registry = tempfile::tempdir().unwrap();
    let mut cfg = config_for(&r1, &[&mock]);
    cfg.registry.path = Some(registry.path().join("registry.redb"));
    // The mock lives as long as the test process: leak it into the config's lifetime.
    std::mem::forget(mock);
    let g = Served::start(cfg.clone()).await;
    let (grpc, stop) = start_grpc(&g).await;
    Fixture { g, r1, r2, registry, cfg, grpc, _stop: stop }
}

async fn admin(addr: std::net::SocketAddr) -> AdminServiceClient<Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    AdminServiceClient::new(ch)
}

fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

async fn json_of(r: reqwest::Response) -> serde_json::Value {
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

fn maybe_authed<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    match token {
        Some(t) => authed(msg, t),
        None => tonic::Request::new(msg),
    }
}

fn register_req(r: &Release) -> proto::RegisterReleaseRequest {
    proto::RegisterReleaseRequest {
        manifest: Some(register_release_request::Manifest::ManifestBytes(
            std::fs::read(r.out.join("manifest.json")).unwrap(),
        )),
        placement: Some(register_release_request::Placement::PlacementBytes(
            std::fs::read(r.out.join("placement.json")).unwrap(),
        )),
    }
}

async fn register(addr: std::net::SocketAddr, r: &Release) -> proto::RegisterReleaseResponse {
    admin(addr).await.register_release(authed(register_req(r), ADMIN)).await.unwrap().into_inner()
}

async fn set_tag(addr: std::net::SocketAddr, tag: &str, version: &str) -> Result<String, tonic::Status> {
    let req = proto::SetTagRequest { name: "lc-data".into(), tag: tag.into(), version: version.into() };
    admin(addr).await.set_tag(authed(req, ADMIN)).await.map(|r| r.into_inner().previous_version)
}

#[tokio::test]
async fn every_admin_call_needs_the_admin_token() {
    let f = fixture().await;
    let mut c = admin(f.grpc).await;
    for token in [None, Some(BILLING), Some("wrong")] {
        let codes = [
            c.register_release(maybe_authed(register_req(&f.r2), token)).await.map(|_| ()).unwrap_err().code(),
            c.set_tag(maybe_authed(
                proto::SetTagRequest { name: "lc-data".into(), tag: "x".into(), version: "1.0.0".into() },
                token,
            ))
            .await
            .map(|_| ())
            .unwrap_err()
            .code(),
            c.deprecate(maybe_authed(
                proto::DeprecateRequest { name: "lc-data".into(), version: "1.0.0".into(), ..Default::default() },
                token,
            ))
            .await
            .map(|_| ())
            .unwrap_err()
            .code(),
            c.takedown(maybe_authed(
                proto::TakedownRequest { name: "lc-data".into(), version: "1.0.0".into(), reason: "x".into() },
                token,
            ))
            .await
            .map(|_| ())
            .unwrap_err()
            .code(),
            c.prewarm(maybe_authed(
                proto::PrewarmRequest { name: "lc-data".into(), version: "1.0.0".into(), files: vec![] },
                token,
            ))
            .await
            .map(|_| ())
            .unwrap_err()
            .code(),
            c.list_releases(maybe_authed(proto::ListReleasesRequest { name: None }, token))
                .await
                .map(|_| ())
                .unwrap_err()
                .code(),
        ];
        assert!(codes.iter().all(|c| *c == tonic::Code::Unauthenticated), "{token:?}: {codes:?}");
    }
    // Nothing changed: 2.0.0 is not served, no tag exists.
    assert_eq!(client().get(f.r2.url(&f.g.base, "a.bin")).send().await.unwrap().status(), 404);
    let list = c.list_releases(authed(proto::ListReleasesRequest { name: None }, ADMIN)).await.unwrap().into_inner();
    assert_eq!(list.releases.len(), 1);
    assert!(list.releases[0].tags.is_empty());
}

#[tokio::test]
async fn registration_is_immutable_idempotent_and_trusted_only() {
    let f = fixture().await;
    let first = register(f.grpc, &f.r2).await;
    assert_eq!((first.name.as_str(), first.version.as_str(), first.already_registered), ("lc-data", "2.0.0", false));
    assert_eq!(first.release_id, f.r2.signed.id.to_hex());
    let again = register(f.grpc, &f.r2).await;
    assert!(again.already_registered);
    let r = client().get(f.r2.url(&f.g.base, "a.bin")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), f.r2.files["a.bin"]);

    // Same name and version, different bytes, same trusted signer: refused, naming both releases.
    let impostor = Release::pack_with("lc-data", "2.0.0", &[("a.bin", bytes_of(10, 5))], CHUNK, f.r1.key_copy());
    let e = admin(f.grpc).await.register_release(authed(register_req(&impostor), ADMIN)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e}");
    assert!(
        e.message().contains(&f.r2.signed.id.to_hex()) && e.message().contains(&impostor.signed.id.to_hex()),
        "{e}"
    );
    // The config release's version is just as immutable.
    let impostor1 = Release::pack_with("lc-data", "1.0.0", &[("a.bin", bytes_of(10, 6))], CHUNK, f.r1.key_copy());
    let e = admin(f.grpc).await.register_release(authed(register_req(&impostor1), ADMIN)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e}");

    // A signer the gateway does not trust.
    let stranger = Release::pack("lc-other", &[("x.bin", bytes_of(10, 7))], CHUNK);
    let e = admin(f.grpc).await.register_release(authed(register_req(&stranger), ADMIN)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("not a trusted key"), "{e}");
    // Garbage is a clear INVALID_ARGUMENT.
    let junk = proto::RegisterReleaseRequest {
        manifest: Some(register_release_request::Manifest::ManifestBytes(b"{not json".to_vec())),
        placement: None,
    };
    let e = admin(f.grpc).await.register_release(authed(junk, ADMIN)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
}

#[tokio::test]
async fn tags_resolve_to_versions_and_move() {
    let f = fixture().await;
    register(f.grpc, &f.r2).await;
    assert_eq!(set_tag(f.grpc, "latest", "1.0.0").await.unwrap(), "");
    let url = format!("{}/v1/datasets/lc-data/latest/files/a.bin", f.g.base);
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-location"], "/v1/datasets/lc-data/1.0.0/files/a.bin");
    assert_eq!(r.headers()["cache-control"], "public, max-age=60");
    let etag1 = r.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(etag1, format!("\"{}\"", f.r1.signed.manifest.files[0].blake3));
    assert_eq!(r.bytes().await.unwrap().to_vec(), f.r1.files["a.bin"]);
    // The version URL stays immutable.
    let r = client().get(f.r1.url(&f.g.base, "a.bin")).send().await.unwrap();
    assert_eq!(r.headers()["cache-control"], "public, max-age=31536000, immutable");
    assert!(r.headers().get("content-location").is_none());

    // Move the tag.
    assert_eq!(set_tag(f.grpc, "latest", "2.0.0").await.unwrap(), "1.0.0");
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.headers()["content-location"], "/v1/datasets/lc-data/2.0.0/files/a.bin");
    assert_ne!(r.headers()["etag"].to_str().unwrap(), etag1);
    assert_eq!(r.bytes().await.unwrap().to_vec(), f.r2.files["a.bin"]);
    let m = client().get(format!("{}/v1/datasets/lc-data/latest/manifest", f.g.base)).send().await.unwrap();
    assert_eq!(m.headers()["content-location"], "/v1/datasets/lc-data/2.0.0/manifest");

    // A tag is never a version; unknown tags and versions are answered plainly.
    let e = set_tag(f.grpc, "3.0.0", "2.0.0").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert_eq!(set_tag(f.grpc, "stable", "9.9.9").await.unwrap_err().code(), tonic::Code::NotFound);
    let r = client().get(format!("{}/v1/datasets/lc-data/nightly/files/a.bin", f.g.base)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // The dataset listing shows tags.
    let v = json_of(client().get(format!("{}/v1/datasets/lc-data", f.g.base)).send().await.unwrap()).await;
    assert_eq!(v["tags"]["latest"], "2.0.0");
}

#[tokio::test]
async fn deprecated_releases_say_so_in_headers() {
    let f = fixture().await;
    register(f.grpc, &f.r2).await;
    let sunset = 1_800_000_000; // 2027-01-15T08:00:00Z
    let req = proto::DeprecateRequest {
        name: "lc-data".into(),
        version: "1.0.0".into(),
        successor_version: "2.0.0".into(),
        sunset,
        reason: "labels fixed in 2.0.0".into(),
    };
    admin(f.grpc).await.deprecate(authed(req, ADMIN)).await.unwrap();
    let r = client().get(f.r1.url(&f.g.base, "a.bin")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let dep = r.headers()["deprecation"].to_str().unwrap();
    assert!(dep.starts_with('@') && dep[1..].parse::<i64>().is_ok(), "{dep}");
    assert_eq!(r.headers()["sunset"], "Fri, 15 Jan 2027 08:00:00 GMT");
    assert_eq!(r.headers()["link"], "</v1/datasets/lc-data/2.0.0>; rel=\"successor-version\"");
    assert_eq!(r.bytes().await.unwrap().to_vec(), f.r1.files["a.bin"], "still served");
    // The successor carries none of it.
    let r = client().get(f.r2.url(&f.g.base, "a.bin")).send().await.unwrap();
    assert!(r.headers().get("deprecation").is_none());
    let v = json_of(client().get(format!("{}/v1/datasets/lc-data", f.g.base)).send().await.unwrap()).await;
    let v1 = v["versions"].as_array().unwrap().iter().find(|x| x["version"] == "1.0.0").unwrap();
    assert_eq!(v1["state"], "deprecated");
    assert_eq!(v1["deprecation"]["successor"], "2.0.0");
    // A successor must be served, and not the release itself.
    let bad = proto::DeprecateRequest {
        name: "lc-data".into(),
        version: "1.0.0".into(),
        successor_version: "1.0.0".into(),
        ..Default::default()
    };
    assert_eq!(
        admin(f.grpc).await.deprecate(authed(bad, ADMIN)).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
}

#[tokio::test]
async fn takedown_answers_451_and_purges_what_no_live_release_uses() {
    let f = fixture().await;
    register(f.grpc, &f.r2).await;
    // Warm every file of both releases.
    for (r, p) in [(&f.r1, "a.bin"), (&f.r1, "common.bin"), (&f.r2, "a.bin")] {
        assert_eq!(
            client().get(r.url(&f.g.base, p)).send().await.unwrap().bytes().await.unwrap().len(),
            r.files[p].len()
        );
    }
    let before = f.g.gw.fetcher().hot().weighted_bytes();
    let req =
        proto::TakedownRequest { name: "lc-data".into(), version: "1.0.0".into(), reason: "licence withdrawn".into() };
    let purged = admin(f.grpc).await.takedown(authed(req, ADMIN)).await.unwrap().into_inner().purged_files;
    assert_eq!(purged, 1, "a.bin of 1.0.0 only: common.bin is still used by 2.0.0");
    let after = f.g.gw.fetcher().hot().weighted_bytes();
    assert_eq!(before - after, 700_000, "exactly 1.0.0's a.bin left the hot tier");
    assert_eq!(f.g.metric("shardgate_hot_tier_purged_files_total"), 1.0);

    let r = client().get(f.r1.url(&f.g.base, "a.bin")).send().await.unwrap();
    assert_eq!(r.status(), 451);
    let v = json_of(r).await;
    assert_eq!(v["reason"], "licence withdrawn");
    assert_eq!(
        client().get(format!("{}/v1/datasets/lc-data/1.0.0/manifest", f.g.base)).send().await.unwrap().status(),
        451
    );
    let blob = |h: &shardgate::release::manifest::Blake3| format!("{}/v1/blobs/{h}", f.g.base);
    let a1 = f.r1.signed.manifest.files.iter().find(|x| x.path == "a.bin").unwrap().blake3;
    let common = f.r1.signed.manifest.files.iter().find(|x| x.path == "common.bin").unwrap().blake3;
    assert_eq!(client().get(blob(&a1)).send().await.unwrap().status(), 451);
    assert_eq!(client().get(blob(&common)).send().await.unwrap().status(), 200, "still live in 2.0.0");
    assert_eq!(client().get(f.r2.url(&f.g.base, "common.bin")).send().await.unwrap().status(), 200);
    // It cannot be tagged any more; listings show the state.
    assert_eq!(set_tag(f.grpc, "old", "1.0.0").await.unwrap_err().code(), tonic::Code::FailedPrecondition);
    let list = admin(f.grpc)
        .await
        .list_releases(authed(proto::ListReleasesRequest { name: Some("lc-data".into()) }, ADMIN))
        .await
        .unwrap()
        .into_inner();
    let one = list.releases.iter().find(|r| r.version == "1.0.0").unwrap();
    assert_eq!(one.state, proto::State::TakenDown as i32);
    assert_eq!(one.reason, "licence withdrawn");
    assert_eq!(one.origin, "config");
    assert_eq!(list.releases.iter().find(|r| r.version == "2.0.0").unwrap().origin, "registry");
}

#[tokio::test]
async fn prewarm_loads_a_release_into_the_hot_tier_with_progress() {
    let f = fixture().await;
    register(f.grpc, &f.r2).await;
    let req = proto::PrewarmRequest { name: "lc-data".into(), version: "2.0.0".into(), files: vec![] };
    let mut s = admin(f.grpc).await.prewarm(authed(req, ADMIN)).await.unwrap().into_inner();
    let mut last = None;
    let mut updates = 0;
    while let Some(p) = tokio::time::timeout(Duration::from_secs(20), s.message()).await.unwrap().unwrap() {
        updates += 1;
        last = Some(p);
    }
    let last = last.unwrap();
    assert!(updates >= 2, "progress comes in steps");
    assert_eq!(last.chunks_done, last.chunks_total);
    assert_eq!(last.bytes_done, 950_000);
    assert_eq!(last.bytes_total, 950_000);
    let r = client().get(f.r2.url(&f.g.base, "a.bin")).send().await.unwrap();
    assert_eq!(r.headers()["x-shardgate-cache"], "hit");
    // A file that is not in the release.
    let bad = proto::PrewarmRequest { name: "lc-data".into(), version: "2.0.0".into(), files: vec!["nope".into()] };
    assert_eq!(admin(f.grpc).await.prewarm(authed(bad, ADMIN)).await.unwrap_err().code(), tonic::Code::NotFound);
}

/// A new gateway on the same config, once the old engine has let go of the
/// registry file (when its last task ends).
async fn restart(cfg: &shardgate::config::Config) -> Served {
    let t0 = std::time::Instant::now();
    loop {
        match shardgate::gateway::Gateway::start(cfg.clone()).await {
            Ok(gw) => {
                drop(gw);
                return Served::start(cfg.clone()).await;
            }
            Err(e) => {
                assert!(t0.elapsed() < Duration::from_secs(10), "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test]
async fn the_registry_survives_a_restart() {
    let f = fixture().await;
    register(f.grpc, &f.r2).await;
    set_tag(f.grpc, "stable", "2.0.0").await.unwrap();
    let req = proto::DeprecateRequest {
        name: "lc-data".into(),
        version: "1.0.0".into(),
        successor_version: "2.0.0".into(),
        reason: "old".into(),
        ..Default::default()
    };
    admin(f.grpc).await.deprecate(authed(req, ADMIN)).await.unwrap();
    let Fixture { g, r1, r2, registry, cfg, _stop, .. } = f;
    g.gw.shutdown().await;
    g.shutdown().await;
    drop(_stop);
    // The same config, a new gateway: registered release, tag and state are back.
    // (The old engine lets go of the registry file once its last task ends.)
    let g = restart(&cfg).await;
    let r = client().get(format!("{}/v1/datasets/lc-data/stable/files/a.bin", g.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-location"], "/v1/datasets/lc-data/2.0.0/files/a.bin");
    assert_eq!(r.bytes().await.unwrap().to_vec(), r2.files["a.bin"]);
    let r = client().get(r1.url(&g.base, "a.bin")).send().await.unwrap();
    assert!(r.headers().contains_key("deprecation"));
    drop(registry);
}

#[tokio::test]
async fn a_takedown_cuts_bodies_already_streaming() {
    let big = bytes_of(16 << 20, 3);
    let r = Release::pack("lc-big", &[("big.bin", big)], CHUNK);
    let mock = MockOrigin::start(r.blobs.clone()).await;
    let g = Served::start(config_for(&r, &[&mock])).await;
    let (grpc, _stop) = start_grpc(&g).await;
    let resp = client().get(r.url(&g.base, "big.bin")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    use futures_util::StreamExt;
    let mut got = stream.next().await.unwrap().unwrap().len() as u64;
    // The reader pauses; the release is taken down meanwhile.
    let req = proto::TakedownRequest { name: "lc-big".into(), version: "1.0.0".into(), reason: "recalled".into() };
    admin(grpc).await.takedown(authed(req, ADMIN)).await.unwrap();
    let (rest, cut) = drain_body(&mut stream).await;
    got += rest;
    assert!(cut, "the body must be cut, not completed ({got} bytes read)");
    assert!(got < 16 << 20, "{got}");
    assert_eq!(g.metric("shardgate_responses_aborted_total{reason=\"taken_down\"}"), 1.0);
}

/// The S3 API sees the same lifecycle as `/v1`: a tag is a key root that
/// lists and reads the version it points at, a deprecated release carries
/// the same headers, and a taken-down one is a 451 with an S3 body and
/// leaves the listing.
#[tokio::test]
async fn s3_sees_tags_deprecation_and_takedown() {
    let f = fixture().await;
    register(f.grpc, &f.r2).await;
    set_tag(f.grpc, "stable", "2.0.0").await.unwrap();
    let s3 = |key: &str| format!("{}/s3/lc-data/{key}", f.g.base);
    let list = |q: &str| client().get(format!("{}/s3/lc-data?list-type=2&{q}", f.g.base)).send();
    let body = list("delimiter=%2F").await.unwrap().text().await.unwrap();
    for root in ["1.0.0/", "2.0.0/", "stable/"] {
        assert!(body.contains(&format!("<CommonPrefixes><Prefix>{root}</Prefix></CommonPrefixes>")), "{body}");
    }
    let r = client().get(s3("stable/a.bin")).header("range", "bytes=-10").send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-location"], "/s3/lc-data/2.0.0/a.bin");
    assert_eq!(r.bytes().await.unwrap().to_vec(), f.r2.files["a.bin"][650_000 - 10..]);

    let req = proto::DeprecateRequest {
        name: "lc-data".into(),
        version: "1.0.0".into(),
        successor_version: "2.0.0".into(),
        sunset: 1_800_000_000,
        reason: "labels fixed".into(),
    };
    admin(f.grpc).await.deprecate(authed(req, ADMIN)).await.unwrap();
    let r = client().head(s3("1.0.0/a.bin")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["deprecation"].to_str().unwrap().starts_with('@'));
    assert_eq!(r.headers()["sunset"], "Fri, 15 Jan 2027 08:00:00 GMT");
    let created = f.r1.signed.manifest.created_at;
    let lm = r.headers()["last-modified"].to_str().unwrap().to_string();
    assert_eq!(shardgate::s3::sigv4::parse_http_date(&lm).unwrap().as_second(), created.as_second());

    let req = proto::TakedownRequest { name: "lc-data".into(), version: "1.0.0".into(), reason: "withdrawn".into() };
    admin(f.grpc).await.takedown(authed(req, ADMIN)).await.unwrap();
    let r = client().get(s3("1.0.0/a.bin")).send().await.unwrap();
    assert_eq!(r.status(), 451);
    assert_eq!(r.headers()["content-type"], "application/xml");
    let text = r.text().await.unwrap();
    assert!(text.contains("<Code>UnavailableForLegalReasons</Code>") && text.contains("withdrawn"), "{text}");
    let body = list("prefix=1").await.unwrap().text().await.unwrap();
    assert!(body.contains("<KeyCount>0</KeyCount>"), "a taken-down release is not listed: {body}");
    assert_eq!(client().head(s3("2.0.0/a.bin")).send().await.unwrap().status(), 200);
}

/// Every lifecycle change lands in the audit trail, in the same transaction,
/// naming the admin token that made it and the release; the export verifies,
/// and an edit anywhere in it is found at that entry.
#[tokio::test]
async fn the_audit_trail_records_every_change_and_an_edit_is_found() {
    let f = fixture().await;
    register(f.grpc, &f.r2).await;
    register(f.grpc, &f.r2).await; // the same again: nothing changes, nothing is recorded
    set_tag(f.grpc, "stable", "2.0.0").await.unwrap();
    let req = proto::DeprecateRequest {
        name: "lc-data".into(),
        version: "1.0.0".into(),
        successor_version: "2.0.0".into(),
        reason: "superseded".into(),
        ..Default::default()
    };
    admin(f.grpc).await.deprecate(authed(req, ADMIN)).await.unwrap();
    let req = proto::TakedownRequest { name: "lc-data".into(), version: "1.0.0".into(), reason: "court order".into() };
    admin(f.grpc).await.takedown(authed(req, ADMIN)).await.unwrap();
    // An in-process change (no token) is recorded as `local`.
    f.g.gw.set_tag("lc-data", "latest", "2.0.0").await.unwrap();

    // Paged export: two entries a page.
    let mut lines = Vec::new();
    let mut after = None;
    loop {
        let req = proto::ExportAuditRequest { after, limit: 2 };
        let r = admin(f.grpc).await.export_audit(authed(req, ADMIN)).await.unwrap().into_inner();
        after = r.entries.last().map(|e| e.seq).or(after);
        lines.extend(r.entries.into_iter().map(|e| e.line));
        if !r.more {
            break;
        }
    }
    let entries: Vec<shardgate::audit::Entry> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let events: Vec<&str> = entries.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(events, ["register", "tag", "deprecate", "takedown", "tag"]);
    let token = shardgate::audit::token_actor(ADMIN);
    assert!(entries[..4].iter().all(|e| e.actor == token), "{entries:?}");
    assert_eq!(entries[4].actor, "local");
    assert!(hash_line(ADMIN).contains(token.trim_start_matches("admin-token:")), "the actor names the configured hash");
    assert_eq!(entries[0].release.as_deref(), Some("lc-data@2.0.0"));
    assert_eq!(entries[0].release_id.as_deref(), Some(f.r2.signed.id.to_hex().as_str()));
    assert_eq!(entries[3].detail["reason"], "court order");
    assert_eq!(entries[1].detail["tag"], "stable");

    let export: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let v = shardgate::audit::verify(export.as_bytes(), shardgate::audit::Start::Genesis).unwrap();
    assert_eq!(v.entries, 5);
    // The takedown's reason, edited in the export: the chain breaks at that entry.
    let edited = export.replace("court order", "routine cleanup");
    let b = shardgate::audit::verify(edited.as_bytes(), shardgate::audit::Start::Genesis).unwrap_err();
    assert_eq!((b.line, b.seq), (4, Some(3)), "{b}");

    // The trail is kept across a restart, and goes on from where it was.
    let Fixture { g, cfg, registry, _stop, .. } = f;
    g.gw.shutdown().await;
    g.shutdown().await;
    drop(_stop);
    let g = restart(&cfg).await;
    g.gw.set_tag("lc-data", "stable", "2.0.0").await.unwrap();
    let all = g.gw.audit_entries(None, 100).await.unwrap();
    assert_eq!(all.len(), 6);
    assert_eq!(all[5].prev, entries[4].hash);
    // A second takedown is its own entry, with the reason it replaced.
    g.gw.takedown("lc-data", "1.0.0", "a second order").await.unwrap();
    let last = g.gw.audit_entries(Some(5), 10).await.unwrap();
    assert_eq!(last.len(), 1, "{last:?}");
    assert_eq!(last[0].event, "takedown");
    assert_eq!(last[0].detail["reason"], "a second order");
    assert_eq!(last[0].detail["previous_reason"], "court order");
    drop(registry);
}
