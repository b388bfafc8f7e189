//! Prometheus metrics for the gateway, rendered in the text format at `/metrics`.
//!
//! Owns metric definitions only; the code paths that count call into it.

use std::sync::atomic::AtomicU64;

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
pub struct RequestLabel {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
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
    pub served_bytes: Family<SourceLabel, Counter>,
    pub hot_hits: Counter,
    pub hot_misses: Counter,
    pub hot_bytes: Gauge<u64, AtomicU64>,
    pub requests: Family<RequestLabel, Counter>,
    pub aborted: Family<ReasonLabel, Counter>,
    pub connections: Gauge,
    pub releases: Gauge,
    pub reloads: Family<ReasonLabel, Counter>,
    pub usage_commits: Family<ReasonLabel, Counter>,
    pub hot_purged_files: Counter,
    pub disk_hits: Counter,
    pub disk_verify_failures: Counter,
    pub disk_bytes: Gauge<u64, AtomicU64>,
    pub disk: crate::tier::DiskCounters,
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
            served_bytes: Family::default(),
            hot_hits: Counter::default(),
            hot_misses: Counter::default(),
            hot_bytes: Gauge::default(),
            requests: Family::default(),
            aborted: Family::default(),
            connections: Gauge::default(),
            releases: Gauge::default(),
            reloads: Family::default(),
            usage_commits: Family::default(),
            hot_purged_files: Counter::default(),
            disk_hits: Counter::default(),
            disk_verify_failures: Counter::default(),
            disk_bytes: Gauge::default(),
            disk: crate::tier::DiskCounters::default(),
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
        registry.register("served_bytes", "Verified body bytes written to clients, by source", m.served_bytes.clone());
        registry.register("hot_tier_hits", "Chunk lookups served by the hot tier", m.hot_hits.clone());
        registry.register("hot_tier_misses", "Chunk lookups that went to an origin", m.hot_misses.clone());
        registry.register("hot_tier_bytes", "Bytes held in the hot tier", m.hot_bytes.clone());
        registry.register("disk_tier_hits", "Hot-tier misses served by the disk tier", m.disk_hits.clone());
        registry.register(
            "disk_tier_verify_failures",
            "Chunks read back from the disk tier that failed verification (dropped, fetched again)",
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
        registry.register("releases_served", "Releases in the catalog", m.releases.clone());
        registry.register("config_reloads", "Config reloads by outcome", m.reloads.clone());
        registry.register("usage_commits", "Usage ledger commits by outcome", m.usage_commits.clone());
        registry.register(
            "hot_tier_purged_files",
            "Files dropped from the hot tier because their releases were taken down",
            m.hot_purged_files.clone(),
        );
        Metrics { registry, ..m }
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
