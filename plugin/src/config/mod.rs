//! Gateway configuration: one serde tree, `deny_unknown_fields` everywhere,
//! documented defaults, and [`Config::validate`] with errors naming the key.
//!
//! Owns parsing and checking only; nothing here opens sockets or files other
//! than reading the config text itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::release::chunk::DEFAULT_CHUNK_SIZE;
use crate::release::keys::PublicKey;
use crate::tenant::{AccessConfig, TenantConfig, Tenants};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config is not valid: {0}")]
    Parse(String),
    #[error("config key `{key}`: {why}")]
    Invalid { key: String, why: String },
}

fn invalid(key: impl Into<String>, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), why: why.into() }
}

/// A byte size written as a number or a string such as `"256MiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s
                .trim()
                .parse::<bytesize::ByteSize>()
                .map(|b| ByteSize(b.as_u64()))
                .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a size like \"256MiB\": {e}"))),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    /// Publisher keys whose manifests are served: `ed25519:...` or a `.pub` file path.
    #[serde(default)]
    pub trust: TrustConfig,
    /// Releases to serve.
    #[serde(default)]
    pub releases: Vec<ReleaseSource>,
    /// Where bytes come from, tried in order.
    #[serde(default)]
    pub origins: Vec<OriginConfig>,
    #[serde(default)]
    pub fetch: FetchConfig,
    #[serde(default)]
    pub hot_tier: HotTierConfig,
    #[serde(default)]
    pub disk_tier: DiskTierConfig,
    #[serde(default)]
    pub metadata: MetadataConfig,
    /// Tenants: API keys, readable datasets, limits. None configured: every dataset is public.
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    /// Public datasets and anonymous limits.
    #[serde(default)]
    pub access: AccessConfig,
    /// Metering and the usage ledger.
    #[serde(default)]
    pub usage: UsageConfig,
    /// The gRPC listener (usage and admin APIs); none when absent.
    #[serde(default)]
    pub grpc: Option<GrpcConfig>,
    /// The persistent registry of releases registered over the admin API, tags and states.
    #[serde(default)]
    pub registry: RegistryConfig,
    /// Finance reports: `/v1/reports/summary` and `/dashboard`.
    #[serde(default)]
    pub reports: ReportsConfig,
    /// The gateway's keys for unwrapping the data keys of encrypted releases.
    #[serde(default)]
    pub keys: KeysConfig,
    /// The policy classes releases are checked against.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// The read-only S3 API.
    #[serde(default)]
    pub s3: S3Config,
    /// Pin health: checking and repairing where releases are pinned.
    #[serde(default)]
    pub pin_health: PinHealthConfig,
}

/// `[pin_health]`: a low-priority task that checks, every `interval`, that
/// each blob of every live release is pinned on its nodes (those its
/// placement names, matched to `nodes` by URL), repairs a lost pin from a
/// node that still holds the blob (verified by BLAKE3 before it is added
/// again), and places copies on `spares` while a release is under-replicated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PinHealthConfig {
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Each node call (pin/ls, cat, add) gives up after this long.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The repair-time objective (SLO): a loss repaired later than this is reported as a breach.
    #[serde(with = "humantime_serde")]
    pub repair_objective: Duration,
    /// The nodes releases are placed on (API URL, prefix, token).
    pub nodes: Vec<crate::btfs::NodeConfig>,
    /// Nodes that take copies while a release has fewer healthy copies than its target.
    pub spares: Vec<crate::btfs::NodeConfig>,
}

impl Default for PinHealthConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            interval: Duration::from_secs(600),
            timeout: Duration::from_secs(60),
            repair_objective: Duration::from_secs(4 * 3600),
            nodes: Vec::new(),
            spares: Vec::new(),
        }
    }
}

