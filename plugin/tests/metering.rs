//! Metering end to end in-process: bytes billed equal bytes received, hang-ups
//! are billed what was sent, integrity failures are never billed, quotas
//! refuse before origin work, and the gRPC usage API answers as specified.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use shardgate::config::{ByteSize, GrpcConfig, ReleaseSource};
use shardgate::tenant::{AccessConfig, Limits, TenantConfig, new_key};
use shardgate::testing::{Fault, MockOrigin};
use shardgate::usage::ledger::Entry;
use shardgate::usage::proto::usage_service_client::UsageServiceClient;
use shardgate::usage::proto::{self, usage_record};
use shardgate::usage::{Counters, RecordKey, Source};
use support::*;

struct Fixture {
    g: Served,
    mock: MockOrigin,
    vision: Release,
    open: Release,
    vision_key: String,
    slow_key: String,
    capped_key: String,
}

const CHUNK: u64 = 64 * 1024;

async fn fixture() -> Fixture {
    let vision = Release::pack("imagenet-mini", &[("a.bin", bytes_of(1_000_000, 1))], CHUNK);
    let open =
        Release::pack("open-text", &[("c.txt", bytes_of(100_000, 3)), ("big.bin", bytes_of(2_000_000, 4))], CHUNK);
    let mut blobs = vision.blobs.clone();
    blobs.extend(open.blobs.clone());
    let mock = MockOrigin::start(blobs).await;
    let mut cfg = config_for(&vision, &[&mock]);
    cfg.trust.keys = [&vision, &open].iter().map(|r| r.key.public().to_string()).collect();
    cfg.releases =
        [&vision, &open].iter().map(|r| ReleaseSource { manifest: r.manifest_path(), placement: None }).collect();
    let (vision_key, vh) = new_key().unwrap();
    let (slow_key, sh) = new_key().unwrap();
    let (capped_key, ch) = new_key().unwrap();
    let tenant = |id: &str, key: String, limits: Limits| TenantConfig {
        id: id.into(),
        name: None,
        keys: vec![key],
        datasets: vec!["imagenet-*".into()],
        cert_names: vec![],
        clearances: vec![],
        limits,
    };
    cfg.tenants = vec![
        tenant("vision", vh, Limits::default()),
        // Eight chunks at once, then one chunk per second.
        tenant(
            "slow",
            sh,
            Limits {
                bandwidth: Some(ByteSize(CHUNK)),
                bandwidth_burst: Some(ByteSize(8 * CHUNK)),
                ..Limits::default()
            },
        ),
        tenant("capped", ch, Limits { monthly_quota: Some(ByteSize(1_500_000)), ..Limits::default() }),
    ];
    cfg.access = AccessConfig { public_datasets: vec!["open-*".into()], anonymous: Limits::default() };
    let g = Served::start(cfg).await;
    Fixture { g, mock, vision, open, vision_key, slow_key, capped_key }
}

/// Commits everything metered so far and closes every window.
fn close_all(g: &Served) -> Vec<Entry> {
    g.gw.ledger().commit(g.gw.meter().drain_all()).unwrap();
    g.gw.ledger().list(0, 100_000, None).unwrap()
}

/// Tenant counters summed by (tenant, source).
fn by_tenant(entries: &[Entry]) -> BTreeMap<(String, Source), Counters> {
    let mut out: BTreeMap<(String, Source), Counters> = BTreeMap::new();
    for e in entries {
        if let RecordKey::TenantUsage { tenant, source, .. } = &e.record.key {
            out.entry((tenant.to_string(), *source)).or_default().add(&e.record.counters);
        }
    }
    out
}

fn tenant_bytes(entries: &[Entry], tenant: &str) -> u64 {
    by_tenant(entries).iter().filter(|((t, _), _)| t == tenant).map(|(_, c)| c.bytes).sum()
}

fn dataset_costs(entries: &[Entry]) -> Counters {
    let mut c = Counters::default();
    for e in entries {
        if let RecordKey::DatasetCost { .. } = &e.record.key {
            c.add(&e.record.counters);
        }
    }
    c
}

