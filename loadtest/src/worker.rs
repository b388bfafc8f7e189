//! A worker: one loader with `connections` concurrent request loops.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use reqwest::header;

use crate::report::Shared;
use crate::targets::{Target, Targets};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// Whole-file sequential GETs.
    Webdataset,
    /// HEAD, then ranged reads of --request-size at random offsets.
    Fsspec,
    /// A 64 KiB suffix read, then column-chunk ranges.
    Parquet,
    /// One of the three per file visit.
    Mixed,
}

pub struct Config {
    pub client: reqwest::Client,
    pub targets: Targets,
    pub pattern: Pattern,
    pub zipf: f64,
    pub request_size: u64,
    pub key: Option<String>,
    pub seed: u64,
    pub connections: usize,
}

/// A body pause longer than this counts as stall time.
const STALL: Duration = Duration::from_millis(50);

/// What one worker saw.
#[derive(Debug)]
pub struct WorkerStats {
    pub requests: u64,
    pub bytes: u64,
    pub stall: Duration,
    pub errors: BTreeMap<&'static str, u64>,
    /// Microseconds.
    pub ttfb: Histogram<u64>,
    pub total: Histogram<u64>,
}

impl WorkerStats {
    fn new() -> Self {
        // 1 µs to an hour at 3 significant digits: fixed, valid bounds.
        let h = || Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
        Self { requests: 0, bytes: 0, stall: Duration::ZERO, errors: BTreeMap::new(), ttfb: h(), total: h() }
    }

    fn merge(&mut self, o: WorkerStats) {
        self.requests += o.requests;
        self.bytes += o.bytes;
        self.stall += o.stall;
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        let _ = self.ttfb.add(&o.ttfb);
        let _ = self.total.add(&o.total);
    }
}

/// The range a request asks for.
#[derive(Debug, Clone, Copy)]
enum Want {
    Whole,
    Range(u64, u64),
    Suffix(u64),
}

struct Loop {
    cfg: Arc<Config>,
    rng: StdRng,
    zipf: Option<Zipf<f64>>,
    stats: WorkerStats,
}

impl Loop {
    fn pick(&mut self) -> Target {
        let files = &self.cfg.targets.files;
        let i = match &self.zipf {
            Some(z) => (z.sample(&mut self.rng) as usize).saturating_sub(1).min(files.len() - 1),
            None => self.rng.random_range(0..files.len()),
        };
        files[i].clone()
    }

    fn error(&mut self, kind: &'static str, shared: &Shared) {
        *self.stats.errors.entry(kind).or_default() += 1;
        shared.error();
    }

