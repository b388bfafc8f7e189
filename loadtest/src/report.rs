//! Counting while the run goes (for the progress line and the request
//! budget), and the final report: a table for people, JSON for scripts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::targets::Targets;
use crate::worker::{Pattern, WorkerStats};

/// Counters every worker shares.
#[derive(Debug)]
pub struct Shared {
    taken: AtomicU64,
    limit: Option<u64>,
    bytes: AtomicU64,
    errors: AtomicU64,
}

impl Shared {
    pub fn new(limit: Option<u64>) -> Self {
        Self { taken: AtomicU64::new(0), limit, bytes: AtomicU64::new(0), errors: AtomicU64::new(0) }
    }

    /// Takes one request from the budget.
    pub fn take(&self) -> bool {
        let n = self.taken.fetch_add(1, Ordering::Relaxed);
        self.limit.is_none_or(|l| n < l)
    }

    pub fn done(&self) -> bool {
        self.limit.is_some_and(|l| self.taken.load(Ordering::Relaxed) >= l)
    }

    pub fn bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The progress line, rewritten in place on stderr.
    pub fn progress(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64().max(1e-3);
        let bytes = self.bytes.load(Ordering::Relaxed);
        let taken = self.taken.load(Ordering::Relaxed);
        let taken = self.limit.map_or(taken, |l| taken.min(l));
        eprint!(
            "\r{:6.1} s  {:8} requests  {:9.1} MB/s  {} errors   ",
            secs,
            taken,
            bytes as f64 / secs / 1e6,
            self.errors.load(Ordering::Relaxed)
        );
    }
}

/// Cache counters from a shardgate `/metrics`.
#[derive(Debug, Clone, Copy)]
pub struct CacheCounters {
    /// Chunk lookups answered from memory or disk, and those that went to an origin.
    pub hits: f64,
    pub misses: f64,
    /// Body bytes served from chunks that were cached when the response
    /// began, and from chunks that were not.
    pub hot_bytes: f64,
    pub origin_bytes: f64,
}

/// Cache counters from a shardgate `/metrics`, if the target is one.
pub async fn scrape(client: &reqwest::Client, base: &str) -> Option<CacheCounters> {
    let text = client.get(format!("{base}/metrics")).send().await.ok()?.text().await.ok()?;
    let get = |name: &str| {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    text.contains("shardgate_hot_tier_hits_total").then(|| CacheCounters {
        hits: get("shardgate_hot_tier_hits_total"),
        misses: get("shardgate_hot_tier_misses_total"),
        hot_bytes: get("shardgate_served_bytes_total{source=\"hot\"}"),
        origin_bytes: get("shardgate_served_bytes_total{source=\"origin\"}"),
    })
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(h: &hdrhistogram::Histogram<u64>) -> Self {
        let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
        Self { p50_ms: q(0.5), p90_ms: q(0.9), p99_ms: q(0.99), p999_ms: q(0.999), max_ms: h.max() as f64 / 1000.0 }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub pattern: Pattern,
    pub files: usize,
    pub seconds: f64,
    pub requests: u64,
    pub bytes: u64,
    pub mb_per_s: f64,
    pub requests_per_s: f64,
    pub ttfb: Latency,
    pub latency: Latency,
    pub errors: BTreeMap<String, u64>,
    /// Seconds each worker spent waiting with no bytes (pauses over 50 ms).
    pub stall_seconds: Vec<f64>,
    /// The target's hot-tier hit ratio over the run, when it is shardgate:
    /// chunk lookups. A miss fetches the rest of its range in one origin
    /// request, and the request's next lookups hit what it fetched, so this
    /// overstates what the cache saved; see `cached_byte_ratio`.
    pub hot_tier_hit_ratio: Option<f64>,
    /// The share of body bytes the target served from chunks that were
    /// already cached (memory or disk) when the response began.
    pub cached_byte_ratio: Option<f64>,
    /// Set when the server answered ranges wrongly.
    pub range_warning: Option<String>,
}

impl Report {
    pub fn build(
        pattern: &Pattern,
        targets: &Targets,
        elapsed: Duration,
        workers: Vec<WorkerStats>,
        before: Option<CacheCounters>,
        after: Option<CacheCounters>,
    ) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-6);
        let mut ttfb =
            hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
        let mut total = ttfb.clone();
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        let (mut requests, mut bytes) = (0, 0);
        let mut stall_seconds = Vec::new();
        for w in &workers {
            requests += w.requests;
            bytes += w.bytes;
            let _ = ttfb.add(&w.ttfb);
            let _ = total.add(&w.total);
            for (k, v) in &w.errors {
                *errors.entry(k.to_string()).or_default() += v;
            }
            stall_seconds.push((w.stall.as_secs_f64() * 1000.0).round() / 1000.0);
        }
        let share = |part: fn(&CacheCounters) -> f64, rest: fn(&CacheCounters) -> f64| match (before, after) {
            (Some(b), Some(a)) => {
                let (p, r) = (part(&a) - part(&b), rest(&a) - rest(&b));
                (p + r > 0.0).then(|| p / (p + r))
            }
            _ => None,
        };
        let hot_tier_hit_ratio = share(|c| c.hits, |c| c.misses);
        let cached_byte_ratio = share(|c| c.hot_bytes, |c| c.origin_bytes);
        let range_bad: u64 = ["range_ignored", "bad_content_range"].iter().filter_map(|k| errors.get(*k)).sum();
        let range_warning = (range_bad > 0).then(|| {
            format!(
                "the server mishandles HTTP ranges ({range_bad} answers): loaders will read whole files or wrong bytes"
            )
        });
        Report {
            pattern: *pattern,
            files: targets.files.len(),
            seconds: secs,
            requests,
            bytes,
            mb_per_s: bytes as f64 / secs / 1e6,
            requests_per_s: requests as f64 / secs,
            ttfb: Latency::of(&ttfb),
            latency: Latency::of(&total),
            errors,
            stall_seconds,
            hot_tier_hit_ratio,
            cached_byte_ratio,
            range_warning,
        }
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        s += &format!("pattern        {:?} over {} files, {:.1} s\n", self.pattern, self.files, self.seconds);
        s += &format!(
            "throughput     {:.1} MB/s, {:.1} requests/s ({} requests, {} bytes)\n",
            self.mb_per_s, self.requests_per_s, self.requests, self.bytes
        );
        s += "               p50       p90       p99       p99.9     max (ms)\n";
        for (name, l) in [("first byte", &self.ttfb), ("total", &self.latency)] {
            s += &format!(
                "{name:<14} {:<9.2} {:<9.2} {:<9.2} {:<9.2} {:.2}\n",
                l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
            );
        }
        let stall: Vec<String> = self.stall_seconds.iter().map(|s| format!("{s:.2}")).collect();
        s += &format!("stall (s)      per worker: {}\n", stall.join(" "));
        if let Some(r) = self.hot_tier_hit_ratio {
            s += &format!("hot tier       {:.1}% of chunk lookups hit", r * 100.0);
            if let Some(b) = self.cached_byte_ratio {
                s += &format!(", {:.1}% of bytes served from cache", b * 100.0);
            }
            s += "\n";
        }
        if self.errors.is_empty() {
            s += "errors         none\n";
        } else {
            let e: Vec<String> = self.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
            s += &format!("errors         {}\n", e.join(", "));
        }
        if let Some(w) = &self.range_warning {
            s += &format!("WARNING        {w}\n");
        }
        s
    }
}
