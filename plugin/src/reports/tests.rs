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

mod fleet {
    use super::*;
    use crate::reports::fleet::{MemberStatus, PeerError, merge};
    use crate::reports::summary::{Inputs, Objective, SloPanel, Summary, build};

    const NOW: i64 = 1_795_514_400;

    fn objective(p99_ms: Option<f64>, samples: u64) -> Objective {
        Objective { p99_ms, objective_ms: 50.0, samples, met: p99_ms.map(|p| p <= 50.0) }
    }

    /// A member's summary of today, with `records` falling in today's window.
    fn member(instance: &str, records: Vec<Closed>, pricing: Option<&crate::pricing::Pricing>, p99: f64) -> Summary {
        let (from, _) = window(NOW, 1);
        let daily: Vec<Closed> = records
            .into_iter()
            .map(|mut r| {
                match &mut r.key {
                    RecordKey::TenantUsage { window, .. } | RecordKey::DatasetCost { window, .. } => *window = from,
                }
                r
            })
            .collect();
        let s = build(Inputs {
            now: NOW,
            days: 1,
            instance,
            catalog: &crate::registry::Catalog::default(),
            daily: &daily,
            pricing,
            slo: SloPanel {
                since: NOW - 100,
                manifest: objective(Some(p99), 10),
                file_ttfb: objective(None, 0),
                checksum_failures: 1,
                pin_health: None,
            },
        });
        // Through JSON, as a peer's summary arrives.
        serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap()
    }

    fn pricing() -> crate::pricing::Pricing {
        crate::pricing::Pricing::parse(include_str!("../../../conf/pricing.toml")).unwrap()
    }

    #[test]
    fn usage_adds_up_across_members_and_money_is_the_sum_of_their_lines() {
        let p = pricing();
        let a = member("gw-a", vec![usage("t1", "1.0.0", Source::Hot, 3 << 20), cost("1.0.0", 1 << 20)], Some(&p), 4.0);
        let b = member(
            "gw-b",
            vec![usage("t1", "1.0.0", Source::Origin, 1 << 20), usage("t2", "1.0.0", Source::Hot, 333_333)],
            Some(&p),
            9.5,
        );
        let c = member("gw-c", vec![usage("t2", "1.0.0", Source::Origin, 7)], Some(&p), 1.0);
        let member_charges: Vec<Decimal> =
            [&a, &b, &c].iter().flat_map(|s| s.tenants.iter().map(|t| t.charge.unwrap().btt)).collect();
        let f = merge(
            a,
            vec![
                ("http://b".into(), Ok(b)),
                ("http://c".into(), Ok(c)),
                ("http://self".into(), Ok(member("gw-a", vec![], Some(&p), 1.0))),
            ],
        );
        let fleet = f.fleet.as_ref().unwrap();
        assert!(fleet.complete);
        assert!(fleet.warnings.is_empty(), "{:?}", fleet.warnings);
        // This gateway, listed among its peers, is recognised and counted once.
        assert_eq!(fleet.members.len(), 3);
        assert_eq!(fleet.members[0].url.as_deref(), Some("http://self"));
        assert_eq!(f.served.bytes, (3 << 20) + (1 << 20) + 333_333 + 7);
        assert_eq!(f.served.hot_bytes, (3 << 20) + 333_333);
        assert_eq!(f.served.origin_egress_bytes, 1 << 20);
        let t1 = f.tenants.iter().find(|t| t.tenant == "t1").unwrap();
        assert_eq!((t1.bytes, t1.hot_bytes, t1.requests), (4 << 20, 3 << 20, 2));
        assert_eq!(t1.hit_ratio, Some(0.75));
        let total: Decimal = member_charges.iter().sum();
        assert_eq!(f.tenants.iter().map(|t| t.charge.unwrap().btt).sum::<Decimal>(), total);
        assert_eq!(f.btt.as_ref().unwrap().billed.btt, total);
        let trend: u64 = f.trend.iter().map(|d| d.hot_bytes + d.origin_bytes).sum();
        assert_eq!(trend, f.served.bytes);
        // The worst member's p99, and every member's samples.
        assert_eq!(f.slo.manifest.p99_ms, Some(9.5));
        assert_eq!(f.slo.manifest.samples, 30);
        assert_eq!(f.slo.checksum_failures, 3);
    }