async fn get(url: &str, key: Option<&str>, headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
    let mut r = client().get(url);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    for (h, v) in headers {
        r = r.header(*h, *v);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn billed_bytes_equal_received_bytes_by_tenant_and_source() {
    let f = fixture().await;
    let base = &f.g.base;
    let a = f.vision.url(base, "a.bin");
    let k = Some(f.vision_key.as_str());
    let mut received = 0u64;
    let mut requests = 0u64;
    // Cold: every byte comes from the origin (read-ahead chunks included).
    let (s, body) = get(&a, k, &[]).await;
    assert_eq!((s, body.len()), (200, 1_000_000));
    let origin_bytes = body.len() as u64;
    // Hot, whole and ranged, single and multipart.
    for range in [None, Some("bytes=100-199"), Some("bytes=0-9,20-29"), Some("bytes=-5")] {
        let h: Vec<(&str, &str)> = range.map(|r| ("range", r)).into_iter().collect();
        let (s, body) = get(&a, k, &h).await;
        assert!(s == 200 || s == 206, "{s}");
        received += body.len() as u64;
        requests += 1;
    }
    // HEAD and 304 are requests without bytes.
    let head = client().head(&a).bearer_auth(&f.vision_key).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let etag = head.headers()["etag"].to_str().unwrap().to_string();
    let (s, body) = get(&a, k, &[("if-none-match", &etag)]).await;
    assert_eq!((s, body.len()), (304, 0));
    requests += 2;
    // The manifest is billed too.
    let m = format!("{base}/v1/datasets/imagenet-mini/1.0.0/manifest");
    let (s, body) = get(&m, k, &[]).await;
    assert_eq!(s, 200);
    received += body.len() as u64;
    requests += 1;
    // Refusals are not billed: a wrong key, a range that cannot be satisfied.
    assert_eq!(get(&a, Some("sgk_wrong"), &[]).await.0, 401);
    assert_eq!(get(&a, k, &[("range", "bytes=5000000-")]).await.0, 416);
    // Anonymous reads of a public dataset are billed to `anonymous`.
    let (s, body) = get(&f.open.url(base, "c.txt"), None, &[]).await;
    assert_eq!((s, body.len()), (200, 100_000));

    let entries = close_all(&f.g);
    let t = by_tenant(&entries);
    let origin = t[&("vision".to_string(), Source::Origin)];
    let hot = t[&("vision".to_string(), Source::Hot)];
    assert_eq!(origin, Counters { bytes: origin_bytes, requests: 1, ..Default::default() });
    assert_eq!(hot, Counters { bytes: received, requests, ..Default::default() });
    assert_eq!(tenant_bytes(&entries, "anonymous"), 100_000);
    assert_eq!(tenant_bytes(&entries, "slow") + tenant_bytes(&entries, "capped"), 0);
    // Origin egress is counted per release, apart from tenants.
    let cost = dataset_costs(&entries);
    assert!(cost.origin_egress_bytes >= 1_100_000, "egress {cost:?}");
    assert_eq!(cost.integrity_failed_bytes + cost.integrity_aborted_bytes, 0);
    // Ids are unique and stable; reading twice gives the same records.
    let ids: std::collections::HashSet<String> =
        entries.iter().map(|e| e.record.key.id(f.g.gw.ledger().instance())).collect();
    assert_eq!(ids.len(), entries.len());
    assert_eq!(f.g.gw.ledger().list(0, 100_000, None).unwrap(), entries);
}

/// Reads the head and `want` body bytes of a GET on a raw socket, then
/// resets the connection (SO_LINGER 0), as a client that gives up does.
fn read_then_reset(addr: std::net::SocketAddr, path: &str, key: &str, want: usize) -> usize {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.connect(&addr.into()).unwrap();
    s.set_linger(Some(Duration::ZERO)).unwrap();
    let mut s: std::net::TcpStream = s.into();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let body_start = loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before the head");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let mut got = buf.len() - body_start;
    while got < want {
        let n = s.read(&mut chunk[..(want - got).min(16 * 1024)]).unwrap();
        assert!(n > 0);
        got += n;
    }
    drop(s);
    got
}

#[tokio::test]
async fn a_client_that_hangs_up_is_billed_what_it_received() {
    let f = fixture().await;
    let path = "/v1/datasets/imagenet-mini/1.0.0/files/a.bin";
    // The slow tenant's cap lets exactly eight chunks out at once; the client
    // reads those and resets while the ninth waits for bandwidth.
    let addr = f.g.addr;
    let key = f.slow_key.clone();
    let got = tokio::task::spawn_blocking(move || read_then_reset(addr, path, &key, 8 * CHUNK as usize)).await.unwrap();
    assert_eq!(got as u64, 8 * CHUNK);
    // The gateway notices when it next writes (the ninth chunk, ~1 s later).
    let t0 = Instant::now();
    let billed = loop {
        let e = {
            f.g.gw.ledger().commit(f.g.gw.meter().drain()).unwrap();
            f.g.gw.ledger().commit(f.g.gw.meter().drain_all()).unwrap();
            f.g.gw.ledger().list(0, 1000, Some("slow")).unwrap()
        };
        if !e.is_empty() || t0.elapsed() > Duration::from_secs(10) {
            break e;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let total: Counters = billed.iter().fold(Counters::default(), |mut c, e| {
        c.add(&e.record.counters);
        c
    });
    assert_eq!(total, Counters { bytes: got as u64, requests: 1, aborted_requests: 1, ..Default::default() });
}

#[tokio::test]
async fn a_response_cut_for_integrity_is_never_billed() {
    let f = fixture().await;
    let file = &f.vision.signed.manifest.files[0];
    let cid = cid_for(&file.blake3);
    // Chunk 5 is corrupt at the only origin: the response is cut there.
    f.mock.set_fault(Some(&cid), Some(Fault::CorruptAt(5 * CHUNK + 7)));
    let resp = client().get(f.vision.url(&f.g.base, "a.bin")).bearer_auth(&f.vision_key).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let (got, cut) = drain_body(&mut resp.bytes_stream()).await;
    assert!(cut, "the body must be cut, not completed");
    assert_eq!(got, 5 * CHUNK, "exactly the verified chunks before the bad one");
    let entries = close_all(&f.g);
    assert_eq!(tenant_bytes(&entries, "vision"), 0, "nothing billed to the tenant");
    let cost = dataset_costs(&entries);
    assert_eq!(cost.integrity_aborted_requests, 1);
    assert_eq!(cost.integrity_aborted_bytes, got);
    assert!(cost.integrity_failed_bytes >= CHUNK, "{cost:?}");
}

#[tokio::test]
async fn a_spent_monthly_quota_answers_429_before_origin_work() {
    let f = fixture().await;
    let a = f.vision.url(&f.g.base, "a.bin");
    let k = Some(f.capped_key.as_str());
    assert_eq!(get(&a, k, &[]).await.0, 200);
    // 1 000 000 of 1 500 000: still under, so admitted; the quota is a hard
    // cap, so the body stops within a chunk of it (it used to run 100 000 over).
    let resp = client().get(&a).bearer_auth(&f.capped_key).header("range", "bytes=0-599999").send().await.unwrap();
    assert_eq!(resp.status(), 206);
    let (got, cut) = drain_body(&mut resp.bytes_stream()).await;
    assert!(cut && (500_000 - CHUNK..=500_000 + CHUNK).contains(&got), "{got} bytes, cut {cut}");
    let before = f.mock.requests();
    let resp = client().get(&a).bearer_auth(&f.capped_key).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=31 * 86400).contains(&retry), "{retry}");
    let body = resp.text().await.unwrap();
    assert!(body.contains("monthly quota") && body.contains("1500000"), "{body}");
    assert_eq!(f.mock.requests(), before, "a refused request costs the origin nothing");
    // Other tenants are unaffected.
    assert_eq!(get(&a, Some(&f.vision_key), &[("range", "bytes=0-9")]).await.0, 206);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_downloads_cannot_overrun_the_monthly_quota_by_more_than_a_chunk_each() {
    let f = fixture().await;
    let a = f.vision.url(&f.g.base, "a.bin");
    // Warm the file, so the six bodies stream as fast as they can.
    assert_eq!(get(&a, Some(&f.vision_key), &[]).await.0, 200);
    let quota = 1_500_000u64;
    let parallel = 6u64;
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let (url, key) = (a.clone(), f.capped_key.clone());
        tasks.push(tokio::spawn(async move {
            let resp = client().get(url).bearer_auth(key).send().await.unwrap();
            let status = resp.status().as_u16();
            let mut stream = resp.bytes_stream();
            let (got, cut) = drain_body(&mut stream).await;
            (status, got, cut)
        }));
    }
    let mut received = 0;
    let mut outcomes = Vec::new();
    for t in tasks {
        let (status, got, cut) = t.await.unwrap();
        // Each download gets a status: 200 (perhaps cut between chunks) or 429.
        assert!(status == 200 || status == 429, "{status}");
        if status == 200 {
            received += got;
        }
        outcomes.push((status, got, cut));
    }
    // Before: every download passed the same check and all 6 MB were served.
    assert!(received <= quota + parallel * CHUNK, "{received} bytes served against a {quota}-byte quota: {outcomes:?}");
    assert!(received >= quota - CHUNK, "the quota was not used: {outcomes:?}");
    // The ledger bills what the clients took, and the next request is refused.
    let billed = tenant_bytes(&close_all(&f.g), "capped");
    assert!(
        billed <= quota + parallel * CHUNK && billed >= received.saturating_sub(parallel * CHUNK),
        "{billed} vs {received}"
    );
    let resp = client().get(&a).bearer_auth(&f.capped_key).send().await.unwrap();
    assert_eq!(resp.status(), 429);
}

async fn grpc(f: &Fixture, token: &str) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = GrpcConfig {
        billing_tokens: vec![format!("blake3:{}", hex::encode(shardgate::tenant::hash_key(token)))],
        admin_tokens: vec![],
        ..GrpcConfig::new(addr)
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let gw = f.g.gw.clone();
    tokio::spawn(async move {
        shardgate::grpc::serve(gw, &cfg, listener, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    (addr, tx)
}

fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

#[tokio::test]
async fn the_grpc_usage_api_lists_totals_streams_and_refuses() {
    let f = fixture().await;
    let (addr, stop) = grpc(&f, "billing-secret").await;
    let mut c = UsageServiceClient::connect(format!("http://{addr}")).await.unwrap();
    // No token, a wrong token: UNAUTHENTICATED.
    let e = c.list_usage(proto::ListUsageRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = c.list_usage(authed(proto::ListUsageRequest::default(), "nope")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    // A stream started before anything closes receives each window once, when it closes.
    let mut stream = c
        .stream_usage(authed(proto::StreamUsageRequest { after_cursor: String::new(), tenant: None }, "billing-secret"))
        .await
        .unwrap()
        .into_inner();

    let (s, body) = get(&f.vision.url(&f.g.base, "a.bin"), Some(&f.vision_key), &[]).await;
    assert_eq!((s, body.len()), (200, 1_000_000));
    let (s, body) = get(&f.vision.url(&f.g.base, "a.bin"), Some(&f.vision_key), &[("range", "bytes=0-99")]).await;
    assert_eq!((s, body.len()), (206, 100));
    close_all(&f.g);

    let page = c
        .list_usage(authed(
            proto::ListUsageRequest { after_cursor: String::new(), limit: 0, tenant: None },
            "billing-secret",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(page.records.len() >= 3, "hot, origin and the release's cost: {:?}", page.records);
    assert_eq!(page.next_cursor, page.records.last().unwrap().cursor);
    assert_eq!(page.last_cursor, page.next_cursor);
    let bytes: u64 = page
        .records
        .iter()
        .filter_map(|r| match &r.counters {
            Some(usage_record::Counters::TenantUsage(t)) if t.tenant == "vision" => Some(t.bytes),
            _ => None,
        })
        .sum();
    assert_eq!(bytes, 1_000_100);
    for r in &page.records {
        assert_eq!(r.gateway_instance, f.g.gw.ledger().instance());
        assert_eq!(r.window_end - r.window_start, 60);
        assert_eq!(r.id.len(), 32);
    }
    // The same cursor twice gives the same ids.
    let again = c
        .list_usage(authed(
            proto::ListUsageRequest { after_cursor: String::new(), limit: 0, tenant: None },
            "billing-secret",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.records, page.records);
    // Paging by cursor.
    let first = &page.records[0];
    let rest = c
        .list_usage(authed(
            proto::ListUsageRequest { after_cursor: first.cursor.clone(), limit: 1, tenant: None },
            "billing-secret",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.records, page.records[1..2]);
    // Tenant filter.
    let only = c
        .list_usage(authed(
            proto::ListUsageRequest { after_cursor: String::new(), limit: 0, tenant: Some("anonymous".into()) },
            "billing-secret",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(only.records.is_empty());
    // The stream saw the same records, in order.
    for want in &page.records {
        let got = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
        assert_eq!(&got, want);
    }
    // Totals.
    let t = c
        .get_totals(authed(
            proto::GetTotalsRequest { tenant: "vision".into(), dataset: None, from: 0, to: 0 },
            "billing-secret",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((t.bytes, t.requests), (1_000_100, 2));
    let by: BTreeMap<i32, u64> = t.by_source.iter().map(|s| (s.source, s.bytes)).collect();
    assert_eq!(by[&(proto::Source::Origin as i32)], 1_000_000);
    assert_eq!(by[&(proto::Source::Hot as i32)], 100);
    let none = c
        .get_totals(authed(
            proto::GetTotalsRequest { tenant: "vision".into(), dataset: Some("other".into()), from: 0, to: 0 },
            "billing-secret",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(none.bytes, 0);
    // Bad arguments.
    for bad in ["garbage", "gw-elsewhere:1", &format!("{}:999999", f.g.gw.ledger().instance())] {
        let e = c
            .list_usage(authed(
                proto::ListUsageRequest { after_cursor: bad.to_string(), limit: 0, tenant: None },
                "billing-secret",
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}: {e}");
    }
    let e = c
        .get_totals(authed(
            proto::GetTotalsRequest { tenant: String::new(), dataset: None, from: 0, to: 0 },
            "billing-secret",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    // Ack.
    let acked = c
        .ack_usage(authed(proto::AckUsageRequest { cursor: page.next_cursor.clone() }, "billing-secret"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acked.acked_cursor, page.next_cursor);

    // Health and reflection need no token.
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut health = tonic_health::pb::health_client::HealthClient::new(chan(addr).await);
    for service in ["", "shardgate.usage.v1.UsageService"] {
        let r =
            health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    assert!(list_services_v1(addr).await.contains(&"shardgate.usage.v1.UsageService".to_string()));
    assert!(list_services_v1alpha(addr).await.contains(&"shardgate.usage.v1.UsageService".to_string()));
    let _ = stop.send(());
}

async fn chan(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

async fn list_services_v1(addr: std::net::SocketAddr) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut c = ServerReflectionClient::new(chan(addr).await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut s = c.server_reflection_info(futures_util::stream::iter([req])).await.unwrap().into_inner();
    match s.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(l)) => l.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

async fn list_services_v1alpha(addr: std::net::SocketAddr) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let mut c = ServerReflectionClient::new(chan(addr).await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut s = c.server_reflection_info(futures_util::stream::iter([req])).await.unwrap().into_inner();
    match s.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(l)) => l.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_egress_of_a_span_still_running_at_a_graceful_stop_is_committed() {
    let r = Release::pack("tail", &[("big.bin", bytes_of(4_000_000, 5))], 256 * 1024);
    let mock = MockOrigin::start(r.blobs.clone()).await;
    // The first chunk of a cold read starts one origin request for a 4 MiB
    // span; its tail arrives after the client has hung up.
    let file = r.signed.manifest.files[0].blake3;
    mock.set_fault(
        Some(&cid_for(&file)),
        Some(Fault::StallAfter { bytes: 512 * 1024, dur: Duration::from_millis(300) }),
    );
    let g = Served::start(config_for(&r, &[&mock])).await;
    let resp = client().get(r.url(&g.base, "big.bin")).header("range", "bytes=0-3999999").send().await.unwrap();
    assert_eq!(resp.status(), 206);
    let mut stream = resp.bytes_stream();
    use futures_util::StreamExt;
    assert!(stream.next().await.unwrap().is_ok());
    drop(stream);
    assert!(mock.bytes_sent() < 4_000_000, "the span ended before the stop; nothing to test");
    // Stop as SIGTERM does: the listener drains, then the gateway's final commit.
    let gw = g.gw.clone();
    g.shutdown().await;
    gw.shutdown().await;
    // Whatever the span still receives after the stop shows in the metric.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let received: f64 = gw
        .metrics()
        .render()
        .lines()
        .filter(|l| l.starts_with("shardgate_origin_fetched_bytes_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let entries = gw.ledger().list(0, 100_000, None).unwrap();
    let egress = dataset_costs(&entries).origin_egress_bytes;
    assert!(received > 512.0 * 1024.0, "the span's tail never arrived ({received} bytes); nothing to test");
    assert_eq!(egress as f64, received, "origin bytes received after the final commit were not billed to the release");
}