/// `[s3]`: the read-only S3 API. Bucket = dataset, key = `<version or tag>/<path>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Serve S3 under `/s3` on `server.listen` (and virtual-hosted `domains` there).
    pub enabled: bool,
    /// A listener of its own serving S3 at its root (for clients that cannot
    /// take an endpoint with a path, such as pyarrow, Polars and Lance).
    /// Same TLS and connection limits as `server`. Restart-only.
    pub listen: Option<std::net::SocketAddr>,
    /// Base domains for virtual-hosted addressing: a request for host
    /// `BUCKET.DOMAIN` reads bucket `BUCKET`.
    pub domains: Vec<String>,
    /// The region GetBucketLocation and HeadBucket report. Signatures scoped
    /// to any region are accepted.
    pub region: String,
    /// The access keys file (`shardgate tenant s3-key` writes it), mode 0600.
    /// Re-read on reload. Unset: only unsigned (public) and bearer-key access.
    pub credentials: Option<PathBuf>,
    /// Largest difference between a signed request's time and the gateway's clock.
    #[serde(with = "humantime_serde")]
    pub max_skew: Duration,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
            domains: Vec::new(),
            region: "us-east-1".into(),
            credentials: None,
            max_skew: Duration::from_secs(900),
        }
    }
}

/// `[keys]`: what this gateway unwraps data keys with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// age identity files (as `age-keygen` writes them): X25519 keys the envelopes may be wrapped to.
    #[serde(default)]
    pub age_identities: Vec<PathBuf>,
    /// A key-encryption key in a PKCS#11 token.
    #[serde(default)]
    pub pkcs11: Option<crate::crypt::pkcs11::Pkcs11Config>,
}

/// `[policy]`: the policy file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The policy file (classes, rules, sign-off roles). None: releases are
    /// not checked against classes, and encrypted ones need only their key.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportsConfig {
    /// Tokens that may read `/v1/reports/summary`, stored hashed (as
    /// `shardgate usage token --finance` prints). Admin tokens
    /// (`grpc.admin_tokens`) may read it too.
    pub finance_tokens: Vec<String>,
    /// Objective for the p99 time to a manifest response head.
    #[serde(with = "humantime_serde")]
    pub manifest_p99_objective: Duration,
    /// Objective for the p99 time to a file response head (first verified chunk in hand).
    #[serde(with = "humantime_serde")]
    pub file_ttfb_p99_objective: Duration,
    /// The other members of a fleet (base URLs, such as `http://10.0.0.2:8080`):
    /// the summary and the dashboard fetch their summaries and merge them. A
    /// member may list itself; it is recognised by its instance id.
    pub peers: Vec<String>,
    /// A file holding a finance token every peer accepts (its hash in their
    /// `reports.finance_tokens`). Readable by its owner only. Required with `peers`.
    pub peer_token_file: Option<PathBuf>,
    /// How long one peer's summary may take before it is marked unreachable.
    #[serde(with = "humantime_serde")]
    pub peer_timeout: Duration,
}

impl Default for ReportsConfig {
    fn default() -> Self {
        Self {
            finance_tokens: Vec::new(),
            manifest_p99_objective: Duration::from_millis(50),
            file_ttfb_p99_objective: Duration::from_millis(500),
            peers: Vec::new(),
            peer_token_file: None,
            peer_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// The registry (redb file). Unset: kept in memory, lost on exit.
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// Meter responses per tenant. Off only for benchmarks: nothing is billed.
    pub enabled: bool,
    /// The usage ledger (redb file). Unset: kept in memory and lost on exit.
    pub ledger: Option<PathBuf>,
    /// Longest time between ledger commits: what a crash (kill -9) can lose.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Acknowledged records are compacted this long after their window ends.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// This gateway's id in usage records. Unset: made once and kept in the ledger.
    pub instance_id: Option<String>,
    /// The BTT cost model (`conf/pricing.toml`) that prices chargeback and the
    /// dashboard. Unset: reports carry bytes only. Re-read on reload.
    pub pricing: Option<PathBuf>,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ledger: None,
            commit_interval: Duration::from_secs(1),
            retention: Duration::from_secs(90 * 86400),
            instance_id: None,
            pricing: None,
        }
    }
}

