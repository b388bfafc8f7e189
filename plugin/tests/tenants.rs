//! Tenants end to end through the gateway: 401, 403, 429 with Retry-After,
//! public datasets, bandwidth shaping, and that refusals cost the origin nothing.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use shardgate::config::{ByteSize, ReleaseSource};
use shardgate::tenant::{AccessConfig, Limits, TenantConfig, new_key};
use shardgate::testing::MockOrigin;
use support::*;

struct Fixture {
    g: Served,
    mock: MockOrigin,
    vision: Release,
    medical: Release,
    open: Release,
    vision_key: String,
    medical_key: String,
}

async fn fixture(vision_limits: Limits) -> Fixture {
    let vision = Release::pack("imagenet-mini", &[("a.bin", bytes_of(1_000_000, 1))], 64 * 1024);
    // Each fixture release has its own publisher key; the gateway trusts all three.
    let medical = Release::pack("medical-scans", &[("b.bin", bytes_of(300_000, 2))], 64 * 1024);
    let open = Release::pack("open-text", &[("c.txt", bytes_of(100_000, 3))], 64 * 1024);
    let mut blobs = vision.blobs.clone();
    blobs.extend(medical.blobs.clone());
    blobs.extend(open.blobs.clone());
    let mock = MockOrigin::start(blobs).await;
    let mut cfg = config_for(&vision, &[&mock]);
    cfg.trust.keys = [&vision, &medical, &open].iter().map(|r| r.key.public().to_string()).collect();
    cfg.releases = [&vision, &medical, &open]
        .iter()
        .map(|r| ReleaseSource { manifest: r.manifest_path(), placement: None })
        .collect();
    let (vision_key, vh) = new_key().unwrap();
    let (medical_key, mh) = new_key().unwrap();
    cfg.tenants = vec![
        TenantConfig {
            id: "vision".into(),
            name: Some("Vision".into()),
            keys: vec![vh],
            datasets: vec!["imagenet-*".into()],
            cert_names: vec![],
            clearances: vec![],
            limits: vision_limits,
        },
        TenantConfig {
            id: "medical".into(),
            name: None,
            keys: vec![mh],
            datasets: vec!["medical-*".into()],
            cert_names: vec![],
            clearances: vec![],
            limits: Limits::default(),
        },
    ];
    cfg.access = AccessConfig { public_datasets: vec!["open-*".into()], anonymous: Limits::default() };
    let g = Served::start(cfg).await;
    Fixture { g, mock, vision, medical, open, vision_key, medical_key }
}

