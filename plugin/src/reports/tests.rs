#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use rust_decimal::Decimal;

use super::summary::window;
use super::*;
use crate::usage::ledger::DAY_SECS;

fn usage(tenant: &str, version: &str, source: Source, bytes: u64) -> Closed {
    Closed {
        key: RecordKey::TenantUsage {
            tenant: Arc::from(tenant),
            dataset: Arc::from("ds"),
            version: Arc::from(version),
            window: 0,
            source,
        },
        counters: Counters { bytes, requests: 1, ..Counters::default() },
    }
}

fn cost(version: &str, egress: u64) -> Closed {
    Closed {
        key: RecordKey::DatasetCost { dataset: Arc::from("ds"), version: Arc::from(version), window: 0 },
        counters: Counters { origin_egress_bytes: egress, integrity_failed_bytes: 7, ..Counters::default() },
    }
}

fn records() -> Vec<Closed> {
    vec![
        usage("a", "1.0.0", Source::Hot, 1 << 20),
        usage("a", "1.0.0", Source::Origin, 3 << 20),
        usage("a", "1.0.0", Source::Hot, 1 << 20),
        usage("b", "1.0.0", Source::Origin, 5),
        usage("a", "2.0.0", Source::Hot, 9),
        cost("1.0.0", 4 << 20),
        cost("1.0.0", 1 << 20),
    ]
}

#[test]
fn chargeback_sums_per_tenant_and_release_and_prices_the_sums() {
    let pricing = crate::pricing::Pricing::parse(include_str!("../../../conf/pricing.toml")).unwrap();
    let c = Chargeback::compute(10, 20, &records(), Some(&pricing));
    assert_eq!((c.from, c.to), (10, 20));
    let keys: Vec<_> = c.lines.iter().map(|l| (l.tenant.as_str(), l.version.as_str())).collect();
    assert_eq!(keys, [("a", "1.0.0"), ("a", "2.0.0"), ("b", "1.0.0")]);
    let a = &c.lines[0];
    assert_eq!((a.hot_bytes, a.origin_bytes, a.bytes, a.requests), (2 << 20, 3 << 20, 5 << 20, 3));
    // 5 MiB at 2500 µBTT per MiB.
    assert_eq!(a.charge.unwrap().btt, "0.0125".parse::<Decimal>().unwrap());
    assert_eq!(c.releases.len(), 1);
    assert_eq!(c.releases[0].origin_egress_bytes, 5 << 20);
    assert_eq!(c.releases[0].integrity_failed_bytes, 14);
    assert_eq!(c.releases[0].spend.unwrap().btt, "0.0125".parse::<Decimal>().unwrap());
    let total: Decimal = c.lines.iter().map(|l| l.charge.unwrap().btt).sum();
    assert_eq!(c.total_charge.unwrap().btt, total);
    assert_eq!(c.total_spend.unwrap(), c.releases[0].spend.unwrap());
}

#[test]
fn without_pricing_chargeback_has_bytes_and_no_money() {
    let c = Chargeback::compute(0, 1, &records(), None);
    assert_eq!(c.lines.len(), 3);
    assert!(c.lines.iter().all(|l| l.charge.is_none()));
    assert!(c.releases.iter().all(|r| r.spend.is_none()));
    assert_eq!((c.total_charge, c.total_spend), (None, None));
}

#[test]
fn a_summary_covers_whole_utc_days_ending_today() {
    // 2026-11-24T10:00:00Z
    let now = 1_795_514_400;
    let (from, to) = window(now, 30);
    assert_eq!(to, 1_795_478_400 + DAY_SECS, "the end of today");
    assert_eq!(to - from, 30 * DAY_SECS);
    assert_eq!(window(now, 0), window(now, 1), "at least one day");
}
