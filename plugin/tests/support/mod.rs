//! Test fixtures: packed releases, mock origins holding them, and a gateway
//! served on a free loopback port.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use shardgate::config::{ByteSize, Config, OriginConfig, ReleaseSource};
use shardgate::gateway::Gateway;
use shardgate::progress::Silent;
use shardgate::release::envelope::Envelope;
use shardgate::release::keys::PublisherKey;
use shardgate::release::layout::ReleaseDir;
use shardgate::release::manifest::{Blake3, SignedManifest};
use shardgate::release::pack::{PackFormat, PackOptions, pack};
use shardgate::release::placement::{BlobKind, BlobPlacement, PLACEMENT_SCHEMA, Placement};
use shardgate::testing::MockOrigin;

/// Deterministic pseudo-random bytes.
pub fn bytes_of(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as u8
        })
        .collect()
}

pub struct Release {
    pub dir: tempfile::TempDir,
    pub out: PathBuf,
    pub key: PublisherKey,
    pub signed: SignedManifest,
    /// Source bytes by release path.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Every blob of the release (files, tables, manifest) by fake CID.
    pub blobs: Vec<(String, Bytes)>,
}

impl Release {
    /// Packs `files` (path, bytes) with `chunk_size` and writes a placement
    /// with a fake CID per blob, as if published.
    pub fn pack(name: &str, files: &[(&str, Vec<u8>)], chunk_size: u64) -> Release {
        Self::pack_with(name, "1.0.0", files, chunk_size, PublisherKey::generate().unwrap())
    }

    /// A copy of this release's signing key.
    pub fn key_copy(&self) -> PublisherKey {
        let path = self.dir.path().join(format!("key-{}", rand_suffix()));
        self.key.save(&path).unwrap();
        PublisherKey::load(&path).unwrap()
    }

    /// Like [`Release::pack`], with a version and a signing key.
    pub fn pack_with(
        name: &str,
        version: &str,
        files: &[(&str, Vec<u8>)],
        chunk_size: u64,
        key: PublisherKey,
    ) -> Release {
        Self::pack_full(name, version, files, chunk_size, key, Envelope::default())
    }

    /// Like [`Release::pack_with`], with an envelope.
    pub fn pack_full(
        name: &str,
        version: &str,
        files: &[(&str, Vec<u8>)],
        chunk_size: u64,
        key: PublisherKey,
        envelope: Envelope,
    ) -> Release {
        Self::pack_secure(name, version, files, chunk_size, key, envelope, None, None)
    }

    /// Like [`Release::pack_full`], encrypting and checking against a policy.
    #[allow(clippy::too_many_arguments, dead_code)]
    pub fn pack_secure(
        name: &str,
        version: &str,
        files: &[(&str, Vec<u8>)],
        chunk_size: u64,
        key: PublisherKey,
        envelope: Envelope,
        encryption: Option<shardgate::release::pack::PackEncryption>,
        policy: Option<shardgate::policy::Policy>,
    ) -> Release {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        for (p, b) in files {
            let path = src.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b).unwrap();
        }
        let out = dir.path().join("out");
        let opts = PackOptions {
            dir: src,
            name: name.into(),
            version: version.parse().unwrap(),
            out: out.clone(),
            envelope,
            parent: None,
            chunk_size,
            format: PackFormat::Files,
            created_at: jiff::Timestamp::from_second(1_700_000_000).unwrap(),
            drift: None,
            encryption,
            policy,
        };
        let signed = pack(&opts, &key, &Silent).unwrap().manifest;
        let rd = ReleaseDir::new(&out);
        let mut blobs = Vec::new();
        let mut placement = Placement {
            schema: PLACEMENT_SCHEMA.into(),
            name: name.into(),
            version: signed.manifest.version.clone(),
            manifest_blake3: signed.id,
            manifest_cid: Some(cid_for(&signed.id)),
            blobs: BTreeMap::new(),
        };
        let mut add = |h: Blake3, path: PathBuf, kind: BlobKind, placement: &mut Placement| {
            let b = std::fs::read(path).unwrap();
            placement
                .blobs
                .insert(h, BlobPlacement { cid: cid_for(&h), size: b.len() as u64, kind, nodes: Vec::new() });
            blobs.push((cid_for(&h), Bytes::from(b)));
        };
        for f in &signed.manifest.files {
            add(f.blake3, rd.file(&f.path), BlobKind::File, &mut placement);
            if let Some(t) = f.chunk_table {
                add(t, rd.table(&t), BlobKind::ChunkTable, &mut placement);
            }
        }
        add(signed.id, rd.manifest(), BlobKind::Manifest, &mut placement);
        std::fs::write(rd.placement(), placement.to_bytes()).unwrap();
        let files = files.iter().map(|(p, b)| (p.to_string(), b.clone())).collect();
        Release { dir, out, key, signed, files, blobs }
    }

    pub fn manifest_path(&self) -> String {
        self.out.join("manifest.json").display().to_string()
    }

    pub fn url(&self, base: &str, path: &str) -> String {
        format!("{base}/v1/datasets/{}/{}/files/{path}", self.signed.manifest.name, self.signed.manifest.version)
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A fake but unique CID for a blob.
pub fn cid_for(h: &Blake3) -> String {
    format!("bafkfake{}", &h.to_hex()[..32])
}

/// A config serving `release` from the given mock origins (btfs-api), in order.
pub fn config_for(release: &Release, mocks: &[&MockOrigin]) -> Config {
    let mut cfg = Config::default();
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.server.shutdown_grace = std::time::Duration::from_secs(2);
    cfg.trust.keys = vec![release.key.public().to_string()];
    cfg.releases = vec![ReleaseSource { manifest: release.manifest_path(), placement: None }];
    cfg.origins = mocks
        .iter()
        .enumerate()
        .map(|(i, m)| OriginConfig::BtfsApi {
            name: Some(format!("mock{i}")),
            url: m.url(),
            api_prefix: "/api/v1".into(),
            token: None,
        })
        .collect();
    cfg.hot_tier.capacity = ByteSize(64 << 20);
    cfg.fetch.stall_timeout = std::time::Duration::from_millis(500);
    cfg.fetch.first_byte_timeout = std::time::Duration::from_secs(2);
    cfg
}

/// A gateway serving on a free loopback port until dropped.
pub struct Served {
    pub gw: Arc<Gateway>,
    pub addr: SocketAddr,
    pub base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Served {
    pub async fn start(cfg: Config) -> Served {
        let gw = Gateway::start(cfg.clone()).await.unwrap();
        let listener = shardgate::http::server::bind(&cfg.server).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let g = gw.clone();
        let task = tokio::spawn(async move {
            shardgate::http::server::serve(g, listener, None, cfg.server.clone(), false, async {
                let _ = rx.await;
            })
            .await;
        });
        Served { gw, addr, base: format!("http://{addr}"), stop: Some(tx), task: Some(task) }
    }

    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    pub fn metric(&self, name: &str) -> f64 {
        let text = self.gw.metrics().render();
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Reads the rest of a response body: the bytes received, and whether the
/// body was cut (ended in an error) rather than completed.
pub async fn drain_body(
    stream: &mut (impl futures_util::Stream<Item = reqwest::Result<Bytes>> + Unpin),
) -> (u64, bool) {
    use futures_util::StreamExt;
    let mut got = 0u64;
    while let Some(piece) = stream.next().await {
        match piece {
            Ok(b) => got += b.len() as u64,
            Err(_) => return (got, true),
        }
    }
    (got, false)
}