async fn get(url: &str, key: Option<&str>) -> reqwest::Response {
    let mut r = client().get(url);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    r.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_datasets_and_public_access() {
    let f = fixture(Limits::default()).await;
    let vision_url = f.vision.url(&f.g.base, "a.bin");
    let medical_url = f.medical.url(&f.g.base, "b.bin");

    let r = get(&vision_url, None).await;
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"shardgate\"");
    assert_eq!(get(&vision_url, Some("sgk_not-a-key")).await.status().as_u16(), 401);

    let r = get(&vision_url, Some(&f.vision_key)).await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), f.vision.files["a.bin"]);

    // One tenant cannot read another's private dataset, by path, manifest or blob hash.
    assert_eq!(get(&medical_url, Some(&f.vision_key)).await.status().as_u16(), 403);
    let manifest = format!("{}/v1/datasets/medical-scans/1.0.0/manifest", f.g.base);
    assert_eq!(get(&manifest, Some(&f.vision_key)).await.status().as_u16(), 403);
    let blob = format!("{}/v1/blobs/{}", f.g.base, f.medical.signed.manifest.files[0].blake3);
    // A blob hash is not a name the caller was given: where it may not read
    // it, the answer is the one for a blob that does not exist (404), so
    // that no one learns that a hash is in a dataset they cannot read.
    let unknown = format!("{}/v1/blobs/{}", f.g.base, blake3::hash(b"in no release"));
    for key in [Some(f.vision_key.as_str()), None] {
        let held = get(&blob, key).await;
        assert_eq!(held.status().as_u16(), 404);
        let held: serde_json::Value = serde_json::from_slice(&held.bytes().await.unwrap()).unwrap();
        let none = get(&unknown, key).await;
        assert_eq!(none.status().as_u16(), 404);
        let none: serde_json::Value = serde_json::from_slice(&none.bytes().await.unwrap()).unwrap();
        assert_eq!(
            held["error"].as_str().unwrap().split(' ').take(5).collect::<Vec<_>>(),
            none["error"].as_str().unwrap().split(' ').take(5).collect::<Vec<_>>()
        );
    }
    assert_eq!(get(&medical_url, Some(&f.medical_key)).await.status().as_u16(), 200);

    // A public dataset needs no key, and any tenant may read it too.
    let open_url = f.open.url(&f.g.base, "c.txt");
    assert_eq!(get(&open_url, None).await.status().as_u16(), 200);
    assert_eq!(get(&open_url, Some(&f.medical_key)).await.status().as_u16(), 200);

    // Listings show only what the asker may read.
    let list: serde_json::Value = get(&format!("{}/v1/datasets", f.g.base), Some(&f.vision_key))
        .await
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap();
    let names: Vec<&str> = list["datasets"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["imagenet-mini", "open-text"]);
    let list: serde_json::Value = get(&format!("{}/v1/datasets", f.g.base), None)
        .await
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap();
    assert_eq!(list["datasets"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_happen_before_any_origin_work() {
    let limits = Limits { request_rate: Some(1.0), request_burst: Some(2), ..Limits::default() };
    let f = fixture(limits).await;
    let url = f.vision.url(&f.g.base, "a.bin");
    let before = f.mock.requests();
    assert_eq!(get(&url, None).await.status().as_u16(), 401);
    assert_eq!(get(&f.medical.url(&f.g.base, "b.bin"), Some(&f.vision_key)).await.status().as_u16(), 403);
    assert_eq!(f.mock.requests(), before, "a refused request reached the origin");

    // Burst of 2, then 429 with Retry-After, and no origin request for it.
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..4 {
        let r = client().head(&url).bearer_auth(&f.vision_key).send().await.unwrap();
        if r.status().as_u16() == 429 {
            retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
        }
        statuses.push(r.status().as_u16());
    }
    assert_eq!(&statuses[..2], &[200, 200], "{statuses:?}");
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    let secs: u64 = retry_after.unwrap().parse().unwrap();
    assert!((1..=2).contains(&secs), "Retry-After {secs}");
    let before = f.mock.requests();
    let r = get(&url, Some(&f.vision_key)).await;
    if r.status().as_u16() == 429 {
        assert_eq!(f.mock.requests(), before);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_caps_shape_the_body_instead_of_refusing() {
    let limits = Limits {
        bandwidth: Some(ByteSize(2_000_000)),
        bandwidth_burst: Some(ByteSize(256 * 1024)),
        ..Limits::default()
    };
    let f = fixture(limits).await;
    let url = f.vision.url(&f.g.base, "a.bin");
    let t0 = Instant::now();
    let r = get(&url, Some(&f.vision_key)).await;
    assert_eq!(r.status().as_u16(), 200);
    let body = r.bytes().await.unwrap();
    let took = t0.elapsed();
    assert_eq!(body.to_vec(), f.vision.files["a.bin"]);
    // 1,000,000 bytes with 262,144 of burst at 2 MB/s need at least ~0.37 s.
    assert!(took >= Duration::from_millis(300), "a 2 MB/s cap sent 1 MB in {took:?}");
    // The other tenant is not shaped.
    let t0 = Instant::now();
    let r = get(&f.medical.url(&f.g.base, "b.bin"), Some(&f.medical_key)).await;
    assert_eq!(r.bytes().await.unwrap().len(), 300_000);
    assert!(t0.elapsed() < took);
}

/// S3 requests go through the same door as `/v1`: a SigV4 signature made
/// with a tenant's access key identifies the tenant, its dataset globs
/// apply, and its request rate is one bucket across both APIs; refusals are
/// S3 errors (503 SlowDown with Retry-After, 403 AccessDenied) and cost the
/// origin nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_requests_share_the_tenants_door() {
    use shardgate::s3::keys::{append, new_key as new_s3_key};
    use shardgate::s3::sigv4::Signer;

    let limits = Limits { request_rate: Some(0.2), request_burst: Some(2), ..Limits::default() };
    let f = fixture(limits).await;
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("s3.toml");
    let key = new_s3_key("vision").unwrap();
    append(&creds, &key).unwrap();
    let mut cfg = (*f.g.gw.config()).clone();
    cfg.s3.credentials = Some(creds.clone());
    f.g.gw.reload(cfg).await.unwrap();

    let host = f.g.base.trim_start_matches("http://").to_string();
    let signed = |path: &str, secret: &str| {
        let mut r = client().get(format!("{}{path}", f.g.base));
        let signer = Signer { access_key_id: &key.access_key_id, secret, region: "eu-west-3" };
        for (k, v) in signer.sign_headers("GET", path, "", &host, jiff::Timestamp::now()).unwrap() {
            r = r.header(k, v);
        }
        r
    };
    let a = "/s3/imagenet-mini/1.0.0/a.bin";
    let r = signed(a, &key.secret_access_key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), f.vision.files["a.bin"]);
    let before = f.mock.requests();
    let r = signed(a, "not-the-secret-000000").send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("<Code>SignatureDoesNotMatch</Code>"));
    let r = signed("/s3/medical-scans/1.0.0/b.bin", &key.secret_access_key).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("<Code>AccessDenied</Code>"));
    // Burst 2 (limiters restart with a reload): one S3 read above, one over HTTP, then S3 is slowed down.
    assert_eq!(get(&f.vision.url(&f.g.base, "a.bin"), Some(&f.vision_key)).await.status(), 200);
    let r = signed(a, &key.secret_access_key).send().await.unwrap();
    assert_eq!(r.status(), 503, "the burst is shared by both APIs");
    assert!(r.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert!(r.text().await.unwrap().contains("<Code>SlowDown</Code>"));
    assert_eq!(f.mock.requests(), before, "a refused S3 request reached the origin");
    // The key file is re-read on reload: a removed key is an unknown key.
    std::fs::write(&creds, "").unwrap();
    f.g.gw.reload((*f.g.gw.config()).clone()).await.unwrap();
    let r = signed(a, &key.secret_access_key).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("<Code>InvalidAccessKeyId</Code>"));
}