    #[test]
    fn a_member_not_reached_is_listed_with_why_and_left_out() {
        let a = member("gw-a", vec![usage("t1", "1.0.0", Source::Hot, 100)], None, 1.0);
        let b = member("gw-b", vec![usage("t1", "1.0.0", Source::Hot, 20)], None, 1.0);
        let b_again = member("gw-b", vec![usage("t1", "1.0.0", Source::Hot, 20)], None, 1.0);
        let f = merge(
            a,
            vec![
                ("http://b".into(), Ok(b)),
                ("http://down".into(), Err(PeerError::Unreachable("connection refused".into()))),
                ("http://b2".into(), Ok(b_again)),
                ("http://locked".into(), Err(PeerError::Refused { status: 401, message: "token".into() })),
            ],
        );
        let fleet = f.fleet.as_ref().unwrap();
        assert!(!fleet.complete);
        let status: Vec<MemberStatus> = fleet.members.iter().map(|m| m.status).collect();
        assert_eq!(
            status,
            [
                MemberStatus::Ok,
                MemberStatus::Ok,
                MemberStatus::Unreachable,
                MemberStatus::Duplicate,
                MemberStatus::Refused
            ]
        );
        assert!(fleet.members[2].error.as_deref().unwrap().contains("connection refused"));
        assert!(fleet.members[3].error.as_deref().unwrap().contains("as http://b:"));
        assert_eq!(f.served.bytes, 120, "the duplicate is counted once");
        assert!(f.btt.is_none() && f.tenants.iter().all(|t| t.charge.is_none()), "no pricing, no money");
    }

    #[test]
    fn another_gateway_with_a_copied_instance_id_is_not_taken_for_this_one() {
        let a = member("gw-a", vec![usage("t1", "1.0.0", Source::Hot, 100)], None, 1.0);
        let mut copy = member("gw-a", vec![usage("t1", "1.0.0", Source::Hot, 7)], None, 1.0);
        copy.boot = "another-process".into();
        let f = merge(a, vec![("http://copy".into(), Ok(copy))]);
        let fleet = f.fleet.as_ref().unwrap();
        assert_eq!(fleet.members.len(), 2, "listed, not dropped");
        assert_eq!(fleet.members[1].status, MemberStatus::Invalid);
        assert!(fleet.members[1].error.as_deref().unwrap().contains("usage.instance_id"));
        assert!(!fleet.complete);
        assert_eq!(f.served.bytes, 100);
    }

    #[test]
    fn a_member_that_prices_differently_leaves_the_money_out() {
        let p = pricing();
        let mut q = pricing();
        q.retrieval_ubtt_per_mib += Decimal::ONE;
        let a = member("gw-a", vec![usage("t1", "1.0.0", Source::Hot, 1 << 20)], Some(&p), 1.0);
        let b = member("gw-b", vec![usage("t1", "1.0.0", Source::Hot, 1 << 20)], Some(&q), 1.0);
        let f = merge(a, vec![("http://b".into(), Ok(b))]);
        let fleet = f.fleet.as_ref().unwrap();
        assert!(fleet.complete);
        assert!(
            fleet.warnings.iter().any(|w| w.contains("http://b (gw-b) prices usage differently")),
            "{:?}",
            fleet.warnings
        );
        assert_eq!(f.served.bytes, 2 << 20);
        assert!(f.btt.is_none());
        assert!(f.tenants.iter().all(|t| t.charge.is_none()));
        assert!(f.trend.iter().all(|d| d.retrieval_btt.is_none()));
    }
}
