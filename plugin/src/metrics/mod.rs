//! Prometheus metrics for the gateway, rendered in the text format at `/metrics`.
//!
//! Owns metric definitions only; the code paths that count call into it.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OriginLabel {
    pub origin: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// `hot` (hot tier) or `origin`.
    pub source: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    pub tenant: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReleaseLabel {
    /// `name@version`.
    pub release: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` or `failed`.
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// `http` or `grpc`.
    pub listener: &'static str,
    /// `header_timeout`, `idle` or `pressure`.
    pub reason: &'static str,
}

/// Response latencies kept finely enough for a p99 on the dashboard:
/// buckets grow by 10% from 100 µs, so a quantile is read to within 10%.
pub struct Latency {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
}

const LATENCY_BUCKETS: usize = 160;

/// Buckets of the response histograms exported to Prometheus: 0.5 ms to
/// 16 s, doubling (a fleet p99 is read from them to within a factor of 2;
/// the dashboard's own quantiles come from the finer [`Latency`]).
const RESPONSE_BUCKETS: [f64; 16] =
    [0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192, 16.384];
const LATENCY_BASE_SECS: f64 = 0.0001;
const LATENCY_GROWTH: f64 = 1.1;

impl Default for Latency {
    fn default() -> Self {
        Self { buckets: (0..LATENCY_BUCKETS).map(|_| AtomicU64::new(0)).collect(), count: AtomicU64::new(0) }
    }
}

impl std::fmt::Debug for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Latency").field("count", &self.count()).finish()
    }
}

impl Latency {
    fn upper(i: usize) -> f64 {
        LATENCY_BASE_SECS * LATENCY_GROWTH.powi(i as i32)
    }

    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        let i = if s <= LATENCY_BASE_SECS {
            0
        } else {
            ((s / LATENCY_BASE_SECS).ln() / LATENCY_GROWTH.ln()).ceil() as usize
        };
        self.buckets[i.min(LATENCY_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1), in
    /// seconds; `None` before any observation.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::upper(i));
            }
        }
        Some(Self::upper(LATENCY_BUCKETS - 1))
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub chunks_verified: Counter,
    pub verify_failures: Family<OriginLabel, Counter>,
    pub origin_errors: Family<OriginLabel, Counter>,
    pub origin_requests: Family<OriginLabel, Counter>,
    pub origin_bytes: Family<OriginLabel, Counter>,
    pub origin_first_byte_seconds: Family<OriginLabel, Histogram, fn() -> Histogram>,
    /// 0 healthy, 1 ejected, 2 probing (outlier ejection).
    pub origin_state: Family<OriginLabel, Gauge>,
    pub origin_ejections: Family<OriginLabel, Counter>,
    pub served_bytes: Family<SourceLabel, Counter>,
    pub hot_hits: Counter,
    /// Plaintext segments served from the plaintext tier (no decryption).
    pub plain_tier_hits: Counter,
    pub plain_tier_bytes: Gauge<u64, AtomicU64>,
    pub hot_misses: Counter,
    pub hot_bytes: Gauge<u64, AtomicU64>,
    pub requests: Family<RequestLabel, Counter>,
    pub aborted: Family<ReasonLabel, Counter>,
    pub connections: Gauge,
    pub grpc_connections: Gauge,
    pub connections_closed: Family<ListenerLabel, Counter>,
    pub releases: Gauge,
    pub releases_unloaded: Gauge,
    /// 1 when chunks from origins are verified, 0 with `fetch.verify = false`.
    pub verification: Gauge,
    pub reloads: Family<ReasonLabel, Counter>,
    pub usage_commits: Family<ReasonLabel, Counter>,
    pub hot_purged_files: Counter,
    pub disk_hits: Counter,
    /// Chunks read back from the disk tier that the hot tier did not admit.
    pub disk_promotions_refused: Counter,
    pub disk_table_hits: Counter,
    pub disk_verify_failures: Counter,
    pub disk_bytes: Gauge<u64, AtomicU64>,
    pub disk: crate::tier::DiskCounters,
    /// Chunks that failed verification, from origins and the disk tier.
    pub checksum_failures: Counter,
    /// Time to the response head of manifest requests answered 200 or 304.
    pub manifest_latency: Latency,
    /// Time to the response head of file requests answered 200, 206 or
    /// 304: the first chunk is fetched and verified before the head goes out.
    pub file_first_byte: Latency,
    /// Pin health: blobs of a release held by fewer healthy nodes than its replication target.
    pub pin_under_replicated: Family<ReleaseLabel, Gauge>,
    /// Pin health: repairs (a lost blob verified and pinned again, or placed on a spare).
    pub pin_repairs: Family<ResultLabel, Counter>,
    /// Pin health: block samples (one chunk read back from a node and verified) by result.
    pub pin_samples: Family<ResultLabel, Counter>,
    /// Pin health: seconds from a loss being detected to its repair.
    pub pin_repair_seconds: Histogram,
    /// Manifest answers (200/304), seconds: for a fleet-wide p99 in Prometheus.
    pub manifest_seconds: Histogram,
    /// File and S3 object answers (200/206/304), seconds to the response head
    /// (the first chunk is verified before it goes out).
    pub file_first_byte_seconds: Histogram,
    /// Body bytes billed per tenant since start (set from the meter at each scrape).
    pub tenant_bytes: Family<TenantLabel, Counter>,
    /// Distinct client addresses per tenant in the last full minute (set at each scrape).
    pub tenant_clients: Family<TenantLabel, Gauge>,
    /// Pin health: nodes that did not answer in the last round.
    pub pin_nodes_unreachable: Gauge,
    /// When these counts started.
    pub since: i64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("shardgate");
        let m = Metrics {
            chunks_verified: Counter::default(),
            verify_failures: Family::default(),
            origin_errors: Family::default(),
            origin_requests: Family::default(),
            origin_bytes: Family::default(),
            origin_first_byte_seconds: Family::new_with_constructor(latency_histogram),
            origin_state: Family::default(),
            origin_ejections: Family::default(),
            served_bytes: Family::default(),
            hot_hits: Counter::default(),
            plain_tier_hits: Counter::default(),
            plain_tier_bytes: Gauge::default(),
            hot_misses: Counter::default(),
            hot_bytes: Gauge::default(),
            requests: Family::default(),
            aborted: Family::default(),
            connections: Gauge::default(),
            grpc_connections: Gauge::default(),
            connections_closed: Family::default(),
            releases: Gauge::default(),
            releases_unloaded: Gauge::default(),
            pin_under_replicated: Family::default(),
            pin_repairs: Family::default(),
            pin_samples: Family::default(),
            pin_repair_seconds: Histogram::new([1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4.0 * 3600.0, 24.0 * 3600.0]),
            manifest_seconds: Histogram::new(RESPONSE_BUCKETS),
            file_first_byte_seconds: Histogram::new(RESPONSE_BUCKETS),
            tenant_bytes: Family::default(),
            tenant_clients: Family::default(),
            pin_nodes_unreachable: Gauge::default(),
            verification: Gauge::default(),
            reloads: Family::default(),
            usage_commits: Family::default(),
            hot_purged_files: Counter::default(),
            disk_hits: Counter::default(),
            disk_promotions_refused: Counter::default(),
            disk_table_hits: Counter::default(),
            disk_verify_failures: Counter::default(),
            disk_bytes: Gauge::default(),
            disk: crate::tier::DiskCounters::default(),
            checksum_failures: Counter::default(),
            manifest_latency: Latency::default(),
            file_first_byte: Latency::default(),
            since: crate::usage::unix_now(),
            registry: Registry::default(),
        };
        registry.register("chunks_verified", "Chunks whose hash matched the chunk table", m.chunks_verified.clone());
        registry.register(
            "chunk_verify_failures",
            "Chunks from an origin that failed verification",
            m.verify_failures.clone(),
        );
        registry.register(
            "origin_errors",
            "Origin requests that failed (connect, status, timeout, short body)",
            m.origin_errors.clone(),
        );
        registry.register("origin_requests", "Requests sent to origins", m.origin_requests.clone());
        registry.register("origin_fetched_bytes", "Bytes received from origins", m.origin_bytes.clone());
        registry.register(
            "origin_first_byte_seconds",
            "Time from sending an origin request to its first body bytes",
            m.origin_first_byte_seconds.clone(),
        );
        registry.register(
            "origin_state",
            "Outlier ejection: 0 healthy, 1 ejected (tried only after the others), 2 probing",
            m.origin_state.clone(),
        );
        registry.register(
            "origin_ejections",
            "Times an origin was ejected after failures in a row",
            m.origin_ejections.clone(),
        );
        registry.register("served_bytes", "Verified body bytes written to clients, by source", m.served_bytes.clone());
        registry.register("hot_tier_hits", "Chunk lookups served by the hot tier", m.hot_hits.clone());
        registry.register("hot_tier_misses", "Chunk lookups that went to an origin", m.hot_misses.clone());
        registry.register("hot_tier_bytes", "Bytes held in the hot tier", m.hot_bytes.clone());
        registry.register(
            "plain_tier_hits",
            "Plaintext segments of encrypted files served without decrypting",
            m.plain_tier_hits.clone(),
        );
        registry.register("plain_tier_bytes", "Bytes of decrypted segments held in memory", m.plain_tier_bytes.clone());
        registry.register("disk_tier_hits", "Hot-tier misses served by the disk tier", m.disk_hits.clone());
        registry.register(
            "disk_tier_promotions_refused",
            "Chunks read back from the disk tier and not admitted to the hot tier (asked for less than the last chunk evicted from it)",
            m.disk_promotions_refused.clone(),
        );
        registry.register(
            "disk_tier_table_hits",
            "Chunk tables read back from the disk tier and verified, instead of fetched from an origin",
            m.disk_table_hits.clone(),
        );
        registry.register(
            "disk_tier_verify_failures",
            "Chunks and chunk tables read back from the disk tier that failed verification (dropped, fetched again)",
            m.disk_verify_failures.clone(),
        );
        registry.register("disk_tier_bytes", "Bytes held in the disk tier (4 KiB blocks)", m.disk_bytes.clone());
        registry.register("disk_tier_writes", "Chunks written to the disk tier", m.disk.writes.clone());
        registry.register(
            "disk_tier_writes_dropped",
            "Chunks not written to the disk tier because its write queue was full",
            m.disk.dropped.clone(),
        );
        registry.register("disk_tier_errors", "Disk tier writes or deletions that failed", m.disk.errors.clone());
        registry.register(
            "disk_tier_evictions",
            "Chunks removed from the disk tier to keep its budget",
            m.disk.evictions.clone(),
        );
        registry.register("http_requests", "HTTP requests answered, by route and status", m.requests.clone());
        registry.register("responses_aborted", "Responses cut off after headers were sent", m.aborted.clone());
        registry.register("open_connections", "Client connections open", m.connections.clone());
        registry.register("grpc_open_connections", "gRPC client connections open", m.grpc_connections.clone());
        registry.register(
            "connections_closed",
            "Connections the server closed because they held a slot without a request, by listener and reason",
            m.connections_closed.clone(),
        );
        registry.register("releases_served", "Releases in the catalog", m.releases.clone());
        registry.register(
            "releases_unloaded",
            "Configured or registered releases that could not be loaded (retried in the background)",
            m.releases_unloaded.clone(),
        );
        registry.register(
            "pin_under_replicated_blobs",
            "Blobs of a release pinned on fewer healthy nodes than its replication target (pin health)",
            m.pin_under_replicated.clone(),
        );
        registry.register(
            "pin_repairs",
            "Pin repairs by result: a lost blob read from a node that still has it, verified, and pinned again",
            m.pin_repairs.clone(),
        );
        registry.register(
            "pin_samples",
            "Pin-health block samples by result: one random chunk read back from a node and verified",
            m.pin_samples.clone(),
        );
        registry.register(
            "manifest_seconds",
            "Seconds to answer a manifest request (200 or 304)",
            m.manifest_seconds.clone(),
        );
        registry.register(
            "file_first_byte_seconds",
            "Seconds to the response head of a file or S3 object (200, 206 or 304), its first chunk verified",
            m.file_first_byte_seconds.clone(),
        );
        registry.register(
            "tenant_bytes",
            "Body bytes billed to each tenant since the gateway started (closed responses; usage metering on)",
            m.tenant_bytes.clone(),
        );
        registry.register(
            "tenant_clients",
            "Distinct client addresses admitted per tenant in the last full minute (forwarded ones from server.trusted_proxies)",
            m.tenant_clients.clone(),
        );
        registry.register(
            "pin_repair_seconds",
            "Seconds from a lost pin being detected to its repair",
            m.pin_repair_seconds.clone(),
        );
        registry.register(
            "pin_nodes_unreachable",
            "Nodes that did not answer the last pin-health round",
            m.pin_nodes_unreachable.clone(),
        );
        registry.register(
            "verification_enabled",
            "1 when chunks from origins are verified; 0 when fetch.verify = false (unverified bytes may be served)",
            m.verification.clone(),
        );
        registry.register("config_reloads", "Config reloads by outcome", m.reloads.clone());
        registry.register("usage_commits", "Usage ledger commits by outcome", m.usage_commits.clone());
        registry.register(
            "hot_tier_purged_files",
            "Files dropped from the hot tier because their releases were taken down",
            m.hot_purged_files.clone(),
        );
        registry.register(
            "checksum_failures",
            "Chunks that failed verification, from origins and the disk tier",
            m.checksum_failures.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The counters of a listener's connections.
    pub fn listener(&self, grpc: bool) -> crate::listener::ListenerMetrics {
        let open = if grpc { self.grpc_connections.clone() } else { self.connections.clone() };
        crate::listener::ListenerMetrics { open, closed: self.connections_closed.clone() }
    }

    pub fn origin(name: &str) -> OriginLabel {
        OriginLabel { origin: name.to_string() }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
