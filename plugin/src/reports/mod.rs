//! Finance reports from the usage ledger and the pricing: chargeback per
//! tenant and release (gRPC `GetChargeback`, `shardgate usage export`), and
//! the summary behind `/dashboard` (`GET /v1/reports/summary`).
//!
//! Both are sums of closed ledger records, so their bytes agree with
//! `GetTotals` to the byte. Money is computed from the summed bytes, once
//! per line, so it does not depend on how windows fell; each line is rounded
//! ([`Money::rounded`], half to even) and totals are sums of the rounded
//! lines, so a spreadsheet adding up the lines gets the total exactly.

pub mod fleet;
pub mod summary;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::pricing::{Money, Pricing};
use crate::usage::ledger::Closed;
use crate::usage::{Counters, RecordKey, Source};

/// What one tenant read of one release in the period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChargeLine {
    pub tenant: String,
    pub dataset: String,
    pub version: String,
    pub hot_bytes: u64,
    pub origin_bytes: u64,
    pub bytes: u64,
    pub requests: u64,
    pub aborted_requests: u64,
    /// `bytes` at the retrieval price, rounded; `None` without pricing.
    pub charge: Option<Money>,
}

/// What the gateway paid BTFS hosts for one release in the period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReleaseSpend {
    pub dataset: String,
    pub version: String,
    pub origin_egress_bytes: u64,
    pub integrity_failed_bytes: u64,
    pub integrity_aborted_requests: u64,
    /// `origin_egress_bytes` at the retrieval price; `None` without pricing.
    pub spend: Option<Money>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Chargeback {
    pub from: i64,
    pub to: i64,
    /// By tenant, then dataset, then version.
    pub lines: Vec<ChargeLine>,
    /// By dataset, then version.
    pub releases: Vec<ReleaseSpend>,
    pub total_charge: Option<Money>,
    pub total_spend: Option<Money>,
}

impl Chargeback {
    /// Sums `records` (closed records of `[from, to)`) and prices them.
    pub fn compute(from: i64, to: i64, records: &[Closed], pricing: Option<&Pricing>) -> Self {
        let mut lines: BTreeMap<(&str, &str, &str), ChargeLine> = BTreeMap::new();
        let mut spend: BTreeMap<(&str, &str), Counters> = BTreeMap::new();
        for r in records {
            let c = &r.counters;
            match &r.key {
                RecordKey::TenantUsage { tenant, dataset, version, source, .. } => {
                    let line = lines.entry((tenant, dataset, version)).or_insert_with(|| ChargeLine {
                        tenant: tenant.to_string(),
                        dataset: dataset.to_string(),
                        version: version.to_string(),
                        ..ChargeLine::default()
                    });
                    match source {
                        Source::Hot => line.hot_bytes += c.bytes,
                        Source::Origin => line.origin_bytes += c.bytes,
                    }
                    line.bytes += c.bytes;
                    line.requests += c.requests;
                    line.aborted_requests += c.aborted_requests;
                }
                RecordKey::DatasetCost { dataset, version, .. } => spend.entry((dataset, version)).or_default().add(c),
            }
        }
        let mut out = Chargeback { from, to, ..Self::default() };
        out.lines = lines
            .into_values()
            .map(|mut l| {
                l.charge = pricing.map(|p| p.retrieval(l.bytes).rounded());
                l
            })
            .collect();
        out.releases = spend
            .into_iter()
            .map(|((dataset, version), c)| ReleaseSpend {
                dataset: dataset.to_string(),
                version: version.to_string(),
                origin_egress_bytes: c.origin_egress_bytes,
                integrity_failed_bytes: c.integrity_failed_bytes,
                integrity_aborted_requests: c.integrity_aborted_requests,
                spend: pricing.map(|p| p.retrieval(c.origin_egress_bytes).rounded()),
            })
            .collect();
        if pricing.is_some() {
            out.total_charge = Some(out.lines.iter().filter_map(|l| l.charge).fold(Money::default(), |a, b| a + b));
            out.total_spend = Some(out.releases.iter().filter_map(|r| r.spend).fold(Money::default(), |a, b| a + b));
        }
        out
    }
}