/// The gRPC listener: the usage API (billing tokens) and the admin API
/// (admin tokens), with health and reflection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    /// Address of the gRPC listener.
    pub listen: SocketAddr,
    /// Tokens for the usage API, stored hashed (`blake3:<hex>`, as `shardgate usage token` prints).
    #[serde(default)]
    pub billing_tokens: Vec<String>,
    /// Tokens for the admin API, stored hashed (as `shardgate release token` prints).
    #[serde(default)]
    pub admin_tokens: Vec<String>,
    /// TLS for the gRPC listener; plaintext HTTP/2 when absent.
    #[serde(default)]
    pub tls: Option<GrpcTlsConfig>,
    /// Connections served at once; further connections wait in the accept queue.
    #[serde(default = "default_grpc_max_connections")]
    pub max_connections: usize,
    /// Time a new connection has, from accept, to send its first request (TLS handshake included).
    #[serde(default = "default_grpc_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection with no call in flight for this long is closed (an open
    /// usage stream is a call in flight).
    #[serde(default = "default_grpc_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A client that takes no bytes for this long is disconnected.
    #[serde(default = "default_grpc_write_timeout", with = "humantime_serde")]
    pub write_timeout: Duration,
}

impl GrpcConfig {
    /// A listener on `listen` with no tokens, no TLS and the default limits.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            billing_tokens: Vec::new(),
            admin_tokens: Vec::new(),
            tls: None,
            max_connections: default_grpc_max_connections(),
            header_read_timeout: default_grpc_header_read_timeout(),
            idle_timeout: default_grpc_idle_timeout(),
            write_timeout: default_grpc_write_timeout(),
        }
    }
}

fn default_grpc_max_connections() -> usize {
    256
}

fn default_grpc_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_grpc_idle_timeout() -> Duration {
    Duration::from_secs(300)
}

fn default_grpc_write_timeout() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcTlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the HTTP listener.
    pub listen: SocketAddr,
    /// TLS for the HTTP listener; plain HTTP when absent.
    pub tls: Option<TlsConfig>,
    /// Connections served at once; further connections wait in the accept queue.
    pub max_connections: usize,
    /// Largest request head (request line plus headers), in bytes.
    pub max_header_bytes: usize,
    /// Time a new connection has, from accept, to deliver its first complete
    /// request head (TLS handshake included), and an HTTP/1.1 request head
    /// has once it starts.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/1.1
    /// keep-alive between requests, HTTP/2 with no streams). While every
    /// connection slot is taken and a client waits, connections idle for a
    /// second are closed to make room.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A client that takes no bytes for this long is disconnected (slow reader).
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// On SIGTERM, in-flight responses get this long to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// On SIGTERM, `/readyz` answers 503 `draining` at once, and the gateway
    /// keeps accepting for this long before it stops and drains, so a load
    /// balancer's health check takes it out of rotation first (set it to the
    /// balancer's check interval times its fall count).
    #[serde(with = "humantime_serde", default)]
    pub drain_delay: Duration,
    /// Most ranges honoured in one multi-range request.
    pub max_ranges: usize,
    /// Peers whose `X-Forwarded-For` is believed (a load balancer's
    /// addresses, as CIDR blocks or single addresses). A request from one of
    /// them is logged and counted under the client address it forwarded;
    /// the header is ignored from any other peer.
    #[serde(default)]
    pub trusted_proxies: Vec<TrustedNet>,
}

/// A `server.trusted_proxies` entry: a CIDR block (`10.0.0.0/8`) or one
/// address (`10.0.0.7`, meaning `/32` or `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedNet(pub ipnet::IpNet);

impl std::str::FromStr for TrustedNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(n) = s.parse::<ipnet::IpNet>() {
            return Ok(Self(n.trunc()));
        }
        s.parse::<std::net::IpAddr>()
            .map(|a| Self(ipnet::IpNet::from(a)))
            .map_err(|_| format!("{s:?} is not an address or a CIDR block (10.0.0.0/8)"))
    }
}