    /// One request; false when the request budget is spent.
    async fn request(&mut self, t: &Target, head: bool, want: Want, shared: &Shared) -> bool {
        if !shared.take() {
            return false;
        }
        let (expect_start, expect_len) = match want {
            Want::Whole => (0, t.size),
            Want::Range(a, n) => (a, n),
            Want::Suffix(n) => (t.size - n.min(t.size), n.min(t.size)),
        };
        let mut req = if head { self.cfg.client.head(&t.url) } else { self.cfg.client.get(&t.url) };
        if let Some(k) = &self.cfg.key {
            req = req.bearer_auth(k);
        }
        match want {
            Want::Whole => {}
            Want::Range(a, n) => req = req.header(header::RANGE, format!("bytes={a}-{}", a + n - 1)),
            Want::Suffix(n) => req = req.header(header::RANGE, format!("bytes=-{n}")),
        }
        let t0 = Instant::now();
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                self.error(
                    if e.is_connect() {
                        "connect"
                    } else if e.is_timeout() {
                        "timeout"
                    } else {
                        "request"
                    },
                    shared,
                );
                return true;
            }
        };
        self.stats.requests += 1;
        let status = resp.status();
        if status.is_client_error() || status.is_server_error() {
            self.error(if status.is_client_error() { "status_4xx" } else { "status_5xx" }, shared);
            return true;
        }
        let ranged = !matches!(want, Want::Whole) && !head;
        if ranged {
            if status.as_u16() != 206 {
                // The server sent the whole file for a range: a loader would read far too much.
                self.error("range_ignored", shared);
                return true;
            }
            let want_cr = format!("bytes {}-{}/{}", expect_start, expect_start + expect_len - 1, t.size);
            if resp.headers().get(header::CONTENT_RANGE).and_then(|v| v.to_str().ok()) != Some(want_cr.as_str()) {
                self.error("bad_content_range", shared);
                return true;
            }
        }
        if head {
            let len = resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if len != Some(t.size) {
                self.error("bad_content_length", shared);
            }
            let us = t0.elapsed().as_micros() as u64;
            let _ = self.stats.ttfb.record(us.max(1));
            let _ = self.stats.total.record(us.max(1));
            return true;
        }
        let mut body = resp.bytes_stream();
        let mut got = 0u64;
        let mut last = t0;
        let mut first = None;
        while let Some(piece) = body.next().await {
            let now = Instant::now();
            let gap = now - last;
            if gap > STALL {
                self.stats.stall += gap;
            }
            last = now;
            match piece {
                Ok(b) => {
                    if first.is_none() {
                        first = Some(now - t0);
                    }
                    got += b.len() as u64;
                    shared.bytes(b.len() as u64);
                }
                Err(_) => {
                    self.stats.bytes += got;
                    self.error("body_cut", shared);
                    return true;
                }
            }
        }
        self.stats.bytes += got;
        if got != expect_len {
            self.error("short_body", shared);
            return true;
        }
        let _ = self.stats.ttfb.record((first.unwrap_or_else(|| t0.elapsed()).as_micros() as u64).max(1));
        let _ = self.stats.total.record((t0.elapsed().as_micros() as u64).max(1));
        true
    }

    fn offset(&mut self, size: u64, len: u64) -> u64 {
        if size <= len { 0 } else { self.rng.random_range(0..=size - len) }
    }

    /// One file visit in `pattern`; false when the budget is spent.
    async fn visit(&mut self, pattern: Pattern, shared: &Shared) -> bool {
        let t = self.pick();
        let pattern = match pattern {
            Pattern::Mixed => [Pattern::Webdataset, Pattern::Fsspec, Pattern::Parquet][self.rng.random_range(0..3)],
            p => p,
        };
        match pattern {
            Pattern::Webdataset | Pattern::Mixed => self.request(&t, false, Want::Whole, shared).await,
            Pattern::Fsspec => {
                if !self.request(&t, true, Want::Whole, shared).await {
                    return false;
                }
                for _ in 0..2 {
                    let n = self.cfg.request_size.min(t.size);
                    let a = self.offset(t.size, n);
                    if !self.request(&t, false, Want::Range(a, n), shared).await {
                        return false;
                    }
                }
                true
            }
            Pattern::Parquet => {
                if !self.request(&t, false, Want::Suffix(64 * 1024), shared).await {
                    return false;
                }
                for _ in 0..3 {
                    let n = (self.cfg.request_size / 4).max(1).min(t.size);
                    let a = self.offset(t.size, n);
                    if !self.request(&t, false, Want::Range(a, n), shared).await {
                        return false;
                    }
                }
                true
            }
        }
    }
}

pub async fn run(cfg: Config, shared: Arc<Shared>, stop: Arc<AtomicBool>) -> WorkerStats {
    let cfg = Arc::new(cfg);
    let n = cfg.targets.files.len();
    let loops = (0..cfg.connections).map(|c| {
        let cfg = cfg.clone();
        let shared = shared.clone();
        let stop = stop.clone();
        async move {
            let zipf = (cfg.zipf > 0.0).then(|| Zipf::new(n as f64, cfg.zipf).ok()).flatten();
            let mut l = Loop {
                rng: StdRng::seed_from_u64(cfg.seed.wrapping_mul(31).wrapping_add(c as u64)),
                zipf,
                stats: WorkerStats::new(),
                cfg,
            };
            while !stop.load(Ordering::Relaxed) {
                if !l.visit(l.cfg.pattern, &shared).await {
                    break;
                }
            }
            l.stats
        }
    });
    let mut all = WorkerStats::new();
    for s in futures_util::future::join_all(loops).await {
        all.merge(s);
    }
    all
}
