//! `GET /v1/reports/summary?days=N`: everything `/dashboard` shows, as one
//! JSON document. The page renders this and nothing else.
//!
//! Usage figures are sums of closed ledger records per UTC day (the ledger's
//! `daily` table), over the `days` days ending today. Release figures are
//! the catalog now. Latency and checksum figures are since the gateway
//! started.

use std::collections::BTreeMap;
use std::sync::Arc;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::gateway::Gateway;
use crate::pricing::{Money, Pricing, ReleaseSize};
use crate::registry::Catalog;
use crate::usage::ledger::{Closed, DAY_SECS, LedgerError, day_of};
use crate::usage::{RecordKey, Source, unix_now};

/// Longest period a summary covers.
pub const MAX_DAYS: u32 = 366;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub generated_at: String,
    pub days: u32,
    /// Unix seconds: the summary covers days starting in `[from, to)`.
    pub from: i64,
    pub to: i64,
    pub gateway_instance: String,
    /// Random per process: tells this gateway from another given the same
    /// `usage.instance_id` (a copied config), so a fleet never drops one.
    #[serde(default)]
    pub boot: String,
    pub pricing: Option<PricingInfo>,
    pub releases: Vec<ReleaseRow>,
    pub stored: Stored,
    pub served: Served,
    pub tenants: Vec<TenantRow>,
    pub btt: Option<BttPanel>,
    pub trend: Vec<TrendDay>,
    pub slo: SloPanel,
    /// With `reports.peers`: the members whose figures the totals above add
    /// up (see [`super::fleet`]). Absent for one gateway's own summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<super::fleet::Fleet>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PricingInfo {
    pub currency: String,
    pub fiat_rate: Decimal,
    pub rate_date: String,
    pub risk_buffer_percent: Decimal,
    pub storage_ubtt_per_gib_day: Decimal,
    pub retrieval_ubtt_per_mib: Decimal,
    pub replication: String,
    pub min_contract_days: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseRow {
    pub name: String,
    pub version: String,
    /// `active`, `deprecated` or `taken_down`.
    pub state: String,
    pub tags: Vec<String>,
    pub release_id: String,
    pub files: usize,
    pub file_bytes: u64,
    pub stored_bytes: u64,
    /// One minimum storage contract with replication; none when taken down
    /// or without pricing.
    pub committed: Option<Money>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    /// Releases not taken down.
    pub live_releases: usize,
    pub file_bytes: u64,
    pub stored_bytes: u64,
    /// `stored_bytes` times the replication factor (with pricing).
    pub replicated_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Served {
    pub hot_bytes: u64,
    pub origin_bytes: u64,
    pub bytes: u64,
    pub requests: u64,
    pub aborted_requests: u64,
    /// Share of bytes served from the hot tier; none when nothing was served.
    pub hit_ratio: Option<f64>,
    pub origin_egress_bytes: u64,
    pub integrity_failed_bytes: u64,
    pub integrity_aborted_requests: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantRow {
    pub tenant: String,
    pub hot_bytes: u64,
    pub origin_bytes: u64,
    pub bytes: u64,
    pub requests: u64,
    pub hit_ratio: Option<f64>,
    /// Bytes at the retrieval price.
    pub charge: Option<Money>,
}

impl TenantRow {
    /// A row with nothing counted yet.
    pub fn empty(tenant: &str) -> Self {
        Self {
            tenant: tenant.to_string(),
            hot_bytes: 0,
            origin_bytes: 0,
            bytes: 0,
            requests: 0,
            hit_ratio: None,
            charge: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BttPanel {
    /// Storage contracts of live releases: one minimum contract each.
    pub committed: Money,
    /// `retrieval_spent` plus `storage_accrued`.
    pub spent: Money,
    /// Origin egress in the period at the retrieval price.
    pub retrieval_spent: Money,
    /// An estimate: storage of the releases live now, for all the period's
    /// days (releases added or taken down during it are not prorated).
    pub storage_accrued: Money,
    /// The tenants' charges in the period: the sum of their rounded lines.
    pub billed: Money,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrendDay {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub start: i64,
    pub hot_bytes: u64,
    pub origin_bytes: u64,
    pub origin_egress_bytes: u64,
    pub requests: u64,
    /// Origin egress of the day at the retrieval price.
    pub retrieval_btt: Option<Decimal>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Objective {
    /// Upper bound of the p99 bucket (buckets are 10% wide); none before any request.
    pub p99_ms: Option<f64>,
    pub objective_ms: f64,
    pub samples: u64,
    pub met: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SloPanel {
    /// Unix seconds the latency and checksum counts start from (gateway start).
    pub since: i64,
    pub manifest: Objective,
    pub file_ttfb: Objective,
    /// Chunks that failed verification since `since` (never served).
    pub checksum_failures: u64,
    /// Pin health and the repair-time objective; `null` when `[pin_health]` is off.
    pub pin_health: Option<PinPanel>,
}

/// The pin-health figures of the SLO panel (from the task's last rounds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PinPanel {
    /// Releases checked.
    pub releases: u64,
    pub under_replicated_blobs: u64,
    pub nodes_unreachable: u64,
    /// Repairs among the most recent ones kept per release (up to 100 each).
    pub repairs_ok: u64,
    pub repairs_failed: u64,
    /// The slowest successful repair, detection to repair; none before any.
    pub slowest_repair_s: Option<f64>,
    pub repair_objective_s: f64,
    /// Whether every repair met the objective; none before any.
    pub met: Option<bool>,
}

/// What a summary is made from.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub now: i64,
    pub days: u32,
    pub instance: &'a str,
    pub catalog: &'a Catalog,
    /// Daily sums for the days starting in `[from, to)` (see [`window`]).
    pub daily: &'a [Closed],
    pub pricing: Option<&'a Pricing>,
    pub slo: SloPanel,
}

/// The days a summary of `days` days at `now` covers: `[from, to)`.
pub fn window(now: i64, days: u32) -> (i64, i64) {
    let to = day_of(now) + DAY_SECS;
    (to - i64::from(days.max(1)) * DAY_SECS, to)
}

/// Hot share of bytes, to three places: exactly what a percentage with one
/// decimal shows.
pub(super) fn ratio(hot: u64, total: u64) -> Option<f64> {
    (total > 0).then(|| ((hot as f64 / total as f64) * 1_000.0).round() / 1_000.0)
}

fn date_of(t: i64) -> String {
    jiff::Timestamp::from_second(t)
        .map(|ts| ts.to_zoned(jiff::tz::TimeZone::UTC).date().to_string())
        .unwrap_or_default()
}

/// This process's boot id: 16 random hex digits, made once.
pub fn boot_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let mut b = [0u8; 8];
        // Without randomness, the start time and pid still tell processes apart.
        if getrandom::fill(&mut b).is_err() {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            b = (t.as_nanos() as u64 ^ u64::from(std::process::id())).to_le_bytes();
        }
        hex::encode(b)
    })
}

pub fn build(i: Inputs<'_>) -> Summary {
    let (from, to) = window(i.now, i.days);
    let p = i.pricing;

    let mut releases = Vec::new();
    let mut stored = Stored { live_releases: 0, file_bytes: 0, stored_bytes: 0, replicated_bytes: None };
    let mut live_stored = 0u64;
    let mut committed = Money::default();
    for (name, versions) in i.catalog.names() {
        for (v, r) in versions {
            let state = i.catalog.state(name, v);
            let size = ReleaseSize::of(&r.signed);
            let live = state.taken_down.is_none();
            let contract = p.filter(|_| live).map(|p| p.storage(size.stored_bytes, p.min_contract_days));
            if let Some(c) = contract {
                committed = committed + c;
            }
            if live {
                stored.live_releases += 1;
                stored.file_bytes += size.file_bytes;
                stored.stored_bytes += size.stored_bytes;
                live_stored += size.stored_bytes;
            }
            releases.push(ReleaseRow {
                name: name.clone(),
                version: v.to_string(),
                state: state.label().to_string(),
                tags: i.catalog.lifecycle().tags_of(name, v),
                release_id: r.signed.id.to_hex(),
                files: r.signed.manifest.files.len(),
                file_bytes: size.file_bytes,
                stored_bytes: size.stored_bytes,
                committed: p.filter(|_| live).map(|p| p.storage(size.stored_bytes, p.min_contract_days).rounded()),
            });
        }
    }
    stored.replicated_bytes =
        p.map(|p| (Decimal::from(stored.stored_bytes) * p.replication.factor()).ceil().try_into().unwrap_or(u64::MAX));

    let mut served = Served::default();
    let mut tenants: BTreeMap<&str, TenantRow> = BTreeMap::new();
    let mut trend: BTreeMap<i64, TrendDay> = BTreeMap::new();
    let mut day = from;
    while day < to {
        trend.insert(
            day,
            TrendDay {
                day: date_of(day),
                start: day,
                hot_bytes: 0,
                origin_bytes: 0,
                origin_egress_bytes: 0,
                requests: 0,
                retrieval_btt: None,
            },
        );
        day += DAY_SECS;
    }
    for rec in i.daily {
        let w = rec.key.window();
        if w < from || w >= to {
            continue;
        }
        let c = &rec.counters;
        let t = trend.get_mut(&w);
        match &rec.key {
            RecordKey::TenantUsage { tenant, source, .. } => {
                let row = tenants.entry(tenant).or_insert_with(|| TenantRow::empty(tenant));
                row.bytes += c.bytes;
                row.requests += c.requests;
                served.bytes += c.bytes;
                served.requests += c.requests;
                served.aborted_requests += c.aborted_requests;
                match source {
                    Source::Hot => {
                        row.hot_bytes += c.bytes;
                        served.hot_bytes += c.bytes;
                    }
                    Source::Origin => {
                        row.origin_bytes += c.bytes;
                        served.origin_bytes += c.bytes;
                    }
                }
                if let Some(t) = t {
                    t.requests += c.requests;
                    match source {
                        Source::Hot => t.hot_bytes += c.bytes,
                        Source::Origin => t.origin_bytes += c.bytes,
                    }
                }
            }
            RecordKey::DatasetCost { .. } => {
                served.origin_egress_bytes += c.origin_egress_bytes;
                served.integrity_failed_bytes += c.integrity_failed_bytes;
                served.integrity_aborted_requests += c.integrity_aborted_requests;
                if let Some(t) = t {
                    t.origin_egress_bytes += c.origin_egress_bytes;
                }
            }
        }
    }
    served.hit_ratio = ratio(served.hot_bytes, served.bytes);
    let tenants: Vec<TenantRow> = tenants
        .into_values()
        .map(|mut r| {
            r.hit_ratio = ratio(r.hot_bytes, r.bytes);
            r.charge = p.map(|p| p.retrieval(r.bytes).rounded());
            r
        })
        .collect();
    let trend: Vec<TrendDay> = trend
        .into_values()
        .map(|mut t| {
            t.retrieval_btt = p.map(|p| p.retrieval(t.origin_egress_bytes).rounded().btt);
            t
        })
        .collect();

    let btt = p.map(|p| {
        let retrieval_spent = p.retrieval(served.origin_egress_bytes);
        let storage_accrued = p.storage(live_stored, i.days);
        BttPanel {
            committed: committed.rounded(),
            spent: (retrieval_spent + storage_accrued).rounded(),
            retrieval_spent: retrieval_spent.rounded(),
            storage_accrued: storage_accrued.rounded(),
            billed: tenants.iter().filter_map(|t| t.charge).fold(Money::default(), |a, b| a + b),
        }
    });
    let pricing = p.map(|p| PricingInfo {
        currency: p.currency.clone(),
        fiat_rate: p.fiat_rate.normalize(),
        rate_date: p.rate_date.to_string(),
        risk_buffer_percent: p.risk_buffer_percent.normalize(),
        storage_ubtt_per_gib_day: p.storage_ubtt_per_gib_day.normalize(),
        retrieval_ubtt_per_mib: p.retrieval_ubtt_per_mib.normalize(),
        replication: p.replication.describe(),
        min_contract_days: p.min_contract_days,
    });
    let generated_at = jiff::Timestamp::from_second(i.now).map(|t| t.to_string()).unwrap_or_default();
    Summary {
        generated_at,
        days: i.days,
        from,
        to,
        gateway_instance: i.instance.to_string(),
        boot: boot_id().to_string(),
        pricing,
        releases,
        stored,
        served,
        tenants,
        btt,
        trend,
        slo: i.slo,
        fleet: None,
    }
}

fn objective(l: &crate::metrics::Latency, objective: std::time::Duration) -> Objective {
    let p99_ms = l.quantile(0.99).map(|s| (s * 10_000.0).round() / 10.0);
    let objective_ms = objective.as_secs_f64() * 1000.0;
    Objective { p99_ms, objective_ms, samples: l.count(), met: p99_ms.map(|p| p <= objective_ms) }
}

/// The summary of the `days` days ending today, for `gw`.
pub async fn for_gateway(gw: &Arc<Gateway>, days: u32) -> Result<Summary, LedgerError> {
    let now = unix_now();
    let (from, to) = window(now, days);
    let ledger = gw.ledger().clone();
    let daily = tokio::task::spawn_blocking(move || ledger.daily(from, to))
        .await
        .map_err(|e| LedgerError::Storage(e.to_string()))??;
    let cfg = gw.config();
    let m = gw.metrics();
    let slo = SloPanel {
        since: m.since,
        manifest: objective(&m.manifest_latency, cfg.reports.manifest_p99_objective),
        file_ttfb: objective(&m.file_first_byte, cfg.reports.file_ttfb_p99_objective),
        checksum_failures: m.checksum_failures.get(),
        pin_health: cfg.pin_health.enabled.then(|| {
            let objective = cfg.pin_health.repair_objective.as_secs_f64();
            let p = gw.pin_health().summary();
            let slowest = p.slowest_repair_s.map(|s| (s * 10.0).round() / 10.0);
            PinPanel {
                releases: p.releases,
                under_replicated_blobs: p.under_replicated,
                nodes_unreachable: m.pin_nodes_unreachable.get().max(0) as u64,
                repairs_ok: p.repairs_ok,
                repairs_failed: p.repairs_failed,
                slowest_repair_s: slowest,
                repair_objective_s: objective,
                met: p.slowest_repair_s.map(|s| s <= objective),
            }
        }),
    };
    let catalog = gw.registry().snapshot();
    let pricing = gw.pricing();
    Ok(build(Inputs {
        now,
        days,
        instance: gw.ledger().instance(),
        catalog: &catalog,
        daily: &daily,
        pricing: pricing.as_deref(),
        slo,
    }))
}