impl Serialize for TrustedNet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TrustedNet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8088)),
            tls: None,
            max_connections: 4096,
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            drain_delay: Duration::ZERO,
            max_ranges: 64,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle for client certificates; when set, clients may present
    /// one and its names identify a tenant (`tenants[].cert_names`).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: `optional` (bearer keys still work) or `required`.
    #[serde(default)]
    pub client_auth: ClientAuth,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    Optional,
    Required,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustConfig {
    pub keys: Vec<String>,
}

/// A release to serve: its manifest and (for BTFS origins) its placement,
/// each a local path or `cid:<CID>` fetched from a `btfs-api` origin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSource {
    pub manifest: String,
    #[serde(default)]
    pub placement: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum OriginConfig {
    /// A BTFS node's RPC API: `POST {url}{api_prefix}/cat?arg=CID&offset=O&length=L`.
    BtfsApi {
        #[serde(default)]
        name: Option<String>,
        url: String,
        #[serde(default = "default_api_prefix")]
        api_prefix: String,
        #[serde(default)]
        token: Option<String>,
    },
    /// A BTFS HTTP gateway: `GET {url}{path_prefix}/CID` with `Range`.
    BtfsGateway {
        #[serde(default)]
        name: Option<String>,
        url: String,
        #[serde(default = "default_path_prefix")]
        path_prefix: String,
    },
    /// Local release directories written by `shardgate pack`: `path` is one
    /// release directory or a directory of them.
    Dir {
        #[serde(default)]
        name: Option<String>,
        path: PathBuf,
    },
}

fn default_api_prefix() -> String {
    crate::btfs::DEFAULT_API_PREFIX.into()
}

fn default_path_prefix() -> String {
    "/btfs".into()
}

impl OriginConfig {
    /// The origin's name in metrics and logs.
    pub fn name(&self, index: usize) -> String {
        let (given, kind) = match self {
            OriginConfig::BtfsApi { name, .. } => (name, "btfs-api"),
            OriginConfig::BtfsGateway { name, .. } => (name, "btfs-gateway"),
            OriginConfig::Dir { name, .. } => (name, "dir"),
        };
        given.clone().unwrap_or_else(|| format!("{kind}-{index}"))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FetchConfig {
    /// Bytes asked of an origin in one request (whole chunks), so cold sequential reads run at origin speed.
    pub span: ByteSize,
    /// Longest origin request a sequential reader drives (it is paced by the
    /// reader, so this bounds request count, not memory).
    pub max_span: ByteSize,
    /// Chunks fetched ahead of a reader.
    pub readahead_chunks: u32,
    /// Bulk origin requests in flight at once, across all clients.
    pub max_concurrent_fetches: usize,
    /// Verify chunks fetched from origins. Only for benchmarks: off means unverified bytes may be served.
    pub verify: bool,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time from sending a request to the origin's first body byte.
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// Longest pause between body bytes before the origin is abandoned.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// Outlier ejection: origins that keep failing are tried last for a while.
    pub outlier: OutlierConfig,
}

/// `[fetch.outlier]`: an origin that fails `consecutive_failures` times in a
/// row (errors, timeouts, stalls, bad bytes) is tried only after the others
/// for `base_ejection`, doubling with each ejection in a row up to
/// `max_ejection`; then one request probes it, and a good answer restores it.
/// Applied on reload.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierConfig {
    /// Failures in a row that eject an origin; 0 turns ejection off.
    pub consecutive_failures: u32,
    #[serde(with = "humantime_serde")]
    pub base_ejection: Duration,
    #[serde(with = "humantime_serde")]
    pub max_ejection: Duration,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self { consecutive_failures: 2, base_ejection: Duration::from_secs(10), max_ejection: Duration::from_secs(300) }
    }
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            span: ByteSize(4 * 1024 * 1024),
            max_span: ByteSize(256 * 1024 * 1024),
            readahead_chunks: 32,
            max_concurrent_fetches: 64,
            verify: true,
            connect_timeout: Duration::from_secs(3),
            first_byte_timeout: Duration::from_secs(15),
            stall_timeout: Duration::from_secs(15),
            outlier: OutlierConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HotTierConfig {
    /// Bytes of verified chunks kept in memory.
    pub capacity: ByteSize,
    /// Bytes of decrypted segments of encrypted files kept in memory, apart
    /// from `capacity` (0: every plaintext read decrypts). Never on disk.
    pub plaintext_capacity: ByteSize,
}

impl Default for HotTierConfig {
    fn default() -> Self {
        Self { capacity: ByteSize(1024 * 1024 * 1024), plaintext_capacity: ByteSize(256 * 1024 * 1024) }
    }
}

/// The disk tier: verified chunks on local disk, read back with verification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiskTierConfig {
    /// Directory of the tier. Unset: no disk tier.
    pub path: Option<PathBuf>,
    /// Bytes of chunks kept on disk (counted in 4 KiB blocks).
    pub capacity: ByteSize,
    /// Bytes of chunks waiting to be written; beyond it new chunks are not written.
    pub write_queue: ByteSize,
}

impl Default for DiskTierConfig {
    fn default() -> Self {
        Self { path: None, capacity: ByteSize(10 * 1024 * 1024 * 1024), write_queue: ByteSize(32 * 1024 * 1024) }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    /// Bytes of chunk tables and manifests cached.
    pub cache_capacity: ByteSize,
    /// Origin requests for metadata in flight at once (their own lane, never behind bulk fetches).
    pub max_concurrent_fetches: usize,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        Self { cache_capacity: ByteSize(256 * 1024 * 1024), max_concurrent_fetches: 16 }
    }
}

impl Config {
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            invalid(key, e.into_inner().message().to_string())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a config file; relative paths in it are resolved against its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut cfg = Self::from_toml(&text)?;
        if let Some(base) = path.parent() {
            cfg.resolve_paths(base);
        }
        Ok(cfg)
    }

    /// Makes relative file paths relative to `base` (the config file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let fix_str = |s: &mut String| {
            if !s.starts_with("cid:") && Path::new(s.as_str()).is_relative() {
                *s = base.join(s.as_str()).display().to_string();
            }
        };
        if let Some(tls) = &mut self.server.tls {
            fix(&mut tls.cert);
            fix(&mut tls.key);
            if let Some(ca) = &mut tls.client_ca {
                fix(ca);
            }
        }
        for k in &mut self.trust.keys {
            if !k.starts_with("ed25519:") {
                fix_str(k);
            }
        }
        for r in &mut self.releases {
            fix_str(&mut r.manifest);
            if let Some(p) = &mut r.placement {
                fix_str(p);
            }
        }
        for o in &mut self.origins {
            if let OriginConfig::Dir { path, .. } = o {
                fix(path);
            }
        }
        if let Some(l) = &mut self.usage.ledger {
            fix(l);
        }
        if let Some(p) = &mut self.usage.pricing {
            fix(p);
        }
        if let Some(p) = &mut self.registry.path {
            fix(p);
        }
        if let Some(tls) = self.grpc.as_mut().and_then(|g| g.tls.as_mut()) {
            fix(&mut tls.cert);
            fix(&mut tls.key);
        }
    }

    /// Checks values serde cannot: ranges, cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        count("server.max_connections", s.max_connections as u64, 1, MAX_CONNECTIONS)?;
        count("server.max_header_bytes", s.max_header_bytes as u64, 1024, 1024 * 1024)?;
        count("server.max_ranges", s.max_ranges as u64, 1, 10_000)?;
        let ms = Duration::from_millis;
        let hour = Duration::from_secs(3600);
        duration("server.header_read_timeout", s.header_read_timeout, ms(100), hour)?;
        duration("server.idle_timeout", s.idle_timeout, ms(100), 24 * hour)?;
        duration("server.write_timeout", s.write_timeout, ms(100), hour)?;
        duration("server.shutdown_grace", s.shutdown_grace, Duration::ZERO, hour)?;
        duration("server.drain_delay", s.drain_delay, Duration::ZERO, 10 * 60 * Duration::from_secs(1))?;
        duration("s3.max_skew", self.s3.max_skew, Duration::from_secs(1), 24 * hour)?;
        let p = &self.pin_health;
        duration("pin_health.interval", p.interval, Duration::from_secs(1), 7 * 24 * hour)?;
        duration("pin_health.timeout", p.timeout, ms(100), hour)?;
        duration("pin_health.repair_objective", p.repair_objective, Duration::from_secs(1), 365 * 24 * hour)?;
        for (i, n) in p.nodes.iter().chain(&p.spares).enumerate() {
            let key = if i < p.nodes.len() {
                format!("pin_health.nodes[{i}].url")
            } else {
                format!("pin_health.spares[{}].url", i - p.nodes.len())
            };
            check_url(&n.url).map_err(|w| invalid(&key, w))?;
            let id = n.url.trim_end_matches('/');
            if p.nodes.iter().chain(&p.spares).take(i).any(|m| m.url.trim_end_matches('/') == id) {
                return Err(invalid(&key, format!("{:?} is listed twice (nodes and spares are one set)", n.url)));
            }
        }
        if p.enabled && p.nodes.is_empty() {
            return Err(invalid("pin_health.nodes", "pin health is enabled but lists no node to check"));
        }
        if self.s3.region.is_empty() || !self.s3.region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(invalid("s3.region", format!("{:?} is not a region name", self.s3.region)));
        }
        for (i, d) in self.s3.domains.iter().enumerate() {
            if d.is_empty() || d.starts_with('.') || d.contains(':') || d.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(invalid(format!("s3.domains[{i}]"), format!("{d:?} is not a lowercase host name")));
            }
        }
        if let (Some(a), Some(b)) = (self.s3.listen, Some(self.server.listen))
            && a == b
            && a.port() != 0
        {
            return Err(invalid("s3.listen", format!("{a} is server.listen; S3 is already under /s3 there")));
        }
        let f = &self.fetch;
        duration("fetch.connect_timeout", f.connect_timeout, ms(1), hour)?;
        duration("fetch.first_byte_timeout", f.first_byte_timeout, ms(1), hour)?;
        duration("fetch.stall_timeout", f.stall_timeout, ms(1), hour)?;
        count("fetch.outlier.consecutive_failures", u64::from(f.outlier.consecutive_failures), 0, 1000)?;
        duration("fetch.outlier.base_ejection", f.outlier.base_ejection, ms(1), hour)?;
        duration("fetch.outlier.max_ejection", f.outlier.max_ejection, f.outlier.base_ejection, 24 * hour)?;
        count("fetch.readahead_chunks", u64::from(f.readahead_chunks), 0, 65_536)?;
        count("fetch.max_concurrent_fetches", f.max_concurrent_fetches as u64, 1, 100_000)?;
        count("metadata.max_concurrent_fetches", self.metadata.max_concurrent_fetches as u64, 1, 100_000)?;
        if let Some(g) = &self.grpc {
            count("grpc.max_connections", g.max_connections as u64, 1, MAX_CONNECTIONS)?;
            duration("grpc.header_read_timeout", g.header_read_timeout, ms(100), hour)?;
            duration("grpc.idle_timeout", g.idle_timeout, ms(100), 24 * hour)?;
            duration("grpc.write_timeout", g.write_timeout, ms(100), hour)?;
        }
        for (i, k) in self.trust.keys.iter().enumerate() {
            if k.starts_with("ed25519:") {
                k.parse::<PublicKey>().map_err(|e| invalid(format!("trust.keys[{i}]"), e.to_string()))?;
            }
        }
        if f.span.0 < DEFAULT_CHUNK_SIZE.min(64 * 1024) || f.span.0 > 256 * 1024 * 1024 {
            return Err(invalid("fetch.span", "must be between 64KiB and 256MiB"));
        }
        if f.max_span.0 < f.span.0 {
            return Err(invalid("fetch.max_span", "must be at least fetch.span"));
        }
        let d = &self.disk_tier;
        if d.path.is_some() && d.capacity.0 < 1024 * 1024 {
            return Err(invalid("disk_tier.capacity", "must be at least 1MiB"));
        }
        if d.path.is_some() && d.write_queue.0 < f.span.0.min(DEFAULT_CHUNK_SIZE) {
            return Err(invalid("disk_tier.write_queue", "must hold at least one chunk"));
        }
        for (i, o) in self.origins.iter().enumerate() {
            match o {
                OriginConfig::BtfsApi { url, api_prefix, .. } => {
                    check_url(url).map_err(|w| invalid(format!("origins[{i}].url"), w))?;
                    if !api_prefix.starts_with('/') {
                        return Err(invalid(format!("origins[{i}].api_prefix"), "must start with /"));
                    }
                }
                OriginConfig::BtfsGateway { url, path_prefix, .. } => {
                    check_url(url).map_err(|w| invalid(format!("origins[{i}].url"), w))?;
                    if !path_prefix.starts_with('/') {
                        return Err(invalid(format!("origins[{i}].path_prefix"), "must start with /"));
                    }
                }
                OriginConfig::Dir { .. } => {}
            }
        }
        Tenants::build(&self.tenants, &self.access).map_err(|e| match e {
            crate::tenant::TenantError::Invalid { index, key, why } => invalid(format!("tenants[{index}].{key}"), why),
            crate::tenant::TenantError::Access { key, why } => invalid(format!("access.{key}"), why),
        })?;
        let mut names = std::collections::BTreeSet::new();
        for (i, o) in self.origins.iter().enumerate() {
            if !names.insert(o.name(i)) {
                return Err(invalid(format!("origins[{i}].name"), format!("{:?} is used twice", o.name(i))));
            }
        }
        let u = &self.usage;
        if u.commit_interval.is_zero() || u.commit_interval > Duration::from_secs(3600) {
            return Err(invalid("usage.commit_interval", "must be between 1ms and 1h"));
        }
        duration("usage.retention", u.retention, hour, 100 * 365 * 24 * hour)?;
        if let Some(id) = &u.instance_id
            && (id.is_empty()
                || id.len() > 128
                || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
        {
            return Err(invalid("usage.instance_id", format!("{id:?} must be 1-128 letters, digits, - _ .")));
        }
        if let Some(g) = &self.grpc {
            if g.billing_tokens.is_empty() && g.admin_tokens.is_empty() {
                return Err(invalid(
                    "grpc.billing_tokens",
                    "a billing or admin token is required: the gRPC APIs are never open \
                     (make one with `shardgate usage token` or `shardgate release token`)",
                ));
            }
            for (key, list) in [("billing_tokens", &g.billing_tokens), ("admin_tokens", &g.admin_tokens)] {
                for (i, t) in list.iter().enumerate() {
                    crate::tenant::parse_key_hash(t).map_err(|w| invalid(format!("grpc.{key}[{i}]"), w))?;
                }
            }
        }
        for (i, t) in self.reports.finance_tokens.iter().enumerate() {
            crate::tenant::parse_key_hash(t).map_err(|w| invalid(format!("reports.finance_tokens[{i}]"), w))?;
        }
        for (key, d) in [
            ("reports.manifest_p99_objective", self.reports.manifest_p99_objective),
            ("reports.file_ttfb_p99_objective", self.reports.file_ttfb_p99_objective),
        ] {
            if d.is_zero() || d > Duration::from_secs(600) {
                return Err(invalid(key, "must be between 1ms and 10m"));
            }
        }
        duration("reports.peer_timeout", self.reports.peer_timeout, ms(100), Duration::from_secs(600))?;
        for (i, url) in self.reports.peers.iter().enumerate() {
            let key = format!("reports.peers[{i}]");
            check_url(url).map_err(|w| invalid(&key, w))?;
            let u = reqwest::Url::parse(url).map_err(|e| invalid(&key, e.to_string()))?;
            if !u.username().is_empty() || u.password().is_some() || u.query().is_some() || u.fragment().is_some() {
                return Err(invalid(
                    &key,
                    format!(
                        "{url:?} must be a base URL with no user, password, query or fragment (it is shown on the dashboard)"
                    ),
                ));
            }
            let id = url.trim_end_matches('/');
            if self.reports.peers.iter().take(i).any(|u| u.trim_end_matches('/') == id) {
                return Err(invalid(&key, format!("{url:?} is listed twice")));
            }
        }
        if !self.reports.peers.is_empty() && self.reports.peer_token_file.is_none() {
            return Err(invalid(
                "reports.peer_token_file",
                "reports.peers is set, so a finance token for the peers is needed (a file holding it)",
            ));
        }
        for (i, r) in self.releases.iter().enumerate() {
            if r.manifest.is_empty() {
                return Err(invalid(format!("releases[{i}].manifest"), "is empty"));
            }
        }
        Ok(())
    }
}

/// Keys a reload cannot apply: listeners, the fetcher's and tiers' shapes,
/// stores. Origin timeouts (`fetch.*_timeout`) are rebuilt with the origins
/// and `usage.pricing` is re-read, so those reload.
const RESTART_ONLY: &[&str] =
    &["server", "grpc", "fetch", "hot_tier", "disk_tier", "metadata", "usage", "registry", "s3", "pin_health"];
const RELOADABLE: &[&str] = &[
    "fetch.connect_timeout",
    "fetch.first_byte_timeout",
    "fetch.stall_timeout",
    "fetch.outlier",
    "usage.pricing",
    "s3.domains",
    "s3.region",
    "s3.credentials",
    "s3.max_skew",
];

impl Config {
    /// The restart-only keys whose values differ in `new`, by full name
    /// (such as `fetch.verify`). A reload that would change one is refused,
    /// so the config a gateway reports is always the one in force.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<String> {
        let (Ok(a), Ok(b)) = (serde_json::to_value(self), serde_json::to_value(new)) else {
            return vec!["(config could not be compared)".into()];
        };
        let mut changed = Vec::new();
        for section in RESTART_ONLY {
            diff_keys(section, a.get(section), b.get(section), &mut changed);
        }
        changed.retain(|k| !RELOADABLE.iter().any(|r| k == r || k.starts_with(&format!("{r}."))));
        changed
    }
}

/// Collects the dotted names of leaves that differ between `a` and `b`.
fn diff_keys(path: &str, a: Option<&serde_json::Value>, b: Option<&serde_json::Value>, out: &mut Vec<String>) {
    use serde_json::Value;
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                diff_keys(&format!("{path}.{k}"), x.get(k), y.get(k), out);
            }
        }
        (x, y) if x != y => out.push(path.to_string()),
        _ => {}
    }
}

/// Most connections a listener may hold (a semaphore's permits, file descriptors).
const MAX_CONNECTIONS: u64 = 1_000_000;

/// A whole number key within `min..=max`.
fn count(key: &str, n: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if n < min || n > max {
        return Err(invalid(key, format!("{n} must be between {min} and {max}")));
    }
    Ok(())
}

/// A duration key within `min..=max`.
fn duration(key: &str, d: Duration, min: Duration, max: Duration) -> Result<(), ConfigError> {
    if d < min || d > max {
        let show = |d: Duration| humantime_serde::re::humantime::format_duration(d).to_string();
        return Err(invalid(key, format!("{} must be between {} and {}", show(d), show(min), show(max))));
    }
    Ok(())
}

fn check_url(url: &str) -> Result<(), String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(format!("{url:?} must be http or https"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
